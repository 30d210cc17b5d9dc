"""Building and caching TensorRT engines: the ONNX file parsed by ``trt.OnnxParser`` (a
parser error names the node and the PyTorch module it belongs to), the builder configured
by the spec (``config``), fixed shapes for dynamic inputs, the int8 calibrator, debug
tensors for the layer view, and the serialized engine written atomically under a content
hash of everything that decides it: the ONNX bytes, the variant and options, the TensorRT
version, the GPU's name and compute capability and ``extra`` (calibration data, layer method).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from backendiff.cache import content_key, write_atomic
from backendiff.loading import sha256_file as file_sha256
from backendiff.specs import BackendSpec

from .calibrator import make_calibrator
from .config import configure, constrain, keep_modules, network_flags, variant_of
from .debug import mark_debug_tensors
from .source import TrtSource
from .tensors import match_inputs

#: spec options that do not change the deployed engine
_NOT_IN_ENGINE = ("layers",)


# -- engine cache -------------------------------------------------------------------------
def engine_options(spec: BackendSpec) -> list[tuple[str, str]]:
    """The spec's options that decide the engine (part of its cache key)."""
    return [(k, v) for k, v in spec.options if k not in _NOT_IN_ENGINE]


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


def cached_engine_path(trt: Any, spec: BackendSpec, onnx_path: Path, folder: Path, device: str,
                capability: tuple[int, int], extra: Any = None, kind: str = "model") -> Path:
    """Where the engine of ``onnx_path`` built with this spec on this GPU is cached in ``folder``."""
    key = engine_key(file_sha256(onnx_path), variant_of(spec), engine_options(spec), trt.__version__, device,
                     capability, extra)
    return Path(folder) / engine_file(key, kind)


def write_engine(path: Path, data) -> Path:
    """Write a serialized engine atomically (temp name in the same folder, then rename)."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(memoryview(data)))


def load_engine(trt: Any, spec: BackendSpec, source: TrtSource, engine_path: Path, debug_names: Iterable[str] = ()):
    """(engine, runtime, cache hit): the cached engine, else built from ``source``, written
    and loaded."""
    logger = _logger(trt)
    logger.errors.clear()
    runtime = trt.Runtime(logger)
    if engine_path.exists():
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(_with_log(f"TensorRT could not load the cached engine {engine_path}", logger.errors))
        return engine, runtime, True
    plan = build_plan(trt, logger, spec, source, debug_names=debug_names, folder=engine_path.parent)
    write_engine(engine_path, plan)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise RuntimeError(_with_log("TensorRT could not deserialize the engine it built", logger.errors))
    return engine, runtime, False


# -- build ---------------------------------------------------------------------------------
def build_plan(trt: Any, logger: Any, spec: BackendSpec, source: TrtSource, debug_names: Iterable[str] = (),
               folder: Path | None = None):
    """Parse ``source.onnx_path`` and build a serialized engine (IHostMemory) with the spec's
    settings, the source's sample shapes and (int8) calibration data; ``debug_names``:
    tensors to mark as debug tensors (the layer-wise view); ``folder``: where the
    calibration cache goes (default: beside the ONNX file)."""
    onnx_path = source.onnx_path
    variant = variant_of(spec)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, variant))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        places = onnx_places(onnx_path)
        errors = [describe_parser_error(parser.get_error(i), places) for i in range(parser.num_errors)]
        raise RuntimeError(parse_failure_message(onnx_path, errors))
    config = builder.create_builder_config()
    configure(trt, config, spec)
    keep = keep_modules(spec)
    if keep:
        constrain(trt, network, onnx_path, keep)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = profile_shapes([(t.name, tuple(t.shape)) for t in inputs], source.sample_shapes)
    profile = None
    if shapes:
        profile = builder.create_optimization_profile()
        for name, shape in shapes.items():
            profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
    calibrator = None
    if variant == "int8":
        calibrator = make_calibrator(trt, inputs, shapes, onnx_path, folder or Path(onnx_path).parent,
                                     source.calibration, source.calibration_sha)
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


# -- the logger ----------------------------------------------------------------------------
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
