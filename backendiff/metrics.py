"""Per-tensor divergence metrics: small pure functions over numpy arrays, no printing.

All arithmetic is done in float64. Non-finite values are compared by position: a NaN
where the reference has a NaN (or the same Inf) is agreement, not divergence; the
finite metrics are computed over the positions where both sides are finite, and a
non-finite value where the reference is finite makes the SQNR −∞.
"""
from __future__ import annotations

import math

import numpy as np

REL_EPS = 1e-7  # as torch.onnx.verification: |a - r| / (|r| + 1e-7)

METRIC_NAMES = ("max_abs", "mean_abs", "max_rel", "cosine", "sqnr_db", "nonfinite")


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
    a, r = _as64(actual), _as64(reference)
    if a.shape != r.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {r.shape}")
    fa, fr = np.isfinite(a), np.isfinite(r)
    both = fa & fr
    if both.all():
        av, rv = a.ravel(), r.ravel()
        mismatch = 0
    else:
        av, rv = a[both], r[both]
        mismatch = int((~fa).sum()) if strict_nonfinite else int(nonfinite_mismatch(a, r).sum())
    diff = np.abs(av - rv)
    abs_r = np.abs(rv)
    if diff.size:
        max_abs, mean_abs = float(diff.max()), float(diff.mean())
        max_rel = float((diff / (abs_r + REL_EPS)).max())
        outside = int((diff > atol + rtol * abs_r).sum())
    else:
        max_abs = mean_abs = max_rel = 0.0
        outside = 0
    noise, signal = float(np.linalg.norm(diff)), float(np.linalg.norm(rv))
    na = float(np.linalg.norm(av))
    if na == 0.0 and signal == 0.0:
        cos = 1.0
    elif na == 0.0 or signal == 0.0:
        cos = 0.0
    else:
        cos = float(np.dot(av, rv) / (na * signal))
    if mismatch:
        sq = -math.inf  # a NaN/Inf where the reference is finite is unbounded noise
    elif noise == 0.0:
        sq = None
    elif signal == 0.0:
        sq = -math.inf
    else:
        sq = 20.0 * math.log10(signal / noise)
    metrics = {"max_abs": max_abs, "mean_abs": mean_abs, "max_rel": max_rel, "cosine": cos, "sqnr_db": sq,
               "nonfinite": int((~fa).sum())}
    return metrics, outside + mismatch, mismatch > 0


def tensor_metrics(actual, reference) -> dict:
    """The metrics of one tensor against its reference (shapes must match)."""
    return compare_arrays(actual, reference)[0]


def violations(actual, reference, rtol: float, atol: float) -> int:
    """Elements outside ``|a − r| <= atol + rtol·|r|`` plus non-finite mismatches."""
    return compare_arrays(actual, reference, rtol, atol)[1]


def worst_of(per_sample: list[dict]) -> dict:
    """Combine one tensor's metrics over several input samples, keeping the worst case."""
    if len(per_sample) == 1:
        return dict(per_sample[0])
    sq = [m["sqnr_db"] for m in per_sample if m["sqnr_db"] is not None]
    return {
        "max_abs": max(m["max_abs"] for m in per_sample),
        "mean_abs": float(np.mean([m["mean_abs"] for m in per_sample])),
        "max_rel": max(m["max_rel"] for m in per_sample),
        "cosine": min(m["cosine"] for m in per_sample),
        "sqnr_db": min(sq) if sq else None,
        "nonfinite": sum(m["nonfinite"] for m in per_sample),
    }


def worst_of_outputs(outputs: list[dict]) -> dict:
    """The worst metrics over a backend's outputs (dicts with ``metrics``): largest errors,
    smallest cosine and SQNR, NaN/Inf summed; {} without outputs."""
    if not outputs:
        return {}
    ms = [o["metrics"] for o in outputs]
    sq = [m["sqnr_db"] for m in ms if m.get("sqnr_db") is not None]
    return {"max_abs": max(m["max_abs"] for m in ms), "max_rel": max(m["max_rel"] for m in ms),
            "cosine": min(m["cosine"] for m in ms), "sqnr_db": min(sq) if sq else None,
            "nonfinite": sum(m["nonfinite"] for m in ms)}
