"""Where a backend starts to differ, and what fixes it: the layer-wise view of one backend
result (propagated, fused, isolated, bisected), the check that instrumentation did not
change what the runtime computed, and the mixed-precision advice. Called by ``compare``;
the numerics live in ``layers``, ``bisect`` and ``advice``.
"""
from __future__ import annotations

import time

import numpy as np

from . import metrics as M
from .config import CompareConfig
from .errors import BadInput, first_line
from .layers import FirstDivergence, LayerRow
from .model import ModelHandle
from .report import DIVERGED, BackendResult
from .specs import BackendSpec, parse_specs


def localize(adapter, handle: ModelHandle, result: BackendResult, tol, progress, deployed,
             reference_outputs, config: CompareConfig) -> None:
    """Propagated mode: every layer's error on the first sample, and where divergence starts.
    Final outputs above stay measured on the unmodified compiled model; when the
    instrumented run's own outputs differ from them, the report says so."""
    from .layers import first_divergence, mark_fused

    progress(f"{result.spec}: layer-wise comparison")
    t0 = time.perf_counter()
    try:
        kind = adapter.layers_program(handle)
        layers, view, actual, reference = layer_view(adapter, handle, kind, tol, config, result)
    except BadInput:
        raise
    except Exception as e:  # the layer-wise view is extra: its failure loses nothing already measured
        result.info["layers_error"] = f"{type(e).__name__}: {first_line(e)}"
        return
    if view.unmeasured:
        result.info["unmeasured_layers"] = view.unmeasured
    rows = view.rows
    try:
        present, groups = adapter.deployed_fusion()
    except Exception as e:  # fusion info is extra: keep the rows
        present, groups = None, None
        result.info["fusion_error"] = f"{type(e).__name__}: {first_line(e)}"
    mark_fused(rows, layers, present, groups)
    if present is None and groups is None:  # fused_into None then means "not known", not "not fused"
        result.info["fusion"] = "unknown: this backend (or variant) does not say what its deployed model fused"
    if config.golden and (result.status == DIVERGED or not all(row["within_tolerance"] for row in rows)):
        # the fp64 floor tells a diverged layer from fp32 rounding: made only where one is
        fp64_floor(handle, kind, rows)
    elif config.golden:
        result.info["fp64_layers"] = "not computed: every layer is within tolerance"
    if config.isolate_layers:
        isolated_view(adapter, handle, result, rows, reference, tol, kind)
    result.layers = rows
    if config.bisect:
        bisect_layers(adapter, handle, result, tol)
    if result.status == DIVERGED or any(row["nonfinite_born"] for row in rows):
        result.first_divergence = first_divergence(rows)
        if result.first_divergence and config.isolate_layers:
            confirm(result.first_divergence, rows)
    result.info["layers_from"] = adapter.layers_source(handle)
    changed = instrumentation_changes(handle.output_layer_names(kind), handle.reference.output_names, deployed, actual,
                                      reference_outputs)
    born = [row["module"] or row["node"] for row in rows if row["nonfinite_born"]]
    if born and not any((~np.isfinite(d)).any() for d in deployed if np.asarray(d).dtype.kind == "f"):
        # NaN/Inf appear only because intermediates were marked (e.g. forced out in fp16)
        changed.append({"nonfinite_only_when_instrumented": born[:5]})
    if changed:
        result.info["instrumentation_changed"] = changed
        if result.first_divergence:
            result.first_divergence["caveat"] = "instrumentation changed the result; see info.instrumentation_changed"
    unexplained = result.status == DIVERGED and (changed or result.first_divergence is None)
    if unexplained and not config.bisect:
        # the instrumented run does not show the deployed divergence: bisect on our own,
        # through the deployed route, over unmodified prefixes
        progress(f"{result.spec}: bisecting (the layer-wise run does not reproduce the divergence)")
        bisect_layers(adapter, handle, result, tol)
        result.info.setdefault("bisection", {})["automatic"] = (
            "the instrumented run does not reproduce the deployed divergence" if changed else
            "no layer of the instrumented run is past tolerance")
    adopt_bisection(result, rows)
    result.timings["layers_s"] = round(time.perf_counter() - t0, 6)


def layer_view(adapter, handle: ModelHandle, kind: str, tol, config: CompareConfig, result: BackendResult):
    """(layers, ``layers.Rows``, the backend's values of the model's output layers, the
    reference's values or None). Streamed where the reference is an FX program and no
    isolated view needs every reference value: each layer's reference value is compared with
    the backend's as it is made and dropped, the backend's values come in chunks within the
    memory budget (``--max-memory``) where the adapter can capture them so; else every
    value of both sides at once."""
    from .layers import HeldValues, Rows, RowsAhead

    outputs = set(handle.output_layer_names(kind))
    if not handle.reference.streams(kind) or config.isolate_layers:
        layers, reference = handle.reference_layers(kind)
        actual = adapter.layer_values(handle, handle.samples[0])
        source = HeldValues(actual)
    else:
        layers, reference = handle.reference.layer_list(kind), None
        budget = capture_budget(config.max_memory)
        source = adapter.layer_source(handle, handle.samples[0], budget)
        result.info["layer_capture"] = {"streamed": True, "chunk_mb": round(budget / 2**20, 1)}
    rows, kept, by_node = Rows(layers, source.names, tol.rtol, tol.atol), {}, {layer.node: layer for layer in layers}
    ahead = RowsAhead(rows)      # each comparison beside the next layers' run

    def arrive(node: str, r) -> None:
        a = source.get(node)
        if node in outputs and a is not None:
            kept[node] = a
        if node in by_node:
            ahead.add(by_node[node], r, a)

    try:
        if reference is not None:
            for layer in layers:
                arrive(layer.node, reference.get(layer.node))
        else:
            handle.reference.walk_layers(kind, arrive)
            result.info["layer_capture"]["runs"] = source.runs
    finally:
        ahead.finish()
    return layers, rows, kept, reference


#: the most bytes of backend values one capture holds, whatever the budget leaves: what keeps
#: a layer-wise run's memory flat in model depth (a chunk costs one more inference)
CHUNK_BYTES = 256 << 20


def capture_budget(max_memory: int | None) -> int:
    """The bytes of backend values one capture may hold: half of what ``max_memory`` (default:
    half of this machine's memory) leaves beside this process's present size, at most
    ``CHUNK_BYTES`` and at least 1 MiB."""
    from .environment import current_rss_bytes, total_memory_bytes

    limit = max_memory or (total_memory_bytes() or 8 << 30) // 2
    return int(min(CHUNK_BYTES, max(1 << 20, (limit - current_rss_bytes()) // 2)))


def fp64_floor(handle: ModelHandle, kind: str, rows: list[LayerRow]) -> None:
    """Each row's fp32-reference-vs-fp64 error (``fp64_baseline``), from the two programs run
    in step, nothing kept."""
    found = handle.reference.fp64_baselines(kind, {row["node"] for row in rows}) or {}
    for row in rows:
        if row["node"] in found:
            row["fp64_baseline"] = found[row["node"]]


def adopt_bisection(result: BackendResult, rows: list[LayerRow]) -> None:
    """Where the propagated view names no trustworthy start (none, or one seen only with
    intermediates marked) and bisection found a cut, the cut is the first divergence."""
    cut = (result.info.get("bisection") or {}).get("first_diverging_cut")
    fd = result.first_divergence
    if not isinstance(cut, dict) or (fd and not fd.get("caveat")):
        return
    row = next((r for r in rows if r["node"] == cut["node"]), None)
    result.first_divergence = FirstDivergence(**cut, index=row["index"] if row else None,
                                              metrics=row["metrics"] if row else None, reason="bisection",
                                              found_by="bisection over unmodified prefixes of the deployed route")


def isolated_view(adapter, handle: ModelHandle, result: BackendResult, rows, reference, tol, kind: str) -> None:
    """Isolated mode on the rows; its failure is recorded (``info.isolated_error``) and the
    propagated rows stand without it."""
    from .layers import isolate_rows

    if kind != "onnx":
        result.info["isolated"] = "not on this route yet (isolated layers run on the ONNX routes: route=onnx)"
        return
    try:
        isolated = adapter.isolated_values(handle, handle.samples[0], reference)
        if isolated is not None:
            isolate_rows(rows, reference, isolated, tol.rtol, tol.atol)
    except Exception as e:  # noqa: BLE001 - an extra view
        result.info["isolated_error"] = f"{type(e).__name__}: {first_line(e)}"
        return
    if isolated is None:
        result.info["isolated"] = "not supported by this backend yet"
    else:
        result.info["isolated_from"] = "every layer fed the reference values of its inputs, all layers in one compiled model"


def bisect_layers(adapter, handle: ModelHandle, result: BackendResult, tol) -> None:
    """Bisection over unmodified prefixes through the backend's deployed route (see bisect.py
    and ``Adapter.bisect``)."""
    def out_of_tolerance(value, ref) -> bool:
        return np.shape(value) != np.shape(ref) or M.violations(value, ref, tol.rtol, tol.atol) > 0

    try:
        found = adapter.bisect(handle, handle.samples[0], out_of_tolerance)
    except Exception as e:  # extra view: keep everything else
        result.info["bisection"] = {"error": f"{type(e).__name__}: {first_line(e)}"}
        return
    if found is None:
        result.info["bisection"] = {"error": "not supported by this backend yet"}
        return
    cut = found["first_diverging_cut"]
    by_node = {layer.node: layer for layer in handle.reference_layers(found.get("program", "onnx"))[0]}
    if cut is not None:
        layer = by_node[cut]
        found["first_diverging_cut"] = {"node": cut, "module": layer.module, "op_type": layer.op_type,
                                        "source": layer.source}
    result.info["bisection"] = found


def confirm(first: FirstDivergence, rows: list[LayerRow]) -> None:
    """LEMON's check: the suspect is confirmed when, fed the reference's inputs, it still
    makes an error past tolerance (or a NaN/Inf) on its own; else the error it shows is
    inherited and the suspect is dropped in favour of the first layer that does."""
    row = next(r for r in rows if r["node"] == first["node"])
    own = row.get("isolated")
    if own is None:
        return
    first["isolated"] = own["metrics"]
    first["confirmed"] = own["nonfinite_born"] or not own["within_tolerance"]
    if not first["confirmed"]:
        culprit = next((r for r in rows if r.get("isolated") and (r["isolated"]["nonfinite_born"]
                                                                    or not r["isolated"]["within_tolerance"])), None)
        if culprit is not None:
            first["own_error_first_at"] = {k: culprit[k] for k in ("module", "op_type", "node", "source")}


#: an instrumented output whose SQNR against the reference is off from the deployed one's by
#: more than this (in dB: 6 dB is twice or half the error) changed materially
CHANGE_DB = 6.0


def instrumentation_changes(nodes: list[str], names: list[str], deployed, instrumented: dict, reference) -> list[dict]:
    """Outputs on which the instrumented run (intermediates marked) is materially further from
    or closer to the reference than the deployed, unmodified model: marking outputs changed
    what the runtime computed (different fusion, values forced out in low precision)."""
    out = []
    for node, name, d, r in zip(nodes, names, deployed, reference):
        v = instrumented.get(node)
        if v is None or np.shape(v) != np.shape(d) or np.shape(d) != np.shape(r):
            continue
        dm, vm = M.tensor_metrics(d, r), M.tensor_metrics(v, r)
        dsq, vsq = M.sqnr_value(dm), M.sqnr_value(vm)
        if dm["nonfinite"] != vm["nonfinite"] or abs(dsq - vsq) > CHANGE_DB:
            out.append({"output": name, "node": node, "deployed_nonfinite": dm["nonfinite"],
                        "instrumented_nonfinite": vm["nonfinite"], "deployed_sqnr_db": dm["sqnr_db"],
                        "instrumented_sqnr_db": vm["sqnr_db"]})
    return out


def mixed_precision_advice(cls, shown, spec, handle, reference, config, result, progress, run) -> dict:
    """What to keep in fp32 (see advice.py); each trial is a real run of the variant by
    ``run`` (``runner.run_backend``, passed in: the runner calls this module)."""
    from pathlib import Path

    import onnx

    from .advice import advise
    from .onnx_graph import carry_modules, consumers, group_entries, keep_groups, module_counts, node_module

    # candidates are the groups of the ONNX model the backend ran (ORT's converted model: its
    # pre-processing fuses nodes), else of the export the backend converted
    artifact = (result.info or {}).get("artifact")
    source = artifact if artifact and str(artifact).endswith(".onnx") and Path(artifact).exists() \
        else handle.onnx_path()
    graph = onnx.load(str(source), load_external_data=False)
    export = graph if str(source) == str(handle.onnx_path()) else \
        onnx.load(str(handle.onnx_path()), load_external_data=False)
    if export is not graph and not any(node_module(n) for n in graph.graph.node):
        carry_modules(export, graph)  # an older artifact
    # keep= is checked against the export: an entry only the converted model has (``<top>``
    # made of a quantizer's own nodes) cannot be asked for
    counts = module_counts(export, [e for e, _ in keep_groups(graph, layout=True)])
    entries = [e for e, _ in keep_groups(graph) if counts.get(e)]
    first = []
    if result.first_divergence:   # its group, then the groups of the ops that read its tensor
        entry, node = group_entries(graph), result.first_divergence["node"]
        first = [entry(n) for n in graph.graph.node if node in n.output]
        first += [entry(n) for n in consumers(graph, node)]
    quiet = config.but(layerwise="never", advise=False)

    def trial(candidate: BackendSpec) -> BackendResult:
        progress(f"{shown}: advice, trying {candidate.text}")
        try:
            return run(cls, candidate.text, cls.canonical(candidate), handle, reference, quiet, progress)
        except BadInput as e:   # a candidate the tool chain cannot keep: that trial failed, not the user's run
            return BackendResult(spec=candidate.text, backend=cls.name, variant=candidate.variant, status="failed",
                                 error={"stage": "convert", "type": "BadInput", "message": str(e)[:500]})

    user = parse_specs(shown)[0]  # the spec as the user wrote it, so the advice reads the same way
    needs = getattr(cls, "keep_requires", {})  # e.g. OpenVINO names modules through the ONNX route
    user = BackendSpec(user.name, user.variant, tuple((k, v) for k, v in user.options if k not in needs)
                       + tuple(needs.items()))
    return advise(user, result, entries, trial, first=first,
                  everything=[e for e, n in counts.items() if n])
