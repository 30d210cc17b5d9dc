"""Each CPU runtime, by its default route and by the ONNX route, agrees with PyTorch fp32 on
small models covering conv/BN/ReLU, ceil-mode max-pool, bilinear upsampling with
align_corners True and False, LayerNorm, GELU and attention."""
import pytest

import backendiff
from backendiff.inputs import InputSpec

from .conftest import CPU_BACKENDS, OP_MODELS, available

ROUTES = [b for b in CPU_BACKENDS] + ["openvino:fp32,route=onnx", "tvm:fp32,route=onnx"]



@pytest.mark.parametrize("model_name", list(OP_MODELS))
def test_all_routes_agree_with_pytorch(model_name):
    factory, shape = OP_MODELS[model_name]
    specs = [s for s in ROUTES if available(s.split(":")[0].split(",")[0])]
    if not specs:
        pytest.skip("no CPU runtime installed")
    report = backendiff.compare(factory(), backends=specs, input_specs=(InputSpec("x", shape),), samples=2)
    assert report.model["samples"] == 2
    base = report.baseline["outputs"][0]["metrics"]
    assert base["max_abs"] < 1e-5 and base["sqnr_db"] > 100   # fp32 vs fp64: rounding only
    for result in report.backends:
        assert result.status == "ok", (result.spec, result.error, result.outputs)
        m = result.outputs[0].metrics
        assert m["max_abs"] < 1e-4 and m["cosine"] > 0.999999
        assert m["sqnr_db"] is None or m["sqnr_db"] > 90
        assert result.timings["infer_s"] >= 0 and result.precision["runtime"] == "fp32"
    assert report.exit_code == 0


def test_same_inputs_bit_for_bit_reach_every_backend():
    """A backend that records what it was given sees exactly the reference's arrays."""
    from backendiff.backends.pytorch import TorchAdapter, TorchCompiled
    from backendiff.registry import register_backend, unregister_backend

    seen = []

    class Recording(TorchCompiled):
        def run(self, sample):
            seen.append({k: v.copy() for k, v in sample.items()})
            return super().run(sample)

    class RecordingAdapter(TorchAdapter):
        name = "recording"

        def compile(self, module, folder):
            return Recording(module, None)

    register_backend(RecordingAdapter)
    try:
        factory, shape = OP_MODELS["conv_bn_relu"]
        report = backendiff.compare(factory(), backends=["recording"], input_specs=(InputSpec("x", shape),),
                                    samples=3, seed=5, isolate=False)   # `seen` lives in this process
    finally:
        unregister_backend("recording")
    from backendiff.inputs import random_samples, samples_sha256

    expected = random_samples([InputSpec("x", shape)], 5, 3)
    assert samples_sha256(seen) == samples_sha256(expected) == report.model["inputs_sha256"]


def test_a_runtime_missing_a_module_it_imports_lazily_is_unavailable_not_failed():
    """A converter that imports a module this machine lacks (as NNCF or TVM's frontends do
    inside their calls) says what to install; it is not a verdict on the model."""
    from backendiff.backends.pytorch import TorchAdapter
    from backendiff.registry import register_backend, unregister_backend

    class HalfInstalled(TorchAdapter):
        name = "half-installed"

        def convert(self, model, folder):
            import backendiff_no_such_runtime_module  # noqa: F401

    register_backend(HalfInstalled)
    try:
        factory, shape = OP_MODELS["conv_bn_relu"]
        report = backendiff.compare(factory(), backends=["half-installed", "torch"], input_specs=(InputSpec("x", shape),),
                                    isolate=False)
    finally:
        unregister_backend("half-installed")
    broken, torch_result = report.backends
    assert broken.status == "unavailable" and torch_result.status == "ok"
    assert broken.error["stage"] == "convert" and "backendiff_no_such_runtime_module" in broken.error["message"]
    assert broken.error["hint"] == "pip install backendiff_no_such_runtime_module"


def test_torch_on_cuda_is_the_gpu_baseline_and_unavailable_without_a_gpu():
    import torch

    factory, shape = OP_MODELS["conv_bn_relu"]
    report = backendiff.compare(factory(), backends=["torch:fp32,device=cuda", "torch"], input_specs=(InputSpec("x", shape),))
    gpu, cpu = report.backends
    assert cpu.status == "ok"
    if torch.cuda.is_available():
        assert gpu.status == "ok" and gpu.outputs[0].metrics["sqnr_db"] > 100    # TF32 off: IEEE fp32
    else:
        assert gpu.status == "unavailable" and "needs an NVIDIA GPU" in gpu.error["message"]
        assert "CUDA build of PyTorch" in gpu.error["hint"]
    from backendiff.registry import adapter_class
    from backendiff.specs import parse_specs

    (spec,) = parse_specs(["torch:fp32,device=cuda"])
    assert adapter_class("torch").needs_gpu(spec) and not adapter_class("torch").needs_gpu(parse_specs(["torch"])[0])
