"""NVIDIA TensorRT 10, from the dynamo ONNX export, on the first CUDA device.

The ONNX file is parsed with ``trt.OnnxParser`` (a parser error names the node and the
PyTorch module it belongs to) and built into a serialized engine, cached in the backend's
folder under a content hash of everything that decides it: the ONNX bytes, the variant and
options, the TensorRT version, the GPU's name and compute capability and (int8) the
calibration data. I/O uses the TensorRT 10 name-based tensor API, with PyTorch CUDA tensors
as device buffers and a PyTorch CUDA stream.

Variants set the builder's precision flags. TensorRT enables TF32 by default; here it is on
only for the ``tf32`` variant, so ``fp32`` (and the fp32 fallback of the others) means full
fp32 math. ``int8`` is TensorRT's implicit quantization, calibrated on the run's calibration
data by an ``IInt8EntropyCalibrator2`` (with a calibration cache file beside the engine);
layers without an int8 kernel run in fp32. ``strongly_typed`` builds a strongly typed network
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): no precision flags, every tensor keeps the
type the ONNX graph gives it (fp32 for the dynamo export; an fp16 or mixed ONNX source runs as
typed). Options: ``opt_level`` (builder optimization level 0..5, TensorRT's default 3),
``workspace_mb`` (cap on the builder's workspace pool), ``keep=MODULE;MODULE`` (fp16, bf16,
int8: the layers made from those PyTorch modules' ONNX nodes are constrained to fp32,
``layer.precision`` and ``set_output_type``, with ``precision_constraints=obey`` (default)
or ``prefer``) and ``layers=auto|debug|outputs`` (how the layer-wise view gets intermediates).

The deployed engine's layers are read back with the engine inspector (detailed profiling
verbosity): what ran in which precision, and which ONNX nodes (so PyTorch modules) each
fused layer computes (``trt_layers``).

``tensorrt`` and CUDA are imported inside functions only: this module imports anywhere.
"""
from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from backendiff.cache import content_key, write_atomic
from backendiff.errors import BackendUnavailable, BadInput
from backendiff.loading import sha256_file as file_sha256
from backendiff.specs import BackendSpec

from . import trt_layers as L
from .base import Adapter, Compiled, as_float32, positive_int

MIN_MAJOR = 10
GPU_HINT = "TensorRT needs an NVIDIA GPU with a CUDA build of PyTorch"
UPGRADE_HINT = "pip install -U 'tensorrt>=10'"
VARIANTS = ("fp32", "tf32", "fp16", "bf16", "int8", "strongly_typed")
OPT_LEVELS = tuple(str(i) for i in range(6))
KEEP_VARIANTS = ("fp16", "bf16", "int8")
LAYER_METHODS = ("auto", "debug", "outputs")
#: spec options that do not change the deployed engine
_NOT_IN_ENGINE = ("layers",)

# variant -> trt.BuilderFlag members to set
_SET_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "tf32": ("TF32",), "fp16": ("FP16",), "bf16": ("BF16",),
                                          "int8": ("INT8",), "strongly_typed": ()}
_CONSTRAINTS = {"obey": "OBEY_PRECISION_CONSTRAINTS", "prefer": "PREFER_PRECISION_CONSTRAINTS"}

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
# TensorRT DataType member name -> (__cuda_array_interface__ typestr, torch dtype to view it as)
_DEBUG_TYPES = {
    "FLOAT": ("<f4", None), "HALF": ("<f2", None), "BF16": ("<i2", "bfloat16"), "INT32": ("<i4", None),
    "INT64": ("<i8", None), "INT8": ("|i1", None), "UINT8": ("|u1", None), "BOOL": ("|b1", None),
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
    """Why TensorRT cannot run, from what was probed; None when it can. A missing or old
    tensorrt on a machine without an NVIDIA GPU says both (installing it would not help)."""
    gpu = gpu_missing_reason(cuda_build, device_count, hip_build)
    also = f"; and {gpu}" if gpu else ""
    if trt_version is None:
        return "tensorrt is not installed" + also
    major = major_version(trt_version)
    if major is None:
        return (f"tensorrt reports an unreadable version {trt_version!r}; backendiff needs TensorRT {MIN_MAJOR} "
                f"or newer{also}")
    if major < MIN_MAJOR:
        return f"tensorrt {trt_version} is too old; backendiff needs TensorRT {MIN_MAJOR} or newer{also}"
    return gpu


def gpu_missing_reason(cuda_build: str | None, device_count: int, hip_build: str | None = None) -> str | None:
    """Why PyTorch sees no NVIDIA GPU to run TensorRT's buffers on; None when it does."""
    if cuda_build is None:
        if hip_build:
            return f"no NVIDIA GPU: this PyTorch is a ROCm build (torch.version.hip {hip_build}), not a CUDA one"
        return "no NVIDIA GPU: this PyTorch is a CPU-only build (torch.version.cuda is None)"
    if device_count < 1:
        return f"no CUDA device visible to PyTorch (CUDA {cuda_build} build)"
    return None


def variant_unavailable_reason(variant: str, version: str, *, strongly_typed: bool, int8_calibrator: bool,
                               capability: tuple[int, int] | None, device: str | None = None
                               ) -> tuple[str, str] | None:
    """(why, what would make it run) when this TensorRT or GPU cannot run the variant; None
    when it can. ``strongly_typed``: the version has NetworkDefinitionCreationFlag.STRONGLY_TYPED;
    ``int8_calibrator``: it has IInt8EntropyCalibrator2 (implicit int8 calibration)."""
    if variant == "strongly_typed" and not strongly_typed:
        return (f"tensorrt {version} has no strongly typed networks "
                "(NetworkDefinitionCreationFlag.STRONGLY_TYPED, TensorRT 9.1 and later)", UPGRADE_HINT)
    if variant == "int8" and not int8_calibrator:
        return (f"tensorrt {version} has no implicit int8 calibration (IInt8EntropyCalibrator2); "
                "int8 there needs an explicitly quantized (QDQ) ONNX model",
                "use a TensorRT 10 release that still has IInt8EntropyCalibrator2, or ort:int8,ep=trt (QDQ)")
    if variant == "bf16" and capability is not None and tuple(capability) < (8, 0):
        gpu = f"the GPU {device}" if device else "this GPU"
        return (f"{gpu} (compute capability {capability[0]}.{capability[1]}) has no bf16 support; TensorRT "
                "needs compute capability 8.0 (Ampere) or newer for bf16", "run on an Ampere or newer NVIDIA GPU")
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


def _device() -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of the current CUDA device."""
    import torch

    return str(torch.cuda.get_device_name()), tuple(int(x) for x in torch.cuda.get_device_capability())


# -- build configuration --------------------------------------------------------------
def builder_flags(variant: str) -> list[str]:
    """Names of the ``trt.BuilderFlag`` members to set for a variant."""
    if variant not in _SET_FLAGS:
        raise ValueError(f"unknown TensorRT variant {variant!r}")
    return list(_SET_FLAGS[variant])


def cleared_flags(variant: str) -> list[str]:
    """Names of the ``trt.BuilderFlag`` members to clear (TF32 is on by default)."""
    return [] if "TF32" in builder_flags(variant) else ["TF32"]


def constraint_flag(mode: str) -> str:
    """The ``trt.BuilderFlag`` member that makes the builder honour per-layer precisions."""
    if mode not in _CONSTRAINTS:
        raise ValueError(f"unknown precision_constraints mode {mode!r}")
    return _CONSTRAINTS[mode]


def network_flags(trt: Any, variant: str) -> int:
    """The flags for ``builder.create_network``: STRONGLY_TYPED for that variant, else none."""
    if variant != "strongly_typed":
        return 0
    member = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if member is None:
        raise BackendUnavailable(*variant_unavailable_reason("strongly_typed", str(getattr(trt, "__version__", "?")),
                                                             strongly_typed=False, int8_calibrator=True,
                                                             capability=None))
    return 1 << int(member)


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
                 workspace_mb: int | None = None, constraints: str | None = None) -> None:
    """Set precision flags, optimization level, workspace limit and (``constraints``: "obey"
    or "prefer") the flag that makes per-layer precisions binding, on an IBuilderConfig."""
    for name in builder_flags(variant):
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in cleared_flags(variant):
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if constraints is not None:
        config.set_flag(getattr(trt.BuilderFlag, constraint_flag(constraints)))


def keep_modules(spec: BackendSpec) -> list[str]:
    from backendiff.onnx_graph import parse_keep

    return parse_keep(spec.option("keep"))


def apply_keep(trt: Any, network: Any, keep_nodes, index: L.OnnxIndex) -> list[str]:
    """Constrain every layer of the parsed network made from a kept ONNX node to fp32 (its
    precision and its floating outputs' types). Returns the names of the layers constrained."""
    from .trt_layers import constraint_plan

    layers = [network.get_layer(i) for i in range(network.num_layers)]
    described = [(layer.name, getattr(layer, "metadata", None),
                  [dtype_name(layer.get_output(j).dtype) for j in range(layer.num_outputs)]) for layer in layers]
    done = []
    for i, outputs in constraint_plan(described, keep_nodes, index):
        layer = layers[i]
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)
        done.append(layer.name)
    return done


def mark_debug_tensors(network: Any, names: Iterable[str]) -> list[str]:
    """Mark the named tensors of the parsed network as debug tensors (their values reach an
    IDebugListener at run time). Returns the names marked, in network order."""
    wanted, marked = set(names), []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            tensor = layer.get_output(j)
            if tensor is not None and tensor.name in wanted and tensor.name not in marked:
                if network.mark_debug(tensor):
                    marked.append(tensor.name)
    return marked


# -- parser errors ------------------------------------------------------------------------
def onnx_places(onnx_path: Path | str) -> list[tuple[str, str]]:
    """(node name, "module M at FILE:LINE") for every node of an ONNX file, in graph order;
    [] when the file cannot be read. The dynamo exporter's metadata names the module."""
    try:
        import onnx

        from backendiff.layers import node_source
        from backendiff.onnx_graph import node_module

        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:
        return []
    out = []
    for node in model.graph.node:
        module = node_module(node)
        source = node_source(node)
        where = (f"module {module}" if module else "") + (f" at {source}" if source else "")
        out.append((node.name, where.strip()))
    return out


def describe_parser_error(err: Any, places: list[tuple[str, str]] | None = None) -> str:
    """One line for an ONNX parser error: node index, operator and name, the PyTorch module
    it belongs to (``places`` from ``onnx_places``, found by node name, else by index), and
    the description."""
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
    name = call("node_name")
    where = [str(x) for x in (call("node_operator"), name) if x]
    label = f"node {int(node)}" + (f" ({' '.join(where)})" if where else "")
    place = None
    if places:
        by_name = dict(places)
        place = by_name.get(name) if name else None
        if place is None and not name and 0 <= int(node) < len(places):
            place = places[int(node)][1]
    return f"{label}" + (f" in {place}" if place else "") + f": {desc}"


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


# -- int8 calibration -----------------------------------------------------------------------
def calibration_batches(samples: list[Mapping[str, np.ndarray]],
                        inputs: list[tuple[str, tuple[int, ...], Any]]) -> tuple[list[dict[str, np.ndarray]], int]:
    """The calibration data as batches of exactly the network's input shapes: ``inputs`` holds
    (name, shape, numpy dtype) per network input, dynamic dimensions already fixed by the
    optimization profile. A sample of the network's shape is one batch; samples whose
    leading (batch) dimension differs are concatenated and cut into batches of the network's
    batch size. Returns (batches, samples' rows left over that fill no whole batch)."""
    names = [n for n, _, _ in inputs]
    matched = [match_inputs(names, s) for s in samples]
    if not matched:
        raise RuntimeError("int8 calibration needs calibration data; none was given")
    for i, m in enumerate(matched):
        for name, _shape, _ in inputs:
            first, this = tuple(np.shape(matched[0][name])), tuple(np.shape(m[name]))
            if this != first:
                raise RuntimeError(f"calibration sample {i} input {name!r} has shape {this}, sample 0 {first}")
    exact = all(tuple(np.shape(matched[0][n])) == tuple(shape) for n, shape, _ in inputs)
    if exact:
        return [{n: np.ascontiguousarray(np.asarray(m[n], dtype=dt)) for n, _, dt in inputs} for m in matched], 0
    rows = None
    for name, shape, _ in inputs:
        have = tuple(np.shape(matched[0][name]))
        if not shape or not have or have[1:] != tuple(shape[1:]) or shape[0] < 1:
            raise RuntimeError(f"calibration input {name!r} has shape {have}; the network takes {tuple(shape)}")
        count = have[0] * len(matched)
        if rows is not None and count != rows:
            raise RuntimeError("calibration inputs disagree on the number of rows along the batch axis")
        rows = count
    stacked = {n: np.concatenate([np.asarray(m[n], dtype=dt) for m in matched], axis=0) for n, _, dt in inputs}
    size = inputs[0][1][0]
    whole = rows // size
    if whole == 0:
        raise RuntimeError(f"{rows} calibration row(s) cannot fill one batch of {size} (the network's batch size)")
    batches = [{n: np.ascontiguousarray(stacked[n][k * size:(k + 1) * size]) for n in stacked} for k in range(whole)]
    return batches, rows - whole * size


def _cuda_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).cuda()


def calibrator_class(trt: Any) -> type:
    """An ``IInt8EntropyCalibrator2`` subclass over this ``trt`` module (a fake in the tests):
    ``cls(batches, cache_path, to_device=...)`` hands TensorRT one batch (a dict of arrays of
    exactly the network's input shapes) per ``get_batch`` call as device pointers, reuses
    the calibration cache file when it exists and writes it when TensorRT produces one. An
    exception inside a callback is kept in ``error`` (TensorRT swallows it) and ends the data."""
    base = trt.IInt8EntropyCalibrator2

    class EntropyCalibrator(base):
        def __init__(self, batches: list[dict[str, np.ndarray]], cache_path: Path | str,
                     to_device: Callable[[np.ndarray], Any] | None = None):
            base.__init__(self)
            self.batches = batches
            self.cache_path = Path(cache_path)
            self.to_device = to_device or _cuda_tensor  # a CUDA tensor (anything with data_ptr())
            self.served = 0
            self.error: str | None = None
            self._held: list = []  # device buffers must live until the next get_batch

        def get_batch_size(self) -> int:
            return 1  # explicit batch: the batch size is part of the input shapes

        def get_batch(self, names, *args):
            if self.error is not None or self.served >= len(self.batches):
                self._held = []
                return None
            try:
                batch = self.batches[self.served]
                missing = [n for n in names if n not in batch]
                if missing:
                    raise KeyError(f"TensorRT asked for input(s) {', '.join(missing)}; "
                                   f"the calibration batch has {', '.join(batch)}")
                self._held = [self.to_device(batch[n]) for n in names]
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                self._held = []
                return None
            self.served += 1
            return [int(t.data_ptr()) for t in self._held]

        def read_calibration_cache(self):
            if self.cache_path.exists() and self.cache_path.stat().st_size > 0:
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            data = bytes(memoryview(cache))
            write_atomic(self.cache_path, lambda tmp: tmp.write_bytes(data))

    return EntropyCalibrator


# -- engine cache -------------------------------------------------------------------------
def engine_key(onnx_sha256: str, variant: str, options: Iterable[tuple[str, str]] | Mapping[str, str],
               trt_version: str, device: str, capability: tuple[int, int], extra: Any = None) -> str:
    """The content hash an engine is cached under: the ONNX bytes, the variant, the options,
    the TensorRT version, the GPU (name, compute capability) and ``extra`` (the int8
    calibration data's hash, the layer-wise method, ...)."""
    opts = sorted((dict(options) if isinstance(options, Mapping) else dict(options)).items())
    return content_key("trt-engine", onnx_sha256, variant, opts, str(trt_version), str(device),
                       [int(c) for c in capability], extra)


def engine_file(key: str, kind: str = "model") -> str:
    return f"{kind}-{key[:24]}.engine"


def calibration_cache_file(onnx_sha256: str, calibration_sha256: str | None, trt_version: str, device: str) -> str:
    """A calibration cache belongs to one network, one calibration set and one TensorRT."""
    return f"calib-{content_key('trt-calib', onnx_sha256, calibration_sha256, trt_version, device)[:24]}.cache"


# -- debug tensors (layer-wise values) ------------------------------------------------------
def has_debug_tensors(trt: Any) -> bool:
    """Whether this TensorRT marks debug tensors and reports them to an IDebugListener."""
    return (hasattr(trt, "IDebugListener") and hasattr(getattr(trt, "INetworkDefinition", None), "mark_debug")
            and hasattr(getattr(trt, "IExecutionContext", None), "set_debug_listener"))


def choose_layer_method(option: str | None, debug_available: bool, version: str = "") -> str:
    """"debug" or "outputs" for the ``layers`` option ("auto": debug tensors where available)."""
    option = option or "auto"
    if option == "outputs" or (option == "auto" and not debug_available):
        return "outputs"
    if not debug_available:
        raise RuntimeError(f"layers=debug: tensorrt {version} has no debug tensors (INetworkDefinition.mark_debug "
                           "with an IDebugListener); use layers=outputs")
    return "debug"


def capsule_pointer(addr: Any) -> int:
    """The address a debug listener is given: an int, or a PyCapsule around the pointer."""
    try:
        return int(addr)
    except (TypeError, ValueError):
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.argtypes = [ctypes.py_object, ctypes.c_char_p]
        get.restype = ctypes.c_void_p
        pointer = get(addr, None)
        if not pointer:
            raise RuntimeError("the debug tensor's address capsule holds a null pointer") from None
        return int(pointer)


def debug_type(trt_dtype: Any) -> tuple[str, str | None]:
    """(array-interface typestr, torch dtype to reinterpret the bytes as) of a debug tensor's
    TensorRT type; bf16, which has no typestr, is read as int16 and viewed as bfloat16."""
    name = dtype_name(trt_dtype)
    if name not in _DEBUG_TYPES:
        raise TypeError(f"debug tensor type {name} is not supported")
    return _DEBUG_TYPES[name]


def cuda_array_interface(ptr: int, shape: tuple[int, ...], typestr: str) -> dict:
    return {"shape": tuple(int(d) for d in shape), "typestr": typestr, "data": (int(ptr), False), "version": 2,
            "strides": None}


class _CudaView:
    def __init__(self, interface: dict):
        self.__cuda_array_interface__ = interface


def copy_debug_tensor(addr: Any, location: Any, trt_dtype: Any, shape: Any, stream: Any) -> np.ndarray:
    """A host copy of a debug tensor, valid only during the listener's callback: device memory
    is cloned on the callback's stream (then synchronized), host memory copied."""
    import torch

    typestr, view = debug_type(trt_dtype)
    dims = tuple(int(d) for d in shape)
    ptr = capsule_pointer(addr)
    if dtype_name(location) == "HOST":
        dtype = np.dtype(typestr)
        count = int(np.prod(dims)) if dims else 1
        raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr) if count else b""
        tensor = torch.from_numpy(np.frombuffer(raw, dtype=dtype).reshape(dims).copy())
    else:
        ext = torch.cuda.ExternalStream(int(stream))
        with torch.cuda.stream(ext):
            tensor = torch.as_tensor(_CudaView(cuda_array_interface(ptr, dims, typestr)), device="cuda").clone()
        ext.synchronize()
    if view is not None:
        tensor = tensor.view(getattr(torch, view))
    return host_array(tensor)


def debug_listener_class(trt: Any, copy: Callable | None = None) -> type:
    """An ``IDebugListener`` that keeps a host copy of every debug tensor by name (``copy``:
    ``copy_debug_tensor``); errors are kept as data (a listener must not raise into TensorRT)."""
    base = trt.IDebugListener
    copy = copy or copy_debug_tensor

    class Collecting(base):
        def __init__(self):
            base.__init__(self)
            self.values: dict[str, np.ndarray] = {}
            self.errors: list[str] = []

        def process_debug_tensor(self, addr, location, dtype, shape, name, stream):
            try:
                self.values[str(name)] = copy(addr, location, dtype, shape, stream)
            except Exception as e:
                self.errors.append(f"{name}: {type(e).__name__}: {e}")
            return True

    return Collecting


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


def numpy_dtype(trt_dtype: Any):
    """The numpy dtype host data for a TensorRT input of this type is given in (bf16: float32)."""
    name = dtype_name(trt_dtype)
    if name not in _TORCH_DTYPES:
        raise TypeError(f"TensorRT I/O type {name} has no supported numpy equivalent")
    return np.dtype("float32" if name == "BF16" else _TORCH_DTYPES[name])


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


def engine_information(trt: Any, engine: Any) -> str | None:
    """The engine inspector's JSON for every layer, or None where it is not available."""
    try:
        inspector = engine.create_engine_inspector()
        return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    except Exception:
        return None


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

    def _execute(self, sample) -> dict:
        """Run one sample; every output as a CUDA tensor, by name."""
        import torch

        feeds = match_inputs(self.input_names, sample)
        keep, outputs = [], {}
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
                outputs[name] = t
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return outputs

    def run(self, sample):
        outputs = self._execute(sample)
        return [host_array(outputs[n]) for n in self.output_names]

    def run_named(self, sample) -> dict[str, np.ndarray]:
        return {n: host_array(t) for n, t in self._execute(sample).items()}

    def run_debug(self, trt: Any, sample, names: Iterable[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """Run with every named debug tensor reported: (values by name, listener errors)."""
        listener = debug_listener_class(trt)()
        self._listener = listener  # TensorRT holds a raw pointer: keep it alive with the context
        self.context.set_debug_listener(listener)
        try:
            for name in names:
                if self.engine.is_debug_tensor(name):
                    self.context.set_tensor_debug_state(name, True)
            self._execute(sample)
        finally:
            try:
                self.context.set_debug_listener(None)
            except TypeError:  # a binding that takes no None: the listener stays referenced above
                pass
        return listener.values, listener.errors

    def close(self) -> None:
        self.context = None
        self.engine = None
        self._runtime = None
        self._listener = None


class TrtAdapter(Adapter):
    name = "trt"
    description = "NVIDIA TensorRT 10 on the first CUDA device, from the dynamo ONNX export"
    packages = {"tensorrt": "tensorrt"}
    extra = "trt"
    variants = VARIANTS
    options = {"opt_level": OPT_LEVELS, "workspace_mb": positive_int, "keep": None,
               "precision_constraints": tuple(_CONSTRAINTS), "layers": LAYER_METHODS}
    #: ``keep=MODULE;MODULE``: those PyTorch modules' layers constrained to fp32
    keep_variants = KEEP_VARIANTS
    defaults = {"opt_level": "3"}

    @classmethod
    def needs_gpu(cls, spec) -> bool:
        return True

    def __init__(self, spec: BackendSpec):
        super().__init__(spec)
        self._sample_shapes: dict[str, tuple[int, ...]] | None = None
        self._calibration: list | None = None
        self._calibration_sha: str | None = None
        self._folder: Path | None = None
        self._onnx_path: Path | None = None
        self._engine_layers: list[L.EngineLayer] | None = None
        self._fx_names: list[str] | None = None
        self._layers_method: str | None = None
        self._debug_errors: list[str] = []

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
        cuda_build, hip_build, count = _probe_torch()
        reason = unavailable_reason(version, cuda_build, count, hip_build)
        if reason:
            no_gpu = gpu_missing_reason(cuda_build, count, hip_build) is not None
            hint = cls.install_hint() if needs_install(version) else None
            raise BackendUnavailable(reason, "; ".join(h for h in (GPU_HINT if no_gpu else None, hint) if h))

    def check_variant(self) -> None:
        import tensorrt as trt

        name, capability = _device() if self.variant == "bf16" else (None, None)
        found = variant_unavailable_reason(
            self.variant, str(trt.__version__),
            strongly_typed=hasattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED"),
            int8_calibrator=hasattr(trt, "IInt8EntropyCalibrator2"), capability=capability, device=name)
        if found:
            raise BackendUnavailable(*found)

    @classmethod
    def unavailable_variants(cls) -> dict[str, tuple[str, str | None]]:
        """Variant -> (why, hint) for every variant that cannot run here (all of them, with
        the backend's own reason, when TensorRT cannot run at all)."""
        try:
            cls.check()
        except BackendUnavailable as e:
            return {v: (e.reason, e.hint) for v in cls.variants}
        out = {}
        for variant in cls.variants:
            try:
                cls(BackendSpec(cls.name, variant)).check_variant()
            except BackendUnavailable as e:
                out[variant] = (e.reason, e.hint)
        return out

    @classmethod
    def canonical(cls, spec: BackendSpec) -> BackendSpec:
        out = super().canonical(spec)
        workspace = out.option("workspace_mb")
        if workspace is not None:
            parse_workspace_mb(workspace)
        if out.option("keep") is not None:
            if out.variant not in KEEP_VARIANTS:
                raise BadInput("trt's keep= applies to trt:fp16, trt:bf16 and trt:int8 (the layers of those modules "
                               "are constrained to fp32), e.g. trt:fp16,keep=features.0")
            if not keep_modules(out):
                raise BadInput("trt's keep= needs module paths separated by ';', e.g. keep=features.0;classifier")
        if out.option("precision_constraints") is not None and out.option("keep") is None:
            raise BadInput("trt's precision_constraints= applies with keep= (it says how binding the fp32 "
                           "constraints on the kept modules are)")
        return out

    @property
    def precision(self) -> str:
        # strongly typed: the ONNX graph's own types, fp32 for the dynamo export
        return "fp32" if self.variant == "strongly_typed" else self.variant

    def route(self, model) -> str:
        return "onnx"

    # -- convert and compile -----------------------------------------------------------
    def convert(self, model, folder: Path):
        samples = getattr(model, "samples", None)
        if samples:
            self._sample_shapes = {n: tuple(np.shape(a)) for n, a in samples[0].items()}
        path = model.onnx_path()
        if self.variant == "int8":
            self._calibration = model.calibration()
            self._calibration_sha = (getattr(model, "calibration_info", None) or {}).get("sha256")
        keep = keep_modules(self.spec)
        self._kept = check_keep(path, keep) if keep else None
        return path

    def _engine_options(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.spec.options if k not in _NOT_IN_ENGINE]

    def compile(self, onnx_path, folder: Path) -> Compiled:
        import tensorrt as trt

        from backendiff.precision import summarize

        device, capability = _device()
        onnx_path = Path(onnx_path)
        key = engine_key(file_sha256(onnx_path), self.variant, self._engine_options(), trt.__version__, device,
                         capability, self._calibration_sha)
        engine, runtime, self.cache_hit = self._engine(trt, onnx_path, Path(folder) / engine_file(key))
        self._folder, self._onnx_path = Path(folder), onnx_path
        out = TrtCompiled(engine, runtime)
        out.info = {"variant": self.variant, "tensorrt": trt.__version__, "device": device,
                    "compute_capability": f"{capability[0]}.{capability[1]}",
                    "opt_level": int(self.spec.option("opt_level", "3")), "engine": engine_file(key)}
        if getattr(self, "_kept", None):
            out.info["kept"] = dict(self._kept)  # ONNX nodes of the export each kept module covers
        info = engine_information(trt, engine)
        if info:
            try:
                self._engine_layers = L.read_engine_information(info)
                counts = L.runtime_precisions(self._engine_layers)
                if counts:
                    out.info["runtime_precisions"] = counts
                    out.info["runtime_precision"] = summarize(counts)
                out.info["engine_layers"] = L.layer_modules(L.map_layers(self._engine_layers, _index(onnx_path)))
            except Exception as e:  # the read-back is extra: the engine still runs
                out.info["engine_layers_error"] = f"{type(e).__name__}: {e}"
        return out

    def _engine(self, trt: Any, onnx_path: Path, engine_path: Path, debug_names: Iterable[str] = ()):
        """(engine, runtime, cache hit): the cached engine, else built, written and loaded."""
        logger = _logger(trt)
        logger.errors.clear()
        runtime = trt.Runtime(logger)
        if engine_path.exists():
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if engine is None:
                raise RuntimeError(_with_log(f"TensorRT could not load the cached engine {engine_path}", logger.errors))
            return engine, runtime, True
        plan = self._build(trt, logger, onnx_path, debug_names=debug_names, folder=engine_path.parent)
        write_engine(engine_path, plan)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise RuntimeError(_with_log("TensorRT could not deserialize the engine it built", logger.errors))
        return engine, runtime, False

    def _build(self, trt: Any, logger: Any, onnx_path: Path, debug_names: Iterable[str] = (),
               folder: Path | None = None):
        """Parse the ONNX file and build a serialized engine (IHostMemory); ``debug_names``:
        tensors to mark as debug tensors (the layer-wise view)."""
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt, self.variant))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            places = onnx_places(onnx_path)
            errors = [describe_parser_error(parser.get_error(i), places) for i in range(parser.num_errors)]
            raise RuntimeError(parse_failure_message(onnx_path, errors))
        config = builder.create_builder_config()
        workspace = self.spec.option("workspace_mb")
        keep = keep_modules(self.spec)
        apply_config(trt, config, self.variant, int(self.spec.option("opt_level", "3")),
                     parse_workspace_mb(workspace) if workspace is not None else None,
                     (self.spec.option("precision_constraints") or "obey") if keep else None)
        if keep:
            self._constrain(trt, network, onnx_path, keep)
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        shapes = profile_shapes([(t.name, tuple(t.shape)) for t in inputs], self._sample_shapes)
        profile = None
        if shapes:
            profile = builder.create_optimization_profile()
            for name, shape in shapes.items():
                profile.set_shape(name, shape, shape, shape)
            config.add_optimization_profile(profile)
        calibrator = None
        if self.variant == "int8":
            calibrator = self._calibrator(trt, inputs, shapes, onnx_path, folder or Path(onnx_path).parent)
            config.int8_calibrator = calibrator
            if profile is not None:
                config.set_calibration_profile(profile)
        debug_names = list(debug_names)
        if debug_names:
            if not mark_debug_tensors(network, debug_names):
                raise RuntimeError("no tensor of the network could be marked as a debug tensor")
            debug_flag = getattr(trt.BuilderFlag, "DEBUG", None)
            if debug_flag is not None:  # layer-by-layer execution, so that every debug tensor is reported
                config.set_flag(debug_flag)
        verbosity = getattr(getattr(trt, "ProfilingVerbosity", None), "DETAILED", None)
        if verbosity is not None:  # the engine inspector then lists each layer's ONNX nodes and formats
            config.profiling_verbosity = verbosity
        plan = builder.build_serialized_network(network, config)
        if calibrator is not None and calibrator.error:
            raise RuntimeError(f"int8 calibration failed: {calibrator.error}")
        if plan is None:
            raise RuntimeError(_with_log("engine build failed", logger.errors))
        return plan

    def _constrain(self, trt: Any, network: Any, onnx_path: Path, keep: list[str]) -> None:
        import onnx

        from backendiff.onnx_graph import nodes_in_modules

        model = onnx.load(str(onnx_path), load_external_data=False)
        done = apply_keep(trt, network, nodes_in_modules(model, keep), L.onnx_index(model))
        if not done:
            raise RuntimeError(f"keep={';'.join(keep)}: no layer of the parsed network comes from those modules' "
                               "ONNX nodes (names and metadata did not match)")

    def _calibrator(self, trt: Any, inputs: list, shapes: dict, onnx_path: Path, folder: Path):
        if not self._calibration:
            raise RuntimeError("int8 calibration needs calibration data; the run gave none")
        described = [(t.name, tuple(shapes.get(t.name, tuple(t.shape))), numpy_dtype(t.dtype)) for t in inputs]
        batches, _ = calibration_batches(self._calibration, described)
        device, _ = _device()
        cache = Path(folder) / calibration_cache_file(file_sha256(onnx_path), self._calibration_sha,
                                                      trt.__version__, device)
        return calibrator_class(trt)(batches, cache)

    # -- layer-wise view -----------------------------------------------------------------
    @property
    def layers_from(self) -> str | None:
        base = ("TensorRT on the ONNX export without the exporter's optimizer, same builder settings, ")
        caveat = (" (this can change what TensorRT fuses and, in low precision, forces values out in the "
                  "engine's types; final outputs are measured on the unmodified engine)")
        if self._layers_method == "debug":
            lost = self._debug_errors
            return base + "every FX node's value marked as a debug tensor (mark_debug, read by an IDebugListener)" \
                + caveat + (f"; {len(lost)} debug tensor(s) could not be read, e.g. {lost[0]}" if lost else "")
        if self._layers_method == "outputs":
            return base + "every FX node's value marked as a network output" + caveat
        return base + ("every FX node's value as a debug tensor (mark_debug + IDebugListener) where this "
                       "TensorRT has them, else marked as a network output") + caveat

    def layer_values(self, model, sample):
        import tensorrt as trt

        plain, names = model.layer_onnx()
        self._fx_names = list(names)
        method = choose_layer_method(self.spec.option("layers"), has_debug_tensors(trt), trt.__version__)
        path = plain if method == "debug" else model.instrumented_onnx()[0]
        device, capability = _device()
        key = engine_key(file_sha256(path), self.variant, self._engine_options(), trt.__version__, device,
                         capability, [self._calibration_sha, method])
        folder = self._folder or Path(plain).parent
        engine, runtime, _ = self._engine(trt, Path(path), folder / engine_file(key, "layers"),
                                          debug_names=names if method == "debug" else ())
        self._layers_method = method
        with TrtCompiled(engine, runtime) as compiled:
            if method == "debug":
                values, self._debug_errors = compiled.run_debug(trt, sample, names)
                if self._debug_errors and not values:
                    raise RuntimeError(f"debug tensors could not be read: {self._debug_errors[0]}")
            else:
                values = compiled.run_named(sample)
        wanted = set(names)
        return as_float32({k: v for k, v in values.items() if k in wanted})

    def deployed_fusion(self):
        """What the deployed engine fused, from its layers (engine inspector) mapped to the
        ONNX export's nodes and their FX nodes."""
        if not self._engine_layers or self._onnx_path is None:
            return None, None
        mapped = L.map_layers(self._engine_layers, _index(self._onnx_path, self._fx_names))
        present, groups = L.fusion_groups(mapped)
        return present, groups or None


def _index(onnx_path: Path, fx_names=None) -> L.OnnxIndex:
    import onnx

    return L.onnx_index(onnx.load(str(onnx_path), load_external_data=False), fx_names)


def check_keep(onnx_path: Path, keep: list[str]) -> dict[str, int]:
    """ONNX nodes of the export per ``keep`` module; BadInput when one owns none (a typo, say)."""
    import onnx

    from backendiff.onnx_graph import check_keep as check

    return check(onnx.load(str(onnx_path), load_external_data=False), keep)
