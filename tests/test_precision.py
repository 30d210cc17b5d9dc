"""The precision read-back helpers, on hand-made graphs."""
from onnx import TensorProto, helper

from backendiff.precision import onnx_compute_precisions, openvino_compute_precisions, relax_compute_precisions, summarize


def graph(nodes, inputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=list(inits))
    return helper.make_model(g)


def test_inserted_casts_show_fp32_compute():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT16, [4, 4], [0.0] * 16)
    nodes = [
        helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),       # ORT-inserted cast
        helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x32", "w32"], ["m"]),                   # runs in fp32
        helper.make_node("Cast", ["m"], ["m16"], to=TensorProto.FLOAT16),
        helper.make_node("Relu", ["m16"], ["r"]),                            # runs in fp16
        helper.make_node("Reshape", ["r", "shape"], ["y"]),                 # layout: not counted
    ]
    counts = onnx_compute_precisions(graph(nodes, [x], [w]))
    assert counts == {"fp32": 1, "fp16": 1}
    assert summarize(counts) == "mixed" and summarize({"fp16": 3}) == "fp16" and summarize({}) is None


def test_qdq_and_quantized_ops():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    z = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("QLinearConv", ["q", "s", "z", "q", "s", "z", "s", "z"], ["qc"]),
        helper.make_node("DequantizeLinear", ["qc", "s", "z"], ["d"]),
        helper.make_node("Softmax", ["d"], ["y"]),
    ]
    assert onnx_compute_precisions(graph(nodes, [x], [s, z])) == {"int8": 1, "fp32": 1}


def test_openvino_and_relax_counts():
    prims = [("Input", "f32"), ("Convolution", "u8"), ("Reorder", "u8"), ("Convolution", "f32"),
             ("FullyConnected", "i8"), ("Const", "f32"), ("Output", "f32")]
    assert openvino_compute_precisions(prims) == {"int8": 2, "fp32": 1}
    ops = [("relax.astype", "float16"), ("relax.nn.conv2d", "float16"), ("relax.nn.batch_norm", "float32"),
           ("relax.less", "bool")]
    assert relax_compute_precisions(ops) == {"fp16": 1, "fp32": 1}
