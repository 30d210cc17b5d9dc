"""PyTorch itself as a backend: eager mode on the CPU.

Not part of the default set (``torch`` fp32 *is* the reference). ``torch:fp16`` and
``torch:bf16`` run PyTorch at lower precision, which separates "precision loss" from
"backend difference": if ``ort:fp16`` is as far from the reference as ``torch:fp16``, the
loss is fp16's, not ONNX Runtime's. ``mode=cast`` (default) casts the whole model and its
float inputs; ``mode=autocast`` keeps fp32 weights and lets ``torch.autocast`` choose per op.
``device=cuda`` runs eager PyTorch on the first CUDA device with TF32 off (IEEE fp32 matmuls
and convolutions): the GPU baseline other GPU backends (``inductor:*,device=cuda``, ``trt``)
are set against; *unavailable* with the reason on a machine or PyTorch build without CUDA.
Its layer view is the CPU one's (not offered on CUDA).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from backendiff.contract import ModelView
from backendiff.errors import BackendUnavailable

from .base import Adapter, Compiled

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchCompiled(Compiled):
    def __init__(self, module, dtype=None, autocast: bool = False, device: str = "cpu"):
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.autocast = autocast
        self.device = device

    def run(self, sample):
        import contextlib

        import torch

        from backendiff.reference import flatten_outputs

        from .inductor import fp32_mode

        args = [torch.from_numpy(np.array(a)).to(self.device) for a in sample.values()]
        if self.dtype is not None and not self.autocast:
            args = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        ctx = torch.autocast(self.device, dtype=self.dtype) if self.autocast else contextlib.nullcontext()
        with torch.no_grad(), ctx, fp32_mode(self.device, tf32=False):
            out = self.module(*args)
        return flatten_outputs(out, as_float32=True)[1]


class TorchAdapter(Adapter):
    name = "torch"
    description = "PyTorch eager on the CPU (the reference's own runtime); fp16/bf16 as precision baselines"
    packages = {"torch": "torch"}
    variants = ("fp32", "fp16", "bf16")
    options = {"mode": ("cast", "autocast"), "device": ("cpu", "cuda")}
    defaults = {"mode": "cast"}                  # device: cpu unless given (the spec stays as written)
    default = False

    layers_from = "torch.fx.Interpreter over the ExportedProgram at the variant's precision (no fusion to disturb)"

    @classmethod
    def needs_gpu(cls, spec) -> bool:
        return spec.option("device") == "cuda"

    @property
    def device(self) -> str:
        return self.spec.option("device") or "cpu"

    def check_variant(self) -> None:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            built = "is built without CUDA" if torch.version.cuda is None else "sees no CUDA device"
            raise BackendUnavailable(f"torch:{self.variant},device=cuda needs an NVIDIA GPU: torch {torch.__version__} "
                                     f"{built}", "run on a machine with an NVIDIA GPU and a CUDA build of PyTorch")

    @classmethod
    def low_precision_variants(cls) -> tuple[str, ...]:
        return ("fp16",)    # the baseline SysNoise compares; bf16 on a CPU without it is emulated

    @classmethod
    def threads(cls, spec) -> int:
        import torch

        return torch.get_num_threads()

    def route(self, model: ModelView) -> str:
        return "eager"

    def _layer_module(self, model: ModelView, sample):
        """The layer program's graph module and arguments at this variant's precision, and
        the autocast context to run them in."""
        import contextlib

        import torch

        graph_module = model.program("onnx").module()
        args = [torch.from_numpy(np.array(a)) for a in sample.values()]
        ctx = contextlib.nullcontext()
        if self.variant != "fp32":
            dtype = getattr(torch, _DTYPES[self.variant])
            if self.spec.option("mode") == "autocast":
                ctx = torch.autocast("cpu", dtype=dtype)
            else:
                graph_module = copy.deepcopy(graph_module).to(dtype)
                args = [a.to(dtype) if a.is_floating_point() else a for a in args]
        return graph_module, args, ctx

    def isolated_values(self, model: ModelView, sample, reference):
        from backendiff.layers import record_isolated

        if self.device != "cpu":
            return None

        graph_module, args, ctx = self._layer_module(model, sample)
        with ctx:
            return record_isolated(graph_module, args, reference)

    def layer_values(self, model: ModelView, sample):
        from backendiff.layers import record_nodes

        if self.device != "cpu":
            return None

        graph_module, args, ctx = self._layer_module(model, sample)
        with ctx:
            return record_nodes(graph_module, args)

    def convert(self, model: ModelView, folder: Path):
        if not model.has_torch:
            raise ValueError("the torch backend needs a PyTorch model, not an ONNX file")
        return model.loaded.module

    def compile(self, module, folder: Path) -> Compiled:
        import torch

        if self.device != "cpu":                 # a copy: the reference's module stays on the CPU
            module = copy.deepcopy(module).to(self.device)
        if self.variant == "fp32":
            return TorchCompiled(module, device=self.device)
        dtype = getattr(torch, _DTYPES[self.variant])
        autocast = self.spec.option("mode") == "autocast"
        compiled = TorchCompiled(module if autocast else copy.deepcopy(module).to(dtype), dtype, autocast, self.device)
        compiled.info["mode"] = self.spec.option("mode", "cast")
        if not autocast:
            compiled.info["runtime_precision"] = self.variant
        return compiled
