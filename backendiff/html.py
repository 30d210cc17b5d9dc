"""The HTML report: one self-contained file (inline CSS and SVG charts, no scripts, no network)
rendered from the report's JSON dict, so that ``compare --html`` and ``backendiff report
RUN.json --html`` write the same bytes for the same run.

Computing the view (``view``) is apart from the template (``templates/report.html.j2``,
Jinja2 with autoescaping) and from the charts (``charts.py``).
"""
from __future__ import annotations

from pathlib import Path

from . import charts
from .metrics import worst_of_outputs
from .render import fmt, fmt_sqnr, nonfinite_cell, output_notes, top_suspects, unmeasured_lines

TEMPLATES = Path(__file__).parent / "templates"
STATUS_CLASS = {"ok": "ok", "diverged": "bad", "failed": "bad", "crashed": "bad", "timeout": "bad",
                "unavailable": "na", "baseline": "na", "vacuous": "warn"}


def _metrics_cells(m: dict) -> dict:
    return {"max_abs": fmt(m.get("max_abs")), "max_rel": fmt(m.get("max_rel")),
            "cosine": fmt(m.get("cosine"), "cos"), "sqnr_db": fmt_sqnr(m),
            "nonfinite": nonfinite_cell(m)}


def _source(path: str | None) -> str:
    if not path:
        return ""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def _task_view(task: dict | None) -> dict | None:
    if not task:
        return None
    if "error" in task:
        return {"error": task["error"], "name": task.get("name")}
    extra = []
    for key, label in (("top5", "top-5"), ("pck@0.05", "PCK@0.05"), ("ap", "OKS AP")):
        if key in task and f"{key}_reference" in task:
            extra.append((label, f"{task[key]:.2f}", f"{task[key + '_reference']:.2f}",
                          f"{task[key] - task[key + '_reference']:+.2f}"))
    notes = []
    for key, label in (("cosine_mean", "cosine mean"), ("cosine_min", "cosine min")):
        if key in task:
            notes.append(f"{label} {task[key]:.6f}")
    for key, label in (("mean_shift_px", "mean keypoint shift"), ("max_shift_px", "max keypoint shift")):
        if key in task:
            notes.append(f"{label} {task[key]:.2f} px")
    if "pck_changed" in task:
        notes.append(f"{task['pck_changed']} samples changed which keypoints are correct")
    return {"error": None, "metric": task.get("metric"), "unit": task.get("unit", ""), "value": f"{task['value']:.2f}",
            "reference": f"{task['reference']:.2f}", "delta": f"{task['delta']:+.2f}",
            "drop": task["delta"] < 0, "flip_rate": f"{100 * task['flip_rate']:.1f}%" if "flip_rate" in task else "",
            "flips": task.get("flips"), "samples": task.get("samples"), "flip_label": task.get("flip_label", "flipped"),
            "worst": task.get("worst", []), "extra": extra, "notes": notes,
            "exceeds": bool(task.get("exceeds_max_drop"))}


def _backend_view(b: dict) -> dict:
    w = worst_of_outputs(b.get("outputs", []))
    t = b.get("timings", {})
    err = b.get("error") or {}
    precision = b.get("precision") or {}
    layers = b.get("layers") or []
    suspects = []
    for r in top_suspects(layers, n=5):
        iso = r.get("isolated") or {}
        iso_metrics = iso.get("metrics", iso) if isinstance(iso, dict) else {}
        suspects.append({"module": r.get("module") or "<top>", "op": r.get("op_type"), "node": r.get("node"),
                         "source": _source(r.get("source")), "growth": fmt(r.get("growth")),
                         "sqnr": fmt_sqnr(r["metrics"]), "max_abs": fmt(r["metrics"].get("max_abs")),
                         "isolated": fmt_sqnr(iso_metrics) if iso_metrics else "",
                         "born": bool(r.get("nonfinite_born")), "fused": r.get("fused_into") or ""})
    fd = b.get("first_divergence")
    first = None
    if fd:
        why = {"nonfinite": "the first NaN/Inf is born here", "growth": f"its error grows ×{fd.get('growth', 0) + 1:.3g} "
               "over its inputs'", "tolerance": "the first layer past tolerance",
               "bisection": "the first unmodified prefix past tolerance, bisected through the deployed route",
               }.get(fd.get("reason", "tolerance"), "")
        confirmed = ""
        if "confirmed" in fd:
            confirmed = "confirmed in isolation" if fd["confirmed"] else "not reproduced in isolation"
        first = {"module": fd.get("module") or "<top>", "op": fd.get("op_type"), "node": fd.get("node"),
                 "source": _source(fd.get("source")), "why": why, "confirmed": confirmed,
                 "caveat": bool(fd.get("caveat")), "bisected": fd.get("reason") == "bisection"}
    born = next((r for r in layers if r.get("nonfinite_born")), None)
    advice = b.get("advice")
    info = b.get("info") or {}
    fused = sum(1 for r in layers if r.get("fused_into"))
    return {
        "spec": b["spec"], "status": b["status"], "cls": STATUS_CLASS.get(b["status"], "na"),
        "route": b.get("route") or "", "cache": b.get("cache") or "",
        "precision": (f"{precision.get('requested')} → ran {precision.get('runtime')}"
                      + ("" if precision.get("honoured", True) else " (not honoured)")) if precision else "",
        "tolerance": (f"rtol {b['tolerance']['rtol']:g} · atol {b['tolerance']['atol']:g}" if b.get("tolerance") else ""),
        "metrics": _metrics_cells(w),
        "timings": " / ".join(fmt(t.get(k), "s") for k in ("convert_s", "compile_s", "infer_s")) if t else "",
        "task_s": fmt(t.get("task_s"), "s") if t.get("task_s") is not None else "",
        "task": _task_view(b.get("task")),
        "error": {"stage": err.get("stage", "?"), "type": err.get("type", ""), "message": err.get("message", ""),
                  "hint": err.get("hint", ""), "operator": err.get("operator", ""),
                  "where": [{"module": w.get("module"), "op": w.get("op"), "source": _source(w.get("source"))}
                            for w in err.get("where", [])]} if err else None,
        "outputs": [{"name": o["name"], "shape": "×".join(map(str, o.get("shape", []))), **_metrics_cells(o["metrics"]),
                     "ok": o.get("within_tolerance", True), "violations": o.get("violations", 0),
                     "status": o.get("status", "ok"), "reason": o.get("reason") or ""}
                    for o in b.get("outputs", [])],
        "notes": output_notes(b.get("outputs", []), b.get("tolerance")),
        "layers": len(layers), "fused": fused, "fusion_unknown": info.get("fusion") == "unknown",
        "layers_error": info.get("layers_error", ""), "layers_from": info.get("layers_from", ""),
        "unmeasured": " ".join(unmeasured_lines(info.get("unmeasured_layers") or [], n=8)).strip(),
        "first": first, "born": (born.get("module") or "<top>") if born else None, "suspects": suspects,
        "chart": charts.depth_chart(b) if layers else "",
        "advice": advice,
        "runtime_precisions": info.get("runtime_precisions") or {},
    }


def view(report: dict) -> dict:
    """Everything the template shows, computed from the report dict."""
    model = report.get("model", {})
    backends = report.get("backends", [])
    base = report.get("baseline") or {}
    base_worst = worst_of_outputs(base.get("outputs", [])) if base.get("available") else {}
    env = report.get("environment", {})
    views = [_backend_view(b) for b in backends]
    return {
        "title": f"backendiff · {model.get('source', '?')}",
        "model": model, "reference": report.get("reference", {}),
        "inputs": [f"{i['name']} {tuple(i['shape'])} {i['dtype']}" for i in model.get("inputs", [])],
        "verdict": report.get("verdict"), "command": report.get("command") or "",
        "environment": env, "versions": sorted((env.get("versions") or {}).items()),
        "baseline": _metrics_cells(base_worst) if base_worst else None,
        "baseline_reason": base.get("reason") if base and not base.get("available") else "",
        "calibration": report.get("calibration"), "task": report.get("task"),
        "timings": report.get("timings", {}),
        "backends": views,
        "not_run": [v for v in views if v["status"] in ("failed", "unavailable", "crashed", "timeout")],
        "heatmap": charts.heatmap(backends) if sum(1 for b in backends if b.get("layers")) else "",
        "schema": report.get("schema"),
        "partial": report.get("partial"),
        "sysnoise": report.get("sysnoise"),
        "sysnoise_chart": charts.sysnoise_bars(report["sysnoise"]) if (report.get("sysnoise") or {}).get("rows") else "",
    }


def _env(lenient: bool = True):
    """The templates' Jinja environment; lenient on missing fields (reports saved by earlier
    versions lack some of them)."""
    from jinja2 import ChainableUndefined, Environment, FileSystemLoader, Undefined, select_autoescape

    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]),
                       undefined=ChainableUndefined if lenient else Undefined, trim_blocks=True, lstrip_blocks=True)


def render_html(report: dict) -> str:
    """The self-contained HTML page of a report dict (``Report.to_dict()`` or its JSON)."""
    return _env().get_template("report.html.j2").render(**view(report))


def render_sysnoise_html(result: dict) -> str:
    """The SysNoise table and its bar chart as one self-contained page."""
    return _env(lenient=False).get_template("sysnoise.html.j2").render(result=result, chart=charts.sysnoise_bars(result))


SWEEP_CLASS = {"ok": "ok", "diverged": "diverged", "vacuous": "vacuous", "not run": "muted"}


def render_sweep_html(board: dict, pages: dict[str, str]) -> str:
    """The sweep's scoreboard page: heat map, table linking each cell to ``pages[model|spec]``
    (its own report, relative to the page), and a latency/accuracy scatter per model. The
    charts draw the numbers of cells that ran ok or diverged only (a vacuous, failed or
    missing cell is grey, never agreement); a chart that cannot be drawn is replaced by
    its error, the table is always there."""
    from .sweep import cell_lines

    def listed(value) -> list[str]:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else []

    models, specs = listed(board.get("models")), listed(board.get("specs"))
    matrix = board.get("matrix") if isinstance(board.get("matrix"), dict) else {}
    pages = pages or {}
    same = {i.get("model"): i.get("same_as") for i in board.get("identical") or () if isinstance(i, dict)}
    rows, shown = [], {}
    for m in models:
        row = matrix.get(m) if isinstance(matrix.get(m), dict) else {}
        cells, shown[m] = [], {}
        for s in specs:
            c = row.get(s) if isinstance(row.get(s), dict) else {}
            status = c.get("status") if isinstance(c.get("status"), str) else "not run"
            cells.append({"status": status, "cls": SWEEP_CLASS.get(status, "bad"), "href": pages.get(f"{m}|{s}"),
                          "lines": [] if status == "not run" else [{"text": t, "kind": k} for t, k in cell_lines(c)]})
            if status != "not run":
                shown[m][s] = dict(c) if status in ("ok", "diverged") else {"status": status}
        rows.append({"model": m, "same_as": same.get(m), "cells": cells})
    view = {"models": models, "specs": specs, "matrix": shown}
    failures = []
    try:
        heatmap = charts.sweep_heatmap(view) if models and specs else ""
    except Exception as e:  # noqa: BLE001 - the table below still shows every cell
        heatmap = ""
        failures.append(f"the heat map could not be drawn: {type(e).__name__}: {e}")
    scatters = []
    for m in models:
        try:
            svg = charts.latency_scatter(view, m)
        except Exception as e:  # noqa: BLE001
            failures.append(f"the latency chart of {m} could not be drawn: {type(e).__name__}: {e}")
            continue
        if svg:
            scatters.append(svg)
    return _env().get_template("sweep.html.j2").render(board=board, rows=rows, specs=specs, heatmap=heatmap,
                                                       scatters=scatters, chart_failures=failures)


def render_ops_html(view: dict) -> str:
    """The operator matrix (``ops.html_view``) as one self-contained page."""
    return _env(lenient=False).get_template("ops.html.j2").render(**view)
