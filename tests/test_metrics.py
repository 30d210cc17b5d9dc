import math

import numpy as np
import pytest

from backendiff import metrics as M


def test_identical_tensors():
    r = np.linspace(-1, 1, 50, dtype=np.float32)
    m = M.tensor_metrics(r, r)
    assert m == {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0, "cosine": pytest.approx(1.0), "sqnr_db": None,
                 "nonfinite": 0}


def test_known_values():
    r = np.array([1.0, 2.0, 4.0, 0.0])
    a = np.array([1.1, 2.0, 3.6, 0.0])
    m = M.tensor_metrics(a, r)
    assert m["max_abs"] == pytest.approx(0.4)
    assert m["mean_abs"] == pytest.approx(0.125)
    assert m["max_rel"] == pytest.approx(0.1, rel=1e-5)   # 0.1/1 and 0.4/4
    noise = math.sqrt(0.1 ** 2 + 0.4 ** 2)
    assert m["sqnr_db"] == pytest.approx(20 * math.log10(math.sqrt(21) / noise))
    assert m["cosine"] == pytest.approx(np.dot(a, r) / np.linalg.norm(a) / np.linalg.norm(r))


def test_nonfinite_compared_by_position():
    r = np.array([np.nan, 1.0, np.inf, 2.0])
    same = r.copy()
    assert M.violations(same, r, 0, 0) == 0
    m = M.tensor_metrics(same, r)
    assert m["nonfinite"] == 2 and m["max_abs"] == 0.0
    moved = np.array([1.0, np.nan, np.inf, 2.0])
    assert M.violations(moved, r, 0, 0) == 2
    flipped = np.array([np.nan, 1.0, -np.inf, 2.0])
    assert M.violations(flipped, r, 1, 1) == 1
    assert m["sqnr_db"] is None and M.tensor_metrics(moved, r)["sqnr_db"] == -math.inf
    # asked to be strict, the NaN/Inf that match the reference's count too
    metrics, viol, mismatch = M.compare_arrays(same, r, 0, 0, strict_nonfinite=True)
    assert viol == 2 and mismatch and metrics["sqnr_db"] == -math.inf


def test_violations_use_the_allclose_rule():
    r = np.array([1.0, 100.0])
    a = np.array([1.0 + 3e-4, 100.0 + 5e-3])
    assert M.violations(a, r, rtol=1e-4, atol=1e-4) == 1      # 3e-4 > 1e-4 + 1e-4*1
    assert M.violations(a, r, rtol=1e-4, atol=2e-4) == 0      # 5e-3 <= 2e-4 + 1e-2


def test_worst_of_keeps_the_worst_case():
    a = {"max_abs": 1.0, "mean_abs": 0.2, "max_rel": 0.1, "cosine": 0.9, "sqnr_db": 30.0, "nonfinite": 1}
    b = {"max_abs": 0.5, "mean_abs": 0.4, "max_rel": 0.3, "cosine": 0.99, "sqnr_db": None, "nonfinite": 2}
    w = M.worst_of([a, b])
    assert w == {"max_abs": 1.0, "mean_abs": pytest.approx(0.3), "max_rel": 0.3, "cosine": 0.9, "sqnr_db": 30.0,
                 "nonfinite": 3}


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        M.tensor_metrics(np.zeros(3), np.zeros(4))
