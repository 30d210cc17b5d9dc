"""``compare``: one model, many backends, one reference, one verdict.

load -> inputs -> reference (+ fp64 golden) -> per backend: convert, compile, run ->
per-output metrics against the reference -> Report. Each backend's failure is recorded in
its own result; nothing already computed is lost.
"""
from __future__ import annotations

import time

import numpy as np

from . import metrics as M
from .artifacts import Artifacts
from .cache import Cache, default_cache_dir
from .config import CompareConfig
from .environment import environment, peak_rss_mb
from .errors import BadInput
from .inputs import (
    InputSpec,
    describe_draws,
    example_specs,
    freeze,
    load_calibration_npz,
    load_npz,
    nonfinite_inputs,
    random_samples,
    samples_sha256,
    specs_of,
)
from .isolation import parse_limits, run_isolated
from .loading import LoadedModel, load_model
from .model import ModelHandle
from .partial import PartialLog
from .registry import adapter_class, default_backends
from .report import CRASHED, BackendResult, Report
from .runner import run_backend
from .specs import BackendSpec, parse_specs


def compare(model, inputs=None, backends=None, *, config: CompareConfig | None = None, **options) -> Report:
    """Compare ``model`` on ``backends`` against PyTorch eager fp32.

    ``model``: a path or spec string (``.pt2``, ``.pt``, ``.onnx``, ``file.py:factory``,
    ``pkg.mod:factory``, ``zoo:NAME``), an ``nn.Module`` or an ``ExportedProgram``.
    ``inputs``: None (declared or example inputs, or ``input_specs``), a tuple of
    tensors/arrays (one sample), a dict name -> array, or a list of such dicts.
    ``backends``: spec strings such as ``["ort", "openvino:fp32,route=onnx"]``; None runs
    every default backend available here. Other keywords set ``CompareConfig`` fields.
    The returned Report is truthy when every backend agrees.
    """
    config = (config or CompareConfig()).but(**options) if options else (config or CompareConfig())
    if backends is not None:
        config = config.but(backends=tuple([backends] if isinstance(backends, str) else backends))
    if config.layerwise not in ("auto", "always", "never"):
        raise BadInput(f"layerwise must be auto, always or never, not {config.layerwise!r}")
    if config.samples < 1:
        raise BadInput("--samples must be at least 1")
    if config.calib_samples < 1:
        raise BadInput("--calib-samples must be at least 1")
    t_start = time.perf_counter()
    specs, requested = resolve_specs(config.backends)
    if config.sysnoise:
        from .sysnoise import zoo_entry

        zoo_entry(model if isinstance(model, str) else "this model")   # one that declares its pipeline
    progress = config.progress or (lambda message: None)

    progress("loading model")
    loaded = load_model(model, weights=config.weights, trust_pickle=config.trust_pickle)
    samples, inputs_from, specs_used = resolve_inputs(loaded, inputs, config)
    task = resolve_task(loaded, samples, config)
    if task is not None and inputs is None and not (config.input_files or config.input_specs) \
            and config.compare_on == "data":
        real = task_samples(task, samples[0], config.samples)
        if real is not None:
            samples, inputs_from = real, f"held-out data ({task.source})"
    cache = Cache((config.cache_dir or default_cache_dir()) if config.use_cache else None)
    handle = ModelHandle(loaded, samples, cache, export_mode=config.export_mode, onnx_reference=config.reference,
                         task=task,
                         calibration_source=lambda: calibration_samples(config, samples, specs_used, loaded.zoo_name))

    progress("running the reference")
    reference = handle.reference.outputs()
    task_info = None
    if task is not None:
        progress(f"running the reference on {len(task.inputs)} {task.name} samples")
        task_info = reference_task(task, handle.reference.on_task())
    baseline = None
    if config.golden:
        golden, why_not = handle.reference.golden()
        baseline = golden_baseline(handle.reference.output_names, reference, golden, why_not)
    if handle.has_torch and handle.loaded.content_key is None:
        progress("exporting (the cache key is the exported program)")
    # keyed now, before any worker forks, by what the runtimes consume; the cache is a
    # temporary one when the model cannot be keyed (no export)
    cache = handle.artifacts.cache
    known = known_divergent_ops(handle, [shown for _, shown, _ in specs], config)
    for shown, notes in known.items():
        progress(f"{shown}: the operator matrix lists {', '.join(n['op'] for n in notes)} as {notes[0]['status']}")

    versions = {}
    for cls, _, _ in specs:
        versions.update(cls.versions())
    fields = report_fields(loaded, handle, samples, inputs_from, config, requested, baseline,
                           task_info, versions, specs_used)
    limits = parse_limits(config.timeout)
    if config.isolate:
        cache.prepare()                 # a --no-cache temp folder made here outlives the workers
        prewarm(handle, specs, progress, exports=not cache.enabled)
        fields["calibration"] = handle.calibration_info
    partial = PartialLog(config.partial_path)
    partial.start(fields, [shown for _, shown, _ in specs])
    results = []
    try:
        for cls, shown, spec in specs:
            if config.isolate:
                shell = BackendResult(spec=shown, backend=cls.name, variant=spec.variant, status=CRASHED,
                                      options=dict(spec.options))
                before = dict(handle.timings)
                result = run_isolated(
                    lambda prog, enter: run_backend(cls, shown, spec, handle, reference, config, prog, enter),
                    shell, limits, progress, counters=lambda: dict(handle.timings),
                    on_counters=lambda after: add_timings(handle.timings, before, after))
            else:
                result = run_backend(cls, shown, spec, handle, reference, config, progress)
            if known.get(shown):
                result.info["known_divergent_ops"] = known[shown]
            results.append(result)
            partial.add(result)
    finally:
        cache.close()

    fields["calibration"] = handle.calibration_info     # made by the first int8 backend (or by prewarm)
    if config.sysnoise:
        fields["sysnoise"] = sysnoise_block(model, [spec.name for _, _, spec in specs], config, progress)
    timings = {k: round(v, 6) for k, v in handle.timings.items()}
    timings["total_s"] = round(time.perf_counter() - t_start, 6)
    timings["peak_rss_mb"] = peak_rss_mb()
    return Report(**fields, backends=results, timings=timings)


def known_divergent_ops(handle: ModelHandle, shown: list[str], config: CompareConfig) -> dict[str, list[dict]]:
    """Pre-flight: per backend, the model's operators that the latest stored operator matrix
    (``backendiff ops``) lists as diverged or failed there, and where the model uses them.
    Nothing where no matrix is stored, the cache is off or the model has no program."""
    from .ops import load_latest_matrix, node_arguments, preflight

    if not config.use_cache or not handle.has_torch:
        return {}
    matrix = load_latest_matrix(config.cache_dir)
    if matrix is None:
        return {}
    try:
        from .layers import graph_layers

        gm = handle.exported_program().graph_module
        layers = graph_layers(gm)
        arguments = {n.name: node_arguments(n, gm) for n in gm.graph.nodes if n.op == "call_function"}
    except Exception:  # noqa: BLE001 - a model that does not export has no operators to check
        return {}
    return preflight(matrix, layers, shown, arguments)


def model_key(model, config: CompareConfig | None = None) -> str | None:
    """The content key of ``model`` as ``compare`` with ``config`` keys its artifacts (its
    inputs resolved, the model exported); None when it cannot be exported, so that nothing
    of it may be cached or resumed. Bad input raises BadInput."""
    config = config or CompareConfig()
    loaded = load_model(model, weights=config.weights, trust_pickle=config.trust_pickle)
    samples, _, _ = resolve_inputs(loaded, None, config)
    keyed = Artifacts(loaded, samples[0], Cache(None), config.export_mode).keyed()
    return keyed.key if keyed.cacheable else None


def sysnoise_block(model: str, names: list[str], config: CompareConfig, progress) -> dict:
    """The SysNoise table on the run's backends (base names, each once), as JSON data; a
    failure of the measurement is its error, the comparison above is kept."""
    from .sysnoise import measure

    bases = list(dict.fromkeys(names))
    try:
        return measure(model, bases, config, progress)
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - the backends' results stand without the table
        return {"error": f"{type(e).__name__}: {e}", "backends": bases}


def add_timings(timings: dict, before: dict, after: dict) -> None:
    """What a worker added to the shared timings (an export it made, say), added here."""
    for key, value in after.items():
        spent = value - before.get(key, 0.0)
        if spent > 0:
            timings[key] = timings.get(key, 0.0) + spent


def report_fields(loaded, handle, samples, inputs_from, config, requested, baseline, task_info, versions,
                  specs_used=()) -> dict:
    """Everything of the report but the backends' results and the timings (also the header
    of the partial log)."""
    return dict(
        model={
            "source": loaded.source,
            "format": loaded.format,
            "key": handle.artifacts.key,
            "cached": handle.artifacts.cache.enabled,
            "inputs": [s.to_dict() for s in specs_of(samples[0])],
            "inputs_from": inputs_from,
            **({"drawn": describe_draws(specs_used)} if "random" in inputs_from and specs_used else {}),
            "samples": len(samples),
            "seed": config.seed,
            "inputs_sha256": samples_sha256(samples),
            "nonfinite_inputs": nonfinite_inputs(samples),
            "outputs": handle.reference.output_names,
            **({"export": {"mode": handle.artifacts.export_mode, **handle.artifacts.export_info}}
               if handle.has_torch else {}),
        },
        reference={"backend": handle.reference.backend, "precision": "fp32", "device": "cpu",
                   **({"note": handle.reference.note} if handle.reference.note else {})},
        baseline=baseline,
        environment=environment(versions),
        command=config.command,
        requested=requested,
        calibration=handle.calibration_info,
        task=task_info,
    )


def prewarm(handle: ModelHandle, specs, progress, exports: bool) -> None:
    """Before forking workers: what several backends share is made once here, so that no
    worker makes it again: the runtimes' frontends (``Adapter.preload``), the int8
    calibration data, and with ``exports`` (no cache on disk to share them through) the
    export and the ONNX file. A failure is left for the workers to meet and report as theirs."""
    routes, calibrate = set(), False
    for cls, _, spec in specs:
        cls.preload()
        try:
            adapter = cls(spec)
            routes.add(adapter.route(handle))
            calibrate = calibrate or adapter.needs_calibration
        except Exception:  # noqa: BLE001 - the worker reports it
            pass
    steps = [(exports and "export" in routes and handle.has_torch, handle.exported_program, "exporting"),
             (exports and "onnx" in routes, handle.onnx_path, "exporting to ONNX"),
             (calibrate, handle.calibration, "preparing calibration data")]
    for wanted, make, what in steps:
        if wanted:
            progress(what)
            try:
                make()
            except BadInput:
                raise
            except Exception:  # noqa: BLE001 - ExportFailed and the like: the worker reports it
                pass


def resolve_task(loaded: LoadedModel, samples, config: CompareConfig):
    """The labelled data of the end task: ``--data FILE.npz`` or ``--data DIR`` (ImageFolder),
    else the zoo model's own held-out data; ``--task NAME`` picks the metric. None when there
    is none (or the task is switched off)."""
    from dataclasses import replace

    from .tasks import check_labels, load_task_npz, resolve_metric

    if config.task == "off":
        return None
    asked = config.task == "on" or config.task_name or config.data_file
    if len(samples[0]) != 1:
        if asked:
            raise BadInput("the task evaluation takes models with one input")
        return None
    if config.task_name:
        resolve_metric(config.task_name)  # an unknown task fails before anything runs
    task = None
    if config.data_file:
        name = config.task_name or "classification"
        if config.data_file.is_dir():
            from .imagefolder import load_image_folder

            example = next(iter(samples[0].values()))
            task = load_image_folder(config.data_file, tuple(example.shape[1:]), str(example.dtype),
                                     config.preprocess, task=name)
        else:
            if config.preprocess:
                raise BadInput("--preprocess applies to --data DIR (image folders), not to an .npz file")
            task = load_task_npz(config.data_file, name)
        if name == "pose":
            task = replace(task, params={"image_size": tuple(task.inputs.shape[-2:])})
    elif loaded.zoo_name:
        from backendiff.models import ZOO

        try:
            task = ZOO[loaded.zoo_name].task_data()
        except ImportError as e:
            raise BadInput(f"the data of zoo:{loaded.zoo_name} needs {e.name}: pip install 'backendiff[zoo]'") from None
        if task is not None and config.task_name and config.task_name != task.name:
            # another metric on the zoo model's data: the built-in's own parameters do not apply
            task = replace(task, name=config.task_name, params={})
            if config.task_name in ("classification", "pose", "embeddings"):
                check_labels(task.name, task.inputs, task.labels, f"zoo:{loaded.zoo_name} held-out split")
    if task is None and asked:
        raise BadInput("--task needs labelled data: --data FILE.npz (arrays inputs and labels), --data DIR "
                       "(one sub-folder per class) or a zoo model with a task")
    return task


def task_samples(task, first: dict, count: int) -> list[dict] | None:
    """The first ``count`` batches of a task's held-out inputs, shaped and typed like the
    example batch ``first`` (one input): what the backends are compared on when the model
    has real data. None where the data cannot stand in for the example (another sample
    shape, fewer samples than one batch)."""
    if len(first) != 1:
        return None
    (name, ref), = first.items()
    data = np.asarray(task.inputs)
    batch = ref.shape[0] if ref.ndim else 0
    if not batch or data.ndim != ref.ndim or tuple(data.shape[1:]) != tuple(ref.shape[1:]) or len(data) < batch:
        return None
    count = min(count, len(data) // batch)
    return [{name: freeze(np.ascontiguousarray(data[i * batch:(i + 1) * batch], dtype=ref.dtype))}
            for i in range(count)]


def reference_task(task, reference: np.ndarray) -> dict:
    """The report's top-level task block; the metric run once on the reference's own outputs,
    so that a task that cannot use this data fails with one line before any backend runs."""
    from .tasks import evaluate

    try:
        scored = evaluate(task, reference, reference)
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"task {task.name} failed on the reference's outputs: {type(e).__name__}: {e}") from None
    return {"name": task.name, "source": task.source, "samples": int(len(task.inputs)),
            "metric": scored["metric"], "reference": scored["reference"], "unit": scored.get("unit", "")}


def resolve_specs(texts) -> tuple[list[tuple[type, str, BackendSpec]], list[str]]:
    """Validate every spec before any work. Returns (adapter, spec as the user wrote it,
    canonical spec) triples and the specs the user asked for by name."""
    names = list(texts) if texts else default_backends()
    if not names:
        raise BadInput("no backend is available here; `backendiff backends` says why")
    out, seen = [], set()
    for spec in parse_specs(names):
        cls = adapter_class(spec.name)
        canonical = cls.canonical(spec)
        if canonical.text in seen:
            continue
        seen.add(canonical.text)
        out.append((cls, BackendSpec(cls.name, spec.variant, spec.options).text, canonical))
    requested = [shown for _, shown, _ in out] if texts else []
    return out, requested


def _sample_from(value, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(value, dict):
        missing = [n for n in names if n not in value]
        extra = [k for k in value if names and k not in names]
        if missing or extra:
            raise BadInput(f"inputs do not match the model inputs ({', '.join(names)}): "
                           f"missing {missing or 'none'}, unexpected {extra or 'none'}")
        items = [(n, value[n]) for n in (names or value)]
    else:
        seq = value if isinstance(value, (tuple, list)) else (value,)
        if names and len(seq) != len(names):
            raise BadInput(f"the model takes {len(names)} inputs ({', '.join(names)}), got {len(seq)}")
        items = list(zip(names or [f"input_{i}" for i in range(len(seq))], seq))
    out = {}
    for n, a in items:
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        out[n] = freeze(np.asarray(a))
    return out


def check_against_declared(samples, declared: list[InputSpec] | None, names: list[str]) -> None:
    """Inputs given for a model whose inputs are fixed (ONNX, .pt2) must fit them."""
    sample = samples[0]
    if names and list(sample) != list(names):
        unknown = [n for n in sample if n not in names]
        missing = [n for n in names if n not in sample]
        raise BadInput(f"inputs do not match the model inputs ({', '.join(names)}): "
                       f"missing {missing or 'none'}, unknown {unknown or 'none'}")
    for spec in declared or []:
        a = sample.get(spec.name)
        if a is None:
            continue
        if tuple(a.shape) != tuple(spec.shape):
            raise BadInput(f"input {spec.name} has shape {tuple(a.shape)} but the model expects {tuple(spec.shape)}")
        if a.dtype.name != spec.dtype:
            raise BadInput(f"input {spec.name} has dtype {a.dtype.name} but the model expects {spec.dtype}")


def calibration_samples(config: CompareConfig, samples, specs: list[InputSpec],
                        zoo_name: str | None = None) -> tuple[list[dict], dict]:
    """int8 calibration data: ``--calib`` files, else the user's own ``--inputs``, else a zoo
    model's own training data (``--calib-samples`` batches shaped like the inputs), else
    seeded random batches drawn like the inputs (with another seed than the inputs; the info
    says how each input was drawn, e.g. within the example's range)."""
    if config.calib_files:
        calib = [s for path in config.calib_files for s in load_calibration_npz(path, samples[0])]
        return calib, {"source": "file", "files": [str(p) for p in config.calib_files]}
    if config.input_files:
        return list(samples), {"source": "inputs"}
    zoo = zoo_calibration(zoo_name, samples[0], config.calib_samples)
    if zoo is not None:
        return zoo
    seed = config.seed + 1
    return random_samples(specs, seed, config.calib_samples), {"source": "random", "seed": seed,
                                                                 "drawn": describe_draws(specs)}


def zoo_calibration(zoo_name: str | None, sample: dict, batches: int) -> tuple[list[dict], dict] | None:
    """A zoo model's calibration data from its training split, in batches shaped like
    ``sample`` (one input); None for models that declare none."""
    if zoo_name is None:
        return None
    from .models import ZOO

    entry = ZOO.get(zoo_name)
    if entry is None or entry.calibration is None or len(sample) != 1:
        return None
    (name, ref), = sample.items()
    batch = ref.shape[0]
    data = np.asarray(entry.calibration(batch * batches), dtype=ref.dtype)
    calib = [{name: freeze(data[i:i + batch])} for i in range(0, len(data) - batch + 1, batch)]
    return calib, {"source": "zoo", "split": f"zoo:{zoo_name} training split"}


def resolve_inputs(loaded: LoadedModel, inputs, config: CompareConfig) -> tuple[list[dict], str, list[InputSpec]]:
    """The input samples, where they came from, and the specs that random batches (more
    samples, calibration data) are drawn from: the ``--input`` or declared specs, else like
    the example or the given first sample (``example_specs``: each input within the model's
    declared range, else within the example's own)."""
    names = loaded.input_names
    fixed = loaded.format in ("onnx", "pt2", "exported_program")
    specs: list[InputSpec] | None = None
    if inputs is not None:
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            samples, source = [_sample_from(s, names) for s in inputs], "given"
        else:
            samples, source = [_sample_from(inputs, names)], "given"
    elif config.input_files:
        if not names:
            raise BadInput("the model does not name its inputs; use --input NAME:SHAPE instead of --inputs")
        samples, source = [load_npz(p, names) for p in config.input_files], "file"
    elif config.input_specs:
        given = [s.name for s in config.input_specs]
        specs = list(config.input_specs)
        if names:
            unknown = [n for n in given if n not in names]
            missing = [n for n in names if n not in given]
            if unknown or missing:
                raise BadInput(f"--input names do not match the model inputs ({', '.join(names)}): "
                               f"missing {missing or 'none'}, unknown {unknown or 'none'}")
            specs = [next(s for s in config.input_specs if s.name == n) for n in names]
        samples, source = random_samples(specs, config.seed, config.samples), "random"
    elif loaded.example_args is not None:
        first = _sample_from(loaded.example_args, names)
        specs = example_specs(first, loaded.input_specs)
        extra = random_samples(specs, config.seed, config.samples - 1) if config.samples > 1 else []
        samples, source = [first] + extra, "example" if not extra else "example+random"
    elif loaded.input_specs:
        specs = list(loaded.input_specs)
        samples, source = random_samples(specs, config.seed, config.samples), "random"
    else:
        listed = f" ({', '.join(names)})" if names else ""
        raise BadInput(f"the model does not declare its inputs{listed}: pass --input NAME:SHAPE[:DTYPE] "
                       "for each, or --inputs FILE.npz")
    if fixed:
        check_against_declared(samples, loaded.input_specs, names)
    bad = nonfinite_inputs(samples)
    if bad and config.progress:
        config.progress(f"warning: inputs {', '.join(bad)} hold NaN/Inf")
    return samples, source, specs or example_specs(samples[0], loaded.input_specs)


def golden_baseline(names, reference, golden, why_not) -> dict:
    """The fp32 reference against the fp64 golden run: what fp32 rounding alone gives."""
    if golden is None:
        return {"name": "torch fp32 vs fp64", "available": False, "reason": why_not}
    outputs = []
    for i, name in enumerate(names):
        per = [M.tensor_metrics(ref[i], gold[i]) for ref, gold in zip(reference, golden)]
        outputs.append({"name": name, "metrics": M.worst_of(per)})
    return {"name": "torch fp32 vs fp64", "available": True, "outputs": outputs}


