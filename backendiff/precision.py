"""What precision a runtime actually computed in, read back from the runtime's own
artifacts. Small pure functions; each adapter feeds them what its runtime exposes.

The summary of a model is a count of *compute* operators per precision (layout-only ops
such as Reshape, Transpose or Cast are left out), e.g. ``{"fp16": 12, "fp32": 3}``, and
one word for it: the single precision, or ``mixed``.
"""
from __future__ import annotations

from collections import Counter

# ops that move or reinterpret data without arithmetic worth attributing a precision to
LAYOUT_OPS = {
    "Cast", "CastLike", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Constant",
    "ConstantOfShape", "Shape", "Size", "Gather", "GatherElements", "Concat", "Slice", "Split", "Expand", "Tile",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ReorderInput", "ReorderOutput", "Range",
    "MemcpyToHost", "MemcpyFromHost",
}

_ONNX_FLOAT = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}
_ONNX_INT8 = {2: "uint8", 3: "int8"}


#: ONNX Runtime's contrib ops that compute on 8-bit integers, beyond the ``QLinear*`` and
#: ``*Integer`` families: what its optimizer fuses a dynamically quantized graph into
#: (``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``) and its other quantized kernels
QUANTIZED_OPS = {"QGemm", "QAttention", "QOrderedMatMul", "QOrderedAttention", "QOrderedLayerNormalization",
                 "QOrderedGelu", "QOrderedLongformerAttention", "QEmbedLayerNormalization", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "DynamicQuantizeLSTM"}
_ONNX_INT32 = 6


def is_quantized_op(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type.endswith("Integer") or op_type in QUANTIZED_OPS


def onnx_compute_precisions(model) -> dict[str, int]:
    """Count an ONNX graph's compute ops by the precision they compute in.

    Types are propagated through the graph in node order: a Cast yields its ``to`` type,
    QuantizeLinear an 8-bit type, DynamicQuantizeLinear uint8 (and its float scale),
    DequantizeLinear its scale's type, MatMulInteger/ConvInteger int32, any other op the
    type of its first floating-point input. Quantized ops (QLinearConv, ConvInteger,
    MatMulInteger, the fused DynamicQuantizeMatMul / MatMulIntegerToFloat, ...) count as
    ``int8``; quantize and dequantize ops themselves count as no compute, dynamic or not.
    Works on the optimized model a runtime saved (ORT's ``optimized_model_filepath``), which
    shows the Casts the runtime inserted.
    """
    graph = model.graph
    types: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    counts: Counter = Counter()
    for node in graph.node:
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            for out in node.output:
                types[out] = to
            continue
        if node.op_type == "QuantizeLinear":
            zp = types.get(node.input[2]) if len(node.input) > 2 else 2
            for out in node.output:
                types[out] = zp or 2
            continue
        if node.op_type == "DynamicQuantizeLinear":  # (y uint8, y_scale float, y_zero_point uint8)
            for out, elem in zip(node.output, (2, 1, 2)):
                types[out] = elem
            continue
        if node.op_type in ("MatMulInteger", "ConvInteger"):  # int32 accumulators, rescaled in float after
            for out in node.output:
                types[out] = _ONNX_INT32
            counts["int8"] += 1
            continue
        if node.op_type == "DequantizeLinear":
            for out in node.output:
                types[out] = types.get(node.input[1], 1)
            continue
        in_types = [types.get(i) for i in node.input if i]
        float_in = next((t for t in in_types if t in _ONNX_FLOAT), None)
        for out in node.output:
            types.setdefault(out, float_in if float_in is not None else (in_types[0] if in_types else None))
        if node.op_type in LAYOUT_OPS:
            continue
        if is_quantized_op(node.op_type):
            counts["int8"] += 1
        elif float_in is not None:
            counts[_ONNX_FLOAT[float_in]] += 1
    return dict(counts)


def summarize(counts: dict[str, int]) -> str | None:
    """One word for a precision count: the only precision, or ``mixed``; None if empty."""
    used = [k for k, v in counts.items() if v]
    if not used:
        return None
    return used[0] if len(used) == 1 else "mixed"


_OV_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8", "f64": "fp64",
             "i32": "int32", "i64": "int64", "u1": "bin"}
OV_LAYOUT = {"Const", "Input", "Parameter", "Output", "Result", "Reshape", "Reorder", "Convert", "Transpose",
             "Concatenation", "Gather", "Split", "StridedSlice", "ShapeOf", "Broadcast", "Squeeze", "Unsqueeze"}


def openvino_compute_precisions(primitives: list[tuple[str, str]]) -> dict[str, int]:
    """Count executed OpenVINO primitives ``(layerType, runtimePrecision)`` by precision,
    leaving out layout-only primitives."""
    counts: Counter = Counter()
    for layer_type, precision in primitives:
        if layer_type in OV_LAYOUT:
            continue
        counts[_OV_NAMES.get(precision, precision)] += 1
    return dict(counts)


_RELAX_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}  # int outputs
# (masks, indices) say nothing about the arithmetic precision, and Relax here does no int8 quantization
RELAX_LAYOUT = {"relax.astype", "relax.reshape", "relax.permute_dims", "relax.flatten", "relax.squeeze",
                "relax.expand_dims", "relax.concat", "relax.split", "relax.strided_slice", "relax.take",
                "relax.broadcast_to", "relax.tuple_get_item"}


def relax_compute_precisions(ops: list[tuple[str, str]]) -> dict[str, int]:
    """Count Relax operator calls ``(op name, output dtype)`` by precision."""
    counts: Counter = Counter()
    for name, dtype in ops:
        if name in RELAX_LAYOUT or dtype not in _RELAX_NAMES:
            continue
        counts[_RELAX_NAMES[dtype]] += 1
    return dict(counts)
