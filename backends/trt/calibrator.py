"""TensorRT int8 (implicit quantization) calibration: the run's calibration data cut into
batches of the network's input shapes, an ``IInt8EntropyCalibrator2`` that hands them to
TensorRT as device pointers, and its calibration cache file beside the engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from backendiff.cache import content_key, write_atomic
from backendiff.loading import sha256_file as file_sha256

from .probe import current_device
from .tensors import match_inputs, numpy_dtype


def calibration_batches(samples: list[Mapping[str, np.ndarray]],
                        inputs: list[tuple[str, tuple[int, ...], Any]]) -> tuple[list[dict[str, np.ndarray]], int]:
    """The calibration data as batches of exactly the network's input shapes: ``inputs`` holds
    (name, shape, numpy dtype) per network input, dynamic dimensions already fixed by the
    optimization profile. A sample of the network's shape is one batch; samples whose
    leading (batch) dimension differs are concatenated and cut into batches of the network's
    batch size. Returns (batches, samples' rows left over that fill no whole batch)."""
    names = [n for n, _, _ in inputs]
    matched = [match_inputs(names, s) for s in samples]
    if not matched:
        raise RuntimeError("int8 calibration needs calibration data; none was given")
    for i, m in enumerate(matched):
        for name, _shape, _ in inputs:
            first, this = tuple(np.shape(matched[0][name])), tuple(np.shape(m[name]))
            if this != first:
                raise RuntimeError(f"calibration sample {i} input {name!r} has shape {this}, sample 0 {first}")
    exact = all(tuple(np.shape(matched[0][n])) == tuple(shape) for n, shape, _ in inputs)
    if exact:
        return [{n: np.ascontiguousarray(np.asarray(m[n], dtype=dt)) for n, _, dt in inputs} for m in matched], 0
    rows = None
    for name, shape, _ in inputs:
        have = tuple(np.shape(matched[0][name]))
        if not shape or not have or have[1:] != tuple(shape[1:]) or shape[0] < 1:
            raise RuntimeError(f"calibration input {name!r} has shape {have}; the network takes {tuple(shape)}")
        count = have[0] * len(matched)
        if rows is not None and count != rows:
            raise RuntimeError("calibration inputs disagree on the number of rows along the batch axis")
        rows = count
    stacked = {n: np.concatenate([np.asarray(m[n], dtype=dt) for m in matched], axis=0) for n, _, dt in inputs}
    size = inputs[0][1][0]
    whole = rows // size
    if whole == 0:
        raise RuntimeError(f"{rows} calibration row(s) cannot fill one batch of {size} (the network's batch size)")
    batches = [{n: np.ascontiguousarray(stacked[n][k * size:(k + 1) * size]) for n in stacked} for k in range(whole)]
    return batches, rows - whole * size


def _cuda_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).cuda()


def calibrator_class(trt: Any) -> type:
    """An ``IInt8EntropyCalibrator2`` subclass over this ``trt`` module (a fake in the tests):
    ``cls(batches, cache_path, to_device=...)`` hands TensorRT one batch (a dict of arrays of
    exactly the network's input shapes) per ``get_batch`` call as device pointers, reuses
    the calibration cache file when it exists and writes it when TensorRT produces one. An
    exception inside a callback is kept in ``error`` (TensorRT swallows it) and ends the data."""
    base = trt.IInt8EntropyCalibrator2

    class EntropyCalibrator(base):
        def __init__(self, batches: list[dict[str, np.ndarray]], cache_path: Path | str,
                     to_device: Callable[[np.ndarray], Any] | None = None):
            base.__init__(self)
            self.batches = batches
            self.cache_path = Path(cache_path)
            self.to_device = to_device or _cuda_tensor  # a CUDA tensor (anything with data_ptr())
            self.served = 0
            self.error: str | None = None
            self._held: list = []  # device buffers must live until the next get_batch

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the batch size is part of the input shapes

        def get_batch(self, names, *args):
            if self.error is not None or self.served >= len(self.batches):
                self._held = []
                return None
            try:
                batch = self.batches[self.served]
                missing = [n for n in names if n not in batch]
                if missing:
                    raise KeyError(f"TensorRT asked for input(s) {', '.join(missing)}; "
                                   f"the calibration batch has {', '.join(batch)}")
                self._held = [self.to_device(batch[n]) for n in names]
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                self._held = []
                return None
            self.served += 1
            return [int(t.data_ptr()) for t in self._held]

        def read_calibration_cache(self):
            if self.cache_path.exists() and self.cache_path.stat().st_size > 0:
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            data = bytes(memoryview(cache))
            write_atomic(self.cache_path, lambda tmp: tmp.write_bytes(data))

    return EntropyCalibrator


def calibration_cache_file(onnx_sha256: str, calibration_sha256: str | None, trt_version: str, device: str) -> str:
    """A calibration cache belongs to one network, one calibration set and one TensorRT."""
    return f"calib-{content_key('trt-calib', onnx_sha256, calibration_sha256, trt_version, device)[:24]}.cache"


def make_calibrator(trt: Any, inputs: list, shapes: dict, onnx_path: Path, folder: Path,
                    calibration: list | None, calibration_sha: str | None):
    """The calibrator for one build: ``inputs`` are the parsed network's input tensors,
    ``shapes`` the optimization profile's fixed shapes, ``calibration`` the run's data
    (``calibration_sha`` its hash), the cache file in ``folder``."""
    if not calibration:
        raise RuntimeError("int8 calibration needs calibration data; the run gave none")
    described = [(t.name, tuple(shapes.get(t.name, tuple(t.shape))), numpy_dtype(t.dtype)) for t in inputs]
    batches, _ = calibration_batches(calibration, described)
    device, _ = current_device()
    cache = Path(folder) / calibration_cache_file(file_sha256(onnx_path), calibration_sha, trt.__version__, device)
    return calibrator_class(trt)(batches, cache)
