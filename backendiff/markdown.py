"""A compact Markdown summary of a report, for a CI job summary or a pull-request comment:
the verdict, one table row per backend, where each diverged backend starts to differ, the
advice, the task, and the command to reproduce. Rendered from the report's JSON dict."""
from __future__ import annotations

from .metrics import worst_of_outputs
from .render import fmt, fmt_sqnr, nonfinite_cell, output_notes


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    model = report.get("model", {})
    backends = report.get("backends", [])
    task = report.get("task")
    mark = {"pass": "✅", "vacuous": "⚠️"}.get(report.get("verdict"), "❌")
    lines = [f"### backendiff · `{model.get('source', '?')}` {mark} {report.get('verdict')}", ""]
    inputs = ", ".join(f"`{i['name']}` {tuple(i['shape'])} {i['dtype']}" for i in model.get("inputs", []))
    ref = report.get("reference", {})
    lines.append(f"Reference {ref.get('backend')} {ref.get('precision')} · inputs {inputs} "
                 f"({model.get('inputs_from')}"
                 + (f", seed {model.get('seed')})" if "random" in str(model.get("inputs_from")) else ")"))
    if task:
        ref_score = task.get("reference")
        lines.append(f"Task: {task.get('name')} on {task.get('samples')} samples ({_cell(task.get('source', ''))})"
                     + (f", reference {task.get('metric')} {ref_score:.2f}{task.get('unit', '')}"
                        if ref_score is not None else ""))
    partial = report.get("partial")
    if partial:
        lines.append(f"**Partial run**: {len(partial['finished'])} of {len(partial['planned'])} backends finished; "
                     f"never finished: {', '.join(f'`{m}`' for m in partial['missing']) or '-'}")
    lines.append("")
    head = ["backend", "status", "precision", "max abs", "SQNR dB", "NaN/Inf"]
    if task:
        head += [f"{task.get('metric', 'task')} Δ", "flipped"]
    head.append("notes")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in backends:
        w = worst_of_outputs(b.get("outputs", []))
        p = b.get("precision") or {}
        precision = f"{p.get('requested')}→{p.get('runtime')}" if p else ""
        row = [f"`{b['spec']}`", b["status"], precision, fmt(w.get("max_abs")), fmt_sqnr(w),
               nonfinite_cell(w)]
        t = b.get("task") or {}
        if task:
            ok = t and "error" not in t
            row += [f"{t['delta']:+.2f}" if ok else "", f"{100 * t['flip_rate']:.1f}%" if ok and "flip_rate" in t else ""]
        notes = output_notes(b.get("outputs", []), b.get("tolerance"))
        if b.get("error"):
            e = b["error"]
            notes.append(f"[{e.get('stage')}] {(e.get('message') or '').splitlines()[0][:140] if e.get('message') else ''}")
        fd = b.get("first_divergence")
        if fd:
            notes.append(f"starts at `{fd.get('module') or '<top>'}` ({fd.get('op_type')})")
        a = b.get("advice")
        if a and a.get("found"):
            notes.append(f"keep {', '.join(f'`{k}`' for k in a['keep'])} in fp32 → {a['verified']['status']}")
        if t.get("exceeds_max_drop"):
            notes.append("past --max-task-drop")
        row.append("; ".join(notes))
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    advised = [b for b in backends if (b.get("advice") or {}).get("found")]
    if advised:
        lines += ["", "Mixed-precision fixes, verified:"]
        lines += [f"- `{b['spec']}`: `--backends '{b['advice']['spec']}'`" for b in advised]
    if report.get("command"):
        lines += ["", "Reproduce:", "", "```", report["command"], "```"]
    return "\n".join(lines) + "\n"
