"""A model whose output is bfloat16 (numpy has none) or sparse: the reference, ONNX Runtime and
OpenVINO outputs are widened exactly to float32, never misread. OpenVINO's Python API hands
a bfloat16 output over as float16 of the same bits (1.5625 read as 1.945); ORT's
``numpy()`` refuses it. Both were failures or wrong numbers before."""
import torch

import backendiff

from .conftest import needs


class ToBf16(torch.nn.Module):
    def forward(self, x):
        return (x * 2).bfloat16()


@needs("ort", "openvino")
def test_bfloat16_outputs_are_read_as_the_numbers_they_hold():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    report = backendiff.compare(ToBf16(), inputs=(x,), backends=["ort", "openvino"], golden=False)
    ort, ov = report.backend("ort"), report.backend("openvino")
    assert ort.status == "ok" and ort.outputs[0].metrics["max_abs"] == 0.0
    # OpenVINO rounds float32 to bfloat16 its own way: at most one bfloat16 step (2**-6 at
    # |v| < 4) from PyTorch's; misread bits were off by up to 4
    assert ov.outputs[0].metrics["max_abs"] <= 2 ** -6


class ToSparse(torch.nn.Module):
    def forward(self, x):
        return (x * 2).to_sparse()


@needs("ort")
def test_a_sparse_output_is_compared_as_its_values_not_a_crash():
    """The reference used to raise TypeError (a sparse tensor has no numpy view): now its
    dense values stand for it and the backend's own failure is reported as data."""
    report = backendiff.compare(ToSparse(), inputs=(torch.ones(2, 3),), backends=["ort"], golden=False)
    assert report.backend("ort").status == "failed" and report.backend("ort").error["stage"] == "export"
