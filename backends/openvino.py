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


def openvino_decomposition(ep):
    """The ExportedProgram decomposed as ``ov.convert_model`` decomposes it (the table of
    OpenVINO's PyTorch frontend: the default table less the ops its converter keeps), so that
    FX node names are the names of the converted model's tensors."""
    from torch.export.decomp_utils import CustomDecompTable

    from openvino.frontend.pytorch.torchdynamo.export_decompositions import ops_to_not_decompose

    table = CustomDecompTable()
    for op in ops_to_not_decompose():
        try:
            table.pop(op)
        except KeyError:
            pass
    return ep.run_decompositions(table)


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

        from backendiff.onnx_graph import parse_keep

        canonical = super().canonical(spec)
        if canonical.option("keep") is not None and not parse_keep(canonical.option("keep")):
            raise BadInput("openvino's keep= needs module paths separated by ';', e.g. keep=features.0;classifier")
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
        if self.spec.option("route") == "onnx":
            return ("OpenVINO on the ONNX export without the exporter's optimizer (the onnx route), every FX "
                    "node's value marked as an output, same device and precision settings (marking outputs can "
                    "change fusion; final outputs are measured on the unmodified model)")
        return ("OpenVINO's model converted from the ExportedProgram (the deployed export route: ov.convert_model "
                "and its own decomposition), every node's value added as an output (add_outputs), same device "
                "and precision settings (added outputs can change fusion; final outputs are measured on the "
                "unmodified model)")

    def layers_program(self, model) -> str:
        if self.route(model) == "onnx":
            return "onnx"
        model.program("openvino", decompose=openvino_decomposition)
        return "openvino"

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
                if member != members[-1]:      # an op split in several primitives is not a fusion
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
        if self.route(model) == "onnx":
            path, _ = model.instrumented_onnx()
            return self.run_onnx(path, list(sample.values()), {})
        return self.run_export_layers(model, sample)

    def _compile_converted(self, converted, folder: str):
        """A converted model saved and compiled as the deployed one is (fp16: weights
        compressed in the IR; the variant's inference hints)."""
        import openvino as ov

        ov.save_model(converted, f"{folder}/model.xml", compress_to_fp16=self.variant == "fp16")
        return ov.Core().compile_model(ov.Core().read_model(f"{folder}/model.xml"),
                                       self.spec.option("device", "CPU"), self._config(None))

    def bisect(self, model, sample, out_of_tolerance):
        if self.route(model) == "onnx" or self.variant == "int8":
            return super().bisect(model, sample, out_of_tolerance)
        import tempfile

        import openvino as ov

        from backendiff.bisect import bisect_program

        layers, reference = model.reference_layers("openvino")

        def run_prefix(prefix):
            with tempfile.TemporaryDirectory(prefix="backendiff-ov-bisect-") as tmp:
                compiled = self._compile_converted(ov.convert_model(prefix), tmp)
                result = compiled.create_infer_request().infer([np.asarray(a) for a in sample.values()])
                return as_float32({"v": np.array(result[compiled.outputs[0]])})["v"]

        found = bisect_program(run_prefix, model.program("openvino", decompose=openvino_decomposition),
                               [layer.node for layer in layers], reference, out_of_tolerance)
        return found | {"graph": ("prefixes of the ExportedProgram as OpenVINO decomposes it (the deployed export "
                                  "route), each converted and compiled unmodified with one output"),
                        "program": "openvino"}

    def run_export_layers(self, model, sample):
        """The deployed route with every node's value as an output: the model converted from
        the ExportedProgram as deployed (its tensors are named ``<FX node>:0`` after
        OpenVINO's own decomposition), each such tensor added with ``add_outputs``, saved and
        compiled with the variant's settings. Returns node name -> value (float32)."""
        import tempfile

        import openvino as ov

        layers, _ = model.reference_layers("openvino")
        wanted = {f"{layer.node}:0": layer.node for layer in layers}
        converted = ov.convert_model(model.exported_program())
        ports, seen = [], set()
        for op in converted.get_ordered_ops():
            if op.get_type_name() in ("Result", "Constant", "Parameter"):
                continue
            for port in op.outputs():
                hit = next((wanted[n] for n in port.get_names() if n in wanted), None)
                if hit is not None and hit not in seen:
                    seen.add(hit)
                    ports.append(port)
        converted.add_outputs(ports)
        with tempfile.TemporaryDirectory(prefix="backendiff-ov-layers-") as tmp:
            compiled = self._compile_converted(converted, tmp)
            results = compiled.create_infer_request().infer([np.asarray(a) for a in sample.values()])
            values = {}
            for port in compiled.outputs:
                for name in port.get_names():
                    if name in wanted:
                        values[wanted[name]] = np.array(results[port])
            own = model.output_layer_names("openvino")
            for name, port in zip(own, compiled.outputs[:len(own)]):
                values.setdefault(name, np.array(results[port]))
        return as_float32(values)

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
        if self.variant == "int8":
            self._ignored_scope(model)  # keep= checked (and its nodes counted) before the cache or NNCF
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
            scope = self._ignored_scope(model, converted)
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

    def _ignored_scope(self, model, converted=None):
        """NNCF ignored scope for the ``keep`` modules: every OpenVINO op made from their ONNX
        nodes (OpenVINO names them ``NODE`` and ``NODE/...``). A module that owns no node of the
        export is a BadInput naming the candidates; given the converted model, a module none of
        whose nodes became an OpenVINO op is an error (NNCF would keep nothing of it).
        ``self.kept``: ONNX nodes per kept module."""
        from backendiff.onnx_graph import check_keep, nodes_in_modules, parse_keep

        keep = parse_keep(self.spec.option("keep"))
        self.kept = None
        if not keep:
            return None
        import re

        import nncf
        import onnx

        export = onnx.load(str(model.onnx_path()), load_external_data=False)
        self.kept = check_keep(export, keep)
        patterns = {m: [f"^{re.escape(n)}(/.*)?$" for n in nodes_in_modules(export, [m])] for m in keep}
        if converted is not None:
            names = [op.get_friendly_name() for op in converted.get_ops()]
            lost = [m for m, ps in patterns.items()
                    if not any(re.match("|".join(ps), name) for name in names)]
            if lost:
                raise RuntimeError(f"keep={';'.join(keep)}: no OpenVINO op of the converted model is named after "
                                   f"the ONNX nodes of {', '.join(lost)}, so NNCF would quantize them anyway")
        return nncf.IgnoredScope(patterns=[p for ps in patterns.values() for p in ps], validate=False)

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
        if getattr(self, "kept", None):
            out.info["kept"] = dict(self.kept)  # ONNX nodes each kept module covers (NNCF's ignored scope)
        return out
