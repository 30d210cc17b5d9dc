"""OpenVINO on the CPU plugin.

Route ``export`` (default) converts the ExportedProgram directly with
``ov.convert_model``; ``route=onnx`` reads the dynamo ONNX export. The converted model is
saved as IR and the compiled blob goes to OpenVINO's own ``CACHE_DIR``.

Variants:
- ``fp32``: IR saved uncompressed (``save_model`` compresses weights to f16 by default) and
  ``INFERENCE_PRECISION_HINT=f32``. On CPUs with AVX-512 BF16 or AMX the plugin's default
  is bf16, so without the hint an "fp32" model silently runs in bf16;
  ``precision_hint=default`` measures that out-of-the-box behaviour.
- ``fp16``: weights compressed to f16 in the IR, inference hint f16.
- ``bf16``: inference hint bf16; *unavailable* on a CPU without bf16 support.
- ``int8``: post-training quantization with NNCF (``nncf.quantize``), calibrated on the
  run's calibration data; non-quantized ops in f32.
What ran is read back per executed primitive from the compiled model's runtime model
(``runtimePrecision``), e.g. ``{"int8": 3, "fp32": 2}``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from backendiff.errors import BackendUnavailable

from .base import Adapter, Compiled, as_float32, feeds_in_order, positive_int

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
_PERF = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


class OpenVinoCompiled(Compiled):
    def __init__(self, compiled):
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, sample):
        arrays = [np.asarray(a) for a in sample.values()]
        results = self.request.infer(arrays)
        return [np.array(results[o]) for o in self.compiled.outputs]


def executed_primitives(compiled) -> list[tuple[str, str]]:
    """(layerType, runtimePrecision) of every primitive the CPU plugin executes."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and "runtimePrecision" in info:
            out.append((info["layerType"].astype(str), info["runtimePrecision"].astype(str)))
    return out


class OpenVinoAdapter(Adapter):
    name = "openvino"
    description = "OpenVINO CPU plugin, from the ExportedProgram (route=onnx: from the ONNX export)"
    packages = {"openvino": "openvino"}
    extra = "openvino"
    variants = ("fp32", "fp16", "bf16", "int8")
    #: ``keep=MODULE;MODULE`` (int8, route=onnx): those PyTorch modules stay out of NNCF's
    #: quantization (an ignored scope over the ONNX nodes the exporter attributes to them)
    options = {"route": ("export", "onnx"), "device": None, "precision_hint": ("fp32", "bf16", "fp16", "default"),
               "perf_hint": tuple(_PERF), "threads": positive_int, "keep": None}
    #: what the ``keep`` option needs: module names come from the ONNX export's metadata
    keep_requires = {"route": "onnx"}
    keep_variants = ("int8",)
    defaults = {"route": "export", "device": "CPU"}

    @classmethod
    def canonical(cls, spec):
        from backendiff.errors import BadInput

        canonical = super().canonical(spec)
        if canonical.option("keep") and (canonical.variant != "int8" or canonical.option("route") != "onnx"):
            raise BadInput("openvino's keep= applies to openvino:int8 with route=onnx (modules are named through "
                           "the ONNX export), e.g. openvino:int8,route=onnx,keep=features.0")
        return canonical

    def check_variant(self) -> None:
        if self.variant == "bf16":
            import openvino as ov

            device = self.spec.option("device", "CPU")
            caps = ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in caps:
                raise BackendUnavailable(
                    f"the {device} device has no bf16 support (OPTIMIZATION_CAPABILITIES: {', '.join(caps)}); "
                    "OpenVINO would accept the bf16 hint and run f32", "run on a CPU with AVX-512 BF16 or AMX")
        if self.variant == "int8":
            try:
                import nncf  # noqa: F401
            except ImportError:
                raise BackendUnavailable("nncf is not installed (OpenVINO int8 quantization)",
                                         self.install_hint()) from None

    @property
    def layers_from(self) -> str | None:
        if self.variant == "int8":
            return None  # NNCF's quantized graph is not matched to FX nodes yet
        return ("OpenVINO on the ONNX export without the exporter's optimizer (whatever the route), every FX "
                "node's value marked as an output, same device and precision settings (marking outputs can "
                "change fusion; final outputs are measured on the unmodified model)")

    def deployed_fusion(self):
        """Fusions from the compiled model's runtime model: each executed primitive lists the
        original ops it computes (``originalLayersNames``). From the ExportedProgram route
        those carry FX node names (``relu/aten.relu.default/Relu``)."""
        compiled = getattr(self, "_compiled", None)
        if compiled is None or self.spec.option("route", "export") != "export":
            return None, None
        groups = {}
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "originalLayersNames" not in info:
                continue
            members = [m.split("/")[0] for m in info["originalLayersNames"].astype(str).split(",") if "/" in m]
            for member in members[:-1]:
                groups[member] = members[-1]
        return None, groups

    def run_onnx(self, path, originals, named):
        import openvino as ov

        compiled = ov.Core().compile_model(ov.convert_model(str(path)), self.spec.option("device", "CPU"),
                                           self._config(None))
        inputs = [port.get_any_name() for port in compiled.inputs]
        results = compiled.create_infer_request().infer(feeds_in_order(inputs, originals, named))
        values = {}
        for port in compiled.outputs:
            for name in port.get_names():
                values[name] = np.array(results[port])
        return as_float32(values)

    def layer_values(self, model, sample):
        path, _ = model.instrumented_onnx()
        return self.run_onnx(path, list(sample.values()), {})

    def _config(self, folder: Path | None) -> dict:
        config = {"CACHE_DIR": str(folder / "blobs")} if folder is not None else {}
        hint = self.spec.option("precision_hint") or self.variant
        if hint != "default":
            config["INFERENCE_PRECISION_HINT"] = _HINTS[hint]
        if self.spec.option("perf_hint"):
            config["PERFORMANCE_HINT"] = _PERF[self.spec.option("perf_hint")]
        threads = self.spec.option("threads")
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        return config

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
        if self.variant == "int8":
            import contextlib
            import io
            import logging

            import nncf

            logging.getLogger("nncf").setLevel(logging.ERROR)
            calib = [list(s.values())[0] if len(s) == 1 else tuple(s.values()) for s in model.calibration()]
            scope = self._ignored_scope(model)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                converted = nncf.quantize(converted, nncf.Dataset(calib), subset_size=len(calib),  # progress bars
                                          **({"ignored_scope": scope} if scope is not None else {}))
        tmp = folder / f".tmp-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=self.variant == "fp16")
        os.replace(tmp / "model.bin", folder / "model.bin")
        os.replace(tmp / "model.xml", xml)  # the .xml last: its presence marks a complete entry
        tmp.rmdir()
        return converted if self.variant != "fp16" else ov.Core().read_model(str(xml))

    def _ignored_scope(self, model):
        """NNCF ignored scope for the ``keep`` modules: every OpenVINO op made from their ONNX
        nodes (OpenVINO names them ``NODE`` and ``NODE/...``)."""
        keep = [m for m in (self.spec.option("keep") or "").split(";") if m]
        if not keep:
            return None
        import re

        import nncf
        import onnx

        from backendiff.onnx_graph import nodes_in_modules

        nodes = nodes_in_modules(onnx.load(str(model.onnx_path()), load_external_data=False), keep)
        return nncf.IgnoredScope(patterns=[f"^{re.escape(n)}(/.*)?$" for n in nodes], validate=False)

    def compile(self, converted, folder: Path) -> Compiled:
        import openvino as ov

        from backendiff.precision import openvino_compute_precisions, summarize

        core = ov.Core()
        device = self.spec.option("device", "CPU")
        hint = self.spec.option("precision_hint") or self.variant
        compiled = core.compile_model(converted, device, self._config(folder))
        self._compiled = compiled
        out = OpenVinoCompiled(compiled)
        out.info.update(device=device, precision_hint=hint)
        try:
            out.info["inference_precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # not every device reports it
            pass
        counts = openvino_compute_precisions(executed_primitives(compiled))
        out.info["runtime_precisions"] = counts
        out.info["runtime_precision"] = summarize(counts) or self.variant
        return out
