"""Mixed-precision advice: modules to keep in fp32, found and verified by real re-runs."""
import pytest

import backendiff
from backendiff.advice import ordered_by_layers, with_keep
from backendiff.specs import parse_spec

from .conftest import needs


def test_with_keep_and_ordering():
    spec = parse_spec("ort:int8,keep=old,per_channel=true")
    assert with_keep(spec, ["a.0", "b"]).text == "ort:int8,per_channel=true,keep=a.0;b"
    rows = [{"module": "a.conv", "node": "conv", "growth": 2.0, "nonfinite_born": False},
            {"module": "b", "node": "mm", "growth": 50.0, "nonfinite_born": False},
            {"module": "c", "node": "div", "growth": 1.0, "nonfinite_born": True},
            {"module": "", "node": "mul", "growth": 7.0, "nonfinite_born": False},
            {"module": "a", "node": "add", "growth": 9.0, "nonfinite_born": False}]
    assert ordered_by_layers(rows[:3], ["a", "b", "c", "d"]) == ["c", "b", "a", "d"]
    # own functional ops (<module>, <top>) and single nodes (@node) are candidates too;
    # ``first`` (the first divergence's group, then its consumers') leads
    entries = ["a.conv", "<a>", "b", "c", "<top>", "@mm", "d"]
    assert ordered_by_layers(rows, entries) == ["c", "b", "@mm", "<a>", "<top>", "a.conv", "d"]
    assert ordered_by_layers(rows, entries, first=["<top>", "d", "zz"])[:2] == ["<top>", "d"]


@needs("ort")
def test_int8_advice_brings_a_zoo_model_back_within_tolerance():
    tight = {"atol": 0.03, "rtol": 0.03}
    report = backendiff.compare("zoo:digits-cnn", backends=["ort:int8"], **tight)
    b = report.backend("ort:int8")
    assert b.status == "diverged"
    advice = b.advice
    assert advice["found"] and 1 <= len(advice["keep"]) < advice["candidates"]
    assert advice["spec"] == "ort:int8,keep=" + ";".join(advice["keep"])
    # the advice's own spec, re-run from scratch, is within tolerance
    again = backendiff.compare("zoo:digits-cnn", backends=[advice["spec"]], **tight)
    fixed = again.backend(advice["spec"])
    assert fixed.status == "ok" and fixed.precision["runtime"] == "mixed"
    assert fixed.outputs[0].metrics["sqnr_db"] > b.outputs[0].metrics["sqnr_db"]
    assert again.exit_code == 0


@needs("ort")
def test_no_advice_when_asked_not_to_or_when_fp32():
    report = backendiff.compare("zoo:digits-cnn", backends=["ort:int8"], atol=0.03, rtol=0.03, advise=False)
    assert report.backend("ort:int8").advice is None


@needs("openvino")
def test_openvino_int8_advice_through_an_nncf_ignored_scope():
    tight = {"atol": 0.03, "rtol": 0.03}
    report = backendiff.compare("zoo:digits-cnn", backends=["openvino:int8"], **tight)
    b = report.backend("openvino:int8")
    assert b.status == "diverged" and b.advice["found"]
    assert b.advice["spec"].startswith("openvino:int8,route=onnx,keep=")
    again = backendiff.compare("zoo:digits-cnn", backends=[b.advice["spec"]], **tight)
    assert again.backends[0].status == "ok"


def test_openvino_keep_needs_int8_and_the_onnx_route():
    import pytest

    from backendiff import BadInput
    from backendiff.registry import adapter_class

    cls = adapter_class("openvino")
    with pytest.raises(BadInput, match="route=onnx"):
        cls.canonical(parse_spec("openvino:int8,keep=features.0"))
    with pytest.raises(BadInput, match="route=onnx"):
        cls.canonical(parse_spec("openvino:fp16,route=onnx,keep=features.0"))


@needs("ort")
@pytest.mark.parametrize("spec", ["ort:int8", "ort:int8,per_channel=false"])
def test_int8_advice_keeps_the_outlier_and_its_reader(spec):
    """A per-tensor int8 outlier made by a multiply in the model's own forward: the advice's
    candidates include that functional op (<top>) and the conv that reads the tensor, and its
    verified spec, re-run from scratch, is within int8 tolerance."""
    import torch

    from .test_layers import Outlier

    x = (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)
    report = backendiff.compare(Outlier(), inputs=x, backends=[spec], use_cache=False, isolate=False)
    b = report.backends[0]
    assert b.status == "diverged" and b.outputs[0].metrics["cosine"] < 0.97
    advice = b.advice
    assert advice["found"] and set(advice["keep"]) == {"<top>", "conv2"}, advice
    again = backendiff.compare(Outlier(), inputs=x, backends=[advice["spec"]], use_cache=False, advise=False)
    fixed = again.backends[0]
    assert fixed.status == "ok" and fixed.info["kept"]["conv2"] >= 1 and fixed.info["kept"]["<top>"] >= 2
    assert fixed.outputs[0].metrics["sqnr_db"] > b.outputs[0].metrics["sqnr_db"] + 20
