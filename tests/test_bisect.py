"""Bisection over unmodified prefix graphs."""
import math
import random

import backendiff
from backendiff.bisect import bisect

from .conftest import needs


def test_bisect_finds_the_first_diverging_cut_in_log_probes():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 300)
        first = rng.randint(0, n)        # n: nothing diverges
        cands = list(range(n))
        index, probes = bisect(cands, lambda c: c >= first)
        assert index == (first if first < n else None)
        assert probes <= math.ceil(math.log2(n)) + 1 if n > 1 else probes == 1


@needs("openvino", "tvm")
def test_bisection_on_real_runtimes_agrees_with_the_propagated_view():
    report = backendiff.compare("zoo:digits-cnn", backends=["openvino:fp32,precision_hint=default", "tvm:fp16", "torch"],
                                bisect=True)
    ov, tvm16 = report.backends[0], report.backends[1]
    if ov.status == "diverged":  # bf16 by default on this CPU: the very first (conv+BN) layer
        cut = ov.info["bisection"]["first_diverging_cut"]
        assert cut["module"] == "features.1" and ov.info["bisection"]["probes"] <= 5
        assert ov.first_divergence["module"] in ("features.0", "features.1")
    cut = tvm16.info["bisection"]["first_diverging_cut"]
    assert cut["node"] == tvm16.first_divergence["node"] == "getitem_6"
    assert "unmodified" in tvm16.info["bisection"]["graph"]
    assert report.backend("torch").layers == []        # agreed: nothing to localize by default
