"""What a backend adapter may read of the model it converts: ``ModelView``.

``model.ModelHandle`` is the one implementation; adapters' hooks (``backends.base.Adapter``)
take their ``model`` as a ``ModelView``, so that an adapter depends on these members only and
a test can hand it any object that has the ones it uses. Everything else of a run (the key,
the cache, the reference outputs, the task) is the orchestrators' business.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from .loading import LoadedModel


@runtime_checkable
class ModelView(Protocol):
    #: the loaded source (``module``: the eager PyTorch model the ``torch`` backend runs)
    loaded: LoadedModel
    #: the samples compared on, name -> array (input shapes for static-shape runtimes)
    samples: list[dict[str, np.ndarray]]

    @property
    def has_torch(self) -> bool:
        """Whether the model has a PyTorch form (an ``.onnx`` source has none)."""

    @property
    def onnx_from_cache(self) -> bool:
        """Whether ``onnx_path`` came from the cache (the backend's cache hit, for ORT)."""

    @property
    def calibration_info(self) -> dict | None:
        """The calibration data's source, count and sha256 (keys an int8 engine's cache)."""

    def calibration(self) -> list[dict[str, np.ndarray]]:
        """The int8 calibration samples."""

    def example_args(self) -> tuple:
        """The first sample as torch tensors (what an AOT lowering traces)."""

    def exported_program(self) -> Any:
        """The ``torch.export.ExportedProgram`` (raises ``ExportFailed``)."""

    def onnx_path(self) -> Path:
        """The ONNX file: the source itself, or the dynamo export (raises ``ExportFailed``)."""

    def program(self, kind: str = "onnx", decompose: Callable[[Any], Any] | None = None) -> Any:
        """The FX program of ``kind`` that keys the layer values (``onnx``, ``core_aten``, or
        the adapter's own kind made by ``decompose``)."""

    def output_layer_names(self, kind: str = "onnx") -> list[str]:
        """The layers of the ``kind`` program that are the model's outputs, in order."""

    def reference_layers(self, kind: str = "onnx") -> tuple[list, dict[str, np.ndarray]]:
        """(layers, reference values) of the ``kind`` program on the first sample."""

    def layer_onnx(self) -> tuple[Path, list[str]]:
        """The unoptimized ONNX export of the ``onnx`` program and its FX node values."""

    def instrumented_onnx(self) -> tuple[Path, list[str]]:
        """``layer_onnx`` with every FX node's value marked as an output, and those values."""

    def isolated_onnx(self) -> tuple[Path, dict[str, str], int]:
        """``layer_onnx`` with every layer cut loose: (path, input -> FX value, uncut edges)."""
