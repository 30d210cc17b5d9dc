"""Train zoo:photo-patches: which of ten photographs a 64x64 patch comes from
(``photo_patches_data.py``: photographs bundled in scikit-learn and scikit-image).

    python -m backendiff.models.train_photo_patches      # writes weights/photo_patches.pt

Deterministic: the crops come from a fixed seed, torch is seeded and runs single-threaded.
Training and held-out crops both go through the model's declared pipeline (JPEG q90 by
Pillow, Pillow bilinear resize to 32x32, /255); the held-out top-1 is printed.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import photo_patches_data as data
from .photo_patches import PhotoPatchesCNN

WEIGHTS = Path(__file__).parent / "weights"
PER_CLASS = 400


def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The evaluation split: model inputs (N, 3, 32, 32) float32 and labels (N,) int64."""
    crops, labels, _ = data.heldout_crops()
    return data.inputs(crops), labels


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).argmax(1)
    return float((pred.numpy() == y).mean())


def train(per_class: int = PER_CLASS, epochs: int = 15, seed: int = 0, batch: int = 64,
          log=print) -> tuple[PhotoPatchesCNN, float]:
    torch.manual_seed(seed)
    crops, labels, _ = data.train_crops(per_class, seed)
    xt, yt = torch.from_numpy(data.inputs(crops)), torch.from_numpy(labels)
    x_te, y_te = heldout()
    model = PhotoPatchesCNN(classes=len(data.CLASSES))
    steps = epochs * ((len(xt) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(batch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
        if log:
            log(f"epoch {epoch + 1}/{epochs}: held-out top-1 {accuracy(model, x_te, y_te):.4f}")
    model.eval()
    return model, accuracy(model, x_te, y_te)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    WEIGHTS.mkdir(exist_ok=True)
    start = time.perf_counter()
    model, acc = train(args.per_class, args.epochs)
    torch.save(model.state_dict(), WEIGHTS / "photo_patches.pt")
    _, y = heldout()
    print(f"photo-patches: held-out top-1 {acc:.4f} on {len(y)} crops "
          f"({', '.join(f'{n} {k}' for n, k in zip(data.CLASSES, np.bincount(y)))}); "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
