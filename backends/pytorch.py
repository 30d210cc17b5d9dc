"""PyTorch itself as a backend: eager mode on the CPU.

Not part of the default set (it *is* the reference in fp32); useful as a baseline for
lower-precision variants and as the base of test adapters.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Adapter, Compiled


class TorchCompiled(Compiled):
    def __init__(self, module, input_names):
        super().__init__()
        self.module = module
        self.input_names = input_names

    def run(self, sample):
        import torch

        from backendiff.model import flatten_outputs

        args = tuple(torch.from_numpy(np.array(a)) for a in sample.values())
        with torch.no_grad():
            return flatten_outputs(self.module(*args))[1]


class TorchAdapter(Adapter):
    name = "torch"
    description = "PyTorch eager on the CPU (the reference's own runtime)"
    packages = {"torch": "torch"}
    default = False

    def route(self, model) -> str:
        return "eager"

    def convert(self, model, folder: Path):
        if not model.has_torch:
            raise ValueError("the torch backend needs a PyTorch model, not an ONNX file")
        return model.loaded.module

    def compile(self, module, folder: Path) -> Compiled:
        return TorchCompiled(module, None)
