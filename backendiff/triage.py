"""Which operator-level divergences are semantics choices rather than bugs.

A runtime that returns another index among equal values (topk, sort, argmax on ties), a
different random draw, other bytes of an uninitialized tensor, or another value for the
variance of no elements does not compute the operator wrongly: PyTorch leaves those
results unspecified. ``backendiff ops`` classifies such samples with these rules, so that
its "diverged" column holds real bugs. Each rule is
a small pure function of the operator's name, the sample's input tensors, the
reference's and backend's outputs for the sample, and its keyword arguments; it returns
the reason, or None.
"""
from __future__ import annotations

import re

import numpy as np

#: operators whose result is a random draw (dropout in training mode, samplers)
RANDOM = re.compile(r"(^|\.)(bernoulli|normal|uniform|multinomial|rand\w*|randn\w*|randint\w*|poisson|exponential|"
                    r"cauchy|geometric|log_normal|(feature_alpha_|feature_|alpha_)?dropout\w*|rrelu)($|\.)")
#: operators whose values are whatever memory held (only the shape is defined)
UNINITIALIZED = re.compile(r"(^|\.)(empty|empty_like|new_empty|new_empty_strided|empty_strided|empty_permuted)($|\.)")
#: operators that pick elements by value: among equal values, which index is unspecified
BY_VALUE = re.compile(r"(^|\.)(topk|sort|argsort|msort|argmax|argmin|max|min|kthvalue|mode|median|nanmedian|"
                      r"amax|amin|cummax|cummin|max_pool\w*|adaptive_max_pool\w*|fractional_max_pool\w*|"
                      r"unique\w*|searchsorted)($|\.|_)")


def random_draw(op: str, inputs, reference, actual, arguments=None) -> str | None:
    if RANDOM.search(op):
        return "random: the operator draws random numbers; two runs (or two runtimes) need not agree"
    p = (arguments or {}).get("dropout_p")
    if isinstance(p, (int, float)) and p > 0:
        return f"random: dropout_p={p} draws a random mask; two runs (or two runtimes) need not agree"
    if (arguments or {}).get("training") is True and re.search(r"attention|dropout", op):
        return "random: training=True applies dropout, a random mask; two runs (or two runtimes) need not agree"
    return None


def uninitialized(op: str, inputs, reference, actual, arguments=None) -> str | None:
    if UNINITIALIZED.search(op):
        return "undefined values: the result is uninitialized memory, only its shape and dtype are defined"
    return None


def _integer(a) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.integer)


def tie_order(op: str, inputs, reference, actual, arguments=None) -> str | None:
    """Index outputs that differ while the input holds the same value at both indices: the
    backend broke a tie another way. Indices are read along the axis they index (topk, sort,
    argmax with dim), over the flattened input (argmax without dim) or over flattened
    trailing planes (max-pool indices); where no reading fits, the operator's own value
    outputs agreeing exactly stand for it."""
    if not BY_VALUE.search(op):
        return None
    pairs = [(np.asarray(r), np.asarray(a)) for r, a in zip(reference, actual)]
    index_pairs = [(r, a) for r, a in pairs if _integer(r) and r.shape == a.shape and not np.array_equal(r, a)]
    values = [(r, a) for r, a in pairs if not _integer(r) and r.shape == a.shape]
    if not index_pairs or not all(np.array_equal(r, a, equal_nan=True) for r, a in values):
        return None                              # a tie explains other indices, never other values
    sources = [np.asarray(t) for t in inputs if np.asarray(t).dtype.kind == "f"]
    readable = True
    for r, a in index_pairs:
        held = [same for same in (_same_values(src, r, a) for src in sources) if same is not None]
        if held and not any(held):
            return None                          # the indices hold different values: not a tie
        readable = readable and bool(held)
    if readable:
        return "tie order: both indices hold the same input value; among equal values the index is unspecified"
    if values:
        return "tie order: the selected values agree exactly; among equal values the index is unspecified"
    return None


def _readings(source: np.ndarray, index: np.ndarray):
    """(array, index, axis) readings of ``index`` into ``source`` for ``np.take_along_axis``."""
    n = source.ndim
    if index.size == 1 and source.size > 1:
        yield source.reshape(-1), index.reshape(-1), 0           # over the flattened input
    if index.ndim == n:
        for axis in range(n):
            if all(index.shape[d] == source.shape[d] for d in range(n) if d != axis):
                yield source, index, axis                         # along one axis (topk, sort, keepdim)
    if index.ndim == n - 1:
        for axis in range(n):
            if index.shape == source.shape[:axis] + source.shape[axis + 1:]:
                yield source, np.expand_dims(index, axis), axis   # along a reduced axis (max with dim)
    for k in (2, 3):                                              # flattened trailing planes (pool indices)
        if n > k and index.ndim == n and index.shape[:n - k] == source.shape[:n - k]:
            lead = source.shape[:n - k]
            yield source.reshape(lead + (-1,)), index.reshape(lead + (-1,)), n - k


def _same_values(source: np.ndarray, r: np.ndarray, a: np.ndarray) -> bool | None:
    """Whether ``source`` holds equal values at indices ``r`` and ``a`` under every reading
    that fits (True), differs under one (False), or no reading fits (None)."""
    verdict = None
    for array, ri, axis in _readings(source, r):
        ai = a.reshape(ri.shape)
        size = array.shape[axis]
        if min(ri.min(), ai.min()) < 0 or max(ri.max(), ai.max()) >= size:
            verdict = False                      # fits by shape, but an index is out of range
            continue
        same = np.array_equal(np.take_along_axis(array, ri, axis), np.take_along_axis(array, ai, axis), equal_nan=True)
        if same:
            return True
        verdict = False
    return verdict


def nonfinite_to_integer(op: str, inputs, reference, actual, arguments=None) -> str | None:
    """Integer outputs that differ where the input holds NaN/Inf: converting those to an
    integer is undefined behaviour in C/C++, so every runtime returns its own value."""
    floats = [np.asarray(t) for t in inputs if np.asarray(t).dtype.kind == "f"]
    if not floats or not any((~np.isfinite(f)).any() for f in floats):
        return None
    bad = [(np.asarray(r), np.asarray(a)) for r, a in zip(reference, actual)
           if np.asarray(r).shape == np.asarray(a).shape and not np.array_equal(r, a, equal_nan=True)]
    if bad and all(_integer(r) for r, _ in bad):
        return "undefined behaviour: NaN/Inf in the input converted to an integer"
    return None


def empty_reduction(op: str, inputs, reference, actual, arguments=None) -> str | None:
    """Outputs that differ only where PyTorch returns NaN for a statistic over an empty
    input (the mean or variance of no elements): the value is undefined, NaN is a
    convention another runtime need not share."""
    if not any(np.asarray(t).size == 0 for t in inputs):
        return None
    bad = [(np.asarray(r), np.asarray(a)) for r, a in zip(reference, actual)
           if np.asarray(r).shape == np.asarray(a).shape and not np.array_equal(r, a, equal_nan=True)]
    if bad and all(r.dtype.kind == "f" and np.isnan(r[~((r == a) | (np.isnan(r) & np.isnan(a)))]).all() for r, a in bad):
        return "undefined value: a statistic over an empty input (PyTorch returns NaN by convention)"
    return None


RULES = (random_draw, uninitialized, tie_order, nonfinite_to_integer, empty_reduction)


def classify(op: str, inputs, reference, actual, arguments: dict | None = None) -> dict | None:
    """The first rule that explains a sample's divergence as a semantics choice:
    {"rule": name, "reason": text}; None when it is a real divergence. ``arguments``: the
    sample's keyword arguments (``dropout_p``)."""
    for rule in RULES:
        try:
            reason = rule(op, inputs, reference, actual, arguments)
        except (ValueError, IndexError, TypeError):    # arrays a rule cannot read: not explained
            reason = None
        if reason:
            return {"rule": rule.__name__.replace("_", "-"), "reason": reason}
    return None
