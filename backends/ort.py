"""ONNX Runtime: the dynamo ONNX export, run on the CPU execution provider (or, with
``ep=cuda`` / ``ep=trt``, written ``ort:cuda`` / ``ort:trt``, on ONNX Runtime's CUDA or
TensorRT execution provider).

Variants: ``fp32``; ``fp16`` (``onnxruntime.transformers.float16.convert_float_to_float16``
with fp32 inputs and outputs kept at the boundary); ``int8`` (static QDQ quantization with
``quantize_static``, calibrated on the run's calibration data, per-channel int8 weights).
``int8,mode=dynamic`` is ONNX Runtime's dynamic quantization instead (``quantize_dynamic``:
int8 weights, activations quantized at run time by ``DynamicQuantizeLinear`` from each
tensor's own range, so no calibration data): the usual recipe for transformers, whose
activation ranges vary too much from input to input for one calibrated scale.
The session saves the graph it actually runs (``optimized_model_filepath``), and the
precision of every compute op is read off that graph: ORT's CPU provider has few fp16
kernels, so it wraps many ops of an fp16 model in Casts and runs them in fp32.

Execution providers: ``ort:cuda`` is ``ort:fp32,ep=cuda`` and ``ort:trt`` is
``ort:fp32,ep=trt``; ``ep`` combines with the variants (``ort:fp16,ep=cuda``). They need a
GPU build of ONNX Runtime (``onnxruntime-gpu``) that lists the provider in
``onnxruntime.get_available_providers()``; otherwise the spec is *unavailable*, with the
reason and the install hint. A session whose requested provider did not load (ONNX Runtime
then falls back to the CPU with a warning) is unavailable too, never silently measured on
the CPU. On CUDA, fp32 means fp32: TF32 is off (``use_tf32=0``). With ``ep=trt`` the
variant is TensorRT's own: ``fp16`` sets ``trt_fp16_enable`` on the fp32 graph and
``int8`` runs the QDQ model with ``trt_int8_enable``; engines are cached in the backend's
folder (``trt_engine_cache_path``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from backendiff.cache import write_atomic
from backendiff.contract import ModelView
from backendiff.errors import BackendUnavailable, BadInput
from backendiff.onnx_graph import parse_keep
from backendiff.specs import BackendSpec

from .base import Adapter, Compiled, as_float32, bfloat16_bits, feeds_in_order, positive_int

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


#: ``ep`` option -> ONNX Runtime execution provider
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}
#: variants that stand for an execution provider: ``ort:cuda`` is ``ort:fp32,ep=cuda``
EP_VARIANTS = ("cuda", "trt")
GPU_HINT = ("pip uninstall onnxruntime && pip install onnxruntime-gpu (ONNX Runtime's CUDA build; "
            "it needs an NVIDIA GPU with its driver, CUDA and cuDNN)")
TRT_HINT = GPU_HINT + "; the TensorRT provider also needs TensorRT's libraries (pip install tensorrt)"


def provider_unavailable_reason(ep: str, available: list[str], version: str) -> tuple[str, str] | None:
    """(why, install hint) when ``onnxruntime.get_available_providers()`` lacks the
    provider of ``ep``; None when it is listed (or ``ep`` is the CPU)."""
    provider = PROVIDERS[ep]
    if ep == "cpu" or provider in available:
        return None
    build = "a CPU-only build" if "CUDAExecutionProvider" not in available else "a build without it"
    return (f"onnxruntime {version} has no {provider} ({build}; available providers: {', '.join(available) or 'none'})",
            TRT_HINT if ep == "trt" else GPU_HINT)


def provider_fallback_reason(ep: str, used: list[str]) -> str | None:
    """Why a session is not what was asked: the requested provider is missing from the
    providers the session actually uses (ONNX Runtime fell back to the CPU)."""
    provider = PROVIDERS[ep]
    if provider in used:
        return None
    return (f"{provider} is listed by onnxruntime but the session could not use it (it runs on "
            f"{', '.join(used) or 'nothing'}): no usable NVIDIA GPU, or its CUDA, cuDNN"
            + (" or TensorRT" if ep == "trt" else "") + " libraries failed to load")


def trt_cache_folder(folder: Path) -> Path:
    """Where the TensorRT provider caches its engines: per TensorRT version and GPU, since an
    engine from another of either must not be reused (the compiled folder knows neither)."""
    from importlib import metadata

    from backendiff.cache import content_key

    versions = {}
    for dist in ("tensorrt", "tensorrt-cu12-libs", "tensorrt-cu13-libs"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # no usable CUDA in PyTorch: the provider's engines are keyed by versions alone
        device = None
    return Path(folder) / "trt_engines" / content_key("ort-trt", versions, device)[:16]


def provider_list(ep: str, variant: str, cache_dir: Path | None = None) -> list:
    """The ``providers`` argument of an InferenceSession for ``ep`` and the variant."""
    if ep == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0})  # fp32 means fp32
    if ep == "cuda":
        return [cuda, "CPUExecutionProvider"]
    opts: dict = {"device_id": 0}
    if variant == "fp16":
        opts["trt_fp16_enable"] = True
    if variant == "int8":
        opts["trt_int8_enable"] = True  # the QDQ model: explicit quantization, no calibration table
    if cache_dir is not None:
        opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
    return [("TensorrtExecutionProvider", opts), cuda, "CPUExecutionProvider"]


class OrtCompiled(Compiled):
    def __init__(self, session):
        super().__init__()
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.info = {"providers": session.get_providers()}
        # numpy has no bfloat16: such outputs are read through OrtValues (off the common path)
        self.bfloat16 = any(o.type == "tensor(bfloat16)" for o in session.get_outputs())

    def close(self) -> None:
        """The session (and the weights and arena it holds) let go once the runs are done: the
        layer view that follows builds its own, and must not hold two."""
        self.session = None

    def run(self, sample):
        feeds = {n: np.asarray(a) for n, a in zip(self.input_names, sample.values())}
        if not self.bfloat16:
            return list(self.session.run(None, feeds))
        import onnxruntime as ort

        values = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for n, a in feeds.items()}
        return [as_numpy(v) for v in self.session.run_with_ort_values(None, values)]


def as_numpy(value) -> np.ndarray:
    """An OrtValue as numpy; a bfloat16 tensor (which numpy lacks and ``numpy()`` refuses)
    widened exactly to float32 from its bits."""
    if value.data_type() != "tensor(bfloat16)":
        return value.numpy()
    import ctypes

    shape = value.shape()
    count = int(np.prod(shape)) if shape else 1
    bits = np.ctypeslib.as_array((ctypes.c_uint16 * count).from_address(value.data_ptr())).copy() if count else \
        np.zeros(0, np.uint16)
    return bfloat16_bits(bits).reshape(shape)


def lower_fp16(src: Path, dst: Path, keep: list[str] = ()) -> None:
    """fp16 with fp32 inputs/outputs; the nodes of the ``keep`` modules stay fp32 (the
    converter keeps node names and metadata, so the export's module names still hold)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from backendiff.onnx_graph import nodes_in_modules

    model = onnx.load(str(src))
    blocked = nodes_in_modules(model, keep)
    if blocked:
        unshare_initializers(model, set(blocked))  # the kept nodes' weights stay fp32
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                     node_block_list=blocked or None)
    if blocked:
        drop_fp16_round_trips(model, set(blocked))
    onnx.save(model, str(dst))


def drop_fp16_round_trips(model, kept: set[str]) -> int:
    """Remove the fp16 round trip the fp16 converter puts between two blocked nodes, in place:
    it casts every blocked node's output to fp16 (``X_cast_to_fp16`` -> ``X``) and back to fp32
    for the next blocked node (``X_cast_to_fp32``), so a kept module's values would be rounded
    to fp16 (and overflow past 65504) between its ops. The fp32 consumers then read the fp32
    value itself (and an fp32 weight, not its no-op Cast to fp32). Returns how many Casts to
    fp32 were removed."""
    from onnx import TensorProto

    def to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None)

    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    outputs = {o.name for o in model.graph.output}
    fp32_inits = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    rename, dropped = {}, []
    for n in nodes:  # Cast(fp16 -> fp32) of a Cast(fp32 -> fp16) of a kept node's output
        if n.op_type != "Cast" or to(n) != TensorProto.FLOAT or n.output[0] in outputs:
            continue
        if n.input[0] in fp32_inits:  # the converter casts the kept nodes' fp32 weights to fp32
            rename[n.output[0]] = n.input[0]
            dropped.append(n)
            continue
        half = producer.get(n.input[0])
        if half is None or half.op_type != "Cast" or to(half) != TensorProto.FLOAT16:
            continue
        source = producer.get(half.input[0])
        if source is not None and source.name in kept:
            rename[n.output[0]] = half.input[0]
            dropped.append(n)
    for n in dropped:
        model.graph.node.remove(n)
    for n in model.graph.node:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    # a Cast to fp16 that nothing reads any more stays: its output carries the FX value's
    # name, which the layer view marks as an output
    return len(dropped)


#: ``mode`` option of ``ort:int8`` -> what it is (``static`` is the default and is left out of the
#: canonical spec, so ``ort:int8`` and ``ort:int8,mode=static`` share one cache entry)
INT8_MODES = {"static": "static QDQ (quantize_static, calibrated)",
              "dynamic": "dynamic (quantize_dynamic: int8 weights, activations quantized at run time)"}


class QuantizerFailed(RuntimeError):
    """ONNX Runtime's quantization tooling failed on the model (one line: which node, which
    module, what to try); the tool's own exception is its ``__cause__``."""


def quantizer_error(exc: BaseException, models, mode: str, keep: list[str] = (), tool: str | None = None) -> str:
    """One line for a failure of ONNX Runtime's quantization: the tool's error, the node it
    names (looked up in ``models``, the pre-processed model then the export, whose nodes carry
    the exporter's module names) with its op type and PyTorch module, and what to try. The
    phrase ``node NAME of type OP`` is the one ``backendiff.diagnose`` reads to locate it."""
    from backendiff.diagnose import quoted_name
    from backendiff.errors import first_line
    from backendiff.onnx_graph import node_module

    message = f"{type(exc).__name__}: {first_line(exc) or '(no message)'}"
    nodes = {}
    for model in models:
        for node in model.graph.node:
            nodes.setdefault(node.name, node)
    name = quoted_name(str(exc), nodes)
    module = node_module(nodes[name]) if name is not None else ""
    where = f" at node {name} of type {nodes[name].op_type}" if name is not None else ""
    where += f" (module {module})" if module else ""
    tool = tool or ("quantize_dynamic" if mode == "dynamic" else "quantize_static")
    hints = []
    if mode != "dynamic":
        hints.append("ort:int8,mode=dynamic (no calibration; the usual recipe for transformers)")
    if module and not keep:
        hints.append(f"keep={module} (leave that module in float)")
    return f"ONNX Runtime's {tool} failed{where}: {message}" + (f"; try {' or '.join(hints)}" if hints else "")


def quantize_int8(src: Path, dst: Path, samples, per_channel: bool, keep: list[str] = (),
                  mode: str = "static") -> None:
    """int8 by ONNX Runtime's quantization tool: static QDQ (``mode="static"``, calibrated on
    ``samples``) or dynamic (``mode="dynamic"``: ``quantize_dynamic``, int8 weights and
    activations quantized at run time, ``samples`` unused); the nodes of the ``keep`` modules
    stay in float. A failure of the tool is a ``QuantizerFailed`` naming the node and module.

    ``quant_pre_process`` runs ONNX Runtime's optimizer, which fuses nodes (MatMul+Add into
    Gemm, ...) and drops every node's metadata, the exporter's module names included: they are
    carried over from the export (``carry_modules``) before the kept modules' nodes are picked,
    so the quantized model's nodes carry them too. Both modes quantize the same pre-processed
    model (the dynamic quantizer turns its Gemms into MatMulInteger too)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from backendiff.onnx_graph import carry_modules, check_keep, nodes_in_modules

    pre = dst.with_name("pre_" + dst.name)
    export = onnx.load(str(src), load_external_data=False)
    models = [export]
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - the tool's failure, said in one line
        pre.unlink(missing_ok=True)
        raise QuantizerFailed(quantizer_error(e, models, mode, keep, "quant_pre_process")) from e
    pre_model = onnx.load(str(pre), load_external_data=False)  # saved back to its folder: external data stays valid
    carry_modules(export, pre_model)
    rename_new_initializers(export, pre_model)
    onnx.save(pre_model, str(pre))
    models = [pre_model, export]
    names = [i.name for i in pre_model.graph.input]
    exclude = []
    if keep:
        check_keep(pre_model, keep, "the model ONNX Runtime's quantization pre-processing made of the export")
        exclude = nodes_in_modules(pre_model, keep)
        if unshare_initializers(pre_model, set(exclude)):
            onnx.save(pre_model, str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{n: np.asarray(a) for n, a in zip(names, s.values())} for s in samples])

        def get_next(self):
            return next(self._it, None)

    try:
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                             nodes_to_exclude=exclude or None)
        else:
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            nodes_to_exclude=exclude or None)
    except Exception as e:  # noqa: BLE001 - the tool's failure, said in one line
        raise QuantizerFailed(quantizer_error(e, models, mode, keep)) from e
    finally:
        pre.unlink(missing_ok=True)


def unshare_initializers(model, kept: set[str], suffix: str = ".kept") -> int:
    """Give the ``kept`` nodes their own copy of every initializer they share with other nodes
    (the exporter merges equal constants: two LayerNorms' weights of ones, tied weights), in
    place; else the quantizer puts the shared weight behind a DequantizeLinear that the kept
    node reads too. Returns how many initializers were copied."""
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, set[bool]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, set()).add(node.name in kept)
    shared = {name for name, sides in users.items() if sides == {True, False}}
    for name in shared:
        copy = model.graph.initializer.add()
        copy.CopyFrom(inits[name])
        copy.name = name + suffix
    for node in model.graph.node:
        if node.name in kept:
            for k, name in enumerate(node.input):
                if name in shared:
                    node.input[k] = name + suffix
    return len(shared)


def rename_new_initializers(export, pre_model, prefix: str = "pre_processing.") -> None:
    """Prefix the initializers ``quant_pre_process`` created (``gemm_input_shape``, ...), in
    place. Its optimizer leaves some MatMul+Add pairs unfused; where a kept module leaves
    such a pair in float (no QDQ between them), the session's own optimizer fuses it and
    names its new initializers the same way: ONNX Runtime then fails to load the model
    ("AddInitializedOrtValue Attempt to replace the existing tensor")."""
    known = {i.name for i in export.graph.initializer} | {o for n in export.graph.node for o in n.output}
    renamed = {i.name: prefix + i.name for i in pre_model.graph.initializer if i.name not in known}
    if not renamed:
        return
    for init in pre_model.graph.initializer:
        init.name = renamed.get(init.name, init.name)
    for node in pre_model.graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    for vi in pre_model.graph.value_info:
        vi.name = renamed.get(vi.name, vi.name)


def qdq_values(model, names: list[str]) -> dict[str, str]:
    """Where a QDQ model carries each named float tensor (qdq_loss_debug's matching): the
    output of the DequantizeLinear that reads the QuantizeLinear of the tensor (the value the
    quantized consumers see), else the tensor itself. Returns model value -> name."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    produced = {o for n in model.graph.node for o in n.output}
    out = {}
    for name in names:
        if name not in produced:
            continue
        dq = next((d.output[0] for q in consumers.get(name, []) if q.op_type == "QuantizeLinear"
                   for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"), None)
        out[dq or name] = name
    return out


def kept_nodes(artifact: Path, export: Path, keep: list[str]) -> dict[str, int]:
    """How many nodes of the converted model each kept module covers (nodes left in fp32:
    excluded from quantization, or blocked from the fp16 conversion)."""
    import onnx

    from backendiff.onnx_graph import carry_modules, module_counts, node_module

    model = onnx.load(str(artifact), load_external_data=False)
    if not any(node_module(n) for n in model.graph.node):  # a converter that dropped the names
        carry_modules(onnx.load(str(export), load_external_data=False), model)
    counts = module_counts(model, keep)
    lost = [m for m, c in counts.items() if not c]
    if lost:
        raise RuntimeError(f"keep={';'.join(keep)}: no node of the converted model {artifact.name} belongs to "
                           f"{', '.join(lost)} (module names were lost on the way), so nothing would be kept")
    return counts


def without_default_mode(spec: BackendSpec) -> BackendSpec:
    """Check ``mode=`` against the rest of a canonical ort spec and drop ``mode=static`` (the
    default, as ``ort:int8`` had it before modes existed: same cache entry, same name).
    ``mode`` is int8's; TensorRT's provider runs explicit QDQ int8 only."""
    mode = spec.option("mode")
    if mode is None:
        return spec
    if spec.variant != "int8":
        raise BadInput(f"ort's mode= applies to ort:int8 (static QDQ or dynamic quantization), not ort:{spec.variant}; "
                       "e.g. ort:int8,mode=dynamic")
    if mode == "dynamic" and spec.option("ep") == "trt":
        raise BadInput("ort:int8,mode=dynamic does not run on ep=trt: TensorRT's provider takes static QDQ int8 "
                       "(ort:int8,ep=trt) or calibrates itself (trt:int8)")
    if mode == "static":
        return BackendSpec(spec.name, spec.variant, tuple((k, v) for k, v in spec.options if k != "mode"))
    return spec


class OrtAdapter(Adapter):
    name = "ort"
    description = "ONNX Runtime, CPU execution provider, from the dynamo ONNX export"
    packages = {"onnxruntime": "onnxruntime"}
    preload_modules = ("onnxruntime", "onnxscript", "torch.onnx._internal.exporter._core")
    extra = "ort"
    variants = ("fp32", "fp16", "int8")
    #: ``keep=MODULE;MODULE``: those PyTorch modules stay in fp32 (fp16 block list / int8 exclusions)
    #: ``ep``: the execution provider (absent: the CPU, as before execution providers existed)
    #: ``mode``: how int8 quantizes (``INT8_MODES``; ``static`` when absent)
    options = {"opt": tuple(_LEVELS), "threads": positive_int, "per_channel": ("true", "false"), "keep": None,
               "ep": tuple(PROVIDERS), "mode": tuple(INT8_MODES)}
    keep_variants = ("fp16", "int8")
    defaults = {"opt": "all"}

    @classmethod
    def canonical(cls, spec: BackendSpec) -> BackendSpec:
        """``ort:cuda`` / ``ort:trt`` become ``ort:fp32,ep=cuda`` / ``ort:fp32,ep=trt``."""
        if spec.variant in EP_VARIANTS:
            ep = spec.option("ep")
            if ep is not None and ep != spec.variant:
                raise BadInput(f"ort:{spec.variant} names the {spec.variant} execution provider, but the spec also "
                               f"sets ep={ep}")
            options = tuple((k, v) for k, v in spec.options if k != "ep") + (("ep", spec.variant),)
            spec = BackendSpec(spec.name, "fp32", options)
        try:
            out = super().canonical(spec)
        except BadInput as e:
            if "unknown variant" in str(e):
                raise BadInput(f"{e} (or an execution provider: {', '.join(EP_VARIANTS)})") from None
            raise
        if out.option("keep") is not None and not parse_keep(out.option("keep")):
            raise BadInput("ort's keep= needs module paths separated by ';', e.g. keep=features.0;classifier")
        if out.option("keep") is not None and out.variant not in cls.keep_variants:
            raise BadInput(f"ort's keep= applies to {', '.join('ort:' + v for v in cls.keep_variants)} (those "
                           "modules stay in fp32), e.g. ort:int8,keep=features.0")
        if out.option("ep") == "trt" and out.option("keep") and out.variant == "fp16":
            raise BadInput("ort's keep= does not apply with ep=trt and fp16 (TensorRT picks each layer's precision "
                           "itself); use trt:fp16,keep=... or ort:fp16,ep=cuda,keep=...")
        return without_default_mode(out)

    @classmethod
    def needs_gpu(cls, spec: BackendSpec) -> bool:
        return spec.variant in ("cuda", "trt") or spec.option("ep") in ("cuda", "trt")

    @property
    def ep(self) -> str:
        return self.spec.option("ep") or "cpu"

    @property
    def mode(self) -> str:
        """How int8 quantizes: ``static`` (calibrated QDQ) or ``dynamic``."""
        return self.spec.option("mode") or "static"

    @property
    def needs_calibration(self) -> bool:
        return self.variant == "int8" and self.mode == "static"  # dynamic: ranges measured at run time

    def check_variant(self) -> None:
        if self.ep == "cpu":
            return
        import onnxruntime as ort

        found = provider_unavailable_reason(self.ep, list(ort.get_available_providers()), ort.__version__)
        if found:
            raise BackendUnavailable(*found)

    @classmethod
    def unavailable_variants(cls) -> dict[str, tuple[str, str | None]]:
        """``ort:cuda`` / ``ort:trt`` -> (why, hint) for each execution provider this
        onnxruntime cannot offer (every one, with the backend's reason, when onnxruntime
        itself is missing)."""
        try:
            cls.check()
        except BackendUnavailable as e:
            return {f"ort:{ep}": (e.reason, e.hint) for ep in EP_VARIANTS}
        import onnxruntime as ort

        available = list(ort.get_available_providers())
        out = {}
        for ep in EP_VARIANTS:
            found = provider_unavailable_reason(ep, available, ort.__version__)
            if found:
                out[f"ort:{ep}"] = found
        return out

    def route(self, model: ModelView) -> str:
        return "onnx"

    @property
    def layers_from(self) -> str | None:
        if self.variant == "int8":
            if self.ep != "cpu":
                return None
            if self.mode == "dynamic":
                return ("the deployed dynamic int8 model itself, each FX node's value read at its float tensor, "
                        "which the dynamic quantizer keeps (each int8 MatMul/Conv ends in a float rescale and the "
                        "next one quantizes that float value again at run time, so the values between layers are "
                        "what the model carries); marked as graph outputs (this can stop ORT from fusing "
                        "MatMulInteger with its rescale; final outputs are measured on the unmodified model)")
            return ("the deployed QDQ int8 model itself, each FX node's value read where the quantized model "
                    "carries it, as ONNX Runtime's qdq_loss_debug does: the DequantizeLinear output that stands for "
                    "a quantized tensor, else the float tensor; marked as graph outputs (this can change which "
                    "Q/DQ pairs ORT fuses into int8 kernels; final outputs are measured on the unmodified model)")
        return ("ONNX Runtime on the ONNX export without the exporter's optimizer, every FX node's value "
                "marked as a graph output (this can change what ORT fuses and which casts it keeps; "
                "final outputs are measured on the unmodified model)")

    def deployed_fusion(self):
        """The values left in the graph ORT actually runs (after its own fusions)."""
        import tempfile

        import onnx

        if self.deployed is None or self.variant != "fp32":
            return None, None  # fp16/int8 lowering renames values: no reliable match yet
        if self.ep == "trt":
            return None, None  # TensorRT subgraphs are compiled nodes: no optimized graph to read
        with tempfile.TemporaryDirectory(prefix="backendiff-ort-") as tmp:
            # level "all" only adds layout changes (NCHWc), which rename values without fusing
            # operators: read the fusions at "extended"
            so = self._options(level={"all": "extended"}.get(self.spec.option("opt", "all")))
            so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            self._session(self.deployed.artifact, so)
            graph = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
        return {o for n in graph.node for o in n.output} | {o.name for o in graph.output}, None

    def _deployed_artifact(self) -> Path:
        if self.deployed is None or self.deployed.artifact is None:
            raise RuntimeError("the int8 model was not built in this process")
        return self.deployed.artifact

    def int8_layer_values(self, model: ModelView, sample):
        """Layer values of the deployed QDQ int8 model (``qdq_values``), keyed by FX node."""
        import tempfile

        import onnx

        deployed = self._deployed_artifact()
        layers, _ = model.reference_layers("onnx")
        quantized = onnx.shape_inference.infer_shapes(onnx.load(str(deployed)))
        marks = qdq_values(quantized, [layer.node for layer in layers])
        from backendiff.onnx_graph import mark_outputs

        mark_outputs(quantized, list(marks))
        with tempfile.TemporaryDirectory(prefix="backendiff-ort-int8-") as tmp:
            path = Path(tmp) / "instrumented_int8.onnx"
            onnx.save(quantized, str(path))
            values = self.run_onnx(path, list(sample.values()), {})
        return {marks[name]: value for name, value in values.items() if name in marks}  # marked and own outputs

    def bisect(self, model: ModelView, sample, out_of_tolerance):
        if self.variant != "int8":
            return super().bisect(model, sample, out_of_tolerance)
        from backendiff.bisect import bisect_backend

        deployed = self._deployed_artifact()
        layers, reference = model.reference_layers("onnx")
        nodes = [layer.node for layer in layers]
        found = bisect_backend(self, deployed, nodes, sample, reference, out_of_tolerance,
                               carriers=lambda quantized: qdq_values(quantized, nodes))
        if self.mode == "dynamic":  # no QuantizeLinear in the graph: qdq_values gives the float tensors
            return found | {"graph": "prefixes of the deployed dynamic int8 model, each ending at one float tensor "
                                     "(quantized again at run time by its consumers), run unmodified with one "
                                     "output", "program": "onnx"}
        return found | {"graph": "prefixes of the deployed QDQ int8 model, each ending at one tensor (its "
                                 "DequantizeLinear where quantized), run unmodified with one output",
                        "program": "onnx"}

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

        cache = getattr(self, "_trt_cache", None)
        session = ort.InferenceSession(str(path), so or self._options(),
                                       providers=provider_list(self.ep, self.variant, cache))
        if self.ep != "cpu":
            reason = provider_fallback_reason(self.ep, list(session.get_providers()))
            if reason:
                raise BackendUnavailable(reason, TRT_HINT if self.ep == "trt" else GPU_HINT)
        return session

    def run_onnx(self, path, originals, named):
        session = self._session(path)
        inputs = [i.name for i in session.get_inputs()]
        arrays = feeds_in_order(inputs, originals, named)
        outputs = session.run(None, dict(zip(inputs, arrays)))
        return as_float32(dict(zip([o.name for o in session.get_outputs()], outputs)))

    def lower_onnx(self, path: Path) -> Path:
        if self.variant != "fp16" or self.ep == "trt":  # ep=trt: TensorRT's fp16 on the fp32 graph
            return path
        lowered = path.with_name(path.stem + "_fp16" + self._keep_suffix + ".onnx")
        if not lowered.exists():
            write_atomic(lowered, lambda tmp: lower_fp16(path, tmp, self.keep))
        return lowered

    @property
    def _keep_suffix(self) -> str:
        """File-name suffix of fp16 models lowered with ``keep`` (they sit next to the plain ones)."""
        import hashlib

        return "_keep-" + hashlib.sha256(";".join(self.keep).encode()).hexdigest()[:12] if self.keep else ""

    def layer_values(self, model: ModelView, sample):
        if self.variant == "int8":
            return self.int8_layer_values(model, sample)
        return self.run_onnx(self._instrumented(model), list(sample.values()), {})

    def layer_source(self, model: ModelView, sample, budget):
        """One instrumented session, run once per chunk of layers (``session.run`` with that
        chunk's names: ORT frees what no requested value needs), the chunks cut to ``budget``
        bytes of values by the shapes the export recorded."""
        if self.variant == "int8":
            return super().layer_source(model, sample, budget)
        from backendiff.layers import ChunkedValues, chunks_within, value_sizes

        so = self._options()
        so.enable_cpu_mem_arena = False     # what a chunk's run needed goes back, not kept for the next
        session = self._session(self._instrumented(model), so)
        inputs = [i.name for i in session.get_inputs()]
        feeds = dict(zip(inputs, feeds_in_order(inputs, list(sample.values()), {})))
        graph = model.program("onnx").graph
        order = {node.name: i for i, node in enumerate(graph.nodes)}
        names = sorted((o.name for o in session.get_outputs()), key=lambda n: order.get(n, len(order)))
        sizes = value_sizes(graph)
        chunks = chunks_within(names, sizes, budget) if budget else [names]
        return ChunkedValues(lambda chunk: as_float32(dict(zip(chunk, session.run(chunk, feeds)))), chunks)

    def _instrumented(self, model: ModelView) -> Path:
        """The instrumented ONNX model of this variant: every FX node's value an output."""
        path, _ = model.instrumented_onnx()
        if self.variant == "fp16" and self.ep != "trt":
            # as a deployment engineer would instrument it: the fp16 model, then its values
            # marked as outputs, in fp16 (the runtime must produce them in fp16)
            path = path.with_name("instrumented_fp16" + self._keep_suffix + ".onnx")
            if not path.exists():
                import onnx

                from backendiff.onnx_graph import mark_outputs

                plain, names = model.layer_onnx()

                def write(tmp):
                    lower_fp16(plain, tmp, self.keep)  # the kept modules in fp32, as deployed
                    lowered = onnx.load(str(tmp))
                    mark_outputs(lowered, names)
                    onnx.save(lowered, str(tmp))
                write_atomic(path, write)
        return path

    @property
    def keep(self) -> list[str]:
        return parse_keep(self.spec.option("keep"))

    def convert(self, model: ModelView, folder: Path):
        import onnx

        from backendiff.onnx_graph import check_keep

        path = model.onnx_path()
        self.cache_hit = model.onnx_from_cache
        self.kept = None
        if self.keep:  # a module that owns no node is a typo: said before anything is built
            check_keep(onnx.load(str(path), load_external_data=False), self.keep)
        if self.variant == "fp32" or (self.ep == "trt" and self.variant == "fp16"):
            return path  # TensorRT's own fp16 (trt_fp16_enable) on the fp32 graph
        # with keep, a name of its own: before module names were carried across the
        # quantization pre-processing, keep= built the same model as without it
        dynamic = "_dynamic" if self.variant == "int8" and self.mode == "dynamic" else ""
        out = folder / f"model_{self.variant}{dynamic}{'_kept' if self.keep else ''}.onnx"
        if out.exists():
            self.cache_hit = True
        else:
            self.cache_hit = False

            def write(tmp):
                if self.variant == "fp16":
                    lower_fp16(path, tmp, self.keep)
                else:
                    samples = model.calibration() if self.needs_calibration else None
                    quantize_int8(path, tmp, samples, self.spec.option("per_channel", "true") == "true", self.keep,
                                  self.mode)
            write_atomic(out, write)
        if self.keep:
            self.kept = kept_nodes(out, path, self.keep)
        return out

    def compile(self, onnx_path, folder: Path) -> Compiled:
        import onnx

        from backendiff.precision import onnx_compute_precisions, summarize

        so = self._options()
        optimized = folder / f".optimized-{os.getpid()}.onnx"
        if self.ep == "trt":
            self._trt_cache = trt_cache_folder(folder)
            self._trt_cache.mkdir(parents=True, exist_ok=True)
        elif self.variant != "fp32":  # read back what runs: the graph after ORT's own transforms
            so.optimized_model_filepath = str(optimized)  # (not with TensorRT's compiled nodes)
        session = self._session(onnx_path, so)
        compiled = OrtCompiled(session)
        compiled.artifact = Path(onnx_path)
        compiled.info["opt"] = self.spec.option("opt", "all")
        compiled.info["artifact"] = str(onnx_path)  # the model the session was made from
        if self.variant == "int8":
            compiled.info["quantization"] = INT8_MODES[self.mode]
        if getattr(self, "kept", None):
            compiled.info["kept"] = dict(self.kept)  # nodes of that model each kept module covers
        if self.ep == "trt" and self.variant != "fp32":
            compiled.info["runtime_precision_note"] = ("TensorRT picks each layer's precision inside its "
                                                       "subgraphs; ONNX Runtime does not report it")
        if optimized.exists():
            counts = onnx_compute_precisions(onnx.load(str(optimized), load_external_data=False))
            optimized.unlink()
            compiled.info["runtime_precisions"] = counts
            compiled.info["runtime_precision"] = summarize(counts) or self.variant
        return compiled
