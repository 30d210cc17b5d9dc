"""A run's files: the JSON report (and reading a saved one back), the HTML report and the
Markdown summary, the SysNoise table, a sweep's scoreboard with each cell's page, and the
operator matrix's page. The
documents are rendered from the report's JSON data only, so a saved run renders to the
same bytes as the live one."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from .cache import write_atomic
from .errors import BadInput, first_line
from .html import render_html, render_ops_html, render_sweep_html, render_sysnoise_html
from .markdown import render_markdown
from .ops import html_view
from .partial import PartialLog, partial_path_for, read_partial
from .render import print_scoreboard
from .report import Report, json_safe
from .sweep import cell_page


def write_report(report: Report, path: Path) -> None:
    """The JSON report; the partial log beside it goes, the report now holding everything."""
    report.write(path)
    PartialLog(partial_path_for(path)).remove()


def load_run(path: Path) -> tuple[Report, dict]:
    """A saved run, a JSON report or the ``.partial.jsonl`` log of an interrupted run, as the
    Report and its JSON data; a file that is neither is BadInput."""
    try:
        if path.name.endswith(".jsonl"):
            report = read_partial(path)
            return report, json.loads(report.to_json())
        data = json.loads(path.read_text())
        return Report.from_dict(data), data
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {path} as a backendiff report: {e}") from None


def write_documents(data: dict, html_path: Path | None, md_path: Path | None, console: Console) -> None:
    """The HTML report and the Markdown summary, each where asked, saying where it went."""
    if html_path is not None:
        html_path.write_text(render_html(data), encoding="utf-8")
        console.print(f"html report: {html_path}", highlight=False)
    if md_path is not None:
        md_path.write_text(render_markdown(data), encoding="utf-8")
        console.print(f"markdown summary: {md_path}", highlight=False)


def write_sysnoise(result: dict, json_path: Path | None, html_path: Path | None) -> None:
    """The SysNoise table as JSON and as an HTML page with its chart, each where asked."""
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if html_path is not None:
        html_path.write_text(render_sysnoise_html(result), encoding="utf-8")


def write_scoreboard(board: dict, out_dir: Path, console: Console) -> list[str]:
    """Each cell's report page, sweep.json, sweep.html and the terminal table: each part
    written as far as it goes; returns what failed (one short line each)."""
    failed: list[str] = []

    def attempt(what: str, write) -> None:
        try:
            write()
        except Exception as e:  # noqa: BLE001 - the store holds the cells; say what is missing, go on
            failed.append(f"{what}: {type(e).__name__}: {first_line(e)}"[:300])

    records = {r["key"]: r for r in board["cells"]}
    pages, bad_pages = {}, []    # each cell's own report beside the scoreboard (a resumed one's kept)
    for model, row in board["matrix"].items():
        for spec, cell in row.items():
            record = records.get(cell.get("key"))
            if record is None or not isinstance(record.get("report"), dict):
                continue
            if cell["key"] not in pages:
                name = cell_page({"model": model, "spec": spec})
                page = out_dir / name

                def write(page=page, record=record):
                    if not (record.get("resumed") and page.exists()):
                        page.parent.mkdir(parents=True, exist_ok=True)
                        page.write_text(render_html(record["report"]), encoding="utf-8")
                try:
                    write()
                    pages[cell["key"]] = name
                except Exception as e:  # noqa: BLE001
                    bad_pages.append(f"{model} on {spec}: {type(e).__name__}: {first_line(e)}")
                    pages[cell["key"]] = None
            cell["report"] = pages[cell["key"]]
    if bad_pages:
        failed.append(f"{len(bad_pages)} cell page(s), first {bad_pages[0]}"[:300])
    links = {f"{m}|{s}": c["report"] for m, row in board["matrix"].items() for s, c in row.items() if c.get("report")}
    attempt("sweep.json", lambda: (out_dir / "sweep.json").write_text(
        json.dumps(json_safe(board), indent=1, allow_nan=False) + "\n"))
    attempt("sweep.html", lambda: (out_dir / "sweep.html").write_text(render_sweep_html(board, links), encoding="utf-8"))
    attempt("the terminal table", lambda: print_scoreboard(board, console))
    written = [p for p in ("sweep.json", "sweep.html") if not any(f.startswith(p) for f in failed)]
    if written:
        console.print(f"scoreboard: {', '.join(str(out_dir / p) for p in written)}", highlight=False)
    return failed


def write_ops_html(matrix: dict, out_dir: Path) -> Path:
    """The operator matrix as a self-contained page beside its ``matrix.json``."""
    path = out_dir / "matrix.html"
    write_atomic(path, lambda tmp: tmp.write_text(render_ops_html(html_view(matrix, out_dir))))
    return path
