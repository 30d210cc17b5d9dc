"""One model ready to compare, as the parts it is made of:

- ``artifacts`` (``artifacts.Artifacts``): the ExportedProgram, the ONNX export and its
  layer-view variants, the decomposed programs, the content key and cache they live under;
- ``reference`` (``reference.Reference``): the eager fp32 outputs and their names, the fp64
  golden run, the task's reference outputs, every layer's reference value;
- the int8 calibration data (``calibration.Calibration``), read through ``calibration()``;
- ``task``: the end task's labelled data, or None.

The parts share ``timings`` (seconds per step, the report's). Adapters read the handle through
``contract.ModelView``: the members below the parts delegate to them; the orchestrators
(``compare``, ``runner``, ``localize``) read the parts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .artifacts import Artifacts
from .cache import Cache
from .calibration import Calibration
from .loading import LoadedModel
from .reference import Reference
from .tasks import TaskData


class ModelHandle:
    def __init__(self, loaded: LoadedModel, samples: list[dict[str, np.ndarray]], cache: Cache, *,
                 export_mode: str = "non-strict", onnx_reference: str = "auto", task: TaskData | None = None,
                 calibration_source: Callable[[], tuple[list[dict[str, np.ndarray]], dict]] | None = None):
        """``calibration_source() -> (samples, info)`` is called once, when an int8 variant
        first asks for calibration data."""
        self.loaded = loaded
        self.samples = samples
        self.task = task
        self.timings: dict[str, float] = {}
        self.artifacts = Artifacts(loaded, samples[0], cache, export_mode, self.timings)
        self.reference = Reference(self.artifacts, samples, onnx_reference, task)
        self._calibration = Calibration(calibration_source)

    # -- contract.ModelView: what adapters read -----------------------------------------
    @property
    def has_torch(self) -> bool:
        return self.artifacts.has_torch

    @property
    def onnx_from_cache(self) -> bool:
        return self.artifacts.onnx_from_cache

    @property
    def calibration_info(self) -> dict | None:
        return self._calibration.info

    def calibration(self) -> list[dict[str, np.ndarray]]:
        return self._calibration.samples()

    def example_args(self) -> tuple:
        return self.artifacts.example_args()

    def exported_program(self):
        return self.artifacts.exported_program()

    def onnx_path(self) -> Path:
        return self.artifacts.onnx_path()

    def program(self, kind: str = "onnx", decompose=None):
        return self.artifacts.program(kind, decompose)

    def output_layer_names(self, kind: str = "onnx") -> list[str]:
        return self.artifacts.output_layer_names(kind)

    def reference_layers(self, kind: str = "onnx"):
        return self.reference.layers(kind)

    def layer_onnx(self) -> tuple[Path, list[str]]:
        return self.artifacts.layer_onnx()

    def instrumented_onnx(self) -> tuple[Path, list[str]]:
        return self.artifacts.instrumented_onnx()

    def isolated_onnx(self) -> tuple[Path, dict[str, str], int]:
        return self.artifacts.isolated_onnx()
