"""A real divergence is detected and reported; real agreement passes."""
import pytest
import torch

import backendiff
from backendiff.backends.pytorch import TorchAdapter
from backendiff.registry import register_backend, unregister_backend

from .conftest import needs


class PerturbedTorch(TorchAdapter):
    """Test-only backend: PyTorch with one weight of the first conv nudged by 1e-2."""

    name = "perturbed"

    def convert(self, model, folder):
        import copy

        module = copy.deepcopy(model.loaded.module)
        conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            conv.weight[0, 0, 0, 0] += 1e-2
        return module


@pytest.fixture
def perturbed():
    register_backend(PerturbedTorch)
    yield "perturbed"
    unregister_backend("perturbed")


def test_perturbed_weight_is_a_divergence(perturbed):
    report = backendiff.compare("zoo:digits-cnn", backends=["torch", perturbed])
    ok, bad = report.backend("torch"), report.backend("perturbed")
    assert ok.status == "ok" and ok.outputs[0].metrics["max_abs"] == 0.0 and ok.outputs[0].metrics["sqnr_db"] is None
    assert bad.status == "diverged"
    m = bad.outputs[0].metrics
    assert 1e-4 < m["max_abs"] < 1.0 and m["sqnr_db"] < 90 and bad.outputs[0].violations > 0
    assert not report and report.verdict == "fail" and report.exit_code == 1


def test_tolerance_override_accepts_the_same_difference(perturbed):
    """A wider atol alone still meets the precision's SQNR/cosine floor; lowering the floors
    too accepts the same difference."""
    inside = backendiff.compare("zoo:digits-cnn", backends=[perturbed], atol=1.0, rtol=0.0, compare_on="random")
    b = inside.backend("perturbed")
    assert b.outputs[0].within_tolerance and b.status == "diverged" and "below the floor" in b.outputs[0].reason
    report = backendiff.compare("zoo:digits-cnn", backends=[perturbed], atol=1.0, rtol=0.0, min_sqnr=0.0,
                                min_cosine=0.0, compare_on="random")
    assert report.backend("perturbed").status == "ok"
    assert report.backend("perturbed").tolerance == {"rtol": 0.0, "atol": 1.0}
    assert report.exit_code == 0


@needs("openvino")
def test_openvino_runtime_default_precision_is_reported():
    """The fp32 variant pins f32; precision_hint=default lets the CPU plugin choose (bf16 on
    CPUs with AVX-512 BF16 / AMX), and the report says what it ran in."""
    report = backendiff.compare("zoo:digits-cnn", backends=["openvino", "openvino:fp32,precision_hint=default"])
    pinned, native = report.backends
    assert pinned.status == "ok" and pinned.precision == {"requested": "fp32", "runtime": "fp32", "honoured": True}
    if native.precision["runtime"] == "bf16":
        assert native.status == "diverged"
        assert native.outputs[0].metrics["max_abs"] > 1e-3
    else:
        assert native.status == "ok"
