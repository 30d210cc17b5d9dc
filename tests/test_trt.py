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
from backendiff.backends.trt import build as trt_build
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
    assert av.name == "trt" and av.variants == ("fp32", "tf32", "fp16", "bf16", "int8", "strongly_typed")
    if not _trt_importable():
        assert "tensorrt" in av.reason and "not installed" in av.reason
        assert av.hint.endswith("pip install 'backendiff[trt]'")
        import torch

        if torch.version.cuda is None:                # this machine: no GPU either, and it says so
            assert "no NVIDIA GPU" in av.reason and av.hint.startswith(T.GPU_HINT)
    else:
        assert av.reason


def test_unavailable_reason_not_installed():
    assert T.unavailable_reason(None, "12.4", 1) == "tensorrt is not installed"
    # without a GPU as well: both, since installing tensorrt alone would not help
    assert T.unavailable_reason(None, None, 0) == ("tensorrt is not installed; and no NVIDIA GPU: this PyTorch is "
                                                   "a CPU-only build (torch.version.cuda is None)")
    assert T.unavailable_reason("8.6.1", "12.4", 0).endswith("; and no CUDA device visible to PyTorch (CUDA 12.4 build)")


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
    e = _check_raises(monkeypatch, None, cuda="12.4", available=True, count=1)  # None: import fails
    assert e.reason == "tensorrt is not installed"
    assert e.hint == TrtAdapter.install_hint() == "pip install 'backendiff[trt]'"
    e = _check_raises(monkeypatch, None)                                   # and no GPU: both
    assert e.reason.startswith("tensorrt is not installed; and no NVIDIA GPU")
    assert e.hint == f"{T.GPU_HINT}; pip install 'backendiff[trt]'"


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
    ("int8", ["INT8"], ["TF32"]),
    ("strongly_typed", [], ["TF32"]),
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
    source = adapter.convert(model, tmp_path)
    assert source.onnx_path == onnx
    assert source.sample_shapes == {"x": (1, 3, 8, 8), "n": (2,)}


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
    path = T.write_engine(tmp_path / "model.engine", b"\x00plan\xff")
    assert path.read_bytes() == b"\x00plan\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine"]


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
        T.build_plan(trt, _logger_stub(), adapter.spec, T.TrtSource(Path("m.onnx")))
    msg = str(info.value)
    assert "2 error(s)" in msg
    assert "node 3 (Foo /Foo): Unsupported op Foo" in msg and "graph: bad initializer" in msg


def test_build_failure(monkeypatch):
    trt = _fake_trt(monkeypatch, plan=None, inputs=[_FakeTensor("x", (1, 3))])
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    with pytest.raises(RuntimeError, match="engine build failed") as info:
        T.build_plan(trt, _logger_stub(), adapter.spec, T.TrtSource(Path("m.onnx")))
    assert "tactic failed" in str(info.value)


def test_build_configures_and_profiles_dynamic_inputs(monkeypatch):
    trt = _fake_trt(monkeypatch, inputs=[_FakeTensor("x", (-1, 3, 8, 8))])
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:bf16,opt_level=1,workspace_mb=64")))
    source = adapter.convert(SimpleNamespace(onnx_path=lambda: Path("m.onnx"),
                                             samples=[{"x": np.zeros((2, 3, 8, 8), np.float32)}]), Path("."))
    assert T.build_plan(trt, _logger_stub(), adapter.spec, source) == b"plan"
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
    monkeypatch.setattr(trt_build, "_LOGGER", None)
    monkeypatch.setattr(_FakeRuntime, "loaded", [])
    monkeypatch.setattr(torch.cuda, "Stream", lambda: SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    return trt


def test_compile_builds_writes_then_reuses_engine(monkeypatch, tmp_path):
    _fake_trt_module(monkeypatch)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx bytes")
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    compiled = adapter.compile(onnx, tmp_path)
    assert not adapter.cache_hit
    key = T.engine_key(T.file_sha256(onnx), "fp16", [("opt_level", "3")], "10.3.0", "Fake GPU", (8, 6))
    engine = tmp_path / T.engine_file(key)
    assert engine.read_bytes() == b"plan"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", engine.name])
    assert compiled.input_names == ["x"] and compiled.output_names == ["y"]
    assert compiled.info == {"variant": "fp16", "tensorrt": "10.3.0", "device": "Fake GPU",
                             "compute_capability": "8.6", "opt_level": 3, "engine": engine.name}
    compiled.close()

    copy = tmp_path / "copy" / "m.onnx"   # the same bytes elsewhere: the same engine
    copy.parent.mkdir()
    copy.write_bytes(b"onnx bytes")
    again = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    with again.compile(copy, tmp_path):
        pass
    assert again.cache_hit
    assert _FakeRuntime.loaded == [b"plan", b"plan"]


def test_compile_rebuilds_when_the_onnx_or_the_gpu_changes(monkeypatch, tmp_path):
    import torch

    _fake_trt_module(monkeypatch)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx bytes")
    first = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    first.compile(onnx, tmp_path).close()
    onnx.write_bytes(b"other onnx bytes")
    second = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    second.compile(onnx, tmp_path).close()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    third = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    third.compile(onnx, tmp_path).close()
    assert not first.cache_hit and not second.cache_hit and not third.cache_hit
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".engine"]) == 3


# -- int8, strongly typed, precision constraints ------------------------------------------
def test_network_flags():
    trt = SimpleNamespace(__version__="10.3.0", NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))
    assert T.network_flags(trt, "strongly_typed") == 1 << 1
    assert T.network_flags(trt, "fp16") == 0 and T.network_flags(trt, "int8") == 0
    old = SimpleNamespace(__version__="8.6.1", NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0))
    with pytest.raises(BackendUnavailable, match="8.6.1 has no strongly typed networks.*STRONGLY_TYPED") as info:
        T.network_flags(old, "strongly_typed")
    assert info.value.hint == T.UPGRADE_HINT


@pytest.mark.parametrize("mode,flag", [("obey", "OBEY_PRECISION_CONSTRAINTS"),
                                       ("prefer", "PREFER_PRECISION_CONSTRAINTS")])
def test_apply_config_precision_constraints(mode, flag):
    trt = SimpleNamespace(BuilderFlag=SimpleNamespace(FP16="FP16", TF32="TF32", **{flag: flag}),
                          MemoryPoolType=_FAKE_TRT.MemoryPoolType)
    config = _FakeConfig()
    T.apply_config(trt, config, "fp16", constraints=mode)
    assert config.calls == [("set", "FP16"), ("clear", "TF32"), ("set", flag)]
    with pytest.raises(ValueError):
        T.constraint_flag("sometimes")


def test_build_strongly_typed_sets_no_precision_flag(monkeypatch):
    trt = _fake_trt(monkeypatch, inputs=[_FakeTensor("x", (1, 3))])
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=2)
    flags = []
    monkeypatch.setattr(_FakeBuilder, "create_network",
                        lambda self, f: flags.append(f) or _FakeNetwork(self.network_inputs))
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:strongly_typed")))
    assert T.build_plan(trt, _logger_stub(), adapter.spec, T.TrtSource(Path("m.onnx"))) == b"plan"
    assert flags == [4]
    assert [c for c in _FakeBuilder.last.config.calls if c[0] == "set"] == []
    assert adapter.precision == "fp32"   # the export's own types


@pytest.mark.parametrize("variant,found", [
    ("strongly_typed", "no strongly typed networks"), ("int8", "no implicit int8 calibration"),
    ("bf16", "compute capability 7.5) has no bf16 support"),
])
def test_variant_unavailable_reason(variant, found):
    reason, hint = T.variant_unavailable_reason(variant, "10.3.0", strongly_typed=False, int8_calibrator=False,
                                                capability=(7, 5), device="Tesla T4")
    assert found in reason and hint
    if variant == "bf16":
        assert "Tesla T4" in reason and "8.0" in reason


def test_variant_available():
    for variant in T.VARIANTS:
        assert T.variant_unavailable_reason(variant, "10.3.0", strongly_typed=True, int8_calibrator=True,
                                            capability=(8, 0)) is None


def test_check_variant_with_an_old_api(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.0.0"))  # neither member
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    for variant, found in (("strongly_typed", "STRONGLY_TYPED"), ("int8", "IInt8EntropyCalibrator2"),
                           ("bf16", "Tesla T4")):
        with pytest.raises(BackendUnavailable, match=found):
            TrtAdapter(TrtAdapter.canonical(parse_spec(f"trt:{variant}"))).check_variant()
    TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16"))).check_variant()


def test_unavailable_variants_here():
    if HAS_TRT_GPU:
        pytest.skip("tensorrt and a CUDA device are present")
    out = TrtAdapter.unavailable_variants()
    assert set(out) == set(T.VARIANTS)
    assert all(reason == TrtAdapter.availability().reason for reason, _ in out.values())


@pytest.mark.parametrize("text,canonical", [
    ("trt:int8", BackendSpec("trt", "int8", (("opt_level", "3"),))),
    ("trt:strongly_typed", BackendSpec("trt", "strongly_typed", (("opt_level", "3"),))),
    ("trt:fp16,keep=features.0;fc", BackendSpec("trt", "fp16", (("keep", "features.0;fc"), ("opt_level", "3")))),
    ("trt:int8,keep=fc,precision_constraints=prefer",
     BackendSpec("trt", "int8", (("keep", "fc"), ("opt_level", "3"), ("precision_constraints", "prefer")))),
    ("trt:fp32,layers=outputs", BackendSpec("trt", "fp32", (("layers", "outputs"), ("opt_level", "3")))),
])
def test_canonical_new_variants_and_options(text, canonical):
    assert TrtAdapter.canonical(parse_spec(text)) == canonical


@pytest.mark.parametrize("text,message", [
    ("trt:fp32,keep=fc", "applies to trt:fp16, trt:bf16 and trt:int8"),
    ("trt:strongly_typed,keep=fc", "applies to trt:fp16"),
    ("trt:fp16,keep=;", "module paths separated by ';'"),
    ("trt:fp16,precision_constraints=obey", "applies with keep="),
    ("trt:fp16,keep=fc,precision_constraints=always", "bad value 'always'"),
    ("trt:fp16,layers=all", "bad value 'all'"),
])
def test_canonical_rejects_new_options(text, message):
    with pytest.raises(BadInput, match=message):
        TrtAdapter.canonical(parse_spec(text))


def test_keep_is_advised_for_fp16_bf16_int8():
    from backendiff.advice import with_keep

    assert TrtAdapter.keep_variants == ("fp16", "bf16", "int8")
    spec = with_keep(parse_spec("trt:fp16,opt_level=5"), ["features.0", "classifier.1"])
    assert spec.text == "trt:fp16,opt_level=5,keep=features.0;classifier.1"
    assert TrtAdapter.canonical(parse_spec(spec.text)).option("keep") == "features.0;classifier.1"


# -- engine cache keys ------------------------------------------------------------------------
_KEY = dict(onnx_sha256="a" * 64, variant="fp16", options=[("opt_level", "3")], trt_version="10.3.0.26",
            device="NVIDIA H100", capability=(9, 0), extra=None)


def test_engine_key_is_stable():
    assert T.engine_key(**_KEY) == T.engine_key(**_KEY)
    assert T.engine_key(**{**_KEY, "options": {"opt_level": "3"}}) == T.engine_key(**_KEY)
    two = [("workspace_mb", "64"), ("opt_level", "3")]
    assert T.engine_key(**{**_KEY, "options": two}) == T.engine_key(**{**_KEY, "options": two[::-1]})
    assert T.engine_file(T.engine_key(**_KEY)).startswith("model-")


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", "b" * 64), ("variant", "fp32"), ("options", [("opt_level", "5")]),
    ("options", [("opt_level", "3"), ("keep", "fc")]), ("trt_version", "10.4.0.1"), ("device", "NVIDIA A100"),
    ("capability", (8, 0)), ("extra", "calibration-sha"),
])
def test_engine_key_changes_with_every_component(field, value):
    assert T.engine_key(**{**_KEY, field: value}) != T.engine_key(**_KEY)


def test_layer_option_does_not_rebuild_the_deployed_engine():
    a = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    b = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16,layers=outputs")))
    assert T.engine_options(a.spec) == T.engine_options(b.spec) == [("opt_level", "3")]


# -- parser errors name the PyTorch module ----------------------------------------------------
def _onnx_with_metadata(path):
    import onnx
    from onnx import helper

    node = helper.make_node("Foo", ["x"], ["foo"], name="node_foo")
    for key, value in (("pkg.torch.onnx.name_scopes", "['', 'features', 'features.0', 'foo']"),
                       ("pkg.torch.onnx.stack_trace", 'File "/home/u/nets.py", line 28, in forward\n    x = foo(x)')):
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    plain = helper.make_node("Relu", ["foo"], ["y"], name="node_relu")
    onnx.save(helper.make_model(helper.make_graph([node, plain], "g", [], [])), str(path))
    return path


def test_onnx_places(tmp_path):
    places = T.onnx_places(_onnx_with_metadata(tmp_path / "m.onnx"))
    assert places == [("node_foo", "module features.0 at /home/u/nets.py:28"), ("node_relu", "")]
    assert T.onnx_places(tmp_path / "missing.onnx") == []


def test_describe_parser_error_with_module():
    places = [("node_foo", "module features.0 at /home/u/nets.py:28"), ("node_relu", "")]
    err = _FakeParserError("Unsupported operator Foo", 0, "node_foo", "Foo")
    assert T.describe_parser_error(err, places) == \
        "node 0 (Foo node_foo) in module features.0 at /home/u/nets.py:28: Unsupported operator Foo"
    by_index = SimpleNamespace(desc=lambda: "oops", node=lambda: 0)   # older API: no node name
    assert T.describe_parser_error(by_index, places) == "node 0 in module features.0 at /home/u/nets.py:28: oops"
    assert T.describe_parser_error(_FakeParserError("bad", 1, "node_relu", "Relu"), places) == \
        "node 1 (Relu node_relu): bad"
    assert T.describe_parser_error(_FakeParserError("bad", 5, "elsewhere", "X"), places) == "node 5 (X elsewhere): bad"


def test_build_parse_failure_names_the_module(monkeypatch, tmp_path):
    onnx = _onnx_with_metadata(tmp_path / "m.onnx")
    trt = _fake_trt(monkeypatch, errors=[_FakeParserError("Unsupported operator Foo", 0, "node_foo", "Foo")])
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt")))
    with pytest.raises(RuntimeError, match=r"node 0 \(Foo node_foo\) in module features.0 at /home/u/nets.py:28"):
        T.build_plan(trt, _logger_stub(), adapter.spec, T.TrtSource(onnx))


# -- keep: fp32 constraints on the kept modules' layers ----------------------------------------
def _keep_onnx(path):
    import onnx
    from onnx import helper

    nodes = []
    for name, module, ins, outs in (("node_conv2d", "features.0", ["x"], ["conv2d"]),
                                    ("node_relu", "features.1", ["conv2d"], ["relu"]),
                                    ("node_linear", "fc", ["relu"], ["linear"])):
        node = helper.make_node("Conv" if "conv" in name else ("Gemm" if "linear" in name else "Relu"), ins, outs,
                                name=name)
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(["", module, outs[0]])
        nodes.append(node)
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [], [])), str(path))
    return path


class _KeepLayer:
    def __init__(self, name, dtypes, metadata=None):
        self.name, self.metadata, self.num_outputs = name, metadata, len(dtypes)
        self._outputs = [SimpleNamespace(dtype=d) for d in dtypes]
        self.precision, self.output_types = None, {}

    def get_output(self, j):
        return self._outputs[j]

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


def test_apply_keep_constrains_only_the_kept_layers(tmp_path):
    import onnx

    from backendiff.backends.trt import layers as L
    from backendiff.onnx_graph import nodes_in_modules

    model = onnx.load(str(_keep_onnx(tmp_path / "m.onnx")))
    layers = [_KeepLayer("node_conv2d", ["DataType.HALF"]), _KeepLayer("node_relu", ["DataType.HALF"]),
              _KeepLayer("(Unnamed Layer* 4) [Shuffle]", ["DataType.FLOAT"], "[ONNX Layer: node_linear]"),
              _KeepLayer("node_linear", ["DataType.FLOAT", "DataType.INT32"]),
              _KeepLayer("fc.weight", ["DataType.FLOAT"])]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    trt = SimpleNamespace(float32="float32")
    done = T.apply_keep(trt, network, nodes_in_modules(model, ["features.0", "fc"]), L.onnx_index(model))
    assert done == ["node_conv2d", "(Unnamed Layer* 4) [Shuffle]", "node_linear"]
    assert [layer.precision for layer in layers] == ["float32", None, "float32", "float32", None]
    assert layers[3].output_types == {0: "float32"} and layers[1].output_types == {}


def test_build_with_keep_obeys_constraints(monkeypatch, tmp_path):
    onnx = _keep_onnx(tmp_path / "m.onnx")
    trt = _fake_trt(monkeypatch, inputs=[_FakeTensor("x", (1, 3))])
    trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS = "OBEY"
    trt.float32 = "float32"
    layers = [_KeepLayer("node_conv2d", ["HALF"]), _KeepLayer("node_relu", ["HALF"])]
    monkeypatch.setattr(_FakeNetwork, "num_layers", len(layers), raising=False)
    monkeypatch.setattr(_FakeNetwork, "get_layer", lambda self, i: layers[i], raising=False)
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16,keep=features.0")))
    T.build_plan(trt, _logger_stub(), adapter.spec, T.TrtSource(onnx))
    assert ("set", "OBEY") in _FakeBuilder.last.config.calls
    assert layers[0].precision == "float32" and layers[1].precision is None

    none = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16,keep=fc")))   # fc has no layer in this network
    with pytest.raises(RuntimeError, match="keep=fc: no layer of the parsed network"):
        T.build_plan(trt, _logger_stub(), none.spec, T.TrtSource(onnx))


def test_build_marks_debug_tensors(monkeypatch, tmp_path):
    trt = _fake_trt(monkeypatch, inputs=[_FakeTensor("x", (1, 3))])
    trt.BuilderFlag.DEBUG = "DEBUG"
    layers = [SimpleNamespace(name="node_conv2d", num_outputs=1, get_output=lambda j: _FakeTensor("conv2d", ())),
              SimpleNamespace(name="node_relu", num_outputs=1, get_output=lambda j: _FakeTensor("relu", ()))]
    marked = []
    monkeypatch.setattr(_FakeNetwork, "num_layers", 2, raising=False)
    monkeypatch.setattr(_FakeNetwork, "get_layer", lambda self, i: layers[i], raising=False)
    monkeypatch.setattr(_FakeNetwork, "mark_debug", lambda self, t: marked.append(t.name) or True, raising=False)
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt")))
    T.build_plan(trt, _logger_stub(), adapter.spec, T.TrtSource(Path("layers.onnx")), debug_names=["relu", "conv2d"])
    assert marked == ["conv2d", "relu"] and ("set", "DEBUG") in _FakeBuilder.last.config.calls
    with pytest.raises(RuntimeError, match="no tensor of the network could be marked"):
        T.build_plan(trt, _logger_stub(), adapter.spec, T.TrtSource(Path("layers.onnx")), debug_names=["missing"])
    T.build_plan(trt, _logger_stub(), adapter.spec, T.TrtSource(Path("m.onnx")))   # deployed: nothing marked, no DEBUG
    assert marked == ["conv2d", "relu"] and ("set", "DEBUG") not in _FakeBuilder.last.config.calls


def test_convert_checks_keep_modules(tmp_path):
    onnx = _keep_onnx(tmp_path / "m.onnx")
    model = SimpleNamespace(onnx_path=lambda: onnx, samples=[{"x": np.zeros((1, 3), np.float32)}])
    TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16,keep=features"))).convert(model, tmp_path)  # a parent
    with pytest.raises(BadInput, match="no ONNX node of the export belongs to feature.0; modules with compute "
                                       "ops: features.0, fc"):
        TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16,keep=feature.0"))).convert(model, tmp_path)


# -- the deployed engine read back -------------------------------------------------------------
def test_compile_reads_the_engine_layers_back(monkeypatch, tmp_path):
    import json

    _fake_trt_module(monkeypatch)
    sys.modules["tensorrt"].LayerInformationFormat = SimpleNamespace(JSON="JSON")
    onnx = _keep_onnx(tmp_path / "m.onnx")
    info = {"Layers": [
        {"Name": "node_conv2d + node_relu", "LayerType": "CaskConvolution",
         "Metadata": "[ONNX Layer: node_conv2d]\x1f[ONNX Layer: node_relu]",
         "Outputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "Reformatting CopyNode for Input Tensor 0 to node_linear", "LayerType": "Reformat",
         "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "node_linear", "LayerType": "CaskGemm", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
    ]}
    monkeypatch.setattr(_FakeEngine, "create_engine_inspector", lambda self: SimpleNamespace(
        get_engine_information=lambda fmt: json.dumps(info) if fmt == "JSON" else None), raising=False)
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16")))
    with adapter.compile(onnx, tmp_path) as compiled:
        adapter.deployed = compiled     # as the runner does
        assert compiled.info["runtime_precisions"] == {"fp16": 1, "fp32": 1}
        assert compiled.info["runtime_precision"] == "mixed"
        assert compiled.info["engine_layers"][0] == {
            "layer": "node_conv2d + node_relu", "kind": "fused", "fused": True, "reformat_of": None,
            "nodes": ["node_conv2d", "node_relu"], "modules": ["features.0", "features.1"], "precision": "fp16"}
    present, groups = adapter.deployed_fusion()
    assert groups == {"conv2d": "relu"} and present == {"relu", "linear"}


def test_no_fusion_info_before_compile():
    assert TrtAdapter(TrtAdapter.canonical(parse_spec("trt"))).deployed_fusion() == (None, None)


# -- the new variants are unavailable here, with the reason ----------------------------------------
def test_new_trt_variants_unavailable_in_a_run():
    if HAS_TRT_GPU:
        pytest.skip("tensorrt and a CUDA device are present")
    import backendiff

    specs = ["trt:int8", "trt:strongly_typed", "trt:fp16,keep=features.0", "trt:tf32,layers=debug"]
    report = backendiff.compare("zoo:digits-cnn-narrow", backends=specs + ["torch"], isolate=False)
    for spec in specs:
        result = report.backend(spec)
        assert result.status == "unavailable", spec
        assert result.error["message"] == TrtAdapter.availability().reason and result.error["hint"]
    assert report.calibration is None   # an unavailable int8 backend prepares no calibration data
    assert report.exit_code == 3


# -- end to end on a GPU --------------------------------------------------------------
GPU = pytest.mark.skipif(not HAS_TRT_GPU, reason="needs tensorrt and a CUDA device (an NVIDIA GPU, "
                         "a CUDA build of PyTorch and tensorrt>=10)")


def _tiny_conv():
    import torch

    class TinyConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.head = torch.nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)))

    torch.manual_seed(0)
    return TinyConv().eval()


def _handle(tmp_path):
    from backendiff.cache import Cache
    from backendiff.loading import load_model
    from backendiff.model import ModelHandle

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    calib = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(16)]
    return ModelHandle(load_model(_tiny_conv()), [{"x": x}], Cache(tmp_path / "cache"),
                       calibration_source=lambda: (calib, {"source": "test"}))


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("variant,tol,allowed", [("fp32", 1e-4, {"fp32"}), ("fp16", 2e-2, {"fp16", "fp32"}),
                                                 ("int8", 2e-1, {"int8", "fp32"}), ("strongly_typed", 1e-4, {"fp32"})])
def test_tiny_conv_end_to_end(tmp_path, variant, tol, allowed):
    handle = _handle(tmp_path)
    x = handle.samples[0]["x"]
    reference = handle.reference.outputs()[0]
    folder = tmp_path / "engine"
    folder.mkdir()

    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec(f"trt:{variant}")))
    adapter.check_variant()
    onnx = adapter.convert(handle, folder)
    with adapter.compile(onnx, folder) as compiled:
        out = compiled.run({"x": x})
        info = compiled.info
    assert info["variant"] == variant and info["tensorrt"].startswith("1") and info["device"]
    assert not adapter.cache_hit and (folder / info["engine"]).exists()
    # what ran, read back per layer: never TF32 unless asked, never a precision the variant does not allow
    assert info["runtime_precisions"] and set(info["runtime_precisions"]) <= allowed, info["runtime_precisions"]
    assert any(layer["modules"] for layer in info["engine_layers"])
    assert len(out) == 1 and out[0].shape == reference[0].shape
    scale = max(1.0, float(np.abs(reference[0]).max()))
    assert float(np.abs(out[0] - reference[0]).max()) <= tol * scale
    if variant == "int8":
        assert list(folder.glob("calib-*.cache"))

    again = TrtAdapter(TrtAdapter.canonical(parse_spec(f"trt:{variant}")))
    again.convert(handle, folder)
    with again.compile(onnx, folder) as compiled:
        np.testing.assert_array_equal(compiled.run({"x": x})[0], out[0])
    assert again.cache_hit


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("method", ["debug", "outputs"])
def test_layer_values_on_a_gpu(tmp_path, method):
    import tensorrt as trt

    if method == "debug" and not T.has_debug_tensors(trt):
        pytest.fail(f"tensorrt {trt.__version__} has no debug tensors; backendiff needs TensorRT 10 for them")
    handle = _handle(tmp_path)
    folder = tmp_path / "engine"
    folder.mkdir()
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec(f"trt:fp32,layers={method}")))
    with adapter.compile(adapter.convert(handle, folder), folder) as compiled:
        adapter.deployed = compiled     # as the runner does
    values = adapter.layer_values(handle, handle.samples[0])
    layers, reference = handle.reference_layers()
    common = [layer.node for layer in layers if layer.node in values and layer.node in reference]
    assert len(common) >= 3, (sorted(values), [layer.node for layer in layers])
    for node in common:
        np.testing.assert_allclose(values[node], reference[node], rtol=1e-3, atol=1e-3, err_msg=node)
    assert ("debug tensor" if method == "debug" else "network output") in adapter.layers_from
    present, groups = adapter.deployed_fusion()
    assert groups or present


@pytest.mark.gpu
@GPU
def test_layerwise_report_and_fusion_on_a_gpu():
    import backendiff

    report = backendiff.compare(_tiny_conv(), inputs=(np.ones((1, 3, 16, 16), np.float32),),
                                backends=["trt", "trt:fp16"], layerwise="always", isolate=False)
    for spec in ("trt", "trt:fp16"):
        b = report.backend(spec)
        assert b.status == "ok", (spec, b.error)
        assert b.layers and b.info["layers_from"].startswith("TensorRT")
        assert any(row["fused_into"] for row in b.layers)   # conv + relu fuse into one kernel


@pytest.mark.gpu
@GPU
def test_keep_runs_the_kept_module_in_fp32(tmp_path):
    import backendiff

    report = backendiff.compare(_tiny_conv(), inputs=(np.ones((1, 3, 16, 16), np.float32),),
                                backends=["trt:fp16,keep=head"], isolate=False)
    b = report.backend("trt:fp16,keep=head")
    assert b.status == "ok", b.error
    head = [layer for layer in b.info["engine_layers"] if "head" in layer["modules"] and not layer["reformat_of"]]
    assert head and all(layer["precision"] == "fp32" for layer in head), b.info["engine_layers"]
    assert b.precision["requested"] == "fp16"


@pytest.mark.gpu
@GPU
def test_int8_advice_on_a_gpu():
    import backendiff

    tight = {"atol": 0.01, "rtol": 0.01}
    report = backendiff.compare("zoo:digits-cnn", backends=["trt:int8"], **tight)
    b = report.backend("trt:int8")
    assert b.status == "diverged", (b.status, b.error)
    assert b.advice["found"], b.advice
    assert b.advice["spec"] == "trt:int8,keep=" + ";".join(b.advice["keep"])
    again = backendiff.compare("zoo:digits-cnn", backends=[b.advice["spec"]], **tight)
    assert again.backends[0].status == "ok"
