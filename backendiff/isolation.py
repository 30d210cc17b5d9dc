"""Run one backend in its own worker process, so that its crash, hang or out-of-memory kill
costs nothing but its own result.

The worker is forked from the process that holds the model, its inputs and the reference
(nothing is reloaded). It reports each stage as it enters it and sends back the finished
``BackendResult``; the parent enforces a time limit per stage. A worker that dies of a
signal becomes status ``crashed`` (with the signal and the stage), one that overstays its
stage's limit ``timeout``. Errors of backendiff itself are re-raised in the parent.

In the worker torch runs single-threaded: GNU OpenMP's thread pool does not survive a fork
(a parallel region in the child would wait forever for the parent's threads), the reason
PyTorch's own DataLoader workers do the same. The runtimes' own thread pools are untouched.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Callable

from .errors import BadInput, Failure, Stage
from .report import CRASHED, TIMEOUT, BackendResult

#: default time limit of each stage in seconds; "analyse" is the layer-wise view, the
#: isolation of layers, bisection and advice after the run
DEFAULT_LIMITS = {Stage.SETUP.value: 300.0, Stage.CONVERT.value: 900.0, Stage.COMPILE.value: 900.0,
                  Stage.RUN.value: 600.0, Stage.ANALYSE.value: 1800.0}
POLL_S = 0.05


class WorkerError(Exception):
    """backendiff's own error inside a worker, re-raised in the parent with its traceback."""


def parse_limits(text: str | None) -> dict[str, float]:
    """``--timeout``: ``SECONDS`` for every stage, or ``STAGE=SECONDS[,...]`` (stages:
    setup, convert, compile, run, analyse) over the defaults."""
    limits = dict(DEFAULT_LIMITS)
    if not text:
        return limits
    for item in str(text).split(","):
        stage, sep, value = item.strip().rpartition("=")
        try:
            seconds = float(value)
        except ValueError:
            raise BadInput(f"--timeout {text!r}: {value!r} is not a number of seconds") from None
        if seconds <= 0:
            raise BadInput(f"--timeout {text!r}: a time limit must be positive")
        if not sep:
            limits = dict.fromkeys(limits, seconds)
        elif stage in limits:
            limits[stage] = seconds
        else:
            raise BadInput(f"--timeout {text!r}: unknown stage {stage!r} (stages: {', '.join(limits)})")
    return limits


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def death_message(exitcode: int, stage: str) -> tuple[str, str | None]:
    """What to tell the user of a worker that ended without a result: (message, signal)."""
    if exitcode < 0:
        name = signal_name(-exitcode)
        why = {"SIGSEGV": "a segmentation fault in native code", "SIGABRT": "an abort in native code",
               "SIGBUS": "a bus error in native code", "SIGFPE": "a floating-point exception in native code",
               "SIGILL": "an illegal instruction (a build for another CPU?)",
               "SIGKILL": "killed from outside: most often the kernel's out-of-memory killer"}.get(name, "a signal")
        return f"the worker process died of {name} ({why}) during {stage}", name
    return f"the worker process exited with code {exitcode} during {stage} without a result", None


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the process that forked it dies (a killed run
    must not leave a runtime compiling on its own). Linux; elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                      # it died before prctl took effect
        os._exit(1)


def _child(conn, work: Callable, counters: Callable | None, parent: int, log: str) -> None:
    _die_with_parent(parent)
    # what native code prints (TVM's "[07:01:27] ... Warning: ..." per op, a runtime's last
    # words before it aborts) goes to the parent's log file, not the user's terminal
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        import faulthandler

        import torch

        faulthandler.disable()      # a native crash is reported as data, not as a stack dump
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's: it stops the worker
        torch.set_num_threads(1)
        result = work(lambda message: conn.send(("progress", message)), lambda stage: conn.send(("stage", stage)))
        sys.stdout.flush()
        sys.stderr.flush()                           # into the log before the parent reads it
        if counters is not None:
            conn.send(("counters", counters()))
        conn.send(("result", result))
    except BadInput as e:
        conn.send(("bad_input", str(e)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()
        os._exit(0)   # no atexit handlers, no flushing of the parent's buffers twice


def run_isolated(work: Callable, shell: BackendResult, limits: dict[str, float], progress: Callable,
                 counters: Callable | None = None, on_counters: Callable | None = None) -> BackendResult:
    """Run ``work(progress, enter_stage) -> BackendResult`` in a forked worker. ``shell`` is
    the result to fill in when the worker dies or overstays (spec, backend, variant, options).
    ``counters()`` is read in the worker when it is done and handed to ``on_counters`` here
    (the shared timings the worker added to)."""
    import multiprocessing
    import tempfile

    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    log_fd, log = tempfile.mkstemp(prefix="backendiff-worker-", suffix=".log")
    os.close(log_fd)
    try:
        return _supervise(ctx, receiver, sender, work, shell, limits, progress, counters, on_counters, log)
    finally:
        os.unlink(log)


def worker_output(log: str) -> list[str]:
    try:
        with open(log, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _supervise(ctx, receiver, sender, work, shell, limits, progress, counters, on_counters, log) -> BackendResult:
    from .chatter import summarize

    proc = ctx.Process(target=_child, args=(sender, work, counters, os.getpid(), log), daemon=True)
    stage, entered = "setup", time.perf_counter()
    timings: dict[str, float] = {}
    proc.start()
    sender.close()
    result = None
    try:
        while result is None:
            if receiver.poll(POLL_S):
                try:
                    kind, value = receiver.recv()
                except (EOFError, OSError):
                    break                                   # the worker died: its pipe closed
                if kind == "stage":
                    now = time.perf_counter()
                    timings[f"{stage}_s"] = round(now - entered, 6)
                    stage, entered = value, now
                elif kind == "progress":
                    progress(value)
                elif kind == "counters":
                    if on_counters is not None:
                        on_counters(value)
                elif kind == "result":
                    result = value
                elif kind == "bad_input":
                    raise BadInput(value)
                else:
                    raise WorkerError(value)
            elif not proc.is_alive() and not receiver.poll(0):
                break
            if result is None and time.perf_counter() - entered > limits.get(stage, DEFAULT_LIMITS["analyse"]):
                proc.kill()
                proc.join()
                timings[f"{stage}_s"] = round(time.perf_counter() - entered, 6)
                shell.status = TIMEOUT
                shell.timings.update(timings)
                shell.error = Failure.of(stage, "Timeout", f"{stage} did not finish within {limits[stage]:g} s "
                                         "(--timeout); the worker was killed", limit_s=limits[stage]).to_dict()
                return shell
    finally:
        receiver.close()
        if result is not None or shell.status == TIMEOUT:
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    said = worker_output(log)
    if result is not None:
        if summarize(said):
            result.info["worker_output"] = summarize(said)
        return result
    proc.join()
    timings[f"{stage}_s"] = round(time.perf_counter() - entered, 6)
    message, sig = death_message(proc.exitcode, stage)
    shell.status = CRASHED
    shell.timings.update(timings)
    shell.error = Failure.of(stage, "Crashed", message, signal=sig, exitcode=proc.exitcode).to_dict()
    if said:
        shell.error["output_tail"] = said[-20:]      # the runtime's last words
    return shell
