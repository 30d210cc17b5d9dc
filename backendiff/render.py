"""Terminal rendering of a Report with rich. Reads the report; computes nothing new."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .report import DIVERGED, OK, Report

_STATUS_STYLE = {"ok": "green", "diverged": "bold red", "failed": "red", "unavailable": "yellow",
                 "crashed": "bold red", "timeout": "red"}


def fmt(value, kind: str = "g") -> str:
    if value is None:
        return "∞" if kind == "db" else "-"
    if kind == "db":
        return f"{value:.1f}"
    if kind == "cos":
        return f"{value:.6f}"
    if kind == "s":
        return f"{value:.2f}"
    if value == 0:
        return "0"
    return f"{value:.2e}"


def backend_table(report: Report) -> Table:
    table = Table(title=f"backendiff · {report.model.get('source')} vs {report.reference.get('backend')} "
                        f"{report.reference.get('precision')}", title_justify="left")
    for col, justify in [("backend", "left"), ("status", "left"), ("max abs", "right"), ("max rel", "right"),
                         ("cosine", "right"), ("SQNR dB", "right"), ("non-finite", "right"),
                         ("convert s", "right"), ("compile s", "right"), ("infer s", "right"), ("notes", "left")]:
        table.add_column(col, justify=justify, overflow="fold")
    if report.baseline and report.baseline.get("available"):
        ms = [o["metrics"] for o in report.baseline["outputs"]]
        sq = [m["sqnr_db"] for m in ms if m["sqnr_db"] is not None]
        table.add_row("torch fp32 vs fp64", Text("baseline", style="dim"), fmt(max(m["max_abs"] for m in ms)),
                      fmt(max(m["max_rel"] for m in ms)), fmt(min(m["cosine"] for m in ms), "cos"),
                      fmt(min(sq) if sq else None, "db"), str(sum(m["nonfinite"] for m in ms)), "", "", "",
                      Text("fp32 rounding alone", style="dim"), style="dim")
    for b in report.backends:
        status = Text(b.status, style=_STATUS_STYLE.get(b.status, ""))
        notes = []
        if b.status in (OK, DIVERGED):
            w = b.worst()
            t = b.timings
            prec = b.precision or {}
            if prec.get("runtime") and prec.get("runtime") != prec.get("requested"):
                notes.append(f"runtime precision {prec['runtime']}")
            bad = [o.name for o in b.outputs if not o.within_tolerance]
            if bad:
                notes.append(f"{', '.join(bad)} outside rtol={b.tolerance['rtol']:g} atol={b.tolerance['atol']:g}")
            if b.cache == "hit":
                notes.append("cached")
            table.add_row(b.spec, status, fmt(w.get("max_abs")), fmt(w.get("max_rel")), fmt(w.get("cosine"), "cos"),
                          fmt(w.get("sqnr_db"), "db"), str(w.get("nonfinite", 0)), fmt(t.get("convert_s"), "s"),
                          fmt(t.get("compile_s"), "s"), fmt(t.get("infer_s"), "s"), Text("; ".join(notes)))
        else:
            err = b.error or {}
            msg = _headline(err.get("message") or "")
            note = f"[{err.get('stage', '?')}] {msg}"
            if err.get("hint"):
                note += f" ({err['hint']})"
            table.add_row(b.spec, status, "", "", "", "", "", "", "", "", Text(note))
    return table


def _headline(message: str) -> str:
    """The informative line of a runtime message (TVM prefixes a timestamp and a source path)."""
    for line in message.splitlines():
        line = line.strip()
        if "Check failed" in line:
            return line[line.index("Check failed"):]
        if line and not line.startswith("Traceback"):
            return line
    return ""


def print_report(report: Report, console: Console | None = None, json_path=None) -> None:
    console = console or Console()
    console.print(backend_table(report))
    m = report.model
    inputs = ", ".join(f"{i['name']}{tuple(i['shape'])}:{i['dtype']}" for i in m.get("inputs", []))
    console.print(f"inputs: {inputs} · {m.get('samples')} sample(s) from {m.get('inputs_from')} "
                  f"(seed {m.get('seed')}) · total {report.timings.get('total_s', 0):.2f}s")
    if report.baseline and not report.baseline.get("available"):
        console.print(f"[dim]no fp64 baseline: {report.baseline.get('reason')}[/dim]")
    style = "bold green" if report.verdict == "pass" else "bold red"
    line = f"verdict: [{style}]{report.verdict}[/{style}]"
    if json_path:
        line += f" · report: {json_path}"
    console.print(line)
