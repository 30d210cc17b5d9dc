import math

import numpy as np
import pytest

from backendiff import metrics as M


def test_identical_tensors():
    r = np.linspace(-1, 1, 50, dtype=np.float32)
    m = M.tensor_metrics(r, r)
    assert m == {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0, "cosine": pytest.approx(1.0), "sqnr_db": None,
                 "identical": True, "nonfinite": 0, "nonfinite_mismatch": 0, "first_mismatch": None}
    assert M.sqnr_value(m) == 300.0


def test_zero_vectors_have_no_cosine_and_no_sqnr():
    """Two zero vectors do not agree with cosine 1: there is nothing to compare."""
    z = np.zeros(8)
    m = M.tensor_metrics(z, z)
    assert m["cosine"] is None and m["sqnr_db"] is None
    assert M.tensor_metrics(np.ones(8), z)["cosine"] is None          # the reference is zero
    crushed = M.tensor_metrics(z, np.linspace(1, 2, 8))                # the backend underflowed to zero
    assert crushed["cosine"] is None and crushed["sqnr_db"] == pytest.approx(0.0)


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
    assert m["sqnr_db"] is None and m["identical"] and m["nonfinite_mismatch"] == 0
    # where the patterns differ: how many and where, no number that reads as agreement
    mm = M.tensor_metrics(moved, r)
    assert mm["nonfinite_mismatch"] == 2 and mm["first_mismatch"] == [0]
    assert mm["sqnr_db"] is None and mm["cosine"] is None and not mm["identical"]
    assert M.sqnr_value(mm) == -300.0
    grid = np.ones((2, 3))
    bad = grid.copy()
    bad[1, 2] = np.nan
    assert M.tensor_metrics(bad, grid)["first_mismatch"] == [1, 2]
    # asked to be strict, the NaN/Inf that match the reference's count too
    metrics, viol, mismatch = M.compare_arrays(same, r, 0, 0, strict_nonfinite=True)
    assert viol == 2 and mismatch


def test_violations_use_the_allclose_rule():
    r = np.array([1.0, 100.0])
    a = np.array([1.0 + 3e-4, 100.0 + 5e-3])
    assert M.violations(a, r, rtol=1e-4, atol=1e-4) == 1      # 3e-4 > 1e-4 + 1e-4*1
    assert M.violations(a, r, rtol=1e-4, atol=2e-4) == 0      # 5e-3 <= 2e-4 + 1e-2


def test_worst_of_keeps_the_worst_case():
    a = {"max_abs": 1.0, "mean_abs": 0.2, "max_rel": 0.1, "cosine": 0.9, "sqnr_db": 30.0, "nonfinite": 1}
    b = {"max_abs": 0.5, "mean_abs": 0.4, "max_rel": 0.3, "cosine": 0.99, "sqnr_db": None, "identical": True,
         "nonfinite": 2}
    w = M.worst_of([a, b])
    assert w == {"max_abs": 1.0, "mean_abs": pytest.approx(0.3), "max_rel": 0.3, "cosine": 0.9, "sqnr_db": 30.0,
                 "identical": False, "nonfinite": 3, "nonfinite_mismatch": 0, "first_mismatch": None}
    # a sample whose SQNR is undefined (NaN/Inf patterns differ) makes the worst case undefined
    c = dict(b, identical=False, cosine=None, nonfinite_mismatch=4, first_mismatch=[0, 1])
    w = M.worst_of([a, c])
    assert w["sqnr_db"] is None and w["cosine"] is None and w["nonfinite_mismatch"] == 4
    assert w["first_mismatch"] == [0, 1] and w["first_mismatch_sample"] == 1


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        M.tensor_metrics(np.zeros(3), np.zeros(4))
