"""What ``convert`` hands to ``compile``: the dynamo ONNX export TensorRT parses, and what
else decides its engine: the samples' input shapes (fixed shapes for dynamic inputs), the
int8 calibration data and its hash, and the ONNX nodes of each ``keep=`` module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backendiff.contract import ModelView
from backendiff.specs import BackendSpec

from .config import check_keep, keep_modules, variant_of


@dataclass(frozen=True)
class TrtSource:
    #: the ONNX file the engine is built from
    onnx_path: Path
    #: input name -> the first sample's shape (the optimization profile of dynamic inputs)
    sample_shapes: dict[str, tuple[int, ...]] | None = None
    #: int8: the run's calibration samples and the hash that keys the engine and its cache
    calibration: list | None = None
    calibration_sha: str | None = None
    #: keep=: each kept module -> how many ONNX nodes of the export it covers
    kept: dict[str, int] | None = None


def source_of(model: ModelView, spec: BackendSpec) -> TrtSource:
    """The ``TrtSource`` of the model for this spec (BadInput for a keep= module that owns no
    ONNX node)."""
    shapes = {n: tuple(np.shape(a)) for n, a in model.samples[0].items()}
    path = model.onnx_path()
    calibration = calibration_sha = None
    if variant_of(spec) == "int8":
        calibration = model.calibration()
        calibration_sha = model.calibration_info["sha256"]
    keep = keep_modules(spec)
    return TrtSource(Path(path), shapes, calibration, calibration_sha, check_keep(path, keep) if keep else None)


def as_source(converted) -> TrtSource:
    """``compile``'s argument: a ``TrtSource``, or a bare ONNX path (no sample shapes, no
    calibration data)."""
    return converted if isinstance(converted, TrtSource) else TrtSource(Path(converted))
