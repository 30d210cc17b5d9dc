"""What the command line's options become: the settings of a run (``CompareConfig``), a
sweep's plan, the checked paths it writes to. One function per command, so that ``cli.py``
only declares options and dispatches; every check raises BadInput (one line, exit 2)
before any work starts."""
from __future__ import annotations

import os
import re
import shlex
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

from .config import CompareConfig
from .errors import BadInput
from .inputs import parse_input_spec
from .isolation import parse_limits
from .partial import partial_path_for
from .registry import adapter_class
from .specs import parse_specs
from .sweep import SweepPlan, load_sweep_file, make_plan, split_specs


def default_report_path(source: str) -> Path:
    """reports/<model stem>-<time>.json: where a run's JSON report goes unless told."""
    name = source.split(":")[-1] if source.startswith("zoo:") else source.split(":")[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).stem)
    return Path("reports") / f"{stem or 'model'}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def check_writable(path: Path) -> None:
    """A file the command will write: its folder made, the file itself writable, so a long
    run does not end without its report."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot write report to {path}: {e.strerror or e}") from None
    if path.is_dir():
        raise BadInput(f"cannot write report to {path}: it is a folder")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"cannot write report to {path}: permission denied")


def check_outputs(*paths: Path | None) -> None:
    """``check_writable`` of each output asked for (None: not asked)."""
    for path in paths:
        if path is not None:
            check_writable(path)


def report_path(model: str, opts: dict) -> Path | None:
    """Where ``compare`` writes its JSON report: --json, else reports/; None with --no-json."""
    return None if opts["no_json"] else (opts["json_path"] or default_report_path(model))


def config_from_cli(opts: dict, out_path: Path | None, argv: Sequence[str]) -> CompareConfig:
    """The settings of ``compare`` from its options (click's keywords, less MODEL and --quiet),
    checked before any work: --timeout, the output files, --atol/--rtol. ``argv`` is the
    command line as typed, recorded in the report."""
    o = SimpleNamespace(**opts)
    parse_limits(o.timeout)             # a malformed --timeout fails before any work
    check_outputs(out_path, o.html_path, o.md_path)
    for spec in (o.atol, o.rtol):
        if spec is not None and spec < 0:
            raise BadInput("--atol and --rtol must not be negative")
    return CompareConfig(
        backends=tuple(o.backends) or None, seed=o.seed, samples=o.samples, compare_on=o.compare_on,
        input_specs=tuple(parse_input_spec(s) for s in o.input_specs), input_files=tuple(o.input_files),
        calib_files=tuple(o.calib_files), calib_samples=o.calib_samples,
        weights=o.weights, trust_pickle=o.trust_pickle, export_mode=o.export_mode, reference=o.onnx_reference,
        rtol=o.rtol, atol=o.atol, cache_dir=o.cache_dir,
        use_cache=not o.no_cache, golden=not o.no_golden, fp64_factor=o.fp64_factor, min_sqnr=o.min_sqnr,
        min_cosine=o.min_cosine, layerwise={None: "auto", True: "always", False: "never"}[o.layerwise],
        isolate_layers=o.isolate_layers, max_memory=parse_size(o.max_memory, "--max-memory"), bisect=o.bisect,
        advise=o.advise, task="off" if o.no_task else ("auto" if o.task is None else "on"),
        task_name=None if o.task in (None, "on") else o.task, data_file=o.data_file, preprocess=o.preprocess,
        max_task_drop=o.max_task_drop, sysnoise=o.sysnoise,
        nan_strict=o.nan_strict, isolate=o.isolate, timeout=o.timeout,
        partial_path=partial_path_for(out_path) if out_path else None,
        command="backendiff " + " ".join(shlex.quote(a) for a in argv),
    )


def parse_size(text: str | None, option: str) -> int | None:
    """A size such as ``4GB``, ``512MB``, ``1.5G`` or a number of bytes, in bytes (None: not given)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise BadInput(f"{option} {text!r}: a size such as 4GB or 512MB")
    size = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
    if size <= 0:
        raise BadInput(f"{option} must be more than 0")
    return size


def sysnoise_from_cli(opts: dict, outputs: Sequence[Path | None]) -> tuple[list[str], CompareConfig]:
    """The backends (base names: their variants are rows of the table) and settings of
    ``sysnoise``; unknown names and unwritable ``outputs`` fail before any work."""
    parse_limits(opts["timeout"])
    names = [b.strip() for b in opts["backends"].split(",") if b.strip()]
    for name in names:
        if ":" in name or "=" in name:
            raise BadInput(f"sysnoise takes base backend names (torch, ort, openvino, tvm), not {name!r}: "
                           "their variants are rows of the table")
        adapter_class(name)                     # unknown names fail here, before any work
    check_outputs(*outputs)
    return names, CompareConfig(use_cache=not opts["no_cache"], cache_dir=opts["cache_dir"], isolate=opts["isolate"],
                                timeout=opts["timeout"])


def ops_from_cli(backends: str, limit: int, cache_dir: Path | None) -> tuple[list[str], CompareConfig]:
    """The backend specs and settings of ``ops``: every operator judged on its own (no layer
    view, advice or task); no artifact cache, since every batch module is new (the export
    is made once per batch in the parent and shared by the workers)."""
    specs = [s.text for s in parse_specs(backends)]
    if limit < 1:
        raise BadInput("--samples must be at least 1")
    return specs, CompareConfig(layerwise="never", advise=False, cache_dir=cache_dir, task="off", use_cache=False)


def option_value(text: str):
    """--option values: numbers and true/false as such, everything else a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def sweep_from_cli(opts: dict, render_only: bool) -> tuple[SweepPlan, dict]:
    """The plan of ``sweep`` (the command line over the --file: models, specs and options
    replace or join its own) and the keywords of ``run_sweep`` (executor, workers, cache)."""
    o = SimpleNamespace(**opts)
    if o.executor != "ray" and o.ray_address:
        raise BadInput("--ray-address needs --executor ray")
    if render_only and o.force:
        raise BadInput("--render-only runs nothing: it cannot --force a rerun")
    extra = {}
    for item in o.options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--option {item!r}: expected KEY=VALUE")
        extra[key.strip()] = option_value(value.strip())
    specs = [s for text in o.backends for s in split_specs(text)]
    if o.sweep_file is None and not o.models:
        raise BadInput("sweep needs models (zoo:NAME, files) or --file SWEEP.toml")
    base = load_sweep_file(o.sweep_file) if o.sweep_file is not None else SweepPlan(models=(), specs=("ort", "openvino", "tvm"))
    plan = make_plan(o.models or base.models, specs or base.specs, {**base.options, **extra},
                     warmup=base.warmup if o.warmup is None else o.warmup, runs=base.runs if o.runs is None else o.runs,
                     threads=base.threads if o.threads is None else o.threads, resources=base.resources,
                     plugins=tuple(base.plugins) + tuple(o.plugins))
    run_options = dict(executor=o.executor, workers=o.workers, ray_address=o.ray_address, force=o.force,
                       cache_dir=str(o.cache_dir) if o.cache_dir else None)
    return plan, run_options


def redraw_command(argv: Sequence[str]) -> str:
    """The command line as typed, less --render-only and --force: with --render-only added,
    it redraws a scoreboard from the store."""
    return " ".join(shlex.quote(a) for a in argv if a not in ("--render-only", "--force"))
