"""Per-tensor divergence metrics: small pure functions over numpy arrays, no printing.

All arithmetic is done in float64. Non-finite values are compared by position: a NaN
where the reference has a NaN (or the same Inf) is agreement, not divergence; the
finite metrics (max/mean abs, max rel) are computed over the positions where both sides
are finite. Where the NaN/Inf patterns differ, ``nonfinite_mismatch`` counts the elements
and ``first_mismatch`` gives the first one's index; cosine and SQNR are then undefined
(None), never a number that reads as agreement. Cosine is None when either side is all
zero; ``sqnr_db`` is None whenever it is not a finite number, and ``identical`` says when
that is because the two agree exactly (an SQNR of +∞).
"""
from __future__ import annotations

import math

import numpy as np

REL_EPS = 1e-7  # as torch.onnx.verification: |a - r| / (|r| + 1e-7)

METRIC_NAMES = ("max_abs", "mean_abs", "max_rel", "cosine", "sqnr_db", "nonfinite", "nonfinite_mismatch")


def _as64(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    return a.astype(np.float64, copy=False)


def nonfinite_mismatch(actual: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Positions where the non-finite pattern differs (NaN vs number, +Inf vs -Inf, ...)."""
    a, r = _as64(actual), _as64(reference)
    a_nan, r_nan = np.isnan(a), np.isnan(r)
    a_inf, r_inf = np.isinf(a), np.isinf(r)
    same_inf = a_inf & r_inf & (np.sign(a) == np.sign(r))
    return (a_nan != r_nan) | ((a_inf | r_inf) & ~same_inf & ~(a_nan & r_nan))


def compare_arrays(actual, reference, rtol: float = 0.0, atol: float = 0.0,
                   strict_nonfinite: bool = False) -> tuple[dict, int, bool]:
    """One pass over a tensor and its reference: (metrics, elements outside
    ``|a − r| <= atol + rtol·|r|`` plus non-finite mismatches, whether a NaN/Inf appears
    where the reference has none or another). With ``strict_nonfinite`` every NaN/Inf of
    ``actual`` counts as a mismatch, even where the reference has the same."""
    a, r = np.asarray(actual), np.asarray(reference)
    if a.shape != r.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {r.shape}")
    # finiteness on the arrays as given (float32 is finite exactly where its float64 is)
    fa = np.isfinite(a) if a.dtype.kind in "fc" else np.ones(a.shape, bool)
    fr = np.isfinite(r) if r.dtype.kind in "fc" else np.ones(r.shape, bool)
    a, r = _as64(a), _as64(r)
    finite = bool(fa.all() and fr.all())
    if finite:
        av, rv = a.ravel(), r.ravel()
        mismatch = pattern = nonfinite = 0
    else:
        both = fa & fr
        av, rv = a[both], r[both]
        pattern = int(np.count_nonzero(nonfinite_mismatch(a, r)))
        nonfinite = int(np.count_nonzero(~fa))
        mismatch = nonfinite if strict_nonfinite else pattern
    diff = np.subtract(av, rv)
    np.abs(diff, out=diff)
    abs_r = np.abs(rv)
    if diff.size:
        max_abs, mean_abs = float(diff.max()), float(diff.mean())
        scratch = np.add(abs_r, REL_EPS)
        max_rel = float(np.divide(diff, scratch, out=scratch).max())
        np.multiply(abs_r, rtol, out=scratch)
        scratch += atol
        outside = int(np.count_nonzero(np.greater(diff, scratch)))
        del scratch
    else:
        max_abs = mean_abs = max_rel = 0.0
        outside = 0
    noise, signal = float(np.linalg.norm(diff)), float(np.linalg.norm(rv))
    na = float(np.linalg.norm(av))
    first = None
    if pattern:
        where = nonfinite_mismatch(a, r)
        first = [int(i) for i in np.unravel_index(int(np.argmax(where)), a.shape)] if a.ndim else []
    cos = None if pattern or na == 0.0 or signal == 0.0 else float(np.dot(av, rv) / (na * signal))
    if pattern or signal == 0.0 or noise == 0.0:
        sq = None        # +∞ (identical), or undefined: a zero reference, NaN/Inf patterns that differ
    else:
        sq = 20.0 * math.log10(signal / noise)
    metrics = {"max_abs": max_abs, "mean_abs": mean_abs, "max_rel": max_rel, "cosine": cos, "sqnr_db": sq,
               "identical": noise == 0.0 and not pattern, "nonfinite": nonfinite,
               "nonfinite_mismatch": pattern, "first_mismatch": first}
    return metrics, outside + mismatch, mismatch > 0


def sqnr_value(m: dict, identical: float = 300.0, undefined: float = -300.0) -> float:
    """A metrics dict's SQNR as a number for plots and sorting: ``identical`` for +∞,
    ``undefined`` where there is none (NaN/Inf patterns differ, zero reference)."""
    sq = m.get("sqnr_db")
    if sq is not None and math.isfinite(sq):
        return float(sq)
    return identical if m.get("identical") else undefined


def tensor_metrics(actual, reference) -> dict:
    """The metrics of one tensor against its reference (shapes must match)."""
    return compare_arrays(actual, reference)[0]


def violations(actual, reference, rtol: float, atol: float) -> int:
    """Elements outside ``|a − r| <= atol + rtol·|r|`` plus non-finite mismatches."""
    return compare_arrays(actual, reference, rtol, atol)[1]


def worst_of(per_sample: list[dict]) -> dict:
    """Combine one tensor's metrics over several input samples, keeping the worst case:
    cosine and SQNR are undefined (None) when they are on any sample but by identity."""
    if len(per_sample) == 1:
        return dict(per_sample[0])
    cos = [m.get("cosine") for m in per_sample]
    sq = [m.get("sqnr_db") for m in per_sample]
    undefined = any(s is None and not m.get("identical") for s, m in zip(sq, per_sample))
    first = next(((i, m["first_mismatch"]) for i, m in enumerate(per_sample) if m.get("first_mismatch") is not None),
                 None)
    out = {
        "max_abs": max(m["max_abs"] for m in per_sample),
        "mean_abs": float(np.mean([m["mean_abs"] for m in per_sample])),
        "max_rel": max(m["max_rel"] for m in per_sample),
        "cosine": None if any(c is None for c in cos) else min(cos),
        "sqnr_db": None if undefined or all(s is None for s in sq) else min(s for s in sq if s is not None),
        "identical": all(m.get("identical") for m in per_sample),
        "nonfinite": sum(m["nonfinite"] for m in per_sample),
        "nonfinite_mismatch": sum(m.get("nonfinite_mismatch", 0) for m in per_sample),
        "first_mismatch": first[1] if first else None,
    }
    if first is not None and len(per_sample) > 1:
        out["first_mismatch_sample"] = first[0]
    return out


def worst_of_outputs(outputs: list[dict]) -> dict:
    """The worst metrics over a backend's outputs (dicts with ``metrics``): largest errors,
    smallest cosine and SQNR, NaN/Inf summed; {} without outputs. As ``worst_of``: cosine
    and SQNR are undefined (None) when they are on any output but by identity. Never
    raises: an output without metrics (a wrong shape: nothing was compared) is skipped, a
    metric that is missing is left out, a number that is not finite counts as undefined."""
    ms = [o["metrics"] for o in outputs or () if isinstance(o, dict) and isinstance(o.get("metrics"), dict) and o["metrics"]]

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    out = {}
    for key, pick in (("max_abs", max), ("max_rel", max), ("nonfinite", sum), ("nonfinite_mismatch", sum)):
        values = [m[key] for m in ms if number(m.get(key))]
        if values:
            out[key] = pick(values)
    cos = [m["cosine"] for m in ms if "cosine" in m]
    if cos:
        out["cosine"] = min(cos) if all(number(c) for c in cos) else None
    sq = [(m["sqnr_db"], bool(m.get("identical"))) for m in ms if "sqnr_db" in m]
    if sq:
        undefined = any(not number(s) and not same for s, same in sq)
        values = [s for s, _ in sq if number(s)]
        out["sqnr_db"] = None if undefined or not values else min(values)
        out["identical"] = all(same for _, same in sq)
    return out
