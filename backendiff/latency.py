"""Inference latency of a compiled backend, measured in the backend's own process.

``measure`` runs the sample ``warmup`` times untimed (lazy allocation, kernel selection,
caches), then ``runs`` times under ``time.perf_counter``; ``summarize`` turns the times
into the median, the spread (10th and 90th percentiles, their ratio) and the throughput at
the sample's batch size. A call is what a user of the runtime's Python API pays: feeding
numpy arrays in and getting numpy arrays back.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def summarize(times_s: list[float], batch: int) -> dict:
    """Median, spread and throughput of a list of per-call times in seconds."""
    if not times_s:
        raise ValueError("no timed runs")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    p10, p90 = (float(v) for v in np.percentile(ms, [10, 90]))
    return {
        "median_ms": round(median, 4),
        "p10_ms": round(p10, 4),
        "p90_ms": round(p90, 4),
        "min_ms": round(float(ms.min()), 4),
        "spread": round(p90 / p10, 4) if p10 > 0 else None,
        "runs": len(times_s),
        "batch": int(batch),
        "throughput_per_s": round(batch * 1e3 / median, 3) if median > 0 else None,
    }


def batch_of(sample: dict) -> int:
    """The leading dimension of the sample's first input (1 for scalars)."""
    first = next(iter(sample.values()))
    shape = np.shape(first)
    return int(shape[0]) if shape else 1


def measure(run: Callable[[dict], object], sample: dict, warmup: int, runs: int,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time ``run(sample)``: ``warmup`` untimed calls, then ``runs`` timed ones."""
    if runs < 1 or warmup < 0:
        raise ValueError("latency needs runs >= 1 and warmup >= 0")
    for _ in range(warmup):
        run(sample)
    times = []
    for _ in range(runs):
        t0 = clock()
        run(sample)
        times.append(clock() - t0)
    return summarize(times, batch_of(sample)) | {"warmup": warmup}


def speedup(base: dict | None, other: dict | None) -> float | None:
    """How many times faster ``other`` is than ``base`` (median against median)."""
    try:
        return round(base["median_ms"] / other["median_ms"], 3)
    except (TypeError, KeyError, ZeroDivisionError):
        return None
