"""Transformer int8 recipes (issue #17): ONNX Runtime's dynamic quantization
(``ort:int8,mode=dynamic``), NNCF's transformer scheme (``openvino:int8,model_type=transformer``,
``preset=``), and quantizer failures said in one line that names the op and its module.

The model is a BERT with tiny random weights, shaped like the pretrained MiniLM these recipes
were measured on: on it, plain ``openvino:int8`` hits the same NNCF failure (the token type
embedding, whose indices come from a buffer, not from the inputs)."""
import collections

import numpy as np
import pytest
import torch

import backendiff
from backendiff.errors import BadInput
from backendiff.registry import adapter_class
from backendiff.specs import parse_spec

from .conftest import needs

transformers = pytest.importorskip("transformers")


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(config).eval()


def bert_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, size=(2, 16)).astype(np.int64)
    mask = np.ones((2, 16), np.int64)
    mask[1, 10:] = 0          # a padded second sentence
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(), bert_inputs()


def compare(bert, specs, cache_dir, **options):
    module, inputs = bert
    options = {"isolate": False, "advise": False, "layerwise": "never"} | options
    return backendiff.compare(module, inputs=inputs, backends=specs, cache_dir=cache_dir, **options)


def op_counts(path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def canonical(text):
    spec = parse_spec(text)
    return adapter_class(spec.name).canonical(spec)


# -- ort:int8,mode=dynamic ----------------------------------------------------------------------
@needs("ort")
def test_ort_dynamic_int8_runs_quantizes_at_run_time_and_reads_back_int8(bert, cache_dir):
    report = compare(bert, ["ort:int8,mode=dynamic"], cache_dir, layerwise="always")
    b = report.backend("ort:int8,mode=dynamic")
    assert b.status in ("ok", "diverged"), b.error
    assert b.outputs[0].metrics["sqnr_db"] > 20       # int8 weights, activations quantized per tensor at run time
    ops = op_counts(b.info["artifact"])
    assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0, ops
    assert ops["QuantizeLinear"] == 0, ops            # no static QDQ pairs
    assert "dynamic" in b.info["quantization"]
    assert b.info["runtime_precisions"].get("int8", 0) > 0, b.info["runtime_precisions"]
    assert b.precision["runtime"] in ("int8", "mixed") and b.precision["honoured"]
    assert report.calibration is None                 # nothing was calibrated: no calibration data needed
    # the layer view reads the float tensors the dynamic model keeps, and says so
    assert "dynamic" in b.info["layers_from"] and "layers_error" not in b.info
    assert b.layers and all(row["metrics"] for row in b.layers)


@needs("ort")
def test_ort_dynamic_int8_bisects_its_float_tensors(bert, cache_dir):
    b = compare(bert, ["ort:int8,mode=dynamic"], cache_dir, layerwise="always", bisect=True, rtol=1e-4,
                atol=1e-4).backends[0]
    bisection = b.info["bisection"]
    assert bisection["candidates"] > 10 and bisection["first_diverging_cut"] is not None, bisection
    assert "dynamic" in bisection["graph"]


@needs("ort")
def test_ort_dynamic_int8_keep_leaves_a_module_in_float(bert, cache_dir):
    import onnx

    from backendiff.onnx_graph import node_module

    report = compare(bert, ["ort:int8,mode=dynamic,keep=encoder.layer.1", "ort:int8,mode=dynamic"], cache_dir)
    kept, whole = report.backends
    assert kept.status in ("ok", "diverged"), kept.error
    assert kept.info["kept"]["encoder.layer.1"] > 0
    model = onnx.load(kept.info["artifact"], load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    float_linears = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                     and node_module(n).startswith("encoder.layer.1.") and weights & set(n.input)]
    assert float_linears                               # the kept layer's linears stay float, the others do not
    assert 0 < op_counts(kept.info["artifact"])["MatMulInteger"] < op_counts(whole.info["artifact"])["MatMulInteger"]


def test_int8_mode_is_part_of_the_canonical_spec():
    assert canonical("ort:int8,mode=dynamic").text != canonical("ort:int8").text   # its own cache entry
    assert canonical("ort:int8,mode=static") == canonical("ort:int8")              # the default, as before
    adapter = adapter_class("ort")
    assert not adapter(canonical("ort:int8,mode=dynamic")).needs_calibration
    assert adapter(canonical("ort:int8")).needs_calibration


# -- openvino:int8,model_type=transformer -------------------------------------------------------
@needs("openvino")
def test_openvino_transformer_int8_quantizes_where_the_default_scheme_fails(bert, cache_dir):
    report = compare(bert, ["openvino:int8,model_type=transformer", "openvino:int8"], cache_dir)
    b = report.backend("openvino:int8,model_type=transformer")
    assert b.status in ("ok", "diverged"), b.error
    assert b.info["runtime_precisions"].get("int8", 0) > 0, b.info["runtime_precisions"]
    assert b.precision["runtime"] in ("int8", "mixed")
    # without it NNCF fails; the failure is one line naming the op, its FX node, module and what to try
    failed = report.backend("openvino:int8")
    assert failed.status == "failed" and failed.error["stage"] == "convert"
    message = failed.error["message"]
    assert "\n" not in message
    assert "node embedding_1 of type Gather" in message
    assert "embeddings.token_type_embeddings" in message
    assert "indices do not depend on the model's inputs" in message
    assert "model_type=transformer" in message
    assert failed.error["where"][0]["module"] == "embeddings.token_type_embeddings"   # located by diagnose


@needs("openvino")
def test_nncf_arguments_of_a_spec():
    import nncf

    from backendiff.backends.openvino import nncf_arguments

    assert nncf_arguments(canonical("openvino:int8")) == {}
    assert nncf_arguments(canonical("openvino:int8,model_type=transformer,preset=performance")) == {
        "model_type": nncf.ModelType.TRANSFORMER, "preset": nncf.QuantizationPreset.PERFORMANCE}
    assert nncf_arguments(canonical("openvino:int8,preset=mixed")) == {"preset": nncf.QuantizationPreset.MIXED}


# -- bad values: one line each ------------------------------------------------------------------
@pytest.mark.parametrize("spec, says", [
    ("ort:int8,mode=weird", "allowed: static, dynamic"),
    ("ort:fp16,mode=dynamic", "applies to ort:int8"),
    ("ort:int8,mode=dynamic,ep=trt", "ep=trt"),
    ("openvino:int8,preset=weird", "allowed: performance, mixed"),
    ("openvino:int8,model_type=cnn", "allowed: transformer"),
    ("openvino:fp32,model_type=transformer", "applies to openvino:int8"),
])
def test_bad_int8_options_are_bad_input(spec, says):
    with pytest.raises(BadInput) as e:
        canonical(spec)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_bad_mode_is_refused_before_any_work():
    with pytest.raises(BadInput, match="allowed: static, dynamic"):
        backendiff.compare(torch.nn.Linear(2, 2), inputs=(torch.zeros(1, 2),), backends=["ort:int8,mode=fast"])


# -- quantizer failures and precision read-back (no runtime needed) ---------------------------
def onnx_with_module(name="node_linear_1", op="MatMul", scopes="['', 'encoder', 'encoder.proj', 'linear_1']"):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node(op, ["x", "w"], ["y"], name=name)
    prop = node.metadata_props.add()
    prop.key, prop.value = "pkg.torch.onnx.name_scopes", scopes
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0] * 4)])
    return onnx.helper.make_model(graph)


def test_quantizer_error_names_the_node_its_module_and_what_to_try():
    from backendiff.backends.ort import quantizer_error
    from backendiff.diagnose import parse_rejection

    exc = KeyError("'node_linear_1' has no activation range\nsecond line of the tool")
    line = quantizer_error(exc, [onnx_with_module()], "static")
    assert "\n" not in line
    assert "quantize_static failed at node node_linear_1 of type MatMul (module encoder.proj)" in line
    assert "mode=dynamic" in line and "keep=encoder.proj" in line
    assert parse_rejection(line) == (["MatMul"], "node_linear_1")   # what the report's `where` is found from
    # a name that is only part of a longer word is not the node
    assert "at node" not in quantizer_error(RuntimeError("node_linear_12 failed"), [onnx_with_module()], "dynamic")


def test_dynamic_int8_ops_read_back_as_int8():
    from onnx import TensorProto, helper

    from backendiff.precision import onnx_compute_precisions

    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["accf", "xs"], ["y"]),
        helper.make_node("DynamicQuantizeLSTM", ["y"], ["h"], domain="com.microsoft"),
        helper.make_node("MatMulIntegerToFloat", ["xq", "w", "xs", "ws"], ["z"], domain="com.microsoft"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor("w", TensorProto.INT8, [2, 2], [1] * 4),
                               helper.make_tensor("ws", TensorProto.FLOAT, [], [1.0])])
    # the rescale Mul runs in fp32; MatMulInteger, the fused MatMulIntegerToFloat and the LSTM in int8;
    # DynamicQuantizeLinear, like QuantizeLinear, is no compute of its own
    assert onnx_compute_precisions(helper.make_model(graph)) == {"int8": 3, "fp32": 1}
