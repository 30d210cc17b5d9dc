"""Apache TVM Relax, compiled for the CPU (target ``llvm``).

Route ``export`` (default) imports the ExportedProgram with
``relax.frontend.torch.from_exported_program``; ``route=onnx`` imports the dynamo ONNX
export with ``relax.frontend.onnx.from_onnx``. The compiled library is cached as a shared
object (``export_library``) and reloaded with ``tvm.runtime.load_module``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Adapter, Compiled


def flatten(value) -> list[np.ndarray]:
    """TVM VM results (a tensor or nested arrays of them) as a flat list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out = []
    for item in value:
        out.extend(flatten(item))
    return out


class TvmCompiled(Compiled):
    def __init__(self, lib):
        import tvm
        from tvm import relax

        super().__init__()
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(lib, self.device)
        self._tensor = tvm.runtime.tensor

    def run(self, sample):
        args = [self._tensor(np.array(a), self.device) for a in sample.values()]
        return flatten(self.vm["main"](*args))


class TvmAdapter(Adapter):
    name = "tvm"
    description = "Apache TVM Relax, target llvm, from the ExportedProgram (route=onnx: from the ONNX export)"
    packages = {"tvm": "apache-tvm"}
    extra = "tvm"
    options = {"route": ("export", "onnx"), "target": None}
    defaults = {"route": "export", "target": "llvm"}

    def convert(self, model, folder: Path):
        lib = folder / "model.so"
        if lib.exists():
            self.cache_hit = True
            return lib
        if self.route(model) == "onnx":
            import onnx
            from tvm.relax.frontend.onnx import from_onnx

            shapes = {n: list(a.shape) for n, a in model.samples[0].items()}
            dtypes = {n: a.dtype.name for n, a in model.samples[0].items()}
            return from_onnx(onnx.load(str(model.onnx_path())), shape_dict=shapes, dtype_dict=dtypes,
                             keep_params_in_input=False)
        from tvm.relax.frontend.torch import from_exported_program

        return from_exported_program(model.exported_program(), keep_params_as_input=False)

    def compile(self, converted, folder: Path) -> Compiled:
        import tvm

        target = self.spec.option("target", "llvm")
        if isinstance(converted, Path):
            lib = tvm.runtime.load_module(str(converted))
        else:
            lib = tvm.compile(converted, target=tvm.target.Target(target))
            tmp = folder / f".model-{os.getpid()}.so"  # export_library picks the format by suffix
            lib.export_library(str(tmp))
            os.replace(tmp, folder / "model.so")
        out = TvmCompiled(lib)
        out.info["target"] = target
        return out
