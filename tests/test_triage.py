"""Triage of operator-level divergences: tie order, random draws, uninitialized memory and
NaN converted to an integer are semantics choices, everything else stays a divergence."""
import numpy as np
import pytest
import torch

from backendiff.config import CompareConfig
from backendiff.triage import classify

from .conftest import needs


def rule(op, inputs, reference, actual):
    found = classify(op, inputs, reference, actual)
    return found["rule"] if found else None


X = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 1.0, 5.0]], np.float32)


def test_argmax_on_a_tie_is_tie_order_but_another_value_is_not():
    assert rule("argmax", [X], [np.array([1, 0])], [np.array([2, 1])]) == "tie-order"
    assert rule("argmax", [X], [np.array([1, 0])], [np.array([3, 1])]) is None        # 3.0 vs 0.0
    assert rule("argmax", [X], [np.array(1)], [np.array(2)]) == "tie-order"              # over the flattened input
    assert rule("argmax", [X], [np.array([1, 0])], [np.array([9, 0])]) is None          # out of range: a bug


def test_topk_indices_over_equal_values_are_tie_order():
    values = np.array([[3.0, 3.0], [5.0, 2.0]], np.float32)
    ref, act = np.array([[1, 2], [3, 0]]), np.array([[2, 1], [3, 1]])
    assert rule("topk", [X], [values, ref], [values, act]) == "tie-order"
    assert rule("topk", [X], [values, ref], [values + 1, act]) is None                   # the values differ too


def test_pool_indices_that_point_elsewhere_are_a_bug_even_when_the_values_agree():
    """TVM's max_pool2d with ceil_mode: the pooled values agree, the indices are off."""
    x = torch.randn(1, 2, 5, 5)
    v, i = torch.nn.functional.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
    shifted = i.numpy() - 1
    assert rule("nn.functional.max_pool2d", [x.numpy()], [v.numpy(), i.numpy()], [v.numpy(), shifted]) is None
    tied = torch.zeros(1, 1, 4, 4)
    v, i = torch.nn.functional.max_pool2d(tied, 2, return_indices=True)
    other = i.numpy() + 1                                # another zero of the same window
    assert rule("nn.functional.max_pool2d", [tied.numpy()], [v.numpy(), i.numpy()], [v.numpy(), other]) == "tie-order"


def test_random_uninitialized_and_nan_to_integer():
    assert rule("bernoulli", [X], [X], [X + 1]) == "random-draw"
    assert rule("nn.functional.dropout", [X], [X], [X * 0]) == "random-draw"
    # attention with dropout_p > 0 (the database's samples have it): a random mask, not a bug
    sdpa = "nn.functional.scaled_dot_product_attention"
    assert classify(sdpa, [X], [X], [X + 1], {"is_causal": True, "dropout_p": 0.5})["rule"] == "random-draw"
    assert classify(sdpa, [X], [X], [X + 1], {"is_causal": True, "dropout_p": 0.0}) is None
    # dropout_p given by position, training=True by name (multi_head_attention_forward)
    mha = "nn.functional.multi_head_attention_forward"
    assert classify(mha, [X], [X], [X + 1], {"training": True})["rule"] == "random-draw"
    assert classify("nn.functional.batch_norm", [X], [X], [X + 1], {"training": True}) is None   # batch statistics
    assert rule("nn.functional.feature_alpha_dropout.with_train", [X], [X], [X * 0]) == "random-draw"
    assert rule("empty_like", [X], [X], [X + 1]) == "uninitialized"
    nan = np.array([np.nan, 1.5], np.float32)
    assert rule("long", [nan], [np.array([0, 1])], [np.array([-2**63, 1])]) == "nonfinite-to-integer"
    assert rule("long", [np.array([2.5, 1.5], np.float32)], [np.array([2, 1])], [np.array([3, 1])]) is None


def test_a_statistic_over_an_empty_input_is_undefined_but_a_wrong_number_is_not():
    empty, nan = np.zeros((0,), np.float32), np.array(np.nan, np.float32)
    # ORT's var_mean of an empty tensor: -0 where PyTorch says NaN (seen in the full run)
    assert rule("var_mean", [empty], [nan, nan], [np.array(-0.0, np.float32), nan]) == "empty-reduction"
    assert rule("var_mean", [X], [nan, nan], [np.array(-0.0, np.float32), nan]) is None       # not empty
    assert rule("sum", [empty], [np.array(0.0, np.float32)], [np.array(1.0, np.float32)]) is None  # defined: 0


def test_a_plain_wrong_value_is_not_explained():
    assert rule("nn.functional.selu", [X], [X], [X * 1.05]) is None
    assert rule("sort", [X], [np.sort(X)], [np.sort(X) + 1]) is None


@needs("ort")
def test_an_ops_run_counts_explained_samples_apart(tmp_path):
    pytest.importorskip("expecttest", reason="PyTorch's operator database needs expecttest (backendiff[hf])")
    import backendiff.ops as ops

    config = CompareConfig(layerwise="never", advise=False, task="off", use_cache=False, cache_dir=tmp_path / "c")
    matrix = ops.run(["empty_like", "sigmoid"], ["ort"], ["fp32"], 8, tmp_path, False, config)
    cells = {row["op"]: row["cells"]["ort"] for row in matrix["rows"]}
    assert cells["empty_like"]["status"] == "semantics" and cells["empty_like"]["semantics"]["rule"] == "uninitialized"
    assert cells["empty_like"]["semantics_samples"] >= 1 and "reproducer" not in cells["empty_like"]
    assert cells["sigmoid"]["status"] == "agree"
    assert matrix["summary"]["ort"] == {"agree": 1, "semantics": 1}
