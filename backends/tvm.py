"""Apache TVM Relax, compiled for the CPU (target ``llvm``).

Route ``export`` (default) imports the ExportedProgram with
``relax.frontend.torch.from_exported_program``; ``route=onnx`` imports the dynamo ONNX
export with ``relax.frontend.onnx.from_onnx``. The compiled library is cached as a shared
object (``export_library``) and reloaded with ``tvm.runtime.load_module``.

Options: ``opt=0..3`` (the ``PassContext`` optimization level), ``target``. Variant
``fp16`` applies ``relax.transform.ToMixedPrecision(out_dtype="float16")``: inputs and
outputs stay fp32, convolutions and matmuls compute and accumulate in fp16 (``accum=fp32``:
fp16 operands, fp32 accumulation), ops Relax keeps in fp32 (batch norm, ...) stay there. The precision of every operator call
is counted on the transformed module and kept beside the cached library.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from backendiff.cache import write_atomic
from backendiff.contract import ModelView
from backendiff.errors import BackendUnavailable

from .base import Adapter, Compiled, FailedNodes, as_float32, feeds_in_order

#: Relax's importer of ExportedPrograms (after the default decompositions) lacks a converter
UNSUPPORTED = re.compile(r"Unsupported function types \[([^\]]*)\]")


def constants_as_tensors(graph) -> None:
    """Rewrite ``Constant`` nodes holding ``value_int(s)`` / ``value_float(s)`` (as the
    unoptimized dynamo export writes them) into the ``value`` tensor form, the only one
    Relax's ONNX importer reads. In place."""
    from onnx import TensorProto, helper

    kinds = {"value_int": (TensorProto.INT64, False), "value_ints": (TensorProto.INT64, True),
             "value_float": (TensorProto.FLOAT, False), "value_floats": (TensorProto.FLOAT, True)}
    for node in graph.graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name not in kinds:
            continue
        attr = node.attribute[0]
        dtype, is_list = kinds[attr.name]
        value = helper.get_attribute_value(attr)
        values = list(value) if is_list else [value]
        tensor = helper.make_tensor(node.output[0], dtype, [len(values)] if is_list else [], values)
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("value", tensor))


def fold_initializer_shapes(graph) -> None:
    """Fold what is computed from constants alone (the unoptimized export builds e.g. a
    conv's zero bias with Shape and Expand of its weight), which Relax's ONNX importer cannot
    read ('ShapeType' has no shape). Exact; graph outputs, the marked layers among them,
    stay. In place, with onnxscript's constant folder."""
    from onnxscript.optimizer import fold_constants

    fold_constants(graph)


def relax_ops(mod) -> list[tuple[str, str]]:
    """(operator name, output dtype) of every operator call in a Relax module's ``main``."""
    from tvm import relax

    out = []
    func = mod["main"]
    for block in getattr(func.body, "blocks", []):
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and hasattr(value.op, "name"):
                info = getattr(binding.var, "ty", None) or getattr(binding.var, "struct_info", None)
                dtype = getattr(info, "dtype", None)
                out.append((str(value.op.name), str(dtype) if dtype is not None else ""))
    return out


def flatten(value) -> list[np.ndarray]:
    """TVM VM results (a tensor or nested arrays of them) as a flat list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out = []
    for item in value:
        out.extend(flatten(item))
    return out


class TvmCompiled(Compiled):
    def __init__(self, lib):
        import tvm
        from tvm import relax

        super().__init__()
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(lib, self.device)
        self._tensor = tvm.runtime.tensor

    def run(self, sample):
        args = [self._tensor(np.array(a), self.device) for a in sample.values()]
        return flatten(self.vm["main"](*args))


class TvmAdapter(Adapter):
    name = "tvm"
    description = "Apache TVM Relax, target llvm, from the ExportedProgram (route=onnx: from the ONNX export)"
    packages = {"tvm": "apache-tvm"}
    preload_modules = ("tvm.relax", "tvm.relax.frontend.torch")
    extra = "tvm"
    variants = ("fp32", "fp16")
    options = {"route": ("export", "onnx"), "target": None, "opt": ("0", "1", "2", "3"), "accum": ("fp16", "fp32")}
    defaults = {"route": "export", "target": "llvm", "opt": "3"}

    @classmethod
    def threads(cls, spec) -> int | str:
        import os

        value = os.environ.get("TVM_NUM_THREADS", "")
        return int(value) if value.isdigit() else super().threads(spec)

    @property
    def layers_from(self) -> str:
        if self.spec.option("route") == "onnx":
            return ("TVM Relax imported from the ONNX export without the exporter's optimizer (the onnx route), "
                    "every FX node's value marked as an output, same variant and opt level (marking outputs can "
                    "change fusion; final outputs are measured on the unmodified model)")
        return ("TVM Relax imported from the ExportedProgram (the deployed export route: the same core-ATen "
                "decomposition, from_exported_program), every node's value returned as an output, same variant "
                "and opt level (returning values can change fusion; final outputs are measured on the "
                "unmodified model)")

    def layers_program(self, model: ModelView) -> str:
        return "onnx" if self.route(model) == "onnx" else "core_aten"

    @classmethod
    def failed_nodes(cls, error: dict) -> FailedNodes | None:
        if (m := UNSUPPORTED.search(error.get("message") or "")) and (names := re.findall(r"'([\w.]+)'", m.group(1))):
            return FailedNodes(lambda ep: ep.run_decompositions(), frozenset(names))
        return super().failed_nodes(error)

    def run_onnx(self, path, originals, named):
        import onnx
        from tvm.relax.frontend.onnx import from_onnx

        import tvm

        graph = onnx.load(str(path))
        fold_initializer_shapes(graph)
        constants_as_tensors(graph)
        initializers = {i.name for i in graph.graph.initializer}
        inputs = [i.name for i in graph.graph.input if i.name not in initializers]
        arrays = feeds_in_order(inputs, originals, named)
        shapes = {n: list(a.shape) for n, a in zip(inputs, arrays)}
        dtypes = {n: a.dtype.name for n, a in zip(inputs, arrays)}
        mod = self._lower(from_onnx(graph, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False))
        with tvm.transform.PassContext(opt_level=int(self.spec.option("opt", "3"))):
            lib = tvm.compile(mod, target=tvm.target.Target(self.spec.option("target", "llvm")))
        outputs = TvmCompiled(lib).run(dict(zip(inputs, arrays)))
        return as_float32(dict(zip([o.name for o in graph.graph.output], outputs)))

    def layer_values(self, model: ModelView, sample):
        if self.route(model) == "onnx":
            path, _ = model.instrumented_onnx()
            return self.run_onnx(path, list(sample.values()), {})
        return self.run_export_layers(model, sample)

    def _compile_program(self, program):
        """An ExportedProgram already decomposed to core ATen, imported, lowered and compiled
        as the deployed export route does (no second decomposition)."""
        from tvm.relax.frontend.torch import from_exported_program

        import tvm

        mod = self._lower(from_exported_program(program, keep_params_as_input=False, run_ep_decomposition=False))
        with tvm.transform.PassContext(opt_level=int(self.spec.option("opt", "3"))):
            return TvmCompiled(tvm.compile(mod, target=tvm.target.Target(self.spec.option("target", "llvm"))))

    def bisect(self, model: ModelView, sample, out_of_tolerance):
        if self.route(model) == "onnx":
            return super().bisect(model, sample, out_of_tolerance)
        from backendiff.bisect import bisect_program

        layers, reference = model.reference_layers("core_aten")
        found = bisect_program(lambda prefix: as_float32({"v": self._compile_program(prefix).run(sample)[0]})["v"],
                               model.program("core_aten"), [layer.node for layer in layers], reference,
                               out_of_tolerance)
        return found | {"graph": ("prefixes of the core-ATen ExportedProgram (the deployed export route), each "
                                  "imported and compiled unmodified with one output"), "program": "core_aten"}

    def run_export_layers(self, model: ModelView, sample):
        """The deployed route with every node's value returned: the core-ATen program (what
        ``from_exported_program`` decomposes the ExportedProgram to) with its nodes appended
        to the outputs, imported without decomposing again, lowered and compiled as the
        deployed model. Returns node name -> value (float32)."""
        from backendiff.layers import program_with_outputs

        layers, _ = model.reference_layers("core_aten")
        program, added = program_with_outputs(model.program("core_aten"), [layer.node for layer in layers])
        outputs = self._compile_program(program).run(sample)
        own = model.output_layer_names("core_aten")
        names = own + added
        if len(outputs) != len(names):
            raise RuntimeError(f"the instrumented Relax module returned {len(outputs)} values for {len(names)} nodes")
        return as_float32(dict(zip(names, outputs)))

    def _lower(self, mod):
        """The variant's transformation of an imported module (fp16: ToMixedPrecision)."""
        if self.variant != "fp16":
            return mod
        from tvm import relax

        accum = "float32" if self.spec.option("accum") == "fp32" else "float16"
        try:
            return relax.transform.ToMixedPrecision(out_dtype=accum)(mod)
        except Exception as e:
            raise BackendUnavailable(f"Relax cannot convert this model to fp16: {type(e).__name__}: {e}") from None

    def convert(self, model: ModelView, folder: Path):
        lib = folder / "model.so"
        if lib.exists():
            self.cache_hit = True
            return lib
        if self.route(model) == "onnx":
            import onnx
            from tvm.relax.frontend.onnx import from_onnx

            shapes = {n: list(a.shape) for n, a in model.samples[0].items()}
            dtypes = {n: a.dtype.name for n, a in model.samples[0].items()}
            mod = from_onnx(onnx.load(str(model.onnx_path())), shape_dict=shapes, dtype_dict=dtypes,
                            keep_params_in_input=False)
        else:
            from tvm.relax.frontend.torch import from_exported_program

            mod = from_exported_program(model.exported_program(), keep_params_as_input=False)
        return self._lower(mod)

    def compile(self, converted, folder: Path) -> Compiled:
        import tvm
        from backendiff.precision import relax_compute_precisions, summarize

        target = self.spec.option("target", "llvm")
        opt = int(self.spec.option("opt", "3"))
        sidecar = folder / "precisions.json"
        if isinstance(converted, Path):
            lib = tvm.runtime.load_module(str(converted))
            counts = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        else:
            counts = relax_compute_precisions(relax_ops(converted))
            with tvm.transform.PassContext(opt_level=opt):
                lib = tvm.compile(converted, target=tvm.target.Target(target))
            sidecar.write_text(json.dumps(counts))
            write_atomic(folder / "model.so", lambda tmp: lib.export_library(str(tmp)))  # format by suffix
        out = TvmCompiled(lib)
        out.info.update(target=target, opt=opt, runtime_precisions=counts)
        out.info["runtime_precision"] = summarize(counts) or self.variant
        return out
