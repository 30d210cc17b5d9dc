"""The cell store (finished cells by key, each run's plan) and the sweep loop."""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Callable

from ..cache import content_key, write_atomic
from ..errors import BadInput
from ..report import json_safe
from .board import scoreboard
from .cell import cell_key, cell_options, cell_payload, model_identity, spec_versions
from .executors import LocalExecutor, RayExecutor, default_workers
from .plan import ERROR, LOST, SweepPlan


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


