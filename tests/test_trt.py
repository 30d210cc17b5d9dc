"""The TensorRT adapter: everything that runs without a GPU, plus one GPU end-to-end test."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backendiff.backends import trt as T
from backendiff.backends.trt import TrtAdapter
from backendiff.errors import BackendUnavailable, BadInput
from backendiff.specs import BackendSpec, parse_spec


def _trt_importable() -> bool:
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except (ImportError, ValueError):
        return False


def _cuda() -> bool:
    import torch

    return torch.version.cuda is not None and torch.cuda.is_available()


HAS_TRT_GPU = _trt_importable() and _cuda()


# -- availability ---------------------------------------------------------------------
def test_module_imports_without_tensorrt():
    assert "tensorrt" not in vars(T)
    assert TrtAdapter.name == "trt" and TrtAdapter.extra == "trt"
    assert TrtAdapter.packages == {"tensorrt": "tensorrt"}


def test_availability_on_this_machine():
    if HAS_TRT_GPU:
        pytest.skip("tensorrt and a CUDA device are present")
    av = TrtAdapter.availability()
    assert not av.available
    assert av.name == "trt" and av.variants == ("fp32", "tf32", "fp16", "bf16")
    if not _trt_importable():
        assert "tensorrt" in av.reason and "not installed" in av.reason
        assert av.hint == "pip install 'backendiff[trt]'"
    else:
        assert av.reason


def test_unavailable_reason_not_installed():
    assert T.unavailable_reason(None, "12.4", 1) == "tensorrt is not installed"
    assert T.unavailable_reason(None, None, 0) == "tensorrt is not installed"


def test_unavailable_reason_old_version():
    reason = T.unavailable_reason("8.6.1", "12.4", 1)
    assert "8.6.1" in reason and "10" in reason
    assert "9.3.0" in T.unavailable_reason("9.3.0", None, 0)
    assert "unreadable" in T.unavailable_reason("weird", "12.4", 1)


def test_unavailable_reason_cpu_only_torch():
    reason = T.unavailable_reason("10.3.0", None, 0)
    assert reason == "no NVIDIA GPU: this PyTorch is a CPU-only build (torch.version.cuda is None)"


def test_unavailable_reason_rocm_torch():
    reason = T.unavailable_reason("10.3.0", None, 0, hip_build="6.1")
    assert "ROCm" in reason and "6.1" in reason


def test_unavailable_reason_no_device():
    reason = T.unavailable_reason("10.3.0", "12.4", 0)
    assert reason.startswith("no CUDA device visible to PyTorch")


def test_unavailable_reason_ok():
    assert T.unavailable_reason("10.3.0.26", "12.4", 1) is None
    assert T.unavailable_reason("11.0.0", "13.0", 2) is None


def test_major_version_and_needs_install():
    assert T.major_version("10.3.0.26") == 10
    assert T.major_version("10.0.0b6") == 10
    assert T.major_version("") is None and T.major_version(None) is None
    assert T.needs_install(None) and T.needs_install("8.6.1") and T.needs_install("x")
    assert not T.needs_install("10.1.0")


def _check_raises(monkeypatch, trt_module, *, cuda=None, available=False, count=0) -> BackendUnavailable:
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", trt_module)
    monkeypatch.setattr(torch.version, "cuda", cuda, raising=False)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(BackendUnavailable) as info:
        TrtAdapter.check()
    return info.value


def test_check_not_installed(monkeypatch):
    e = _check_raises(monkeypatch, None)  # None in sys.modules: import raises ModuleNotFoundError
    assert e.reason == "tensorrt is not installed"
    assert e.hint == TrtAdapter.install_hint() == "pip install 'backendiff[trt]'"


def test_check_old_version(monkeypatch):
    e = _check_raises(monkeypatch, types.SimpleNamespace(__version__="8.6.1"), cuda="12.4", available=True, count=1)
    assert "8.6.1" in e.reason
    assert e.hint == TrtAdapter.install_hint()


def test_check_cpu_only_torch(monkeypatch):
    e = _check_raises(monkeypatch, types.SimpleNamespace(__version__="10.3.0"), cuda=None)
    assert "CPU-only build" in e.reason and "torch.version.cuda is None" in e.reason
    assert e.hint == T.GPU_HINT


def test_check_no_device(monkeypatch):
    e = _check_raises(monkeypatch, types.SimpleNamespace(__version__="10.3.0"), cuda="12.4", available=False)
    assert e.reason.startswith("no CUDA device visible to PyTorch")
    assert "NVIDIA GPU" in e.hint


def test_check_passes_with_fake_gpu(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.version, "cuda", "12.4", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    TrtAdapter.check()


# -- builder configuration ------------------------------------------------------------
@pytest.mark.parametrize("variant,set_,clear", [
    ("fp32", [], ["TF32"]),
    ("tf32", ["TF32"], []),
    ("fp16", ["FP16"], ["TF32"]),
    ("bf16", ["BF16"], ["TF32"]),
])
def test_builder_flags(variant, set_, clear):
    assert T.builder_flags(variant) == set_
    assert T.cleared_flags(variant) == clear


def test_builder_flags_unknown_variant():
    with pytest.raises(ValueError):
        T.builder_flags("int4")


class _FakeConfig:
    def __init__(self):
        self.calls = []

    def set_flag(self, flag):
        self.calls.append(("set", flag))

    def clear_flag(self, flag):
        self.calls.append(("clear", flag))

    def set_memory_pool_limit(self, pool, size):
        self.calls.append(("pool", pool, size))

    def __setattr__(self, key, value):
        if key != "calls":
            self.calls.append(("attr", key, value))
        object.__setattr__(self, key, value)


_FAKE_TRT = SimpleNamespace(
    BuilderFlag=SimpleNamespace(FP16="FP16", BF16="BF16", TF32="TF32"),
    MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
)


def test_apply_config_fp16():
    config = _FakeConfig()
    T.apply_config(_FAKE_TRT, config, "fp16", opt_level=5, workspace_mb=256)
    assert config.calls == [
        ("set", "FP16"), ("clear", "TF32"),
        ("attr", "builder_optimization_level", 5),
        ("pool", "WORKSPACE", 256 << 20),
    ]


def test_apply_config_tf32_defaults():
    config = _FakeConfig()
    T.apply_config(_FAKE_TRT, config, "tf32")
    assert config.calls == [("set", "TF32")]


def test_parse_workspace_mb():
    assert T.parse_workspace_mb("512") == 512
    for bad in ("0", "-3", "abc", "1.5"):
        with pytest.raises(BadInput):
            T.parse_workspace_mb(bad)


# -- spec -------------------------------------------------------------------------------
def test_canonical_fills_defaults():
    spec = TrtAdapter.canonical(parse_spec("trt:fp16,opt_level=3"))
    assert spec == BackendSpec("trt", "fp16", (("opt_level", "3"),))
    assert TrtAdapter.canonical(parse_spec("trt")) == BackendSpec("trt", "fp32", (("opt_level", "3"),))
    spec = TrtAdapter.canonical(parse_spec("trt:bf16,workspace_mb=1024,opt_level=0"))
    assert spec.options == (("opt_level", "0"), ("workspace_mb", "1024"))


@pytest.mark.parametrize("text", ["trt:int4", "trt:fp32,opt_level=7", "trt:fp32,workspace_mb=lots",
                                  "trt:fp32,device=cpu"])
def test_canonical_rejects(text):
    with pytest.raises(BadInput):
        TrtAdapter.canonical(parse_spec(text))


def test_route_is_onnx():
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt")))
    assert adapter.route(SimpleNamespace(has_torch=True)) == "onnx"
    assert adapter.precision == "fp32"


def test_convert_returns_onnx_path_and_records_shapes(tmp_path):
    onnx = tmp_path / "model.onnx"
    model = SimpleNamespace(onnx_path=lambda: onnx,
                            samples=[{"x": np.zeros((1, 3, 8, 8), np.float32), "n": np.zeros((2,), np.int64)}])
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    assert adapter.convert(model, tmp_path) == onnx
    assert adapter._sample_shapes == {"x": (1, 3, 8, 8), "n": (2,)}


# -- parser errors ----------------------------------------------------------------------
class _FakeParserError:
    def __init__(self, desc, node, name=None, op=None):
        self._d, self._n, self._name, self._op = desc, node, name, op

    def desc(self):
        return self._d

    def node(self):
        return self._n

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op


def test_describe_parser_error():
    err = _FakeParserError("Unsupported operator Foo", 7, "/block/Foo_3", "Foo")
    assert T.describe_parser_error(err) == "node 7 (Foo /block/Foo_3): Unsupported operator Foo"
    assert T.describe_parser_error(_FakeParserError("bad graph", -1)) == "graph: bad graph"


def test_describe_parser_error_older_api():
    err = SimpleNamespace(desc=lambda: "oops", node=lambda: 2)  # no node_name/node_operator
    assert T.describe_parser_error(err) == "node 2: oops"


def test_parse_failure_message_lists_every_error():
    msg = T.parse_failure_message(Path("m.onnx"), ["node 1: a", "node 4 (Foo x): b"])
    assert "m.onnx" in msg and "2 error(s)" in msg
    assert "node 1: a" in msg and "node 4 (Foo x): b" in msg
    assert "no details" in T.parse_failure_message("m.onnx", [])


# -- inputs and shapes ------------------------------------------------------------------
def test_match_inputs_by_name_and_position():
    a, b = np.zeros(1), np.ones(2)
    assert T.match_inputs(["y", "x"], {"x": a, "y": b}) == {"y": b, "x": a}
    assert T.match_inputs(["input_0", "input_1"], {"x": a, "y": b}) == {"input_0": a, "input_1": b}
    with pytest.raises(RuntimeError, match="takes 1 input"):
        T.match_inputs(["only"], {"x": a, "y": b})


def test_profile_shapes():
    static = [("x", (1, 3, 8, 8))]
    assert T.profile_shapes(static, None) == {}
    dynamic = [("x", (-1, 3, 8, 8)), ("m", (4,))]
    assert T.profile_shapes(dynamic, {"x": (2, 3, 8, 8), "m": (4,)}) == {"x": (2, 3, 8, 8)}
    with pytest.raises(RuntimeError, match="no sample shapes"):
        T.profile_shapes(dynamic, None)
    with pytest.raises(RuntimeError, match="does not fit"):
        T.profile_shapes(dynamic, {"x": (2, 4, 8, 8), "m": (4,)})


# -- dtypes and host arrays ---------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("FLOAT", "float32"), ("HALF", "float16"), ("BF16", "bfloat16"), ("INT32", "int32"),
    ("INT64", "int64"), ("INT8", "int8"), ("UINT8", "uint8"), ("BOOL", "bool"),
])
def test_torch_dtype(name, expected):
    import torch

    assert T.torch_dtype(name) is getattr(torch, expected)
    assert T.torch_dtype(f"DataType.{name}") is getattr(torch, expected)
    assert T.torch_dtype(SimpleNamespace(name=name)) is getattr(torch, expected)


def test_torch_dtype_unsupported():
    with pytest.raises(TypeError, match="FP8"):
        T.torch_dtype("FP8")


def test_host_array_bf16_becomes_float32():
    import torch

    out = T.host_array(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
    assert out.dtype == np.float32 and out.tolist() == [1.5, -2.0]
    assert T.host_array(torch.arange(3, dtype=torch.int64)).dtype == np.int64


def test_write_engine_is_atomic(tmp_path):
    path = T.write_engine(tmp_path / T.ENGINE_FILE, b"\x00plan\xff")
    assert path.read_bytes() == b"\x00plan\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == [T.ENGINE_FILE]


# -- engine build with a fake tensorrt ---------------------------------------------------
class _FakeTensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class _FakeNetwork:
    def __init__(self, inputs):
        self._inputs = inputs
        self.num_inputs = len(inputs)

    def get_input(self, i):
        return self._inputs[i]


class _FakeParser:
    errors: list = []

    def __init__(self, network, logger):
        self.network = network

    def parse_from_file(self, path):
        return not self.errors

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class _FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (lo, opt, hi)


class _FakeBuilder:
    plan = b"plan"
    network_inputs: list = []
    last = None

    def __init__(self, logger):
        _FakeBuilder.last = self
        self.config = _FakeConfig()
        self.profiles = []

    def create_network(self, flags):
        assert flags == 0
        return _FakeNetwork(self.network_inputs)

    def create_builder_config(self):
        return self.config

    def create_optimization_profile(self):
        return _FakeProfile()

    def build_serialized_network(self, network, config):
        return self.plan


def _fake_trt(monkeypatch, *, errors=(), plan=b"plan", inputs=()):
    monkeypatch.setattr(_FakeParser, "errors", list(errors))
    monkeypatch.setattr(_FakeBuilder, "plan", plan)
    monkeypatch.setattr(_FakeBuilder, "network_inputs", list(inputs))
    monkeypatch.setattr(_FakeConfig, "add_optimization_profile",
                        lambda self, p: self.calls.append(("profile", p.shapes)), raising=False)
    return SimpleNamespace(Builder=_FakeBuilder, OnnxParser=_FakeParser, **vars(_FAKE_TRT))


def _logger_stub():
    return SimpleNamespace(errors=["[E] tactic failed"])


def test_build_parse_failure_lists_errors(monkeypatch):
    trt = _fake_trt(monkeypatch, errors=[_FakeParserError("Unsupported op Foo", 3, "/Foo", "Foo"),
                                         _FakeParserError("bad initializer", -1)])
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt")))
    with pytest.raises(RuntimeError) as info:
        adapter._build(trt, _logger_stub(), Path("m.onnx"))
    msg = str(info.value)
    assert "2 error(s)" in msg
    assert "node 3 (Foo /Foo): Unsupported op Foo" in msg and "graph: bad initializer" in msg


def test_build_failure(monkeypatch):
    trt = _fake_trt(monkeypatch, plan=None, inputs=[_FakeTensor("x", (1, 3))])
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    with pytest.raises(RuntimeError, match="engine build failed") as info:
        adapter._build(trt, _logger_stub(), Path("m.onnx"))
    assert "tactic failed" in str(info.value)


def test_build_configures_and_profiles_dynamic_inputs(monkeypatch):
    trt = _fake_trt(monkeypatch, inputs=[_FakeTensor("x", (-1, 3, 8, 8))])
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:bf16,opt_level=1,workspace_mb=64")))
    adapter.convert(SimpleNamespace(onnx_path=lambda: Path("m.onnx"),
                                    samples=[{"x": np.zeros((2, 3, 8, 8), np.float32)}]), Path("."))
    assert adapter._build(trt, _logger_stub(), Path("m.onnx")) == b"plan"
    calls = _FakeBuilder.last.config.calls
    assert calls[:4] == [("set", "BF16"), ("clear", "TF32"), ("attr", "builder_optimization_level", 1),
                         ("pool", "WORKSPACE", 64 << 20)]
    assert calls[4] == ("profile", {"x": ((2, 3, 8, 8),) * 3})


class _FakeILogger:
    def __init__(self):
        pass


class _FakeEngine:
    num_io_tensors = 2
    names = ["x", "y"]

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "IN" if name == "x" else "OUT"

    def create_execution_context(self):
        return object()


class _FakeRuntime:
    loaded: list = []

    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data):
        _FakeRuntime.loaded.append(bytes(data))
        return _FakeEngine()


def _fake_trt_module(monkeypatch):
    import torch

    trt = _fake_trt(monkeypatch, inputs=[_FakeTensor("x", (1, 3))])
    trt.__version__ = "10.3.0"
    trt.ILogger = _FakeILogger
    trt.Runtime = _FakeRuntime
    trt.TensorIOMode = SimpleNamespace(INPUT="IN", OUTPUT="OUT")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(T, "_LOGGER", None)
    monkeypatch.setattr(_FakeRuntime, "loaded", [])
    monkeypatch.setattr(torch.cuda, "Stream", lambda: SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    return trt


def test_compile_builds_writes_then_reuses_engine(monkeypatch, tmp_path):
    _fake_trt_module(monkeypatch)
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    compiled = adapter.compile(tmp_path / "m.onnx", tmp_path)
    assert not adapter.cache_hit
    assert (tmp_path / T.ENGINE_FILE).read_bytes() == b"plan"
    assert compiled.input_names == ["x"] and compiled.output_names == ["y"]
    assert compiled.info == {"variant": "fp16", "tensorrt": "10.3.0", "device": "Fake GPU", "opt_level": 3}
    compiled.close()

    again = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    with again.compile(tmp_path / "missing.onnx", tmp_path):
        pass
    assert again.cache_hit
    assert _FakeRuntime.loaded == [b"plan", b"plan"]


# -- end to end on a GPU --------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT_GPU, reason="needs tensorrt and a CUDA device")
def test_tiny_conv_end_to_end(tmp_path):
    import torch

    from backendiff.cache import Cache
    from backendiff.loading import load_model
    from backendiff.model import ModelHandle

    class TinyConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    handle = ModelHandle(load_model(TinyConv()), [{"x": x}], Cache(tmp_path / "cache"))
    reference = handle.reference()[0]
    folder = tmp_path / "engine"
    folder.mkdir()

    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt")))
    onnx = adapter.convert(handle, folder)
    with adapter.compile(onnx, folder) as compiled:
        out = compiled.run({"x": x})
        assert compiled.info["variant"] == "fp32" and compiled.info["tensorrt"].startswith("1")
        assert compiled.info["device"]
    assert not adapter.cache_hit and (folder / T.ENGINE_FILE).exists()
    assert len(out) == 1 and out[0].shape == reference[0].shape
    np.testing.assert_allclose(out[0], reference[0], rtol=1e-4, atol=1e-4)

    again = TrtAdapter(TrtAdapter.canonical(parse_spec("trt")))
    with again.compile(onnx, folder) as compiled:
        np.testing.assert_allclose(compiled.run({"x": x})[0], out[0], rtol=0, atol=0)
    assert again.cache_hit
