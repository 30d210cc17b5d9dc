"""Small edits of ONNX graphs shared by the adapters."""
from __future__ import annotations

FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def mark_outputs(model, names) -> list[str]:
    """Append the named values (floating point, with a known type in ``value_info``) to the
    graph outputs, in place, with the type the graph gives them (fp16 in an fp16 graph: the
    runtime must then produce real fp16 values for them). Returns the names marked."""
    produced = {o for n in model.graph.node for o in n.output}
    wanted = set(names) & produced  # value_info can outlive a value a graph rewrite renamed
    existing = {o.name for o in model.graph.output}
    marked = []
    for vi in model.graph.value_info:
        if vi.name in wanted and vi.name not in existing and vi.type.tensor_type.elem_type in FLOAT_TYPES:
            model.graph.output.append(vi)
            marked.append(vi.name)
    return marked


COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU", "RNN"}
#: ops that only move, reshape or type data: no low-precision arithmetic of their own
LAYOUT_OPS = {"Constant", "Shape", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather",
              "Concat", "Split", "Slice", "Cast", "Identity", "Expand", "ConstantOfShape", "Range"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def node_module(node) -> str:
    """The PyTorch module path of an ONNX node written by the dynamo exporter
    (``pkg.torch.onnx.name_scopes``: ['', 'features', 'features.0', 'conv2d'] -> features.0)."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def in_modules(module: str, modules) -> bool:
    return any(module == m or module.startswith(m + ".") for m in modules)


#: ``keep=`` entries: ``MODULE`` (its ops and its submodules'), ``<MODULE>`` (the module's own
#: functional ops: what its ``forward`` computes outside its submodules; ``<top>`` is the
#: model's own), ``@NODE`` (the ops made from one FX node, e.g. a consumer of a tensor)
TOP = "<top>"


def keep_matches(node, entry: str) -> bool:
    """Whether ONNX ``node`` belongs to the ``keep=`` entry (see ``TOP``)."""
    if entry.startswith("@"):
        return fx_node_of(node) == entry[1:] or entry[1:] in node.output
    if entry.startswith("<") and entry.endswith(">"):
        return node_module(node) == ("" if entry == TOP else entry[1:-1])
    return in_modules(node_module(node), [entry])


def nodes_in_modules(model, modules) -> list[str]:
    """Names of the graph's nodes that belong to any of the ``keep=`` entries ``modules``."""
    return [n.name for n in model.graph.node if any(keep_matches(n, m) for m in modules)]


def row_matches(module: str, node: str, entry: str) -> bool:
    """Whether a layer row (its module path and FX node) belongs to the ``keep=`` entry."""
    if entry.startswith("@"):
        return node == entry[1:]
    if entry.startswith("<") and entry.endswith(">"):
        return module == ("" if entry == TOP else entry[1:-1])
    return in_modules(module, [entry])


def keep_groups(model, layout: bool = False) -> list[tuple[str, list[str]]]:
    """The graph's nodes partitioned by the module that runs them, in graph order: (keep=
    entry, its node names). A leaf module is its own entry; a module with submodules
    contributes its own functional ops as ``<MODULE>`` (``<top>`` for the model's). Nodes
    without arithmetic of their own (reshapes, quantize/dequantize pairs) are left out
    unless ``layout``; keeping every entry of ``keep_groups(model, layout=True)`` keeps the
    whole graph."""
    entry = group_entries(model)
    groups: dict[str, list[str]] = {}
    for n in model.graph.node:
        if layout or (n.op_type not in LAYOUT_OPS and n.op_type not in QDQ_OPS):
            groups.setdefault(entry(n), []).append(n.name)
    return list(groups.items())


def group_entries(model):
    """``node -> keep= entry`` of ``keep_groups``: its module when that is a leaf, else
    ``<MODULE>`` (``<top>`` without one)."""
    owners = [node_module(n) for n in model.graph.node]
    parents = {".".join(o.split(".")[:i]) for o in owners if o for i in range(len(o.split(".")))}

    def entry(node) -> str:
        owner = node_module(node)
        return (f"<{owner}>" if owner else TOP) if owner in parents or not owner else owner
    return entry


def consumers(model, value: str) -> list:
    """The nodes that read ``value``, through any QuantizeLinear -> DequantizeLinear pair a
    quantizer put in between (their consumers read the quantized tensor)."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out, frontier = [], [value]
    while frontier:
        for n in readers.get(frontier.pop(), []):
            if n.op_type in QDQ_OPS:
                frontier.extend(n.output)
            elif n not in out:
                out.append(n)
    return out


def compute_modules(model) -> list[str]:
    """The module paths that own compute ops (Conv, Gemm, MatMul, ...), in graph order."""
    out = []
    for n in model.graph.node:
        m = node_module(n)
        if n.op_type in COMPUTE_OPS and m and m not in out:
            out.append(m)
    return out


# -- keep=MODULE;MODULE: the modules a low-precision variant keeps in fp32 ---------------------
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def parse_keep(value: str | None) -> list[str]:
    """``keep=a;b.0`` -> ['a', 'b.0'] (empty entries dropped)."""
    return [m.strip() for m in (value or "").split(";") if m.strip()]


def module_counts(model, modules) -> dict[str, int]:
    """How many of the graph's nodes each ``keep=`` entry covers."""
    return {m: sum(1 for n in model.graph.node if keep_matches(n, m)) for m in modules}


def module_paths(model) -> list[str]:
    """Every module path that owns a node, with its parents (``layer`` for ``layer.0.fc``),
    in graph order: what ``keep=`` can name."""
    out: dict[str, None] = {}
    for n in model.graph.node:
        parts = node_module(n).split(".") if node_module(n) else []
        for i in range(1, len(parts) + 1):
            out.setdefault(".".join(parts[:i]), None)
    return list(out)


def keep_candidates(model, missing=(), limit: int = 12) -> str:
    """One line naming what ``keep=`` could match in ``model``: the modules with compute ops,
    the top-level modules, and the closest paths to the ``missing`` ones."""
    import difflib

    paths = module_paths(model)
    if not paths:
        return "no node of the graph carries a PyTorch module name"

    def listed(names):
        return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")

    parts = [f"modules with compute ops: {listed(compute_modules(model)) or 'none'}",
             f"top level: {listed([p for p in paths if '.' not in p])}"]
    close = [c for m in missing for c in difflib.get_close_matches(m, paths, n=3, cutoff=0.6)]
    if close:
        parts.append(f"closest: {', '.join(dict.fromkeys(close))}")
    return "; ".join(parts)


def check_keep(model, keep, what: str = "the export") -> dict[str, int]:
    """Nodes of ``model`` per kept module; BadInput (one line, naming the candidates) when any
    of them owns no node (a typo, or a module whose ops the exporter attributes elsewhere)."""
    from .errors import BadInput

    counts = module_counts(model, keep)
    missing = [m for m, c in counts.items() if not c]
    if missing:
        raise BadInput(f"keep={';'.join(keep)}: no ONNX node of {what} belongs to {', '.join(missing)}; "
                       + keep_candidates(model, missing))
    return counts


def set_module(node, scopes: str) -> None:
    """Give ``node`` the exporter's module metadata ``scopes`` (replacing any it has)."""
    for i in reversed(range(len(node.metadata_props))):
        if node.metadata_props[i].key == NAME_SCOPES:
            del node.metadata_props[i]
    prop = node.metadata_props.add()
    prop.key, prop.value = NAME_SCOPES, scopes


def carry_modules(src, dst) -> int:
    """Give the nodes of ``dst`` (``src`` rewritten by a tool that drops node metadata, such as
    ONNX Runtime's optimizer in ``quant_pre_process``) the module of the ``src`` node each one
    comes from, in place: the node of the same name; for a fused node ``FIRST/Fusion`` (ONNX
    Runtime's naming), FIRST; else the node that produced the same output value; a node
    still without one (a Reshape a fusion inserted) takes the module of the nodes it feeds,
    or else of those that feed it, when they agree. Returns how many nodes have a module."""
    def scopes(n):
        return next((p.value for p in n.metadata_props if p.key == NAME_SCOPES), None)

    by_name = {n.name: scopes(n) for n in src.graph.node if scopes(n)}
    by_output = {o: scopes(n) for n in src.graph.node if scopes(n) for o in n.output}
    nodes = list(dst.graph.node)
    found: dict[int, str] = {}  # index in ``nodes`` -> scopes (protobuf wrappers have no stable id)
    for k, n in enumerate(nodes):
        own = scopes(n)
        s = own or by_name.get(n.name) or by_name.get(n.name.split("/")[0])
        s = s or next((by_output[o] for o in n.output if o in by_output), None)
        if s:
            found[k] = s
            if s != own:
                set_module(n, s)
    producers = {o: k for k, n in enumerate(nodes) for o in n.output}
    consumers: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in n.input:
            consumers.setdefault(i, []).append(k)
    for _ in range(3):  # inserted nodes next to each other (Reshape -> Gemm -> Reshape) settle in a few passes
        changed = False
        for k, n in enumerate(nodes):
            if k in found:
                continue
            after = {found.get(c) for o in n.output for c in consumers.get(o, [])}
            before = {found.get(producers[i]) for i in n.input if i in producers}
            for side in (after, before):
                if len(side) == 1 and None not in side:
                    found[k] = side.pop()
                    set_module(n, found[k])
                    changed = True
                    break
        if not changed:
            break
    return len(found)


def fx_node_of(node) -> str | None:
    """The FX node an ONNX node was translated from (``pkg.torch.onnx.fx_node``)."""
    import re

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.fx_node":
            match = re.match(r"%(\S+)", prop.value)
            return match.group(1) if match else None
    return None


def isolate(model, values) -> tuple[dict[str, str], int]:
    """Cut every edge between two FX nodes' subgraphs, in place: an input that another FX
    node produced becomes a fresh graph input ``reference::NAME``, to be fed the reference
    value, so each layer runs on exactly the reference's inputs; every FX value is marked
    as an output. All layers stay in one model (one compile). Returns (graph input ->
    FX value it stands for, number of cross-layer edges that could not be cut)."""
    wanted = set(values)
    def group_of(n):  # a plain ONNX graph (no exporter metadata): every node is a layer
        return fx_node_of(n) or n.name

    producer = {out: group_of(n) for n in model.graph.node for out in n.output}
    types = {vi.name: vi for vi in model.graph.value_info}
    boundary, uncut = {}, 0
    for node in model.graph.node:
        group = group_of(node)
        for i, value in enumerate(node.input):
            if value not in producer or producer[value] == group:
                continue
            if value in wanted and value in types:
                name = f"reference::{value}"
                node.input[i] = name
                boundary[name] = value
            else:
                uncut += 1
    for name, value in boundary.items():
        vi = type(types[value])()
        vi.CopyFrom(types[value])
        vi.name = name
        model.graph.input.append(vi)
    mark_outputs(model, wanted)
    return boundary, uncut
