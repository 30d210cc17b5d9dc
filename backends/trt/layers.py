"""TensorRT engine layers named in the user's terms: small pure functions, no ``tensorrt``.

A built engine lists its layers through the engine inspector
(``engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)``):
with the default profiling verbosity a list of names, with ``ProfilingVerbosity.DETAILED``
one object per layer whose ``Metadata`` names the ONNX nodes it computes
(``[ONNX Layer: node_conv2d]\\x1f[ONNX Layer: node_relu]``), its ``LayerType`` and the
formats of its inputs and outputs. The names themselves say what TensorRT fused:

- ``node_conv2d + node_relu``: one kernel for several nodes;
- ``PWN(PWN(node_add), node_relu_2)``: a generated point-wise kernel;
- ``{ForeignNode[node_view...node_softmax]}``: a Myelin region, named by its first and last
  node only (its members are every node between them in graph order);
- ``Reformatting CopyNode for Input Tensor 0 to node_conv2d + node_relu``: a layout or type
  conversion in front of (or behind) another layer; it computes nothing of the model;
- ``fc.weight + (Unnamed Layer* 9) [Shuffle]``, ``copied_squeeze_after_add_3``: constants,
  TensorRT's own shuffles and nodes it cloned from a model node.

Each layer is split into its members and mapped to ONNX nodes, and through the dynamo
exporter's metadata to the PyTorch module path and the FX node (the key of the layer rows).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

SEPARATOR = " + "
_OPEN, _CLOSE = "([{", ")]}"
_FOREIGN = re.compile(r"^\{ForeignNode\[(?P<body>.*)\]\}$")
_REFORMAT = re.compile(r"^Reformatting CopyNode for (?P<side>Input|Output) Tensor (?P<index>\d+) to (?P<target>.+)$")
_REFORMATTER = re.compile(r"^(?P<target>.+) (?P<side>input|output) reformatter (?P<index>\d+)$")
_UNNAMED = re.compile(r"^\(Unnamed Layer\* \d+\) \[[^\]]+\]")
_METADATA = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
# names TensorRT derives from a node's name when it adds layers of its own
_PREFIXES = ("copied_squeeze_after_", "unsqueeze_node_after_", "squeeze_after_", "reshape_before_",
             "reshape_after_", "shuffle_before_", "shuffle_after_")
_SUFFIX = re.compile(r"(_output|_clone_\d+|_\d+_clone|\[[^\]]*\])$")
# layer types (detailed inspector output) that only move or re-lay data
LAYOUT_TYPES = {"Reformat", "NoOp", "Constant", "Shuffle", "Slice", "Concatenation", "Gather", "Shape",
                "Identity", "Cast", "Squeeze", "Unsqueeze", "Padding"}
_PRECISIONS = [("int8", re.compile(r"\bInt8\b|\bINT8\b|\bI8\b")), ("fp8", re.compile(r"\bFP8\b|\bFp8\b|\bE4M3\b")),
               ("bf16", re.compile(r"\bBF16\b|\bBFloat16\b|\bBf16\b")), ("fp16", re.compile(r"\bFP16\b|\bHalf\b")),
               ("fp32", re.compile(r"\bFP32\b|\bFloat\b"))]


# -- reading the inspector's output -----------------------------------------------------
@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str | None = None
    #: ONNX node names from the layer's Metadata (detailed verbosity), in order
    metadata: tuple[str, ...] = ()
    #: precision of the layer's tensors, from "Format/Datatype" (detailed verbosity); "tf32"
    #: for an fp32 layer whose kernel (TacticName) computes in TF32
    precision: str | None = None


def split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` where no bracket (round, square or curly) is open."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def metadata_nodes(metadata: str | None) -> list[str]:
    """The ONNX node names a layer's Metadata lists (``[ONNX Layer: NAME]`` entries, separated
    by the ASCII unit or record separator)."""
    return [m.strip() for m in _METADATA.findall(metadata or "")]


def io_precision(formats: list[str]) -> str | None:
    """The precision a layer computes in, from the "Format/Datatype" strings of its inputs and
    outputs ("Row major linear FP32", "Channel major FP16 format where channel % 8 == 0",
    "Int8", "Half"): int8 if any tensor is int8, else the first floating type found."""
    found = []
    for text in formats:
        for name, pattern in _PRECISIONS:
            if pattern.search(text or ""):
                found.append(name)
                break
    if "int8" in found:
        return "int8"
    return next((p for p in found if p != "int8"), None)


def _formats(tensors) -> list[str]:
    return [str(t.get("Format/Datatype", "")) for t in (tensors or []) if isinstance(t, dict)]


def read_engine_information(info) -> list[EngineLayer]:
    """The layers of an engine from the inspector's JSON (a string or the parsed object),
    with either verbosity: ``{"Layers": ["name", ...]}`` or ``{"Layers": [{"Name": ...}]}``."""
    data = json.loads(info) if isinstance(info, (str, bytes)) else info
    out = []
    for entry in (data or {}).get("Layers", []):
        if isinstance(entry, str):
            out.append(EngineLayer(entry))
            continue
        ins, outs = (_formats(entry.get(k)) for k in ("Inputs", "Outputs"))
        # int8 if any tensor is int8; else what the layer writes (fp32 in, fp16 out: fp16 kernel)
        precision = "int8" if io_precision(ins + outs) == "int8" else io_precision(outs) or io_precision(ins)
        if precision == "fp32" and "tf32" in str(entry.get("TacticName", "")).lower():
            precision = "tf32"
        out.append(EngineLayer(str(entry.get("Name", "")), entry.get("LayerType"),
                               tuple(metadata_nodes(entry.get("Metadata"))), precision))
    return out


# -- what a name says -------------------------------------------------------------------
@dataclass(frozen=True)
class NameParts:
    kind: str                              # "layer", "fused", "pointwise", "foreign", "reformat"
    parts: tuple[str, ...]                 # member names read from the layer name, in order
    ranges: tuple[tuple[str, str], ...] = ()   # ForeignNode[first...last]
    target: str | None = None              # reformat: the layer it converts data for


def parse_layer_name(name: str) -> NameParts:
    """Split a TensorRT layer name into the names of the nodes it computes."""
    name = name.strip()
    m = _REFORMAT.match(name) or _REFORMATTER.match(name)
    if m:
        inner = parse_layer_name(m.group("target"))
        return NameParts("reformat", inner.parts, inner.ranges, m.group("target"))
    parts, ranges, kinds = [], [], set()
    for piece in split_top(name, SEPARATOR):
        _collect(piece, parts, ranges, kinds)
    members = len(parts) + len(ranges)
    if "foreign" in kinds:
        kind = "foreign"
    elif "pointwise" in kinds:
        kind = "pointwise"
    else:
        kind = "fused" if members > 1 else "layer"
    return NameParts(kind, tuple(parts), tuple(ranges))


def _collect(piece: str, parts: list, ranges: list, kinds: set) -> None:
    foreign = _FOREIGN.match(piece)
    if foreign:
        kinds.add("foreign")
        for body in split_top(foreign.group("body"), ","):
            first, dots, last = body.partition("...")
            if dots:
                ranges.append((first.strip(), last.strip()))
            else:
                parts.append(body.strip())
        return
    if piece.startswith("PWN(") and piece.endswith(")"):
        kinds.add("pointwise")
        for inner in split_top(piece[4:-1], ","):
            for sub in split_top(inner, SEPARATOR):
                _collect(sub, parts, ranges, kinds)
        return
    parts.append(piece)


# -- ONNX nodes and their PyTorch names ---------------------------------------------------
@dataclass(frozen=True)
class OnnxNode:
    index: int
    name: str
    op_type: str
    module: str
    #: the FX nodes this ONNX node computes: its outputs that are FX values, else the FX
    #: node its metadata names (``pkg.torch.onnx.fx_node``)
    fx: tuple[str, ...]


@dataclass(frozen=True)
class OnnxIndex:
    nodes: dict                            # node name -> OnnxNode, in graph order
    constants: frozenset                   # initializer names (TensorRT makes constant layers of them)
    by_output: dict                        # value name -> node name
    first_consumer: dict                   # value name -> the first node reading it

    @property
    def order(self) -> list[str]:
        return list(self.nodes)


def onnx_index(model, fx_names=None) -> OnnxIndex:
    """Every node of an ONNX graph by name, with its module path and FX node(s).
    ``fx_names`` (the FX nodes of the layer program) tells which output names are FX values;
    without it every output counts."""
    from backendiff.onnx_graph import fx_node_of, node_module

    wanted = None if fx_names is None else set(fx_names)
    nodes, by_output, consumer = {}, {}, {}
    for i, node in enumerate(model.graph.node):
        name = node.name or (node.output[0] if node.output else f"#{i}")
        outs = [o for o in node.output if o and (wanted is None or o in wanted)]
        meta = fx_node_of(node)
        fx = tuple(outs) if outs else ((meta,) if meta and (wanted is None or meta in wanted) else ())
        nodes[name] = OnnxNode(i, name, node.op_type, node_module(node), fx)
        for o in node.output:
            by_output[o] = name
        for v in node.input:
            consumer.setdefault(v, name)
    return OnnxIndex(nodes, frozenset(t.name for t in model.graph.initializer), by_output, consumer)


def _candidates(part: str) -> list[str]:
    """A name and the names it may have been derived from (TensorRT's prefixes and suffixes)."""
    out = [part]
    for prefix in _PREFIXES:
        if part.startswith(prefix):
            out.append(part[len(prefix):])
    return out + [_SUFFIX.sub("", c) for c in list(out)]


def resolve(part: str, index: OnnxIndex) -> str | None:
    """The ONNX node a name in a TensorRT layer name stands for, or None: the node itself, a
    value it produces, or a name TensorRT derived from it (``copied_squeeze_after_X``,
    ``X_clone_1``, ``X_output``, ``X_bias`` ...: the longest node name it extends)."""
    part = part.strip()
    if part in index.nodes:
        return part
    if part in index.by_output:
        return index.by_output[part]
    candidates = _candidates(part)
    for c in candidates:
        if c in index.nodes:
            return c
        if c in index.by_output:
            return index.by_output[c]
    extended = [n for n in index.nodes if part.startswith(n + "_")]
    return max(extended, key=len) if extended else None


def is_anonymous(part: str, index: OnnxIndex) -> bool:
    """A member that is no model node: TensorRT's own unnamed layers, Myelin's internal kernels,
    constants made of initializers."""
    base = part.strip()
    return bool(_UNNAMED.match(base)) or base.startswith(("__myl_", "[trainStation", "myelin")) \
        or any(c in index.constants for c in _candidates(base))


def _range_members(first: str, last: str, index: OnnxIndex) -> list[str] | None:
    """The nodes of ``{ForeignNode[first...last]}``: its ends may be weights or values, whose
    first reader (start) or producer (end) is the node meant."""
    a = resolve(first, index) or index.first_consumer.get(first.strip())
    b = resolve(last, index) or index.first_consumer.get(last.strip())
    if a is None or b is None:
        return None
    order = index.order
    i, j = order.index(a), order.index(b)
    return order[min(i, j): max(i, j) + 1]


def map_layers(layers: list[EngineLayer], index: OnnxIndex) -> list[dict]:
    """Every engine layer with the ONNX nodes it computes, their modules and FX nodes.

    Members come from the layer's Metadata when present (exact), else from its name
    (``how``: "metadata" or "name"; a ForeignNode's members from its name are the nodes
    between its two ends in graph order, ``how`` "name range"). ``unmatched`` lists name
    parts that are no model node and not anonymous either: the mapping is incomplete there.
    """
    out = []
    for layer in layers:
        parsed = parse_layer_name(layer.name)
        nodes, unmatched = [], []
        how = "metadata" if layer.metadata else "name"
        for part in layer.metadata or parsed.parts:
            node = resolve(part, index)
            if node is not None:
                nodes.append(node)
            elif not is_anonymous(part, index):
                unmatched.append(part)
        if not layer.metadata:
            for first, last in parsed.ranges:
                members = _range_members(first, last, index)
                if members is None:
                    unmatched.append(f"{first}...{last}")
                else:
                    nodes.extend(members)
                    how = "name range"
        nodes = sorted(set(nodes), key=lambda n: index.nodes[n].index)
        reformat = parsed.kind == "reformat"
        kind = "fused" if parsed.kind == "layer" and len(nodes) > 1 else parsed.kind  # a Myelin kernel's Metadata
        out.append({
            "name": layer.name, "kind": kind, "how": how, "layer_type": layer.layer_type,
            "precision": layer.precision, "reformat_of": parsed.target if reformat else None,
            "fused": not reformat and len(nodes) > 1,
            "members": [{"node": n, "op_type": index.nodes[n].op_type, "module": index.nodes[n].module,
                         "fx": list(index.nodes[n].fx)} for n in nodes],
            "unmatched": unmatched,
        })
    return out


def fusion_groups(mapped: list[dict]) -> tuple[set[str] | None, dict[str, str]]:
    """What the engine fused, by FX node: (FX values the engine still computes as a layer's
    output, or None when some layer could not be mapped; member -> the FX node whose value
    the fused layer produces, its last member in graph order). An FX value no layer lists
    (a reshape TensorRT elided, a value the exporter folded away) is absent from the first:
    the layer rows then say it went into the first downstream layer that is present."""
    groups, present, complete = {}, set(), True
    for layer in mapped:
        if layer["unmatched"]:
            complete = False
        if layer["reformat_of"] is not None:
            continue
        fx = [f for m in layer["members"] for f in m["fx"]]
        if not fx:
            continue
        head = fx[-1]
        present.add(head)
        for f in fx[:-1]:
            groups[f] = head
    return (present if complete else None), groups


def layer_modules(mapped: list[dict]) -> list[dict]:
    """A compact view for the report: each engine layer with its members' modules."""
    out = []
    for layer in mapped:
        modules = []
        for m in layer["members"]:
            if m["module"] and m["module"] not in modules:
                modules.append(m["module"])
        out.append({"layer": layer["name"], "kind": layer["kind"], "fused": layer["fused"],
                    "reformat_of": layer["reformat_of"], "nodes": [m["node"] for m in layer["members"]],
                    "modules": modules, "precision": layer["precision"]})
    return out


def runtime_precisions(layers: list[EngineLayer]) -> dict[str, int]:
    """Compute layers of the engine counted by the precision they run in (detailed verbosity
    only; layout layers such as reformats and shuffles left out)."""
    counts: Counter = Counter()
    for layer in layers:
        if layer.precision is None or layer.layer_type in LAYOUT_TYPES:
            continue
        if parse_layer_name(layer.name).kind == "reformat":
            continue
        counts[layer.precision] += 1
    return dict(counts)


# -- network layers (before the build) -----------------------------------------------------
def network_layer_node(name: str, metadata: str | None, index: OnnxIndex) -> str | None:
    """The ONNX node a layer of the *parsed* network comes from: its Metadata (TensorRT 10's
    parser writes ``[ONNX Layer: NAME]``), else its name (the parser names a node's first
    layer after the node and further ones after it, e.g. ``NAME_1``)."""
    for node in metadata_nodes(metadata):
        if node in index.nodes:
            return node
    return resolve(name, index)


FLOAT_TYPES = ("FLOAT", "HALF", "BF16")


def constraint_plan(layers: list[tuple[str, str | None, list[str]]], keep_nodes, index: OnnxIndex
                    ) -> list[tuple[int, list[int]]]:
    """Which layers of the parsed network to keep in fp32: ``layers`` holds, per network layer,
    (name, metadata, the type names of its outputs). Returns (layer index, floating output
    indices) for every layer made from a kept ONNX node that has a floating output."""
    keep = set(keep_nodes)
    plan = []
    for i, (name, metadata, out_types) in enumerate(layers):
        node = network_layer_node(name, metadata, index)
        floats = [j for j, t in enumerate(out_types) if str(t).rsplit(".", 1)[-1].upper() in FLOAT_TYPES]
        if node in keep and floats:
            plan.append((i, floats))
    return plan
