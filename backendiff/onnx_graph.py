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


def nodes_in_modules(model, modules) -> list[str]:
    """Names of the graph's nodes that belong to any of ``modules`` (or their submodules)."""
    return [n.name for n in model.graph.node if in_modules(node_module(n), modules)]


def compute_modules(model) -> list[str]:
    """The module paths that own compute ops (Conv, Gemm, MatMul, ...), in graph order."""
    out = []
    for n in model.graph.node:
        m = node_module(n)
        if n.op_type in COMPUTE_OPS and m and m not in out:
            out.append(m)
    return out


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
