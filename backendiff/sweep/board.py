"""The scoreboard: stored cells summarized per model and spec, findings, cell pages."""
from __future__ import annotations

import math
import re
from typing import Iterable

from ..metrics import worst_of_outputs
from ..report import RAN, VACUOUS, json_safe
from .plan import ERROR, NOT_RUN, SCHEMA, SweepPlan


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
    from ..specs import parse_spec

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
    from ..latency import speedup

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
