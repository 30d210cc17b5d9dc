"""End-task evaluation: does the divergence matter for the task?

A task is labelled data plus a metric computed from the model's outputs. For every backend
the metric is computed on its real outputs and on the reference's, with the delta, the flip
rate (share of samples whose prediction differs from the reference's) and the worst samples.
Small pure functions; running the batches is the caller's job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BadInput

ENTRY_POINT_GROUP = "backendiff.tasks"


@dataclass(frozen=True)
class TaskData:
    name: str                  # the task: a built-in ("classification", "pose", "embeddings"), an
                               # entry point of group backendiff.tasks, or "module:function"
    inputs: np.ndarray         # (N, *one sample's shape without the batch axis)
    labels: np.ndarray | None  # (N,) classes, (N, K, 3) keypoints, ...; None where the task needs none
    source: str                # where the data came from
    params: dict = field(default_factory=dict)   # keyword arguments of the metric (e.g. image_size)


def batches(inputs: np.ndarray, batch: int) -> list[tuple[np.ndarray, int]]:
    """Split N samples into model-sized batches; the last one padded by repeating its last
    sample. Returns (batch array, number of real samples in it)."""
    out = []
    for start in range(0, len(inputs), batch):
        part = inputs[start:start + batch]
        real = len(part)
        if real < batch:
            part = np.concatenate([part, np.repeat(part[-1:], batch - real, axis=0)])
        out.append((np.ascontiguousarray(part), real))
    return out


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-logits, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1)


def classification(reference: np.ndarray, actual: np.ndarray, labels: np.ndarray, worst: int = 5) -> dict:
    """Top-1 (and top-5) accuracy in percent on the backend's and the reference's logits, the
    delta in points, the flip rate, and the samples whose prediction flipped, worst first."""
    ref_top1 = topk_correct(reference, labels, 1)
    act_top1 = topk_correct(actual, labels, 1)
    flips = reference.argmax(1) != actual.argmax(1)
    # worst: flipped samples by how far the backend's logits moved, then the largest moves
    moved = np.abs(actual - reference).max(axis=1)
    order = np.lexsort((-moved, ~flips))
    out = {
        "name": "classification", "metric": "top1", "unit": "%",
        "reference": 100.0 * ref_top1.mean(), "value": 100.0 * act_top1.mean(),
        "flip_rate": float(flips.mean()), "flips": int(flips.sum()), "samples": int(len(labels)),
        "worst": [int(i) for i in order[:worst]],
    }
    out["delta"] = out["value"] - out["reference"]
    if reference.shape[1] >= 5:
        out["top5_reference"] = 100.0 * topk_correct(reference, labels, 5).mean()
        out["top5"] = 100.0 * topk_correct(actual, labels, 5).mean()
    return out


def decode_heatmaps(heatmaps: np.ndarray, image_size: tuple[int, int],
                    method: str = "quarter") -> tuple[np.ndarray, np.ndarray]:
    """MSPN's decoding (``quarter``): each heatmap's argmax, moved a quarter pixel toward the
    higher of its two neighbours along x and along y (not on the border), mapped to image
    pixels (pixel centres at integers). ``argmax``: no shift; ``subpixel``: the vertex of
    the parabola through the peak and its two neighbours. Returns coordinates (N, K, 2) as
    x, y and the peak values (N, K) as confidences."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w).astype(np.float64)
    idx = flat.argmax(-1)
    peak = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    y, x = np.divmod(idx, w)

    def at(yy, xx):
        return np.take_along_axis(flat, (yy * w + xx)[..., None], -1)[..., 0]

    # on the border one neighbour is missing: no shift there (as MSPN does)
    inner_x, inner_y = (x > 0) & (x < w - 1), (y > 0) & (y < h - 1)
    left, right = at(y, np.maximum(x - 1, 0)), at(y, np.minimum(x + 1, w - 1))
    up, down = at(np.maximum(y - 1, 0), x), at(np.minimum(y + 1, h - 1), x)
    if method == "quarter":
        hx = x + np.where(inner_x, 0.25 * np.sign(right - left), 0.0)
        hy = y + np.where(inner_y, 0.25 * np.sign(down - up), 0.0)
    elif method == "argmax":
        hx, hy = x.astype(np.float64), y.astype(np.float64)
    elif method == "subpixel":
        def vertex(lo, mid, hi, inner):
            curve = lo - 2 * mid + hi
            off = np.where(curve < 0, 0.5 * (lo - hi) / np.where(curve < 0, curve, -1.0), 0.0)
            return np.where(inner, np.clip(off, -0.5, 0.5), 0.0)
        hx, hy = x + vertex(left, peak, right, inner_x), y + vertex(up, peak, down, inner_y)
    else:
        raise ValueError(f"unknown heatmap decoding {method!r} (quarter, argmax, subpixel)")
    sy, sx = image_size[0] / h, image_size[1] / w
    coords = np.stack([(hx + 0.5) * sx - 0.5, (hy + 0.5) * sy - 0.5], -1)
    return coords, peak


def pck_correct(pred: np.ndarray, keypoints: np.ndarray, threshold_px: float) -> np.ndarray:
    """(N, K) bool: a visible keypoint predicted within `threshold_px` pixels."""
    dist = np.linalg.norm(pred - keypoints[..., :2], axis=-1)
    return (dist <= threshold_px) & (keypoints[..., 2] > 0)


def pck(pred: np.ndarray, keypoints: np.ndarray, threshold_px: float) -> float:
    """Percentage of visible keypoints within `threshold_px` pixels of the truth."""
    visible = keypoints[..., 2] > 0
    return 100.0 * pck_correct(pred, keypoints, threshold_px).sum() / max(int(visible.sum()), 1)


def object_keypoint_similarity(pred: np.ndarray, keypoints: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """COCO's OKS per sample: exp(-d^2 / (2 s^2 k^2)) averaged over visible keypoints, with the
    object scale s^2 the area of the visible keypoints' box and k = 2 sigma."""
    visible = keypoints[..., 2] > 0
    xy = keypoints[..., :2]
    big = np.where(visible[..., None], xy, np.nan)
    area = np.prod(np.nanmax(big, 1) - np.nanmin(big, 1), -1)
    area = np.maximum(np.nan_to_num(area, nan=1.0), 1.0)
    d2 = ((pred - xy) ** 2).sum(-1)
    e = d2 / (2.0 * area[:, None] * (2.0 * sigmas[None]) ** 2)
    sim = np.where(visible, np.exp(-e), 0.0).sum(1)
    return sim / np.maximum(visible.sum(1), 1)


def oks_ap(oks: np.ndarray, scores: np.ndarray) -> float:
    """COCO-style AP in percent with one detection per image: precision/recall over the
    detections ranked by score, 101-point interpolated, averaged over OKS thresholds
    0.50:0.05:0.95."""
    order = np.argsort(-scores, kind="stable")
    ranked = oks[order]
    recall_points = np.linspace(0.0, 1.0, 101)
    aps = []
    for t in np.round(np.linspace(0.5, 0.95, 10), 2):      # exact thresholds: 0.9 is 0.9
        tp = np.cumsum(ranked >= t)
        precision = tp / np.arange(1, len(ranked) + 1)
        recall = tp / len(ranked)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, recall_points, side="left")
        aps.append(np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0).mean())
    return 100.0 * float(np.mean(aps))


def pose(reference: np.ndarray, actual: np.ndarray, labels: np.ndarray, image_size: tuple[int, int],
         threshold: float = 0.1, sigmas=None, worst: int = 5, decode: str = "quarter") -> dict:
    """Keypoints from heatmaps (N, K, h, w) against labels (N, K, 3) = x, y, visible in image
    pixels: PCK at `threshold` (and half of it) of the larger image side, OKS-style AP, and
    flips: samples where any keypoint's decoded position differs from the reference's."""
    side = float(max(image_size))
    ref_xy, ref_score = decode_heatmaps(reference, image_size, decode)
    act_xy, act_score = decode_heatmaps(actual, image_size, decode)
    sig = np.full(labels.shape[1], 0.079) if sigmas is None else np.asarray(sigmas, np.float64)
    moved = np.linalg.norm(act_xy - ref_xy, axis=-1).max(axis=1)
    flips = moved > 1e-6
    changed = (pck_correct(ref_xy, labels, threshold * side) != pck_correct(act_xy, labels, threshold * side)).any(1)
    order = np.lexsort((-moved, ~flips))
    out = {
        "name": "pose", "metric": f"pck@{threshold:g}", "unit": "%",
        "reference": pck(ref_xy, labels, threshold * side), "value": pck(act_xy, labels, threshold * side),
        f"pck@{threshold / 2:g}_reference": pck(ref_xy, labels, threshold / 2 * side),
        f"pck@{threshold / 2:g}": pck(act_xy, labels, threshold / 2 * side),
        "ap_reference": oks_ap(object_keypoint_similarity(ref_xy, labels, sig), ref_score.mean(1)),
        "ap": oks_ap(object_keypoint_similarity(act_xy, labels, sig), act_score.mean(1)),
        "flip_rate": float(flips.mean()), "flips": int(flips.sum()), "samples": int(len(labels)),
        "pck_changed": int(changed.sum()), "max_shift_px": float(moved.max()),
        "mean_shift_px": float(np.linalg.norm(act_xy - ref_xy, axis=-1).mean()), "flip_label": "moved",
        "worst": [int(i) for i in order[:worst]],
    }
    out["delta"] = out["value"] - out["reference"]
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-30)


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """Index of each sample's nearest other sample by cosine similarity."""
    e = emb.astype(np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def embeddings(reference: np.ndarray, actual: np.ndarray, labels: np.ndarray | None = None, worst: int = 5) -> dict:
    """Embeddings (N, D) (further axes flattened): cosine agreement of each sample's embedding
    with the reference's, and retrieval: each sample's nearest other sample. With labels the
    metric is retrieval top-1 accuracy (the neighbour shares the label); without, the share of
    samples whose neighbour is the reference's. Flips: samples whose neighbour changed."""
    ref = reference.reshape(len(reference), -1)
    act = actual.reshape(len(actual), -1)
    cos = _cosine(ref, act)
    ref_nn, act_nn = nearest_neighbours(ref), nearest_neighbours(act)
    flips = ref_nn != act_nn
    out = {"name": "embeddings", "unit": "%", "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
           "retrieval_agreement": 100.0 * float((~flips).mean()), "flip_label": "new neighbour",
           "flip_rate": float(flips.mean()), "flips": int(flips.sum()), "samples": int(len(ref)),
           "worst": [int(i) for i in np.lexsort((cos, ~flips))[:worst]]}
    if labels is not None:
        out.update(metric="retrieval@1", reference=100.0 * float((labels[ref_nn] == labels).mean()),
                   value=100.0 * float((labels[act_nn] == labels).mean()))
    else:
        out.update(metric="retrieval agreement", reference=100.0, value=out["retrieval_agreement"])
    out["delta"] = out["value"] - out["reference"]
    return out


TASKS: dict[str, Callable] = {"classification": classification, "pose": pose, "embeddings": embeddings}


def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve_metric(name: str) -> Callable:
    """The metric function of a task: built-in, ``module:function``, or a third-party entry
    point in group ``backendiff.tasks``. A metric takes (reference outputs, backend outputs,
    labels, **params) and returns a dict with at least ``reference`` and ``value``."""
    if name in TASKS:
        return TASKS[name]
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise BadInput(f"task {name}: cannot import {module}: {e}") from None
        except AttributeError:
            raise BadInput(f"task {name}: {module} has no {attr}") from None
        if not callable(fn):
            raise BadInput(f"task {name}: {attr} is not a function")
        return fn
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    known = sorted(TASKS) + sorted(eps)
    raise BadInput(f"unknown task {name!r}: use one of {', '.join(known)} or module:function")


def check_labels(name: str, inputs: np.ndarray, labels: np.ndarray | None, source: str) -> None:
    """Labels the built-in tasks can use; a clear error before anything runs."""
    if labels is not None and len(labels) != len(inputs):
        raise BadInput(f"{source}: {len(inputs)} inputs but {len(labels)} labels")
    if name == "classification" and (labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu"):
        raise BadInput(f"{source}: classification needs integer labels of shape (N,)"
                       + ("" if labels is None else f", got {labels.dtype} {labels.shape}"))
    if name == "pose" and (labels is None or labels.ndim != 3 or labels.shape[-1] != 3):
        raise BadInput(f"{source}: pose needs keypoint labels of shape (N, K, 3) = x, y, visible in pixels"
                       + ("" if labels is None else f", got {labels.shape}"))
    if name == "embeddings" and labels is not None and labels.ndim != 1:
        raise BadInput(f"{source}: embeddings take optional labels of shape (N,) (groups for retrieval), got {labels.shape}")


def evaluate(task: TaskData, reference: np.ndarray, actual: np.ndarray) -> dict:
    """Run the task's metric on the reference's and a backend's outputs. The result always has
    name, metric, reference, value and delta; a plugin's missing fields are filled in."""
    out = dict(resolve_metric(task.name)(reference, actual, task.labels, **task.params))
    for key in ("reference", "value"):
        if not isinstance(out.get(key), (int, float, np.floating, np.integer)):
            raise TypeError(f"task {task.name} returned no number for {key!r} (it returned {sorted(out)})")
    out.setdefault("name", task.name)
    out.setdefault("metric", task.name)
    out["reference"], out["value"] = float(out["reference"]), float(out["value"])
    out.setdefault("delta", out["value"] - out["reference"])
    return out


def load_task_npz(path: str | Path, task: str = "classification") -> TaskData:
    """``--data FILE.npz`` with arrays ``inputs`` (N, ...) and ``labels`` (N, ...), no pickle."""
    from .inputs import read_npz

    arrays = read_npz(path, "data")
    needs_labels = task in ("classification", "pose")
    missing = [k for k in ("inputs", "labels") if k not in arrays and (k == "inputs" or needs_labels)]
    if missing:
        raise BadInput(f"data file {path} lacks {', '.join(missing)} (it has {', '.join(arrays) or 'nothing'})")
    inputs, labels = arrays["inputs"], arrays.get("labels")
    if len(inputs) == 0:
        raise BadInput(f"data file {path}: 'inputs' holds no samples")
    if labels is not None and labels.dtype.kind in "iub":
        labels = labels.astype(np.int64)
    check_labels(task, inputs, labels, f"data file {path}")
    return TaskData(task, inputs, labels, str(path))
