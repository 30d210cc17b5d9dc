"""Terminal rendering of a Report with rich. Reads the report; computes nothing new."""
from __future__ import annotations

import sys
from dataclasses import asdict

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .ops import cell_text
from .report import Report

_STATUS_STYLE = {"ok": "green", "diverged": "bold red", "failed": "red", "unavailable": "yellow",
                 "crashed": "bold red", "timeout": "red", "vacuous": "bold yellow"}


def fmt(value, kind: str = "g") -> str:
    if value is None:
        return "-"
    if kind == "db":
        return f"{value:.1f}"
    if kind == "cos":
        return f"{value:.6f}"
    if kind == "s":
        return f"{value:.2f}"
    if value == 0:
        return "0"
    return f"{value:.2e}"


def fmt_sqnr(m: dict | None) -> str:
    """A metrics dict's SQNR: dB, ∞ where the two agree exactly on a non-zero signal, "-"
    where there is none (no metrics, a zero reference, NaN/Inf patterns that differ)."""
    if not m:
        return ""
    if m.get("sqnr_db") is not None:
        return fmt(m["sqnr_db"], "db")
    return "∞" if m.get("identical") and m.get("cosine") is not None else "-"


def nonfinite_cell(m: dict | None) -> str:
    """The NaN/Inf column: how many the backend produced, and how many sit where the
    reference has another value (``3 · 2≠``)."""
    if not m:
        return ""
    differ = m.get("nonfinite_mismatch") or 0
    return f"{m.get('nonfinite', 0)}" + (f" · {differ}≠" if differ else "")


def sqnr_phrase(m: dict) -> str:
    """``SQNR 42.0 dB``, or what stands in for it where it is undefined."""
    if m.get("nonfinite_mismatch"):
        return f"NaN/Inf at {m['nonfinite_mismatch']} elements where the reference has numbers"
    shown = fmt_sqnr(m)
    return f"SQNR {shown} dB" if shown not in ("-", "") else "no SQNR (zero reference)"


def nonfinite_note(name: str, m: dict) -> str:
    """Where the NaN/Inf patterns of an output differ from the reference's: how many, where."""
    first = m.get("first_mismatch")
    at = ""
    if first is not None:
        sample = f" of sample {m['first_mismatch_sample']}" if "first_mismatch_sample" in m else ""
        at = f" (first at [{', '.join(map(str, first))}]{sample})"
    return f"{name}: NaN/Inf differ from the reference at {m['nonfinite_mismatch']} elements{at}"


COLUMNS = [("backend", "left"), ("status", "left"), ("max abs", "right"), ("max rel", "right"), ("cosine", "right"),
           ("SQNR dB", "right"), ("NaN/Inf", "right"), ("convert/compile/infer s", "right"), ("notes", "left")]
COMPACT = ("backend", "status", "max abs", "SQNR dB", "notes")   # for terminals under 140 columns


def _rows(report: Report) -> list[tuple[dict, str | None]]:
    """One dict per table row (column -> cell) and the row's style."""
    rows = []
    if report.baseline and report.baseline.get("available"):
        ms = [o["metrics"] for o in report.baseline["outputs"]]
        sq = [m["sqnr_db"] for m in ms if m["sqnr_db"] is not None]
        rows.append(({"backend": "torch fp32 vs fp64", "status": "baseline", "max abs": fmt(max(m["max_abs"] for m in ms)),
                      "max rel": fmt(max(m["max_rel"] for m in ms)),
                      "cosine": fmt(min((m["cosine"] for m in ms if m.get("cosine") is not None), default=None), "cos"),
                      "SQNR dB": fmt(min(sq) if sq else None, "db"), "NaN/Inf": str(sum(m["nonfinite"] for m in ms)),
                      "notes": "fp32 rounding alone"}, "dim"))
    said: dict[tuple, str] = {}      # a failure shown once; the next backends with it refer back
    for b in report.backends:
        row = {"backend": b.spec, "status": Text(b.status, style=_STATUS_STYLE.get(b.status, ""))}
        if b.ran:
            w, t, prec, notes = b.worst(), b.timings, b.precision or {}, []
            if prec.get("runtime") and prec.get("runtime") != prec.get("requested"):
                counts = b.info.get("runtime_precisions") or {}
                ran = " · ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
                if len(counts) == 1:
                    ran = f"{sum(counts.values())}"
                notes.append(f"ran {prec['runtime']}" + (f" ({ran} ops)" if ran else "")
                             + ("" if prec.get("honoured", True) else f": {prec['requested']} not honoured"))
            notes += output_notes([asdict(o) for o in b.outputs], b.tolerance)
            changed = b.info.get("instrumentation_changed")
            if changed:
                notes.append("the layer-wise (instrumented) run differs from the deployed model: "
                             + "; ".join(f"output {c['output']}" if "output" in c else
                                         f"NaN/Inf only when instrumented ({', '.join(c['nonfinite_only_when_instrumented'])})"
                                         for c in changed))
            if b.task:
                notes.append(task_note(b.task))
            if b.cache == "hit":
                notes.append("cached")
            differ = bool(w.get("nonfinite_mismatch"))     # the finite part's errors would read as agreement
            row.update({"max abs": "-" if differ else fmt(w.get("max_abs")), "max rel": "-" if differ else fmt(w.get("max_rel")),
                        "cosine": fmt(w.get("cosine"), "cos"), "SQNR dB": fmt_sqnr(w),
                        "NaN/Inf": nonfinite_cell(w),
                        "convert/compile/infer s": " / ".join(fmt(t.get(k), "s") for k in ("convert_s", "compile_s", "infer_s")),
                        "notes": "; ".join(notes)})
        else:
            err = b.error or {}
            same = (err.get("stage"), err.get("message"))
            if err.get("stage") == "export" and same in said:
                row["notes"] = f"[export] the same failure as {said[same]}"
            else:
                said.setdefault(same, b.spec)
                row["notes"] = failure_note(err)
        rows.append((row, None))
    return rows


VACUOUS_NEXT = "--layerwise (earlier layers), --weights (trained weights) or --inputs (real data)"


def output_notes(outputs: list[dict], tolerance: dict | None) -> list[str]:
    """Why each output's verdict is what it is, where it is not a plain elementwise pass
    (outputs as the report's dicts)."""
    notes = []
    for o in outputs:
        label = o.get("name", "output") if len(outputs) > 1 else "output"
        m, status, reason = o.get("metrics") or {}, o.get("status", "ok"), o.get("reason")
        if m.get("nonfinite_mismatch"):
            notes.append(nonfinite_note(label, m))
        elif status == "vacuous":
            notes.append(f"{label} vacuous: {reason}; next: {VACUOUS_NEXT}")
        elif reason:
            notes.append(f"{label}: {reason}")
        elif status == "diverged" or not o.get("within_tolerance", True):
            tol = tolerance or {}
            notes.append(f"{label} outside rtol={tol.get('rtol', 0):g} atol={tol.get('atol', 0):g}")
    return notes


def backend_table(report: Report, width: int = 160) -> Table:
    table = Table(title=f"backendiff · {report.model.get('source')} vs {report.reference.get('backend')} "
                        f"{report.reference.get('precision')}", title_justify="left")
    columns = [(c, j) for c, j in COLUMNS if width >= 140 or c in COMPACT]
    for col, justify in columns:
        if col == "notes":
            table.add_column(col, justify=justify, overflow="fold", min_width=24, ratio=1)
        else:
            table.add_column(col, justify=justify, no_wrap=col != "backend", overflow="fold",
                             max_width=26 if col == "backend" else None)
    for row, style in _rows(report):
        cells = [row.get(c, "") for c, _ in columns]
        table.add_row(*[c if isinstance(c, Text) else Text(c) for c in cells], style=style)
    return table


#: a runtime's or exporter's headline longer than this (a sympy guard of thousands of
#: characters) is cut in the table; the report's JSON keeps the message
HEADLINE_CHARS = 240


def failure_note(err: dict) -> str:
    """``[stage] headline · operator X in module (file) · at file:line: code (next step)``."""
    headline = _headline(err.get("message") or "")
    if len(headline) > HEADLINE_CHARS:
        headline = headline[:HEADLINE_CHARS - 1] + "…"
    note = f"[{err.get('stage', '?')}] {headline}" + culprit_note(err)
    if err.get("user_source"):
        note += f" · at {err['user_source'].rsplit('/', 1)[-1]}"
    if err.get("stage") == "export":
        return note                       # its next step is printed once under the table
    return note + (f" ({err['hint']})" if err.get("hint") else "")


def preflight_lines(report) -> list[str]:
    """The pre-flight notes: operators of this model that the stored operator matrix lists as
    diverged or failed on a backend of this run, and where the model uses them."""
    lines = []
    for b in report.backends:
        for note in b.info.get("known_divergent_ops") or []:
            places = ", ".join((w["module"] or "<top>") + (f" ({w['source'].rsplit('/', 1)[-1]})" if w.get("source")
                                                           else "") for w in note["where"])
            how = f" ({note['sqnr_db']:.1f} dB)" if note.get("sqnr_db") is not None else \
                (f" at {note['stage']}" if note.get("stage") else "")
            like = ", ".join(f"{k}={v}" for k, v in (note.get("arguments") or {}).items())
            lines.append(f"pre-flight {b.spec}: {note['op']} {note['status']} in the operator matrix{how}; "
                         f"this model uses it" + (f" with the diverging samples' {like}" if like else "") + f" at {places}")
    return lines


def export_lines(report) -> list[str]:
    """Under the table: what the export assumed (``--export draft``), and the next step of
    each distinct export failure, once."""
    lines = [f"export ({report.model['export']['mode']}) assumed: {issue}"
             for issue in (report.model.get("export") or {}).get("draft_issues", [])]
    seen = {}
    for b in report.backends:
        err = b.error or {}
        if b.ran or err.get("stage") != "export" or not err.get("hint"):
            continue
        seen.setdefault(err["hint"], []).append(b.spec)
    lines += [f"next ({', '.join(specs)}: the export failed): {hint}" for hint, specs in seen.items()]
    return lines


def culprit_note(err: dict) -> str:
    """` · operator X in module (file:line)` of a rejection, when it was found."""
    if not err.get("operator"):
        return ""
    where = err.get("where") or []
    places = ", ".join(f"{w['module']}" + (f" ({w['source'].rsplit('/', 1)[-1]})" if w.get("source") else "")
                       for w in where[:3])
    return f" · operator {err['operator']}" + (f" in {places}" if places else "")


INFORMATIVE = ("No conversion rule found", "Conversion is failed for", "Could not find an implementation",
               "Unsupported", "not supported", "No ONNX function found")


def _headline(message: str) -> str:
    """The informative line of a runtime message (TVM prefixes a timestamp and a source path;
    OpenVINO starts with the source line of its own check)."""
    for line in message.splitlines():
        if any(key in line for key in INFORMATIVE):
            return line.strip().lstrip("- ").strip()
    for line in message.splitlines():
        line = line.strip()
        if "Check failed" in line:
            return line[line.index("Check failed"):]
        if line and not line.startswith("Traceback"):
            return line
    return ""


BARS = "▁▂▃▄▅▆▇█"


def depth_line(rows: list[dict]) -> str:
    """Error against depth, one bar per layer, scaled to this backend's own range: the
    higher the bar, the lower the SQNR (the more error)."""
    from .metrics import sqnr_value

    sq = [max(sqnr_value(r["metrics"], identical=150.0, undefined=-50.0), -50.0) for r in rows]
    if not sq:
        return ""
    lo, hi = min(sq), max(sq)
    if hi - lo < 1e-9:
        return BARS[0] * len(sq)
    return "".join(BARS[round((hi - v) / (hi - lo) * (len(BARS) - 1))] for v in sq)


def top_suspects(rows: list[dict], n: int = 3) -> list[dict]:
    """The layers past tolerance whose error grows most over their inputs'."""
    past = [r for r in rows if r.get("nonfinite_born") or (not r["within_tolerance"] and r["growth"] >= 1.0)]
    return sorted(past, key=lambda r: (not r.get("nonfinite_born"), -r["growth"]))[:n]


def layer_lines(b) -> list[str]:
    """The layer-wise quick look of one backend: where it starts, suspects, error vs depth."""
    if not b.layers:
        return []
    lines = []
    fd = b.first_divergence
    if fd:
        where = f"{fd['module'] or '<top>'} ({fd['op_type']}, node {fd['node']})"
        why = {"nonfinite": "first NaN/Inf born here", "growth": f"error grows x{fd.get('growth', 0) + 1:.3g} over its inputs",
               "tolerance": "first layer past tolerance",
               "bisection": "first unmodified prefix past tolerance, bisected through the deployed route",
               }.get(fd.get("reason", "tolerance"), "")
        caveat = " · seen only with intermediates marked: instrumentation changed the result" if fd.get("caveat") else ""
        if "confirmed" in fd:
            caveat += " · confirmed in isolation" if fd["confirmed"] else " · not reproduced in isolation"
        how = "bisected" if fd.get("reason") == "bisection" else "propagated view"
        lines.append(f"{b.spec}: divergence starts at {where}" + (f" · {fd['source']}" if fd.get("source") else "")
                     + f" · {why}{caveat} [{how}]")
    else:   # every sparkline under a backend's name, also where nothing diverged
        past = sum(1 for r in b.layers if not r.get("within_tolerance", True))
        lines.append(f"{b.spec}: layer view, " + (f"{past} layers past tolerance, no start named" if past
                                                 else "every layer within tolerance"))
    if b.info.get("layers_from"):
        lines.append(f"  layer values from {short_source(b.info['layers_from'])}")
    for r in top_suspects(b.layers):
        src = f" · {r['source'].rsplit('/', 1)[-1]}" if r.get("source") else ""
        lines.append(f"  suspect {r['module'] or '<top>'} ({r['op_type']}){src} · growth {r['growth']:.3g} · "
                     f"{sqnr_phrase(r['metrics'])}")
    sq = [r["metrics"].get("sqnr_db") for r in b.layers if r["metrics"].get("sqnr_db") is not None]
    span = f", SQNR {fmt(min(sq), 'db')}..{fmt(max(sq), 'db')} dB" if sq else ""
    fused = sum(1 for r in b.layers if r.get("fused_into"))
    span += f", {fused} fused in the deployed model" if fused else ""
    relaid = sum(1 for r in b.layers if r.get("layout"))
    span += f", {relaid} compared after bringing the backend's dimension order back" if relaid else ""
    lines.append(f"  error vs depth ({len(b.layers)} layers{span}; taller = more error): {depth_line(b.layers)}")
    lines += unmeasured_lines(b.info.get("unmeasured_layers") or [])
    return lines


def count_of(message: str) -> tuple[str, int, int] | None:
    """``("ort: running sample ", 3, 10)`` of a counted progress message, else None."""
    import re

    match = re.match(r"^(.*?)(\d+)/(\d+)\b", message)
    return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


def step_line(message: str, elapsed: float, left: float | None) -> str:
    """A progress message with the seconds its step has taken (from 2 s on) and, for a
    counted step, about how many are left."""
    if elapsed < 2 and left is None:
        return message
    return message + f" · {elapsed:.0f} s" + (f" · ~{left:.0f} s left" if left is not None else "")


def short_source(text: str) -> str:
    """The first clause of an adapter's ``layers_from`` (which artifact the values came from)."""
    import re

    return re.split(r" \(|, ", text, maxsplit=1)[0]


def unmeasured_lines(missing: list[dict], n: int = 3) -> list[str]:
    """The layers the layer view could not measure, and why (fused away, another layout)."""
    if not missing:
        return []
    fused = [m for m in missing if m.get("fused_into")]
    shown = ", ".join(f"{m['module'] or '<top>'} ({m['op_type']})" + (f" → in {m['fused_into']}" if m.get("fused_into")
                                                                       else f": {m['why']}") for m in missing[:n])
    more = f", … {len(missing) - n} more" if len(missing) > n else ""
    return [f"  {len(missing)} layers without a comparable value ({len(fused)} computed inside a later op): "
            f"{shown}{more}"]


def advice_lines(b) -> list[str]:
    a = b.advice
    if not a:
        return []
    if not a.get("found"):
        return [f"{b.spec}: no mixed-precision fix found ({a.get('reason')})"]
    v = a["verified"]
    return [f"{b.spec}: keep {', '.join(a['keep'])} in fp32 → {v['status']} (SQNR {fmt(v['sqnr_db'], 'db')} dB, "
            f"max abs {fmt(v['max_abs'])}; {a['trials']} verified runs) · reproduce: --backends '{a['spec']}'"]


def task_note(tk: dict) -> str:
    """One backend's task result in one phrase: the metric, its delta, how many samples flipped,
    and the secondary metrics of the built-in tasks."""
    if "error" in tk:
        return f"task {tk.get('name')}: {tk['error']}"
    unit = tk.get("unit", "")
    parts = [f"Δ {tk['delta']:+.2f}"]
    if "flip_rate" in tk:
        parts.append(f"{100 * tk['flip_rate']:.1f}% {tk.get('flip_label', 'flipped')}")
    for key, label in (("pck@0.05", "PCK@0.05"), ("ap", "AP")):
        if key in tk and f"{key}_reference" in tk:
            parts.append(f"{label} {tk[key]:.2f} Δ{tk[key] - tk[key + '_reference']:+.2f}")
    if "cosine_min" in tk:
        parts.append(f"cos min {tk['cosine_min']:.6f}")
    if tk.get("exceeds_max_drop"):
        parts.append("past --max-task-drop")
    return f"{tk['metric']} {tk['value']:.2f}{unit} ({', '.join(parts)})"


def print_report(report: Report, console: Console | None = None, json_path=None) -> None:
    console = console or Console()
    console.print(backend_table(report, console.width))
    m = report.model
    inputs = ", ".join(f"{i['name']}{tuple(i['shape'])}:{i['dtype']}" for i in m.get("inputs", []))
    if report.task:
        t = report.task
        ref = t.get("reference", next((b.task.get("reference") for b in report.backends if b.task), None))
        console.print(f"task: {t['name']} on {t['samples']} samples ({t['source']})"
                      + (f" · reference {t.get('metric', 'top1')} {ref:.2f}{t.get('unit', '%')}" if ref is not None else ""),
                      highlight=False)
    seeded = f" (seed {m.get('seed')})" if "random" in str(m.get("inputs_from")) else ""
    console.print(f"inputs: {inputs} · {m.get('samples')} sample(s) from {m.get('inputs_from')}{seeded} "
                  f"· total {report.timings.get('total_s', 0):.2f}s", highlight=False)
    if report.reference.get("note"):
        console.print(f"reference: {report.reference['note']}", highlight=False)
    if m.get("nonfinite_inputs"):
        console.print(f"[yellow]warning: inputs {', '.join(m['nonfinite_inputs'])} hold NaN/Inf; run as given[/yellow]",
                      highlight=False)
    if report.baseline and not report.baseline.get("available"):
        console.print(f"[dim]no fp64 baseline: {report.baseline.get('reason')}[/dim]")
    for line in export_lines(report) + preflight_lines(report):
        console.print(Text(line))
    for b in report.backends:
        for line in layer_lines(b) + advice_lines(b):
            console.print(Text(line))
    if report.sysnoise:
        if report.sysnoise.get("error"):
            console.print(f"[yellow]sysnoise: not measured: {report.sysnoise['error']}[/yellow]", highlight=False)
        else:
            print_sysnoise(report.sysnoise, console)
    if report.partial:
        p = report.partial
        console.print(f"[bold yellow]partial run[/bold yellow]: {len(p['finished'])} of {len(p['planned'])} backends "
                      f"finished; never finished: {', '.join(p['missing']) or '-'} (log {p['log']})", highlight=False)
    style = "bold green" if report.verdict == "pass" else "bold red"
    line = f"verdict: [{style}]{report.verdict}[/{style}]"
    if json_path:
        line += f" · report: {json_path}"
    console.print(line)


def sysnoise_table(result: dict, width: int | None = None):
    """The SysNoise table in the paper's shape: one row per noise source, one column per
    backend, Δ = clean − noisy in points (the clean row gives the metric itself)."""
    from rich.table import Table

    table = Table(title=f"backendiff sysnoise · {result['model']} · {result['metric']} on {result['samples']} samples",
                  title_justify="left")
    table.add_column("noise")
    table.add_column("kind", style="dim")
    for b in result["backends"]:
        table.add_column(b, justify="right")
    notes: list[str] = []
    for row in result["rows"]:
        cells = []
        for b in result["backends"]:
            c = row["cells"][b]
            if "error" in c:
                if c["error"] not in notes:
                    notes.append(c["error"])
                cells.append(f"[dim]({notes.index(c['error']) + 1})[/dim]")
            elif row["noise"] == "clean":
                cells.append(f"{c['value']:.2f}")
            else:
                d = c.get("delta") or 0.0
                style = "red" if d > 0.005 else ("green" if d < -0.005 else "")
                cells.append(f"[{style}]{d:+.2f}[/{style}]" if style else f"{d:+.2f}")
        table.add_row(row["noise"], row["kind"], *cells)
    return table, notes


def print_sysnoise(result: dict, console: Console | None = None) -> None:
    console = console or Console()
    table, notes = sysnoise_table(result)
    console.print(table)
    console.print(f"pipeline: {result['pipeline']} · Δ = clean − noisy, points (positive: the noise costs accuracy)",
                  highlight=False)
    for i, note in enumerate(notes, 1):
        console.print(f"({i}) {note}", highlight=False)


STATUS_STYLE = {"ok": "green", "diverged": "bold red"}


def scoreboard_cell(cell: dict | None) -> Text:
    """One cell of the terminal scoreboard: status, SQNR, task delta, median latency, and
    why a cell did not run or says nothing (vacuous)."""
    from .sweep import cell_lines

    if not isinstance(cell, dict) or cell.get("status") in (None, "not run"):
        return Text("not run", style="dim")
    status = str(cell.get("status"))
    out = Text(status, style=STATUS_STYLE.get(status, "yellow"))
    styles = {"flip": "magenta", "latency": "cyan", "note": "dim", "error": "dim"}
    for text, kind in cell_lines(cell):
        out.append("\n" + (text[:60] if kind in ("note", "error") else text), style=styles.get(kind))
    return out


def scoreboard_table(board: dict) -> Table:
    table = Table(title=f"backendiff sweep: {len(board['models'])} models × {len(board['specs'])} backends",
                  show_lines=True)
    # folded, never cut: a corpus entry is a long ``package.module:factory`` and the
    # terminal narrower than seven backends' columns
    table.add_column("model", overflow="fold", min_width=16)
    for spec in board["specs"]:
        table.add_column(spec, overflow="fold")
    same = {i.get("model"): i.get("same_as") for i in board.get("identical") or () if isinstance(i, dict)}
    for model in board["models"]:
        row = board["matrix"].get(model)
        row = row if isinstance(row, dict) else {}
        label = Text(str(model))
        if same.get(model):
            label.append(f"\n= {same[model]}", style="dim")
        table.add_row(label, *(scoreboard_cell(row.get(s)) for s in board["specs"]))
    return table


def print_scoreboard(board: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(scoreboard_table(board))
    lat = board["latency"]
    console.print(f"latency: median of {lat['runs']} runs after {lat['warmup']} warm-up, {lat['threads']} thread(s) "
                  "per backend, ± half the 10-90% spread", style="dim", highlight=False)
    for i in board.get("identical") or ():
        console.print(f"• {i['text']}", style="yellow", highlight=False)
    for f in board.get("findings", []):
        console.print(f"• {f['text']}", highlight=False)
    run = board.get("run")
    if run and run.get("render_only"):
        missing = f", {run['missing']} not in the store (not run)" if run.get("missing") else ""
        console.print(f"{run['cells']} cells re-rendered from the store, none run{missing}", highlight=False)
    elif run:
        shared = run["cells"] - run["ran"] - run["resumed"]
        console.print(f"{run['cells']} cells: {run['ran']} run, {run['resumed']} resumed from the store"
                      + (f", {shared} shared by identical entries" if shared else "")
                      + f" ({run['executor']} executor, {run['workers']} workers, {run['wall_s']:.1f} s)", highlight=False)


def print_ops(matrix: dict, console: Console, path, page=None) -> None:
    """The operator matrix: per backend how many operators agree, diverge, fail, are skipped;
    then every operator that does not agree everywhere, with its worst sample."""
    specs = matrix["specs"]
    table = Table(title=f"backendiff ops · {len(matrix['rows'])} operators of PyTorch's OpInfo database vs PyTorch",
                  title_justify="left")
    table.add_column("operator", overflow="fold")
    for spec in specs:
        table.add_column(spec, overflow="fold")
    shown = 0
    for row in matrix["rows"]:
        cells = [row["cells"].get(spec, {}) for spec in specs]
        if all(c.get("status") in ("agree", "skipped", "semantics") for c in cells):
            continue
        shown += 1
        table.add_row(row["op"], *[Text(ops_cell(c), style=_STATUS_STYLE.get(_OPS_STYLE.get(c.get("status")), ""))
                                   for c in cells])
    if shown:
        console.print(table)
    for spec, counts in matrix["summary"].items():
        console.print(f"{spec}: " + " · ".join(f"{k} {v}" for k, v in sorted(counts.items())), highlight=False)
    console.print(f"matrix: {path}" + (f", {page}" if page else ""), highlight=False)


_OPS_STYLE = {"agree": "ok", "diverged": "diverged", "failed": "failed", "skipped": "unavailable", "semantics": "vacuous"}


def ops_cell(cell: dict) -> str:
    status = cell.get("status", "-")
    text = cell_text(cell) if status != "agree" else ""
    return f"{status}{': ' if status == 'skipped' else ' '}{text}".strip()


def stdout_console() -> Console:
    """The console of a command's results: wide enough for the table when the output goes to a
    file or a CI log."""
    return Console() if sys.stdout.isatty() else Console(width=max(160, Console().width))


def print_backends(rows: list[dict], console: Console) -> None:
    """The backend adapters (``listings.backend_rows``): available or not, versions, variants,
    and why one or some of its specs cannot run here."""
    table = Table(title="backendiff backends", title_justify="left")
    for col in ("backend", "available", "versions", "variants", "notes"):
        table.add_column(col, overflow="fold")
    for r in rows:
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        notes = r["description"] if r["available"] else f"{r['reason']}" + (f" — {r['hint']}" if r["hint"] else "")
        for spec, why in r["variants_unavailable"].items():
            notes += f"\n[yellow]{spec}[/yellow]: {why['reason']}" + (f" — {why['hint']}" if why["hint"] else "")
        table.add_row(r["name"], "[green]yes[/green]" if r["available"] else "[yellow]no[/yellow]", versions,
                      ", ".join(r["variants"]), notes)
    console.print(table)


def print_zoo(rows: list[dict], console: Console) -> None:
    """The built-in models (``listings.zoo_rows``): inputs, size, task, reference score."""
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
    console.print(table)


def print_decoders(result: dict, console: Console) -> None:
    """Decoder noise: Pillow against OpenCV per shipped image (``images``), then the
    prediction flips those decodes cause (``prediction_flips``)."""
    table = Table(title="backendiff decoders · Pillow vs OpenCV", title_justify="left")
    for col in ("image", "stored as", "size", "max |Δ|", "mean |Δ|", "values differing", "JPEG loss (mean)"):
        table.add_column(col, justify="left" if col in ("image", "stored as") else "right")
    for r in result["images"]:
        loss = f"{r['jpeg_loss_mean_abs']:.2f}" if "jpeg_loss_mean_abs" in r else "-"
        table.add_row(r["image"], r["stored"], "x".join(map(str, r["size"])), str(r["max_abs"]), f"{r['mean_abs']:.3f}",
                      f"{100 * r['differing']:.2f}%", loss)
    console.print(table)
    flips = result["prediction_flips"]
    table = Table(title=f"prediction flips of {flips['model']} on its {flips['crops']} held-out crops "
                        f"(shipped JPEGs: {', '.join(flips['shipped_jpegs'])})", title_justify="left")
    for col in ("decoded as", "against", "flips", "top-1 a", "top-1 b", "max |Δ|", "mean |Δ|"):
        table.add_column(col, justify="left" if col in ("decoded as", "against") else "right")
    for r in flips["rows"]:
        table.add_row(r["a"], r["b"], f"{r['flips']} ({100 * r['flip_rate']:.2f}%)", f"{r['top1_a']:.2f}",
                      f"{r['top1_b']:.2f}", str(r["max_abs"]), f"{r['mean_abs']:.3f}")
    console.print(table)
