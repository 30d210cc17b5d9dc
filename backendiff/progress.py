"""Progress of a long command on the terminal: one rich status line on stderr that the work
updates through a ``progress(message)`` callback, or nothing at all when the run is quiet or
stderr is not a terminal (a CI log gets no spinner frames)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console

from .render import count_of, step_line


def _silent(message: str) -> None:
    """The progress callback of a run that shows none."""


@contextmanager
def progress_display(quiet: bool, start: str, prefix: str | None = None) -> Iterator[Callable[[str], None]]:
    """The progress callback of one command, shown from ``start`` on. Without ``prefix`` each
    step is timed (``StepClock``: its seconds, and what is left of a counted step); with one,
    each message is shown as ``prefix + message``."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield _silent
        return
    with console.status(start) as status:
        if prefix is not None:
            yield lambda message: status.update(prefix + message)
        else:
            with StepClock(status) as clock:
                yield clock.step


class StepClock:
    """The progress line of a long step: its message, the seconds it has taken so far, and for
    a counted step (``sample 3/10``) an estimate of what is left; refreshed every second by a
    background thread, so a 160 s compile does not look stuck."""

    def __init__(self, status):
        self.status, self.message, self.started = status, "starting", time.monotonic()
        self.first, self.eta = None, None     # (prefix, time, index) of the counted step's first item

    def step(self, message: str) -> None:
        now, counted, self.eta = time.monotonic(), count_of(message), None
        if counted is not None:
            prefix, i, n = counted
            if self.first is None or self.first[0] != prefix or i <= self.first[2]:
                self.first = (prefix, now, i)
            else:                             # the items so far set the pace of the rest
                self.eta = (now - self.first[1]) / (i - self.first[2]) * (n - i + 1)
        self.message, self.started = message, now
        self.show()

    def show(self) -> None:
        elapsed = time.monotonic() - self.started
        left = None if self.eta is None else max(self.eta - elapsed, 0.0)
        self.status.update("backendiff: " + step_line(self.message, elapsed, left))

    def __enter__(self):
        self._stop = threading.Event()

        def tick():
            while not self._stop.wait(1.0):
                self.show()
        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        return False
