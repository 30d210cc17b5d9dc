"""compare() as a library: default backends, user arrays, failures kept as data, fp64 baseline."""
import numpy as np
import pytest
import torch
from torch import nn

import backendiff
from backendiff.backends.pytorch import TorchAdapter
from backendiff.registry import register_backend, unregister_backend

from .conftest import available


def test_without_backends_every_available_default_backend_runs():
    report = backendiff.compare("zoo:digits-cnn-narrow")
    ran = [b.backend for b in report.backends]
    expected = [n for n in ("ort", "openvino", "tvm", "trt") if available(n)]
    assert ran == expected and "torch" not in ran
    assert report.requested == [] and report.exit_code == 0


def test_user_arrays_from_npz(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x)
    np.savez(tmp_path / "b.npz", x=x[::-1].copy())
    report = backendiff.compare("zoo:digits-cnn-narrow", backends=["torch"],
                                input_files=(tmp_path / "a.npz", tmp_path / "b.npz"))
    assert report.model["inputs_from"] == "file" and report.model["samples"] == 2
    assert report.backend("torch").status == "ok"


class Boom(TorchAdapter):
    name = "boom"

    def compile(self, module, folder):
        raise RuntimeError("Unsupported operator 'aten::frobnicate'\n  at conv1\n(long native trace)")


def test_a_failing_backend_is_data_and_the_rest_is_kept():
    register_backend(Boom)
    try:
        report = backendiff.compare("zoo:digits-cnn-narrow", backends=["torch", "boom"])
    finally:
        unregister_backend("boom")
    assert report.backend("torch").status == "ok"
    boom = report.backend("boom")
    assert boom.status == "failed" and boom.error["stage"] == "compile" and boom.error["type"] == "RuntimeError"
    assert boom.error["message"].startswith("Unsupported operator 'aten::frobnicate'")
    assert report.exit_code == 3


class Float32Only(nn.Module):
    """Casts to float32 inside: cannot run as a whole in float64."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.float())


def test_fp64_baseline_says_why_not():
    report = backendiff.compare(Float32Only().eval(), inputs=(torch.ones(1, 4),), backends=["torch"])
    assert report.baseline["available"] is False
    assert "does not run in float64" in report.baseline["reason"]
    assert report.backend("torch").status == "ok"


@pytest.mark.skipif(not available("ort") or not available("openvino"), reason="needs ort and openvino")
def test_runtime_options_reach_the_runtime():
    report = backendiff.compare("zoo:digits-cnn-narrow", backends=["ort:fp16,opt=disable", "openvino,perf_hint=throughput"])
    ort16 = report.backend("ort:fp16,opt=disable")
    assert ort16.info["opt"] == "disable" and ort16.options["opt"] == "disable"
    assert report.backend("openvino:perf_hint=throughput").status == "ok"


def test_timings_keep_the_peak_memory_of_the_run_and_of_each_backend():
    """#20's profile: the JSON timings say how much memory the run and each backend's worker
    peaked at, beside the seconds of each step."""
    import backendiff

    report = backendiff.compare("zoo:fp16-overflow", backends=["torch"], use_cache=False)
    assert report.timings["peak_rss_mb"] > 50 and report.backends[0].timings["peak_rss_mb"] > 50
    assert report.timings["reference_s"] > 0 and report.timings["torch_export_s"] > 0
    assert report.to_dict()["timings"]["peak_rss_mb"] == report.timings["peak_rss_mb"]
