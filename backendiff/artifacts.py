"""What the runtimes consume of one model, made on first request and cached by content: the
ExportedProgram, the ONNX export and its layer-view variants (plain, instrumented, isolated),
the programs decomposed per importer, and the content key all of them are cached under.

Every lazy value is a private field that starts as None (or an empty dict, per kind) with one
accessor that fills it. An export that failed is kept as its ``ExportFailed`` and raised again
by the accessor: a model is exported at most once per run, whichever backend asks. It is also
translated to ONNX at most once: the deployed ONNX (that translation optimized), the layer
view's ONNX (the same translation before the optimizer) and the program the layer rows are
keyed on (what the translation was made from) all come from one ``torch.onnx.export``.
"""
from __future__ import annotations

import contextlib
import functools
import json
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import layers as L
from .cache import Cache, content_key, write_atomic
from .chatter import captured, summarize
from .environment import package_versions
from .errors import first_line, root_cause, trim_message
from .loading import LoadedModel, program_key
from .onnx_graph import isolate, mark_outputs

#: how ``torch.export`` traces a Python model: ``non-strict`` (the default: runs the Python
#: code), ``strict`` (TorchDynamo), ``draft`` (``draft_export``: continues past data-dependent
#: guards by taking the example's branch, and says so)
EXPORT_MODES = ("non-strict", "strict", "draft")

#: the programs every model can be decomposed to without an adapter naming how
DECOMPOSITIONS = {"core_aten": lambda ep: ep.run_decompositions(), "onnx": lambda ep: prepare_for_onnx(ep)}


class ExportFailed(Exception):
    """The model could not be exported; backends that need the export fail at stage 'export'."""

    def __init__(self, what: str, cause: BaseException):
        self.what, self.cause, self.root = what, cause, root_cause(cause)
        super().__init__(f"{what} failed: {type(self.root).__name__}: {first_line(self.root)}")


class Keyed(NamedTuple):
    """The model's content key, whether it is one (False: the model does not export, so the
    key is this run's own), and the cache its artifacts go to (a temporary one when not)."""

    key: str
    cacheable: bool
    cache: Cache


def to_torch(sample: dict[str, np.ndarray], names: list[str]) -> tuple:
    """The sample's arrays as torch tensors, in the order of ``names``."""
    import torch

    return tuple(torch.from_numpy(np.array(sample[n])) for n in names)


def raise_failed(outcome):
    """``outcome`` itself, or raised where it is the ``ExportFailed`` a made-once export kept."""
    if isinstance(outcome, ExportFailed):
        raise outcome from outcome.cause
    return outcome


@functools.lru_cache(maxsize=1)
def _onnx_registry():
    """torch.onnx's registry of ATen translations (a copy of the process's one: see
    ``torchlib_registry_once``)."""
    from torch.onnx._internal.exporter import _registration

    with torchlib_registry_once():
        return _registration.ONNXRegistry.from_torchlib()


def prepare_for_onnx(ep):
    """``ep`` (consumed) as the ONNX exporter's own preparation step decomposes it (internal
    API of torch.onnx; the default decompositions where it is missing)."""
    try:
        from torch.onnx._internal.exporter import _core

        return _core._prepare_exported_program_for_export(ep, registry=_onnx_registry())
    except (ImportError, AttributeError, TypeError):
        return ep.run_decompositions()


def draft_issues(ep) -> list[str]:
    """One line per issue ``draft_export`` found (a guard it could not decide and took the
    example's branch for), with the user's source line: ``data dependent error `u0 > 10`
    (took True) at model.py:14: if keep.shape[0] > 10:``."""
    report = getattr(ep, "_report", None)
    names = getattr(report, "str_to_filename", {}) or {}
    out = []
    for failure in getattr(report, "failures", []) or []:
        kind = str(getattr(failure, "failure_type", "")).rsplit(".", 1)[-1].lower().replace("_", " ")
        data = getattr(failure, "data", None)
        data = data if isinstance(data, dict) else {}
        frames = [f for f in data.get("user_stack") or [] if isinstance(f, dict)
                  and "/torch/" not in str(names.get(f.get("filename"), f.get("filename")))]
        where = ""
        if frames:
            f = frames[-1]
            where = f" at {Path(str(names.get(f['filename'], f['filename']))).name}:{f.get('line')}: {f.get('loc', '')}"
        took = f" (took {data['result']})" if data.get("result") else ""
        out.append(f"{kind or 'issue'}" + (f" `{data['expr']}`" if data.get("expr") else "") + took + where)
    return out


#: where an initializer of ``_without_weights`` says its data is (until ``_with_weights`` fills it in)
_PENDING = "backendiff:weights-pending"


def _without_weights(model) -> tuple:
    """The ONNX IR ``model`` as it is now, as a ModelProto whose main-graph initializers hold
    no data yet (an external-data reference to ``_PENDING``), and their tensors by name: the
    graph is copied now, before ``model`` is optimized in place; the weights, which the
    optimizer does not change, are read when the proto is completed (``_with_weights``). It
    costs no weight copy and leaves no IR objects alive (an ``ir.Model.clone()`` would share
    tensors that the optimizer renames, and hold thousands of objects the garbage collector
    then walks)."""
    import onnx_ir as ir

    graph, held = model.graph, {}
    try:
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if tensor is not None:
                held[name] = tensor
                value.const_value = ir.ExternalTensor(_PENDING, None, None, tensor.dtype, shape=tensor.shape, name=name)
        proto = ir.serde.serialize_model(model)
    finally:       # the model as it was, whatever happened
        for name, tensor in held.items():
            graph.initializers[name].const_value = tensor
    return proto, held


def _with_weights(proto, held: dict):
    """``proto`` of ``_without_weights`` with its initializers' data filled in: the ModelProto
    ``ir.serde.serialize_model`` gave for the model then."""
    import onnx
    import onnx_ir as ir

    for init in proto.graph.initializer:
        tensor = held.get(init.name)
        if tensor is not None and init.data_location == onnx.TensorProto.EXTERNAL:
            full = ir.serde.serialize_tensor(tensor)
            full.name = init.name
            init.CopyFrom(full)
    return proto


def _exporter_versions() -> dict:
    """The ONNX exporter's packages, part of the key of every ONNX file it writes."""
    return package_versions(("onnx", "onnxscript", "onnx-ir"))


def sharing_weights_of(program, ep):
    """``program`` (read back from the cache) with each weight that equals ``ep``'s of the
    same name replaced by ``ep``'s tensor: one copy of the model in memory, not two."""
    import torch

    mine = L.program_weights(ep)
    for table in (program.state_dict, program.constants):
        for name, t in list(table.items()):
            other = mine.get(name)
            if isinstance(t, torch.Tensor) and other is not None and type(t) is type(other) \
                    and t.shape == other.shape and t.dtype == other.dtype and torch.equal(t, other):
                table[name] = other
    return program


@functools.cache
def _torchlib_registry(opset_version: int):
    """torch.onnx's registry of ATen translations at one opset, built once per process (it
    turns every torchlib function into IR: 0.35 s on every export, the same each time)."""
    from torch.onnx._internal.exporter import _registration

    with captured():   # the registry logs a warning per missing torchvision op
        return _FROM_TORCHLIB[0](_registration.ONNXRegistry, opset_version=opset_version)


_FROM_TORCHLIB: list = []


@contextlib.contextmanager
def torchlib_registry_once():
    """Within the block, ``torch.onnx.export`` starts from a copy of the process's one
    registry instead of building it again (the exporter only adds to its copy's lists: custom
    translations). A torch without that registry exports as it would."""
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        original = cls.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        yield
        return
    if not _FROM_TORCHLIB:
        _FROM_TORCHLIB.append(original.__func__)

    def from_torchlib(klass, opset_version=_registration._constants.TORCHLIB_OPSET):
        built = _torchlib_registry(opset_version)
        registry = klass()
        registry._opset_version = built._opset_version
        registry.functions = {name: list(entries) for name, entries in built.functions.items()}
        return registry

    cls.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        cls.from_torchlib = original


class Artifacts:
    """The export artifacts of one model on the inputs of ``sample`` (the first sample: the
    example the export traces, and the input signature of the key). ``timings`` is the run's
    shared dict each export adds its seconds to; ``export_info`` what the exporters said
    besides their program (draft issues, their own printout and logs)."""

    def __init__(self, loaded: LoadedModel, sample: dict[str, np.ndarray], cache: Cache,
                 export_mode: str = "non-strict", timings: dict[str, float] | None = None):
        self.loaded = loaded
        self.export_mode = export_mode
        self.timings = {} if timings is None else timings
        self.export_info: dict = {}
        self.onnx_from_cache = False   # the ONNX export was found in the cache, not made by this run
        self._cache = cache
        self._sample = sample
        self._input_names = list(sample)
        self._keyed: Keyed | None = None
        self._exported = loaded.exported
        self._onnx = loaded.onnx_path
        self._programs: dict = {}
        # the one ONNX translation of this run (``_translate``): the ONNXProgram, unoptimized,
        # while the deployed file is still to be made from it (or its ExportFailed); what the
        # exporter logged making it; the program it was made from (the exporter's prepared
        # ExportedProgram: the ``onnx`` program); and the unoptimized model kept for the layer
        # view when the deployed file was made first (``_without_weights``)
        self._translation = None
        self._translation_lines: list[str] = []
        self._prepared = None
        self._layer_model = None

    @property
    def has_torch(self) -> bool:
        """Whether the model has a PyTorch form (an ``.onnx`` source has none)."""
        return self.loaded.format != "onnx"

    # -- the content key --------------------------------------------------------------
    def keyed(self) -> Keyed:
        """The content key of everything cached for this model: a hash of what the runtimes
        consume, never of Python source. Self-contained files (.pt2, TorchScript, .onnx) are
        keyed by their bytes; Python modules by their ExportedProgram (graph, module paths and
        source locations, signature, weights, buffers, constants), so this exports the model
        on first use. A model that does not export gets a key of its own for this run only
        and its artifacts go to a temporary folder: nothing of it is cached or reused."""
        if self._keyed is None:
            self._keyed = self._make_key()
        return self._keyed

    @property
    def key(self) -> str:
        return self.keyed().key

    @property
    def cacheable(self) -> bool:
        return self.keyed().cacheable

    @property
    def cache(self) -> Cache:
        return self.keyed().cache

    def _make_key(self) -> Keyed:
        import torch

        signature = [(n, list(a.shape), a.dtype.name) for n, a in self._sample.items()]
        base, cacheable, cache = self.loaded.content_key, True, self._cache
        if base is None:
            try:
                base = program_key(self.exported_program())
            except ExportFailed:
                base, cacheable = f"uncacheable-{uuid.uuid4().hex}", False
                cache = Cache(None) if cache.enabled else cache
        return Keyed(content_key("model", base, signature, torch.__version__), cacheable, cache)

    # -- the export and the ONNX file -------------------------------------------------
    def example_args(self) -> tuple:
        """The first sample as torch tensors, in input order (what the export traces)."""
        return to_torch(self._sample, self._input_names)

    def exported_program(self):
        """The torch.export ExportedProgram (made once per run, on first request)."""
        if self._exported is None:
            self._exported = self._export()
        return raise_failed(self._exported)

    def _export(self):
        """The ExportedProgram by ``export_mode``, or the ``ExportFailed`` that says why not."""
        if not self.has_torch:
            return ExportFailed("torch.export", ValueError("an ONNX model has no PyTorch program"))
        import torch

        t0 = time.perf_counter()
        try:
            with captured(streams=True) as said:
                if self.loaded.torchscript:
                    from torch._export.converter import TS2EPConverter

                    return TS2EPConverter(self.loaded.module, self.example_args()).convert()
                if self.export_mode == "draft":
                    ep = torch.export.draft_export(self.loaded.module, self.example_args())
                    self.export_info["draft_issues"] = draft_issues(ep)
                    return ep
                return torch.export.export(self.loaded.module, self.example_args(), strict=self.export_mode == "strict")
        except Exception as e:
            return ExportFailed("torch.export", e)
        finally:
            self.timings["torch_export_s"] = self.timings.get("torch_export_s", 0.0) + time.perf_counter() - t0
            if said.text.strip():   # the exporter's own printout (an FX graph of thousands of lines)
                self.export_info["output"] = trim_message(said.text, max_lines=40, max_chars=4000)
            if said.summary():
                self.export_info["log"] = said.summary()

    def onnx_path(self) -> Path:
        """The ONNX file: the source itself, or the dynamo export of the ExportedProgram
        (optimized as torch.onnx ships it), cached by content."""
        if self._onnx is None:
            self._onnx = self._export_onnx()
        return raise_failed(self._onnx)

    def _export_onnx(self):
        """The cached or newly written ONNX export, or the ``ExportFailed`` of torch.onnx (a
        failed torch.export raises: it is not this export's failure to keep). The file is what
        ``torch.onnx.export(ep, dynamo=True, optimize=True)`` gives: this run's one translation
        (``_translate``, unoptimized), then the exporter's optimizer on it. Where the layer
        view's ONNX is not in the cache, the unoptimized model is kept for it first (its graph,
        over the same weights: it costs no second translation)."""
        path = self._deployed_path()
        if path.exists():
            self.onnx_from_cache = True
            return path
        self.exported_program()
        t0 = time.perf_counter()
        said = captured(streams=True)      # per-op registry warnings, the optimizer's "Evaluation failed"
        try:
            program = self._translate()
            self._translation = None       # optimized in place below: nothing else is made from it
            if self._layer_model is None and not self._layers_cached():
                try:
                    self._layer_model = _without_weights(program.model)
                except Exception:  # noqa: BLE001 - the layer view translates on its own then
                    self._layer_model = None
            with said:
                program.optimize()
                write_atomic(path, lambda tmp: program.save(str(tmp)))
        except ExportFailed as failed:
            return failed
        except Exception as e:
            return ExportFailed("torch.onnx.export", e)
        finally:
            self.timings["onnx_export_s"] = self.timings.get("onnx_export_s", 0.0) + time.perf_counter() - t0
            log = summarize(self._translation_lines + said.lines)
            if log:
                self.export_info["onnx_log"] = log
        return path

    def _translate(self):
        """This run's one ONNX translation of the ExportedProgram, made on first request:
        ``torch.onnx.export(ep, dynamo=True, optimize=False)`` (the exporter prepares the
        program, translates it and converts the opset; ``optimize=True`` is that and then
        ``ONNXProgram.optimize()``). Keeps the program it translated (``_prepared``) and what
        the exporter logged; a failure is kept as ``ExportFailed`` and raised again (a failed
        torch.export raises its own)."""
        if self._translation is None:
            import torch

            ep = self.exported_program()
            said = captured(streams=True)
            try:
                with said, torchlib_registry_once():
                    program = torch.onnx.export(ep, dynamo=True, optimize=False, verbose=False)
                self._translation, self._prepared = program, program.exported_program
            except Exception as e:
                self._translation = ExportFailed("torch.onnx.export", e)
            self._translation_lines = said.lines
        return raise_failed(self._translation)

    def _deployed_path(self) -> Path:
        return self._cache_folder("onnx", "dynamo", "optimize") / "model.onnx"

    def _cache_folder(self, kind: str, *parts) -> Path:
        """The cache folder of an ONNX artifact ``kind`` of this model (by the exporter's versions)."""
        return self.cache.folder("onnx", content_key(kind, self.key, *parts, _exporter_versions()))

    # -- the programs the layer rows are keyed on -------------------------------------
    def program(self, kind: str = "onnx", decompose=None):
        """The FX program layer rows are keyed on, made once per kind: ``onnx`` (decomposed
        exactly as the ONNX exporter decomposes it, so that FX node names, ONNX value names
        and the layer rows are one key; cached on disk), ``core_aten`` (``run_decompositions()``
        with the default table, as importers that decompose on their own see it: TVM's
        ``from_exported_program``), or another kind an adapter names, made from a copy of the
        ExportedProgram by its ``decompose(ep) -> ExportedProgram`` (its importer's own)."""
        if kind not in self._programs:
            self._programs[kind] = self._onnx_program() if kind == "onnx" else self._decomposed(kind, decompose)
        return self._programs[kind]

    def _decomposed(self, kind: str, decompose):
        decompose = decompose or DECOMPOSITIONS.get(kind)
        if decompose is None:
            raise KeyError(f"no program {kind!r} was made for this model")
        t0 = time.perf_counter()
        program = decompose(L.copy_sharing_weights(self.exported_program()))
        self.timings[f"program_{kind}_s"] = time.perf_counter() - t0
        return program

    def _onnx_program(self):
        """The ExportedProgram through the ONNX exporter's own preparation step: the one this
        run's ONNX translation was made from where there was one, else read back from the
        cache, else prepared here (saved in the cache)."""
        import torch

        path = self._cache_folder("layers") / "layer_program.pt2"
        if self._prepared is not None:
            program = self._prepared
            if self.cache.enabled and not path.exists():
                try:
                    write_atomic(path, lambda tmp: torch.export.save(program, str(tmp)))
                except Exception:  # a program that does not serialise is still usable in memory
                    pass
            return program
        if path.exists():
            return sharing_weights_of(torch.export.load(str(path)), self.exported_program())
        ep = L.copy_sharing_weights(self.exported_program())
        t0 = time.perf_counter()
        program = prepare_for_onnx(ep)
        self.timings["layer_program_s"] = time.perf_counter() - t0
        if self.cache.enabled:  # saving costs about as much as decomposing a small model again
            try:
                write_atomic(path, lambda tmp: torch.export.save(program, str(tmp)))
            except Exception:  # a program that does not serialise is still usable in memory
                pass
        return program

    def output_layer_names(self, kind: str = "onnx") -> list[str]:
        """The layers (FX nodes, or ONNX values) that are the model's outputs, in order."""
        if self.has_torch:
            return L.output_nodes(self.program(kind).graph)
        import onnx

        return [o.name for o in onnx.load(str(self.loaded.onnx_path), load_external_data=False).graph.output]

    # -- the ONNX files of the layer view (cached on disk, never in memory) -----------
    def _layers_cached(self) -> bool:
        folder = self._cache_folder("layers")
        return (folder / "layers.onnx").exists() and (folder / "nodes.txt").exists()

    def layer_onnx(self) -> tuple[Path, list[str]]:
        """The ONNX export of the ``onnx`` program without the exporter's optimizer, so every
        FX node keeps a value of its own name (nothing marked yet); cached. Returns (path, the
        FX node names that have a floating-point value in it). It is this run's one ONNX
        translation before the optimizer: kept by the deployed export where that came first,
        else made here (and kept, unoptimized, for the deployed export to come)."""
        import onnx

        folder = self._cache_folder("layers")
        path, names_file = folder / "layers.onnx", folder / "nodes.txt"
        if path.exists() and names_file.exists():
            return path, names_file.read_text().split()
        if not self.has_torch:  # an ONNX source: its own graph, with every value's type inferred
            model = onnx.shape_inference.infer_shapes(onnx.load(str(self.loaded.onnx_path)))
            names = [layer.node for layer in L.onnx_layers(model)]
        else:
            t0 = time.perf_counter()
            model = self._unoptimized_model()
            self.timings["layers_export_s"] = time.perf_counter() - t0
            program = self.program("onnx")
            fx = {n.name for n in program.graph.nodes if n.op == "call_function"}
            names = [vi.name for vi in model.graph.value_info if vi.name in fx]
        write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
        names_file.write_text("\n".join(names))
        return path, names

    def _unoptimized_model(self):
        """This run's ONNX translation before the optimizer, as a ModelProto (see ``layer_onnx``).
        A failed translation raises the exporter's own error, as the layer view always has."""
        if self._layer_model is not None:
            kept, self._layer_model = self._layer_model, None
            return _with_weights(*kept)
        failed = None
        try:
            proto = self._translate().model_proto
        except ExportFailed as e:
            if e.what != "torch.onnx.export":
                raise
            failed = e
        if failed is not None:  # raised here, not in the handler: its own chain (the real error) stays as it is
            raise failed.cause
        if self._onnx is not None or self._deployed_path().exists():   # nothing else is made from it
            self._translation = None
        return proto

    def instrumented_onnx(self) -> tuple[Path, list[str]]:
        """``layer_onnx`` with every FX node's value marked as a graph output; cached."""
        import onnx

        plain, names = self.layer_onnx()
        path = plain.with_name("instrumented.onnx")
        if not path.exists():
            model = onnx.load(str(plain))
            marked = mark_outputs(model, names)
            write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
            path.with_name("marked.txt").write_text("\n".join(marked))
        return path, path.with_name("marked.txt").read_text().split()

    def isolated_onnx(self) -> tuple[Path, dict[str, str], int]:
        """``layer_onnx`` with every layer cut loose from the others (``onnx_graph.isolate``);
        cached. Returns (path, graph input -> FX value fed to it, uncut edges)."""
        import onnx

        plain, names = self.layer_onnx()
        path, meta = plain.with_name("isolated.onnx"), plain.with_name("isolated.json")
        if not (path.exists() and meta.exists()):
            model = onnx.load(str(plain))
            boundary, uncut = isolate(model, names)
            write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
            meta.write_text(json.dumps({"boundary": boundary, "uncut": uncut}))
        info = json.loads(meta.read_text())
        return path, info["boundary"], info["uncut"]
