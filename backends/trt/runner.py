"""A TensorRT engine ready to run: its execution context, the TensorRT 10 name-based tensor
API with PyTorch CUDA tensors as device buffers on a PyTorch CUDA stream, and a run that
reports debug tensors. The deployed engine (what ``compile`` returns) also carries what
the layer hooks read of it: its source, cache folder and layers read back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..base import Compiled
from .debug import debug_listener_class
from .layers import EngineLayer
from .source import TrtSource
from .tensors import host_array, match_inputs, torch_dtype


class TrtCompiled(Compiled):
    #: what the deployed engine was built from (``compile``'s TrtSource: the ONNX file, sample
    #: shapes, int8 calibration data and its hash, kept modules); None for other engines
    source: TrtSource | None = None
    #: the folder the deployed engine is cached in (the layer view's engines go beside it)
    folder: Path | None = None
    #: the deployed engine's layers read back by the engine inspector; None where unavailable
    engine_layers: list[EngineLayer] | None = None
    # ``artifact``: the deployed engine file

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
        """Free the engine; what the layer hooks read (source, folder, engine layers) stays."""
        self.context = None
        self.engine = None
        self._runtime = None
        self._listener = None
