"""End-task evaluation: does the divergence matter for the task?

A task is labelled data plus a metric computed from the model's outputs. For every backend
the metric is computed on its real outputs and on the reference's, with the delta, the flip
rate (share of samples whose prediction differs from the reference's) and the worst samples.
Small pure functions; running the batches is the caller's job.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInput


@dataclass(frozen=True)
class TaskData:
    name: str                  # the task: "classification"
    inputs: np.ndarray         # (N, *one sample's shape without the batch axis)
    labels: np.ndarray         # (N,)
    source: str                # where the data came from


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
        "name": "classification", "metric": "top1",
        "reference": 100.0 * ref_top1.mean(), "value": 100.0 * act_top1.mean(),
        "flip_rate": float(flips.mean()), "flips": int(flips.sum()), "samples": int(len(labels)),
        "worst": [int(i) for i in order[:worst]],
    }
    out["delta"] = out["value"] - out["reference"]
    if reference.shape[1] >= 5:
        out["top5_reference"] = 100.0 * topk_correct(reference, labels, 5).mean()
        out["top5"] = 100.0 * topk_correct(actual, labels, 5).mean()
    return out


TASKS = {"classification": classification}


def load_task_npz(path: str | Path, task: str = "classification") -> TaskData:
    """``--data FILE.npz`` with arrays ``inputs`` (N, ...) and ``labels`` (N,), no pickle."""
    from .inputs import read_npz

    arrays = read_npz(path, "data")
    missing = [k for k in ("inputs", "labels") if k not in arrays]
    if missing:
        raise BadInput(f"data file {path} lacks {', '.join(missing)} (it has {', '.join(arrays) or 'nothing'})")
    inputs, labels = arrays["inputs"], arrays["labels"]
    if len(inputs) != len(labels) or len(inputs) == 0 or labels.ndim != 1:
        raise BadInput(f"data file {path}: inputs ({inputs.shape}) and labels ({labels.shape}) must be non-empty "
                       "and have one label per sample")
    return TaskData(task, inputs, labels.astype(np.int64), str(path))
