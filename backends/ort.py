"""ONNX Runtime: the dynamo ONNX export, run on the CPU execution provider.

Variants: ``fp32``; ``fp16`` (``onnxruntime.transformers.float16.convert_float_to_float16``
with fp32 inputs and outputs kept at the boundary); ``int8`` (static QDQ quantization with
``quantize_static``, calibrated on the run's calibration data, per-channel int8 weights).
The session saves the graph it actually runs (``optimized_model_filepath``), and the
precision of every compute op is read off that graph: ORT's CPU provider has few fp16
kernels, so it wraps many ops of an fp16 model in Casts and runs them in fp32.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Adapter, Compiled, as_float32, feeds_in_order, positive_int

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


def lower_fp16(src: Path, dst: Path, keep: list[str] = ()) -> None:
    """fp16 with fp32 inputs/outputs; the nodes of the ``keep`` modules stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from backendiff.onnx_graph import nodes_in_modules

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                     node_block_list=nodes_in_modules(model, keep) or None)
    onnx.save(model, str(dst))


def quantize_int8(src: Path, dst: Path, samples, per_channel: bool, keep: list[str] = ()) -> None:
    """Static QDQ int8; the nodes of the ``keep`` modules stay in float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from backendiff.onnx_graph import nodes_in_modules

    pre = dst.with_name("pre_" + dst.name)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # keeps node names and metadata
    pre_model = onnx.load(str(pre), load_external_data=False)
    names = [i.name for i in pre_model.graph.input]
    exclude = nodes_in_modules(pre_model, keep)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{n: np.asarray(a) for n, a in zip(names, s.values())} for s in samples])

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=per_channel, nodes_to_exclude=exclude or None)
    pre.unlink(missing_ok=True)


class OrtAdapter(Adapter):
    name = "ort"
    description = "ONNX Runtime, CPU execution provider, from the dynamo ONNX export"
    packages = {"onnxruntime": "onnxruntime"}
    extra = "ort"
    variants = ("fp32", "fp16", "int8")
    #: ``keep=MODULE;MODULE``: those PyTorch modules stay in fp32 (fp16 block list / int8 exclusions)
    options = {"opt": tuple(_LEVELS), "threads": positive_int, "per_channel": ("true", "false"), "keep": None}
    keep_variants = ("fp16", "int8")
    defaults = {"opt": "all"}

    def route(self, model) -> str:
        return "onnx"

    @property
    def layers_from(self) -> str | None:
        if self.variant == "int8":
            return None  # quantization renames the graph's values: not matched yet
        return ("ONNX Runtime on the ONNX export without the exporter's optimizer, every FX node's value "
                "marked as a graph output (this can change what ORT fuses and which casts it keeps; "
                "final outputs are measured on the unmodified model)")

    def deployed_fusion(self):
        """The values left in the graph ORT actually runs (after its own fusions)."""
        import tempfile

        import onnx

        if getattr(self, "_deployed", None) is None or self.variant != "fp32":
            return None, None  # fp16/int8 lowering renames values: no reliable match yet
        with tempfile.TemporaryDirectory(prefix="backendiff-ort-") as tmp:
            # level "all" only adds layout changes (NCHWc), which rename values without fusing
            # operators: read the fusions at "extended"
            so = self._options(level={"all": "extended"}.get(self.spec.option("opt", "all")))
            so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            self._session(self._deployed, so)
            graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
        return {o for n in graph.node for o in n.output} | {o.name for o in graph.output}, None

    def _options(self, level: str | None = None):
        """Session options of this spec: optimization level (``opt``, or ``level``), threads."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                              _LEVELS[level or self.spec.option("opt", "all")])
        so.log_severity_level = 3
        threads = self.spec.option("threads")
        if threads:
            so.intra_op_num_threads = int(threads)
        return so

    def _session(self, path: Path, so=None):
        import onnxruntime as ort

        return ort.InferenceSession(str(path), so or self._options(), providers=["CPUExecutionProvider"])

    def run_onnx(self, path, originals, named):
        session = self._session(path)
        inputs = [i.name for i in session.get_inputs()]
        arrays = feeds_in_order(inputs, originals, named)
        outputs = session.run(None, dict(zip(inputs, arrays)))
        return as_float32(dict(zip([o.name for o in session.get_outputs()], outputs)))

    def lower_onnx(self, path: Path) -> Path:
        if self.variant != "fp16":
            return path
        lowered = path.with_name(path.stem + "_fp16.onnx")
        if not lowered.exists():
            tmp = path.with_name(f".tmp-{os.getpid()}-{lowered.name}")
            lower_fp16(path, tmp)
            os.replace(tmp, lowered)
        return lowered

    def layer_values(self, model, sample):
        path, _ = model.instrumented_onnx()
        if self.variant == "fp16":
            # as a deployment engineer would instrument it: the fp16 model, then its values
            # marked as outputs, in fp16 (the runtime must produce them in fp16)
            path = path.with_name("instrumented_fp16.onnx")
            if not path.exists():
                import onnx

                from backendiff.onnx_graph import mark_outputs

                plain, names = model.layer_onnx()
                tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
                lower_fp16(plain, tmp)
                lowered = onnx.load(str(tmp))
                mark_outputs(lowered, names)
                onnx.save(lowered, str(tmp))
                os.replace(tmp, path)
        return self.run_onnx(path, list(sample.values()), {})

    def convert(self, model, folder: Path):
        path = model.onnx_path()
        self.cache_hit = model.onnx_from_cache
        if self.variant == "fp32":
            return path
        out = folder / f"model_{self.variant}.onnx"
        if out.exists():
            self.cache_hit = True
            return out
        self.cache_hit = False
        tmp = folder / f".tmp-{os.getpid()}-{out.name}"
        keep = [m for m in (self.spec.option("keep") or "").split(";") if m]
        if self.variant == "fp16":
            lower_fp16(path, tmp, keep)
        else:
            quantize_int8(path, tmp, model.calibration(), self.spec.option("per_channel", "true") == "true", keep)
        os.replace(tmp, out)
        return out

    def compile(self, onnx_path, folder: Path) -> Compiled:
        import onnx

        from backendiff.precision import onnx_compute_precisions, summarize

        so = self._options()
        optimized = folder / f".optimized-{os.getpid()}.onnx"
        if self.variant != "fp32":  # read back what runs: the graph after ORT's own transforms
            so.optimized_model_filepath = str(optimized)
        session = self._session(onnx_path, so)
        self._deployed = Path(onnx_path)
        compiled = OrtCompiled(session)
        compiled.info["opt"] = self.spec.option("opt", "all")
        if optimized.exists():
            counts = onnx_compute_precisions(onnx.load(str(optimized), load_external_data=False))
            optimized.unlink()
            compiled.info["runtime_precisions"] = counts
            compiled.info["runtime_precision"] = summarize(counts) or self.variant
        return compiled
