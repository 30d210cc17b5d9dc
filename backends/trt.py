"""NVIDIA TensorRT 10, from the dynamo ONNX export, on the first CUDA device.

The ONNX file is parsed with ``trt.OnnxParser`` and built into a serialized engine
(``model.engine``, cached in the backend's folder and reloaded on the next run). I/O uses
the TensorRT 10 name-based tensor API, with PyTorch CUDA tensors as device buffers and a
PyTorch CUDA stream.

Variants set the builder's precision flags. TensorRT enables TF32 by default; here it is
on only for the ``tf32`` variant, so ``fp32`` (and the fp32 fallback of ``fp16``/``bf16``)
means full fp32 math. Options: ``opt_level`` (builder optimization level 0..5, TensorRT's
default 3) and ``workspace_mb`` (cap on the builder's workspace memory pool).

``tensorrt`` and CUDA are imported inside methods only: this module imports anywhere.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from backendiff.cache import write_atomic
from backendiff.errors import BackendUnavailable, BadInput
from backendiff.specs import BackendSpec

from .base import Adapter, Compiled, positive_int

MIN_MAJOR = 10
ENGINE_FILE = "model.engine"
GPU_HINT = "TensorRT needs an NVIDIA GPU with a CUDA build of PyTorch"
VARIANTS = ("fp32", "tf32", "fp16", "bf16")
OPT_LEVELS = tuple(str(i) for i in range(6))

# variant -> trt.BuilderFlag members to set
_SET_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "tf32": ("TF32",), "fp16": ("FP16",), "bf16": ("BF16",)}

# TensorRT DataType member name -> torch dtype attribute name
_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


# -- availability ---------------------------------------------------------------------
def major_version(version: str | None) -> int | None:
    """The leading integer of a version string ("10.3.0.26" -> 10), None if unreadable."""
    m = re.match(r"\s*(\d+)", version or "")
    return int(m.group(1)) if m else None


def needs_install(trt_version: str | None) -> bool:
    """True when the fix is installing (or upgrading) tensorrt, not the machine."""
    major = major_version(trt_version)
    return trt_version is None or major is None or major < MIN_MAJOR


def unavailable_reason(trt_version: str | None, cuda_build: str | None, device_count: int,
                       hip_build: str | None = None) -> str | None:
    """Why TensorRT cannot run, from what was probed; None when it can."""
    if trt_version is None:
        return "tensorrt is not installed"
    major = major_version(trt_version)
    if major is None:
        return f"tensorrt reports an unreadable version {trt_version!r}; backendiff needs TensorRT {MIN_MAJOR} or newer"
    if major < MIN_MAJOR:
        return f"tensorrt {trt_version} is too old; backendiff needs TensorRT {MIN_MAJOR} or newer"
    if cuda_build is None:
        if hip_build:
            return f"no NVIDIA GPU: this PyTorch is a ROCm build (torch.version.hip {hip_build}), not a CUDA one"
        return "no NVIDIA GPU: this PyTorch is a CPU-only build (torch.version.cuda is None)"
    if device_count < 1:
        return f"no CUDA device visible to PyTorch (CUDA {cuda_build} build)"
    return None


def _probe_torch() -> tuple[str | None, str | None, int]:
    """(torch.version.cuda, torch.version.hip, visible CUDA devices)."""
    import torch

    cuda_build = getattr(torch.version, "cuda", None)
    hip_build = getattr(torch.version, "hip", None)
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver: treat as no device
        count = 0
    return cuda_build, hip_build, count


# -- build configuration --------------------------------------------------------------
def builder_flags(variant: str) -> list[str]:
    """Names of the ``trt.BuilderFlag`` members to set for a variant."""
    if variant not in _SET_FLAGS:
        raise ValueError(f"unknown TensorRT variant {variant!r}")
    return list(_SET_FLAGS[variant])


def cleared_flags(variant: str) -> list[str]:
    """Names of the ``trt.BuilderFlag`` members to clear (TF32 is on by default)."""
    return [] if "TF32" in builder_flags(variant) else ["TF32"]


def parse_workspace_mb(text: str) -> int:
    """The ``workspace_mb`` option as a positive number of MiB."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise BadInput(f"bad value {text!r} for option 'workspace_mb' of 'trt': expected a positive integer (MiB)")
    return value


def apply_config(trt: Any, config: Any, variant: str, opt_level: int | None = None,
                 workspace_mb: int | None = None) -> None:
    """Set precision flags, optimization level and workspace limit on an IBuilderConfig."""
    for name in builder_flags(variant):
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in cleared_flags(variant):
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)


def describe_parser_error(err: Any) -> str:
    """One line for an ONNX parser error: node index, operator and name, description."""
    def call(attr: str):
        fn = getattr(err, attr, None)
        try:
            return fn() if callable(fn) else None
        except Exception:
            return None

    desc = str(call("desc") or err).strip()
    node = call("node")
    if node is None or int(node) < 0:
        return f"graph: {desc}"
    where = [str(x) for x in (call("node_operator"), call("node_name")) if x]
    label = f"node {int(node)}" + (f" ({' '.join(where)})" if where else "")
    return f"{label}: {desc}"


def parse_failure_message(onnx_path: Path | str, errors: Iterable[str]) -> str:
    lines = list(errors) or ["(the parser reported no details)"]
    return f"TensorRT could not parse {onnx_path}: {len(lines)} error(s)\n" + "\n".join(f"  {e}" for e in lines)


def match_inputs(names: list[str], sample: Mapping[str, Any]) -> dict[str, Any]:
    """Map the engine's input names to the sample's values: by name when every name is in
    the sample, else by position."""
    if all(n in sample for n in names):
        return {n: sample[n] for n in names}
    values = list(sample.values())
    if len(values) != len(names):
        raise RuntimeError(f"the engine takes {len(names)} input(s) ({', '.join(names)}), "
                           f"the sample has {len(values)} ({', '.join(sample)})")
    return dict(zip(names, values))


def profile_shapes(network_inputs: list[tuple[str, tuple[int, ...]]],
                   sample_shapes: Mapping[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """The fixed shapes (from the samples) for the network's dynamic inputs; {} if none."""
    dynamic = [(n, s) for n, s in network_inputs if any(d < 0 for d in s)]
    if not dynamic:
        return {}
    if not sample_shapes:
        raise RuntimeError(f"the ONNX model has dynamic input(s) {', '.join(n for n, _ in dynamic)} "
                           "and no sample shapes are known")
    shapes = match_inputs([n for n, _ in network_inputs], sample_shapes)
    out = {}
    for name, dims in dynamic:
        shape = tuple(int(d) for d in shapes[name])
        if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape)):
            raise RuntimeError(f"input {name!r}: sample shape {shape} does not fit the model's {tuple(dims)}")
        out[name] = shape
    return out


# -- run helpers ----------------------------------------------------------------------
def dtype_name(trt_dtype: Any) -> str:
    """"FLOAT" from trt.DataType.FLOAT, "DataType.FLOAT" or "FLOAT"."""
    name = trt_dtype if isinstance(trt_dtype, str) else getattr(trt_dtype, "name", None) or str(trt_dtype)
    return str(name).rsplit(".", 1)[-1].upper()


def torch_dtype(trt_dtype: Any):
    """The torch dtype of a TensorRT DataType (or its member name)."""
    import torch

    name = dtype_name(trt_dtype)
    if name not in _TORCH_DTYPES:
        raise TypeError(f"TensorRT I/O type {name} has no supported PyTorch equivalent")
    return getattr(torch, _TORCH_DTYPES[name])


def host_array(tensor) -> np.ndarray:
    """A (device) torch tensor as a numpy array; bf16, which numpy lacks, as float32."""
    import torch

    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def write_engine(path: Path, data) -> Path:
    """Write a serialized engine atomically (temp name in the same folder, then rename)."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(memoryview(data)))


_LOGGER = None


def _logger(trt: Any):
    """One process-wide logger that keeps error messages (TensorRT wants a single logger)."""
    global _LOGGER
    if _LOGGER is None:
        class _Collecting(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if int(severity) <= 1:  # INTERNAL_ERROR, ERROR
                    self.errors.append(str(msg).strip())

        _LOGGER = _Collecting()
    return _LOGGER


def _with_log(message: str, errors: list[str]) -> str:
    tail = [e for e in errors if e][-8:]
    return message + ("\n" + "\n".join(f"  {e}" for e in tail) if tail else "")


# -- adapter --------------------------------------------------------------------------
class TrtCompiled(Compiled):
    def __init__(self, engine, runtime=None):
        import tensorrt as trt
        import torch

        super().__init__()
        self.engine = engine
        self._runtime = runtime  # the engine must not outlive its runtime
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def run(self, sample):
        import torch

        feeds = match_inputs(self.input_names, sample)
        keep, outputs = [], []
        with torch.cuda.stream(self.stream):
            for name in self.input_names:
                dtype = torch_dtype(self.engine.get_tensor_dtype(name))
                t = torch.from_numpy(np.array(feeds[name])).to(device="cuda", dtype=dtype).contiguous()
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    expected = tuple(self.engine.get_tensor_shape(name))
                    raise RuntimeError(f"input {name!r}: shape {tuple(t.shape)} does not fit the engine's {expected}")
                self.context.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"output {name!r} has a data-dependent shape {shape}, not supported")
                t = torch.empty(shape, dtype=torch_dtype(self.engine.get_tensor_dtype(name)), device="cuda")
                self.context.set_tensor_address(name, t.data_ptr())
                outputs.append(t)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return [host_array(t) for t in outputs]

    def close(self) -> None:
        self.context = None
        self.engine = None
        self._runtime = None


class TrtAdapter(Adapter):
    name = "trt"
    description = "NVIDIA TensorRT 10 on the first CUDA device, from the dynamo ONNX export"
    packages = {"tensorrt": "tensorrt"}
    extra = "trt"
    variants = VARIANTS
    options = {"opt_level": OPT_LEVELS, "workspace_mb": positive_int}
    defaults = {"opt_level": "3"}

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        self._sample_shapes: dict[str, tuple[int, ...]] | None = None

    @classmethod
    def check(cls) -> None:
        try:
            import tensorrt as trt
        except ModuleNotFoundError as e:
            if e.name not in (None, "tensorrt"):  # a missing piece of an installed tensorrt
                raise BackendUnavailable(f"tensorrt fails to import: {type(e).__name__}: {e}", cls.install_hint()) from None
            trt = None
        except Exception as e:  # present but broken (missing libnvinfer, ...)
            raise BackendUnavailable(f"tensorrt fails to import: {type(e).__name__}: {e}", cls.install_hint()) from None
        version = None if trt is None else str(getattr(trt, "__version__", "") or "unknown")
        if needs_install(version):
            cuda_build, hip_build, count = None, None, 0
        else:
            cuda_build, hip_build, count = _probe_torch()
        reason = unavailable_reason(version, cuda_build, count, hip_build)
        if reason:
            raise BackendUnavailable(reason, cls.install_hint() if needs_install(version) else GPU_HINT)

    @classmethod
    def canonical(cls, spec: BackendSpec) -> BackendSpec:
        out = super().canonical(spec)
        workspace = out.option("workspace_mb")
        if workspace is not None:
            parse_workspace_mb(workspace)
        return out

    def route(self, model) -> str:
        return "onnx"

    def convert(self, model, folder: Path):
        samples = getattr(model, "samples", None)
        if samples:
            self._sample_shapes = {n: tuple(np.shape(a)) for n, a in samples[0].items()}
        return model.onnx_path()

    def compile(self, onnx_path, folder: Path) -> Compiled:
        import tensorrt as trt
        import torch

        logger = _logger(trt)
        logger.errors.clear()
        runtime = trt.Runtime(logger)
        engine_path = Path(folder) / ENGINE_FILE
        if engine_path.exists():
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                raise RuntimeError(_with_log(f"TensorRT could not load the cached engine {engine_path}", logger.errors))
            self.cache_hit = True
        else:
            plan = self._build(trt, logger, Path(onnx_path))
            write_engine(engine_path, plan)
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise RuntimeError(_with_log("TensorRT could not deserialize the engine it built", logger.errors))
        out = TrtCompiled(engine, runtime)
        out.info = {"variant": self.variant, "tensorrt": trt.__version__,
                    "device": torch.cuda.get_device_name(), "opt_level": int(self.spec.option("opt_level", "3"))}
        return out

    def _build(self, trt: Any, logger: Any, onnx_path: Path):
        """Parse the ONNX file and build a serialized engine (IHostMemory)."""
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(parse_failure_message(onnx_path, errors))
        config = builder.create_builder_config()
        workspace = self.spec.option("workspace_mb")
        apply_config(trt, config, self.variant, int(self.spec.option("opt_level", "3")),
                     parse_workspace_mb(workspace) if workspace is not None else None)
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        shapes = profile_shapes([(t.name, tuple(t.shape)) for t in inputs], self._sample_shapes)
        if shapes:
            profile = builder.create_optimization_profile()
            for name, shape in shapes.items():
                profile.set_shape(name, shape, shape, shape)
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(_with_log("engine build failed", logger.errors))
        return plan
