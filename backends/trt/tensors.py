"""TensorRT's tensors at the I/O boundary: DataType names, their torch and numpy dtypes,
device tensors as host arrays, and a sample's values matched to an engine's input names.
Used by the build (input types, shapes), the calibrator, the runner and the debug listener.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

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
