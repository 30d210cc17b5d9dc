"""The comparison's truth for one model: its outputs in PyTorch eager fp32 on the CPU (an
``.onnx`` source: ONNX's reference evaluator, or ONNX Runtime without optimizations), the same
model in float64 (the golden run), and every layer's reference value.

Each run is made once, on first request, into a private field that starts as None (or an
empty dict, per program kind) with one accessor that fills it, as in ``artifacts``.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, NamedTuple

import numpy as np

from . import layers as L
from . import metrics as M
from .artifacts import Artifacts, to_torch
from .errors import BadInput, first_line
from .onnx_graph import mark_outputs
from .tasks import TaskData, batches

ORT_REFERENCE = "onnxruntime (graph optimizations off)"


def to_numpy(t, as_float32: bool = False) -> np.ndarray:
    """A tensor as numpy: a sparse one as its dense values (as a runtime returns them),
    bfloat16 (which numpy lacks) widened exactly to float32, every floating dtype in float32
    when ``as_float32``."""
    import torch

    t = t.detach().cpu()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.is_floating_point() and (as_float32 or t.dtype == torch.bfloat16):
        t = t.float()
    return t.numpy()


def flatten_outputs(out, as_float32: bool = False) -> tuple[list[str], list[np.ndarray]]:
    """Flatten a model's output pytree into (names, arrays) in pytree order (floating
    outputs in float32 when ``as_float32``; a bfloat16 output always, exactly: numpy has no
    bfloat16)."""
    import torch
    from torch.utils import _pytree as pytree

    leaves, _ = pytree.tree_flatten_with_path(out)
    names, arrays = [], []
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            continue
        name = "".join(pytree.keystr((k,)) for k in path)
        names.append(name.lstrip(".") or "output")
        arrays.append(to_numpy(leaf, as_float32))
    if len(names) == 1:
        names = ["output"] if names[0] in ("output", "[0]") else names
    return names, arrays


def task_outputs(run, task: TaskData, sample0: dict) -> np.ndarray:
    """The first output of ``run`` (the reference's, or a compiled backend's) on every task
    sample, batched like the model's input."""
    name, example = next(iter(sample0.items()))
    if tuple(task.inputs.shape[1:]) != tuple(example.shape[1:]):
        raise BadInput(f"task inputs have shape {task.inputs.shape[1:]} per sample, the model takes {example.shape[1:]}")
    outs = []
    for batch, real in batches(task.inputs.astype(example.dtype, copy=False), example.shape[0]):
        outs.append(np.asarray(run({name: batch})[0])[:real])
    return np.concatenate(outs)


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


class OnnxRunner(NamedTuple):
    """The reference of an ``.onnx`` source: ``kind`` ("onnx": ONNX's reference evaluator;
    "ort": ONNX Runtime, optimizations off), ``run(feeds, every=False) -> {value: array}``,
    the graph's output names, and why it is not the reference asked for (None where it is)."""

    kind: str
    run: Callable[..., dict[str, np.ndarray]]
    output_names: list[str]
    note: str | None


def _feeds(sample: dict) -> dict[str, np.ndarray]:
    return {n: np.array(a) for n, a in sample.items()}


class Reference:
    """The reference runs of the model of ``artifacts`` on ``samples`` (and on the end task's
    samples, where the run has a ``task``); ``onnx_reference`` picks an ``.onnx`` source's
    reference: auto, onnx (``onnx.reference``) or ort. Their seconds go to the artifacts'
    shared ``timings``."""

    def __init__(self, artifacts: Artifacts, samples: list[dict[str, np.ndarray]], onnx_reference: str = "auto",
                 task: TaskData | None = None):
        self.artifacts = artifacts
        self.samples = samples
        self.onnx_reference = onnx_reference
        self.task = task
        self.timings = artifacts.timings
        self._input_names = list(samples[0])
        self._outputs: tuple[list[str], list[list[np.ndarray]]] | None = None
        self._onnx: OnnxRunner | None = None
        self._golden: tuple[list[list[np.ndarray]] | None, str | None] | None = None
        self._task_outputs: np.ndarray | None = None
        self._layers: dict[str, tuple] = {}
        self._modules: dict[str, object] = {}

    # -- the outputs ------------------------------------------------------------------
    def outputs(self) -> list[list[np.ndarray]]:
        """The reference's outputs, one list of arrays per sample; run once."""
        return self._on_samples()[1]

    @property
    def output_names(self) -> list[str]:
        """The outputs' names, in order (pytree paths; an ONNX source's graph outputs), as
        the first sample's run gave them (it runs the reference where it has not run)."""
        return self._on_samples()[0]

    def _on_samples(self) -> tuple[list[str], list[list[np.ndarray]]]:
        if self._outputs is None:
            t0 = time.perf_counter()
            try:
                runs = [self._run(s) for s in self.samples]
            finally:
                self.timings["reference_s"] = time.perf_counter() - t0
            self._outputs = (runs[0][0], [arrays for _, arrays in runs])
        return self._outputs

    def on(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The reference's outputs on one more sample (task data); not kept."""
        return self._run(sample)[1]

    def on_task(self) -> np.ndarray:
        """The reference's first output on every sample of the run's end task; run once."""
        if self._task_outputs is None:
            self._task_outputs = task_outputs(self.on, self.task, self.samples[0])
        return self._task_outputs

    def _run(self, sample) -> tuple[list[str], list[np.ndarray]]:
        """(output names, arrays) of one sample."""
        if self.artifacts.has_torch:
            return self._run_torch(sample)
        runner = self._onnx_runner()
        values = runner.run(_feeds(sample))
        return runner.output_names, [np.asarray(values[name]) for name in runner.output_names]

    def _run_torch(self, sample) -> tuple[list[str], list[np.ndarray]]:
        import torch

        args = to_torch(sample, self._input_names)
        try:
            with torch.no_grad():
                out = self.artifacts.loaded.module(*args)
        except Exception as e:
            shapes = ", ".join(f"{n}{tuple(a.shape)}:{a.dtype.name}" for n, a in sample.items())
            raise BadInput(f"the model does not run on the inputs ({shapes}): {type(e).__name__}: {first_line(e)}") from None
        return flatten_outputs(out)

    # -- what computes it -------------------------------------------------------------
    @property
    def backend(self) -> str:
        """What computes the reference: PyTorch, or for an ``.onnx`` source ONNX's reference
        evaluator or ONNX Runtime with its graph optimizations off (``onnx_reference``)."""
        if self.artifacts.has_torch:
            return "torch"
        return ORT_REFERENCE if self._onnx_runner().kind == "ort" else "onnx.reference"

    @property
    def note(self) -> str | None:
        """Why the reference is not the one asked for; None where it is."""
        return None if self.artifacts.has_torch else self._onnx_runner().note

    def _onnx_runner(self) -> OnnxRunner:
        if self._onnx is None:
            self._onnx = self._make_onnx_runner()
        return self._onnx

    def _make_onnx_runner(self) -> OnnxRunner:
        """``auto`` takes ONNX's reference evaluator (the operator specification, literally)
        and falls back to ONNX Runtime, optimizations off, where the evaluator cannot read the
        graph (the note says why); ``onnx`` refuses such a graph (BadInput)."""
        import onnx

        model = onnx.load(str(self.artifacts.loaded.onnx_path))
        names = [o.name for o in model.graph.output]
        probe = _feeds(self.samples[0])
        note = None
        if self.onnx_reference != "ort":
            from onnx.reference import ReferenceEvaluator

            try:
                evaluator = ReferenceEvaluator(model)
                evaluator.run(None, probe)
                return OnnxRunner("onnx", lambda feeds, every=False: reference_values(evaluator, model, feeds, every),
                                  names, None)
            except Exception as e:  # noqa: BLE001 - the evaluator's coverage of the operator set is partial
                if self.onnx_reference == "onnx":
                    raise BadInput(f"the ONNX model does not run on onnx.reference: {type(e).__name__}: "
                                   f"{first_line(e)} (--reference ort runs ONNX Runtime without optimizations)") from None
                note = (f"onnx.reference cannot evaluate this graph ({type(e).__name__}: "
                        f"{first_line(e)[:160]}); {ORT_REFERENCE} is the reference")
        run = ort_reference(model)
        try:
            run(probe)
        except Exception as e:  # noqa: BLE001
            raise BadInput(f"the ONNX model does not run on the inputs: {type(e).__name__}: {first_line(e)}") from None
        return OnnxRunner("ort", run, names, note)

    # -- the float64 golden run -------------------------------------------------------
    def golden(self) -> tuple[list[list[np.ndarray]] | None, str | None]:
        """The same model in float64: the baseline that says how much error fp32 rounding
        alone carries. Returns (outputs per sample, None) or (None, why not); run once."""
        if self._golden is None:
            self._golden = self._run_golden()
        return self._golden

    def _run_golden(self) -> tuple[list[list[np.ndarray]] | None, str | None]:
        if not self.artifacts.has_torch:
            return None, "no float64 run for ONNX sources"
        import torch

        t0 = time.perf_counter()
        try:
            module = copy.deepcopy(self.artifacts.loaded.module).double()
            with torch.no_grad():
                outs = []
                for s in self.samples:
                    args = tuple(a.double() if a.is_floating_point() else a for a in to_torch(s, self._input_names))
                    outs.append(flatten_outputs(module(*args))[1])
            return outs, None
        except Exception as e:
            return None, f"the model does not run in float64: {type(e).__name__}: {first_line(e)}"
        finally:
            self.timings["golden_s"] = time.perf_counter() - t0

    # -- every layer's reference value ------------------------------------------------
    def layers(self, kind: str = "onnx"):
        """(layers, values): every FX node of the ``kind`` program (``Artifacts.program``) and
        its fp32 reference value on the first sample (an ``.onnx`` source: every value of its
        graph, by its reference's runner); computed once per kind."""
        if kind not in self._layers:
            t0 = time.perf_counter()
            self._layers[kind] = self._record_layers(kind)
            name = "reference_layers_s" if kind == "onnx" else f"reference_layers_{kind}_s"
            self.timings[name] = time.perf_counter() - t0
        return self._layers[kind]

    def _record_layers(self, kind: str):
        if self.artifacts.has_torch or kind != "onnx":
            graph_module = self._module(kind)
            return L.graph_layers(graph_module), L.record_nodes(graph_module, self.artifacts.example_args())
        import onnx

        layers = L.onnx_layers(onnx.load(str(self.artifacts.loaded.onnx_path), load_external_data=False))
        return layers, self._onnx_runner().run(_feeds(self.samples[0]), every=True)

    def _module(self, kind: str):
        """The ``kind`` program as a runnable graph module (made once per kind)."""
        if kind not in self._modules:
            self._modules[kind] = self.artifacts.program(kind).module()
        return self._modules[kind]

    # -- the same, streamed: values handed over as they are made, none kept -----------
    def streams(self, kind: str) -> bool:
        """Whether the ``kind`` program's layer values can be streamed (an FX program; an
        ``.onnx`` source's values come from its runner at once)."""
        return self.artifacts.has_torch or kind != "onnx"

    def layer_list(self, kind: str = "onnx") -> list:
        """The layers of the ``kind`` program, without their values."""
        if kind in self._layers:
            return self._layers[kind][0]
        return L.graph_layers(self._module(kind))

    def walk_layers(self, kind: str, on_value) -> None:
        """Every layer's fp32 reference value on the first sample, handed to ``on_value(node,
        value)`` in execution order as it is made (``layers.walk_nodes``; a view, valid during
        the call): only the live activations are held, whatever the model's depth."""
        t0 = time.perf_counter()
        L.walk_nodes(self._module(kind), self.artifacts.example_args(), on_value=on_value, copy=False)
        name = "reference_layers_s" if kind == "onnx" else f"reference_layers_{kind}_s"
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def fp64_baselines(self, kind: str, nodes: set[str]) -> dict[str, dict] | None:
        """Each of ``nodes``' fp32-reference-vs-fp64 error ({max_abs, sqnr_db}): what ordinary
        fp32 rounding gives at that layer, the two programs run in step and compared as they
        go; None where there is no PyTorch program or it does not run in float64."""
        if not self.artifacts.has_torch:
            return None
        import torch

        out: dict[str, dict] = {}

        def compare(name, r, g):
            if name in nodes and r is not None and g is not None and np.shape(r) == np.shape(g):
                m = M.compare_arrays(r, g)[0]
                out[name] = {"max_abs": m["max_abs"], "sqnr_db": m["sqnr_db"]}

        t0 = time.perf_counter()
        try:
            double = copy.deepcopy(self._module(kind)).double()
            args = self.artifacts.example_args()
            wide = [a.double() if a.is_floating_point() else a for a in args]
            L.walk_nodes((self._module(kind), args), (double, wide), on_value=compare, copy=False)
        except (RuntimeError, TypeError, ValueError, torch.fx.proxy.TraceError):
            return None
        finally:
            self.timings["layers_fp64_s"] = time.perf_counter() - t0
        return out

