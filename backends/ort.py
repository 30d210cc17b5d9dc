"""ONNX Runtime: the dynamo ONNX export, run on the CPU execution provider."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Adapter, Compiled

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class OrtCompiled(Compiled):
    def __init__(self, session):
        super().__init__()
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.info = {"providers": session.get_providers()}

    def run(self, sample):
        feeds = {n: np.asarray(a) for n, a in zip(self.input_names, sample.values())}
        return list(self.session.run(None, feeds))


class OrtAdapter(Adapter):
    name = "ort"
    description = "ONNX Runtime, CPU execution provider, from the dynamo ONNX export"
    packages = {"onnxruntime": "onnxruntime"}
    extra = "ort"
    options = {"opt": tuple(_LEVELS), "threads": None}
    defaults = {"opt": "all"}

    def route(self, model) -> str:
        return "onnx"

    def convert(self, model, folder: Path):
        path = model.onnx_path()
        self.cache_hit = model.onnx_from_cache
        return path

    def compile(self, onnx_path, folder: Path) -> Compiled:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[self.spec.option("opt", "all")])
        so.log_severity_level = 3
        threads = self.spec.option("threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        compiled = OrtCompiled(session)
        compiled.info["opt"] = self.spec.option("opt", "all")
        return compiled
