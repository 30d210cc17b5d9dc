"""The command line: a thin layer over ``backendiff.compare`` and the report renderers.

Exit codes: 0 every backend agrees; 1 a backend diverged; 2 bad usage or input (one
line, no traceback); 3 a requested backend could not run; 4 nothing diverged but a
comparison was vacuous (the reference output carries no signal).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import click
from rich.console import Console

from .errors import BadInput

EXIT_BAD_INPUT = 2


class _Group(click.Group):
    """Usage errors as one line with exit code 2 (click's default prints usage blocks)."""

    def main(self, args=None, prog_name=None, **kwargs):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(EXIT_BAD_INPUT)
        except click.UsageError as e:
            _fail(e.format_message())
        except click.Abort:
            click.echo("backendiff: interrupted", err=True)
            sys.exit(130)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except BadInput as e:
            _fail(str(e))
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str) -> None:
    message = " ".join(str(message).split())
    click.echo(f"backendiff: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="backendiff")
def cli():
    """Does your PyTorch model still compute the same thing on each deployment runtime?"""


def _default_report_path(source: str) -> Path:
    name = source.split(":")[-1] if source.startswith("zoo:") else source.split(":")[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).stem)
    return Path("reports") / f"{stem or 'model'}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"cannot write report to {path}: {e.strerror or e}") from None
    if path.is_dir():
        raise BadInput(f"cannot write report to {path}: it is a folder")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"cannot write report to {path}: permission denied")


@cli.command()
@click.argument("model")
@click.option("--backends", "-b", "backends", multiple=True, metavar="SPEC[,SPEC...]",
              help="Backends to run, e.g. ort,openvino,tvm or 'openvino:fp32,route=onnx'. Default: all available.")
@click.option("--input", "input_specs", multiple=True, metavar="NAME:SHAPE[:DTYPE[:LOW..HIGH]]",
              help="Declare an input for seeded random data as NAME:SHAPE[:DTYPE[:LOW..HIGH]] (repeatable). SHAPE is "
                   "1x3x224x224, 1,3,224,224 or [1,3,224,224]; :LOW..HIGH is the range drawn from (integers: LOW "
                   "to HIGH-1), e.g. x:1x3x224x224 or ids:1x16:int64:0..30522.")
@click.option("--inputs", "input_files", multiple=True, type=click.Path(path_type=Path), metavar="FILE.npz",
              help="Your own arrays, one per model input (repeatable: one sample each).")
@click.option("--calib", "calib_files", multiple=True, type=click.Path(path_type=Path), metavar="FILE.npz",
              help="int8 calibration data: one array per input, with or without a leading samples axis "
                   "(default: --inputs, else seeded random batches).")
@click.option("--calib-samples", default=32, show_default=True, help="Random calibration batches when no data is given.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--samples", default=1, show_default=True, help="Random batches to compare (worst case reported).")
@click.option("--compare-on", type=click.Choice(["data", "random"]), default="data", show_default=True,
              help="What the backends are compared on when the model has task data (a zoo model's held-out split, "
                   "--data): data (its first --samples batches) or random (the example, then seeded random batches).")
@click.option("--weights", type=click.Path(path_type=Path), help="State dict for a factory or zoo model (weights_only).")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled whole nn.Module (runs arbitrary code).")
@click.option("--export", "export_mode", type=click.Choice(["non-strict", "strict", "draft"]), default="non-strict",
              show_default=True, help="How torch.export traces a Python model; draft continues past data-dependent "
                                      "guards (the example's branch) and the report lists what it assumed.")
@click.option("--reference", "onnx_reference", type=click.Choice(["auto", "onnx", "ort"]), default="auto",
              show_default=True, help="Reference of an .onnx model: onnx (ONNX's reference evaluator), ort (ONNX "
                                      "Runtime, optimizations off); auto: onnx, else ort where it cannot run the graph.")
@click.option("--atol", type=float, help="Absolute tolerance (default depends on precision).")
@click.option("--rtol", type=float, help="Relative tolerance (default depends on precision).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Where to write the JSON report (default: reports/).")
@click.option("--no-json", is_flag=True, help="Write no JSON report.")
@click.option("--html", "html_path", type=click.Path(path_type=Path),
              help="Also write a self-contained HTML report (charts inline, works offline).")
@click.option("--md", "md_path", type=click.Path(path_type=Path),
              help="Also write a Markdown summary (CI job summary, PR comment).")
@click.option("--no-cache", is_flag=True, help="Export and compile afresh; cache nothing.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Cache folder (default ~/.cache/backendiff).")
@click.option("--no-golden", is_flag=True,
              help="Skip the float64 golden run (and with it the fp64 judge of fp32 backends).")
@click.option("--fp64-factor", type=click.FloatRange(min=1.0), default=2.0, show_default=True, metavar="X",
              help="An fp32 backend outside tolerance agrees when its RMSE against fp64 is within X times "
                   "PyTorch fp32's own.")
@click.option("--min-sqnr", type=float, metavar="DB",
              help="SQNR floor: an output below it diverges even inside atol/rtol (default by precision: "
                   "fp32 40, fp16 25, bf16 20, int8 10).")
@click.option("--min-cosine", type=click.FloatRange(-1.0, 1.0), metavar="C",
              help="Cosine floor, as --min-sqnr (default by precision: fp32 0.9999, fp16 0.995, bf16 0.99, int8 0.9).")
@click.option("--layerwise/--no-layerwise", default=None,
              help="Per-layer divergence and where it starts, for every backend that can give intermediates "
                   "(default: only for backends that diverged).")
@click.option("--nan-strict", is_flag=True,
              help="Count every NaN/Inf in a backend's outputs as divergence, even where the reference has the same.")
@click.option("--isolate/--no-isolate", "isolate", default=True, show_default=True,
              help="Run each backend in its own worker process (a crash or hang costs only its own result); "
                   "--no-isolate runs all in this process, for debugging.")
@click.option("--timeout", metavar="SECONDS|STAGE=SECONDS,...",
              help="Time limit of each stage of a backend in its worker (stages setup, convert, compile, run, analyse; "
                   "defaults 300/900/900/600/1800 s). A backend that overstays is killed and reported as timeout.")
@click.option("--isolate-layers", is_flag=True,
              help="Also run every layer on the reference's inputs (its own error) and confirm or drop suspects.")
@click.option("--bisect", is_flag=True,
              help="Also binary-search unmodified prefix graphs for the first diverging layer (fusion undisturbed).")
@click.option("--advise/--no-advise", default=True, show_default=True,
              help="For a diverged fp16/int8 variant, find and verify which modules to keep in fp32.")
@click.option("--task", "task", is_flag=False, flag_value="on", default=None, metavar="[NAME]",
              help="End-task metric on labelled data (default: when the model or --data declares a task). NAME: "
                   "classification, pose, embeddings, an entry point of group backendiff.tasks, or module:function.")
@click.option("--no-task", is_flag=True, help="No end-task evaluation.")
@click.option("--data", "data_file", type=click.Path(path_type=Path), metavar="FILE.npz|DIR",
              help="Labelled data for the task: an .npz with arrays 'inputs' (N, ...) and 'labels', or a folder "
                   "with one sub-folder of images per class.")
@click.option("--preprocess", metavar="SPEC",
              help="How --data DIR images become inputs, e.g. 'imagenet' or 'resize=256,crop=224x224,mean=0.5/0.5/0.5' "
                   "(default: DIR/preprocess.txt, else resize to the model's input, /255).")
@click.option("--max-task-drop", type=float, metavar="POINTS",
              help="Fail (exit 1) a backend whose task metric drops by more than this many points.")
@click.option("--sysnoise", is_flag=True,
              help="Also measure the SysNoise table on these backends (zoo models that declare their pipeline).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def compare(model, backends, input_specs, input_files, calib_files, calib_samples, seed, samples, compare_on, weights,
            trust_pickle,
            export_mode, onnx_reference, atol, rtol,
            json_path, no_json, html_path, md_path, nan_strict, isolate, timeout, no_cache, cache_dir, no_golden, fp64_factor,
            min_sqnr, min_cosine, layerwise, isolate_layers, bisect, advise, task, no_task, data_file,
            preprocess, max_task_drop, sysnoise, quiet):
    """Compare MODEL on each backend against PyTorch eager fp32.

    MODEL is a .pt2 (torch.export), .pt (TorchScript), .onnx file, file.py:factory,
    package.module:factory or zoo:NAME.
    """
    from .compare import compare as run_compare
    from .config import CompareConfig
    from .inputs import parse_input_spec
    from .isolation import parse_limits
    from .partial import PartialLog, partial_path_for
    from .render import print_report

    parse_limits(timeout)               # a malformed --timeout fails before any work
    out_path = None if no_json else (json_path or _default_report_path(model))
    for path in (out_path, html_path, md_path):
        if path is not None:
            _check_writable(path)
    for spec in (atol, rtol):
        if spec is not None and spec < 0:
            raise BadInput("--atol and --rtol must not be negative")
    console = Console(stderr=True)
    config = CompareConfig(
        backends=tuple(backends) or None, seed=seed, samples=samples, compare_on=compare_on,
        input_specs=tuple(parse_input_spec(s) for s in input_specs), input_files=tuple(input_files),
        calib_files=tuple(calib_files), calib_samples=calib_samples,
        weights=weights, trust_pickle=trust_pickle, export_mode=export_mode, reference=onnx_reference, rtol=rtol,
        atol=atol, cache_dir=cache_dir,
        use_cache=not no_cache, golden=not no_golden, fp64_factor=fp64_factor, min_sqnr=min_sqnr, min_cosine=min_cosine,
        layerwise={None: "auto", True: "always", False: "never"}[layerwise], isolate_layers=isolate_layers,
        bisect=bisect, advise=advise,
        task="off" if no_task else ("auto" if task is None else "on"),
        task_name=None if task in (None, "on") else task, data_file=data_file, preprocess=preprocess,
        max_task_drop=max_task_drop, sysnoise=sysnoise,
        nan_strict=nan_strict, isolate=isolate, timeout=timeout, partial_path=partial_path_for(out_path) if out_path else None,
        command="backendiff " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    try:
        if quiet or not console.is_terminal:
            report = run_compare(model, config=config)
        else:
            with console.status("backendiff: starting") as status, StepClock(status) as clock:
                report = run_compare(model, config=config.but(progress=clock.step))
    except KeyboardInterrupt:
        log = config.partial_path
        kept = f"; the finished backends are in {log} (backendiff report {log})" if log and log.exists() else ""
        click.echo(f"backendiff: interrupted{kept}", err=True)
        sys.exit(130)
    if out_path is not None:
        report.write(out_path)
        PartialLog(config.partial_path).remove()
    print_report(report, _stdout_console(), json_path=out_path)
    write_documents(json.loads(report.to_json()), html_path, md_path)
    return report.exit_code


class StepClock:
    """The progress line of a long step: its message, the seconds it has taken so far, and for
    a counted step (``sample 3/10``) an estimate of what is left; refreshed every second by a
    background thread, so a 160 s compile does not look stuck."""

    def __init__(self, status):
        self.status, self.message, self.started = status, "starting", time.monotonic()
        self.first, self.eta = None, None     # (prefix, time, index) of the counted step's first item

    def step(self, message: str) -> None:
        from .render import count_of

        now, counted, self.eta = time.monotonic(), count_of(message), None
        if counted is not None:
            prefix, i, n = counted
            if self.first is None or self.first[0] != prefix or i <= self.first[2]:
                self.first = (prefix, now, i)
            else:                             # the items so far set the pace of the rest
                self.eta = (now - self.first[1]) / (i - self.first[2]) * (n - i + 1)
        self.message, self.started = message, now
        self.show()

    def show(self) -> None:
        from .render import step_line

        elapsed = time.monotonic() - self.started
        left = None if self.eta is None else max(self.eta - elapsed, 0.0)
        self.status.update("backendiff: " + step_line(self.message, elapsed, left))

    def __enter__(self):
        import threading

        self._stop = threading.Event()

        def tick():
            while not self._stop.wait(1.0):
                self.show()
        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        return False


def write_documents(data: dict, html_path: Path | None, md_path: Path | None) -> None:
    """The HTML report and the Markdown summary, both from the report's JSON data (so a saved
    run renders to the same bytes)."""
    if html_path is not None:
        from .html import render_html

        html_path.write_text(render_html(data), encoding="utf-8")
        _stdout_console().print(f"html report: {html_path}", highlight=False)
    if md_path is not None:
        from .markdown import render_markdown

        md_path.write_text(render_markdown(data), encoding="utf-8")
        _stdout_console().print(f"markdown summary: {md_path}", highlight=False)


@cli.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def backends_cmd(as_json):
    """List every backend adapter: available here or not, versions, why not."""
    from rich.table import Table

    from .registry import adapter_class, names

    classes = [adapter_class(n) for n in names()]
    rows = [cls.availability() for cls in classes]
    # specs of an available backend that cannot run here (ort:cuda without onnxruntime-gpu, trt:bf16 on an old GPU)
    missing = {cls.name: cls.unavailable_variants() if r.available and hasattr(cls, "unavailable_variants") else {}
               for cls, r in zip(classes, rows)}
    if as_json:
        click.echo(json.dumps([r.__dict__ | {"variants": list(r.variants),
                                             "variants_unavailable": {k: {"reason": why, "hint": hint}
                                                                      for k, (why, hint) in missing[r.name].items()}}
                               for r in rows], indent=2))
        return 0
    table = Table(title="backendiff backends", title_justify="left")
    for col in ("backend", "available", "versions", "variants", "notes"):
        table.add_column(col, overflow="fold")
    for r in rows:
        versions = ", ".join(f"{k} {v}" for k, v in r.versions.items())
        notes = r.description if r.available else f"{r.reason}" + (f" — {r.hint}" if r.hint else "")
        for spec, (why, hint) in missing[r.name].items():
            notes += f"\n[yellow]{spec}[/yellow]: {why}" + (f" — {hint}" if hint else "")
        table.add_row(r.name, "[green]yes[/green]" if r.available else "[yellow]no[/yellow]", versions,
                      ", ".join(r.variants), notes)
    Console().print(table)
    return 0


@cli.command("zoo")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def zoo_cmd(as_json):
    """List the built-in models: inputs, size, task, and the reference score on its data."""
    from rich.table import Table

    from backendiff.models import ZOO

    from .tasks import evaluate

    rows = []
    for name, entry in ZOO.items():
        try:
            module = entry.build()
        except BadInput as e:        # an entry whose package is not installed (zoo:minilm without [hf])
            rows.append({"name": name, "description": entry.description, "inputs": [s.to_dict() for s in entry.inputs],
                         "parameters": None, "task": entry.task, "score": None, "unavailable": str(e)})
            continue
        row = {"name": name, "description": entry.description,
               "inputs": [s.to_dict() for s in entry.inputs],
               "parameters": sum(p.numel() for p in module.parameters()), "task": entry.task, "score": None}
        task = entry.task_data()
        if task is not None:
            import numpy as np
            import torch

            from .runner import task_outputs

            spec = entry.inputs[0]
            sample = {spec.name: np.zeros(spec.shape, spec.dtype)}

            def run(batch):
                with torch.no_grad():
                    return [module(torch.from_numpy(batch[spec.name])).numpy()]

            outputs = task_outputs(run, task, sample)
            result = evaluate(task, outputs, outputs)
            row["score"] = {"metric": result["metric"], "value": result["reference"], "samples": int(len(task.inputs))}
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    table = Table(title="backendiff zoo", title_justify="left")
    for col in ("model", "inputs", "parameters", "task", "reference score", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        inputs = ", ".join(f"{i['name']}{tuple(i['shape'])}" for i in r["inputs"])
        score = f"{r['score']['metric']} {r['score']['value']:.2f}% ({r['score']['samples']})" if r["score"] else "-"
        params = r["parameters"]
        size = "-" if params is None else f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params / 1e3:.1f}k"
        table.add_row(f"zoo:{r['name']}", inputs, size, r["task"] or "-", score,
                      r["description"] + (f" (unavailable here: {r['unavailable']})" if r.get("unavailable") else ""))
    _stdout_console().print(table)
    return 0


@cli.command("sysnoise")
@click.argument("model")
@click.option("--backends", "-b", default="torch,ort,openvino,tvm", show_default=True, metavar="NAME[,NAME...]",
              help="Backends to measure on (base names; their fp16/bf16/int8 variants are rows of the table).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the table as JSON.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write the table and a chart as an HTML page.")
@click.option("--no-cache", is_flag=True, help="Export and compile afresh; cache nothing.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Cache folder (default ~/.cache/backendiff).")
@click.option("--isolate/--no-isolate", default=True, show_default=True, help="Each backend in its own worker process.")
@click.option("--timeout", metavar="SECONDS|STAGE=SECONDS,...", help="Time limit per backend worker stage.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def sysnoise_cmd(model, backends, json_path, html_path, no_cache, cache_dir, isolate, timeout, quiet):
    """SysNoise on real runtimes: the task metric each pre-processing, inference and
    post-processing noise costs on each backend (Δ = clean − noisy), for a zoo model that
    declares its training pipeline (zoo:digits-cnn, zoo:digits-cnn-narrow, zoo:mspn-tiny)."""
    from .config import CompareConfig
    from .isolation import parse_limits
    from .registry import adapter_class
    from .render import print_sysnoise
    from .sysnoise import measure

    parse_limits(timeout)
    names = [b.strip() for b in backends.split(",") if b.strip()]
    for name in names:
        if ":" in name or "=" in name:
            raise BadInput(f"sysnoise takes base backend names (torch, ort, openvino, tvm), not {name!r}: "
                           "their variants are rows of the table")
        adapter_class(name)                     # unknown names fail here, before any work
    for path in (json_path, html_path):
        if path is not None:
            _check_writable(path)
    config = CompareConfig(use_cache=not no_cache, cache_dir=cache_dir, isolate=isolate, timeout=timeout)
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        result = measure(model, names, config)
    else:
        with console.status("backendiff sysnoise: starting") as status:
            result = measure(model, names, config, progress=lambda m: status.update(f"backendiff: {m}"))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if html_path is not None:
        from .html import render_sysnoise_html

        html_path.write_text(render_sysnoise_html(result), encoding="utf-8")
    print_sysnoise(result, _stdout_console())
    return 0


@cli.command("decoders")
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality of the round trip.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def decoders_cmd(quality, as_json):
    """SysNoise's decoder noise on real photographs that ship in scikit-learn and
    scikit-image: Pillow against OpenCV on each shipped JPEG and on a Pillow JPEG round trip
    at --quality, as pixel differences and as prediction flips of zoo:photo-patches."""
    from rich.table import Table

    from .sysnoise import decoder_flips, decoder_table

    rows, flips = decoder_table(quality), decoder_flips(quality)
    if as_json:
        click.echo(json.dumps({"images": rows, "prediction_flips": flips}, indent=2))
        return 0
    table = Table(title="backendiff decoders · Pillow vs OpenCV", title_justify="left")
    for col in ("image", "stored as", "size", "max |Δ|", "mean |Δ|", "values differing", "JPEG loss (mean)"):
        table.add_column(col, justify="left" if col in ("image", "stored as") else "right")
    for r in rows:
        loss = f"{r['jpeg_loss_mean_abs']:.2f}" if "jpeg_loss_mean_abs" in r else "-"
        table.add_row(r["image"], r["stored"], "x".join(map(str, r["size"])), str(r["max_abs"]), f"{r['mean_abs']:.3f}",
                      f"{100 * r['differing']:.2f}%", loss)
    console = _stdout_console()
    console.print(table)
    table = Table(title=f"prediction flips of {flips['model']} on its {flips['crops']} held-out crops "
                        f"(shipped JPEGs: {', '.join(flips['shipped_jpegs'])})", title_justify="left")
    for col in ("decoded as", "against", "flips", "top-1 a", "top-1 b", "max |Δ|", "mean |Δ|"):
        table.add_column(col, justify="left" if col in ("decoded as", "against") else "right")
    for r in flips["rows"]:
        table.add_row(r["a"], r["b"], f"{r['flips']} ({100 * r['flip_rate']:.2f}%)", f"{r['top1_a']:.2f}",
                      f"{r['top1_b']:.2f}", str(r["max_abs"]), f"{r['mean_abs']:.3f}")
    console.print(table)
    return 0


@cli.command("sweep")
@click.argument("models", nargs=-1)
@click.option("--file", "-f", "sweep_file", type=click.Path(path_type=Path), metavar="SWEEP.toml",
              help="Models, backends, per-model data/task and Ray resources from a TOML sweep file.")
@click.option("--backends", "-b", "backends", multiple=True, metavar="SPEC[,SPEC...]", help="Backend specs (over the file's).")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="A compare option for every model: samples, seed, data, task, preprocess, atol, rtol, ...")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("reports/sweep"), show_default=True,
              help="Folder of the scoreboard (sweep.json, sweep.html) and each cell's report (cells/).")
@click.option("--store", "store_dir", type=click.Path(path_type=Path), help="Finished cells, by content key (default OUT/store).")
@click.option("--force", is_flag=True, help="Redo cells already in the store.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), help="Cells at once (default: the CPU count; local Ray: its CPU slots).")
@click.option("--ray-address", metavar="ADDRESS", help="An existing Ray cluster (default: start a local one for the run).")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads of every backend [file or 1].")
@click.option("--runs", type=click.IntRange(min=1), help="Timed runs per cell [file or 20].")
@click.option("--warmup", type=click.IntRange(min=0), help="Untimed warm-up runs per cell [file or 5].")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import in every worker first (custom backends).")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Cache folder (default ~/.cache/backendiff).")
@click.option("--render-only", is_flag=True,
              help="Run nothing: redraw the scoreboard of the last run of this sweep (same models, backends, "
                   "options) from the store; cells missing there are shown as not run (exit 3).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def sweep_cmd(models, sweep_file, backends, options, out_dir, store_dir, force, executor, workers, ray_address, threads,
              runs, warmup, plugins, cache_dir, render_only, quiet):
    """Sweep MODELS (zoo names, files, factories) x backend specs into one scoreboard, with
    latency; finished cells are stored and skipped on a rerun. Exit 0 when every cell ran,
    3 when some could not (or the scoreboard could not be written)."""
    from .render import print_scoreboard
    from .sweep import CellStore, SweepPlan, exit_code, load_sweep_file, make_plan, render_from_store, run_sweep, split_specs

    if executor != "ray" and ray_address:
        raise BadInput("--ray-address needs --executor ray")
    if render_only and force:
        raise BadInput("--render-only runs nothing: it cannot --force a rerun")
    extra = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--option {item!r}: expected KEY=VALUE")
        extra[key.strip()] = _option_value(value.strip())
    specs = [s for text in backends for s in split_specs(text)]
    if sweep_file is None and not models:
        raise BadInput("sweep needs models (zoo:NAME, files) or --file SWEEP.toml")
    base = load_sweep_file(sweep_file) if sweep_file is not None else SweepPlan(models=(), specs=("ort", "openvino", "tvm"))
    # the command line over the file: models, specs and options replace or join its own
    plan = make_plan(models or base.models, specs or base.specs, {**base.options, **extra},
                     warmup=base.warmup if warmup is None else warmup, runs=base.runs if runs is None else runs,
                     threads=base.threads if threads is None else threads, resources=base.resources,
                     plugins=tuple(base.plugins) + tuple(plugins))
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_writable(out_dir / "sweep.json")
    store = CellStore(store_dir or out_dir / "store")
    console = Console(stderr=True)
    kwargs = dict(executor=executor, workers=workers, ray_address=ray_address, force=force,
                  cache_dir=str(cache_dir) if cache_dir else None)
    try:
        if render_only:
            board = render_from_store(plan, store)
        elif quiet or not console.is_terminal:
            board = run_sweep(plan, store, **kwargs)
        else:
            with console.status("backendiff sweep: starting") as status:
                board = run_sweep(plan, store, progress=lambda m: status.update(f"backendiff sweep: {m}"), **kwargs)
    except KeyboardInterrupt:
        click.echo(f"backendiff: interrupted; the finished cells are in {store.root} (rerun to resume)", err=True)
        sys.exit(130)
    for line in (board.get("run") or {}).get("unstored", []):
        click.echo(f"backendiff: warning: a finished cell could not be stored: {line}", err=True)
    failed = _write_scoreboard(board, out_dir, print_scoreboard)
    if failed:
        again = " ".join(shlex.quote(a) for a in sys.argv[1:] if a not in ("--render-only", "--force"))
        click.echo(f"backendiff: the scoreboard could not be fully written ({'; '.join(failed)}); every finished "
                   f"cell is in {store.root}: `backendiff {again} --render-only` redraws it", err=True)
        return 3
    return exit_code(board)


def _write_scoreboard(board: dict, out_dir: Path, print_scoreboard) -> list[str]:
    """Each cell's report page, sweep.json, sweep.html and the terminal table: each part
    written as far as it goes; returns what failed (one short line each)."""
    from .errors import first_line
    from .html import render_html, render_sweep_html
    from .report import json_safe
    from .sweep import cell_page

    failed: list[str] = []

    def attempt(what: str, write) -> bool:
        try:
            write()
            return True
        except Exception as e:  # noqa: BLE001 - the store holds the cells; say what is missing, go on
            failed.append(f"{what}: {type(e).__name__}: {first_line(e)}"[:300])
            return False

    records = {r["key"]: r for r in board["cells"]}
    pages, bad_pages = {}, []    # each cell's own report beside the scoreboard (a resumed one's kept)
    for model, row in board["matrix"].items():
        for spec, cell in row.items():
            record = records.get(cell.get("key"))
            if record is None or not isinstance(record.get("report"), dict):
                continue
            if cell["key"] not in pages:
                name = cell_page({"model": model, "spec": spec})
                page = out_dir / name

                def write(page=page, record=record):
                    if not (record.get("resumed") and page.exists()):
                        page.parent.mkdir(parents=True, exist_ok=True)
                        page.write_text(render_html(record["report"]), encoding="utf-8")
                try:
                    write()
                    pages[cell["key"]] = name
                except Exception as e:  # noqa: BLE001
                    bad_pages.append(f"{model} on {spec}: {type(e).__name__}: {first_line(e)}")
                    pages[cell["key"]] = None
            cell["report"] = pages[cell["key"]]
    if bad_pages:
        failed.append(f"{len(bad_pages)} cell page(s), first {bad_pages[0]}"[:300])
    links = {f"{m}|{s}": c["report"] for m, row in board["matrix"].items() for s, c in row.items() if c.get("report")}
    attempt("sweep.json", lambda: (out_dir / "sweep.json").write_text(
        json.dumps(json_safe(board), indent=1, allow_nan=False) + "\n"))
    attempt("sweep.html", lambda: (out_dir / "sweep.html").write_text(render_sweep_html(board, links), encoding="utf-8"))
    attempt("the terminal table", lambda: print_scoreboard(board, _stdout_console()))
    written = [p for p in ("sweep.json", "sweep.html") if not any(f.startswith(p) for f in failed)]
    if written:
        _stdout_console().print(f"scoreboard: {', '.join(str(out_dir / p) for p in written)}", highlight=False)
    return failed


def _option_value(text: str):
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


@cli.command("ops")
@click.option("--backends", "-b", "backends", default="ort,openvino,tvm", show_default=True, metavar="SPEC[,SPEC...]",
              help="Backend specs to run every operator on.")
@click.option("--ops", "patterns", multiple=True, default=("*",), show_default=True, metavar="PATTERN",
              help="Operators of PyTorch's OpInfo database to run, as globs on their names, e.g. 'nn.functional.*pool*'.")
@click.option("--dtypes", default="fp32", show_default=True, metavar="DTYPE[,DTYPE...]", help="Dtypes to run (fp32).")
@click.option("--samples", "limit", default=16, show_default=True, help="Sample inputs per operator (the first N).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("reports/ops"), show_default=True,
              help="Where the cells and the matrix go; a rerun resumes from the cells stored there.")
@click.option("--force", is_flag=True, help="Recompute stored cells.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Cache folder (default ~/.cache/backendiff).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def ops_cmd(backends, patterns, dtypes, limit, out_dir, force, cache_dir, quiet):
    """Run PyTorch's operator database (OpInfo) through each backend against PyTorch: which
    operators each runtime gets wrong, before a model hits them."""
    from .config import CompareConfig
    from .ops import run as run_ops
    from .render import print_ops
    from .specs import parse_specs

    specs = [s.text for s in parse_specs(backends)]
    if limit < 1:
        raise BadInput("--samples must be at least 1")
    config = CompareConfig(layerwise="never", advise=False, cache_dir=cache_dir, task="off")
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        matrix = run_ops(list(patterns), specs, dtypes.split(","), limit, out_dir, force, config)
    else:
        with console.status("backendiff: loading PyTorch's operator database") as status, StepClock(status) as clock:
            matrix = run_ops(list(patterns), specs, dtypes.split(","), limit, out_dir, force, config, clock.step)
    print_ops(matrix, _stdout_console(), out_dir / "matrix.json")
    bad = any(cell.get("status") in ("diverged", "failed") for row in matrix["rows"] for cell in row["cells"].values())
    return 1 if bad else 0


@cli.command("report")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write the run as a self-contained HTML report.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write the run as a Markdown summary.")
def report_cmd(run, html_path, md_path):
    """Show a saved run (a JSON report, or the .partial.jsonl log of an interrupted run) again,
    or render it as HTML / Markdown."""
    from .render import print_report
    from .report import Report

    if not run.is_file():
        raise BadInput(f"report file not found: {run}")
    for path in (html_path, md_path):
        if path is not None:
            _check_writable(path)
    try:
        if run.name.endswith(".jsonl"):
            from .partial import read_partial

            report = read_partial(run)
            data = json.loads(report.to_json())
        else:
            data = json.loads(run.read_text())
            report = Report.from_dict(data)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {run} as a backendiff report: {e}") from None
    if html_path is None and md_path is None:
        print_report(report, _stdout_console())
    write_documents(data, html_path, md_path)
    return report.exit_code


def _terminate(signum, frame):
    raise KeyboardInterrupt      # SIGTERM ends a run as Ctrl-C does: workers stopped, the partial log kept


def main() -> None:
    import signal
    import warnings

    signal.signal(signal.SIGTERM, _terminate)

    # deprecation chatter from inside torch/onnxscript is not the user's concern
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    cli()


def _stdout_console() -> Console:
    """Wide enough for the table when the output goes to a file or a CI log."""
    return Console() if sys.stdout.isatty() else Console(width=max(160, Console().width))
