"""TensorRT layer-wise values: debug tensors (mark_debug + IDebugListener) or marked outputs,
with a fake ``tensorrt``; the host side of reading a debug tensor runs for real."""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backendiff.backends import trt as T
from backendiff.backends.trt import TrtAdapter
from backendiff.backends.trt import debug as trt_debug
from backendiff.backends.trt import layerwise as trt_layerwise
from backendiff.specs import parse_spec


def debug_trt(**extra):
    """A fake tensorrt with (or, with ``debug=False``, without) the debug-tensor API."""
    debug = extra.pop("debug", True)
    ns = SimpleNamespace(__version__="10.3.0", INetworkDefinition=SimpleNamespace(),
                         IExecutionContext=SimpleNamespace(), **extra)
    if debug:
        ns.IDebugListener = type("IDebugListener", (), {"__init__": lambda self: None})
        ns.INetworkDefinition.mark_debug = lambda *a: True
        ns.IExecutionContext.set_debug_listener = lambda *a: None
    return ns


def test_has_debug_tensors():
    assert T.has_debug_tensors(debug_trt())
    assert not T.has_debug_tensors(debug_trt(debug=False))
    partial = debug_trt()
    del partial.IExecutionContext.set_debug_listener
    assert not T.has_debug_tensors(partial)


@pytest.mark.parametrize("option,available,method", [
    (None, True, "debug"), ("auto", True, "debug"), ("auto", False, "outputs"),
    ("outputs", True, "outputs"), ("debug", True, "debug"),
])
def test_choose_layer_method(option, available, method):
    assert T.choose_layer_method(option, available) == method


def test_debug_method_without_the_api_says_so():
    with pytest.raises(RuntimeError, match="tensorrt 9.2.0 has no debug tensors.*layers=outputs"):
        T.choose_layer_method("debug", False, "9.2.0")


def test_capsule_pointer():
    assert T.capsule_pointer(1234) == 1234
    buf = ctypes.create_string_buffer(8)
    new = ctypes.pythonapi.PyCapsule_New
    new.argtypes, new.restype = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p], ctypes.py_object
    capsule = new(ctypes.addressof(buf), None, None)
    assert T.capsule_pointer(capsule) == ctypes.addressof(buf)


def test_debug_types_and_array_interface():
    assert T.debug_type("DataType.FLOAT") == ("<f4", None)
    assert T.debug_type(SimpleNamespace(name="BF16")) == ("<i2", "bfloat16")
    with pytest.raises(TypeError, match="FP8"):
        T.debug_type("FP8")
    assert T.cuda_array_interface(77, (2, 3), "<f2") == {"shape": (2, 3), "typestr": "<f2", "data": (77, False),
                                                         "version": 2, "strides": None}


def test_copy_host_debug_tensor_float_and_bf16():
    values = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    out = T.copy_debug_tensor(values.ctypes.data, "TensorLocation.HOST", "FLOAT", (2, 3), 0)
    np.testing.assert_array_equal(out, values)
    assert out.ctypes.data != values.ctypes.data       # a copy: the buffer is only valid in the callback

    import torch

    bf16 = torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16).view(torch.int16).numpy().copy()
    out = T.copy_debug_tensor(bf16.ctypes.data, "HOST", "BF16", [3], 0)
    assert out.dtype == np.float32 and out.tolist() == [1.5, -2.0, 3.25]
    assert T.copy_debug_tensor(0, "HOST", "FLOAT", (0, 4), 0).shape == (0, 4)


def test_listener_collects_values_and_keeps_errors():
    trt = debug_trt()

    def copy(addr, location, dtype, shape, stream):
        if addr == 0:
            raise TypeError("debug tensor type FP8 is not supported")
        return np.full(tuple(shape), addr, np.float32)

    listener = T.debug_listener_class(trt, copy)()
    assert isinstance(listener, trt.IDebugListener)
    assert listener.process_debug_tensor(3, "DEVICE", "FLOAT", (2,), "relu", 0) is True
    assert listener.process_debug_tensor(0, "DEVICE", "FP8", (2,), "conv2d", 0) is True   # never raises
    assert list(listener.values) == ["relu"] and listener.values["relu"].tolist() == [3.0, 3.0]
    assert listener.errors == ["conv2d: TypeError: debug tensor type FP8 is not supported"]


class _Tensor:
    def __init__(self, name):
        self.name = name


class _Layer:
    def __init__(self, name, outputs):
        self.name, self._outputs = name, [_Tensor(o) for o in outputs]
        self.num_outputs = len(outputs)

    def get_output(self, j):
        return self._outputs[j]


class _Network:
    def __init__(self, layers, refuse=()):
        self._layers, self.num_layers, self.refuse, self.marked = layers, len(layers), set(refuse), []

    def get_layer(self, i):
        return self._layers[i]

    def mark_debug(self, tensor):
        if tensor.name in self.refuse:
            return False
        self.marked.append(tensor.name)
        return True


def test_mark_debug_tensors_in_network_order():
    network = _Network([_Layer("node_conv2d", ["conv2d"]), _Layer("node_split", ["a", "b"]),
                        _Layer("node_relu", ["relu"]), _Layer("node_shape", ["shape"])], refuse={"b"})
    assert T.mark_debug_tensors(network, ["relu", "conv2d", "b", "missing"]) == ["conv2d", "relu"]
    assert network.marked == ["conv2d", "relu"]


# -- the adapter's layer_values, with the engine and its execution faked ------------------------
class _FakeCompiled:
    last = None

    def __init__(self, engine, runtime):
        _FakeCompiled.last = self
        self.engine = engine

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    errors: list = []

    def run_debug(self, trt, sample, names):
        self.debug_names = list(names)
        values = {"conv2d": np.ones(2, np.float16), "relu": np.ones(2, np.float32), "junk": np.zeros(1)}
        return ({} if self.errors == ["all"] else values), list(self.errors)

    def run_named(self, sample):
        return {"conv2d": np.ones(2, np.float32), "output": np.zeros(2, np.float32)}


@pytest.fixture
def fake_layers(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(trt_layerwise, "TrtCompiled", _FakeCompiled)
    plain, marked = tmp_path / "layers.onnx", tmp_path / "instrumented.onnx"
    plain.write_bytes(b"plain")
    marked.write_bytes(b"marked")
    model = SimpleNamespace(layer_onnx=lambda: (plain, ["conv2d", "relu"]),
                            instrumented_onnx=lambda: (marked, ["conv2d", "relu"]))
    built = []

    def engine(trt, spec, source, engine_path, debug_names=()):
        built.append((Path(source.onnx_path).name, engine_path.name, list(debug_names)))
        return object(), object(), False

    monkeypatch.setattr(trt_layerwise, "load_engine", engine)
    return model, built


def _deployed(adapter):
    """What the runner sets after compile: the deployed engine (here only what layer_values reads
    of it: its source and folder, and its info, where the layer view is recorded)."""
    adapter.deployed = SimpleNamespace(source=T.TrtSource(Path("model.onnx")), folder=None, info={})
    return adapter


def test_layer_values_by_debug_tensors(monkeypatch, fake_layers):
    model, built = fake_layers
    monkeypatch.setitem(sys.modules, "tensorrt", debug_trt())
    adapter = _deployed(TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp16"))))
    assert "where this TensorRT has them" in adapter.layers_from   # before: what it will try
    values = adapter.layer_values(model, {"x": np.zeros(2)})
    assert built == [("layers.onnx", built[0][1], ["conv2d", "relu"])] and built[0][1].startswith("layers-")
    assert _FakeCompiled.last.debug_names == ["conv2d", "relu"]
    assert sorted(values) == ["conv2d", "relu"] and values["conv2d"].dtype == np.float32
    assert "debug tensor" in adapter.layers_from and "network output" not in adapter.layers_from


def test_debug_tensors_that_could_not_be_read(monkeypatch, fake_layers):
    model, _ = fake_layers
    monkeypatch.setitem(sys.modules, "tensorrt", debug_trt())
    monkeypatch.setattr(_FakeCompiled, "errors", ["add: TypeError: debug tensor type FP8 is not supported"])
    adapter = _deployed(TrtAdapter(TrtAdapter.canonical(parse_spec("trt"))))
    assert sorted(adapter.layer_values(model, {"x": np.zeros(2)})) == ["conv2d", "relu"]
    assert "1 debug tensor(s) could not be read, e.g. add: TypeError" in adapter.layers_from
    monkeypatch.setattr(_FakeCompiled, "errors", ["all"])
    with pytest.raises(RuntimeError, match="debug tensors could not be read: all"):
        _deployed(TrtAdapter(TrtAdapter.canonical(parse_spec("trt")))).layer_values(model, {"x": np.zeros(2)})


def test_layer_values_by_marked_outputs_without_the_debug_api(monkeypatch, fake_layers):
    model, built = fake_layers
    monkeypatch.setitem(sys.modules, "tensorrt", debug_trt(debug=False))
    adapter = _deployed(TrtAdapter(TrtAdapter.canonical(parse_spec("trt"))))
    values = adapter.layer_values(model, {"x": np.zeros(2)})
    assert built[0][0] == "instrumented.onnx" and built[0][2] == []
    assert sorted(values) == ["conv2d"]
    assert "marked as a network output" in adapter.layers_from


def test_layer_engines_differ_by_method(monkeypatch, fake_layers):
    model, built = fake_layers
    monkeypatch.setitem(sys.modules, "tensorrt", debug_trt())
    _deployed(TrtAdapter(TrtAdapter.canonical(parse_spec("trt")))).layer_values(model, {"x": np.zeros(2)})
    _deployed(TrtAdapter(TrtAdapter.canonical(parse_spec("trt:fp32,layers=outputs")))).layer_values(
        model, {"x": np.zeros(2)})
    assert built[0][0] == "layers.onnx" and built[1][0] == "instrumented.onnx" and built[0][1] != built[1][1]


def test_run_debug_wires_the_listener(monkeypatch):
    """TrtCompiled.run_debug: the listener is set, every marked name switched on, the values
    read by the listener returned, and the listener removed after the run."""
    import torch

    trt = debug_trt(TensorIOMode=SimpleNamespace(INPUT="IN", OUTPUT="OUT"))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(trt_debug, "copy_debug_tensor", lambda addr, *a: np.full(2, addr, np.float32))

    class Context:
        listener, states = None, []

        def set_debug_listener(self, listener):
            self.listener = listener

        def set_tensor_debug_state(self, name, flag):
            self.states.append((name, flag))

    context = Context()
    engine = SimpleNamespace(num_io_tensors=0, create_execution_context=lambda: context,
                             is_debug_tensor=lambda name: name != "not_marked")
    compiled = T.TrtCompiled(engine)

    def execute(sample):   # what TensorRT does during execute_async_v3
        context.listener.process_debug_tensor(5, "DEVICE", "FLOAT", (2,), "relu", 0)
        return {}

    monkeypatch.setattr(compiled, "_execute", execute)
    values, errors = compiled.run_debug(trt, {"x": np.zeros(1)}, ["relu", "not_marked"])
    assert values["relu"].tolist() == [5.0, 5.0] and errors == []
    assert context.states == [("relu", True)] and context.listener is None
