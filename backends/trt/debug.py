"""TensorRT debug tensors, the layer-wise view's way to read intermediates without marking
them as network outputs: whether this TensorRT has them, which method the ``layers``
option picks, marking tensors of a parsed network, and an ``IDebugListener`` that copies
each reported tensor (device or host memory, any type TensorRT reports) to the host.
"""
from __future__ import annotations

import ctypes
from typing import Any, Callable, Iterable

import numpy as np

from .tensors import dtype_name, host_array

#: values of the ``layers`` option: how the layer-wise view gets intermediates
LAYER_METHODS = ("auto", "debug", "outputs")

# TensorRT DataType member name -> (__cuda_array_interface__ typestr, torch dtype to view it as)
_DEBUG_TYPES = {
    "FLOAT": ("<f4", None), "HALF": ("<f2", None), "BF16": ("<i2", "bfloat16"), "INT32": ("<i4", None),
    "INT64": ("<i8", None), "INT8": ("|i1", None), "UINT8": ("|u1", None), "BOOL": ("|b1", None),
}


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
