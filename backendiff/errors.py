"""Errors and failures.

Three kinds, kept apart on purpose:
- ``BadInput``: the user asked for something that cannot work (missing file, malformed
  spec, input that does not fit the model). The CLI prints one line and exits 2.
- ``BackendUnavailable``: a runtime is not installed or cannot run on this machine. It
  becomes a backend result with status ``unavailable``; it is data, not a crash.
- ``Failure``: a frozen record of what went wrong in a backend, written into the report.
Any other exception is a bug in backendiff itself and is raised, never disguised as a
backend failure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum


class BackendiffError(Exception):
    """Base of the errors backendiff raises on purpose."""


class BadInput(BackendiffError):
    """Bad usage or bad input: one clear line for the user, exit code 2."""


class BackendUnavailable(BackendiffError):
    """A backend cannot run here; ``hint`` says what would make it run."""

    def __init__(self, reason: str, hint: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


class Stage(str, Enum):
    """The stages a backend goes through: a Failure names the one it failed in, and the
    worker's time limits (``isolation.DEFAULT_LIMITS``) are set per stage."""
    SETUP = "setup"          # import the runtime, check the variant can run here
    EXPORT = "export"        # torch.export / the ONNX export the route needs
    CONVERT = "convert"
    COMPILE = "compile"
    RUN = "run"
    COMPARE = "compare"      # the outputs against the reference
    ANALYSE = "analyse"      # layer view, isolation, bisection, advice


@dataclass(frozen=True)
class Failure:
    """What went wrong in a backend, as the report's ``error`` block: the stage, a type, the
    message, and whatever else says more (``hint``, ``signal``, ``operator``, ``where``...)."""
    stage: str
    type: str
    message: str
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_exception(cls, stage: str, exc: BaseException, **extra) -> "Failure":
        return cls(stage=str(Stage(stage).value), type=type(exc).__name__, message=trim_message(str(exc)), extra=extra)

    @classmethod
    def of(cls, stage: str, type: str, message: str, **extra) -> "Failure":
        return cls(stage=str(Stage(stage).value), type=type, message=message, extra=extra)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "type": self.type, "message": self.message, **self.extra}


def trim_message(text: str, max_lines: int = 12, max_chars: int = 2000) -> str:
    """Keep what matters of a runtime's (often very long) error message."""
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    out = "\n".join(lines)
    return out if len(out) <= max_chars else out[: max_chars - 3] + "..."


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(text: str) -> str:
    for line in ANSI.sub("", str(text)).splitlines():
        if line.strip():
            return line.strip()
    return ""


def root_cause(exc: BaseException) -> BaseException:
    """The innermost explicitly chained cause (``raise ... from``) that says something: tools
    wrap the real error in a generic one (torch.onnx's "Failed to convert the exported
    program to an ONNX model. This is step 3/3 ..." around "No ONNX function found for
    aten._linalg_eigh"), and only the innermost names what failed."""
    found, cause, seen = exc, exc.__cause__, {id(exc)}
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if first_line(cause):
            found = cause
        cause = cause.__cause__
    return found
