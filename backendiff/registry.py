"""Which adapters exist: the built-ins (an explicit table), ones registered from Python
(``register_backend``), and third-party ones from the ``backendiff.backends`` entry-point
group. Adapter modules are imported on first use; they never import their runtime at
import time, so listing adapters is cheap and never fails for a missing runtime.
"""
from __future__ import annotations

import importlib
from importlib import metadata

from .errors import BadInput

BUILTIN = {
    "ort": "backendiff.backends.ort:OrtAdapter",
    "openvino": "backendiff.backends.openvino:OpenVinoAdapter",
    "tvm": "backendiff.backends.tvm:TvmAdapter",
    "trt": "backendiff.backends.trt:TrtAdapter",
    "torch": "backendiff.backends.pytorch:TorchAdapter",
    "inductor": "backendiff.backends.inductor:InductorAdapter",
    "iree": "backendiff.backends.iree:IreeAdapter",
}
ALIASES = {"onnxruntime": "ort", "ov": "openvino", "tensorrt": "trt", "pytorch": "torch"}
ENTRY_POINT_GROUP = "backendiff.backends"

_registered: dict[str, type] = {}


def register_backend(cls: type, *, replace: bool = False) -> type:
    """Register an adapter class (usable as a decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls!r} needs a plain class attribute 'name'")
    if not replace and (name in _registered or name in BUILTIN):
        raise ValueError(f"backend {name!r} is already registered")
    _registered[name] = cls
    return cls


def unregister_backend(name: str) -> None:
    _registered.pop(name, None)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:
        return {}


def names() -> list[str]:
    out = list(BUILTIN)
    out += [n for n in _registered if n not in out]
    out += [n for n in _entry_points() if n not in out]
    return out


def _import(target: str) -> type:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def adapter_class(name: str) -> type:
    name = ALIASES.get(name, name)
    if name in _registered:
        return _registered[name]
    if name in BUILTIN:
        return _import(BUILTIN[name])
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    raise BadInput(f"unknown backend {name!r}; known backends: {', '.join(names())}")


def default_backends() -> list[str]:
    """The backends run when none are named: every default adapter that is available here."""
    out = []
    for name in names():
        cls = adapter_class(name)
        if getattr(cls, "default", True) and cls.availability().available:
            out.append(name)
    return out
