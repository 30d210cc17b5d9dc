"""The command line: a thin layer over ``backendiff.compare`` and the report renderers.

Exit codes: 0 every backend agrees; 1 a backend diverged; 2 bad usage or input (one
line, no traceback); 3 a requested backend could not run; 4 nothing diverged but a
comparison was vacuous (the reference output carries no signal).
"""
from __future__ import annotations

import json
import os
import sys
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
@click.option("--max-memory", "max_memory", metavar="SIZE",
              help="Memory the layer-wise view may use (e.g. 4GB, 512MB; default: half of this machine's): "
                   "values are compared as they arrive and dropped, and a backend that can captures them in chunks "
                   "of layers over several runs.")
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
def compare(model, quiet, **opts):
    """Compare MODEL on each backend against PyTorch eager fp32.

    MODEL is a .pt2 (torch.export), .pt (TorchScript), .onnx file, file.py:factory,
    package.module:factory or zoo:NAME.
    """
    from .cli_options import config_from_cli, report_path
    from .compare import compare as run_compare
    from .documents import write_documents, write_report
    from .progress import progress_display
    from .render import print_report, stdout_console

    out_path = report_path(model, opts)
    config = config_from_cli(opts, out_path, sys.argv[1:])
    try:
        with progress_display(quiet, "backendiff: starting") as progress:
            report = run_compare(model, config=config.but(progress=progress))
    except KeyboardInterrupt:
        log = config.partial_path
        kept = f"; the finished backends are in {log} (backendiff report {log})" if log and log.exists() else ""
        click.echo(f"backendiff: interrupted{kept}", err=True)
        sys.exit(130)
    if out_path is not None:
        write_report(report, out_path)
    console = stdout_console()
    print_report(report, console, json_path=out_path)
    write_documents(json.loads(report.to_json()), opts["html_path"], opts["md_path"], console)
    return report.exit_code


@cli.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def backends_cmd(as_json):
    """List every backend adapter: available here or not, versions, why not."""
    from .listings import backend_rows
    from .render import print_backends

    rows = backend_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_backends(rows, Console())
    return 0


@cli.command("zoo")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def zoo_cmd(as_json):
    """List the built-in models: inputs, size, task, and the reference score on its data."""
    from .listings import zoo_rows
    from .render import print_zoo, stdout_console

    rows = zoo_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_zoo(rows, stdout_console())
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
def sysnoise_cmd(model, json_path, html_path, quiet, **opts):
    """SysNoise on real runtimes: the task metric each pre-processing, inference and
    post-processing noise costs on each backend (Δ = clean − noisy), for a zoo model that
    declares its training pipeline (zoo:digits-cnn, zoo:digits-cnn-narrow, zoo:mspn-tiny)."""
    from .cli_options import sysnoise_from_cli
    from .documents import write_sysnoise
    from .progress import progress_display
    from .render import print_sysnoise, stdout_console
    from .sysnoise import measure

    names, config = sysnoise_from_cli(opts, (json_path, html_path))
    with progress_display(quiet, "backendiff sysnoise: starting", prefix="backendiff: ") as progress:
        result = measure(model, names, config, progress=progress)
    write_sysnoise(result, json_path, html_path)
    print_sysnoise(result, stdout_console())
    return 0


@cli.command("decoders")
@click.option("--quality", default=90, show_default=True, type=click.IntRange(1, 100), help="JPEG quality of the round trip.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def decoders_cmd(quality, as_json):
    """SysNoise's decoder noise on real photographs that ship in scikit-learn and
    scikit-image: Pillow against OpenCV on each shipped JPEG and on a Pillow JPEG round trip
    at --quality, as pixel differences and as prediction flips of zoo:photo-patches."""
    from .render import print_decoders, stdout_console
    from .sysnoise import decoder_flips, decoder_table

    result = {"images": decoder_table(quality), "prediction_flips": decoder_flips(quality)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_decoders(result, stdout_console())
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
def sweep_cmd(out_dir, store_dir, render_only, quiet, **opts):
    """Sweep MODELS (zoo names, files, factories) x backend specs into one scoreboard, with
    latency; finished cells are stored and skipped on a rerun. Exit 0 when every cell ran,
    3 when some could not (or the scoreboard could not be written)."""
    from .cli_options import check_writable, redraw_command, sweep_from_cli
    from .documents import write_scoreboard
    from .progress import progress_display
    from .render import stdout_console
    from .sweep import CellStore, exit_code, render_from_store, run_sweep

    plan, run_options = sweep_from_cli(opts, render_only)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_writable(out_dir / "sweep.json")
    store = CellStore(store_dir or out_dir / "store")
    try:
        if render_only:
            board = render_from_store(plan, store)
        else:
            with progress_display(quiet, "backendiff sweep: starting", prefix="backendiff sweep: ") as progress:
                board = run_sweep(plan, store, progress=progress, **run_options)
    except KeyboardInterrupt:
        click.echo(f"backendiff: interrupted; the finished cells are in {store.root} (rerun to resume)", err=True)
        sys.exit(130)
    for line in (board.get("run") or {}).get("unstored", []):
        click.echo(f"backendiff: warning: a finished cell could not be stored: {line}", err=True)
    failed = write_scoreboard(board, out_dir, stdout_console())
    if failed:
        click.echo(f"backendiff: the scoreboard could not be fully written ({'; '.join(failed)}); every finished "
                   f"cell is in {store.root}: `backendiff {redraw_command(sys.argv[1:])} --render-only` redraws it", err=True)
        return 3
    return exit_code(board)


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
@click.option("--batch", type=int, default=None,
              help="Operators per exported module (one export and compile serve them; a failing batch is split). "
                   "Default: 8, fewer where that leaves a job fewer than two batches.")
@click.option("--jobs", "-j", default=min(4, os.cpu_count() or 1), show_default="the CPUs, at most 4",
              help="Batches run at once, each in a process of its own.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Cache folder (default ~/.cache/backendiff).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
def ops_cmd(backends, patterns, dtypes, limit, out_dir, force, batch, jobs, cache_dir, quiet):
    """Run PyTorch's operator database (OpInfo) through each backend against PyTorch: which
    operators each runtime gets wrong, before a model hits them."""
    from .cli_options import ops_from_cli
    from .documents import write_ops_html
    from .ops import exit_code
    from .ops import run as run_ops
    from .progress import progress_display
    from .render import print_ops, stdout_console

    specs, config = ops_from_cli(backends, limit, cache_dir)
    with progress_display(quiet, "backendiff: loading PyTorch's operator database") as progress:
        matrix = run_ops(list(patterns), specs, dtypes.split(","), limit, out_dir, force, config, progress, batch, jobs)
    page = write_ops_html(matrix, out_dir)
    print_ops(matrix, stdout_console(), out_dir / "matrix.json", page)
    return exit_code(matrix)


@cli.command("report")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="Write the run as a self-contained HTML report.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write the run as a Markdown summary.")
def report_cmd(run, html_path, md_path):
    """Show a saved run (a JSON report, or the .partial.jsonl log of an interrupted run) again,
    or render it as HTML / Markdown."""
    from .cli_options import check_outputs
    from .documents import load_run, write_documents
    from .render import print_report, stdout_console

    if not run.is_file():
        raise BadInput(f"report file not found: {run}")
    check_outputs(html_path, md_path)
    report, data = load_run(run)
    console = stdout_console()
    if html_path is None and md_path is None:
        print_report(report, console)
    write_documents(data, html_path, md_path, console)
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
