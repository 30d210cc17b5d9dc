"""TensorRT int8: calibration batches, the IInt8EntropyCalibrator2 subclass (over a fake
``tensorrt``), its cache file, and the int8 build configuration."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from backendiff.backends import trt as T
from backendiff.backends.trt import TrtAdapter
from backendiff.backends.trt import calibrator as trt_calibrator
from backendiff.specs import parse_spec

from .test_trt import _FakeConfig


def rows(n, start=0, shape=(3, 4, 4)):
    return [{"x": np.full((1, *shape), start + i, np.float64)} for i in range(n)]


# -- batches ------------------------------------------------------------------------------
def test_samples_of_the_network_shape_are_one_batch_each():
    samples = [{"x": np.full((8, 1, 8, 8), i, np.float64)} for i in range(3)]
    batches, left = T.calibration_batches(samples, [("x", (8, 1, 8, 8), np.float32)])
    assert left == 0 and len(batches) == 3
    assert all(b["x"].dtype == np.float32 and b["x"].shape == (8, 1, 8, 8) for b in batches)
    assert [float(b["x"][0, 0, 0, 0]) for b in batches] == [0.0, 1.0, 2.0]
    assert all(b["x"].flags["C_CONTIGUOUS"] for b in batches)


def test_single_row_samples_are_stacked_into_the_network_batch():
    batches, left = T.calibration_batches(rows(10), [("x", (4, 3, 4, 4), np.float32)])
    assert len(batches) == 2 and left == 2            # 10 rows: two batches of 4, 2 rows fill no batch
    assert [float(v) for v in batches[1]["x"][:, 0, 0, 0]] == [4.0, 5.0, 6.0, 7.0]   # in order, none repeated


def test_large_samples_are_cut_into_network_batches():
    samples = [{"x": np.arange(6 * 2, dtype=np.float32).reshape(6, 2)}]
    batches, left = T.calibration_batches(samples, [("x", (2, 2), np.float32)])
    assert len(batches) == 3 and left == 0
    np.testing.assert_array_equal(batches[2]["x"], [[8, 9], [10, 11]])


def test_batches_match_inputs_by_name_then_position():
    samples = [{"b": np.ones((1, 2)), "a": np.zeros((1, 3))}]
    batches, _ = T.calibration_batches(samples, [("a", (1, 3), np.float32), ("b", (1, 2), np.float32)])
    assert batches[0]["a"].shape == (1, 3) and batches[0]["b"].shape == (1, 2)
    positional = T.calibration_batches([{"img": np.ones((1, 2))}], [("input_0", (1, 2), np.float16)])[0]
    assert positional[0]["input_0"].dtype == np.float16


@pytest.mark.parametrize("samples,inputs,message", [
    ([], [("x", (1, 2), np.float32)], "needs calibration data"),
    (rows(3), [("x", (8, 3, 4, 4), np.float32)], "cannot fill one batch of 8"),
    (rows(2, shape=(3, 5, 5)), [("x", (1, 3, 4, 4), np.float32)], "the network takes"),
    ([{"x": np.ones((1, 2))}, {"x": np.ones((2, 2))}], [("x", (1, 2), np.float32)], "sample 1"),
])
def test_bad_calibration_data_is_a_clear_error(samples, inputs, message):
    with pytest.raises(RuntimeError, match=message):
        T.calibration_batches(samples, inputs)


# -- the calibrator class over a fake tensorrt ---------------------------------------------
class _FakeBase:
    inits = 0

    def __init__(self):
        _FakeBase.inits += 1


FAKE_TRT = SimpleNamespace(IInt8EntropyCalibrator2=_FakeBase)


class _Buffer:
    counter = 1000

    def __init__(self, array):
        _Buffer.counter += 1
        self.ptr, self.array = _Buffer.counter, array

    def data_ptr(self):
        return self.ptr


def test_calibrator_serves_every_batch_once_as_device_pointers(tmp_path):
    cls = T.calibrator_class(FAKE_TRT)
    assert issubclass(cls, _FakeBase)
    batches = [{"x": np.full((2, 2), i, np.float32), "m": np.ones(2, np.float32)} for i in range(3)]
    calibrator = cls(batches, tmp_path / "calib.cache", to_device=_Buffer)
    assert calibrator.get_batch_size() == 1   # explicit batch: the shapes carry it
    served = []
    for _ in range(10):
        ptrs = calibrator.get_batch(["m", "x"])
        if ptrs is None:
            break
        assert len(ptrs) == 2 and all(isinstance(p, int) for p in ptrs)
        served.append([float(b.array.flat[0]) for b in calibrator._held])   # in the order TensorRT names them
    assert served == [[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]]
    assert calibrator.get_batch(["m", "x"]) is None and calibrator.error is None


def test_calibrator_keeps_an_error_and_ends_the_data(tmp_path):
    calibrator = T.calibrator_class(FAKE_TRT)([{"x": np.ones(1)}], tmp_path / "c.cache", to_device=_Buffer)
    assert calibrator.get_batch(["images"]) is None
    assert "images" in calibrator.error and "KeyError" in calibrator.error

    def broken(_):
        raise RuntimeError("CUDA out of memory")

    other = T.calibrator_class(FAKE_TRT)([{"x": np.ones(1)}], tmp_path / "c.cache", to_device=broken)
    assert other.get_batch(["x"]) is None and "CUDA out of memory" in other.error


def test_calibration_cache_file_round_trip(tmp_path):
    cache = tmp_path / "calib.cache"
    calibrator = T.calibrator_class(FAKE_TRT)([], cache, to_device=_Buffer)
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(memoryview(b"TRT-1003-EntropyCalibration2\nx: 3c010a14\n"))
    assert cache.read_bytes().startswith(b"TRT-1003-EntropyCalibration2")
    assert T.calibrator_class(FAKE_TRT)([], cache, to_device=_Buffer).read_calibration_cache() == cache.read_bytes()
    cache.write_bytes(b"")
    assert calibrator.read_calibration_cache() is None   # an empty file is no cache


def test_calibration_cache_name_depends_on_network_data_version_and_gpu():
    base = T.calibration_cache_file("onnx", "calib", "10.3.0", "GPU")
    assert base.startswith("calib-") and base.endswith(".cache")
    assert base == T.calibration_cache_file("onnx", "calib", "10.3.0", "GPU")
    others = [T.calibration_cache_file("onnx2", "calib", "10.3.0", "GPU"),
              T.calibration_cache_file("onnx", "calib2", "10.3.0", "GPU"),
              T.calibration_cache_file("onnx", "calib", "10.4.0", "GPU"),
              T.calibration_cache_file("onnx", "calib", "10.3.0", "GPU2")]
    assert len({base, *others}) == 5


# -- int8 build with a fake builder ----------------------------------------------------------
class _Config(_FakeConfig):
    """test_trt's fake builder config, plus what an int8 build with a profile calls."""

    def add_optimization_profile(self, profile):
        self.calls.append(("profile", profile))

    def set_calibration_profile(self, profile):
        self.calls.append(("calibration_profile", profile))


def _int8_trt(inputs, seen):
    class Builder:
        def __init__(self, logger):
            self.config = _Config()
            seen["config"] = self.config

        def create_network(self, flags):
            seen["flags"] = flags
            return SimpleNamespace(num_inputs=len(inputs), get_input=lambda i: inputs[i])

        def create_builder_config(self):
            return self.config

        def create_optimization_profile(self):
            return SimpleNamespace(set_shape=lambda *a: seen.setdefault("shapes", []).append(a))

        def build_serialized_network(self, network, config):
            calibrator = config.int8_calibrator   # what TensorRT does: pull batches until None
            seen["served"] = []
            for _ in range(100):
                ptrs = calibrator.get_batch([t.name for t in inputs])
                if ptrs is None:
                    return b"plan"
                seen["served"].append(ptrs)
            raise AssertionError("the calibrator never ran out of batches")

    parser = SimpleNamespace(parse_from_file=lambda path: True)
    return SimpleNamespace(Builder=Builder, OnnxParser=lambda network, logger: parser,
                           IInt8EntropyCalibrator2=_FakeBase, __version__="10.3.0",
                           BuilderFlag=SimpleNamespace(INT8="INT8", TF32="TF32"),
                           MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
                           ProfilingVerbosity=SimpleNamespace(DETAILED="DETAILED"))


def test_int8_build_sets_the_flag_the_calibrator_and_its_cache(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    monkeypatch.setattr(trt_calibrator, "_cuda_tensor", _Buffer)   # no GPU: host buffers stand in for device ones
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    seen = {}
    trt = _int8_trt([SimpleNamespace(name="x", shape=(2, 3, 4, 4), dtype="DataType.FLOAT")], seen)
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:int8")))
    handle = SimpleNamespace(onnx_path=lambda: onnx, samples=[{"x": np.zeros((1, 3, 4, 4), np.float32)}],
                             calibration=lambda: rows(5), calibration_info={"sha256": "abc"})
    source = adapter.convert(handle, tmp_path)
    assert source.onnx_path == onnx
    assert source.calibration_sha == "abc" and len(source.calibration) == 5
    assert T.build_plan(trt, SimpleNamespace(errors=[]), adapter.spec, source, folder=tmp_path) == b"plan"
    calls = seen["config"].calls
    assert ("set", "INT8") in calls and ("clear", "TF32") in calls
    assert ("attr", "profiling_verbosity", "DETAILED") in calls
    assert seen["flags"] == 0
    assert len(seen["served"]) == 2                      # 5 single rows -> 2 batches of the network's 2
    calibrator = seen["config"].int8_calibrator
    assert [b["x"].shape for b in calibrator.batches] == [(2, 3, 4, 4)] * 2
    assert calibrator.cache_path == tmp_path / T.calibration_cache_file(T.file_sha256(onnx), "abc", "10.3.0",
                                                                        "Fake GPU")


def test_int8_build_with_a_dynamic_batch_calibrates_on_the_profile(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    monkeypatch.setattr(trt_calibrator, "_cuda_tensor", _Buffer)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    seen = {}
    trt = _int8_trt([SimpleNamespace(name="x", shape=(-1, 3, 4, 4), dtype="FLOAT")], seen)
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:int8")))
    source = T.TrtSource(onnx, sample_shapes={"x": (1, 3, 4, 4)}, calibration=rows(3), calibration_sha="abc")
    T.build_plan(trt, SimpleNamespace(errors=[]), adapter.spec, source, folder=tmp_path)
    kinds = [c[0] for c in seen["config"].calls]
    assert "profile" in kinds and "calibration_profile" in kinds and len(seen["served"]) == 3
    assert seen["shapes"] == [("x", (1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 4, 4))]


def test_int8_build_reports_a_calibration_failure(monkeypatch, tmp_path):
    import torch

    def broken(_):
        raise ZeroDivisionError("no device")

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    monkeypatch.setattr(trt_calibrator, "_cuda_tensor", broken)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    trt = _int8_trt([SimpleNamespace(name="x", shape=(1, 3, 4, 4), dtype="FLOAT")], {})
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:int8")))
    source = T.TrtSource(onnx, calibration=rows(2), calibration_sha="abc")
    with pytest.raises(RuntimeError, match="int8 calibration failed: ZeroDivisionError: no device"):
        T.build_plan(trt, SimpleNamespace(errors=[]), adapter.spec, source, folder=tmp_path)


def test_int8_without_calibration_data_is_a_clear_error(monkeypatch, tmp_path):
    seen = {}
    trt = _int8_trt([SimpleNamespace(name="x", shape=(1, 2), dtype="FLOAT")], seen)
    adapter = TrtAdapter(TrtAdapter.canonical(parse_spec("trt:int8")))
    with pytest.raises(RuntimeError, match="needs calibration data"):
        T.build_plan(trt, SimpleNamespace(errors=[]), adapter.spec, T.TrtSource(Path(tmp_path / "m.onnx")),
                     folder=tmp_path)
