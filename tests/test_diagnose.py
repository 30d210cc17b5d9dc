"""A runtime that rejects the model: the operator, and where the model uses it."""
import inspect

import pytest
import torch

import backendiff
from backendiff.diagnose import op_name, parse_rejection

from .conftest import needs


@pytest.mark.parametrize("message, frames, ops, node", [
    ("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Col2Im(18) node with name "
     "'node_Col2Im_3'", [], ["Col2Im"], "node_Col2Im_3"),
    ("OpConversionFailure: No conversion rule found for operations: aten::frobnicate.default, aten::foo",
     [], ["aten::frobnicate.default", "aten::foo"], None),
    ("Check failed: strides.size() == 2 (0 vs. 2)", ["from_exported_program", "_max_pool2d_impl"], ["max_pool2d"], None),
    ("something else entirely", [], [], None),
    ("Cannot view a tensor with shape torch.Size([2, 16, 64]) and strides (64, 128, 1) as a tensor with shape "
     "(32, 64)!\nWhile executing %view_7 : [num_users=1] = call_function[target=torch.ops.aten.view.default]"
     "(args = (%reshape_1, [-1, 64]), kwargs = {})", [], ["aten.view.default"], "view_7"),
])
def test_parse_rejection(message, frames, ops, node):
    assert parse_rejection(message, frames) == (ops, node)


def test_op_names_are_normalised():
    assert {op_name(t) for t in ("aten::max_pool2d", "aten.max_pool2d.default", "max_pool2d.default")} == {"max_pool2d"}


@needs("tvm")
def test_tvm_rejection_names_the_operator_and_the_source_line():
    """TVM's ExportedProgram importer rejects max_pool2d called without a stride (PyTorch's
    default): the report names the operator, the module and the line of the user's code."""
    b = backendiff.compare("zoo:mini-pose", backends=["tvm"]).backend("tvm")
    assert b.status == "failed" and b.error["stage"] == "convert" and b.error["operator"] == "max_pool2d"
    (where,) = b.error["where"]
    assert where["module"] == "<top>" and where["op"] == "max_pool2d" and where["source"].endswith("models/nets.py:44")


class Body(torch.nn.Module):
    """A conv, then the op under test as submodule body.1 (a module path to find)."""

    def __init__(self, op):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), op)

    def forward(self, x):
        return self.body(x)


class Rfft(torch.nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x, dim=-1).abs()


class CircularPad(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = torch.nn.CircularPad2d(2)

    def forward(self, x):
        return self.pad(x)


class DoubleConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()

    def forward(self, x):
        return self.conv(x.double()).float()


class AdaptiveMaxPool(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveMaxPool2d((5, 7))

    def forward(self, x):
        return self.pool(x)


def _errors(op, backends):
    torch.manual_seed(0)
    report = backendiff.compare(Body(op).eval(), inputs=(torch.rand(1, 3, 16, 16),), backends=backends, golden=False)
    return {b.spec: b.error for b in report.backends}


@needs("ort", "openvino", "tvm")
def test_real_rejections_name_operator_and_module():
    """Real rejections found on these runtimes (onnxruntime 1.32, OpenVINO 2026.4, TVM 0.27)."""
    fft = _errors(Rfft(), ["openvino", "tvm"])
    for spec in ("openvino", "tvm"):                  # both: no conversion for aten._fft_r2c
        assert fft[spec]["stage"] == "convert" and "_fft_r2c" in fft[spec]["operator"]
        assert [(w["module"], w["op"]) for w in fft[spec]["where"]] == [("body.1", "_fft_r2c")]
        line = inspect.getsourcelines(Rfft.forward)[1] + 1        # the body of Rfft.forward
        assert fft[spec]["where"][0]["source"].endswith(f"test_diagnose.py:{line}")
    pad = _errors(CircularPad(), ["openvino:fp32,route=onnx"])["openvino:fp32,route=onnx"]
    assert pad["operator"] == "Pad-20" and pad["where"][0]["module"] == "body.1.pad"   # padding mode 'wrap'
    conv = _errors(DoubleConv(), ["ort"])["ort"]        # no float64 Conv kernel in ORT's CPU provider
    assert conv["stage"] == "compile" and conv["operator"] == "Conv" and conv["node"]
    assert [w["module"] for w in conv["where"]] == ["body.1.conv"]
    pool = _errors(AdaptiveMaxPool(), ["ort"])["ort"]   # the ONNX exporter has no adaptive_max_pool2d
    assert pool["stage"] == "export" and "adaptive_max_pool2d" in pool["operator"]
    assert pool["where"][0]["module"] == "body.1.pool"


def test_openvino_headline_is_the_informative_line():
    from backendiff.render import _headline

    message = ("Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
               "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted.\nSummary:\n"
               "-- No conversion rule found for operations: aten._fft_r2c.default")
    assert _headline(message) == "No conversion rule found for operations: aten._fft_r2c.default"
