"""``backendiff sweep``: a set of models x a set of backend specs, one scoreboard.

Each (model, spec) cell is one ``compare`` of that model on that one spec, with the sweep's
options, plus the latency of the compiled model measured in the backend's own worker. A
finished cell is stored under a content key (the model's exported program as
``compare.model_key`` gives it, its inputs and data, the canonical spec, the options, the
runtime versions), so a rerun or a resumed sweep skips it and ``--force`` redoes it; two
entries with the same key share their cells and are named identical. Each run also stores
its plan (which key serves which model and spec), from which ``render_from_store`` redraws
the scoreboard without running anything. Cells run on an executor: ``local`` (worker
processes on this machine) or ``ray`` (tasks on a Ray cluster, each asking for the
resources its backend needs). A cell whose worker dies is stored as ``lost`` and the sweep
goes on.

This module plans, keys and runs cells and turns stored cells into the scoreboard data;
``render.print_scoreboard`` and ``html.render_sweep_html`` draw it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .cache import content_key, write_atomic
from .errors import BadInput
from .loading import sha256_file
from .metrics import worst_of_outputs
from .report import RAN, VACUOUS, json_safe

SCHEMA = "backendiff.sweep/1"
CELL_SCHEMA = "backendiff.sweep-cell/1"
LOST = "lost"          # the cell's worker died or its task was lost: no report
ERROR = "error"        # backendiff raised inside the cell (a bad model or data)
NOT_RUN = "not run"    # planned, but no record of it (never ran, lost from the store)
# RAN (report): ok, diverged, vacuous (ran, but the reference output is degenerate: the
# comparison says nothing); every other status makes the sweep's exit code 3

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


def model_identity(entry: ModelEntry, options: dict, plan: SweepPlan, cache_dir: str | None = None) -> str | None:
    """The model's content key as ``compare`` with the cell's options keys it: the exported
    program the runtimes consume (with its inputs resolved), never its Python source. None
    when the model cannot be exported: its cells are then never cached nor resumed. Bad
    input (a missing file, bad options) raises BadInput."""
    from .compare import model_key

    return model_key(entry.model, compare_config(options, plan.warmup, plan.runs, cache_dir))


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


def cell_payload(plan: SweepPlan, entry: ModelEntry, spec: str, key: str, cache_dir: str | None,
                 resumable: bool = True) -> dict:
    """What a worker needs to run one cell: plain JSON-able data. A cell that is not
    ``resumable`` (its model has no content key) runs without the artifact cache."""
    return {"key": key, "model": entry.model, "spec": spec, "run_spec": run_spec(spec, plan.threads),
            "options": cell_options(plan, entry), "threads": plan.threads, "warmup": plan.warmup,
            "runs": plan.runs, "plugins": list(plan.plugins), "cache_dir": cache_dir, "resumable": resumable}


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
    if not payload.get("resumable", True):
        record["resumable"] = False
    try:
        import_plugins(payload.get("plugins") or ())
        import torch

        torch.set_num_threads(payload["threads"])       # the reference and export in this worker
        from .compare import compare

        config = compare_config(payload["options"], payload["warmup"], payload["runs"], payload.get("cache_dir"))
        if not payload.get("resumable", True):
            config = config.but(use_cache=False)       # a model without a content key: nothing of it is cached
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
    record = {"schema": CELL_SCHEMA, "key": payload["key"], "model": payload["model"], "spec": payload["spec"],
              "run_spec": payload["run_spec"], "status": LOST,
              "error": {"type": "WorkerLost", "message": message, **extra}}
    if not payload.get("resumable", True):
        record["resumable"] = False
    return record


# -- executors --------------------------------------------------------------------------
def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))


def _cell_process(conn, payload: dict) -> None:
    try:
        conn.send(run_cell(payload))
    except (BrokenPipeError, ConnectionResetError):
        pass            # the driver is gone (interrupted): nobody is left to tell
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
                    proc, payload = running[receiver]       # stays in `running` until joined
                    try:
                        record = receiver.recv()
                    except (EOFError, OSError):
                        proc.join()
                        message, sig = death_message(proc.exitcode, "the cell")
                        record = lost_record(payload, message, signal=sig, exitcode=proc.exitcode)
                    proc.join()
                    del running[receiver]
                    receiver.close()
                    on_done(record)
        finally:
            for receiver, (proc, _) in running.items():
                proc.kill()
                proc.join()
                receiver.close()


def needs_gpu(spec: str) -> bool:
    """Whether the spec's adapter says it runs on an NVIDIA GPU (TensorRT; ONNX Runtime on its
    CUDA or TensorRT provider)."""
    from .registry import ALIASES, adapter_class
    from .specs import parse_spec

    parsed = parse_spec(spec)
    return adapter_class(ALIASES.get(parsed.name, parsed.name)).needs_gpu(parsed)


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
    """Finished cells as JSON files named by their content key, and the plan of each sweep
    (which cell key serves which model and spec) for re-rendering without running."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "cells" / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):          # missing, unreadable, not JSON
            return None
        return record if isinstance(record, dict) else None

    def put(self, record: dict) -> Path:
        path = self.path(record["key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n"
        return write_atomic(path, lambda tmp: tmp.write_text(text))

    def plan_path(self, plan_key: str) -> Path:
        return self.root / "plans" / f"{plan_key}.json"

    def put_plan(self, plan_key: str, planned: list[dict]) -> Path:
        path = self.plan_path(plan_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"schema": PLAN_SCHEMA, "cells": planned}, indent=1) + "\n"
        return write_atomic(path, lambda tmp: tmp.write_text(text))

    def get_plan(self, plan_key: str) -> list[dict] | None:
        try:
            doc = json.loads(self.plan_path(plan_key).read_text())
            return [c for c in doc["cells"] if isinstance(c, dict) and isinstance(c.get("key"), str)]
        except (OSError, ValueError, KeyError, TypeError):
            return None


PLAN_SCHEMA = "backendiff.sweep-plan/1"


def plan_key(plan: SweepPlan) -> str:
    """What names a sweep for ``--render-only``: its models with their options, its specs and
    its latency settings (not the executor, resources or plugins, which do not change a cell)."""
    return content_key("sweep-plan", [[m.model, cell_options(plan, m)] for m in plan.models], list(plan.specs),
                       {"warmup": plan.warmup, "runs": plan.runs, "threads": plan.threads})


def keep_record(record: dict) -> bool:
    """A cell worth keeping for a resume: it produced a report. Lost cells and backendiff
    errors are rerun next time, and so is a cell whose model has no content key."""
    return record.get("status") not in (LOST, ERROR) and record.get("resumable", True) is not False


def plan_cells(plan: SweepPlan, cache_dir: str | None = None,
               progress: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Every planned cell: ``{"model", "spec", "key", "resumable"}``. A model that cannot be
    exported gets cell keys no other run will ever have (a random nonce): its cells are
    run every time and never served from the store."""
    versions = {s: spec_versions(s) for s in plan.specs}
    planned = []
    for i, entry in enumerate(plan.models):
        progress(f"keying {entry.model} ({i + 1}/{len(plan.models)})")
        options = cell_options(plan, entry)
        key = model_identity(entry, options, plan, cache_dir)
        resumable = key is not None
        if key is None:
            key = f"unkeyed-{secrets.token_hex(16)}"
        for spec in plan.specs:
            planned.append({"model": entry.model, "spec": spec, "resumable": resumable,
                            "key": cell_key(key, spec, options, plan, versions[spec])})
    return planned


def run_sweep(plan: SweepPlan, store: CellStore, *, executor="local", workers: int | None = None,
              ray_address: str | None = None, force: bool = False, cache_dir: str | None = None,
              progress: Callable[[str], None] = lambda m: None) -> dict:
    """Run every cell not already stored (all with ``force``); return the scoreboard data.
    A cell key planned for several models (identical entries) runs once and serves each."""
    workers = workers or default_workers()
    t0 = time.perf_counter()
    progress("keying cells")
    planned = plan_cells(plan, cache_dir, progress)
    store.put_plan(plan_key(plan), planned)
    entries = {m.model: m for m in plan.models}
    todo, records, unstored, seen = [], {}, [], set()
    for c in planned:
        if c["key"] in seen:
            continue                                   # an identical entry: its cell is already planned
        seen.add(c["key"])
        stored = None if force or not c["resumable"] else store.get(c["key"])
        if stored is not None and keep_record(stored):
            records[c["key"]] = stored | {"resumed": True}
        else:
            todo.append(cell_payload(plan, entries[c["model"]], c["spec"], c["key"], cache_dir, c["resumable"]))

    def done(record: dict) -> None:
        try:
            store.put(record)
        except (OSError, ValueError, TypeError) as e:   # the sweep goes on; the cell is still shown
            unstored.append(f"{record.get('model')} on {record.get('spec')}: {type(e).__name__}: {e}")
        records[record["key"]] = record
        progress(f"{len(records)}/{len(planned)} cells: {record['model']} on {record['spec']}: {record['status']}")

    if todo:
        runner = (RayExecutor(ray_address, workers, plan.threads, plan.resources) if executor == "ray"
                  else LocalExecutor(workers))
        runner.run(todo, done, progress)
    board = scoreboard(plan, records, planned)
    board["run"] = {"executor": executor, "workers": workers, "ray_address": ray_address, "threads": plan.threads,
                    "cells": len(planned), "ran": len(todo), "resumed": len({c["key"] for c in planned}) - len(todo),
                    "wall_s": round(time.perf_counter() - t0, 3)}
    if unstored:
        board["run"]["unstored"] = unstored
    return board


def render_from_store(plan: SweepPlan, store: CellStore) -> dict:
    """The scoreboard of the last run of ``plan`` from the store alone: no model is loaded,
    exported or run. Cells missing from the store are "not run"."""
    t0 = time.perf_counter()
    planned = store.get_plan(plan_key(plan))
    if planned is None:
        raise BadInput(f"sweep --render-only: no run of this sweep in the store {store.root} (same models, "
                       "backends, options and latency settings); run it without --render-only first")
    records = {c["key"]: r for c in planned if (r := store.get(c["key"])) is not None}
    board = scoreboard(plan, records, planned)
    board["run"] = {"executor": None, "render_only": True, "workers": 0, "threads": plan.threads,
                    "cells": len(planned), "ran": 0, "resumed": len({c["key"] for c in planned} & set(records)),
                    "missing": sum(1 for c in planned if c["key"] not in records),
                    "wall_s": round(time.perf_counter() - t0, 3)}
    return board


# -- the scoreboard ---------------------------------------------------------------------
# Every cell record is summarized defensively: a record may come from a crashed worker, an
# older backendiff, a hand-edited store or a backend that returned the wrong outputs, and the
# scoreboard is still built (a field that is missing or not a finite number is left out).
def _finite(value) -> float | int | None:
    """``value`` if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _message(error) -> str | None:
    """The message of an error dict (or an error given as text)."""
    if isinstance(error, dict):
        error = error.get("message") or error.get("type")
    return error.strip() if isinstance(error, str) and error.strip() else None


def task_score(task: dict, metric: str | None) -> dict | None:
    """The task number a cell is scored by: ``metric`` of the task's result where it has
    one with its ``<metric>_reference`` (pose: ``ap``), else the task's headline metric.
    None without a finite delta (the task failed)."""
    if not isinstance(task, dict) or _finite(task.get("delta")) is None:
        return None
    unit = task.get("unit") if isinstance(task.get("unit"), str) else ""
    out = {"metric": str(task.get("metric") or "task"), "reference": _finite(task.get("reference")),
           "value": _finite(task.get("value")), "delta": task["delta"], "unit": unit}
    if (metric and metric != task.get("metric") and _finite(task.get(f"{metric}_reference")) is not None
            and _finite(task.get(metric)) is not None):
        ref, value = float(task[f"{metric}_reference"]), float(task[metric])
        out = {"metric": metric, "reference": ref, "value": value, "delta": value - ref, "unit": unit}
    if _finite(task.get("flip_rate")) is not None:
        label = task.get("flip_label")
        out.update(flip_rate=task["flip_rate"], flip_label=label if isinstance(label, str) else "flipped")
    return out


def _latency(lat) -> dict | None:
    """A latency summary with a positive median and p10 <= median <= p90, or None."""
    if not isinstance(lat, dict) or not (_finite(lat.get("median_ms")) or 0) > 0:
        return None
    median = lat["median_ms"]
    p10, p90 = _finite(lat.get("p10_ms")), _finite(lat.get("p90_ms"))
    return json_safe(lat) | {"median_ms": median, "p10_ms": min(median, median if p10 is None else p10),
                             "p90_ms": max(median, median if p90 is None else p90)}


def _vacuous_reason(b: dict, outputs: list[dict]) -> str | None:
    """Why a cell is vacuous: the reason of its (first) vacuous output."""
    for o in outputs:
        if o.get("status") == VACUOUS and _message(o.get("reason")):
            name = o.get("name") if len(outputs) > 1 and isinstance(o.get("name"), str) else None
            return f"{name}: {_message(o['reason'])}" if name else _message(o["reason"])
    return _message(b.get("error"))


def summarize_cell(record: dict, metric: str | None = None) -> dict:
    """One scoreboard entry from a cell record: status, worst SQNR and max |delta|, the task's
    metric and delta (and how many predictions changed), latency and throughput. Never
    raises: what a record lacks is left out; a cell that claims to have run but holds no
    result of it is an ``error``, not a pass."""
    record = record if isinstance(record, dict) else {}
    status = record.get("status")
    out = {"status": status if isinstance(status, str) and status else ERROR,
           "key": record["key"] if isinstance(record.get("key"), str) else None}
    message = _message(record.get("error"))
    if message:
        out["error"] = message
    elif out["status"] != status:
        out["error"] = "the cell's record has no status"
    if record.get("resumable") is False:
        out["resumable"] = False
    report = record.get("report")
    backends = report.get("backends") if isinstance(report, dict) else None
    b = backends[0] if isinstance(backends, list) and backends and isinstance(backends[0], dict) else None
    if b is None:
        if out["status"] in RAN:
            out.update(status=ERROR, error=out.get("error") or "the cell's record has no backend result")
        return out
    if "error" not in out and _message(b.get("error")):
        out["error"] = _message(b.get("error"))
    outputs = [o for o in b.get("outputs") or () if isinstance(o, dict)] if isinstance(b.get("outputs"), list) else []
    worst = worst_of_outputs(outputs)
    if out["status"] == "ok" and not worst:
        out.update(status=ERROR, error=out.get("error") or "the cell's record has no compared output")
    if "sqnr_db" in worst:                            # None: undefined, or +inf where identical
        out["sqnr_db"] = _finite(worst["sqnr_db"])
        if worst.get("identical") and out["sqnr_db"] is None:
            out["identical"] = True
    if _finite(worst.get("max_abs")) is not None:
        out["max_abs"] = worst["max_abs"]
    unmatched = [o for o in outputs if not (isinstance(o.get("metrics"), dict) and o["metrics"])]
    if unmatched:
        o = unmatched[0]
        more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
        out["note"] = (f"{o.get('name', '?')}: shape {json_safe(o.get('shape'))} vs reference "
                       f"{json_safe(o.get('reference_shape'))}: not compared{more}")
    if out["status"] == VACUOUS:
        out["note"] = _vacuous_reason(b, outputs) or "the reference output is degenerate: the comparison says nothing"
    score = task_score(b.get("task"), metric)
    if score is not None:
        out["task"] = score
    latency = _latency(b.get("latency"))
    if latency:
        out["latency"] = latency
    div = b.get("first_divergence")
    if isinstance(div, dict) and isinstance(div.get("module") or div.get("layer"), str):
        out["first_divergence"] = div.get("module") or div.get("layer")
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
    """Each low-precision cell against its backend's fp32 cell: speed-up and what it costs.
    Only between two cells that ran and agreed (status ok): a vacuous, diverged or failed
    cell is never recommended, nor measured against."""
    from .latency import speedup

    out = []
    for model, row in (matrix or {}).items():
        if not isinstance(row, dict):
            continue
        for spec in specs:
            base = base_spec(spec, specs)
            cell, ref = row.get(spec), row.get(base) if base else None
            if not (isinstance(cell, dict) and isinstance(ref, dict)) or cell.get("status") != "ok" \
                    or ref.get("status") != "ok":
                continue
            ratio = speedup(ref.get("latency"), cell.get("latency"))
            if _finite(ratio) is None or ratio <= 0:
                continue
            item = {"model": model, "spec": spec, "base": base, "speedup": ratio}
            ct, rt = cell.get("task"), ref.get("task")
            if isinstance(ct, dict) and isinstance(rt, dict):
                a, b = _finite(rt.get("value")), _finite(ct.get("value"))
                if a is None or b is None:
                    a, b = _finite(rt.get("delta")), _finite(ct.get("delta"))
                if a is not None and b is not None:
                    item.update(metric=str(ct.get("metric") or "task"), drop=round(a - b, 4),
                                unit=ct.get("unit") if isinstance(ct.get("unit"), str) else "")
            if _finite(cell.get("sqnr_db")) is not None:
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


def identical_text(model: str, same_as: str) -> str:
    return f"{model} is identical to {same_as} (same exported program and options): one cell serves both"


def scoreboard(plan: SweepPlan, records, planned: list | None = None) -> dict:
    """The sweep's JSON: the matrix model -> spec -> summary, findings, identical entries and
    every cell record. The matrix is built from the ``planned`` cells (``{"model", "spec",
    "key"}`` dicts or ``(model, spec, key)`` triples): a record serves every (model, spec)
    planned with its key, and a planned cell without a record is "not run". ``records``: a
    list of cell records or a dict key -> record."""
    if isinstance(records, dict):
        by_key = {k: r for k, r in records.items() if isinstance(r, dict)}
    else:
        by_key = {r["key"]: r for r in records or () if isinstance(r, dict) and isinstance(r.get("key"), str)}
    if planned is None:                # every record where it says it belongs
        planned = [(r.get("model"), r.get("spec"), k) for k, r in by_key.items()]
    where: dict[tuple, dict] = {}
    for c in planned:
        c = c if isinstance(c, dict) else dict(zip(("model", "spec", "key"), c))
        where.setdefault((c.get("model"), c.get("spec")), c)
    specs = list(plan.specs)
    matrix: dict[str, dict[str, dict]] = {}
    for m in plan.models:
        row = matrix[m.model] = {}
        for s in specs:
            c = where.get((m.model, s)) or {}
            key = c.get("key") if isinstance(c.get("key"), str) else None
            if key in by_key:
                row[s] = summarize_cell(by_key[key], m.metric) | {"key": key}
            else:
                row[s] = {"status": NOT_RUN, "key": key}
            if c.get("resumable") is False:
                row[s]["resumable"] = False
    identical, first = [], {}
    for m in plan.models:
        keys = tuple(matrix[m.model][s]["key"] for s in specs)
        if None not in keys:
            same_as = first.setdefault(keys, m.model)
            if same_as != m.model:
                identical.append({"model": m.model, "same_as": same_as, "text": identical_text(m.model, same_as)})
    found = findings(matrix, specs)
    used = [k for k in dict.fromkeys(c["key"] for row in matrix.values() for c in row.values()) if k in by_key]
    env = next((r["report"]["environment"] for r in (by_key[k] for k in used)
                if isinstance(r.get("report"), dict) and isinstance(r["report"].get("environment"), dict)), {})
    return {"schema": SCHEMA, "models": [m.model for m in plan.models], "specs": specs,
            "latency": {"warmup": plan.warmup, "runs": plan.runs, "threads": plan.threads},
            "environment": json_safe(env), "matrix": matrix, "identical": identical,
            "findings": [f | {"text": finding_text(f)} for f in found], "cells": [json_safe(by_key[k]) for k in used]}


def exit_code(board: dict) -> int:
    """0: every planned cell ran (agreeing, diverging or vacuous); 3: some cell could not
    run, or has no record at all ("not run")."""
    try:
        statuses = [board["matrix"][m][s].get("status") for m in board["models"] for s in board["specs"]]
    except (KeyError, TypeError, AttributeError):
        return 3
    return 0 if statuses and all(s in RAN for s in statuses) else 3


def _sqnr_text(cell: dict) -> str:
    """SQNR in dB; ∞ where the outputs are identical; "-" where it is undefined (a zero
    reference, NaN/Inf patterns that differ)."""
    if _finite(cell.get("sqnr_db")) is not None:
        return f"{cell['sqnr_db']:.1f} dB"
    return "∞ dB" if cell.get("identical") else "SQNR -"


def cell_lines(cell) -> list[tuple[str, str]]:
    """What a scoreboard cell shows under its status, as ``(text, kind)`` lines (kind:
    sqnr, task, flip, latency, note, error), for the terminal and the HTML alike. Agreement
    numbers (SQNR, task delta) only for cells that ran ok or diverged: a vacuous cell shows
    why it says nothing, never a pass."""
    if not isinstance(cell, dict):
        return []
    status, lines = cell.get("status"), []
    if status in ("ok", "diverged"):
        if "sqnr_db" in cell:
            lines.append((_sqnr_text(cell), "sqnr"))
        t = cell.get("task")
        if isinstance(t, dict) and _finite(t.get("delta")) is not None:
            unit = t.get("unit") if isinstance(t.get("unit"), str) else ""
            lines.append((f"{t.get('metric')} {t['delta']:+.2f}{unit}", "task"))
            if _finite(t.get("flip_rate")):
                lines.append((f"{100 * t['flip_rate']:.1f}% {t.get('flip_label') or 'flipped'}", "flip"))
    lat = cell.get("latency")
    if status in RAN and isinstance(lat, dict) and (_finite(lat.get("median_ms")) or 0) > 0:
        med = lat["median_ms"]
        p10, p90 = _finite(lat.get("p10_ms")), _finite(lat.get("p90_ms"))
        spread = (med if p90 is None else p90) - (med if p10 is None else p10)
        lines.append((f"{med:.3g} ms ±{abs(spread) / 2:.2g}", "latency"))
    if isinstance(cell.get("note"), str):
        lines.append((cell["note"], "note"))
    if isinstance(cell.get("error"), str) and status not in ("ok", "diverged"):
        lines.append((cell["error"], "error"))
    return lines


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def cell_page(record: dict) -> str:
    """The file name of a cell's own HTML report, beside the scoreboard."""
    return f"cells/{slug(str(record['model']))}__{slug(str(record['spec']))}.html"
