"""Bisection over unmodified prefix graphs."""
import math
import random

import pytest
import torch

import backendiff
from backendiff.bisect import bisect

from .conftest import needs


def test_bisect_finds_the_first_diverging_cut_in_log_probes():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 300)
        first = rng.randint(0, n)        # n: nothing diverges
        cands = list(range(n))
        index, probes = bisect(cands, lambda c: c >= first)
        assert index == (first if first < n else None)
        assert probes <= math.ceil(math.log2(n)) + 1 if n > 1 else probes == 1


@needs("openvino", "tvm")
def test_bisection_on_real_runtimes_agrees_with_the_propagated_view():
    report = backendiff.compare("zoo:digits-cnn", backends=["openvino:fp32,precision_hint=default", "tvm:fp16", "torch"],
                                bisect=True, compare_on="random")   # fp16 differs on noise, not on real digits
    ov, tvm16 = report.backends[0], report.backends[1]
    if ov.status == "diverged":  # bf16 by default on this CPU: the very first (conv+BN) layer
        cut = ov.info["bisection"]["first_diverging_cut"]
        assert cut["module"] in ("features.0", "features.1") and ov.info["bisection"]["probes"] <= 5
        assert ov.first_divergence["module"] in ("features.0", "features.1")
    cut = tvm16.info["bisection"]["first_diverging_cut"]
    # the default (export) route bisects prefixes of the program it imports, and agrees with its propagated view
    assert cut["node"] == tvm16.first_divergence["node"] and cut["module"] == "features.8"
    assert "unmodified" in tvm16.info["bisection"]["graph"] and "ExportedProgram" in tvm16.info["bisection"]["graph"]
    assert report.backend("torch").layers == []        # agreed: nothing to localize by default


class SeluNet(torch.nn.Module):
    """SELU between two convolutions: TVM's ExportedProgram route (SELU decomposed to a scaled
    ELU) diverges on the installed version while its ONNX route agrees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.nn.functional.selu(self.c1(x)))


@needs("tvm")
def test_tvm_export_route_divergence_is_named_on_that_route():
    """Layer values come from the route that diverged: the ExportedProgram route names the
    ELU the SELU became (before: every ONNX-route layer agreed and nothing was named), and
    so does bisection through that route, forced or automatic."""
    x = (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)
    report = backendiff.compare(SeluNet(), inputs=x, backends=["tvm", "tvm:fp32,route=onnx"], layerwise="always",
                                use_cache=False, isolate=False, bisect=True)
    export, onnx = report.backend("tvm"), report.backend("tvm:fp32,route=onnx")
    if export.status != "diverged":
        pytest.skip("this TVM computes SELU on its export route as PyTorch does")
    assert onnx.status == "ok" and onnx.first_divergence is None
    fd = export.first_divergence
    assert fd["op_type"] == "elu" and fd["source"].endswith("test_bisect.py:" + str(SELU_LINE))
    assert "ExportedProgram" in export.info["layers_from"] and "instrumentation_changed" not in export.info
    assert export.info["bisection"]["first_diverging_cut"]["node"] == fd["node"]


SELU_LINE = SeluNet.forward.__code__.co_firstlineno + 1


@needs("tvm")
def test_automatic_bisection_when_the_layer_view_shows_nothing(monkeypatch):
    """Propagated values that do not reproduce the deployed divergence (here: taken from the
    ONNX route, as before) make backendiff bisect on its own through the deployed route."""
    from backendiff.backends.tvm import TvmAdapter

    monkeypatch.setattr(TvmAdapter, "layers_program", lambda self, model: "onnx")
    monkeypatch.setattr(TvmAdapter, "layer_values",
                        lambda self, model, sample: self.run_onnx(model.instrumented_onnx()[0], list(sample.values()), {}))
    x = (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)
    report = backendiff.compare(SeluNet(), inputs=x, backends=["tvm"], use_cache=False, isolate=False)
    b = report.backend("tvm")
    if b.status != "diverged":
        pytest.skip("this TVM computes SELU on its export route as PyTorch does")
    assert b.info["instrumentation_changed"]                   # the ONNX-route values agree everywhere
    assert b.info["bisection"]["automatic"] and b.first_divergence["reason"] == "bisection"
    assert b.first_divergence["op_type"] == "elu" and b.first_divergence["source"].endswith(f":{SELU_LINE}")
