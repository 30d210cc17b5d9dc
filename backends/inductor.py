"""AOTInductor: the ExportedProgram compiled ahead of time by TorchInductor.

``torch._inductor.aoti_compile_and_package`` turns the program into a ``.pt2`` package (a
shared library of generated C++ kernels on the CPU, Triton kernels on CUDA, and the
weights), cached in the compiled folder and loaded with ``torch._inductor.aoti_load_package``.
Not a default backend: an AOT compile takes tens of seconds even for a small model.

Variants:
- ``fp32``: the ExportedProgram as exported.
- ``bf16``: weights and compute in bf16 (the model's parameters and buffers cast, float
  inputs cast to bf16 on the way in, float outputs back to float32 on the way out: a
  wrapper re-exported with ``torch.export``). On the CPU only where it has native bf16
  (AVX-512 BF16 or AMX); elsewhere *unavailable*, as inductor would emulate it in fp32.
- ``tf32``: CUDA only (it implies ``device=cuda``); matmuls and convolutions may use TF32.
  Every other CUDA variant runs with TF32 off (``fp32_precision="ieee"``), at compile time
  (inductor's Triton matmul templates read it) and at run time (cuBLAS / cuDNN read it).

Options: ``device=cpu|cuda`` (CUDA: the program moved with ``move_to_device_pass``),
``max_autotune=on|off`` and ``freezing=on|off`` (inductor's configs of those names),
``threads=N`` (``torch.set_num_threads`` around each run: the kernels' OpenMP regions are
compiled with ``cpp.dynamic_threads`` so they take the thread count at run time, and one
cached package serves any thread count; more than one thread is refused in a forked
isolated worker, where GNU OpenMP cannot start threads).

What ran is counted per op of the program handed to AOTInductor, by the dtype of each op's
output (FX node meta ``val``), layout-only ops left out; kept beside the cached package.

Layer view: propagated, on the core-ATen program with every node returned as an output,
compiled once by AOTInductor (cached beside the package); returning values changes what
inductor fuses, so final outputs stay measured on the unmodified package. Bisection
compiles unmodified prefixes of the same program, one AOT compile per probe.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from backendiff.cache import write_atomic
from backendiff.contract import ModelView
from backendiff.errors import BackendUnavailable, BadInput

from .base import Adapter, Compiled, positive_int

_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16"}
_ON_OFF = ("on", "off")
_FX_FLOATS = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float64": "fp64"}

#: ATen ops that move, view or convert data without arithmetic worth a precision
FX_LAYOUT = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "squeeze", "unsqueeze", "flatten",
    "clone", "contiguous", "_to_copy", "to", "alias", "detach", "lift_fresh_copy", "slice", "select", "cat",
    "split", "split_with_sizes", "unbind", "chunk", "getitem", "copy", "empty", "full", "zeros", "ones",
}

#: ATen ops that CUDA's TF32 mode lets run on TF32 tensor cores (cuBLAS, cuDNN, inductor's Triton matmuls)
TF32_OPS = {"convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
            "linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "einsum"}

PRECISION_FROM = "the dtype of each op's output in the program AOTInductor compiled"
TF32_NOTE = "; fp32 matmuls and convolutions counted as tf32, which the mode allows them"

#: the package and what is kept beside it in the compiled folder
PACKAGE, SIDECAR = "model.pt2", "precisions.json"
LAYERS_PACKAGE, LAYERS_NAMES = "layers.pt2", "layers.json"


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use: the first of ``torch._inductor.config.cpp.cxx``
    found on PATH (``g++``, or ``$CXX``), or None. Inductor's ``None`` entry (install gcc from
    conda) is skipped: it downloads only when ``TORCH_INDUCTOR_INSTALL_GXX`` is set."""
    from torch._inductor import config

    candidates = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    found = (shutil.which(c) for c in candidates if c)
    return next((path for path in found if path), None)


def cpu_bf16_missing() -> str | None:
    """Why this CPU cannot run bf16 natively (None when it can): oneDNN, and AVX-512 BF16 or
    AMX, as torch detects them."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn), which inductor's bf16 convolutions and matmuls use"
    avx512 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    if not (avx512 or amx):
        return "this CPU has neither AVX-512 BF16 nor AMX; inductor would emulate bf16 through fp32 conversions"
    return None


def forked_worker() -> bool:
    """Whether this process is a worker forked by ``multiprocessing`` (backendiff's isolated
    worker), where GNU OpenMP cannot start threads: the parent's pool does not survive the
    fork, and a parallel region of more than one thread waits forever."""
    import multiprocessing
    from multiprocessing.context import ForkProcess

    return isinstance(multiprocessing.current_process(), ForkProcess)


def op_name(node) -> str:
    """An FX call_function node's op without namespace or overload (``convolution``)."""
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(target, "__name__", str(target))


def fx_compute_precisions(graph, tf32: bool = False) -> dict[str, int]:
    """Count an FX graph's compute ops by the float dtype of their output (the first tensor of
    a tuple); layout-only ops (``FX_LAYOUT``) and integer outputs (indices, masks) left out.
    With ``tf32``, fp32 matmuls and convolutions (``TF32_OPS``) count as ``tf32``: what the
    mode allows them, which no dtype shows."""
    import torch

    counts: Counter = Counter()
    for node in graph.nodes:
        if node.op != "call_function" or op_name(node) in FX_LAYOUT:
            continue
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = next((v for v in val if isinstance(v, torch.Tensor)), None)
        precision = _FX_FLOATS.get(str(getattr(val, "dtype", "")))
        if tf32 and precision == "fp32" and op_name(node) in TF32_OPS:
            precision = "tf32"
        if precision:
            counts[precision] += 1
    return dict(counts)


def inductor_configs(spec) -> dict:
    """The ``inductor_configs`` of ``aoti_compile_and_package`` for a spec."""
    return {"max_autotune": spec.option("max_autotune") == "on", "freezing": spec.option("freezing") == "on",
            "cpp.dynamic_threads": True}


def deployed_program(ep, dtype: str, device: str, args: tuple):
    """The program AOTInductor compiles for a variant and device: ``ep`` itself (fp32 on the
    CPU), else a copy moved to ``device`` (``move_to_device_pass``: weights, constants,
    example inputs and devices burnt into the graph) and, below fp32, wrapped to cast its
    weights and float inputs to ``dtype`` and its float outputs back to float32, re-exported
    with ``torch.export``. Outputs keep ``ep``'s order. AOTInductor traces with the
    program's example inputs: a program without them (a converted TorchScript model) gets
    ``args``, on a copy."""
    import torch
    from torch.export.passes import move_to_device_pass
    from torch.utils import _pytree as pytree

    target = getattr(torch, dtype)
    if target == torch.float32 and device == "cpu" and ep.example_inputs is not None:
        return ep
    ep = copy.deepcopy(ep)                    # changed below: never the model's own program
    if ep.example_inputs is None:
        ep.example_inputs = (tuple(args), {})
    if device != "cpu":
        ep = move_to_device_pass(ep, device)
    if target == torch.float32:
        return ep

    class Cast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            args = [a.to(target) if a.is_floating_point() else a for a in args]
            out = self.inner(*args)
            return pytree.tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
                                   out)

    return torch.export.export(Cast(ep.module().to(target)), tuple(ep.example_inputs[0]), strict=False)


@contextlib.contextmanager
def fp32_mode(device: str, tf32: bool):
    """CUDA matmuls and convolutions in TF32 (``tf32``) or IEEE fp32 for the block; nothing on
    the CPU."""
    if device != "cuda":
        yield
        return
    import torch

    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    mode = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = mode
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``torch.set_num_threads(n)`` for the block (the OpenMP threads the kernels use), then
    back; None leaves the process's setting."""
    import torch

    if n is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class InductorCompiled(Compiled):
    def __init__(self, package: Path, device: str, tf32: bool, threads: int | None):
        import torch

        super().__init__()
        self.runner = torch._inductor.aoti_load_package(str(package))
        self.device, self.tf32, self.threads = device, tf32, threads
        self.artifact = package

    def run(self, sample):
        import torch

        from backendiff.reference import flatten_outputs

        args = [torch.from_numpy(np.array(a)).to(self.device) for a in sample.values()]
        with torch.no_grad(), torch_threads(self.threads), fp32_mode(self.device, self.tf32):
            out = self.runner(*args)
        return flatten_outputs(out, as_float32=True)[1]


class InductorAdapter(Adapter):
    name = "inductor"
    description = "AOTInductor (torch._inductor): the ExportedProgram compiled ahead of time to a .pt2 package"
    packages = {"torch._inductor": "torch"}
    variants = ("fp32", "bf16", "tf32")
    options = {"device": ("cpu", "cuda"), "max_autotune": _ON_OFF, "freezing": _ON_OFF, "threads": positive_int}
    defaults = {"device": "cpu", "max_autotune": "off", "freezing": "off"}
    #: opt-in: an AOT compile takes tens of seconds even for a small model
    default = False

    layers_from = ("AOTInductor compiling the core-ATen ExportedProgram with every node's value returned as an "
                   "output, same variant and inductor options (returning values changes what inductor fuses and "
                   "where it rounds; final outputs are measured on the unmodified package)")

    @classmethod
    def check(cls) -> None:
        super().check()
        if cxx_compiler() is None:
            from torch._inductor import config

            raise BackendUnavailable(f"no C++ compiler for AOTInductor: none of {config.cpp.cxx} is on PATH",
                                     "install g++ (apt-get install g++) or set CXX to a C++17 compiler")

    @classmethod
    def canonical(cls, spec):
        """Fill the defaults; ``tf32`` implies ``device=cuda`` (it is a CUDA mode)."""
        from backendiff.specs import BackendSpec

        if spec.variant == "tf32" and spec.option("device") is None:
            spec = BackendSpec(spec.name, spec.variant, tuple(spec.options) + (("device", "cuda"),))
        out = super().canonical(spec)
        if out.variant == "tf32" and out.option("device") != "cuda":
            raise BadInput("inductor:tf32 is a CUDA mode (TF32 matmuls and convolutions); use inductor:tf32,device=cuda")
        return out

    @classmethod
    def needs_gpu(cls, spec) -> bool:
        return spec.option("device") == "cuda" or spec.variant == "tf32"

    @classmethod
    def threads(cls, spec) -> int:
        import torch

        return int(spec.option("threads")) if spec.option("threads") else torch.get_num_threads()

    @property
    def device(self) -> str:
        return self.spec.option("device") or "cpu"

    def check_variant(self) -> None:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise BackendUnavailable(f"inductor device=cuda needs an NVIDIA GPU: {why}",
                                     "run on a machine with an NVIDIA GPU and a CUDA build of torch")
        missing = cpu_bf16_missing() if self.device == "cpu" and self.variant == "bf16" else None
        if missing:
            raise BackendUnavailable(missing, "run on a CPU with AVX-512 BF16 or AMX")
        threads = int(self.spec.option("threads") or 1)
        if self.device == "cpu" and threads > 1 and forked_worker():
            raise BackendUnavailable(
                f"threads={threads}: GNU OpenMP's thread pool does not survive the fork of backendiff's isolated "
                "worker (a parallel region would wait forever)", "run with --no-isolate (isolate=False)")

    def route(self, model: ModelView) -> str:
        return "export"

    def layers_program(self, model: ModelView) -> str:
        return "core_aten"

    # -- build ------------------------------------------------------------------------
    def _package(self, program, path: Path) -> Path:
        """``program`` compiled by AOTInductor with this spec's configs into the package
        ``path`` (written under a temporary name, then renamed)."""
        import torch

        configs = inductor_configs(self.spec)
        with fp32_mode(self.device, self.variant == "tf32"):
            write_atomic(path, lambda tmp: torch._inductor.aoti_compile_and_package(
                program, package_path=str(tmp), inductor_configs=dict(configs)))
        return path

    def _load(self, path: Path) -> InductorCompiled:
        threads = self.spec.option("threads")
        return InductorCompiled(path, self.device, self.variant == "tf32", int(threads) if threads else None)

    def _lowered(self, ep, model: ModelView):
        return deployed_program(ep, _DTYPES[self.variant], self.device, model.example_args())

    def convert(self, model: ModelView, folder: Path):
        """The cached package when the folder has one; else the program to compile."""
        package = folder / PACKAGE
        if package.exists():
            self.cache_hit = True
            return package
        if not model.has_torch:
            raise BackendUnavailable("AOTInductor compiles a PyTorch program; an ONNX source has none",
                                     "compare the PyTorch model (.pt2, .py factory, zoo) instead")
        return self._lowered(model.exported_program(), model)

    def compile(self, converted, folder: Path) -> Compiled:
        from backendiff.precision import summarize

        sidecar = folder / SIDECAR
        if isinstance(converted, Path):
            counts = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        else:
            counts = fx_compute_precisions(converted.graph, tf32=self.variant == "tf32")
            write_atomic(sidecar, lambda tmp: tmp.write_text(json.dumps(counts)))
            self._package(converted, folder / PACKAGE)      # last: its presence is the cache hit
        out = self._load(folder / PACKAGE)
        out.info.update(device=self.device, inductor_configs=inductor_configs(self.spec), runtime_precisions=counts,
                        precision_from=PRECISION_FROM + (TF32_NOTE if self.variant == "tf32" else ""))
        out.info["runtime_precision"] = summarize(counts) or self.variant
        return out

    # -- layer view ---------------------------------------------------------------------
    def layer_values(self, model: ModelView, sample):
        """Every node of the core-ATen program returned as an output, compiled once (cached
        beside the deployed package) and run. Returns node name -> value (float32)."""
        from backendiff.layers import program_with_outputs

        layers, _ = model.reference_layers("core_aten")
        folder = self.deployed.artifact.parent if self.deployed and self.deployed.artifact else None
        with tempfile.TemporaryDirectory(prefix="backendiff-inductor-") as tmp:
            where = folder or Path(tmp)
            package, names_file = where / LAYERS_PACKAGE, where / LAYERS_NAMES
            if not (package.exists() and names_file.exists()):
                program, added = program_with_outputs(model.program("core_aten"), [layer.node for layer in layers])
                self._package(self._lowered(program, model), package)
                write_atomic(names_file, lambda t: t.write_text(json.dumps(model.output_layer_names("core_aten") + added)))
            names = json.loads(names_file.read_text())
            outputs = self._load(package).run(sample)
        if len(outputs) != len(names):
            raise RuntimeError(f"the instrumented package returned {len(outputs)} values for {len(names)} nodes")
        return dict(zip(names, outputs))

    def bisect(self, model: ModelView, sample, out_of_tolerance):
        """Prefixes of the core-ATen program, each compiled unmodified by AOTInductor with one
        output (one AOT compile per probe: O(log N) of them)."""
        from backendiff.bisect import bisect_program

        layers, reference = model.reference_layers("core_aten")
        with tempfile.TemporaryDirectory(prefix="backendiff-inductor-bisect-") as tmp:
            probes = itertools.count()

            def run_prefix(prefix):
                path = self._package(self._lowered(prefix, model), Path(tmp) / f"prefix_{next(probes)}.pt2")
                return self._load(path).run(sample)[0]

            found = bisect_program(run_prefix, model.program("core_aten"), [layer.node for layer in layers], reference,
                                   out_of_tolerance)
        return found | {"graph": ("prefixes of the core-ATen ExportedProgram, each compiled unmodified by AOTInductor "
                                  "with one output"), "program": "core_aten"}
