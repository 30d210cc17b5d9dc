"""The reference of an .onnx model: ONNX's reference evaluator, or ONNX Runtime with its
graph optimizations off where the evaluator cannot run the graph (a contrib op, say); the
report says which and why."""
import numpy as np
import pytest

import backendiff
from backendiff import BadInput

from .conftest import needs


def contrib_model(path):
    """MatMul then ONNX Runtime's com.microsoft Gelu: ONNX Runtime runs it, onnx.reference
    does not know the domain."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gelu", ["h"], ["y"], domain="com.microsoft")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor("w", TensorProto.FLOAT, [8, 8], w.ravel())])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]), str(path))
    return path, w


@needs("ort")
def test_a_graph_onnx_reference_cannot_run_falls_back_to_ort(tmp_path):
    path, w = contrib_model(tmp_path / "m.onnx")
    report = backendiff.compare(str(path), backends=["ort"], layerwise="always", isolate=False, use_cache=False)
    assert report.reference["backend"] == "onnxruntime (graph optimizations off)"
    assert "onnx.reference cannot evaluate" in report.reference["note"] and "Gelu" in report.reference["note"]
    b = report.backends[0]
    assert b.status == "ok" and {r["node"] for r in b.layers} >= {"h", "y"}      # intermediates from ORT too
    assert b.outputs[0].metrics["max_abs"] < 1e-4
    # the fallback computes the graph's meaning: x @ w, then the exact (erf) GELU
    from math import erf, sqrt

    from backendiff.cache import Cache
    from backendiff.loading import load_model
    from backendiff.model import ModelHandle

    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    got = ModelHandle(load_model(str(path)), [{"x": x}], Cache(None)).reference.outputs()[0][0]
    h = x.astype(np.float64) @ w.astype(np.float64)
    assert np.allclose(got, np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))(h), atol=1e-5)


@needs("ort")
def test_asking_for_onnx_reference_on_such_a_graph_is_bad_input_and_ort_can_be_chosen(tmp_path):
    path, _ = contrib_model(tmp_path / "m.onnx")
    with pytest.raises(BadInput, match="does not run on onnx.reference.*--reference ort"):
        backendiff.compare(str(path), backends=["ort"], reference="onnx", isolate=False, use_cache=False)
    report = backendiff.compare(str(path), backends=["ort"], reference="ort", isolate=False, use_cache=False)
    assert report.reference["backend"].startswith("onnxruntime") and "note" not in report.reference


@needs("ort")
def test_a_plain_graph_keeps_onnx_reference(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "r.onnx"))
    report = backendiff.compare(str(tmp_path / "r.onnx"), backends=["ort"], isolate=False, use_cache=False)
    assert report.reference["backend"] == "onnx.reference" and "note" not in report.reference
