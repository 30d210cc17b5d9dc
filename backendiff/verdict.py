"""What an output's numbers mean: agreement, divergence, or a comparison with no signal.

Elementwise tolerance alone is not a verdict (design.md, "Invariants of trust" 3):
- **vacuous**: a floating reference output that is all zeros, constant, or everywhere within
  ``atol`` of zero lets any backend pass (a backend returning zeros would too). Such an
  output is never a pass.
- **floors**: an output whose SQNR or cosine against the reference is below the floor of the
  precision the backend runs in diverges even inside the elementwise tolerance (fp16 outputs
  that underflowed to zero sit "within atol" at SQNR 0 dB).
- **fp64 judge** (fp32 backends, where the fp64 golden run exists): an output outside the
  elementwise tolerance whose error against fp64 is within ``factor`` times PyTorch fp32's
  own error against fp64 agrees: the backend is as close to the truth as the reference is.
  The rule of PyTorch's Dynamo accuracy checker (``torch._dynamo.utils.same`` with
  ``fp64_ref``: RMSE against fp64, multiplier 2). NaN/Inf disagreements are never excused.

Small pure functions over numpy arrays; ``compare`` calls ``judge_output`` per output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: SQNR (dB) and cosine floors by the precision a backend runs in. Chosen far below what each
#: precision gives on healthy models (fp32 runtimes: 100-190 dB; fp16 45-80 dB; int8 20-45 dB)
#: and far above a collapsed output (0 dB, cosine 0), so they catch nonsense, not noise.
FLOORS: dict[str, tuple[float, float]] = {
    "fp64": (60.0, 0.999999),
    "fp32": (40.0, 0.9999),
    "tf32": (30.0, 0.999),
    "fp16": (25.0, 0.995),
    "bf16": (20.0, 0.99),
    "int8": (10.0, 0.9),
}

FP64_FACTOR = 2.0


@dataclass(frozen=True)
class Floor:
    sqnr_db: float
    cosine: float

    def to_dict(self) -> dict:
        return {"sqnr_db": self.sqnr_db, "cosine": self.cosine}


def floor_for(precision: str, min_sqnr: float | None = None, min_cosine: float | None = None) -> Floor:
    sq, cos = FLOORS.get(precision, FLOORS["fp32"])
    return Floor(sq if min_sqnr is None else min_sqnr, cos if min_cosine is None else min_cosine)


def is_float(a) -> bool:
    return np.asarray(a).dtype.kind in "fc"


def degenerate(references: list, atol: float) -> str | None:
    """Why a floating reference output (all samples) carries no signal, or None: all zeros,
    one constant value, or every value within ``atol`` of zero (atol alone decides)."""
    arrays = [np.asarray(r, dtype=np.float64) for r in references if is_float(r)]
    if not arrays or len(arrays) != len(references):
        return None
    finite = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if finite.size == 0:
        return "the reference output holds no finite value"
    peak = float(np.abs(finite).max())
    if peak == 0.0:
        return "the reference output is all zeros"
    if float(finite.max()) == float(finite.min()) and finite.size > 1:
        return f"the reference output is one constant value ({finite[0]:.6g}) everywhere"
    if peak <= atol:
        return f"every reference value is within atol={atol:g} of zero (largest |value| {peak:.3g})"
    return None


def below_floor(metrics: dict, floor: Floor) -> str | None:
    """Why an output's SQNR or cosine is below the floor, or None."""
    sq, cos = metrics.get("sqnr_db"), metrics.get("cosine")
    if sq is not None and sq < floor.sqnr_db:
        return f"SQNR {sq:.1f} dB is below the floor of {floor.sqnr_db:g} dB"
    if cos is not None and cos < floor.cosine:
        return f"cosine {cos:.6f} is below the floor of {floor.cosine:g}"
    return None


def _rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    d = (a - b)[mask]
    return float(np.sqrt(np.mean(d * d))) if d.size else 0.0


def fp64_judge(actual: list, reference: list, golden: list, factor: float = FP64_FACTOR) -> dict:
    """The fp64 rule over all samples of one output: the backend's RMSE against fp64 and
    PyTorch fp32's, on the positions finite in all three. ``excused`` when the backend's is
    within ``factor`` times PyTorch's on every sample."""
    worst_ratio, b_worst, t_worst, excused = 0.0, 0.0, 0.0, True
    for a, r, g in zip(actual, reference, golden):
        a, r, g = (np.asarray(x, dtype=np.float64) for x in (a, r, g))
        if a.shape != g.shape or r.shape != g.shape:
            return {"rule": "fp64", "excused": False, "reason": "the fp64 run has another shape"}
        mask = np.isfinite(a) & np.isfinite(r) & np.isfinite(g)
        b_err, t_err = _rmse(a, g, mask), _rmse(r, g, mask)
        ok = b_err <= factor * t_err
        excused = excused and ok
        ratio = b_err / t_err if t_err > 0 else (0.0 if b_err == 0 else float("inf"))
        if ratio >= worst_ratio:
            worst_ratio, b_worst, t_worst = ratio, b_err, t_err
    return {"rule": "fp64", "factor": factor, "excused": excused, "backend_rmse_vs_fp64": b_worst,
            "torch_rmse_vs_fp64": t_worst, "ratio": worst_ratio if np.isfinite(worst_ratio) else None}


@dataclass
class OutputVerdict:
    status: str                 # "ok", "diverged" or "vacuous"
    reason: str | None = None   # why, where it is not a plain elementwise pass
    judge: dict | None = None   # the fp64 rule's numbers, where it was asked


def judge_output(metrics: dict, within: bool, references: list, actuals: list, goldens: list | None, *,
                 precision: str, atol: float, floor: Floor, factor: float = FP64_FACTOR,
                 nonfinite_violation: bool = False) -> OutputVerdict:
    """The verdict of one output over all samples, from its elementwise result (``within``),
    its worst metrics, and the raw arrays (the degenerate check and the fp64 judge).
    ``nonfinite_violation``: a NaN/Inf counted against the output (patterns that differ, or
    any NaN/Inf under --nan-strict), which nothing excuses."""
    if not metrics:      # shapes differ: nothing comparable
        return OutputVerdict("diverged", "the output has another shape than the reference's")
    if metrics.get("nonfinite_mismatch"):
        return OutputVerdict("diverged", f"NaN/Inf differ from the reference at {metrics['nonfinite_mismatch']} elements")
    if nonfinite_violation:
        return OutputVerdict("diverged", f"{metrics.get('nonfinite', 0)} NaN/Inf in the output (--nan-strict)")
    floating = all(is_float(r) for r in references)
    low = below_floor(metrics, floor) if floating else None
    if low is not None and within:      # scale-free: a collapsed output diverges inside atol too
        return OutputVerdict("diverged", low + " (inside the elementwise tolerance)")
    empty = floating and sum(np.asarray(r).size for r in references) == 0
    why_empty = degenerate(references, atol) if floating and not empty else None
    if why_empty is not None:
        return OutputVerdict("vacuous" if within else "diverged", why_empty)
    judge = None
    if not within:
        if floating and precision == "fp32" and goldens is not None:
            judge = fp64_judge(actuals, references, goldens, factor)
            if judge["excused"]:
                if low is None:
                    return OutputVerdict("ok", f"outside tolerance but as close to fp64 as PyTorch fp32 "
                                               f"(RMSE vs fp64 {judge['backend_rmse_vs_fp64']:.3g}, PyTorch's "
                                               f"{judge['torch_rmse_vs_fp64']:.3g}; factor {factor:g})", judge)
        return OutputVerdict("diverged", None, judge)
    return OutputVerdict("ok")
