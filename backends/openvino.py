"""OpenVINO on the CPU plugin.

Route ``export`` (default) converts the ExportedProgram directly with
``ov.convert_model``; ``route=onnx`` reads the dynamo ONNX export. The converted model is
saved as IR (uncompressed: ``save_model`` compresses weights to f16 by default) and the
compiled blob goes to OpenVINO's own ``CACHE_DIR``.

Precision: on CPUs with AVX-512 BF16 or AMX, the CPU plugin's default inference precision
is bf16, so an "fp32" model silently runs in bf16 (errors of 1e-3..1e-2 against PyTorch).
The ``fp32`` variant pins ``INFERENCE_PRECISION_HINT=f32``; ``precision_hint=default``
leaves the runtime's choice, and the report says what the runtime actually used.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Adapter, Compiled

_HINTS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}
_TYPE_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def precision_name(ov_type) -> str:
    text = str(ov_type).lower()
    for key, name in _TYPE_NAMES.items():
        if f"'{key}'" in text or text == key or text.endswith(key):
            return name
    return text


class OpenVinoCompiled(Compiled):
    def __init__(self, compiled):
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, sample):
        arrays = [np.asarray(a) for a in sample.values()]
        results = self.request.infer(arrays)
        return [np.array(results[o]) for o in self.compiled.outputs]


class OpenVinoAdapter(Adapter):
    name = "openvino"
    description = "OpenVINO CPU plugin, from the ExportedProgram (route=onnx: from the ONNX export)"
    packages = {"openvino": "openvino"}
    extra = "openvino"
    options = {"route": ("export", "onnx"), "device": None, "precision_hint": ("fp32", "bf16", "fp16", "default"), "threads": None}
    defaults = {"route": "export", "device": "CPU"}

    def convert(self, model, folder: Path):
        import openvino as ov

        xml = folder / "model.xml"
        if xml.exists() and (folder / "model.bin").exists():
            self.cache_hit = True
            return ov.Core().read_model(str(xml))
        if self.route(model) == "onnx":
            converted = ov.convert_model(str(model.onnx_path()))
        else:
            converted = ov.convert_model(model.exported_program())

        tmp = folder / f".tmp-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp / "model.bin", folder / "model.bin")
        os.replace(tmp / "model.xml", xml)  # the .xml last: its presence marks a complete entry
        tmp.rmdir()
        return converted

    def compile(self, converted, folder: Path) -> Compiled:
        import openvino as ov

        core = ov.Core()
        device = self.spec.option("device", "CPU")
        config = {"CACHE_DIR": str(folder / "blobs")}
        hint = self.spec.option("precision_hint") or self.variant
        if hint != "default":
            config["INFERENCE_PRECISION_HINT"] = _HINTS[hint]
        threads = self.spec.option("threads")
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = core.compile_model(converted, device, config)
        out = OpenVinoCompiled(compiled)
        out.info["device"] = device
        try:
            out.info["runtime_precision"] = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # not every device reports it
            pass
        out.info["precision_hint"] = hint
        return out
