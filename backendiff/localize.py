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
from .model import ModelHandle
from .report import DIVERGED, BackendResult
from .specs import BackendSpec, parse_specs


def localize(adapter, handle: ModelHandle, result: BackendResult, tol, progress, deployed,
             reference_outputs, config: CompareConfig) -> None:
    """Propagated mode: every layer's error on the first sample, and where divergence starts.
    Final outputs above stay measured on the unmodified compiled model; when the
    instrumented run's own outputs differ from them, the report says so."""
    from .layers import first_divergence, fp64_rows, isolate_rows, layer_rows, mark_fused

    progress(f"{result.spec}: layer-wise comparison")
    t0 = time.perf_counter()
    try:
        layers, reference = handle.reference_layers()
        actual = adapter.layer_values(handle, handle.samples[0])
    except BadInput:
        raise
    except Exception as e:  # the layer-wise view is extra: its failure loses nothing already measured
        result.info["layers_error"] = f"{type(e).__name__}: {first_line(e)}"
        return
    rows = layer_rows(layers, reference, actual, tol.rtol, tol.atol)
    try:
        present, groups = adapter.deployed_fusion()
    except Exception as e:  # fusion info is extra: keep the rows
        present, groups = None, None
        result.info["fusion_error"] = f"{type(e).__name__}: {first_line(e)}"
    mark_fused(rows, layers, present, groups)
    if present is None and groups is None:  # fused_into None then means "not known", not "not fused"
        result.info["fusion"] = "unknown: this backend (or variant) does not say what its deployed model fused"
    if config.golden:
        fp64_rows(rows, reference, handle.reference_layers_fp64())
    if config.isolate_layers:
        isolated = adapter.isolated_values(handle, handle.samples[0], reference)
        if isolated is None:
            result.info["isolated"] = "not supported by this backend yet"
        else:
            isolate_rows(rows, reference, isolated, tol.rtol, tol.atol)
            result.info["isolated_from"] = ("every layer fed the reference values of its inputs, all layers in one "
                                            "compiled model")
    result.layers = rows
    if config.bisect:
        bisect_layers(adapter, handle, result, layers, reference, tol)
    if result.status == DIVERGED or any(row["nonfinite_born"] for row in rows):
        result.first_divergence = first_divergence(rows)
        if result.first_divergence and config.isolate_layers:
            confirm(result.first_divergence, rows)
    result.info["layers_from"] = adapter.layers_from
    changed = instrumentation_changes(handle.output_layer_names(), handle.output_names, deployed, actual,
                                      reference_outputs)
    born = [row["module"] or row["node"] for row in rows if row["nonfinite_born"]]
    if born and not any((~np.isfinite(d)).any() for d in deployed if np.asarray(d).dtype.kind == "f"):
        # NaN/Inf appear only because intermediates were marked (e.g. forced out in fp16)
        changed.append({"nonfinite_only_when_instrumented": born[:5]})
    if changed:
        result.info["instrumentation_changed"] = changed
        if result.first_divergence:
            result.first_divergence["caveat"] = "instrumentation changed the result; see info.instrumentation_changed"
    result.timings["layers_s"] = round(time.perf_counter() - t0, 6)


def bisect_layers(adapter, handle: ModelHandle, result: BackendResult, layers, reference, tol) -> None:
    """Bisection over unmodified prefixes of the deployed ONNX export (see bisect.py)."""
    from .bisect import bisect_backend

    if not adapter.runs_onnx:
        result.info["bisection"] = {"error": "not supported by this backend yet"}
        return

    def out_of_tolerance(value, ref) -> bool:
        return np.shape(value) != np.shape(ref) or M.violations(value, ref, tol.rtol, tol.atol) > 0

    try:
        found = bisect_backend(adapter, handle.onnx_path(), [layer.node for layer in layers], handle.samples[0],
                               reference, out_of_tolerance)
    except Exception as e:  # extra view: keep everything else
        result.info["bisection"] = {"error": f"{type(e).__name__}: {first_line(e)}"}
        return
    cut = found["first_diverging_cut"]
    by_node = {layer.node: layer for layer in layers}
    if cut is not None:
        layer = by_node[cut]
        found["first_diverging_cut"] = {"node": cut, "module": layer.module, "op_type": layer.op_type,
                                        "source": layer.source}
    found["graph"] = "prefixes of the deployed ONNX export, each compiled unmodified with one output"
    result.info["bisection"] = found


def confirm(first: dict, rows: list[dict]) -> None:
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


def mixed_precision_advice(cls, shown, spec, handle, reference, config, result, progress) -> dict:
    """Which modules to keep in fp32 (see advice.py); each trial is a real run of the variant."""
    import onnx

    from .advice import advise
    from .compare import run_backend
    from .onnx_graph import compute_modules

    modules = compute_modules(onnx.load(str(handle.onnx_path()), load_external_data=False))
    quiet = config.but(layerwise="never", advise=False)

    def trial(candidate: BackendSpec) -> BackendResult:
        progress(f"{shown}: advice, trying {candidate.text}")
        return run_backend(cls, candidate.text, cls.canonical(candidate), handle, reference, quiet, progress)

    user = parse_specs(shown)[0]  # the spec as the user wrote it, so the advice reads the same way
    needs = getattr(cls, "keep_requires", {})  # e.g. OpenVINO names modules through the ONNX route
    user = BackendSpec(user.name, user.variant, tuple((k, v) for k, v in user.options if k not in needs)
                       + tuple(needs.items()))
    return advise(user, result, modules, trial)
