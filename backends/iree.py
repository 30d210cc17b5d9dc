"""IREE, compiled ahead of time for the CPU (``llvm-cpu``) and run on the ``local-task`` driver.

Route ``onnx`` (default): the dynamo ONNX export imported by IREE's ONNX importer (what
``iree-import-onnx`` runs: ONNX shape inference, then the graph to MLIR in the torch
dialect), compiled by ``iree-compile`` into a ``.vmfb`` and loaded with ``iree.runtime``.
Route ``export``: the ExportedProgram imported by iree-turbine (``iree.turbine.aot.export``),
then the same compile; iree-turbine is not part of the ``iree`` extra (it must suit the
installed torch), so without it ``route=export`` is unavailable with the reason and a hint.
The layer view is on the onnx route only. (With IREE 3.13, ``fp16,route=export`` fails to
compile: the f16 demotion does not convert the ``dense_resource`` weights iree-turbine writes.)

Entry points get IREE's synchronous ABI (``--iree-torch-emit-async-entry-points=false``),
both variants alike: with the default asynchronous ABI the torch input pipeline fixes the
entry point's buffer types before ``--iree-input-demote-f32-to-f16`` runs, and the demoted
module then reads fp32 buffers as fp16 (iree-org/iree#24180 for the same with f64); the
synchronous ABI is built after the demotion.

Variants: ``fp32``; ``fp16`` (``--iree-input-demote-f32-to-f16``: every f32 op and value,
accumulators and the module's own inputs and outputs included, in fp16; ``run`` casts the
inputs to fp16 and the outputs back to fp32). Options: ``opt=O0..O3`` (``--iree-opt-level``;
``O0`` is iree-compile's own default), ``target_cpu`` (``--iree-llvmcpu-target-cpu``,
default ``host``), ``threads=N`` (the local-task driver's workers,
``--task_topology_group_count``; IREE's default is one per physical core).

Caching: the ``.vmfb`` is written once into the backend's content-keyed folder and loaded
from there by later runs. With ``target_cpu=host`` the folder's key also carries this
machine's CPU (model and feature flags, ``build_environment``), since code built for one
host's features may not run on another's sharing the cache.

Precision readback: ``iree-compile`` dumps the sources of every dispatch (the kernels it
compiles, ``--iree-hal-dump-executable-sources-to``) and their compute ops (linalg and
linalg_ext ops that do arithmetic; fills, copies and pure casts left out) are counted by the
element type they produce, e.g. ``{"fp16": 11}``; the count is kept beside the ``.vmfb``.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from backendiff.cache import write_atomic
from backendiff.contract import ModelView
from backendiff.errors import BackendUnavailable

from .base import Adapter, Compiled, as_float32, feeds_in_order, positive_int

TURBINE_HINT = ("pip install iree-turbine (the ExportedProgram importer; check that it supports the installed torch "
                "first), or use route=onnx")
#: MLIR element type -> precision name (integer results are index and mask arithmetic: not counted)
MLIR_FLOATS = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "f64": "fp64"}
#: linalg ops that only move or fill data
MOVE_OPS = {"linalg.fill", "linalg.copy", "linalg.transpose", "linalg.broadcast", "linalg.yield", "linalg.index",
            "iree_linalg_ext.yield", "iree_linalg_ext.pack", "iree_linalg_ext.unpack", "linalg.pack", "linalg.unpack"}
#: ops in a ``linalg.generic`` body that do no arithmetic: a body of only these is a copy or a cast
NO_ARITHMETIC = {"linalg.yield", "linalg.index", "arith.truncf", "arith.extf", "arith.bitcast", "arith.index_cast",
                 "arith.sitofp", "arith.uitofp", "arith.fptosi", "arith.fptoui", "arith.extsi", "arith.extui",
                 "arith.trunci", "arith.constant"}

#: (pid, threads) of the local-task driver made in this process: iree.runtime keeps one driver
#: per process, reads its worker count once, when it is made, and its workers do not survive a fork
_DRIVER: dict[str, tuple[int, int | None]] = {}


def import_onnx(src: Path, dst: Path) -> None:
    """IREE's ONNX importer, as ``iree-import-onnx SRC -o DST`` runs it (shape inference,
    then the graph to MLIR in the torch dialect)."""
    from iree.compiler.tools.import_onnx.__main__ import main, parse_arguments

    main(parse_arguments([str(src), "-o", str(dst)]))


def import_export(program, dst: Path) -> None:
    """iree-turbine's import of an ExportedProgram, saved as MLIR in the torch dialect."""
    from iree.turbine import aot

    aot.export(program).save_mlir(dst)


def compile_flags(variant: str, opt: str, target_cpu: str) -> list[str]:
    """``iree-compile`` flags of a spec (see the module docstring for the sync ABI)."""
    flags = ["--iree-torch-emit-async-entry-points=false", f"--iree-llvmcpu-target-cpu={target_cpu}",
             f"--iree-opt-level={opt}"]
    if variant == "fp16":
        flags.append("--iree-input-demote-f32-to-f16")
    return flags


def compile_vmfb(mlir: Path, vmfb: Path, flags: list[str], sources: Path | None = None) -> None:
    """Compile MLIR to a ``.vmfb`` for ``llvm-cpu``; ``sources``: where the dispatches'
    sources are dumped."""
    from iree.compiler import compile_file

    extra = flags + ([f"--iree-hal-dump-executable-sources-to={sources}"] if sources else [])
    compile_file(str(mlir), target_backends=["llvm-cpu"], extra_args=extra, output_file=str(vmfb))


def dispatch_ops(text: str) -> list[tuple[str, str, set[str]]]:
    """(op name, result element type, op names in its body) of every linalg / linalg_ext op
    of a dumped dispatch source."""
    from iree.compiler import ir

    with ir.Context() as ctx:
        ctx.allow_unregistered_dialects = True
        module = ir.Module.parse(text)
        out = []

        def walk(op):
            for region in op.regions:
                for block in region.blocks:
                    for child in block.operations:
                        child = child.operation
                        result = child.results[0].type if len(child.results) else None
                        if child.name.startswith(("linalg.", "iree_linalg_ext.")) and isinstance(result, ir.ShapedType):
                            body = {o.operation.name for r in child.regions for b in r.blocks for o in b.operations}
                            out.append((child.name, str(result.element_type), body))
                        walk(child)
        walk(module.operation)
    return out


def count_precisions(ops: list[tuple[str, str, set[str]]]) -> dict[str, int]:
    """Count compute ops ``(name, result element type, body op names)`` by precision: data
    movement (``MOVE_OPS``) and generics whose body does no arithmetic are left out."""
    counts: Counter = Counter()
    for name, element, body in ops:
        if name in MOVE_OPS or (name == "linalg.generic" and body <= NO_ARITHMETIC) or element not in MLIR_FLOATS:
            continue
        counts[MLIR_FLOATS[element]] += 1
    return dict(counts)


def sources_precisions(folder: Path) -> dict[str, int]:
    """``count_precisions`` over every dispatch source ``iree-compile`` dumped into ``folder``."""
    ops = []
    for path in sorted(folder.glob("*.mlir")):
        ops.extend(dispatch_ops(path.read_text()))
    return count_precisions(ops)


def local_task_device(threads: int | None):
    """The ``local-task`` device, with ``threads`` workers (None: IREE's default). The driver
    is made once per process; another worker count later in the same process, or a driver
    inherited through a fork (its threads are gone: it would hang), is unavailable with the reason."""
    from iree import runtime as rt

    made = _DRIVER.get("local-task")
    if made is None:
        if threads:
            rt.flags.parse_flags(f"--task_topology_group_count={threads}")
        device = rt.get_device("local-task")
        _DRIVER["local-task"] = (os.getpid(), threads)
        return device
    if made[0] != os.getpid():
        raise BackendUnavailable(f"IREE's local-task driver was made in the process (pid {made[0]}) this worker was "
                                 "forked from; its worker threads do not survive a fork",
                                 "run IREE only in isolated workers (the default), not also in the parent process")
    if made[1] != threads:
        raise BackendUnavailable(f"IREE's local-task driver of this process already runs "
                                 f"{made[1] or 'the default number of'} workers (set once per process); "
                                 f"threads={threads or 'default'} needs a process of its own",
                                 "run each backend isolated (the default, without --no-isolate)")
    return rt.get_device("local-task")


class IreeCompiled(Compiled):
    """A ``.vmfb`` loaded on the local-task device; fp32 in and out whatever the module computes in."""

    def __init__(self, vmfb: Path, threads: int | None, half: bool):
        from iree import runtime as rt

        super().__init__()
        config = rt.Config(device=local_task_device(threads))
        module = rt.VmModule.mmap(config.vm_instance, str(vmfb))
        entries = [n for n in module.function_names if not n.startswith("__")]
        if len(entries) != 1:
            raise RuntimeError(f"expected one entry point in {vmfb.name}, found {entries}")
        self.context = rt.SystemContext(vm_modules=[module], config=config)
        self.main = self.context.modules[module.name][entries[0]]
        self.half = half
        self.artifact = vmfb

    def run(self, sample):
        args = [np.asarray(a) for a in sample.values()]
        if self.half:  # the demoted module takes and returns fp16
            args = [a.astype(np.float16) if a.dtype == np.float32 else a for a in args]
        results = self.main(*args)
        results = results if isinstance(results, (tuple, list)) else [results]
        # copies: ``to_host`` maps the device buffer, which later calls reuse
        return [np.array(r.to_host(), dtype=np.float32 if r.dtype == np.float16 else None) for r in results]

    def close(self):
        self.main = self.context = None


class IreeAdapter(Adapter):
    name = "iree"
    description = ("IREE, llvm-cpu compiled ahead of time, local-task driver, from the ONNX export "
                   "(route=export: from the ExportedProgram, with iree-turbine)")
    packages = {"iree.compiler": "iree-base-compiler", "iree.runtime": "iree-base-runtime"}
    preload_modules = ("iree.compiler", "iree.runtime", "onnxscript")
    extra = "iree"
    variants = ("fp32", "fp16")
    options = {"route": ("onnx", "export"), "opt": ("O0", "O1", "O2", "O3"), "target_cpu": None,
               "threads": positive_int}
    defaults = {"route": "onnx", "opt": "O0", "target_cpu": "host"}
    #: not in the default set yet: ``backendiff compare`` without -b runs what it ran before
    default = False

    @classmethod
    def turbine_missing(cls) -> str | None:
        """Why route=export cannot run here (iree-turbine missing or broken), or None."""
        try:
            import iree.turbine.aot  # noqa: F401
        except ImportError as e:
            return f"route=export needs iree-turbine, which is not installed ({e.name or 'iree.turbine'})"
        except Exception as e:  # present but broken, e.g. built for another torch
            return f"route=export needs iree-turbine, which fails to import: {type(e).__name__}: {e}"
        return None

    @classmethod
    def unavailable_variants(cls) -> dict[str, tuple[str, str | None]]:
        """``iree:route=export`` -> (why, hint) where iree-turbine cannot import the ExportedProgram."""
        why = cls.turbine_missing()
        return {"iree:route=export": (why, TURBINE_HINT)} if why else {}

    def check_variant(self) -> None:
        if self.spec.option("route") == "export":
            why = self.turbine_missing()
            if why:
                raise BackendUnavailable(why, TURBINE_HINT)

    @property
    def threads_option(self) -> int | None:
        return int(self.spec.option("threads")) if self.spec.option("threads") else None

    @property
    def flags(self) -> list[str]:
        return compile_flags(self.variant, self.spec.option("opt", "O0"), self.spec.option("target_cpu", "host"))

    @property
    def layers_from(self) -> str | None:
        if self.spec.option("route") == "export":
            return None
        return ("IREE on the ONNX export without the exporter's optimizer (the onnx route), every FX node's value "
                "marked as a graph output, compiled with the same variant and flags (IREE must then write those "
                "values out, which can change what it fuses into one dispatch; final outputs are measured on the "
                "unmodified model)")

    def run_onnx(self, path, originals, named):
        import onnx

        from .tvm import constants_as_tensors

        graph = onnx.load(str(path))
        constants_as_tensors(graph)  # the unoptimized export's value_floats Constants, which IREE cannot import
        initializers = {i.name for i in graph.graph.initializer}
        inputs = [i.name for i in graph.graph.input if i.name not in initializers]
        arrays = feeds_in_order(inputs, originals, named)
        with tempfile.TemporaryDirectory(prefix="backendiff-iree-") as tmp:
            source, mlir, vmfb = Path(tmp) / "view.onnx", Path(tmp) / "view.mlir", Path(tmp) / "view.vmfb"
            onnx.save(graph, str(source))
            import_onnx(source, mlir)
            compile_vmfb(mlir, vmfb, self.flags)
            with IreeCompiled(vmfb, self.threads_option, self.variant == "fp16") as compiled:
                outputs = compiled.run(dict(zip(inputs, arrays)))
        return as_float32(dict(zip([o.name for o in graph.graph.output], outputs)))

    def layer_values(self, model: ModelView, sample):
        path, _ = model.instrumented_onnx()
        return self.run_onnx(path, list(sample.values()), {})

    @classmethod
    def build_environment(cls, spec) -> str | None:
        """``target_cpu=host`` compiles for this CPU's features: the cache keys it by them."""
        from backendiff.environment import host_cpu_key

        return f"cpu {host_cpu_key()}" if spec.option("target_cpu", "host") == "host" else None

    def _vmfb(self, folder: Path) -> Path:
        return folder / "model.vmfb"

    def convert(self, model: ModelView, folder: Path):
        """The imported MLIR (``model.mlir`` in ``folder``, removed once compiled), or the
        cached ``.vmfb`` when there is one."""
        vmfb = self._vmfb(folder)
        if vmfb.exists():
            self.cache_hit = True
            return vmfb
        mlir = folder / "model.mlir"
        if not mlir.exists():
            if self.route(model) == "onnx":
                write_atomic(mlir, lambda tmp: import_onnx(model.onnx_path(), tmp))
            else:
                write_atomic(mlir, lambda tmp: import_export(model.exported_program(), tmp))
        return mlir

    def compile(self, converted: Path, folder: Path) -> Compiled:
        from backendiff.precision import summarize

        vmfb = self._vmfb(folder)
        sidecar = vmfb.with_suffix(".precisions.json")

        def build(tmp: Path) -> None:  # the precision count is in place before the module that it describes
            with tempfile.TemporaryDirectory(prefix="backendiff-iree-sources-") as sources:
                compile_vmfb(converted, tmp, self.flags, Path(sources))
                counts = sources_precisions(Path(sources))
            write_atomic(sidecar, lambda path: path.write_text(json.dumps(counts)))

        if converted != vmfb:
            write_atomic(vmfb, build)
            converted.unlink(missing_ok=True)
        counts = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        out = IreeCompiled(vmfb, self.threads_option, self.variant == "fp16")
        out.info.update(driver="local-task", target_cpu=self.spec.option("target_cpu", "host"),
                        opt=self.spec.option("opt", "O0"), compile_flags=self.flags, runtime_precisions=counts)
        out.info["runtime_precision"] = summarize(counts) or self.variant
        return out
