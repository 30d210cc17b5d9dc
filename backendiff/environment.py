"""What ran: Python, platform, CPU, and the versions of everything involved."""
from __future__ import annotations

import platform
from importlib import metadata

CORE_PACKAGES = ("backendiff", "torch", "numpy", "onnx", "onnxscript")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where the OS does not say).
    In a forked worker it counts the pages shared with its parent too, as the kernel does."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)   # bytes on macOS, KiB on Linux


def current_rss_bytes() -> int:
    """This process's resident memory now, in bytes (0 where the OS does not say)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def total_memory_bytes() -> int | None:
    """This machine's memory, in bytes (None where the OS does not say)."""
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_cpu_key() -> str:
    """A short key of this machine's CPU (model and instruction-set flags): code compiled for
    the host's features (``-march=native``-like builds) is only valid on a CPU with the same."""
    import hashlib

    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        text = "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))}))
    except OSError:
        text = platform.processor()
    return hashlib.sha256(f"{platform.machine()}\n{text}".encode()).hexdigest()[:12]


def package_versions(names) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def environment(extra_versions: dict | None = None) -> dict:
    versions = package_versions(CORE_PACKAGES)
    versions.update(extra_versions or {})
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "versions": versions,
    }
