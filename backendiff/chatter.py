"""Third-party chatter kept out of the terminal: what exporters, converters and runtimes
print, log and warn while backendiff drives them (an FX graph of thousands of lines on a
failed export, ``WARNING:root:Axis 1 is out-of-range`` hundreds of times per int8 run,
``Evaluation failed`` from the ONNX optimizer). It goes into the report instead."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter

#: loggers that print through handlers of their own (root-level capture does not reach them)
OWN_HANDLERS = ("torch", "torch.export", "torch.fx.experimental.symbolic_shapes", "torch._dynamo", "nncf")
#: loggers silenced outright: torch re-installs its handlers while it exports, so their
#: records cannot be redirected (one line per torchvision op the ONNX registry skips)
SILENCED = ("torch.onnx._internal.exporter._registration",)


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("backendiff"):
            try:
                self.sink.append(f"{record.levelname} {record.name}: {record.getMessage()}")
            except Exception:  # noqa: BLE001 - a malformed third-party record is not our failure
                pass


class captured:
    """Within the block: log records at WARNING and above from every logger but backendiff's,
    and Python warnings, go to ``.lines``; with ``streams``, what Python code prints to
    stdout/stderr goes to ``.text`` (leave it off where a progress display writes to stderr
    from another thread)."""

    def __init__(self, streams: bool = False):
        self.streams, self.lines, self.text = streams, [], ""

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        if self.streams:
            self._buffer = io.StringIO()
            self._stack.enter_context(contextlib.redirect_stdout(self._buffer))
            self._stack.enter_context(contextlib.redirect_stderr(self._buffer))
        root = logging.getLogger()
        self._root_handlers, root.handlers = root.handlers, [_Collect(self.lines)]
        self._levels = {}
        for name in SILENCED:
            logger = logging.getLogger(name)
            self._levels[name] = (logger.level, logger.propagate, logger.handlers)
            logger.setLevel(logging.ERROR)
        for name in OWN_HANDLERS:
            logger = logging.getLogger(name)
            self._levels[name] = (logger.level, logger.propagate, logger.handlers)
            logger.handlers, logger.propagate = [], True    # through the collector, not its own printer
        self._warnings = self._stack.enter_context(warnings.catch_warnings(record=True))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        logging.getLogger().handlers = self._root_handlers
        for name, (level, propagate, handlers) in self._levels.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.propagate, logger.handlers = propagate, handlers
        self.lines += [f"{w.category.__name__}: {w.message}" for w in self._warnings]
        if self.streams:
            self.text = self._buffer.getvalue()
        return False

    def summary(self, limit: int = 10) -> dict | None:
        return summarize(self.lines, limit)


def summarize(lines: list[str], limit: int = 10) -> dict | None:
    """``{"lines": N, "most_frequent": [[count, line], ...]}`` (a leading ``[hh:mm:ss]`` time
    stamp dropped, so a native warning repeated per op counts as one) or None when empty."""
    import re

    lines = [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line.rstrip())[:300] for line in lines if line.strip()]
    if not lines:
        return None
    counts = Counter(lines)
    return {"lines": len(lines), "most_frequent": [[c, line] for line, c in counts.most_common(limit)]}
