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
fused layer computes.

One module per job:

- ``probe``: can TensorRT run here, and which variants (tensorrt, the PyTorch build, the GPU);
- ``config``: variants, builder flags, optimization level, workspace, ``keep=`` constraints;
- ``source``: what ``convert`` gives ``compile`` (ONNX file, sample shapes, calibration, kept);
- ``build``: parse, build, cache and load engines; parser errors named after modules;
- ``calibrator``: int8 calibration batches, the entropy calibrator and its cache file;
- ``debug``: debug tensors (marking them, a listener copying them to the host);
- ``tensors``: TensorRT types as torch/numpy dtypes, host arrays, input matching;
- ``runner``: ``TrtCompiled``, the engine's execution context and buffers;
- ``inspector``: the deployed engine read back (precisions, layers by module, fusions);
- ``layers``: engine layer names split and mapped to ONNX nodes and modules (pure);
- ``layerwise``: the layer-wise view's values and its sentence in the report;
- ``adapter``: ``TrtAdapter``, delegating to the above.

``tensorrt`` and CUDA are imported inside functions only: every module imports anywhere.
"""
from __future__ import annotations

from backendiff.loading import sha256_file as file_sha256

from .adapter import TrtAdapter
from .build import (
    build_plan,
    cached_engine_path,
    describe_parser_error,
    engine_file,
    engine_key,
    engine_options,
    load_engine,
    onnx_places,
    parse_failure_message,
    profile_shapes,
    write_engine,
)
from .calibrator import calibration_batches, calibration_cache_file, calibrator_class, make_calibrator
from .config import (
    KEEP_VARIANTS,
    OPT_LEVELS,
    VARIANTS,
    apply_config,
    apply_keep,
    builder_flags,
    check_keep,
    cleared_flags,
    constraint_flag,
    keep_modules,
    network_flags,
    parse_workspace_mb,
)
from .debug import (
    LAYER_METHODS,
    capsule_pointer,
    choose_layer_method,
    copy_debug_tensor,
    cuda_array_interface,
    debug_listener_class,
    debug_type,
    has_debug_tensors,
    mark_debug_tensors,
)
from .inspector import engine_information
from .probe import (
    GPU_HINT,
    MIN_MAJOR,
    UPGRADE_HINT,
    gpu_missing_reason,
    major_version,
    needs_install,
    unavailable_reason,
    variant_unavailable_reason,
)
from .runner import TrtCompiled
from .source import TrtSource
from .tensors import dtype_name, host_array, match_inputs, numpy_dtype, torch_dtype

__all__ = [
    "GPU_HINT", "KEEP_VARIANTS", "LAYER_METHODS", "MIN_MAJOR", "OPT_LEVELS", "UPGRADE_HINT", "VARIANTS",
    "TrtAdapter", "TrtCompiled", "TrtSource",
    "apply_config", "apply_keep", "build_plan", "builder_flags", "cached_engine_path", "calibration_batches",
    "calibration_cache_file", "calibrator_class", "capsule_pointer", "check_keep", "choose_layer_method",
    "cleared_flags", "constraint_flag", "copy_debug_tensor", "cuda_array_interface", "debug_listener_class",
    "debug_type", "describe_parser_error", "dtype_name", "engine_file", "engine_information", "engine_key",
    "engine_options", "file_sha256", "gpu_missing_reason", "has_debug_tensors", "host_array", "keep_modules",
    "load_engine", "major_version", "make_calibrator", "mark_debug_tensors", "match_inputs", "needs_install",
    "network_flags", "numpy_dtype", "onnx_places", "parse_failure_message", "parse_workspace_mb",
    "profile_shapes", "torch_dtype", "unavailable_reason", "variant_unavailable_reason", "write_engine",
]
