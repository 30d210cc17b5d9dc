"""When a runtime rejects the model: which operator, and which PyTorch module holds it.

Runtimes say what they reject in their own words; small patterns read the operator (an
ONNX op type, an ``aten::`` op, a Relax converter) and, where given, the node out of the
message and out of the Python frames of the runtime's own frontend. The operator is then
looked up in the model: the ONNX export's node metadata (route onnx) or the ExportedProgram's
``nn_module_stack`` (route export) give the module path and the user's source line.
"""
from __future__ import annotations

import re
import traceback

# (pattern, what its groups mean); "ops" is a list separated by commas or spaces
PATTERNS = [
    # torch.onnx's exporter
    re.compile(r"No ONNX function found for <OpOverload\(op='(?P<op>[\w.]+)'"),
    re.compile(r"Error when translating node %(?P<node>\w+)"),
    # torch.fx's interpreter (frontends that run the program, e.g. TVM's ExportedProgram importer)
    re.compile(r"While executing %(?P<node>\w+) : [^\n]*?target=torch\.ops\.(?P<op>aten\.[\w.]+)"),
    # ONNX Runtime
    re.compile(r"Could not find an implementation for (?P<op>\w+)\(\d+\) node with name '(?P<node>[^']*)'"),
    re.compile(r"Node \((?P<node>[^)]+)\) Op \((?P<op>\w+)\)"),
    re.compile(r"(?i)\bnode (?P<node>[\w./:-]+) of type (?P<op>\w+)"),
    re.compile(r"This is an invalid model\. In Node, \(\"(?P<node>[^\"]*)\", (?P<op>\w+),"),
    # OpenVINO
    re.compile(r"No conversion rule found for operations?: (?P<ops>[^\n]+)"),
    re.compile(r"Conversion is failed for: (?P<ops>[^\n]+)"),
    re.compile(r"<Node\((?P<op>\w+)\): (?P<node>[^>]+)>"),
    re.compile(r"conversion of operation (?P<node>[\w.]+)/(?P<op>[\w.]+)"),
    re.compile(r"(?:does not support|not supported)[^\n:]*operations?: (?P<ops>[^\n]+)"),
    # TVM Relax
    re.compile(r"operators are not supported for frontend ONNX: (?P<ops>[^\n]+)"),
    re.compile(r"Unsupported function types? (?P<ops>\[[^\]]*\]|\S+)"),
    re.compile(r"Unsupported (?:op|operator) (?P<op>[\w.:]+)"),
]
ATEN = re.compile(r"\baten::(\w+)")
# the frontend's converter functions: tvm/relax/frontend/torch/*.py  def _max_pool2d(...)
FRONTEND_FRAME = re.compile(r"(?:relax/frontend|openvino/frontend)")


def _split_ops(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,\[\]'\"{}]+", text) if t and not t.isdigit()]


def op_name(text: str) -> str:
    """``aten::max_pool2d``, ``aten.max_pool2d.default``, ``max_pool2d.default`` -> ``max_pool2d``;
    OpenVINO's ``Det-20`` (ONNX op and opset) -> ``Det``."""
    text = text.strip().strip("'\"")
    text = re.sub(r"^(aten::|aten\.|prims\.|torch\.ops\.aten\.)", "", text)
    text = re.sub(r"-\d+$", "", text)
    return re.sub(r"\.(default|Tensor|Scalar|int|out|self|input)$", "", text)


def parse_rejection(message: str, frames: list[str] = ()) -> tuple[list[str], str | None]:
    """(operators named, node named) in a runtime's error message and, failing that, in the
    names of its frontend's Python frames (``_max_pool2d`` -> ``max_pool2d``)."""
    ops, node = [], None
    for pattern in PATTERNS:
        m = pattern.search(message)
        if not m:
            continue
        groups = m.groupdict()
        if groups.get("op"):
            ops.append(groups["op"])
        if groups.get("ops"):
            ops.extend(_split_ops(groups["ops"]))
        node = node or groups.get("node")
    ops.extend(f"aten::{a}" for a in ATEN.findall(message))
    if not ops:
        for name in reversed(frames):
            if name.startswith("_") and not name.startswith("__") and name not in ("_impl", "_convert_operator"):
                ops.append(re.sub(r"(_impl|_op|_v\d+)$", "", name.lstrip("_")))
                break
    seen, unique = set(), []
    for op in ops:
        if op_name(op) not in seen:
            seen.add(op_name(op))
            unique.append(op)
    return unique, node


def frontend_frames(exc: BaseException) -> list[str]:
    """Function names of the traceback's frames inside a runtime's Python frontend."""
    return [f.name for f in traceback.extract_tb(exc.__traceback__) if FRONTEND_FRAME.search(f.filename)]


def locate(layers, ops: list[str], node: str | None, limit: int = 5) -> list[dict]:
    """The layers (``layers.Layer``) a node names, else those an operator names: their
    module, op and source."""
    wanted = {op_name(o).lower() for o in ops}
    hits = [layer for layer in layers if node and layer.node == node]
    if not hits:
        hits = [layer for layer in layers if op_name(layer.op_type).lower() in wanted]
    out, seen = [], set()
    for layer in hits:
        key = (layer.module, layer.op_type)
        if key not in seen:
            seen.add(key)
            out.append({"module": layer.module or "<top>", "op": layer.op_type, "source": layer.source})
    return out[:limit]


def explain(exc: BaseException, handle, route: str | None) -> dict:
    """What the report says of a rejection beyond the message: ``operator``, ``node`` and
    ``where`` (module, op, source of each place in the model using it), when found. The
    messages of the exception's causes are read too (the exporter chains them)."""
    texts, cause = [], exc
    while cause is not None and len(texts) < 5:
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    message = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(texts))     # the exporter colours its text
    ops, node = parse_rejection(message, frontend_frames(exc))
    if not ops and not node:
        return {}
    out = {"operator": ", ".join(ops) if ops else None, "node": node}
    try:
        layers = _model_layers(handle, route)
        out["where"] = locate(layers, ops, node)
        named = node is not None and any(layer.node == node for layer in layers)
        if (not out["where"] or (node and not named)) and route != "onnx" and handle.has_torch:
            # runtimes name the nodes and ops of the decomposed program (fft_rfft -> _fft_r2c):
            # the node itself there beats every use of its operator here
            from .layers import graph_layers

            decomposed = graph_layers(handle.exported_program().run_decompositions().graph_module)
            if not out["where"] or any(layer.node == node for layer in decomposed):
                out["where"] = locate(decomposed, ops, node)
    except Exception:  # noqa: BLE001 - locating is a courtesy; the failure itself is recorded
        out["where"] = []
    return {k: v for k, v in out.items() if v}


def _model_layers(handle, route: str | None):
    from .layers import graph_layers

    if route == "onnx" or not handle.has_torch:
        import onnx

        return onnx_nodes(onnx.load(str(handle.onnx_path()), load_external_data=False))
    return graph_layers(handle.exported_program().graph_module)


def onnx_nodes(model):
    """``Layer`` entries for every ONNX node, under its name and under its first output's."""
    from .layers import Layer, node_source
    from .onnx_graph import node_module

    out = []
    for node in model.graph.node:
        for name in [node.name] + list(node.output[:1]):   # OpenVINO names a node by its first output
            out.append(Layer(len(out), name, node.op_type, node_module(node), node_source(node), ()))
    return out


# -- torch.export failures: the class, where in the user's code, and what to do next -------------
DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent", "data dependent", "DataDependentOutputException")
NEXT_STEPS = {
    "data-dependent": ("data-dependent control flow (post-processing such as thresholds, NMS, top-k): compare "
                       "the network without it (return the raw head outputs), or retry with --export draft"),
    "dynamo": "TorchDynamo could not trace this code; retry with --export non-strict (runs the Python code itself)",
    "other": "retry with --export draft to see every export issue of the model at once",
    "onnx-op": ("the ONNX exporter has no translation for {op}: backends that import the ExportedProgram "
                "(tvm, openvino,route=export) may still take the model, or give torch.onnx.export a "
                "custom_translation_table entry for it"),
}
ONNX_UNSUPPORTED = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'(?:, overload='(\w+)')?")


def export_next_step(failure, mode: str) -> dict:
    """``hint`` (the next step for the failure's class), ``export_class`` and ``user_source``
    (the line of the user's code torch.export stopped at) of an ``ExportFailed``."""
    import traceback

    cause = getattr(failure, "cause", failure)
    text = f"{type(cause).__name__}: {cause}"
    unsupported = ONNX_UNSUPPORTED.search(str(getattr(failure, "root", cause)))
    if unsupported:
        op = unsupported.group(1) + (f".{unsupported.group(2)}" if unsupported.group(2) else "")
        return {"export_class": "onnx-op", "hint": NEXT_STEPS["onnx-op"].format(op=op)}
    if any(key in text for key in DATA_DEPENDENT):
        kind = "data-dependent"
    elif "torch._dynamo" in type(cause).__module__ or "Unsupported" in type(cause).__name__:
        kind = "dynamo" if mode == "strict" else "other"
    else:
        kind = "other"
    out = {"export_class": kind}
    if kind == "other" and mode == "draft":
        pass                                    # draft export itself failed: no further mode to offer
    else:
        out["hint"] = NEXT_STEPS[kind]
    frames = [f for f in traceback.extract_tb(cause.__traceback__)
              if "/torch/" not in f.filename.replace("\\", "/") and "/backendiff/" not in f.filename.replace("\\", "/")
              and not f.filename.startswith("<")]
    if frames:
        f = frames[-1]
        out["user_source"] = f"{f.filename}:{f.lineno}" + (f": {f.line.strip()}" if f.line else "")
    return out


def quoted_name(message: str, names) -> str | None:
    """The longest of ``names`` (graph node or op names) that ``message`` quotes as a whole
    word: tools name the node they failed on in their own formats (``'249 NAME'``,
    ``node name: NAME``, ``Node (NAME)``)."""
    found = [n for n in set(names) if n and n in message
             and re.search(r"(?<![\w.-])" + re.escape(n) + r"(?![\w-]|\.\w)", message)]
    return max(found, key=len) if found else None
