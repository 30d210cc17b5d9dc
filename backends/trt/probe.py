"""Can TensorRT run here, and which variants: the ``tensorrt`` import and its version, the
PyTorch build (CUDA, ROCm or CPU-only) and its visible devices, the current GPU's name and
compute capability, and the API members a variant needs. Reasons are sentences with the
fix as the hint (``BackendUnavailable``).
"""
from __future__ import annotations

import re

from backendiff.errors import BackendUnavailable

MIN_MAJOR = 10
GPU_HINT = "TensorRT needs an NVIDIA GPU with a CUDA build of PyTorch"
UPGRADE_HINT = "pip install -U 'tensorrt>=10'"


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


def probe_torch() -> tuple[str | None, str | None, int]:
    """(torch.version.cuda, torch.version.hip, visible CUDA devices)."""
    import torch

    cuda_build = getattr(torch.version, "cuda", None)
    hip_build = getattr(torch.version, "hip", None)
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken driver: treat as no device
        count = 0
    return cuda_build, hip_build, count


def current_device() -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of the current CUDA device."""
    import torch

    return str(torch.cuda.get_device_name()), tuple(int(x) for x in torch.cuda.get_device_capability())


def check_runtime(install_hint: str | None) -> None:
    """Raise BackendUnavailable when TensorRT cannot run here: tensorrt missing, broken or
    older than ``MIN_MAJOR``, or no NVIDIA GPU (``install_hint``: the adapter's pip line)."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as e:
        if e.name not in (None, "tensorrt"):  # a missing piece of an installed tensorrt
            raise BackendUnavailable(f"tensorrt fails to import: {type(e).__name__}: {e}", install_hint) from None
        trt = None
    except Exception as e:  # present but broken (missing libnvinfer, ...)
        raise BackendUnavailable(f"tensorrt fails to import: {type(e).__name__}: {e}", install_hint) from None
    version = None if trt is None else str(getattr(trt, "__version__", "") or "unknown")
    cuda_build, hip_build, count = probe_torch()
    reason = unavailable_reason(version, cuda_build, count, hip_build)
    if reason:
        no_gpu = gpu_missing_reason(cuda_build, count, hip_build) is not None
        hint = install_hint if needs_install(version) else None
        raise BackendUnavailable(reason, "; ".join(h for h in (GPU_HINT if no_gpu else None, hint) if h))


def check_variant(variant: str) -> None:
    """Raise BackendUnavailable when this TensorRT or GPU cannot run ``variant`` (called
    after ``check_runtime``)."""
    import tensorrt as trt

    name, capability = current_device() if variant == "bf16" else (None, None)
    found = variant_unavailable_reason(
        variant, str(trt.__version__),
        strongly_typed=hasattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED"),
        int8_calibrator=hasattr(trt, "IInt8EntropyCalibrator2"), capability=capability, device=name)
    if found:
        raise BackendUnavailable(*found)
