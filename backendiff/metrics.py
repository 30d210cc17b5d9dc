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


def sqnr_db(actual: np.ndarray, reference: np.ndarray) -> float | None:
    """20·log10(‖r‖ / ‖a − r‖) over finite positions; None when identical (infinite)."""
    a, r = _as64(actual), _as64(reference)
    both = np.isfinite(a) & np.isfinite(r)
    noise = float(np.linalg.norm(a[both] - r[both]))
    signal = float(np.linalg.norm(r[both]))
    if noise == 0.0:
        return None
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)


def cosine(actual: np.ndarray, reference: np.ndarray) -> float:
    a, r = _as64(actual), _as64(reference)
    both = np.isfinite(a) & np.isfinite(r)
    a, r = a[both], r[both]
    na, nr = float(np.linalg.norm(a)), float(np.linalg.norm(r))
    if na == 0.0 and nr == 0.0:
        return 1.0
    if na == 0.0 or nr == 0.0:
        return 0.0
    return float(np.dot(a.ravel(), r.ravel()) / (na * nr))


def tensor_metrics(actual, reference) -> dict:
    """The metrics of one tensor against its reference (shapes must match)."""
    a, r = _as64(actual), _as64(reference)
    if a.shape != r.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {r.shape}")
    both = np.isfinite(a) & np.isfinite(r)
    diff = np.abs(a[both] - r[both])
    if diff.size:
        rel = diff / (np.abs(r[both]) + REL_EPS)
        max_abs, mean_abs, max_rel = float(diff.max()), float(diff.mean()), float(rel.max())
    else:
        max_abs = mean_abs = max_rel = 0.0
    mismatch = bool(nonfinite_mismatch(a, r).any())
    return {
        "max_abs": max_abs,
        "mean_abs": mean_abs,
        "max_rel": max_rel,
        "cosine": cosine(a, r),
        # a NaN/Inf where the reference is finite is unbounded noise
        "sqnr_db": -math.inf if mismatch else sqnr_db(a, r),
        "nonfinite": int((~np.isfinite(a)).sum()),
    }


def violations(actual, reference, rtol: float, atol: float) -> int:
    """Elements outside ``|a − r| <= atol + rtol·|r|`` plus non-finite mismatches."""
    a, r = _as64(actual), _as64(reference)
    both = np.isfinite(a) & np.isfinite(r)
    bad = np.abs(a[both] - r[both]) > atol + rtol * np.abs(r[both])
    return int(bad.sum() + nonfinite_mismatch(a, r).sum())


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
