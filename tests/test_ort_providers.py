"""ONNX Runtime's CUDA and TensorRT execution providers: ``ort:cuda`` and ``ort:trt`` (or
``ep=cuda|trt`` with any variant), unavailable with the reason where onnxruntime lacks them;
plain ``ort`` exactly as before."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from backendiff.backends import ort as O
from backendiff.backends.ort import OrtAdapter
from backendiff.errors import BackendUnavailable, BadInput
from backendiff.specs import BackendSpec, parse_spec


def _providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
CPU_ORT = HAS_ORT and "CUDAExecutionProvider" not in _providers()


# -- specs ------------------------------------------------------------------------------
@pytest.mark.parametrize("text,canonical", [
    ("ort", BackendSpec("ort", "fp32", (("opt", "all"),))),                 # as before: no ep option
    ("ort:int8", BackendSpec("ort", "int8", (("opt", "all"),))),
    ("ort:fp16,keep=fc", BackendSpec("ort", "fp16", (("keep", "fc"), ("opt", "all")))),
    ("ort:cuda", BackendSpec("ort", "fp32", (("ep", "cuda"), ("opt", "all")))),
    ("ort:trt", BackendSpec("ort", "fp32", (("ep", "trt"), ("opt", "all")))),
    ("ort:trt,opt=basic", BackendSpec("ort", "fp32", (("ep", "trt"), ("opt", "basic")))),
    ("ort:fp16,ep=cuda", BackendSpec("ort", "fp16", (("ep", "cuda"), ("opt", "all")))),
    ("ort:cuda,ep=cuda", BackendSpec("ort", "fp32", (("ep", "cuda"), ("opt", "all")))),
    ("ort:int8,ep=trt,keep=fc", BackendSpec("ort", "int8", (("ep", "trt"), ("keep", "fc"), ("opt", "all")))),
])
def test_canonical(text, canonical):
    assert OrtAdapter.canonical(parse_spec(text)) == canonical


@pytest.mark.parametrize("text,message", [
    ("ort:cuda,ep=trt", "names the cuda execution provider, but the spec also sets ep=trt"),
    ("ort:rocm", r"unknown variant 'rocm'.*available: fp32, fp16, int8 \(or an execution provider: cuda, trt\)"),
    ("ort:fp32,ep=rocm", "bad value 'rocm' for option 'ep'"),
    ("ort:fp16,ep=trt,keep=fc", "does not apply with ep=trt and fp16"),
])
def test_canonical_rejects(text, message):
    with pytest.raises(BadInput, match=message):
        OrtAdapter.canonical(parse_spec(text))


def test_variants_and_keep_unchanged():
    assert OrtAdapter.variants == ("fp32", "fp16", "int8") and OrtAdapter.keep_variants == ("fp16", "int8")
    assert OrtAdapter(OrtAdapter.canonical(parse_spec("ort:cuda"))).ep == "cuda"
    assert OrtAdapter(OrtAdapter.canonical(parse_spec("ort"))).ep == "cpu"
    assert OrtAdapter(OrtAdapter.canonical(parse_spec("ort:cuda"))).precision == "fp32"


# -- providers ----------------------------------------------------------------------------
CPU_LIST = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU_LIST = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_provider_unavailable_reason():
    reason, hint = O.provider_unavailable_reason("cuda", CPU_LIST, "1.32.0")
    assert reason == ("onnxruntime 1.32.0 has no CUDAExecutionProvider (a CPU-only build; available providers: "
                      "AzureExecutionProvider, CPUExecutionProvider)")
    assert "pip install onnxruntime-gpu" in hint and "tensorrt" not in hint
    reason, hint = O.provider_unavailable_reason("trt", GPU_LIST, "1.32.0")
    assert "no TensorrtExecutionProvider (a build without it" in reason and "pip install tensorrt" in hint
    assert O.provider_unavailable_reason("cuda", GPU_LIST, "1.32.0") is None
    assert O.provider_unavailable_reason("cpu", [], "1.32.0") is None


def test_provider_fallback_reason():
    assert O.provider_fallback_reason("cuda", GPU_LIST) is None
    reason = O.provider_fallback_reason("cuda", ["CPUExecutionProvider"])
    assert "CUDAExecutionProvider is listed" in reason and "runs on CPUExecutionProvider" in reason
    assert "TensorRT" in O.provider_fallback_reason("trt", ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_provider_list(tmp_path):
    assert O.provider_list("cpu", "fp16") == ["CPUExecutionProvider"]
    cuda = O.provider_list("cuda", "fp32")
    assert cuda == [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0}), "CPUExecutionProvider"]
    trt = O.provider_list("trt", "fp16", tmp_path)
    assert trt[0] == ("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": True,
                                                    "trt_engine_cache_enable": True,
                                                    "trt_engine_cache_path": str(tmp_path)})
    assert trt[1:] == cuda
    assert O.provider_list("trt", "int8")[0][1] == {"device_id": 0, "trt_int8_enable": True}
    assert O.provider_list("trt", "fp32")[0][1] == {"device_id": 0}


# -- on this machine -------------------------------------------------------------------------
@needs_ort
@pytest.mark.skipif(not CPU_ORT, reason="this onnxruntime has the CUDA provider")
def test_gpu_providers_unavailable_here():
    for text, provider in (("ort:cuda", "CUDAExecutionProvider"), ("ort:trt", "TensorrtExecutionProvider"),
                           ("ort:int8,ep=cuda", "CUDAExecutionProvider")):
        with pytest.raises(BackendUnavailable) as info:
            OrtAdapter(OrtAdapter.canonical(parse_spec(text))).check_variant()
        assert f"has no {provider} (a CPU-only build" in info.value.reason
        assert "onnxruntime-gpu" in info.value.hint
    OrtAdapter(OrtAdapter.canonical(parse_spec("ort"))).check_variant()   # the CPU: nothing to check
    assert set(OrtAdapter.unavailable_variants()) == {"ort:cuda", "ort:trt"}
    assert OrtAdapter.availability().available   # the backend itself stays available


@needs_ort
@pytest.mark.skipif(not CPU_ORT, reason="this onnxruntime has the CUDA provider")
def test_backends_command_lists_the_providers_that_cannot_run():
    import json

    from click.testing import CliRunner

    from backendiff.cli import cli

    out = CliRunner().invoke(cli, ["backends", "--json"])
    assert out.exit_code == 0, out.output
    ort = next(b for b in json.loads(out.output) if b["name"] == "ort")
    assert ort["available"] and set(ort["variants_unavailable"]) == {"ort:cuda", "ort:trt"}
    assert "CUDAExecutionProvider" in ort["variants_unavailable"]["ort:cuda"]["reason"]
    assert "onnxruntime-gpu" in ort["variants_unavailable"]["ort:trt"]["hint"]
    text = CliRunner().invoke(cli, ["backends"], env={"COLUMNS": "250"}).output
    assert "ort:cuda: onnxruntime" in text and "has no TensorrtExecutionProvider" in text


def _relu_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="node_relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@needs_ort
@pytest.mark.skipif(not CPU_ORT, reason="this onnxruntime has the CUDA provider")
def test_a_listed_provider_that_does_not_load_is_unavailable_not_cpu(monkeypatch, tmp_path):
    """onnxruntime falls back to the CPU (with a warning) when the CUDA provider cannot load:
    that session must not be measured as ort:cuda."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: GPU_LIST)
    adapter = OrtAdapter(OrtAdapter.canonical(parse_spec("ort:cuda")))
    adapter.check_variant()   # listed: passes the first check
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        with pytest.raises(BackendUnavailable, match="listed by onnxruntime but the session could not use it"):
            adapter.compile(_relu_onnx(tmp_path / "m.onnx"), tmp_path)


@needs_ort
def test_plain_ort_still_runs_on_the_cpu_provider(tmp_path):
    adapter = OrtAdapter(OrtAdapter.canonical(parse_spec("ort")))
    with adapter.compile(_relu_onnx(tmp_path / "m.onnx"), tmp_path) as compiled:
        assert compiled.info["providers"] == ["CPUExecutionProvider"]
        assert compiled.run({"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]
    assert not (tmp_path / "trt_engines").exists()


@needs_ort
@pytest.mark.skipif(not CPU_ORT, reason="this onnxruntime has the CUDA provider")
def test_a_run_reports_the_providers_unavailable():
    import backendiff

    specs = ["ort:cuda", "ort:trt", "ort:int8,ep=cuda"]
    report = backendiff.compare("zoo:digits-cnn-narrow", backends=["ort"] + specs, isolate=False)
    plain = report.backend("ort")
    assert plain.status == "ok" and plain.options == {"opt": "all"} and plain.variant == "fp32"
    assert plain.info["providers"] == ["CPUExecutionProvider"]
    for spec in specs:
        b = report.backend(spec)
        assert b.status == "unavailable", spec
        assert "CPU-only build" in b.error["message"] and "onnxruntime-gpu" in b.error["hint"]
    assert report.backend("ort:cuda").options == {"ep": "cuda", "opt": "all"}
    assert report.calibration is None   # the unavailable int8 spec prepared nothing
    assert report.exit_code == 3


# -- on a GPU ----------------------------------------------------------------------------------
def _cuda_usable() -> bool:
    import torch

    return "CUDAExecutionProvider" in _providers() and torch.version.cuda is not None and torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_usable(), reason="needs onnxruntime-gpu (CUDAExecutionProvider) and an NVIDIA GPU")
def test_ort_cuda_on_a_gpu():
    import backendiff

    from .conftest import OP_MODELS

    factory, shape = OP_MODELS["conv_bn_relu"]
    from backendiff.inputs import InputSpec

    specs = ["ort:cuda", "ort:fp16,ep=cuda"] + (["ort:trt"] if "TensorrtExecutionProvider" in _providers() else [])
    report = backendiff.compare(factory(), backends=specs, input_specs=(InputSpec("x", shape),))
    for spec in specs:
        b = report.backend(spec)
        assert b.status == "ok", (spec, b.error)
        assert b.info["providers"][0] == O.PROVIDERS[O.OrtAdapter.canonical(parse_spec(spec)).option("ep")]


def test_tensorrt_provider_fp16_is_tensorrts_own(tmp_path):
    """ep=trt and fp16: the fp32 graph with trt_fp16_enable, never the ONNX-level fp16 lowering
    (deployed, isolated and layer-wise alike)."""
    from types import SimpleNamespace

    onnx = tmp_path / "model.onnx"
    model = SimpleNamespace(onnx_path=lambda: onnx, onnx_from_cache=True)
    trt16 = OrtAdapter(OrtAdapter.canonical(parse_spec("ort:fp16,ep=trt")))
    assert trt16.convert(model, tmp_path) == onnx and trt16.lower_onnx(onnx) == onnx
    assert O.provider_list(trt16.ep, trt16.variant)[0][1]["trt_fp16_enable"] is True
    assert not list(tmp_path.iterdir())   # nothing lowered, nothing written


def test_tensorrt_provider_engine_cache_is_per_gpu_and_version(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "GPU A")
    a = O.trt_cache_folder(tmp_path)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "GPU B")
    b = O.trt_cache_folder(tmp_path)
    assert a.parent == b.parent == tmp_path / "trt_engines" and a != b
