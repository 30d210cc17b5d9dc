"""The report: the one data structure that is written as JSON and rendered (terminal,
later HTML/Markdown). Schema ``backendiff.report/1`` (see README); keep it stable.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .layers import FirstDivergence, LayerRow

SCHEMA = "backendiff.report/1"

#: statuses of a backend result, and the exit code each leads to
OK, DIVERGED, FAILED, UNAVAILABLE, CRASHED, TIMEOUT = "ok", "diverged", "failed", "unavailable", "crashed", "timeout"
#: the backend ran and agrees only because the reference output carries no signal (all zeros,
#: constant, or within atol of zero): not a pass, not a divergence
VACUOUS = "vacuous"
RAN = (OK, DIVERGED, VACUOUS)
NOT_RUN = (FAILED, UNAVAILABLE, CRASHED, TIMEOUT)


@dataclass
class OutputResult:
    name: str
    shape: list[int]
    metrics: dict
    within_tolerance: bool
    violations: int = 0
    reference_shape: list[int] | None = None
    status: str = "ok"            # this output's verdict: ok, diverged or vacuous (verdict.judge_output)
    reason: str | None = None     # why, where it is not a plain elementwise pass
    judge: dict | None = None     # the fp64 rule's numbers, where it was applied


@dataclass
class BackendResult:
    spec: str
    backend: str
    variant: str | None
    status: str
    options: dict = field(default_factory=dict)
    error: dict | None = None
    route: str | None = None
    precision: dict = field(default_factory=dict)
    tolerance: dict | None = None
    floor: dict | None = None     # the SQNR/cosine floor of the precision the backend ran in
    cache: str | None = None
    timings: dict = field(default_factory=dict)
    outputs: list[OutputResult] = field(default_factory=list)
    layers: list[LayerRow] = field(default_factory=list)
    first_divergence: FirstDivergence | None = None
    task: dict | None = None
    advice: dict | None = None
    info: dict = field(default_factory=dict)
    latency: dict | None = None   # sweep: median/spread/throughput of compiled.run, threads
    #: the backend's raw outputs of the first sample, only with ``CompareConfig.keep_outputs``
    #: (``backendiff ops`` triages them); not a field: never in the JSON
    arrays = None

    @property
    def ran(self) -> bool:
        return self.status in RAN

    def worst(self) -> dict:
        """The worst metrics over all outputs (for one-row summaries)."""
        from .metrics import worst_of_outputs

        return worst_of_outputs([{"metrics": o.metrics} for o in self.outputs])


@dataclass
class Report:
    model: dict
    reference: dict
    environment: dict
    backends: list[BackendResult] = field(default_factory=list)
    baseline: dict | None = None
    timings: dict = field(default_factory=dict)
    command: str | None = None
    requested: list[str] = field(default_factory=list)
    calibration: dict | None = None
    task: dict | None = None
    partial: dict | None = None   # an interrupted run: {"planned", "finished", "missing", "log"}
    sysnoise: dict | None = None  # --sysnoise: the SysNoise table on the run's backends (or its error)
    schema: str = SCHEMA

    @property
    def verdict(self) -> str:
        """pass, fail, vacuous (nothing diverged, but some comparison had no signal: never a
        pass) or incomplete."""
        if self.partial and self.partial.get("missing"):
            return "incomplete"
        bad = [b for b in self.backends if b.status == DIVERGED or (b.status in NOT_RUN and b.spec in self.requested)]
        if bad or not any(b.ran for b in self.backends):
            return "fail"
        return "vacuous" if any(b.status == VACUOUS for b in self.backends) else "pass"

    @property
    def exit_code(self) -> int:
        """0 all agree; 1 a backend diverged; 3 a requested backend could not run (or the run
        was interrupted before every backend finished); 4 nothing diverged but a comparison
        was vacuous (the reference output carries no signal)."""
        if self.verdict == "incomplete":
            return 3
        if any(b.status in NOT_RUN and b.spec in self.requested for b in self.backends):
            return 3
        if any(b.status == DIVERGED for b in self.backends):
            return 1
        if not any(b.ran for b in self.backends):
            return 3
        return 4 if any(b.status == VACUOUS for b in self.backends) else 0

    def __bool__(self) -> bool:
        return self.verdict == "pass"

    def backend(self, spec: str) -> BackendResult:
        """The result of a spec as written (``ort:fp16``), else the first of a backend name."""
        for b in self.backends:
            if b.spec == spec:
                return b
        for b in self.backends:
            if b.backend == spec:
                return b
        raise KeyError(spec)

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "schema": self.schema,
            "model": self.model,
            "reference": self.reference,
            "baseline": self.baseline,
            "environment": self.environment,
            "command": self.command,
            "requested": self.requested,
            "calibration": self.calibration,
            "task": self.task,
            "partial": self.partial,
            "sysnoise": self.sysnoise,
            "timings": self.timings,
            "backends": [asdict(b) for b in self.backends],
            "verdict": self.verdict,
        }
        return json_safe(d)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        if not isinstance(d, dict) or not str(d.get("schema", "")).startswith("backendiff.report/"):
            raise ValueError("not a backendiff report (no 'schema': 'backendiff.report/N')")
        backends = []
        for b in d.get("backends", []):
            b = dict(b)
            b["outputs"] = [OutputResult(**o) for o in b.get("outputs", [])]
            backends.append(BackendResult(**b))
        return cls(model=d["model"], reference=d["reference"], environment=d.get("environment", {}),
                   backends=backends, baseline=d.get("baseline"), timings=d.get("timings", {}),
                   command=d.get("command"), requested=d.get("requested", []), calibration=d.get("calibration"),
                   task=d.get("task"),
                   partial=d.get("partial"), sysnoise=d.get("sysnoise"), schema=d["schema"])

    @classmethod
    def read(cls, path: str | Path) -> "Report":
        return cls.from_dict(json.loads(Path(path).read_text()))


def json_safe(value):
    """``value`` as strict JSON data without sentinels: a number that is not finite becomes
    null (the metrics say why: ``identical``, ``nonfinite_mismatch``), keys become strings,
    tuples lists, and anything else its text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)
