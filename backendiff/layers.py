"""Layer-wise divergence (propagated mode) over the FX graph of the ExportedProgram.

Every ``call_function`` node of the graph is a layer, named in the user's terms: the
module path that called it (``nn_module_stack``), its op, and the source line of the
user's code (``stack_trace``, frames inside torch skipped). The reference value of every
node comes from running the graph under a ``torch.fx.Interpreter``; a backend's values
come from running its own form of the model with each node's output recorded.

Localization follows CRADLE/LEMON: δ is a node's mean absolute deviation, its growth
``(δ − max δ_inputs) / (max δ_inputs + 1e-7)``; the first divergence is the earliest node
past tolerance whose error grows over its inputs' (not the largest error: error only
grows downstream). Where a NaN/Inf is first born is its own finding and takes precedence.
"""
from __future__ import annotations

import copy
import operator
import re
from dataclasses import dataclass
from typing import Literal, TypedDict

import numpy as np

from . import metrics as M

GROWTH_EPS = 1e-7
#: a node "grows" the error when its δ is at least this many times its inputs' over them
GROWTH_MIN = 1.0


@dataclass(frozen=True)
class Layer:
    index: int
    node: str
    op_type: str
    module: str
    source: str | None
    inputs: tuple[str, ...]


class LayerRow(TypedDict, total=False):
    """One layer of a backend's layer view, as the report's ``backends[].layers[]`` holds it
    (the JSON is this dict: typed here, unchanged there). Made by ``layer_rows``; ``mark_fused``
    sets ``fused_into``, ``layout`` is there only where the value was realigned."""
    index: int
    module: str
    op_type: str
    node: str
    source: str | None
    fused_into: str | None
    metrics: dict
    growth: float
    within_tolerance: bool
    nonfinite_born: bool
    layout: dict
    isolated: dict                # isolated mode: {"metrics", "within_tolerance", "nonfinite_born"} on the reference's inputs


class FirstDivergence(TypedDict, total=False):
    """Where a backend starts to differ (``backends[].first_divergence``): a row's summary and
    why it was chosen. ``reason`` nonfinite / growth / tolerance come from the rows
    (``first_divergence``); bisection from a cut (``localize.adopt_bisection``, ``found_by``)."""
    index: int | None
    module: str
    op_type: str
    node: str
    source: str | None
    metrics: dict | None
    growth: float
    reason: Literal["nonfinite", "growth", "tolerance", "bisection"]
    caveat: str                   # the instrumented run changed the result
    isolated: dict                # isolated mode (``localize.confirm``): its metrics on the reference's inputs,
    confirmed: bool               # whether it makes the error on its own,
    own_error_first_at: dict      # else the first layer that does
    found_by: str


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    return re.sub(r"^L\['self'\]\.?", "", str(path))


def user_source(stack_trace: str | None) -> str | None:
    """``file:line`` of the innermost frame outside torch itself."""
    if not stack_trace:
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+)', stack_trace)
    user = [(f, n) for f, n in frames if "/torch/" not in f.replace("\\", "/")]
    if not user:
        return None
    path, line = user[-1]
    return f"{path}:{line}"


def node_source(node) -> str | None:
    """``file:line`` of the user's code an ONNX node was exported from (the dynamo exporter's
    ``pkg.torch.onnx.stack_trace``), or None."""
    trace = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.stack_trace"), None)
    return user_source(trace)


def graph_layers(graph_module) -> list[Layer]:
    """The call_function nodes of an FX graph, in execution order."""
    out = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        source_node = node
        if node.target is operator.getitem and node.args and hasattr(node.args[0], "target"):
            source_node = node.args[0]  # one output of a multi-output op (batch norm): name the op
        target = getattr(source_node.target, "__name__", str(source_node.target))
        op = str(getattr(source_node.target, "_opname", target.split(".")[0]))
        inputs = tuple(a.name for a in node.all_input_nodes if a.op == "call_function")
        out.append(Layer(len(out), node.name, op, _module_path(node), user_source(node.meta.get("stack_trace")),
                         inputs))
    return out


def record_isolated(graph_module, args, reference: dict, dtype=None) -> dict[str, np.ndarray]:
    """Isolated mode over an FX graph: every node computed from the *reference* values of the
    nodes it reads (cast to ``dtype`` for a low-precision run), so its error is its own."""
    import torch
    from torch.fx import Interpreter

    values: dict[str, np.ndarray] = {}

    def ref(node, current):
        if node.op != "call_function" or node.name not in reference or not isinstance(current, torch.Tensor):
            return current
        t = torch.from_numpy(np.array(reference[node.name]))
        return t.to(current.dtype) if current.is_floating_point() else t

    class Isolated(Interpreter):
        def run_node(self, n):
            if n.op != "call_function":
                return super().run_node(n)
            saved = {m: self.env[m] for m in n.all_input_nodes}
            for m in saved:
                self.env[m] = ref(m, saved[m])
            try:
                result = super().run_node(n)
            finally:
                self.env.update(saved)
            t = result[0] if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor) \
                else result
            if isinstance(t, torch.Tensor):
                values[n.name] = (t.float() if t.is_floating_point() else t).detach().cpu().numpy().copy()
            return result

    with torch.no_grad():
        Isolated(graph_module).run(*args)
    return values


def isolate_rows(rows: list[dict], reference: dict, isolated: dict, rtol: float, atol: float) -> None:
    """Add each row's own error (isolated mode), in place."""
    for row in rows:
        r, a = reference.get(row["node"]), isolated.get(row["node"])
        if r is None or a is None or np.shape(r) != np.shape(a):
            continue
        m, outside, born = M.compare_arrays(a, r, rtol, atol)
        row["isolated"] = {"metrics": m, "within_tolerance": outside == 0, "nonfinite_born": born}


def program_weights(ep) -> dict:
    """An ExportedProgram's weights and constants that are tensors, by name."""
    import torch

    return {name: t for name, t in [*ep.state_dict.items(), *ep.constants.items()] if isinstance(t, torch.Tensor)}


def copy_sharing_weights(ep):
    """A deep copy of an ExportedProgram whose weights are the original's tensors (what a
    decomposition consumes without a second copy of the model: decompositions rewrite the
    graph, not the weights)."""
    return copy.deepcopy(ep, {id(t): t for t in program_weights(ep).values()})


def program_with_outputs(ep, names) -> tuple[object, list[str]]:
    """A copy of an ExportedProgram whose graph also returns the tensor value of every node
    in ``names`` (user outputs appended after the model's own), for runtimes that import the
    program itself. Returns (program, the appended node names in output order)."""
    import torch
    from torch.export.graph_signature import OutputKind, OutputSpec, TensorArgument

    ep = copy_sharing_weights(ep)
    graph = ep.graph_module.graph
    out = next(n for n in graph.nodes if n.op == "output")
    own = {a.name for a in out.args[0] if hasattr(a, "name")}
    wanted = set(names)
    added = [n for n in graph.nodes if n.op == "call_function" and n.name in wanted and n.name not in own
             and isinstance(n.meta.get("val"), torch.Tensor)]
    out.args = (tuple(out.args[0]) + tuple(added),)
    ep.graph_module.recompile()
    ep.graph_signature.output_specs.extend(
        OutputSpec(kind=OutputKind.USER_OUTPUT, arg=TensorArgument(name=n.name), target=None) for n in added)
    return flat_out_spec(ep), [n.name for n in added]


def flat_out_spec(ep):
    """``ep`` with its call signature's output spec made a flat tuple of its graph's
    outputs, in place: after a graph's outputs change, ``ep.module()`` (what AOTInductor
    compiles, what a runtime calling the program runs) unflattens them with that spec."""
    from torch.utils import _pytree as pytree

    out = next(n for n in ep.graph.nodes if n.op == "output")
    ep.module_call_graph[0].signature.out_spec = pytree.tree_structure(tuple(range(len(out.args[0]))))
    return ep


def output_nodes(graph) -> list[str]:
    """Names of the FX nodes that produce the graph's outputs, in output order."""
    from torch.utils import _pytree as pytree

    out = next(n for n in graph.nodes if n.op == "output")
    return [a.name for a in pytree.tree_leaves(out.args[0]) if hasattr(a, "name")]


def onnx_layers(model) -> list[Layer]:
    """The layers of a plain ONNX graph: one per node (keyed by its first output), named by
    the dynamo exporter's metadata where present (module path, stack trace), else by node."""
    from .onnx_graph import node_module

    producer, out = {}, []
    for node in model.graph.node:
        if not node.output or node.op_type in ("Constant",):
            continue
        inputs = tuple(producer[i] for i in node.input if i in producer)
        out.append(Layer(len(out), node.output[0], node.op_type, node_module(node) or node.name,
                         node_source(node), inputs))
        for o in node.output:
            producer[o] = node.output[0]
    return out


def record_nodes(graph_module, args) -> dict[str, np.ndarray]:
    """Run an FX graph module and keep every call_function node's tensor output (float32
    numpy; the first tensor of a tuple output)."""
    values: dict[str, np.ndarray] = {}

    def keep(name, value):
        if value is not None:
            values[name] = value

    walk_nodes(graph_module, args, on_value=keep)
    return values


def node_array(result, copy: bool = True) -> np.ndarray | None:
    """A node's value as the layer view compares it: its tensor (the first of a tuple) as
    numpy, floating point as float32; None where it has none. ``copy=False``: a view of the
    tensor, for a value used before the next node runs (a later in-place op may change it)."""
    import torch

    t = result
    if isinstance(t, (tuple, list)):
        t = next((x for x in t if isinstance(x, torch.Tensor)), None)
    if not isinstance(t, torch.Tensor):
        return None
    t = t.detach()
    t = (t.float() if t.is_floating_point() else t).cpu()
    return t.numpy().copy() if copy else t.resolve_conj().resolve_neg().numpy()


def walk_nodes(*runs, on_value, copy: bool = True) -> None:
    """Run FX graph modules of one graph (``(graph_module, args)`` pairs: the same program
    in fp32 and fp64, say) node by node in step, handing every call_function node's values
    (``node_array``) to ``on_value(name, *values)`` as they are made. A value no later node
    reads is freed as it is dropped (torch.fx's Interpreter): what is held is the live
    activations of each run, not every intermediate. A node without a tensor gives None;
    ``copy=False`` hands over views, valid only during the call."""
    import torch
    from torch.fx import Interpreter

    if runs and not isinstance(runs[0], tuple):     # walk_nodes(graph_module, args, on_value=...)
        runs = (runs,)
    steppers = []
    for graph_module, args in runs:
        it = Interpreter(graph_module)
        it.env, it.args_iter = {}, iter(args)
        steppers.append((it, list(graph_module.graph.nodes)))
    with torch.no_grad():
        for step in zip(*(nodes for _, nodes in steppers)):
            if step[0].op == "output":
                break
            made = []
            for (it, _), node in zip(steppers, step):
                it.env[node] = it.run_node(node)
                made.append(it.env[node])
            if step[0].op == "call_function":
                on_value(step[0].name, *(node_array(v, copy) for v in made))
            for (it, _), node in zip(steppers, step):
                for dead in it.user_to_last_uses.get(node, ()):
                    del it.env[dead]
                if not node.users:              # read by no node: nothing keeps it
                    it.env.pop(node, None)


def growth(delta: float, input_deltas: list[float]) -> float:
    base = max(input_deltas) if input_deltas else 0.0
    return (delta - base) / (base + GROWTH_EPS)


#: a row this much worse (dB) than its worst input is checked for a layout mix-up
LAYOUT_DROP_DB = 10.0
#: SQNR (dB) the sorted values must reach for "same values, other order"
SAME_VALUES_DB = 60.0


def realign(a: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """When ``a`` holds ``r``'s values in another dimension order (a runtime's channels-last
    or transposed buffer reported under the reference's shape), ``a`` brought back to the
    reference's order and the order its buffer was in; None when no dimension order
    explains it. Cheap test first: the same values, sorted."""
    from itertools import permutations

    a, r = np.asarray(a), np.asarray(r)
    if a.ndim < 2 or a.ndim > 5 or a.size < 4 or not np.isfinite(a).all() or not np.isfinite(r).all():
        return None
    if M.sqnr_value(M.tensor_metrics(np.sort(a, axis=None), np.sort(r, axis=None))) < SAME_VALUES_DB:
        return None
    best = None
    for perm in permutations(range(r.ndim)):
        if perm == tuple(range(r.ndim)):
            continue
        back = a.reshape([r.shape[p] for p in perm]).transpose(np.argsort(perm))
        score = M.sqnr_value(M.tensor_metrics(back, r))
        if score >= SAME_VALUES_DB and (best is None or score > best[0]):
            best = (score, back, perm)
    return (best[1], best[2]) if best else None


def layer_rows(layers: list[Layer], reference: dict, actual: dict, rtol: float, atol: float) -> list[LayerRow]:
    """``Rows`` over values held in two dicts."""
    rows = Rows(layers, set(actual), rtol, atol)
    for layer in layers:
        rows.add(layer, reference.get(layer.node), actual.get(layer.node))
    return rows.rows


class Rows:
    """The layer view made one layer at a time, in execution order, from each layer's
    reference value and the backend's (``add``), neither kept: what lets a run compare values
    as they arrive and drop them.

    ``rows``: one row per layer both sides have: metrics, growth, within tolerance, and
    whether a NaN/Inf is born there (appears where the reference is finite, from inputs that
    had none). A layer without a row (a multi-output op seen through its ``getitem``) passes
    its inputs' δ on, so growth is measured against the nearest measured ancestors. A row far
    worse than its inputs whose values are the reference's in another dimension order is
    compared in the reference's order (``realign``; the row says ``layout``).

    ``unmeasured``: the layers with a floating-point reference value but no row: the
    backend's layer-wise run has no value for them (computed inside a later op: a conv whose
    ReLU a quantizer folded into its QuantizeLinear, an op a converter fused), or one of
    another shape (a layout it did not bring back). Reported, never silently skipped.
    ``present``: the nodes the backend's run has a value for."""

    def __init__(self, layers: list[Layer], present: set[str], rtol: float, atol: float):
        self.layers, self.present, self.rtol, self.atol = layers, present, rtol, atol
        self.order = {layer.node: i for i, layer in enumerate(layers)}
        # a multi-output op (batch norm) is measured through the getitem that picks its output
        self.seen_through = {layer.inputs[0] for layer in layers
                             if layer.node.startswith("getitem") and layer.inputs and layer.node in present}
        self.rows: list[LayerRow] = []
        self.unmeasured: list[dict] = []
        self.delta: dict[str, float] = {}
        self.tainted: set[str] = set()
        self.quality: dict[str, float] = {}

    def add(self, layer: Layer, r, a, compared: tuple | None = None) -> None:
        """The next layer, its reference value ``r`` and the backend's ``a`` (None where it has
        none); ``compared``: ``metrics.compare_arrays(a, r, rtol, atol)`` where already made."""
        self._unmeasured(layer, r, a)
        self._row(layer, r, a, compared)

    def comparable(self, r, a) -> bool:
        return r is not None and a is not None and np.shape(r) == np.shape(a) and r.dtype.kind in "fc"

    def _unmeasured(self, layer: Layer, r, a) -> None:
        if r is None or np.asarray(r).dtype.kind not in "fc" or layer.node in self.seen_through:
            return
        if a is None:
            why = "no value in the layer-wise run"
            into = downstream_present(layer.node, self.layers[self.order[layer.node] + 1:], self.present)
        elif np.shape(a) != np.shape(r):
            why, into = f"not comparable: shape {list(np.shape(a))} vs the reference's {list(np.shape(r))}", None
        else:
            return
        self.unmeasured.append({"index": layer.index, "module": layer.module, "op_type": layer.op_type,
                                "node": layer.node, "source": layer.source, "why": why, "fused_into": into})

    def _row(self, layer: Layer, r, a, compared: tuple | None) -> None:
        delta, tainted, quality = self.delta, self.tainted, self.quality
        inputs = [delta[i] for i in layer.inputs if i in delta]
        inherited = any(i in tainted for i in layer.inputs)
        if not self.comparable(r, a):
            if inputs:
                delta[layer.node] = max(inputs)
            if inherited:
                tainted.add(layer.node)
            return
        m, outside, mismatch = compared or M.compare_arrays(a, r, self.rtol, self.atol)
        layout = None
        worst_input = min((quality[i] for i in layer.inputs if i in quality), default=None)
        if outside and (worst_input is None or M.sqnr_value(m) < worst_input - LAYOUT_DROP_DB):
            found = realign(a, r)
            if found is not None:
                a, layout = found[0], list(found[1])
                m, outside, mismatch = M.compare_arrays(a, r, self.rtol, self.atol)
        quality[layer.node] = M.sqnr_value(m)
        if mismatch or inherited:
            tainted.add(layer.node)
        born = mismatch and not inherited  # a NaN/Inf is born here, not carried in
        delta[layer.node] = m["mean_abs"]
        self.rows.append(LayerRow(
            index=layer.index, module=layer.module, op_type=layer.op_type, node=layer.node, source=layer.source,
            fused_into=None, metrics=m, growth=growth(m["mean_abs"], inputs), within_tolerance=outside == 0,
            nonfinite_born=born,
        ))
        if layout is not None:
            self.rows[-1]["layout"] = {"buffer_order": layout, "note": "the backend's value is the reference's in "
                                       "another dimension order; compared after bringing it back"}


def mark_fused(rows: list[dict], layers: list[Layer], present: set[str] | None,
               groups: dict[str, str] | None = None) -> None:
    """Say, per row, whether the deployed model computes that layer inside another one.

    ``groups`` (member -> the layer whose output the fused primitive produces) comes from a
    runtime that lists fusions (OpenVINO's ``originalLayersNames``); ``present`` is the set
    of values the deployed graph still has (ORT's optimized graph): a layer whose value is
    gone is fused into the first downstream layer that is still there. In place.
    """
    order = {layer.node: i for i, layer in enumerate(layers)}
    for row in rows:
        node = row["node"]
        layer = layers[order[node]] if node in order else None
        # a getitem row stands for its multi-output op (batch norm), which is what a runtime lists
        member = layer.inputs[0] if layer and node.startswith("getitem") and layer.inputs else None
        if groups and (node in groups or member in groups):
            row["fused_into"] = groups.get(node) or groups[member]
        elif present is not None and node not in present and node in order:
            row["fused_into"] = downstream_present(node, layers[order[node] + 1:], present)


def downstream_present(node: str, later: list[Layer], present: set[str]) -> str | None:
    reach = {node}
    for layer in later:
        if reach.intersection(layer.inputs):
            if layer.node in present:
                return layer.node
            reach.add(layer.node)
    return None


def first_nonfinite(rows: list[LayerRow]) -> LayerRow | None:
    return next((row for row in rows if row["nonfinite_born"]), None)


def first_divergence(rows: list[LayerRow]) -> FirstDivergence | None:
    """Where a NaN/Inf is first born; else the earliest layer past tolerance whose error
    grows over its inputs'; else the earliest layer past tolerance."""
    born = first_nonfinite(rows)
    if born is not None:
        return _summary(born, "nonfinite")
    past = [row for row in rows if not row["within_tolerance"]]
    for row in past:
        if row["growth"] >= GROWTH_MIN:
            return _summary(row, "growth")
    return _summary(past[0], "tolerance") if past else None


def _summary(row: LayerRow, reason: str) -> FirstDivergence:
    return FirstDivergence(index=row["index"], module=row["module"], op_type=row["op_type"], node=row["node"],
                           source=row["source"], metrics=row["metrics"], growth=row["growth"], reason=reason)


class RowsAhead:
    """``Rows.add`` with each layer's comparison made on a second thread while the next
    layers run (numpy and torch let go of the GIL): the same rows in the same order, at most
    ``ahead`` layers' values waiting. ``finish()`` settles the rest."""

    def __init__(self, rows: Rows, ahead: int = 4):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.rows, self.ahead, self.waiting = rows, ahead, deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="backendiff-rows")

    def add(self, layer: Layer, r, a) -> None:
        """As ``Rows.add``; ``r`` may be a view valid only during the call (it is copied)."""
        job = None
        if self.rows.comparable(r, a):
            r = np.array(r)
            job = self.pool.submit(M.compare_arrays, a, r, self.rows.rtol, self.rows.atol)
        self.waiting.append((layer, r, a, job))
        while len(self.waiting) > self.ahead:
            self._settle()

    def _settle(self) -> None:
        layer, r, a, job = self.waiting.popleft()
        self.rows.add(layer, r, a, job.result() if job is not None else None)

    def finish(self) -> Rows:
        try:
            while self.waiting:
                self._settle()
        finally:
            self.pool.shutdown(cancel_futures=True)
        return self.rows


class HeldValues:
    """A backend's layer values held at once (``Adapter.layer_values``), as the streamed layer
    view reads them: ``names`` (the nodes that have one) and ``get(node)``."""

    def __init__(self, values: dict[str, np.ndarray]):
        self.values, self.names, self.runs = values, set(values), 1

    def get(self, node: str):
        return self.values.get(node)


class ChunkedValues:
    """A backend's layer values captured in chunks of layers over several runs of one
    instrumented model (``run(names) -> {name: value}``), one chunk held at a time: asked in
    execution order, each chunk is run once. ``runs``: how many runs it took."""

    def __init__(self, run, chunks: list[list[str]]):
        self.run, self.chunks = run, chunks
        self.where = {name: k for k, chunk in enumerate(chunks) for name in chunk}
        self.names = set(self.where)
        self.current, self.values, self.runs = None, {}, 0

    def get(self, node: str):
        k = self.where.get(node)
        if k is None:
            return None
        if k != self.current:
            self.values = {}                    # dropped before the next chunk is made
            self.values, self.current = self.run(self.chunks[k]), k
            self.runs += 1
        return self.values.get(node)


def chunks_within(names: list[str], sizes: dict[str, int], budget: int) -> list[list[str]]:
    """``names`` (in execution order) cut into consecutive chunks whose values (``sizes``,
    bytes; unknown counts as 0) add up to at most ``budget`` each; a value larger than the
    budget is a chunk of its own."""
    chunks, current, held = [], [], 0
    for name in names:
        size = sizes.get(name, 0)
        if current and held + size > budget:
            chunks.append(current)
            current, held = [], 0
        current.append(name)
        held += size
    if current:
        chunks.append(current)
    return chunks


def value_sizes(graph) -> dict[str, int]:
    """Each FX node's value size in bytes as the layer view holds it (float32 for floating
    point), from the shapes export recorded (``meta["val"]``)."""
    import torch

    out = {}
    for node in graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = next((v for v in val if isinstance(v, torch.Tensor)), None)
        if isinstance(val, torch.Tensor):
            try:
                out[node.name] = int(val.numel()) * (4 if val.is_floating_point() else val.element_size())
            except Exception:  # noqa: BLE001 - a symbolic size: unknown
                continue
    return out
