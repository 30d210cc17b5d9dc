import pytest

from backendiff import BadInput, parse_spec, parse_specs
from backendiff.registry import adapter_class


def test_comma_list_attaches_options_to_the_spec_before():
    specs = parse_specs("ort,openvino:fp32,route=onnx,tvm")
    assert [s.text for s in specs] == ["ort", "openvino:fp32,route=onnx", "tvm"]
    assert specs[1].option("route") == "onnx"


def test_option_in_variant_position():
    spec = parse_spec("tvm:target=llvm")
    assert spec.variant is None and spec.option("target") == "llvm"


def test_several_lists_join():
    assert [s.name for s in parse_specs(["ort", "openvino,tvm"])] == ["ort", "openvino", "tvm"]


@pytest.mark.parametrize("text", ["", "ort,,tvm", "route=onnx,ort", "ort:", "ort:fp32,=3", "o rt", "ort,opt=",
                                  "ort,opt=all,opt=basic"])
def test_malformed_specs_are_bad_input(text):
    with pytest.raises(BadInput):
        parse_specs(text)


def test_canonical_fills_defaults_and_validates():
    cls = adapter_class("openvino")
    canonical = cls.canonical(parse_spec("openvino,route=onnx"))
    assert canonical.variant == "fp32"
    assert dict(canonical.options) == {"route": "onnx", "device": "CPU"}
    with pytest.raises(BadInput, match="unknown variant 'int3'"):
        cls.canonical(parse_spec("openvino:int3"))
    with pytest.raises(BadInput, match="unknown option 'colour'"):
        cls.canonical(parse_spec("openvino,colour=red"))
    with pytest.raises(BadInput, match="bad value 'tflite'"):
        cls.canonical(parse_spec("openvino,route=tflite"))


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(BadInput, match="known backends: ort, openvino, tvm, trt, torch"):
        adapter_class("tflite")


def test_aliases():
    assert adapter_class("onnxruntime").name == "ort"
    assert adapter_class("ov").name == "openvino"
