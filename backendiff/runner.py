"""One backend's run: convert, compile, run on the samples, compare with the reference, then
the layer view and the mixed-precision advice; every failure is data in its result. Used by
``compare`` (one run per backend), ``sysnoise`` (its columns), the advice's trials and the
sweep's workers, so it imports none of them.
"""
from __future__ import annotations

import time

import numpy as np

from . import metrics as M
from .artifacts import ExportFailed
from .cache import content_key
from .chatter import captured
from .config import CompareConfig
from .diagnose import explain, export_next_step
from .environment import peak_rss_mb
from .errors import BackendUnavailable, BadInput, Failure, first_line
from .latency import measure as measure_latency
from .localize import localize, mixed_precision_advice
from .model import ModelHandle
from .reference import task_outputs
from .report import DIVERGED, FAILED, OK, UNAVAILABLE, VACUOUS, BackendResult, OutputResult
from .specs import BackendSpec
from .tolerance import tolerance_for
from .verdict import FP64_FACTOR, Floor, floor_for, judge_output


def task_result(task, reference: np.ndarray, actual: np.ndarray) -> dict:
    """The task block of a backend. A metric that raises (a user's plugin, labels it cannot
    use) is recorded as the block's error; the backend's numeric comparison is kept."""
    from .tasks import evaluate

    try:
        return evaluate(task, reference, actual)
    except BadInput:
        raise
    except Exception as e:
        return {"name": task.name, "error": f"{type(e).__name__}: {e}"}


def compare_outputs(names, reference, actual, tol, strict_nonfinite: bool = False, *, precision: str = "fp32",
                    floor: Floor | None = None, golden=None, fp64_factor: float = FP64_FACTOR) -> list[OutputResult]:
    """Per output, the metrics (worst over samples), whether it is within the elementwise
    tolerance, and its verdict (``verdict.judge_output``: vacuous reference, SQNR/cosine
    floor of ``precision``, the fp64 judge where ``golden`` is given)."""
    floor = floor or floor_for(precision)
    results = []
    for i, name in enumerate(names):
        per, viol, within, nonfinite, acts = [], 0, True, False, []
        shape = list(np.shape(actual[0][i]))
        ref_shape = list(np.shape(reference[0][i]))
        for ref, act in zip(reference, actual):
            a, r = np.asarray(act[i]), np.asarray(ref[i])
            if a.shape != r.shape:
                if a.size != r.size:
                    within = False
                    per = []
                    break
                a = a.reshape(r.shape)  # a runtime that drops or adds unit dims
            m, v, bad = M.compare_arrays(a, r, tol.rtol, tol.atol, strict_nonfinite)
            per.append(m)
            acts.append(a)
            viol += v
            within = within and v == 0
            nonfinite = nonfinite or bad
        metrics = M.worst_of(per) if per else {}
        refs = [r[i] for r in reference]
        golds = [g[i] for g in golden] if golden is not None else None
        v = judge_output(metrics, within, refs, acts, golds, precision=precision, atol=tol.atol, floor=floor,
                         factor=fp64_factor, nonfinite_violation=nonfinite)
        results.append(OutputResult(
            name=name, shape=shape, metrics=metrics, within_tolerance=within,
            violations=viol, reference_shape=ref_shape if ref_shape != shape else None,
            status=v.status, reason=v.reason, judge=v.judge,
        ))
    return results


def output_status(outputs: list[OutputResult]) -> str:
    """A backend's status from its outputs' verdicts: diverged if any diverged, else vacuous
    if any carried no signal, else ok."""
    statuses = {o.status for o in outputs}
    return DIVERGED if DIVERGED in statuses else VACUOUS if VACUOUS in statuses else OK


def precision_record(requested: str, info: dict) -> dict:
    """Requested vs what the runtime ran. ``honoured``: the requested precision is among the
    precisions the runtime computed in (int8 models keep some ops in float; that is normal),
    False when the runtime silently ran none of it (e.g. ORT's fp16 model run in fp32)."""
    runtime = info.get("runtime_precision", requested)
    counts = info.get("runtime_precisions")
    honoured = bool(counts.get(requested)) if counts else runtime == requested
    record = {"requested": requested, "runtime": runtime, "honoured": honoured}
    if counts and requested in FLOAT_PRECISIONS:
        # a float model's integer ops (comparisons, indices, masks) are not quantization:
        # "mixed" only where floats of several precisions ran
        floats = {k: v for k, v in counts.items() if k in FLOAT_PRECISIONS and v}
        record["runtime"] = next(iter(floats)) if len(floats) == 1 else ("mixed" if floats else runtime)
        integer = sum(v for k, v in counts.items() if k not in FLOAT_PRECISIONS)
        if integer:
            record["integer_ops"] = integer
    return record


FLOAT_PRECISIONS = ("fp32", "fp16", "bf16", "tf32", "fp64")


def missing_module(e: ImportError) -> BackendUnavailable:
    """A backend whose runtime imports a module it lacks is not installed completely: that is
    the machine's state, not a verdict on the model (the status is ``unavailable``)."""
    name = (e.name or "").split(".")[0]
    hint = f"pip install {name}" if name and isinstance(e, ModuleNotFoundError) else None
    return BackendUnavailable(f"the runtime needs {e.name or 'a module'} here: {type(e).__name__}: {first_line(e)}", hint)


def unavailable(result: BackendResult, stage: str, e: BackendUnavailable) -> BackendResult:
    result.status = UNAVAILABLE
    result.error = Failure.of(stage, "unavailable", e.reason, hint=e.hint).to_dict()
    return result


def compiled_folder(cls, adapter, spec: BackendSpec, handle: ModelHandle, route: str):
    """Where a backend's compiled artifacts are cached: keyed by the model, the spec, the
    route, the runtime versions and (int8) the calibration data."""
    calib = None
    if adapter.needs_calibration:
        handle.calibration()
        calib = handle.calibration_info["sha256"]
    built_for = cls.build_environment(spec)      # only where the artifact is machine-specific: other keys stay as they were
    artifacts = handle.artifacts
    return artifacts.cache.folder("compiled", content_key("compiled", artifacts.key, spec.text, route, cls.versions(),
                                                          calib, *([built_for] if built_for else [])))


def run_backend(cls, shown: str, spec: BackendSpec, handle: ModelHandle, reference, config: CompareConfig,
                progress, enter_stage=lambda stage: None) -> BackendResult:
    """Convert, compile and run one backend; every failure becomes data in its result.
    ``enter_stage(name)`` is told of each stage as it starts (the worker's time limits).
    What the runtime and its converters log and warn meanwhile goes to
    ``info.third_party_log``, not the terminal."""
    with captured() as said:
        result = _run_backend(cls, shown, spec, handle, reference, config, progress, enter_stage)
    if said.summary():
        result.info["third_party_log"] = said.summary()
    result.timings["peak_rss_mb"] = peak_rss_mb()    # of the worker that ran it (or of this process)
    return result


def _run_backend(cls, shown: str, spec: BackendSpec, handle: ModelHandle, reference, config: CompareConfig,
                 progress, enter_stage) -> BackendResult:
    result = BackendResult(spec=shown, backend=cls.name, variant=spec.variant, status=OK,
                           options=dict(spec.options))
    t0 = time.perf_counter()
    adapter = cls(spec)
    try:
        cls.check()  # imports the runtime: its own start-up cost, timed as setup_s
        adapter.check_variant()
    except BackendUnavailable as e:
        return unavailable(result, "setup", e)
    result.timings["setup_s"] = round(time.perf_counter() - t0, 6)
    result.route = adapter.route(handle)
    tol = tolerance_for(adapter.precision, config.rtol, config.atol)
    result.tolerance = tol.to_dict()
    if adapter.needs_calibration:
        progress(f"{shown}: preparing calibration data")
    folder = compiled_folder(cls, adapter, spec, handle, result.route)
    stage, t0 = "convert", time.perf_counter()
    try:
        enter_stage(stage)
        progress(f"{shown}: converting")
        converted = adapter.convert(handle, folder)
        result.timings["convert_s"] = round(time.perf_counter() - t0, 6)
        stage, t0 = "compile", time.perf_counter()
        enter_stage(stage)
        progress(f"{shown}: compiling")
        compiled = adapter.compile(converted, folder)
        adapter.deployed = compiled     # what the layer hooks read of the deployed model
        result.timings["compile_s"] = round(time.perf_counter() - t0, 6)
        stage, t0 = "run", time.perf_counter()
        enter_stage(stage)
        with compiled:
            actual = []
            for i, sample in enumerate(handle.samples):
                progress(f"{shown}: running sample {i + 1}/{len(handle.samples)}")
                actual.append(compiled.run(sample))
            result.timings["infer_s"] = round(time.perf_counter() - t0, 6)
            if handle.task is not None:
                t1 = time.perf_counter()
                task_actual = task_outputs(compiled.run, handle.task, handle.samples[0])
                result.timings["task_s"] = round(time.perf_counter() - t1, 6)
            if config.latency_runs > 0:
                progress(f"{shown}: timing {config.latency_runs} runs")
                result.latency = measure_latency(compiled.run, handle.samples[0], config.latency_warmup,
                                                 config.latency_runs) | {"threads": cls.threads(spec)}
        result.info = dict(compiled.info)
    except ExportFailed as e:
        result.status = FAILED
        extra = {**explain(e.cause, handle, "export"), **export_next_step(e, handle.artifacts.export_mode)}
        if handle.artifacts.export_info.get("output"):
            extra["exporter_output"] = handle.artifacts.export_info["output"]
        result.error = Failure.of("export", type(e.root).__name__, str(e), **extra).to_dict()
        return result
    except BadInput:
        raise
    except BackendUnavailable as e:  # found out while converting (e.g. no fp16 lowering)
        return unavailable(result, stage, e)
    except ImportError as e:         # a module the runtime or its converter imports lazily
        result.timings[f"{stage}_s"] = round(time.perf_counter() - t0, 6)
        return unavailable(result, stage, missing_module(e))
    except Exception as e:
        result.timings[f"{stage}_s"] = round(time.perf_counter() - t0, 6)
        result.status = FAILED
        # the operator and where the model uses it
        result.error = Failure.from_exception(stage, e, **explain(e, handle, result.route)).to_dict()
        return result
    result.cache = ("hit" if adapter.cache_hit else "miss") if handle.artifacts.cache.enabled else "off"
    result.precision = precision_record(adapter.precision, result.info)
    names = handle.reference.output_names
    if len(actual[0]) != len(names):
        result.status = FAILED
        result.error = Failure.of("compare", "OutputMismatch", f"the backend returned {len(actual[0])} outputs, "
                                  f"the reference {len(names)}").to_dict()
        return result
    if config.keep_outputs:
        result.arrays = [np.asarray(a) for a in actual[0]]
    floor = floor_for(adapter.precision, config.min_sqnr, config.min_cosine)
    result.floor = floor.to_dict()
    golden = handle.reference.golden()[0] if config.golden and adapter.precision == "fp32" else None
    result.outputs = compare_outputs(names, reference, actual, tol, config.nan_strict,
                                     precision=adapter.precision, floor=floor, golden=golden,
                                     fp64_factor=config.fp64_factor)
    result.status = output_status(result.outputs)
    if handle.task is not None:
        result.task = task_result(handle.task, handle.reference.on_task(), task_actual)
        if "error" not in result.task and config.max_task_drop is not None and -result.task["delta"] > config.max_task_drop:
            result.task["exceeds_max_drop"] = True
            result.status = DIVERGED
    wanted = config.layerwise == "always" or (config.layerwise == "auto" and result.status == DIVERGED)
    enter_stage("analyse")
    # the layer view and the advice are extra: their failure is recorded in this backend's
    # result and loses nothing measured above, nor any other backend's result
    if wanted and adapter.layers_from and (handle.has_torch or adapter.runs_onnx):
        try:
            localize(adapter, handle, result, tol, progress, actual[0], reference[0], config)
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001
            result.info["layers_error"] = f"{type(e).__name__}: {first_line(e)}"
    if config.advise and result.status == DIVERGED and spec.variant in cls.keep_variants and handle.has_torch:
        try:
            result.advice = mixed_precision_advice(cls, shown, spec, handle, reference, config, result, progress,
                                                   run_backend)
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001
            result.advice = {"found": False, "reason": f"the advice failed: {type(e).__name__}: {first_line(e)}"}
    return result
