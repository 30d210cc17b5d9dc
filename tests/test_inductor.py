"""The AOTInductor backend on the real runtime: fp32 agrees with PyTorch, bf16 runs at bf16
(or is refused on a CPU without it), the .pt2 package is reused from the cache, a missing
C++ compiler or GPU is reported as unavailable with the reason. Every compare shares one
cache folder, so each package is compiled once for the whole file."""
import types

import pytest

from backendiff.compare import compare
from backendiff.errors import BackendUnavailable, BadInput
from backendiff.specs import parse_specs

from .conftest import needs

pytestmark = needs("inductor")

MODEL = "zoo:digits-cnn"


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def adapter(text: str):
    from backendiff.backends.inductor import InductorAdapter

    return InductorAdapter(InductorAdapter.canonical(parse_specs(text)[0]))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("inductor-cache")


@pytest.fixture(scope="module")
def first(cache):
    """fp32 and bf16 compiled from scratch, each in its isolated worker; threads=2 asked too."""
    return compare(MODEL, backends=["inductor", "inductor:bf16", "inductor:fp32,threads=2"], cache_dir=cache)


def test_fp32_agrees_with_pytorch(first):
    result = first.backend("inductor")
    assert result.status == "ok", result.error
    m = result.outputs[0].metrics
    assert m["max_abs"] < 1e-5 and m["sqnr_db"] > 100
    assert result.precision == {"requested": "fp32", "runtime": "fp32", "honoured": True}
    assert set(result.info["runtime_precisions"]) == {"fp32"} and result.info["runtime_precisions"]["fp32"] > 5
    assert result.info["inductor_configs"] == {"max_autotune": False, "freezing": False, "cpp.dynamic_threads": True}
    assert result.cache == "miss" and result.timings["compile_s"] > 2     # a real AOT compile


def test_bf16_runs_at_bf16_or_is_refused(first):
    from backendiff.backends.inductor import cpu_bf16_missing

    result = first.backend("inductor:bf16")
    if cpu_bf16_missing():
        assert result.status == "unavailable" and result.error["message"] == cpu_bf16_missing()
        return
    assert result.status == "ok", result.error
    assert result.tolerance == {"rtol": 5e-2, "atol": 5e-2}           # judged as bf16
    assert result.precision == {"requested": "bf16", "runtime": "bf16", "honoured": True}
    assert set(result.info["runtime_precisions"]) == {"bf16"}
    m = result.outputs[0].metrics
    assert 25 < m["sqnr_db"] < 80 and m["cosine"] > 0.999          # bf16 error: far from fp32's ~138 dB


def test_threads_above_one_are_refused_in_a_forked_worker(first):
    result = first.backend("inductor:fp32,threads=2")
    assert result.status == "unavailable"
    assert "OpenMP" in result.error["message"] and "--no-isolate" in result.error["hint"]


def test_second_run_reuses_the_package(first, cache):
    second = compare(MODEL, backends=["inductor", "inductor:bf16"], cache_dir=cache)
    for spec in ("inductor", "inductor:bf16"):
        a, b = first.backend(spec), second.backend(spec)
        if a.status == "unavailable":
            continue
        assert (a.cache, b.cache) == ("miss", "hit")
        assert a.outputs[0].metrics == b.outputs[0].metrics
        assert b.info["runtime_precisions"] == a.info["runtime_precisions"]   # read back from beside the package
        assert b.timings["compile_s"] < a.timings["compile_s"] / 2 and b.timings["compile_s"] < 5
    assert len(list(cache.glob("compiled/*/*/model.pt2"))) == 2 - (first.backend("inductor:bf16").status != "ok")


def test_layer_view_compiles_every_node_as_an_output(first, cache):
    report = compare(MODEL, backends=["inductor"], cache_dir=cache, layerwise="always")
    result = report.backend("inductor")
    assert result.status == "ok" and result.cache == "hit"
    assert "every node's value returned as an output" in result.info["layers_from"]
    assert len(result.layers) >= 10 and "instrumentation_changed" not in result.info
    assert all(row["within_tolerance"] for row in result.layers)
    assert min(row["metrics"]["sqnr_db"] for row in result.layers if row["metrics"]["sqnr_db"] is not None) > 100
    assert len(list(cache.glob("compiled/*/*/layers.pt2"))) == 1        # cached beside the deployed package


def test_missing_compiler_is_unavailable(monkeypatch, tmp_path):
    from backendiff.backends.inductor import InductorAdapter

    monkeypatch.setenv("PATH", str(tmp_path))                          # no g++ (nor anything) on PATH
    found = InductorAdapter.availability()
    assert not found.available
    assert found.reason.startswith("no C++ compiler for AOTInductor") and "g++" in found.hint
    result = compare(MODEL, backends=["inductor"], cache_dir=tmp_path).backend("inductor")
    assert result.status == "unavailable" and result.error["stage"] == "setup"
    assert result.error["message"] == found.reason


def test_onnx_source_is_unavailable_at_convert(tmp_path):
    model = types.SimpleNamespace(has_torch=False)
    with pytest.raises(BackendUnavailable, match="ONNX source"):
        adapter("inductor").convert(model, tmp_path)


def test_precision_count_by_output_dtype():
    import torch

    from backendiff.backends.inductor import deployed_program, fx_compute_precisions

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Flatten()).eval()
    args = (torch.rand(2, 4),)
    ep = torch.export.export(net, args)
    assert fx_compute_precisions(ep.graph) == {"fp32": 2}                     # linear, relu; flatten is layout
    assert fx_compute_precisions(ep.graph, tf32=True) == {"tf32": 1, "fp32": 1}
    bf16 = deployed_program(ep, "bfloat16", "cpu", args)
    assert fx_compute_precisions(bf16.graph) == {"bf16": 2}                   # the casts in and out are layout
    assert bf16.module()(*args).dtype == torch.float32 and ep.state_dict["0.weight"].dtype == torch.float32


def test_cuda_specs():
    from backendiff.backends.inductor import InductorAdapter

    tf32 = InductorAdapter.canonical(parse_specs("inductor:tf32")[0])
    assert tf32.option("device") == "cuda" and InductorAdapter.needs_gpu(tf32)
    assert InductorAdapter.needs_gpu(InductorAdapter.canonical(parse_specs("inductor:fp32,device=cuda")[0]))
    assert not InductorAdapter.needs_gpu(InductorAdapter.canonical(parse_specs("inductor:bf16")[0]))
    with pytest.raises(BadInput, match="CUDA mode"):
        InductorAdapter.canonical(parse_specs("inductor:tf32,device=cpu")[0])


@pytest.mark.skipif(cuda(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("spec", ["inductor:tf32", "inductor:fp32,device=cuda"])
def test_cuda_is_unavailable_without_a_gpu(spec):
    with pytest.raises(BackendUnavailable, match="needs an NVIDIA GPU"):
        adapter(spec).check_variant()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda(), reason="needs an NVIDIA GPU and a CUDA build of torch")
def test_cuda_fp32_with_tf32_off_and_tf32(cache):
    report = compare(MODEL, backends=["inductor:fp32,device=cuda", "inductor:tf32"], cache_dir=cache)
    fp32, tf32 = report.backend("inductor:fp32,device=cuda"), report.backend("inductor:tf32")
    assert fp32.status == tf32.status == "ok", (fp32.error, tf32.error)
    assert fp32.outputs[0].metrics["sqnr_db"] > 100                  # TF32 off: IEEE fp32
    assert fp32.info["device"] == tf32.info["device"] == "cuda"
    assert fp32.precision["runtime"] == "fp32" and "tf32" not in fp32.info["runtime_precisions"]
    assert tf32.tolerance == {"rtol": 5e-3, "atol": 5e-3} and tf32.info["runtime_precisions"]["tf32"] >= 1


@pytest.mark.slow
def test_threads_in_process(cache):
    report = compare(MODEL, backends=["inductor:fp32,threads=2"], cache_dir=cache, isolate=False, latency_runs=5)
    result = report.backend("inductor:fp32,threads=2")
    assert result.status == "ok" and result.outputs[0].metrics["sqnr_db"] > 100
    assert result.latency["threads"] == 2


@pytest.mark.slow
def test_bisection_over_unmodified_prefixes(first, cache):
    from backendiff.backends.inductor import cpu_bf16_missing

    if cpu_bf16_missing():
        pytest.skip(cpu_bf16_missing())
    report = compare(MODEL, backends=["inductor:bf16"], cache_dir=cache, rtol=1e-3, atol=1e-3, bisect=True)
    result = report.backend("inductor:bf16")
    assert result.status == "diverged"                               # bf16 judged at 1e-3
    found = result.info["bisection"]
    assert found["program"] == "core_aten" and found["probes"] >= 2
    assert found["first_diverging_cut"]["node"] == result.first_divergence["node"]
