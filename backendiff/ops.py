"""``backendiff ops``: PyTorch's own operator database (OpInfo, ``op_db``: every operator with
sample inputs that cover its edge cases) run through each backend against PyTorch, to find
what a runtime gets wrong before a model hits it.

Each operator's samples go into one module with one output per sample result, so one
export and one compile serve all of them; ``compare`` does the rest (reference, fp64
golden, tolerances, verdicts, worker isolation). A batch that fails to export or convert is
split in halves until the failing samples stand alone. Every (operator, backend) cell is
stored as it finishes, so a rerun resumes; ``--force`` recomputes.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import write_atomic
from .chatter import captured
from .errors import BadInput, first_line
from .reference import to_numpy
from .registry import adapter_class
from .specs import parse_spec
from .triage import classify

CELL_SCHEMA = "backendiff.ops.cell/1"
#: a sample larger than this (elements over all its tensors) is left out: the database's
#: samples are small; the bound keeps a whole run's memory and time in hand
MAX_ELEMENTS = 1 << 16
DTYPES = {"fp32": "float32"}


@dataclass(frozen=True)
class OpCase:
    """One operator of the database at one dtype: its name (``name`` or ``name.variant``), the
    callable, and the samples kept (tensors, and the structure around them)."""
    name: str
    dtype: str
    op: object
    samples: tuple


def op_name(info) -> str:
    return f"{info.name}.{info.variant_test_name}" if info.variant_test_name else info.name


def load_database():
    """PyTorch's OpInfo database (its test suite's; it needs ``expecttest``)."""
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except ImportError as e:
        raise BadInput(f"PyTorch's operator database needs {e.name or 'expecttest'}: "
                       "pip install expecttest (or backendiff[hf])") from None
    return op_db


def select(database, patterns: list[str], dtype: str) -> list:
    """The OpInfos whose name matches one of the glob ``patterns`` and that support ``dtype``
    on the CPU, in the database's order."""
    import torch

    want = getattr(torch, DTYPES[dtype])
    return [info for info in database if any(fnmatch.fnmatch(op_name(info), p) for p in patterns)
            and want in info.supported_dtypes("cpu")]


def tensors_of(value) -> list:
    """Every tensor in a nested structure of tuples, lists and dicts, in order."""
    import torch
    from torch.utils import _pytree as pytree

    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def usable(sample) -> bool:
    """A sample the export can take: plain dense CPU tensors, within ``MAX_ELEMENTS``."""
    import torch

    parts = tensors_of((sample.input, sample.args, sample.kwargs))
    return bool(parts) and all(t.layout == torch.strided and not t.is_complex() for t in parts) \
        and sum(t.numel() for t in parts) <= MAX_ELEMENTS


def cases(database, patterns: list[str], dtype: str, limit: int) -> list[OpCase]:
    import torch

    out = []
    for info in select(database, patterns, dtype):
        try:
            samples = [s for s in info.sample_inputs("cpu", getattr(torch, DTYPES[dtype])) if usable(s)][:limit]
        except Exception:  # noqa: BLE001 - a database entry whose sample generator fails here is skipped
            samples = []
        out.append(OpCase(op_name(info), dtype, info.op, tuple(samples)))
    return out


def sample_module(case: OpCase, indices: list[int]):
    """(module, inputs, outputs per sample): ``batch_module`` of one operator."""
    module, inputs, counts = batch_module([Part(case, tuple(indices))])
    return module, inputs, counts[0]


@dataclass(frozen=True)
class Part:
    """One operator's chosen samples within a batch module, and the ATen operators each of
    them exports to (what tells which operator of a batch, and which samples, a failure
    names; empty where unknown)."""
    case: OpCase
    indices: tuple
    sample_aten: tuple = ()

    @property
    def aten(self) -> set[str]:
        return set().union(*(self.sample_aten[i] for i in self.indices)) if self.sample_aten else set()


def batch_module(parts: list[Part]):
    """(module, inputs, outputs per sample of each part): a module whose forward runs each
    part's operator on each of its chosen samples, their tensors passed as the module's
    inputs (non-tensor arguments are constants of the graph), returning every tensor result
    as one flat tuple. One export and one compile serve every operator of the batch."""
    import torch
    from torch.utils import _pytree as pytree

    calls, inputs, counts = [], [], []
    for part in parts:
        mine = []
        for i in part.indices:
            s = part.case.samples[i]
            leaves, spec = pytree.tree_flatten((s.input, s.args, s.kwargs))
            where = [k for k, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
            calls.append((part.case.op, leaves, spec, where, len(inputs)))
            inputs += [leaves[k].detach().clone() for k in where]
            with torch.no_grad():
                mine.append(len(tensors_of(part.case.op(s.input, *s.args, **s.kwargs))))
        counts.append(mine)

    class Samples(torch.nn.Module):
        def forward(self, *tensors):
            results = []
            for op, leaves, spec, where, start in calls:
                filled = list(leaves)
                for j, k in enumerate(where):
                    filled[k] = tensors[start + j]
                x, args, kwargs = pytree.tree_unflatten(filled, spec)
                results += [as_real(t) for t in tensors_of(op(x, *args, **kwargs))]
            return tuple(results)

    return Samples().eval(), tuple(inputs), counts


def as_real(t):
    """A complex result as its real view (a trailing dimension of 2): how every exporter
    carries complex tensors, so that a runtime is not called wrong for the representation."""
    import torch

    return torch.view_as_real(t.resolve_conj()) if t.is_complex() else t


def aten_ops(case: OpCase) -> list[frozenset]:
    """The ATen operators each of an operator's samples exports to (``selu``,
    ``max_pool2d_with_indices``), from one export of all of them: a node is a sample's when
    one of that sample's results depends on it. What the pre-flight of ``compare`` matches a
    model's graph against (their union), and what tells which samples a runtime's
    "unsupported operator" failure is about. Empty sets where the samples do not export."""
    import torch

    try:
        module, inputs, counts = sample_module(case, list(range(len(case.samples))))
        with captured(streams=True):
            graph = torch.export.export(module, inputs, strict=False).graph
    except Exception:  # noqa: BLE001 - then the cell itself says why
        return [frozenset() for _ in case.samples]
    results = list(torch.utils._pytree.tree_leaves(next(n for n in graph.nodes if n.op == "output").args))
    reach = upstream(results, [i for i, n in enumerate(counts) for _ in range(n)])   # sample -> its nodes
    return [frozenset(str(n.target._opname) for n in reach.get(i, ())
                      if n.op == "call_function" and getattr(n.target, "_opname", None)) for i in range(len(counts))]


def upstream(results: list, owners: list) -> dict:
    """Owner -> every FX node that one of its results (``results[k]`` is ``owners[k]``'s)
    depends on, itself included."""
    import torch

    found: dict = {}
    for node, who in zip(results, owners):
        mine, todo = found.setdefault(who, set()), [node]
        while todo:
            n = todo.pop()
            if isinstance(n, torch.fx.Node) and n not in mine:
                mine.add(n)
                todo += n.all_input_nodes
    return found


def all_aten(sets) -> list[str]:
    return sorted(set().union(*sets))


def _plain(value):
    """An argument value as plain JSON data (lists for tuples, text for dtypes and the like)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def node_arguments(node, graph_module) -> dict:
    """A call's non-tensor arguments by their schema names (``kernel_size``, ``ceil_mode``):
    what tells a model's call apart from the samples that diverged."""
    import torch

    try:
        pair = node.normalized_arguments(graph_module, normalize_to_only_use_kwargs=True)
    except Exception:  # noqa: BLE001 - an op without a schema PyTorch can normalize: no arguments to match
        pair = None
    if pair is None:
        return {}
    nodes = torch.fx.node.map_arg
    out = {}
    for key, value in pair.kwargs.items():
        found = []
        nodes(value, found.append)
        if not found:
            out[key] = _plain(value)
    return out


def sample_calls(case: OpCase, index: int, aten: list[str]) -> list[dict]:
    """The ATen calls (``aten`` ops only) one sample exports to, each with its arguments."""
    import torch

    module, inputs, _ = sample_module(case, [index])
    try:
        with captured(streams=True):
            ep = torch.export.export(module, inputs, strict=False)
    except Exception:  # noqa: BLE001 - a sample that does not export has no calls to record
        return []
    return [{"op": str(n.target._opname), "args": node_arguments(n, ep.graph_module)} for n in ep.graph.nodes
            if n.op == "call_function" and str(getattr(n.target, "_opname", "")) in aten]


def diverging_calls(case: OpCase, cell: dict, aten: list[str], limit: int = 8) -> dict:
    """The calls of (up to ``limit``) diverged and agreeing samples of a diverged cell: what
    the pre-flight matches a model's calls against (``same_arguments``)."""
    bad = set(cell.get("diverged_indices") or [])
    explained = {e["index"] for e in cell.get("semantics_examples") or []}
    good = [i for i in range(len(case.samples)) if i not in bad and i not in explained]
    return {"diverged": [c for i in sorted(bad)[:limit] for c in sample_calls(case, i, aten)],
            "agreeing": [c for i in good[:limit] for c in sample_calls(case, i, aten)]}


def same_arguments(calls: dict | None, op: str, args: dict) -> tuple[bool | None, dict]:
    """Whether a model's call of ``op`` with ``args`` is like a diverged sample: on the
    arguments whose values only diverging samples have (every value of ``ceil_mode`` among
    diverged samples is True, never among agreeing ones). Returns (True / False, the
    deciding arguments), or (None, {}) where no argument tells them apart (then only the
    operator is known to diverge)."""
    if not calls:
        return None, {}
    diverged = [c["args"] for c in calls.get("diverged", []) if c["op"] == op]
    agreeing = [c["args"] for c in calls.get("agreeing", []) if c["op"] == op]
    if not diverged:                  # this ATen op only ever agreed (another overload diverged)
        return (False, {}) if agreeing else (None, {})

    def seen(group, key):
        return {json.dumps(a.get(key), sort_keys=True) for a in group if key in a}

    keys = [k for k in diverged[0] if all(k in d for d in diverged) and agreeing
            and not (seen(diverged, k) & seen(agreeing, k))]
    if not keys:
        return None, {}
    for d in diverged:
        if all(json.dumps(args.get(k), sort_keys=True) == json.dumps(d[k], sort_keys=True) for k in keys):
            return True, {k: d[k] for k in keys}
    return False, {k: diverged[0][k] for k in keys}


def describe(sample) -> str:
    """The sample's arguments in one line: shapes for tensors, values for the rest."""
    import torch

    def show(v):
        if isinstance(v, torch.Tensor):
            return f"Tensor{list(v.shape)}:{str(v.dtype).replace('torch.', '')}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(show(x) for x in v) + "]"
        return repr(v)

    args = [show(sample.input)] + [show(a) for a in sample.args] + [f"{k}={show(v)}" for k, v in sample.kwargs.items()]
    return ", ".join(args)


# -- cells: operators on backends, many operators per module ------------------------------------
#: operators per batch module: one export, one reference and one compile per backend serve
#: all of them (a batch that fails is split until the failing operator, then its failing
#: samples, stand alone)
OPS_PER_MODULE = 8
MAX_DEPTH = 16
#: failures of these stages can belong to one operator or sample of a batch: worth a split
SPLIT_STAGES = ("export", "convert", "compile", "run")


def run_batch(batch: list[OpCase], specs: list[str], config, aten: dict | None = None) -> dict[tuple[str, str], dict]:
    """The cells (operator, spec) -> ``agree`` / ``semantics`` / ``diverged`` (worst sample,
    its arguments and metrics) / ``failed`` (stage and first line; the samples that fail
    alone, found by splitting the batch) / ``skipped`` (why), for every operator of
    ``batch`` on every spec, run as one module (``aten``: the ATen operators of each of an
    operator's samples)."""
    out, parts = {}, []
    for case in batch:
        if case.samples:
            parts.append(Part(case, tuple(range(len(case.samples))), tuple((aten or {}).get(case.name) or ())))
        else:
            out |= {(case.name, s): {"status": "skipped", "reason": "no sample of this dtype within the size bound"}
                    for s in specs}
    if parts:
        t0 = time.perf_counter()
        found = _run_parts(parts, specs, config)
        share = round((time.perf_counter() - t0) / len(parts), 3)      # each operator's share of the batch
        out |= {key: cell | {"wall_s": share, "batch_ops": len(parts)} for key, cell in found.items()}
    return out


def _run_parts(parts: list[Part], specs: list[str], config, depth: int = 0) -> dict:
    import backendiff

    def each(cell: dict, on=specs) -> dict:
        return {(p.case.name, s): dict(cell, samples=len(p.indices)) for p in parts for s in on}

    splittable = depth < MAX_DEPTH and (len(parts) > 1 or len(parts[0].indices) > 1)
    try:
        module, inputs, counts = batch_module(parts)
    except Exception as e:  # noqa: BLE001 - PyTorch itself cannot run these samples: nothing to compare
        if len(parts) > 1:
            return _halves(parts, specs, config, depth)
        return each({"status": "skipped", "reason": f"PyTorch eager: {type(e).__name__}: {first_line(e)[:200]}"})
    try:
        report = backendiff.compare(module, inputs=inputs, backends=specs, config=config.but(keep_outputs=True))
    except BadInput as e:  # the reference itself cannot run the batch as one module (e.g. an in-place op on
        # an input another sample reads): the halves alone, else nothing to compare
        if splittable:
            return _halves(parts, specs, config, depth)
        return each({"status": "skipped", "reason": f"PyTorch eager: {first_line(e)[:200]}"})
    except Exception as e:  # noqa: BLE001 - backendiff itself failed on these samples: a cell says so, the run goes on
        if splittable:
            return _halves(parts, specs, config, depth)
        return {(p.case.name, s): failed_cell(p, "backendiff", f"{type(e).__name__}: {first_line(e)}")
                for p in parts for s in specs}
    # PyTorch's arrays, computed once and only when a sample diverged
    reference = functools.cache(lambda: _eager(module, inputs))

    out, again, named = {}, [], set()
    owners = functools.cache(lambda decompose: sample_targets(module, inputs, parts, counts, decompose))
    for spec, b in zip(specs, report.backends):
        if b.status == "unavailable":
            out |= each({"status": "skipped", "reason": f"unavailable: {b.error['message']}"}, [spec])
            continue
        if b.status in ("failed", "crashed", "timeout"):
            err = b.error or {}
            missing = adapter_class(parse_spec(spec).name).failed_nodes(err)
            failing = missing and failing_samples(owners(missing.decompose), missing)
            if failing:     # the samples the failure is certainly about: failed, without a split
                out |= _without(parts, failing, spec, err, config, depth)
                continue
            # another failure can be one operator's or one sample's (an argument the runtime
            # does not support): split until the failing samples stand alone
            if splittable and err.get("stage") in SPLIT_STAGES:
                again.append(spec)
                named |= named_parts(err, parts)
                continue
            out |= {(p.case.name, spec): failed_cell(p, err.get("stage"), failure_line(err)) for p in parts}
            continue
        start = 0
        for p, n in zip(parts, counts):
            stop = start + sum(n)
            arrays = None if b.arrays is None else b.arrays[start:stop]
            try:
                out[(p.case.name, spec)] = verdicts(p.case, p.indices, n, b.outputs[start:stop], arrays,
                                                    lambda a=start, z=stop: reference()[a:z])
            except Exception as e:  # noqa: BLE001 - backendiff failed on this operator's results: its cell says so
                out[(p.case.name, spec)] = failed_cell(p, "backendiff", f"{type(e).__name__}: {first_line(e)}")
            start = stop
    if again:
        out |= _halves(parts, again, config, depth, named)
    return out


def sample_targets(module, inputs, parts: list[Part], counts: list[list[int]], decompose) -> dict:
    """(part index, sample index) -> the (operator type, has complex inputs) of every node
    its results depend on in the batch module's program as ``decompose(ep)`` gives it (as a
    route decomposes it); empty where it does not export."""
    import torch

    try:
        with captured(streams=True):
            ep = decompose(torch.export.export(module, inputs, strict=False))
    except Exception:  # noqa: BLE001 - nothing to tell the samples apart by: the batch is split instead
        return {}
    owners = [(k, i) for k, (p, n) in enumerate(zip(parts, counts)) for i, c in zip(p.indices, n) for _ in range(c)]
    nodes = {n.name: n for n in ep.graph.nodes}
    results = [nodes.get(o.arg.name) if hasattr(o.arg, "name") else None for o in ep.graph_signature.output_specs
               if o.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT]

    def has_complex_input(n) -> bool:
        return any(getattr(a.meta.get("val"), "is_complex", lambda: False)() for a in n.all_input_nodes)

    return {who: {(str(n.target), has_complex_input(n)) for n in mine if n.op == "call_function"}
            for who, mine in upstream(results, owners).items()}


def failing_samples(targets: dict, missing) -> dict:
    """(part index, sample index) -> the untranslatable types (``backends.base.FailedNodes``)
    its program has a node of, for the samples that have one."""
    def hit(target: str, complex_in: bool) -> str | None:
        if missing.complex is not None and complex_in != missing.complex:
            return None
        bare = target.split(".", 1)[-1]      # TVM names overloads without their namespace
        return target if target in missing.targets else bare if bare in missing.targets else None

    found = {who: {h for t, c in nodes if (h := hit(t, c))} for who, nodes in targets.items()}
    return {who: hits for who, hits in found.items() if hits}


def _without(parts: list[Part], failing: dict, spec: str, err: dict, config, depth: int) -> dict:
    """The cells of ``spec`` when the samples ``failing`` are known to fail (operators the
    route cannot translate): theirs failed (naming the types each operator has, where the
    failure names more), the others run again without them, merged."""
    line, cells, rest = failure_line(err), {}, []
    named = set().union(*failing.values())
    for k, p in enumerate(parts):
        bad = tuple(i for i in p.indices if (k, i) in failing)
        good = tuple(i for i in p.indices if (k, i) not in failing)
        if bad:
            mine = set().union(*(failing[(k, i)] for i in bad))
            said = line if mine == named else f"{', '.join(sorted(mine))}: {line}"
            cells[p.case.name] = [failed_cell(Part(p.case, bad), err.get("stage"), said)]
        if good:
            rest.append(Part(p.case, good, p.sample_aten))
    if rest:
        for (name, _), cell in _run_parts(rest, [spec], config, depth + 1).items():
            cells.setdefault(name, []).append(cell)
    return {(name, spec): merge(found) if len(found) > 1 else found[0] for name, found in cells.items()}


def failed_cell(part: Part, stage: str | None, message: str) -> dict:
    """The cell of an operator whose every sample in ``part`` failed at ``stage``."""
    return {"status": "failed", "stage": stage, "message": message[:300], "samples": len(part.indices),
            "failed_samples": len(part.indices), "index": part.indices[0],
            "examples": [describe(part.case.samples[i]) for i in part.indices[:3]]}


def _halves(parts: list[Part], specs: list[str], config, depth: int, named: set = frozenset()) -> dict:
    """A failed batch run again in two: the operators a failure names apart from the others,
    else halves of its operators, else (one operator) halves of its samples, whose cells
    are merged."""
    if len(parts) > 1:
        first = [p for p in parts if p.case.name in named]
        if not first or len(first) == len(parts):
            first = parts[:len(parts) // 2]
        rest = [p for p in parts if p.case.name not in {q.case.name for q in first}]
        return _run_parts(first, specs, config, depth + 1) | _run_parts(rest, specs, config, depth + 1)
    p, half = parts[0], len(parts[0].indices) // 2
    left = _run_parts([Part(p.case, p.indices[:half], p.sample_aten)], specs, config, depth + 1)
    right = _run_parts([Part(p.case, p.indices[half:], p.sample_aten)], specs, config, depth + 1)
    return {key: merge([left[key], right[key]]) for key in left}


def named_parts(err: dict, parts: list[Part]) -> set[str]:
    """The operators of a batch a failure names: by their database name, by the ATen
    operator the runtime reports (``error.operator``), or by an ATen operator of theirs
    that not every operator of the batch has."""
    message, operator = err.get("message") or "", (err.get("operator") or "").split(".")
    reported = operator[1] if len(operator) > 2 and operator[0] == "aten" else None
    shared = set.intersection(*(set(p.aten) for p in parts)) if parts else set()
    return {p.case.name for p in parts
            if names_the_op(message, p.case.name) or (reported and reported in p.aten)
            or any(names_the_op(message, a) for a in p.aten if a not in shared)}


#: lines of a runtime's failure that say where it was raised, not what failed (OpenVINO's
#: assertion sites and its conversion report's framing)
BOILERPLATE = re.compile(r"^(Check '.*' failed at |FrontEnd API failed|Model wasn't fully converted|Exception happened "
                         r"during conversion|While validating node|Summary:|-- |Exception from src/)")


def failure_line(err: dict) -> str:
    """The line of a failure that says what failed (OpenVINO's first line is only its
    assertion site), with the operator the runtime reports where the line lacks it."""
    lines = [line.strip() for line in (err.get("message") or "").splitlines() if line.strip()]
    useful = [line for line in lines if not BOILERPLATE.match(line)]
    line = useful[0] if useful else (lines[0] if lines else "")
    op = err.get("operator")
    return f"{op}: {line}" if op and not all(o.strip() in line for o in op.split(",")) else line


def names_the_op(message: str, name: str) -> bool:
    """Whether a failure names the operator (``Unsupported function types ['nonzero.default']``
    names ``nonzero``): what tells which operator of a batch a failure is about."""
    base = name.split(".")[-1] if not name.startswith("nn.functional.") else name.split(".")[2]
    return bool(re.search(rf"(?<![A-Za-z0-9]){re.escape(base)}(?![A-Za-z0-9])", message))


def verdicts(case: OpCase, indices, counts: list[int], outputs: list, arrays: list | None, reference) -> dict:
    """Per-sample verdicts of one operator from its ``outputs`` of a run (``counts``: results
    per sample; ``arrays``: the backend's values, ``reference()``: PyTorch's, for triage). A
    diverged sample that a triage rule explains (tie order, a random draw, undefined values)
    is counted apart as ``semantics``: the cell is ``diverged`` only for the others."""
    bad, explained, start = [], [], 0
    for i, n in zip(indices, counts):
        mine = outputs[start:start + n]
        diverged = [o for o in mine if o.status == "diverged"]
        if diverged:
            worst = min(diverged, key=lambda o: (o.metrics or {}).get("sqnr_db") or -1e9)
            entry = {"sample": describe(case.samples[i]), "index": i, "metrics": worst.metrics,
                     "reason": worst.reason or ("another shape" if worst.reference_shape else "outside tolerance")}
            why = None
            if arrays is not None:
                s = case.samples[i]
                why = classify(case.name, [to_numpy(t) for t in tensors_of((s.input, s.args, s.kwargs))],
                               reference()[start:start + n], arrays[start:start + n], dict(s.kwargs))
            (explained if why else bad).append(entry | ({"triage": why} if why else {}))
        start += n
    out = {"samples": len(indices)}
    if explained:
        out |= {"semantics_samples": len(explained), "semantics": explained[0]["triage"],
                "semantics_examples": explained[:3]}
    if bad:
        return {"status": "diverged", **out, "diverged_samples": len(bad), "worst": bad[0], "examples": bad[:3],
                "diverged_indices": [e["index"] for e in bad]}
    return {"status": "semantics" if explained else "agree", **out}


def _eager(module, inputs) -> list[np.ndarray]:
    """PyTorch eager's outputs of the sample module, as numpy arrays (what triage compares)."""
    import torch

    with torch.no_grad():
        return [to_numpy(t) for t in tensors_of(module(*inputs))]


def merge(parts: list[dict]) -> dict:
    """Two halves of a batch into one cell: failed wins over diverged over semantics over agree."""
    order = {"failed": 0, "diverged": 1, "semantics": 2, "agree": 3, "skipped": 4}
    parts = sorted(parts, key=lambda p: order.get(p["status"], 4))
    first = dict(parts[0])
    total = sum(p.get("samples", 0) for p in parts)
    first["samples"] = total
    if first["status"] == "failed":
        first["failed_samples"] = sum(p.get("failed_samples", 0) for p in parts if p["status"] == "failed")
        first["examples"] = [e for p in parts if p["status"] == "failed" for e in p["examples"]][:3]
        other = next((p for p in parts if p["status"] == "diverged"), None)
        if other:
            first["also_diverged"] = other["worst"]
    elif first["status"] == "diverged":
        first["diverged_samples"] = sum(p.get("diverged_samples", 0) for p in parts)
        first["diverged_indices"] = [i for p in parts for i in p.get("diverged_indices", [])]
    explained = [p for p in parts if p.get("semantics_samples")]
    if explained:
        first["semantics_samples"] = sum(p["semantics_samples"] for p in explained)
        first["semantics"] = explained[0]["semantics"]
    return first


# -- the run: every cell, stored as it finishes ---------------------------------------------------
def cell_path(out: Path, name: str, spec: str, dtype: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{name}__{spec}__{dtype}")
    return out / "cells" / f"{safe}.json"


def run(patterns: list[str], specs: list[str], dtypes: list[str], limit: int, out: Path, force: bool,
        config, progress=lambda m: None, batch: int | None = None, jobs: int = 1) -> dict:
    """Every operator matching ``patterns`` × ``specs`` × ``dtypes``, ``batch`` operators per
    module, the batches shared by ``jobs`` processes; every cell is stored as its batch
    finishes and read back on a rerun (``force`` recomputes). Returns the matrix."""
    for d in dtypes:
        if d not in DTYPES:
            raise BadInput(f"--dtypes {d!r}: supported here: {', '.join(DTYPES)}")
    if (batch is not None and batch < 1) or jobs < 1:
        raise BadInput("--batch and --jobs must be at least 1")
    database = load_database()
    (out / "cells").mkdir(parents=True, exist_ok=True)
    rows = []
    for dtype in dtypes:
        chosen = cases(database, patterns, dtype, limit)
        if not chosen:
            raise BadInput(f"no operator of PyTorch's database matches {', '.join(patterns)} at {dtype}")
        mine = [{"op": case.name, "dtype": dtype, "cells": {}, "aten": None} for case in chosen]
        pending: dict[tuple, list] = {}          # the specs still to run -> the operators that need them
        for case, row in zip(chosen, mine):
            todo = []
            for spec in specs:
                path = cell_path(out, case.name, spec, dtype)
                if path.exists() and not force:
                    row["cells"][spec] = json.loads(path.read_text())
                    row["aten"] = row["aten"] or row["cells"][spec].get("aten")
                else:
                    todo.append(spec)
            if todo:
                pending.setdefault(tuple(todo), []).append((case, row))
        size = batch or batch_size(sum(len(e) for e in pending.values()), jobs)
        groups = [(todo, entries[k:k + size]) for todo, entries in pending.items()
                  for k in range(0, len(entries), size)]
        started, parallel = time.time(), jobs > 1 and len(groups) > 1
        if parallel:
            _in_jobs(groups, jobs, dtype, config, out, progress)
        done, total = 0, sum(len(group) for _, group in groups)
        for todo, group in groups:
            if parallel and _read_stored(todo, group, dtype, out, started):     # a job made them
                continue
            progress(f"ops {done + 1}-{done + len(group)}/{total}: "
                     f"{', '.join(case.name for case, _ in group)} on {', '.join(todo)}")
            _run_group(todo, group, dtype, config, out)
            done += len(group)
        rows += mine
    matrix = {"schema": "backendiff.ops/1", "specs": specs, "dtypes": dtypes, "patterns": patterns, "rows": rows,
              "summary": summary(rows, specs)}
    (out / "matrix.json").write_text(json.dumps(matrix, indent=1, default=_json))
    latest = latest_matrix_path(config.cache_dir)
    latest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(latest, lambda tmp: tmp.write_text(json.dumps(matrix, default=_json)))
    return matrix


def batch_size(operators: int, jobs: int) -> int:
    """Operators per module by default: ``OPS_PER_MODULE``, fewer where that would leave a job
    fewer than two batches (a filtered run's few batches differ tenfold in cost)."""
    return max(1, min(OPS_PER_MODULE, math.ceil(operators / (2 * jobs))))


def _run_group(todo: tuple, group: list, dtype: str, config, out: Path) -> None:
    """One batch: its operators' ATen operators, the batch on every spec of ``todo``, each
    cell stored and set on its row."""
    sample_aten = {case.name: aten_ops(case) for case, _ in group}
    for case, row in group:
        row["aten"] = row["aten"] if row["aten"] is not None else all_aten(sample_aten[case.name])
    found = run_batch([case for case, _ in group], list(todo), config, sample_aten)
    for case, row in group:
        for spec in todo:
            row["cells"][spec] = _store(case, spec, dtype, row["aten"], found[(case.name, spec)], out)


def _read_stored(todo: tuple, group: list, dtype: str, out: Path, since: float) -> bool:
    """Set a batch's cells stored since ``since`` (by a job of this run, not an earlier run
    that ``--force`` recomputes) on its rows; False (nothing set) where one is missing."""
    paths = {(case.name, spec): cell_path(out, case.name, spec, dtype) for case, _ in group for spec in todo}
    if not all(p.exists() and p.stat().st_mtime >= since for p in paths.values()):
        return False
    for case, row in group:
        for spec in todo:
            row["cells"][spec] = json.loads(paths[(case.name, spec)].read_text())
        row["aten"] = row["cells"][todo[0]].get("aten")
    return True


def _in_jobs(groups: list, jobs: int, dtype: str, config, out: Path, progress) -> None:
    """The batches shared among ``jobs`` forked processes, each storing its cells as they
    finish; a batch a job did not finish (it died) is left for the caller to run."""
    import multiprocessing
    from multiprocessing.connection import wait

    paths = [cell_path(out, case.name, spec, dtype) for todo, group in groups for case, _ in group for spec in todo]
    ctx = multiprocessing.get_context("fork")
    taken = ctx.Value("i", 0)      # the next batch to take: a job free takes it (batches differ tenfold in cost)
    procs = [ctx.Process(target=_job, args=(groups, taken, dtype, config, out)) for _ in range(jobs)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            progress(f"ops: {sum(p.exists() for p in paths)}/{len(paths)} cells, {jobs} jobs")
            wait([p.sentinel for p in procs if p.is_alive()], timeout=2.0)      # no spinning once one job is done
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


def _job(groups: list, taken, dtype: str, config, out: Path) -> None:
    import torch

    torch.set_num_threads(1)       # GNU OpenMP's thread pool does not survive a fork
    while True:
        with taken.get_lock():
            k = taken.value
            taken.value += 1
        if k >= len(groups):
            return
        _run_group(*groups[k], dtype, config, out)


def _store(case: OpCase, spec: str, dtype: str, aten: list[str], found: dict, out: Path) -> dict:
    """One finished cell with what it needs beyond its verdict (the diverging calls the
    pre-flight matches, a reproducer), written to the store."""
    cell = {"schema": CELL_SCHEMA, "op": case.name, "spec": spec, "dtype": dtype, "aten": aten, **found}
    if cell["status"] == "diverged" and aten:
        cell["calls"] = diverging_calls(case, cell, aten)
    index = (cell.get("worst") or {}).get("index", cell.get("index"))
    if cell["status"] in ("diverged", "failed") and index is not None:
        made = reproducer(case, index, spec, out / "reproducers")
        if made is not None:
            cell["reproducer"] = str(made)
    write_atomic(cell_path(out, case.name, spec, dtype), lambda tmp: tmp.write_text(json.dumps(cell, default=_json)))
    return cell


def cell_text(cell: dict) -> str:
    """One line of what a cell found, beyond its status (terminal and HTML matrix)."""
    status = cell.get("status", "-")
    if status == "diverged":
        w = cell["worst"]
        sqnr = (w.get("metrics") or {}).get("sqnr_db")
        shown = "n/a" if sqnr is None else ("inf" if sqnr == float("inf") else f"{sqnr:.1f}")
        return f"{cell['diverged_samples']}/{cell['samples']} · SQNR {shown} dB · {w['reason']} · {w['sample'][:120]}"
    if status == "failed":
        return f"[{cell.get('stage')}] {cell.get('message', '')[:160]} ({cell.get('failed_samples')} samples)"
    if status == "skipped":
        return cell.get("reason", "")[:80]
    if status == "semantics":
        return f"{cell.get('semantics_samples')}/{cell.get('samples')} · {cell['semantics']['reason']}"
    if status == "agree":
        return f"{cell.get('samples')} samples"
    return ""


def html_view(matrix: dict, out: Path) -> dict:
    """What the HTML matrix shows: per operator, each backend's status, text and the
    reproducer's path relative to the page in ``out``."""
    specs = matrix["specs"]
    rows = []
    for row in matrix["rows"]:
        cells = []
        for spec in specs:
            cell = row["cells"].get(spec, {})
            repro = cell.get("reproducer")
            if repro:
                try:
                    repro = str(Path(repro).resolve().relative_to(Path(out).resolve()))
                except ValueError:
                    repro = Path(repro).resolve().as_uri()
            cells.append({"status": cell.get("status", "missing"), "text": cell_text(cell), "reproducer": repro})
        rows.append({"op": row["op"], "aten": row.get("aten") or [], "cells": cells,
                     "bad": any(c["status"] in ("diverged", "failed") for c in cells)})
    statuses = ["agree", "diverged", "semantics", "failed", "skipped"]
    return {"matrix": matrix, "specs": specs, "rows": rows, "statuses": statuses}


def exit_code(matrix: dict) -> int:
    """1 when some operator diverged or failed on some backend (semantics choices do not
    count), else 0."""
    return int(any(cell.get("status") in ("diverged", "failed") for row in matrix["rows"]
                   for cell in row["cells"].values()))


def latest_matrix_path(cache_dir=None) -> Path:
    """Where the latest operator matrix is kept for ``compare``'s pre-flight (in the cache)."""
    from .cache import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "ops" / "matrix.json"


# -- pre-flight: a backend about to run an operator the matrix knows it gets wrong --------------
def preflight(matrix: dict | None, layers, specs: list[str], arguments: dict | None = None) -> dict[str, list[dict]]:
    """spec -> the model's operators that diverged or failed on that spec in ``matrix``: the
    matrix row, its status and worst SQNR, and where the model uses the operator (module,
    source line; ``layers`` are the model's FX layers). Where the cell recorded which
    arguments only its diverging samples have (``same_arguments``), only the model's calls
    with those arguments count (``arguments``: FX node name -> its arguments) and the note
    names them; a model whose every call differs gets no note."""
    if not matrix:
        return {}
    uses: dict[str, list] = {}
    for layer in layers:
        uses.setdefault(layer.op_type, []).append(layer)
    arguments = arguments or {}
    out: dict[str, list[dict]] = {}
    for row in matrix.get("rows", []):
        ops = [op for op in row.get("aten") or [] if op in uses]
        if not ops:
            continue
        for spec in specs:
            cell = row.get("cells", {}).get(spec) or {}
            if cell.get("status") not in ("diverged", "failed"):
                continue
            hits, deciding = [], {}
            for op in ops:
                for layer in uses[op]:
                    like, keys = same_arguments(cell.get("calls"), op, arguments.get(layer.node, {}))
                    if like is not False:
                        hits.append(layer)
                        deciding = deciding or (keys if like else {})
            if not hits:
                continue
            where = [{"module": layer.module, "op": layer.op_type, "source": layer.source} for layer in hits][:3]
            sqnr = ((cell.get("worst") or {}).get("metrics") or {}).get("sqnr_db")
            out.setdefault(spec, []).append({"op": row["op"], "status": cell["status"], "sqnr_db": sqnr,
                                             "stage": cell.get("stage"), "where": where,
                                             **({"arguments": deciding} if deciding else {})})
    return out


def load_latest_matrix(cache_dir=None) -> dict | None:
    path = latest_matrix_path(cache_dir)
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _json(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def summary(rows: list[dict], specs: list[str]) -> dict:
    """Per backend: how many operators agree, diverge, fail, are skipped."""
    out = {}
    for spec in specs:
        counts: dict[str, int] = {}
        for row in rows:
            status = row["cells"].get(spec, {}).get("status", "missing")
            counts[status] = counts.get(status, 0) + 1
        out[spec] = counts
    return out


# -- standalone reproducers: something to attach to the runtime's issue tracker ---------------
#: how each runtime runs an ExportedProgram ``ep`` on numpy ``arrays``, written without
#: backendiff (the default route of each adapter, fp32)
RUNTIME_CODE = {
    "ort": '''import onnxruntime as ort
path = HERE / "{stem}.onnx"
torch.onnx.export(ep, dynamo=True, optimize=True).save(str(path))
session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
names = [i.name for i in session.get_inputs()]
got = session.run(None, dict(zip(names, arrays)))''',
    "openvino": '''import openvino as ov
compiled = ov.Core().compile_model(ov.convert_model(ep), "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
results = compiled.create_infer_request().infer(arrays)
got = [np.array(results[o]) for o in compiled.outputs]''',
    "tvm": '''import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program
mod = from_exported_program(ep, keep_params_as_input=False)
vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
result = vm["main"](*[tvm.runtime.tensor(a, tvm.cpu()) for a in arrays])
def flat(v):
    return [v.numpy()] if hasattr(v, "numpy") else [x for item in v for x in flat(item)]
got = flat(result)''',
}


def callable_path(op) -> str | None:
    """``torch.nn.functional.selu`` for an operator the database gives as a public function
    of torch, else None (a lambda or a test helper cannot be imported by a reproducer)."""
    import importlib

    module, name = getattr(op, "__module__", None) or "torch", getattr(op, "__name__", "")
    if not name or name == "<lambda>":
        return None
    for candidate in (f"{module}.{name}", f"torch.{name}", f"torch.nn.functional.{name}", f"torch.special.{name}",
                      f"torch.linalg.{name}", f"torch.fft.{name}"):
        head, _, attr = candidate.rpartition(".")
        try:
            if getattr(importlib.import_module(head), attr, None) is op:
                return candidate
        except ImportError:
            continue
    return None


def literal(value, tensors: list) -> str:
    """Python source for a sample's argument, its tensors replaced by ``T[i]`` (stored apart)."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors.append(value.detach().cpu().numpy())
        return f"T[{len(tensors) - 1}]"
    if isinstance(value, (list, tuple)):
        items = ", ".join(literal(v, tensors) for v in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {literal(v, tensors)}" for k, v in value.items()) + "}"
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return f"float({str(value)!r})"
    return repr(value)


def reproducer(case: OpCase, index: int, spec: str, folder: Path) -> Path | None:
    """A standalone ``.py`` (and the ``.npz`` of its tensors) that runs sample ``index`` of
    ``case`` in PyTorch and on the runtime of ``spec`` and prints how far apart they are; no
    backendiff import. None where the operator has no importable callable or the spec is
    not a plain fp32 default route."""
    base = spec.split(":")[0]
    if base not in RUNTIME_CODE or "," in spec or (":" in spec and not spec.endswith(":fp32")):
        return None
    path = callable_path(case.op)
    if path is None:
        return None
    sample, tensors = case.samples[index], []
    args = literal((sample.input, *sample.args), tensors)
    kwargs = literal(dict(sample.kwargs), tensors)
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{case.name}__{base}")
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{stem}.npz", **{f"t{i}": t for i, t in enumerate(tensors)})
    source = f'''"""{case.name} on {base}: PyTorch and the runtime disagree on this sample (made by backendiff ops;
runs without backendiff: python {stem}.py)."""
from pathlib import Path

import numpy as np
import torch
import {path.rsplit(".", 1)[0]}

HERE = Path(__file__).resolve().parent
stored = np.load(HERE / "{stem}.npz")
T = [torch.from_numpy(stored[f"t{{i}}"]) for i in range(len(stored.files))]


class Sample(torch.nn.Module):
    def forward(self, *T):
        out = {path}(*{args}, **{kwargs})
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return tuple(torch.view_as_real(t.resolve_conj()) if t.is_complex() else t for t in out)  # as exporters carry it


inputs = tuple(T)
expected = [t.detach().numpy() for t in Sample()(*inputs)]
ep = torch.export.export(Sample(), inputs)
arrays = [t.numpy() for t in inputs]
{RUNTIME_CODE[base].format(stem=stem)}
for i, (e, g) in enumerate(zip(expected, got)):
    g = np.asarray(g)
    if e.shape != g.shape:
        print(f"output {{i}}: shape {{list(g.shape)}}, PyTorch {{list(e.shape)}}")
        continue
    e64, g64 = e.astype(np.float64), g.astype(np.float64)
    both = np.isfinite(e64) & np.isfinite(g64)
    diff = np.abs(g64[both] - e64[both])
    differ = int(((np.isnan(e64) != np.isnan(g64)) | ((np.isinf(e64) | np.isinf(g64)) & (e64 != g64))).sum())
    print(f"output {{i}}: max abs difference {{diff.max() if diff.size else 0.0:.6g}}, "
          f"NaN/Inf differ at {{differ}} elements")
'''
    out = folder / f"{stem}.py"
    out.write_text(source)
    return out
