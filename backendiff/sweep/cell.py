"""One cell: its content key, its payload, and running it (a compare of one model on one spec)."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from ..cache import content_key
from ..errors import BadInput
from ..loading import sha256_file
from .plan import CELL_SCHEMA, ERROR, LOST, OPTION_KEYS, PATH_KEYS, ModelEntry, SweepPlan, import_plugins


# -- one cell ---------------------------------------------------------------------------
def run_spec(spec: str, threads: int) -> str:
    """The spec a cell runs: the user's, with ``threads=N`` added for backends that take it
    (ONNX Runtime, OpenVINO) unless set."""
    from ..registry import adapter_class
    from ..specs import parse_spec

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
    from ..config import CompareConfig
    from ..inputs import parse_input_spec

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
    from ..compare import model_key

    return model_key(entry.model, compare_config(options, plan.warmup, plan.runs, cache_dir))


def cell_key(model_key: str, spec: str, options: dict, plan: SweepPlan, versions: dict) -> str:
    """The content key of a cell: what the model is, what it is fed, how it is compiled and
    measured, and by which runtime versions."""
    from .. import __version__

    data = {k: file_digest(v) if k in PATH_KEYS and isinstance(v, str) else
            [file_digest(p) for p in v] if k in PATH_KEYS else v for k, v in sorted(options.items())}
    return content_key("sweep-cell", __version__, model_key, spec, data,
                       {"warmup": plan.warmup, "runs": plan.runs, "threads": plan.threads}, versions)


def spec_versions(spec: str) -> dict:
    from ..registry import adapter_class
    from ..specs import parse_spec

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
        from ..compare import compare

        config = compare_config(payload["options"], payload["warmup"], payload["runs"], payload.get("cache_dir"))
        if not payload.get("resumable", True):
            config = config.but(use_cache=False)       # a model without a content key: nothing of it is cached
        report = compare(payload["model"], backends=[payload["run_spec"]], config=config)
    except BadInput as e:
        record.update(status=ERROR, error={"type": "BadInput", "message": str(e)})
    except Exception as e:  # noqa: BLE001 - the cell's failure is its data; the sweep goes on
        from ..errors import first_line

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


