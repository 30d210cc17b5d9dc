"""``backendiff sweep``: a set of models x a set of backend specs, one scoreboard.

Each (model, spec) cell is one ``compare`` of that model on that one spec, with the sweep's
options, plus the latency of the compiled model measured in the backend's own worker. A
finished cell is stored under a content key (the model's content, its inputs and data, the
canonical spec, the options, the runtime versions), so a rerun or a resumed sweep skips it
and ``--force`` redoes it. Cells run on an executor: ``local`` (worker processes on this
machine) or ``ray`` (tasks on a Ray cluster, each asking for the resources its backend
needs). A cell whose worker dies is stored as ``lost`` and the sweep goes on.

This module plans, keys and runs cells and turns stored cells into the scoreboard data;
``render.print_scoreboard`` and ``html.render_sweep_html`` draw it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .cache import content_key, write_atomic
from .errors import BadInput
from .loading import sha256_file
from .metrics import worst_of_outputs

SCHEMA = "backendiff.sweep/1"
CELL_SCHEMA = "backendiff.sweep-cell/1"
LOST = "lost"          # the cell's worker died or its task was lost: no report
ERROR = "error"        # backendiff raised inside the cell (a bad model or data)

# keys a sweep file (or --option) may set, for every model or per model -> CompareConfig field
OPTION_KEYS = {
    "samples": ("samples", int), "seed": ("seed", int), "calib_samples": ("calib_samples", int),
    "atol": ("atol", float), "rtol": ("rtol", float), "max_task_drop": ("max_task_drop", float),
    "data": ("data_file", str), "preprocess": ("preprocess", str), "task": ("task", str),
    "weights": ("weights", str), "inputs": ("input_files", list), "calib": ("calib_files", list),
    "input": ("input_specs", list), "layerwise": ("layerwise", str), "golden": ("golden", bool),
    "advise": ("advise", bool), "timeout": ("timeout", str), "nan_strict": ("nan_strict", bool),
}
PATH_KEYS = {"data", "weights", "inputs", "calib"}


@dataclass(frozen=True)
class ModelEntry:
    model: str                                   # zoo:NAME, a file, module:factory
    options: dict = field(default_factory=dict)  # per-model OPTION_KEYS over the sweep's
    metric: str | None = None                    # the task's number to score by (default its headline)

    @property
    def label(self) -> str:
        return self.model


@dataclass(frozen=True)
class SweepPlan:
    models: tuple[ModelEntry, ...]
    specs: tuple[str, ...]
    options: dict = field(default_factory=dict)      # OPTION_KEYS for every model
    warmup: int = 5
    runs: int = 20
    threads: int = 1                                  # intra-op threads of every backend
    resources: dict = field(default_factory=dict)     # spec text or backend name -> Ray resources
    plugins: tuple[str, ...] = ()                     # modules imported in every worker first

    def cells(self) -> list[tuple[ModelEntry, str]]:
        return [(m, s) for m in self.models for s in self.specs]


# -- planning ---------------------------------------------------------------------------
def check_options(options: dict, where: str, base: Path | None) -> dict:
    """Validate OPTION_KEYS values; relative paths are resolved against ``base``."""
    out = {}
    for key, value in options.items():
        if key not in OPTION_KEYS:
            raise BadInput(f"{where}: unknown option {key!r} (options: {', '.join(sorted(OPTION_KEYS))})")
        _, kind = OPTION_KEYS[key]
        if kind is list:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadInput(f"{where}: option {key!r} must be a string or a list of strings")
        elif kind is bool:
            if not isinstance(value, bool):
                raise BadInput(f"{where}: option {key!r} must be true or false")
        elif kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise BadInput(f"{where}: option {key!r} must be a number{' (whole)' if kind is int else ''}")
            value = kind(value)
        elif not isinstance(value, str):
            raise BadInput(f"{where}: option {key!r} must be a string")
        if key in PATH_KEYS and base is not None:
            value = [str(base / v) for v in value] if isinstance(value, list) else str(base / value)
        out[key] = value
    if "samples" in out and out["samples"] < 1:
        raise BadInput(f"{where}: samples must be at least 1")
    return out


def _positive(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInput(f"sweep: {what} must be a whole number >= {minimum}, not {value!r}")
    return value


def check_specs(specs: Iterable[str]) -> tuple[str, ...]:
    """Every spec parses and names a known backend with known variant/options."""
    from .compare import resolve_specs

    specs = tuple(s.strip() for text in specs for s in split_specs(text))
    if not specs:
        raise BadInput("sweep: no backend specs")
    resolve_specs(list(specs))
    if len(set(specs)) != len(specs):
        raise BadInput("sweep: a backend spec is listed twice")
    return specs


def split_specs(text: str) -> list[str]:
    """``"ort,ort:int8,openvino:fp32,route=onnx"`` -> one text per spec (options stay with theirs)."""
    from .specs import parse_specs

    return [s.text for s in parse_specs(text)]


def make_plan(models: Iterable[str | ModelEntry], specs: Iterable[str], options: dict | None = None, *,
              warmup: int = 5, runs: int = 20, threads: int = 1, resources: dict | None = None,
              plugins: Iterable[str] = ()) -> SweepPlan:
    plugins = tuple(plugins)
    import_plugins(plugins)               # their backends are checked and keyed here too
    entries = tuple(m if isinstance(m, ModelEntry) else ModelEntry(str(m)) for m in models)
    if not entries:
        raise BadInput("sweep: no models")
    if len({m.model for m in entries}) != len(entries):
        raise BadInput("sweep: a model is listed twice")
    return SweepPlan(models=entries, specs=check_specs(specs), options=check_options(options or {}, "sweep", None),
                     warmup=_positive(warmup, "warmup", 0), runs=_positive(runs, "runs"),
                     threads=_positive(threads, "threads"), resources=check_resources(resources or {}),
                     plugins=plugins)


def import_plugins(modules: Iterable[str]) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise BadInput(f"sweep: cannot import plugin {module!r}: {e}") from None


def check_resources(resources: dict) -> dict:
    """``{spec or backend: {RESOURCE: amount}}``; ``CPU``/``GPU`` become Ray's num_cpus/num_gpus."""
    if not isinstance(resources, dict):
        raise BadInput("sweep: resources must be a table of backend -> {resource = amount}")
    for target, wants in resources.items():
        if not isinstance(wants, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in wants.values()):
            raise BadInput(f"sweep: resources for {target!r} must be a table of resource = non-negative amount")
    return {str(k): dict(v) for k, v in resources.items()}


def load_sweep_file(path: str | Path) -> SweepPlan:
    """A TOML sweep file::

        backends = ["ort", "ort:int8", "openvino", "openvino:int8", "tvm"]
        plugins = []                      # modules imported in every worker
        [latency]
        warmup = 5
        runs = 20
        threads = 1
        [options]                         # for every model
        samples = 2
        [resources."openvino:int8"]       # Ray: only on nodes with this custom resource
        "cpu-xeon" = 0.01
        [[models]]
        model = "zoo:digits-cnn"
        [[models]]
        model = "zoo:mspn-tiny"
        task = "pose"

    Relative paths (models that are files, data, inputs, weights) are relative to the file.
    """
    import tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"sweep file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"sweep file {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"sweep file {path} is not valid TOML: {e}") from None
    known = {"backends", "models", "options", "latency", "resources", "plugins"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise BadInput(f"sweep file {path}: unknown key(s) {', '.join(unknown)} (keys: {', '.join(sorted(known))})")
    base = path.parent
    models = []
    for i, m in enumerate(doc.get("models") or []):
        if not isinstance(m, dict) or not isinstance(m.get("model"), str):
            raise BadInput(f"sweep file {path}: models[{i}] needs model = \"zoo:NAME\" or a path")
        name = m["model"]
        if not name.startswith("zoo:") and (base / name.partition(":")[0]).exists():
            name = str(base / name)
        metric = m.get("metric")
        if metric is not None and not isinstance(metric, str):
            raise BadInput(f"sweep file {path}: models[{i}]: metric must be a string (a key of the task's result)")
        models.append(ModelEntry(name, check_options({k: v for k, v in m.items() if k not in ("model", "metric")},
                                                     f"sweep file {path}: models[{i}]", base), metric))
    backends = doc.get("backends") or []
    if isinstance(backends, str):
        backends = [backends]
    latency = doc.get("latency") or {}
    unknown = sorted(set(latency) - {"warmup", "runs", "threads"})
    if unknown:
        raise BadInput(f"sweep file {path}: unknown [latency] key(s) {', '.join(unknown)}")
    return make_plan(models, backends, check_options(doc.get("options") or {}, f"sweep file {path}: [options]", base),
                     warmup=latency.get("warmup", 5), runs=latency.get("runs", 20), threads=latency.get("threads", 1),
                     resources=doc.get("resources") or {}, plugins=doc.get("plugins") or ())


# -- one cell ---------------------------------------------------------------------------
def run_spec(spec: str, threads: int) -> str:
    """The spec a cell runs: the user's, with ``threads=N`` added for backends that take it
    (ONNX Runtime, OpenVINO) unless set."""
    from .registry import adapter_class
    from .specs import parse_spec

    parsed = parse_spec(spec)
    cls = adapter_class(parsed.name)
    if "threads" in getattr(cls, "options", {}) and parsed.option("threads") is None:
        return f"{spec},threads={threads}"
    return spec


def cell_options(plan: SweepPlan, entry: ModelEntry) -> dict:
    """The sweep's options with the model's own over them."""
    return {**plan.options, **entry.options}


def compare_config(options: dict, warmup: int, runs: int, cache_dir: str | None):
    """The CompareConfig of a cell from its (JSON-able) options."""
    from .config import CompareConfig
    from .inputs import parse_input_spec

    kw: dict[str, Any] = {"latency_runs": runs, "latency_warmup": warmup, "isolate": True,
                          "cache_dir": Path(cache_dir) if cache_dir else None}
    for key, value in options.items():
        name, _ = OPTION_KEYS[key]
        if key == "task":
            kw.update(task={"off": "off", "auto": "auto", "on": "on"}.get(value, "on"),
                      task_name=None if value in ("off", "auto", "on") else value)
        elif key == "input":
            kw[name] = tuple(parse_input_spec(s) for s in value)
        elif key in ("inputs", "calib"):
            kw[name] = tuple(Path(v) for v in value)
        elif key in ("data", "weights"):
            kw[name] = Path(value)
        else:
            kw[name] = value
    return CompareConfig(**kw)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise BadInput(f"sweep: {path} does not exist")
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path)}\0{sha256_file(p)}".encode())
    return h.hexdigest()


def model_identity(entry: ModelEntry, options: dict) -> str:
    """The model's content key (weights and code for zoo models and factories, bytes for files)."""
    from .loading import load_model

    weights = options.get("weights")
    loaded = load_model(entry.model, weights=Path(weights) if weights else None)
    return loaded.content_key


def cell_key(model_key: str, spec: str, options: dict, plan: SweepPlan, versions: dict) -> str:
    """The content key of a cell: what the model is, what it is fed, how it is compiled and
    measured, and by which runtime versions."""
    from . import __version__

    data = {k: file_digest(v) if k in PATH_KEYS and isinstance(v, str) else
            [file_digest(p) for p in v] if k in PATH_KEYS else v for k, v in sorted(options.items())}
    return content_key("sweep-cell", __version__, model_key, spec, data,
                       {"warmup": plan.warmup, "runs": plan.runs, "threads": plan.threads}, versions)


def spec_versions(spec: str) -> dict:
    from .registry import adapter_class
    from .specs import parse_spec

    return adapter_class(parse_spec(spec).name).versions()


def cell_payload(plan: SweepPlan, entry: ModelEntry, spec: str, key: str, cache_dir: str | None) -> dict:
    """What a worker needs to run one cell: plain JSON-able data."""
    return {"key": key, "model": entry.model, "spec": spec, "run_spec": run_spec(spec, plan.threads),
            "options": cell_options(plan, entry), "threads": plan.threads, "warmup": plan.warmup,
            "runs": plan.runs, "plugins": list(plan.plugins), "cache_dir": cache_dir}


def run_cell(payload: dict) -> dict:
    """Run one cell (in a worker): ``compare`` of the model on the one spec, with latency.
    Returns the cell record; backendiff's own errors (bad model, bad data) become ``error``."""
    import platform
    import socket

    import warnings

    os.environ["TVM_NUM_THREADS"] = str(payload["threads"])   # TVM's runtime pool reads it once
    warnings.filterwarnings("ignore", category=FutureWarning)  # as the CLI: torch's deprecation chatter
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    t0 = time.perf_counter()
    record = {"schema": CELL_SCHEMA, "key": payload["key"], "model": payload["model"], "spec": payload["spec"],
              "run_spec": payload["run_spec"], "worker": {"host": socket.gethostname(), "pid": os.getpid(),
                                                          "python": platform.python_version()}}
    try:
        import_plugins(payload.get("plugins") or ())
        import torch

        torch.set_num_threads(payload["threads"])       # the reference and export in this worker
        from .compare import compare

        config = compare_config(payload["options"], payload["warmup"], payload["runs"], payload.get("cache_dir"))
        report = compare(payload["model"], backends=[payload["run_spec"]], config=config)
    except BadInput as e:
        record.update(status=ERROR, error={"type": "BadInput", "message": str(e)})
    except Exception as e:  # noqa: BLE001 - the cell's failure is its data; the sweep goes on
        from .errors import first_line

        record.update(status=ERROR, error={"type": type(e).__name__, "message": first_line(e)})
    else:
        result = report.backends[0]
        record.update(status=result.status, report=report.to_dict())
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    return record


def lost_record(payload: dict, message: str, **extra) -> dict:
    return {"schema": CELL_SCHEMA, "key": payload["key"], "model": payload["model"], "spec": payload["spec"],
            "run_spec": payload["run_spec"], "status": LOST, "error": {"type": "WorkerLost", "message": message, **extra}}


# -- executors --------------------------------------------------------------------------
def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))


def _cell_process(conn, payload: dict) -> None:
    try:
        conn.send(run_cell(payload))
    finally:
        conn.close()


class LocalExecutor:
    """Worker processes on this machine, ``workers`` at a time, one fresh process per cell
    (forked from a forkserver that has imported torch and backendiff: cheap to start, and
    a cell that dies takes nothing else with it)."""
    name = "local"

    def __init__(self, workers: int):
        self.workers = workers

    def run(self, payloads: list[dict], on_done: Callable[[dict], None], progress: Callable[[str], None]) -> None:
        import multiprocessing
        from multiprocessing.connection import wait

        from .isolation import death_message

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "backendiff.compare", "backendiff.sweep"])
        pending = list(payloads)
        running: dict[Any, tuple[Any, dict]] = {}      # receiver -> (process, payload)
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    payload = pending.pop(0)
                    receiver, sender = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_cell_process, args=(sender, payload), daemon=False)
                    proc.start()
                    sender.close()
                    running[receiver] = (proc, payload)
                    progress(f"running {payload['model']} on {payload['spec']} ({len(running)} at once)")
                for receiver in wait(list(running)):
                    proc, payload = running.pop(receiver)
                    try:
                        record = receiver.recv()
                    except (EOFError, OSError):
                        proc.join()
                        message, sig = death_message(proc.exitcode, "the cell")
                        record = lost_record(payload, message, signal=sig, exitcode=proc.exitcode)
                    receiver.close()
                    proc.join()
                    on_done(record)
        finally:
            for receiver, (proc, _) in running.items():
                proc.kill()
                proc.join()
                receiver.close()


def needs_gpu(spec: str) -> bool:
    """TensorRT, and ONNX Runtime on its CUDA or TensorRT provider (``ort:cuda``,
    ``ort:fp16,ep=trt``), run on an NVIDIA GPU."""
    from .registry import ALIASES
    from .specs import parse_spec

    parsed = parse_spec(spec)
    name = ALIASES.get(parsed.name, parsed.name)
    return name == "trt" or (name == "ort" and (parsed.variant in ("cuda", "trt") or parsed.option("ep") in ("cuda", "trt")))


def cell_resources(spec: str, threads: int, resources: dict) -> dict:
    """Ray task options of a cell: CPUs for its threads, a GPU for GPU backends, and custom
    resources declared for its spec or its backend name (the spec's entry wins)."""
    from .registry import ALIASES
    from .specs import parse_spec

    name = parse_spec(spec).name
    wants = dict(resources.get(ALIASES.get(name, name), {}))
    wants.update(resources.get(spec, {}))
    out = {"num_cpus": float(wants.pop("CPU", threads)), "num_gpus": float(wants.pop("GPU", 1 if needs_gpu(spec) else 0))}
    if wants:
        out["resources"] = {k: float(v) for k, v in wants.items()}
    return out


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (one line) on a ``HOST:PORT`` nobody listens on: Ray itself retries for
    minutes. ``auto``, ``local`` and ``ray://`` (Ray Client) addresses are left to Ray."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInput(f"--ray-address {address!r}: expected HOST:PORT of the head node (ray start --head), "
                       "auto, or ray://HOST:PORT")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise BadInput(f"--ray-address {address}: no Ray head node answers there ({e.strerror or e})") from None


class RayExecutor:
    """Tasks on a Ray cluster: ``address`` of an existing one (``ray start --head``), or a
    local Ray started for the run with ``workers`` CPU slots of ``threads`` each. Every cell
    asks for the resources of ``cell_resources``; a worker that dies or a node that is lost
    marks its cell ``lost``."""
    name = "ray"

    def __init__(self, address: str | None, workers: int, threads: int, resources: dict):
        self.address, self.workers, self.threads, self.resources = address, workers, threads, resources

    def _init(self):
        import logging
        import sys

        try:
            import ray
        except ModuleNotFoundError:
            raise BadInput("--executor ray needs Ray: pip install 'backendiff[ray]'") from None
        if ray.is_initialized():
            return ray, False
        # local workers import what the driver imports (a plugin next to the sweep file)
        paths = [p for p in sys.path if p and os.path.isdir(p) and "site-packages" not in p]
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)}}
        if self.address:
            check_ray_address(self.address)
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False, runtime_env=env, logging_level=logging.ERROR)
            else:
                ray.init(num_cpus=self.workers * self.threads, include_dashboard=False, log_to_driver=False,
                         runtime_env=env, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as e:
            auth = (" (a cluster with token authentication, the default of `ray start` since Ray 2.59, needs "
                    "RAY_AUTH_MODE=token here and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token)"
                    if self.address and not os.environ.get("RAY_AUTH_MODE") else "")
            raise BadInput(f"--executor ray: cannot reach Ray at {self.address or 'a new local instance'}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}{auth}") from None
        return ray, True

    def run(self, payloads: list[dict], on_done: Callable[[dict], None], progress: Callable[[str], None]) -> None:
        ray, started = self._init()
        try:
            remote = ray.remote(max_retries=0)(run_cell)
            refs = {}
            for payload in payloads:
                opts = cell_resources(payload["spec"], self.threads, self.resources)
                refs[remote.options(**opts).remote(payload)] = payload
            progress(f"{len(refs)} cells submitted to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                payload = refs.pop(done[0])
                try:
                    record = ray.get(done[0])
                except Exception as e:  # noqa: BLE001 - WorkerCrashedError, node lost, ...
                    record = lost_record(payload, f"the Ray task was lost: {type(e).__name__}: "
                                                  f"{str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
                on_done(record)
        finally:
            if started:
                ray.shutdown()


# -- the store --------------------------------------------------------------------------
class CellStore:
    """Finished cells as JSON files named by their content key."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "cells" / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, record: dict) -> Path:
        path = self.path(record["key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n"))


def keep_record(record: dict) -> bool:
    """A cell worth keeping for a resume: it produced a report. Lost cells and backendiff
    errors are rerun next time."""
    return record.get("status") not in (LOST, ERROR)


def run_sweep(plan: SweepPlan, store: CellStore, *, executor="local", workers: int | None = None,
              ray_address: str | None = None, force: bool = False, cache_dir: str | None = None,
              progress: Callable[[str], None] = lambda m: None) -> dict:
    """Run every cell not already stored (all with ``force``); return the scoreboard data."""
    workers = workers or default_workers()
    t0 = time.perf_counter()
    progress("keying cells")
    versions = {s: spec_versions(s) for s in plan.specs}
    planned, todo, records = [], [], {}
    for entry in plan.models:
        options = cell_options(plan, entry)
        model_key = model_identity(entry, options)
        for spec in plan.specs:
            key = cell_key(model_key, spec, options, plan, versions[spec])
            planned.append((entry.model, spec, key))
            stored = None if force else store.get(key)
            if stored is not None and keep_record(stored):
                records[key] = stored | {"resumed": True}
            else:
                todo.append(cell_payload(plan, entry, spec, key, cache_dir))

    def done(record: dict) -> None:
        store.put(record)
        records[record["key"]] = record
        progress(f"{len(records)}/{len(planned)} cells: {record['model']} on {record['spec']}: {record['status']}")

    if todo:
        runner = (RayExecutor(ray_address, workers, plan.threads, plan.resources) if executor == "ray"
                  else LocalExecutor(workers))
        runner.run(todo, done, progress)
    board = scoreboard(plan, [records[k] for _, _, k in planned if k in records])
    board["run"] = {"executor": executor, "workers": workers, "ray_address": ray_address, "threads": plan.threads,
                    "cells": len(planned), "ran": len(todo), "resumed": len(planned) - len(todo),
                    "wall_s": round(time.perf_counter() - t0, 3)}
    return board


# -- the scoreboard ---------------------------------------------------------------------
def task_score(task: dict, metric: str | None) -> dict | None:
    """The task number a cell is scored by: ``metric`` of the task's result where it has
    one with its ``<metric>_reference`` (pose: ``ap``), else the task's headline metric."""
    if "delta" not in task:
        return None
    out = {"metric": task.get("metric"), "reference": task.get("reference"), "value": task.get("value"),
           "delta": task["delta"], "unit": task.get("unit", "")}
    if metric and metric != task.get("metric") and f"{metric}_reference" in task and metric in task:
        ref, value = float(task[f"{metric}_reference"]), float(task[metric])
        out = {"metric": metric, "reference": ref, "value": value, "delta": value - ref, "unit": task.get("unit", "")}
    if "flip_rate" in task:
        out.update(flip_rate=task["flip_rate"], flip_label=task.get("flip_label", "flipped"))
    return out


def summarize_cell(record: dict, metric: str | None = None) -> dict:
    """One scoreboard entry from a cell record: status, worst SQNR and max |Δ|, the task's
    metric and delta (and how many predictions changed), latency and throughput."""
    out = {"status": record.get("status"), "key": record.get("key")}
    if record.get("error"):
        out["error"] = record["error"].get("message")
    report = record.get("report")
    if not report:
        return out
    b = report["backends"][0]
    if b.get("error") and "error" not in out:
        out["error"] = b["error"].get("message")
    worst = worst_of_outputs(b.get("outputs", []))
    if worst:
        out["sqnr_db"], out["max_abs"] = worst["sqnr_db"], worst["max_abs"]
    score = task_score(b.get("task") or {}, metric)
    if score is not None:
        out["task"] = score
    if b.get("latency"):
        out["latency"] = b["latency"]
    if b.get("first_divergence"):
        out["first_divergence"] = b["first_divergence"].get("module") or b["first_divergence"].get("layer")
    return out


def base_spec(spec: str, specs: Iterable[str]) -> str | None:
    """The fp32 spec of the same backend in the sweep (``openvino:int8`` -> ``openvino``)."""
    from .specs import parse_spec

    parsed = parse_spec(spec)
    if parsed.variant in (None, "fp32"):
        return None
    for other in specs:
        o = parse_spec(other)
        if o.name == parsed.name and o.variant in (None, "fp32") and dict(o.options) == dict(parsed.options):
            return other
    return None


def findings(matrix: dict, specs: list[str]) -> list[dict]:
    """Each low-precision cell against its backend's fp32 cell: speed-up and what it costs."""
    from .latency import speedup

    out = []
    for model, row in matrix.items():
        for spec in specs:
            base = base_spec(spec, specs)
            if base is None or spec not in row or base not in row:
                continue
            cell, ref = row[spec], row[base]
            ratio = speedup(ref.get("latency"), cell.get("latency"))
            if ratio is None:
                continue
            item = {"model": model, "spec": spec, "base": base, "speedup": ratio}
            if cell.get("task") and ref.get("task"):
                item.update(metric=cell["task"]["metric"], drop=round(ref["task"]["value"] - cell["task"]["value"], 4),
                            unit=cell["task"].get("unit", ""))
            if cell.get("sqnr_db") is not None:
                item["sqnr_db"] = cell["sqnr_db"]
            out.append(item)
    return out


def finding_text(f: dict) -> str:
    r = f["speedup"]
    faster = f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"
    if "drop" in f and abs(f["drop"]) < 0.005:
        cost = f"no change in {f['metric']}"
    elif "drop" in f:
        what = "drop" if f["drop"] >= 0 else "gain"
        cost = f"a {abs(f['drop']):.2f}-point {what} in {f['metric']}"
    else:
        cost = f"SQNR {f['sqnr_db']:.1f} dB" if f.get("sqnr_db") is not None else "no accuracy measure"
    return f"{f['spec']} on {f['model']} is {faster} than {f['base']} for {cost}"


def scoreboard(plan: SweepPlan, records: list[dict]) -> dict:
    """The sweep's JSON: the matrix model -> spec -> summary, findings, and every cell."""
    matrix: dict[str, dict[str, dict]] = {m.model: {} for m in plan.models}
    metrics = {m.model: m.metric for m in plan.models}
    for r in records:
        matrix.setdefault(r["model"], {})[r["spec"]] = summarize_cell(r, metrics.get(r["model"]))
    found = findings(matrix, list(plan.specs))
    env = next((r["report"]["environment"] for r in records if r.get("report")), {})
    return {"schema": SCHEMA, "models": [m.model for m in plan.models], "specs": list(plan.specs),
            "latency": {"warmup": plan.warmup, "runs": plan.runs, "threads": plan.threads},
            "environment": env, "matrix": matrix, "findings": [f | {"text": finding_text(f)} for f in found],
            "cells": records}


def exit_code(board: dict) -> int:
    """0: every cell ran (agreeing or not); 3: some cell could not run."""
    from .report import DIVERGED, OK

    statuses = [c.get("status") for row in board["matrix"].values() for c in row.values()]
    return 0 if statuses and all(s in (OK, DIVERGED) for s in statuses) else 3


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def cell_page(record: dict) -> str:
    """The file name of a cell's own HTML report, beside the scoreboard."""
    return f"cells/{slug(record['model'])}__{slug(record['spec'])}.html"
