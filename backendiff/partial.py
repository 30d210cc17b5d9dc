"""Nothing lost: an append-only log of a run beside its report, one JSON line per finished
backend after a header, flushed as each backend finishes. A run that is interrupted (Ctrl-C,
kill, a crash of backendiff itself) leaves its finished results readable there, and
``backendiff report RUN.partial.jsonl`` renders them as a partial report.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from .report import BackendResult, OutputResult, Report, json_safe

SUFFIX = ".partial.jsonl"


def partial_path_for(report_path: Path) -> Path:
    """``reports/run.json`` -> ``reports/run.partial.jsonl``."""
    return report_path.with_name(report_path.stem + SUFFIX)


class PartialLog:
    """Writes nothing when ``path`` is None."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None

    def _append(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def start(self, fields: dict, planned: list[str]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self._append({"record": "header", "planned": planned, **fields})

    def add(self, result: BackendResult) -> None:
        self._append({"record": "backend", **asdict(result)})

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def read_partial(path: Path) -> Report:
    """The report of a partial log: the header's fields, the finished backends, and
    ``partial`` saying which planned backends never finished. A last line cut short by the
    interruption is skipped."""
    header, backends = None, []
    for _number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue                       # the line being written when the run was killed
        kind = record.pop("record", None)
        if kind == "header":
            header = record
        elif kind == "backend":
            record["outputs"] = [OutputResult(**o) for o in record.get("outputs", [])]
            backends.append(BackendResult(**record))
    if header is None:
        raise ValueError("no header line: not a backendiff partial log")
    planned = header.pop("planned", [])
    finished = [b.spec for b in backends]
    header.pop("schema", None)
    report = Report(**header, backends=backends)
    report.partial = {"planned": planned, "finished": finished,
                      "missing": [s for s in planned if s not in finished], "log": str(path)}
    return report
