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
  run's calibration data; non-quantized ops in f32. ``model_type=transformer`` and
  ``preset=performance|mixed`` are passed to ``nncf.quantize`` (``nncf.ModelType.TRANSFORMER``:
  NNCF's scheme for transformers, which leaves Add, MVN, Softmax inputs and the like
  unquantized; the preset: symmetric or asymmetric activations). A failure of NNCF is one
  line naming the op, its FX node (or ONNX node) and PyTorch module, and what to try.
What ran is read back per executed primitive from the compiled model's runtime model
(``runtimePrecision``), e.g. ``{"int8": 3, "fp32": 2}``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from backendiff.contract import ModelView
from backendiff.errors import BackendUnavailable

from .base import Adapter, Compiled, FailedNodes, as_float32, bfloat16_bits, feeds_in_order, positive_int

#: the PyTorch frontend's report of operator types it has no converter for
NO_RULE = re.compile(r"No conversion rule found for operations: ([^\n]+)")

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
_PERF = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
#: int8 options passed to ``nncf.quantize`` as the keyword of the same name: option -> value
#: -> the ``nncf`` enum member
NNCF_OPTIONS = {"model_type": {"transformer": "ModelType.TRANSFORMER"},
                "preset": {"performance": "QuantizationPreset.PERFORMANCE", "mixed": "QuantizationPreset.MIXED"}}


class NncfFailed(RuntimeError):
    """``nncf.quantize`` failed on the model (one line: which op, which module, what to try);
    NNCF's own exception is its ``__cause__``."""


def nncf_arguments(spec) -> dict:
    """The ``nncf.quantize`` keywords a spec's ``model_type=`` / ``preset=`` ask for."""
    import nncf

    out = {}
    for option, values in NNCF_OPTIONS.items():
        value = spec.option(option)
        if value is not None:
            enum, member = values[value].split(".")
            out[option] = getattr(getattr(nncf, enum), member)
    return out


def reads_inputs(value) -> bool:
    """Whether an OpenVINO value is computed from the data of a model input, not only from
    constants and input *shapes* (a ShapeOf reads no data): NNCF leaves ops of the second
    kind out of its graph of the inference."""
    stack, seen = [value.get_node()], set()
    while stack:
        node = stack.pop()
        if node.get_name() in seen:
            continue
        seen.add(node.get_name())
        kind = node.get_type_name()
        if kind == "Parameter":
            return True
        if kind != "ShapeOf":
            stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return False


def nncf_error(exc: BaseException, converted, modules: dict[str, str], spec) -> str:
    """One line for a failure of ``nncf.quantize``: NNCF's error, the op it names (an op of
    ``converted``: its type, its FX node or ONNX node, the first part of its friendly name
    ``embedding_1/aten.embedding.default/Gather``, and that node's PyTorch module from
    ``modules``), why where known, and what to try. ``node NAME of type OP`` is the phrase
    ``backendiff.diagnose`` reads to locate it in the model."""
    from backendiff.diagnose import quoted_name
    from backendiff.errors import first_line

    ops = {op.get_friendly_name(): op for op in converted.get_ops()} if converted is not None else {}
    message = f"{type(exc).__name__}: {first_line(exc) or '(no message)'}"
    name = quoted_name(str(exc), ops)
    where, why, hints = "", "", []
    module = None
    if name is not None:
        op = ops[name]
        parts = name.split("/")
        node, module = parts[0], modules.get(parts[0])
        details = [parts[1]] if len(parts) >= 3 else []   # the aten op, on the export route
        details += [f"module {module}"] if module else []
        where = f" at node {node} of type {op.get_type_name()}" + (f" ({', '.join(details)})" if details else "")
        if op.get_type_name() == "Gather" and op.get_input_size() > 1 and not reads_inputs(op.input_value(1)):
            why = ("; its indices do not depend on the model's inputs (only on constants and input shapes, e.g. a "
                   "default token_type_ids buffer): NNCF leaves such ops out of its inference graph")
    if spec.option("model_type") is None:
        hints.append("model_type=transformer (NNCF's scheme for transformers)")
    if module and not spec.option("keep"):
        route = "" if spec.option("route") == "onnx" else "route=onnx,"
        hints.append(f"{route}keep={module} (leave that module unquantized)")
    return f"nncf.quantize failed{where}: {message}{why}" + (f"; try {' or '.join(hints)}" if hints else "")


def node_modules(model: ModelView, route: str) -> dict[str, str]:
    """FX node (export route) or ONNX node (route onnx) -> its PyTorch module, for naming
    the op an NNCF failure is about; empty where the model has neither."""
    try:
        if route == "export":
            from backendiff.layers import graph_layers

            return {layer.node: layer.module for layer in graph_layers(model.exported_program().graph_module)
                    if layer.module}
        import onnx

        from backendiff.onnx_graph import node_module

        export = onnx.load(str(model.onnx_path()), load_external_data=False)
        return {n.name: node_module(n) for n in export.graph.node if node_module(n)}
    except Exception:  # noqa: BLE001 - naming the module is a courtesy; the failure itself is reported
        return {}


class OpenVinoCompiled(Compiled):
    def __init__(self, compiled):
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, sample):
        arrays = [np.asarray(a) for a in sample.values()]
        results = self.request.infer(arrays)
        return [value_of(results, o) for o in self.compiled.outputs]


def value_of(results, port) -> np.ndarray:
    """An output of an inference as numpy. OpenVINO's Python API hands a bfloat16 output
    over as a float16 array of the same bits (wrong numbers: 1.5625 reads as 1.945); its
    bits are widened to the float32 they stand for, exactly."""
    value = np.array(results[port])
    if port.get_element_type().get_type_name() == "bf16":
        value = bfloat16_bits(value)
    return value


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
    from openvino.frontend.pytorch.torchdynamo.export_decompositions import ops_to_not_decompose
    from torch.export.decomp_utils import CustomDecompTable

    table = CustomDecompTable()
    for op in ops_to_not_decompose():
        try:
            table.pop(op)
        except KeyError:
            pass
    return ep.run_decompositions(table)


def ov_convert(program):
    import openvino as ov

    return ov.convert_model(program)


def tensor_ports(converted, nodes: list[str], through_fake_quantize: bool = False) -> dict:
    """node -> the output port of ``converted`` that carries its value: the tensor named
    ``NODE:0`` (the ExportedProgram route) or ``NODE`` (the ONNX route). With
    ``through_fake_quantize`` (an NNCF int8 model), a tensor that feeds a FakeQuantize is read
    at the FakeQuantize's output: the value its quantized consumers see."""
    wanted = {}
    for node in nodes:
        wanted.setdefault(f"{node}:0", node)
        wanted.setdefault(node, node)
    ports = {}
    for op in converted.get_ordered_ops():
        if op.get_type_name() in ("Result", "Constant", "Parameter"):
            continue
        for port in op.outputs():
            node = next((wanted[n] for n in sorted(port.get_names()) if n in wanted), None)
            if node is None or node in ports:
                continue
            if through_fake_quantize:
                fq = [t.get_node() for t in port.get_target_inputs() if t.get_node().get_type_name() == "FakeQuantize"
                      and t.get_index() == 0]
                port = fq[0].output(0) if fq else port
            ports[node] = port
    return ports


class OpenVinoAdapter(Adapter):
    name = "openvino"
    description = "OpenVINO CPU plugin, from the ExportedProgram (route=onnx: from the ONNX export)"
    packages = {"openvino": "openvino"}
    preload_modules = ("openvino", "openvino.frontend.pytorch")
    extra = "openvino"
    variants = ("fp32", "fp16", "bf16", "int8")
    #: ``keep=MODULE;MODULE`` (int8, route=onnx): those PyTorch modules stay out of NNCF's
    #: quantization (an ignored scope over the ONNX nodes the exporter attributes to them)
    #: ``model_type`` / ``preset`` (int8): passed to ``nncf.quantize`` (``NNCF_OPTIONS``)
    options = {"route": ("export", "onnx"), "device": None, "precision_hint": ("fp32", "bf16", "fp16", "default"),
               "perf_hint": tuple(_PERF), "threads": positive_int, "keep": None,
               **{option: tuple(values) for option, values in NNCF_OPTIONS.items()}}
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
        for option in NNCF_OPTIONS:
            if canonical.option(option) is not None and canonical.variant != "int8":
                raise BadInput(f"openvino's {option}= applies to openvino:int8 (it is passed to nncf.quantize), "
                               f"e.g. openvino:int8,{option}={next(iter(NNCF_OPTIONS[option]))}")
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
            return ("the deployed NNCF int8 model itself, each node's value read where the quantized model carries "
                    "it: the FakeQuantize output that stands for a quantized tensor, else the tensor; added as "
                    "outputs (add_outputs; this can change which FakeQuantize ops the CPU plugin fuses into int8 "
                    "kernels; final outputs are measured on the unmodified model)")
        if self.spec.option("route") == "onnx":
            return ("OpenVINO on the ONNX export without the exporter's optimizer (the onnx route), every FX "
                    "node's value marked as an output, same device and precision settings (marking outputs can "
                    "change fusion; final outputs are measured on the unmodified model)")
        return ("OpenVINO's model converted from the ExportedProgram (the deployed export route: ov.convert_model "
                "and its own decomposition), every node's value added as an output (add_outputs), same device "
                "and precision settings (added outputs can change fusion; final outputs are measured on the "
                "unmodified model)")

    @classmethod
    def failed_nodes(cls, error: dict) -> FailedNodes | None:
        """Operator types without a conversion rule (in the program OpenVINO's own
        decomposition gives). A node whose conversion failed is not enough: the frontend names
        one node per type, and peeling them one run at a time costs more than halving."""
        if m := NO_RULE.search(error.get("message") or ""):
            return FailedNodes(openvino_decomposition, frozenset(t.strip() for t in m.group(1).split(",")))
        return super().failed_nodes(error)

    def layers_program(self, model: ModelView) -> str:
        if self.route(model) == "onnx":
            return "onnx"   # tensors named after FX nodes by the dynamo exporter
        model.program("openvino", decompose=openvino_decomposition)
        return "openvino"

    def deployed_fusion(self):
        """Fusions from the compiled model's runtime model: each executed primitive lists the
        original ops it computes (``originalLayersNames``). From the ExportedProgram route
        those carry FX node names (``relu/aten.relu.default/Relu``)."""
        compiled = self.deployed.compiled if self.deployed is not None else None
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
                values[name] = value_of(results, port)
        return as_float32(values)

    def layer_values(self, model: ModelView, sample):
        if self.variant == "int8":
            return self._values_with_outputs(self._deployed_model(), model, sample)
        if self.route(model) == "onnx":
            path, _ = model.instrumented_onnx()
            return self.run_onnx(path, list(sample.values()), {})
        return self._values_with_outputs(ov_convert(model.exported_program()), model, sample)

    def _deployed_model(self):
        import openvino as ov

        if self.deployed is None or self.deployed.artifact is None:
            raise RuntimeError("the int8 model was not built in this process")
        return ov.Core().read_model(str(self.deployed.artifact))

    def _compile_converted(self, converted, folder: str):
        """A converted model saved and compiled as the deployed one is (fp16: weights
        compressed in the IR; the variant's inference hints)."""
        import openvino as ov

        ov.save_model(converted, f"{folder}/model.xml", compress_to_fp16=self.variant == "fp16")
        return ov.Core().compile_model(ov.Core().read_model(f"{folder}/model.xml"),
                                       self.spec.option("device", "CPU"), self._config(None))

    def bisect(self, model: ModelView, sample, out_of_tolerance):
        import tempfile

        import openvino as ov
        from backendiff.bisect import bisect, bisect_program

        kind = self.layers_program(model)
        layers, reference = model.reference_layers(kind)

        def run(prefix):
            with tempfile.TemporaryDirectory(prefix="backendiff-ov-bisect-") as tmp:
                compiled = self._compile_converted(prefix, tmp)
                result = compiled.create_infer_request().infer([np.asarray(a) for a in sample.values()])
                return as_float32({"v": value_of(result, compiled.outputs[0])})["v"]

        if self.variant == "int8":   # prefixes of the quantized model, each ending at one tensor
            deployed = self._deployed_model()
            ports = tensor_ports(deployed, [layer.node for layer in layers], through_fake_quantize=True)
            cuts = [layer.node for layer in layers if layer.node in ports and layer.node in reference]

            def diverges(cut):
                prefix = ov.Model([ports[cut]], deployed.get_parameters(), "prefix")
                return out_of_tolerance(run(prefix), reference[cut])

            index, probes = bisect(cuts, diverges)
            return {"first_diverging_cut": cuts[index] if index is not None else None, "probes": probes,
                    "candidates": len(cuts), "program": kind,
                    "graph": "prefixes of the deployed NNCF int8 model, each ending at one tensor (its FakeQuantize "
                             "where quantized), compiled unmodified with one output"}
        if kind == "onnx":
            return super().bisect(model, sample, out_of_tolerance)
        found = bisect_program(lambda ep: run(ov_convert(ep)), model.program(kind, decompose=openvino_decomposition),
                               [layer.node for layer in layers], reference, out_of_tolerance)
        return found | {"graph": ("prefixes of the ExportedProgram as OpenVINO decomposes it (the deployed export "
                                  "route), each converted and compiled unmodified with one output"),
                        "program": kind}

    def _values_with_outputs(self, converted, model: ModelView, sample):
        """The converted model as deployed with every layer's tensor added as an output
        (``add_outputs``; quantized tensors through their FakeQuantize), saved and compiled
        with the variant's settings. Returns node name -> value (float32)."""
        import tempfile

        kind = self.layers_program(model)
        layers, _ = model.reference_layers(kind)
        ports = tensor_ports(converted, [layer.node for layer in layers], through_fake_quantize=self.variant == "int8")
        nodes = list(ports)
        own = len(converted.outputs)
        converted.add_outputs([ports[n] for n in nodes])
        with tempfile.TemporaryDirectory(prefix="backendiff-ov-layers-") as tmp:
            compiled = self._compile_converted(converted, tmp)
            results = compiled.create_infer_request().infer([np.asarray(a) for a in sample.values()])
            outputs = list(compiled.outputs)
            values = {node: value_of(results, port) for node, port in zip(nodes, outputs[own:])}
            for name, port in zip(model.output_layer_names(kind), outputs[:own]):
                values.setdefault(name, value_of(results, port))
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

    def convert(self, model: ModelView, folder: Path):
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
            converted = ov_convert(model.exported_program())
        if self.variant == "int8":
            import contextlib
            import io
            import logging

            import nncf

            logging.getLogger("nncf").setLevel(logging.ERROR)
            calib = [list(s.values())[0] if len(s) == 1 else tuple(s.values()) for s in model.calibration()]
            scope = self._ignored_scope(model, converted)
            arguments = nncf_arguments(self.spec) | ({"ignored_scope": scope} if scope is not None else {})
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    converted = nncf.quantize(converted, nncf.Dataset(calib), subset_size=len(calib),  # progress bars
                                              **arguments)
            except Exception as e:  # noqa: BLE001 - NNCF's failure, said in one line
                raise NncfFailed(nncf_error(e, converted, node_modules(model, self.route(model)), self.spec)) from e
        tmp = folder / f".tmp-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        ov.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=self.variant == "fp16")
        os.replace(tmp / "model.bin", folder / "model.bin")
        os.replace(tmp / "model.xml", xml)  # the .xml last: its presence marks a complete entry
        tmp.rmdir()
        return converted if self.variant != "fp16" else ov.Core().read_model(str(xml))

    def _ignored_scope(self, model: ModelView, converted=None):
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
        out = OpenVinoCompiled(compiled)
        out.artifact = folder / "model.xml"   # as saved by convert (the int8 view reads the deployed IR)
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
