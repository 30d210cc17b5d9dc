"""One model ready to compare: the loaded source, the inputs it runs on, lazily produced
export artifacts (ExportedProgram, ONNX file; cached by content), and the reference runs.
"""
from __future__ import annotations

import copy
import functools
import time
from pathlib import Path

import numpy as np

from .cache import Cache, content_key, write_atomic
from .chatter import captured
from .errors import BadInput, first_line, root_cause, trim_message
from .loading import LoadedModel


@functools.lru_cache(maxsize=1)
def _onnx_registry():
    from torch.onnx._internal.exporter import _registration

    with captured():   # the registry logs a warning per missing torchvision op
        return _registration.ONNXRegistry.from_torchlib()


class ExportFailed(Exception):
    """The model could not be exported; backends that need the export fail at stage 'export'."""

    def __init__(self, what: str, cause: BaseException):
        self.what, self.cause, self.root = what, cause, root_cause(cause)
        super().__init__(f"{what} failed: {type(self.root).__name__}: {first_line(self.root)}")


def _to_torch(sample: dict[str, np.ndarray], names: list[str]):
    import torch

    return tuple(torch.from_numpy(np.array(sample[n])) for n in names)


def flatten_outputs(out, as_float32: bool = False) -> tuple[list[str], list[np.ndarray]]:
    """Flatten a model's output pytree into (names, arrays) in pytree order (floating
    outputs in float32 when ``as_float32``: numpy has no bfloat16)."""
    import torch
    from torch.utils import _pytree as pytree

    leaves, _ = pytree.tree_flatten_with_path(out)
    names, arrays = [], []
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        name = "".join(pytree.keystr((k,)) for k in path)
        names.append(name.lstrip(".") or "output")
        if as_float32 and leaf.is_floating_point():
            leaf = leaf.float()
        arrays.append(leaf.detach().cpu().numpy())
    if len(names) == 1:
        names = ["output"] if names[0] in ("output", "[0]") else names
    return names, arrays


ORT_REFERENCE = "onnxruntime (graph optimizations off)"


def reference_values(evaluator, model, feeds: dict, every: bool) -> dict[str, np.ndarray]:
    """The graph outputs (and with ``every``, every intermediate) from ONNX's reference
    evaluator, by value name."""
    if every:
        values = evaluator.run(None, feeds, intermediate=True)
        return {k: np.asarray(v) for k, v in values.items() if isinstance(v, np.ndarray)}
    names = [o.name for o in model.graph.output]
    return dict(zip(names, (np.asarray(v) for v in evaluator.run(None, feeds))))


def ort_reference(model):
    """``run(feeds, every=False)`` on ONNX Runtime's CPU provider with every graph
    optimization off (each node its own kernel, as written); ``every`` marks every value
    with a known type as an output first."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BadInput("this ONNX model needs ONNX Runtime as its reference, which is not installed "
                       "(pip install onnxruntime)") from None
    import onnx

    from .onnx_graph import mark_outputs

    sessions = {}

    def session(every: bool):
        if every not in sessions:
            graph = onnx.shape_inference.infer_shapes(model) if every else model
            if every:
                graph = onnx.ModelProto.FromString(graph.SerializeToString())
                mark_outputs(graph, [o for n in graph.graph.node for o in n.output])
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            so.log_severity_level = 3
            sessions[every] = ort.InferenceSession(graph.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sessions[every]

    def run(feeds: dict, every: bool = False) -> dict[str, np.ndarray]:
        s = session(every)
        names = [o.name for o in s.get_outputs()]
        return dict(zip(names, (np.asarray(v) for v in s.run(names, feeds))))
    return run


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


#: the programs every model can be decomposed to without an adapter naming how
DECOMPOSITIONS = {"core_aten": lambda ep: ep.run_decompositions()}


#: how ``torch.export`` traces a Python model: ``non-strict`` (the default: runs the Python
#: code), ``strict`` (TorchDynamo), ``draft`` (``draft_export``: continues past data-dependent
#: guards by taking the example's branch, and says so)
EXPORT_MODES = ("non-strict", "strict", "draft")


class ModelHandle:
    def __init__(self, loaded: LoadedModel, samples: list[dict[str, np.ndarray]], cache: Cache,
                 export_mode: str = "non-strict", onnx_reference: str = "auto"):
        self.loaded = loaded
        self.export_mode = export_mode
        self.onnx_reference = onnx_reference   # for .onnx sources: auto, onnx (onnx.reference) or ort
        self.reference_note: str | None = None  # why the reference is not the one asked for
        self.export_info: dict = {}  # what the export said besides its program (draft issues, its own output)
        self.samples = samples
        self.cache = cache
        self.input_names = list(samples[0].keys())
        self._signature = [(n, list(a.shape), a.dtype.name) for n, a in samples[0].items()]
        self._key: str | None = None
        self.cacheable = True        # False when nothing of this model can be keyed by content
        self.timings: dict[str, float] = {}
        self.output_names: list[str] = []
        self._exported = loaded.exported
        self._export_error: ExportFailed | None = None
        self._onnx: Path | None = loaded.onnx_path
        self._onnx_error: ExportFailed | None = None
        self.onnx_from_cache = False
        self.task = None             # TaskData, when the run evaluates an end task
        self.task_reference = None   # the reference's first output on every task sample
        self._calibration_source = None
        self._calibration: list[dict[str, np.ndarray]] | None = None
        self.calibration_info: dict | None = None

    @property
    def key(self) -> str:
        """The content key of everything cached for this model: a hash of what the runtimes
        consume, never of Python source. Self-contained files (.pt2, TorchScript, .onnx) are
        keyed by their bytes; Python modules by their ExportedProgram (graph, module paths and
        source locations, signature, weights, buffers, constants), so this exports the model
        on first use. A model that does not export gets a key of its own for this run only
        and its artifacts go to a temporary folder: nothing of it is cached or reused."""
        if self._key is None:
            import torch

            base = self.loaded.content_key
            if base is None:
                try:
                    from .loading import program_key

                    base = program_key(self.exported_program())
                except ExportFailed:
                    import uuid

                    base = f"uncacheable-{uuid.uuid4().hex}"
                    self.cacheable = False
                    if self.cache.enabled:
                        self.cache = Cache(None)
            self._key = content_key("model", base, self._signature, torch.__version__)
        return self._key

    # -- calibration data (int8) --------------------------------------------------------
    def set_calibration_source(self, make) -> None:
        """``make() -> (samples, info)``, called once, when an int8 variant first asks."""
        self._calibration_source = make

    def calibration(self) -> list[dict[str, np.ndarray]]:
        if self._calibration is None:
            from .inputs import samples_sha256

            samples, info = self._calibration_source()
            self._calibration = samples
            self.calibration_info = {**info, "samples": len(samples), "sha256": samples_sha256(samples)}
        return self._calibration

    # -- export artifacts -------------------------------------------------------------
    @property
    def format(self) -> str:
        return self.loaded.format

    @property
    def has_torch(self) -> bool:
        return self.loaded.format != "onnx"

    def example_args(self):
        return _to_torch(self.samples[0], self.input_names)

    def exported_program(self):
        """The torch.export ExportedProgram (made once per run, on first request)."""
        if self._exported is not None:
            return self._exported
        if self._export_error is not None:
            raise self._export_error
        if not self.has_torch:
            raise ExportFailed("torch.export", ValueError("an ONNX model has no PyTorch program"))
        import torch

        t0 = time.perf_counter()
        try:
            with captured(streams=True) as said:
                if self.loaded.torchscript:
                    from torch._export.converter import TS2EPConverter

                    self._exported = TS2EPConverter(self.loaded.module, self.example_args()).convert()
                elif self.export_mode == "draft":
                    self._exported = torch.export.draft_export(self.loaded.module, self.example_args())
                    self.export_info["draft_issues"] = draft_issues(self._exported)
                else:
                    self._exported = torch.export.export(self.loaded.module, self.example_args(),
                                                         strict=self.export_mode == "strict")
        except Exception as e:
            self._export_error = ExportFailed("torch.export", e)
            raise self._export_error from e
        finally:
            self.timings["torch_export_s"] = self.timings.get("torch_export_s", 0.0) + time.perf_counter() - t0
            if said.text.strip():   # the exporter's own printout (an FX graph of thousands of lines)
                self.export_info["output"] = trim_message(said.text, max_lines=40, max_chars=4000)
            if said.summary():
                self.export_info["log"] = said.summary()
        return self._exported

    def onnx_path(self) -> Path:
        """The ONNX file: the source itself, or the dynamo export of the ExportedProgram
        (optimized as torch.onnx ships it), cached by content."""
        if self._onnx is not None:
            return self._onnx
        if self._onnx_error is not None:
            raise self._onnx_error
        import torch

        from .environment import package_versions

        exporter = package_versions(("onnx", "onnxscript", "onnx-ir"))
        folder = self.cache.folder("onnx", content_key("onnx", self.key, "dynamo", "optimize", exporter))
        path = folder / "model.onnx"
        if path.exists():
            self._onnx, self.onnx_from_cache = path, True
            return path
        ep = self.exported_program()
        t0 = time.perf_counter()
        try:
            with captured(streams=True) as said:     # per-op registry warnings, the optimizer's "Evaluation failed"
                program = torch.onnx.export(ep, dynamo=True, optimize=True, verbose=False)
                write_atomic(path, lambda tmp: program.save(str(tmp)))
        except Exception as e:
            self._onnx_error = ExportFailed("torch.onnx.export", e)
            raise self._onnx_error from e
        finally:
            self.timings["onnx_export_s"] = self.timings.get("onnx_export_s", 0.0) + time.perf_counter() - t0
            if said.summary():
                self.export_info["onnx_log"] = said.summary()
        self._onnx = path
        return path

    # -- reference runs ---------------------------------------------------------------
    def reference(self) -> list[list[np.ndarray]]:
        """PyTorch eager fp32 on the CPU (or the ONNX reference evaluator for ONNX sources),
        one list of output arrays per sample."""
        t0 = time.perf_counter()
        try:
            if self.has_torch:
                return [self._run_torch(self.loaded.module, s) for s in self.samples]
            return [self._run_onnx_reference(s) for s in self.samples]
        finally:
            self.timings["reference_s"] = time.perf_counter() - t0

    def reference_on(self, sample) -> list[np.ndarray]:
        """The reference's outputs on one more sample (task data)."""
        return self._run_torch(self.loaded.module, sample) if self.has_torch else self._run_onnx_reference(sample)

    def _run_torch(self, module, sample) -> list[np.ndarray]:
        import torch

        args = _to_torch(sample, self.input_names)
        try:
            with torch.no_grad():
                out = module(*args)
        except Exception as e:
            shapes = ", ".join(f"{n}{tuple(a.shape)}:{a.dtype.name}" for n, a in sample.items())
            raise BadInput(f"the model does not run on the inputs ({shapes}): {type(e).__name__}: {first_line(e)}") from None
        names, arrays = flatten_outputs(out)
        if not self.output_names:
            self.output_names = names
        return arrays

    @property
    def reference_backend(self) -> str:
        """What computes the reference: PyTorch, or for an ``.onnx`` source ONNX's reference
        evaluator or ONNX Runtime with its graph optimizations off (``onnx_reference``)."""
        if self.has_torch:
            return "torch"
        return ORT_REFERENCE if self._onnx_runner()[0] == "ort" else "onnx.reference"

    def _onnx_runner(self):
        """("onnx" | "ort", run(feeds, every=False) -> {value: array}) for an ONNX source, made
        once. ``auto`` takes ONNX's reference evaluator (the operator specification, literally)
        and falls back to ONNX Runtime, optimizations off, where the evaluator cannot read the
        graph (``reference_note`` says why); ``onnx`` refuses such a graph (BadInput)."""
        if hasattr(self, "_onnx_run"):
            return self._onnx_run
        import onnx

        model = onnx.load(str(self._onnx))
        self.output_names = [o.name for o in model.graph.output]
        probe = {n: np.array(a) for n, a in self.samples[0].items()}
        if self.onnx_reference != "ort":
            from onnx.reference import ReferenceEvaluator

            try:
                evaluator = ReferenceEvaluator(model)
                evaluator.run(None, probe)
                self._onnx_run = ("onnx", lambda feeds, every=False: reference_values(evaluator, model, feeds, every))
                return self._onnx_run
            except Exception as e:  # noqa: BLE001 - the evaluator's coverage of the operator set is partial
                if self.onnx_reference == "onnx":
                    raise BadInput(f"the ONNX model does not run on onnx.reference: {type(e).__name__}: "
                                   f"{first_line(e)} (--reference ort runs ONNX Runtime without optimizations)") from None
                self.reference_note = (f"onnx.reference cannot evaluate this graph ({type(e).__name__}: "
                                       f"{first_line(e)[:160]}); {ORT_REFERENCE} is the reference")
        self._onnx_run = ("ort", ort_reference(model))
        try:
            self._onnx_run[1](probe)
        except Exception as e:  # noqa: BLE001
            raise BadInput(f"the ONNX model does not run on the inputs: {type(e).__name__}: {first_line(e)}") from None
        return self._onnx_run

    def _run_onnx_reference(self, sample) -> list[np.ndarray]:
        values = self._onnx_runner()[1]({n: np.array(a) for n, a in sample.items()})
        return [np.asarray(values[name]) for name in self.output_names]

    def layer_program(self):
        """The ExportedProgram decomposed exactly as the ONNX exporter decomposes it, so that
        FX node names, ONNX value names and the layer rows are one key (made once)."""
        if hasattr(self, "_layer_program"):
            return self._layer_program
        import torch

        path = self._layers_folder() / "layer_program.pt2"
        if path.exists():
            self._layer_program = torch.export.load(str(path))
            return self._layer_program
        ep = copy.deepcopy(self.exported_program())
        t0 = time.perf_counter()
        try:  # the exporter's own preparation step (internal API of torch.onnx)
            from torch.onnx._internal.exporter import _core

            program = _core._prepare_exported_program_for_export(ep, registry=_onnx_registry())
        except (ImportError, AttributeError, TypeError):
            program = ep.run_decompositions()
        self.timings["layer_program_s"] = time.perf_counter() - t0
        if self.cache.enabled:  # saving costs about as much as decomposing a small model again
            try:
                write_atomic(path, lambda tmp: torch.export.save(program, str(tmp)))
            except Exception:  # a program that does not serialise is still usable in memory
                pass
        self._layer_program = program
        return program

    def _layers_folder(self) -> Path:
        from .environment import package_versions

        exporter = package_versions(("onnx", "onnxscript", "onnx-ir"))
        return self.cache.folder("onnx", content_key("layers", self.key, exporter))

    def layer_onnx(self) -> tuple[Path, list[str]]:
        """The ONNX export of ``layer_program`` without the exporter's optimizer, so every FX
        node keeps a value of its own name (nothing marked yet); cached. Returns (path, the
        FX node names that have a floating-point value in it)."""
        import onnx
        import torch

        folder = self._layers_folder()
        path, names_file = folder / "layers.onnx", folder / "nodes.txt"
        if path.exists() and names_file.exists():
            return path, names_file.read_text().split()
        if not self.has_torch:  # an ONNX source: its own graph, with every value's type inferred
            from .layers import onnx_layers

            model = onnx.shape_inference.infer_shapes(onnx.load(str(self._onnx)))
            names = [layer.node for layer in onnx_layers(model)]
            write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
            names_file.write_text("\n".join(names))
            return path, names
        program = self.layer_program()
        t0 = time.perf_counter()
        with captured(streams=True):
            model = torch.onnx.export(program, dynamo=True, optimize=False, verbose=False).model_proto
        self.timings["layers_export_s"] = time.perf_counter() - t0
        fx = {n.name for n in program.graph.nodes if n.op == "call_function"}
        names = [vi.name for vi in model.graph.value_info if vi.name in fx]
        write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
        names_file.write_text("\n".join(names))
        return path, names

    def instrumented_onnx(self) -> tuple[Path, list[str]]:
        """``layer_onnx`` with every FX node's value marked as a graph output; cached."""
        import onnx

        from .onnx_graph import mark_outputs

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
        import json

        import onnx

        from .onnx_graph import isolate

        plain, names = self.layer_onnx()
        path, meta = plain.with_name("isolated.onnx"), plain.with_name("isolated.json")
        if not (path.exists() and meta.exists()):
            model = onnx.load(str(plain))
            boundary, uncut = isolate(model, names)
            write_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
            meta.write_text(json.dumps({"boundary": boundary, "uncut": uncut}))
        info = json.loads(meta.read_text())
        return path, info["boundary"], info["uncut"]

    def core_aten_program(self):
        """The ExportedProgram decomposed to core ATen (``run_decompositions()`` with the
        default table), as importers that decompose on their own see it (TVM's
        ``from_exported_program``); made once per run."""
        return self.program("core_aten")

    def program(self, kind: str = "onnx", decompose=None):
        """The FX program layer rows are keyed on: ``onnx`` (decomposed as the ONNX exporter
        decomposes: ``layer_program``), ``core_aten`` (``core_aten_program``), or another
        kind an adapter names, made once from a copy of the ExportedProgram by its
        ``decompose(ep) -> ExportedProgram`` (the decomposition its own importer runs)."""
        if kind == "onnx":
            return self.layer_program()
        memo = self.__dict__.setdefault("_programs", {})
        if kind not in memo:
            decompose = decompose or DECOMPOSITIONS.get(kind)
            if decompose is None:
                raise KeyError(f"no program {kind!r} was made for this model")
            t0 = time.perf_counter()
            memo[kind] = decompose(copy.deepcopy(self.exported_program()))
            self.timings[f"program_{kind}_s"] = time.perf_counter() - t0
        return memo[kind]

    def reference_layers(self, kind: str = "onnx"):
        """(layers, values): every FX node of the ``kind`` program (``program``) and its fp32
        reference value on the first sample; computed once per kind."""
        if kind != "onnx":
            memo = self.__dict__.setdefault("_reference_layers_by_kind", {})
            if kind not in memo:
                from .layers import graph_layers, record_nodes

                t0 = time.perf_counter()
                graph_module = self.program(kind).module()
                memo[kind] = (graph_layers(graph_module), record_nodes(graph_module, self.example_args()))
                self.timings[f"reference_layers_{kind}_s"] = time.perf_counter() - t0
            return memo[kind]
        if not hasattr(self, "_reference_layers"):
            from .layers import graph_layers, onnx_layers, record_nodes

            t0 = time.perf_counter()
            if self.has_torch:
                graph_module = self.layer_program().module()
                values = record_nodes(graph_module, self.example_args())
                layers = graph_layers(graph_module)
            else:  # ONNX source: the reference's runner, every intermediate kept
                import onnx

                layers = onnx_layers(onnx.load(str(self._onnx), load_external_data=False))
                values = self._onnx_runner()[1]({n: np.array(a) for n, a in self.samples[0].items()}, every=True)
            self.timings["reference_layers_s"] = time.perf_counter() - t0
            self._reference_layers = (layers, values)
        return self._reference_layers

    def reference_layers_fp64(self, kind: str = "onnx") -> dict | None:
        """Every layer's value in float64 (the ``kind`` program run in double), or None where
        the model does not run in float64: what fp32 rounding alone does to each layer."""
        memo = self.__dict__.setdefault("_reference_layers_fp64", {})
        if kind not in memo:
            memo[kind] = None
            if self.has_torch:
                import torch

                from .layers import record_nodes

                try:
                    graph_module = copy.deepcopy(self.program(kind).module()).double()
                    args = [a.double() if a.is_floating_point() else a for a in self.example_args()]
                    memo[kind] = record_nodes(graph_module, args)
                except (RuntimeError, TypeError, ValueError, torch.fx.proxy.TraceError):
                    pass
        return memo[kind]

    def output_layer_names(self, kind: str = "onnx") -> list[str]:
        """The layers (FX nodes, or ONNX values) that are the model's outputs, in order."""
        if self.has_torch:
            from .layers import output_nodes

            return output_nodes(self.program(kind).graph)
        import onnx

        return [o.name for o in onnx.load(str(self._onnx), load_external_data=False).graph.output]

    def golden_outputs(self) -> list[list[np.ndarray]] | None:
        """The fp64 golden outputs (per sample), or None where there is none; run once."""
        return self.golden()[0]

    def golden(self) -> tuple[list[list[np.ndarray]] | None, str | None]:
        """The same model in float64: the baseline that says how much error fp32 rounding
        alone carries. Returns (outputs per sample, None) or (None, why not); run once."""
        if hasattr(self, "_golden"):
            return self._golden
        if not self.has_torch:
            self._golden = (None, "no float64 run for ONNX sources")
            return self._golden
        import torch

        t0 = time.perf_counter()
        try:
            module = copy.deepcopy(self.loaded.module).double()
            with torch.no_grad():
                outs = []
                for s in self.samples:
                    args = tuple(a.double() if a.is_floating_point() else a for a in _to_torch(s, self.input_names))
                    outs.append(flatten_outputs(module(*args))[1])
            self._golden = (outs, None)
        except Exception as e:
            self._golden = (None, f"the model does not run in float64: {type(e).__name__}: {first_line(e)}")
        finally:
            self.timings["golden_s"] = time.perf_counter() - t0
        return self._golden
