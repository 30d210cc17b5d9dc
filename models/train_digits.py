"""Train the digits CNNs on scikit-learn's digits (1,797 real 8x8 images, offline).

    python -m backendiff.models.train_digits            # writes weights/digits_cnn_w{16,4}.pt

Deterministic (seeded, single thread); a stratified 70/30 split, the held-out accuracy
printed. Pixels are scaled to [0, 1] (the dataset's 0..16 divided by 16).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .digits_cnn import DigitsCNN

WEIGHTS = Path(__file__).parent / "weights"


def load_digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test) as float32 NCHW in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def train(width: int, epochs: int = 40, seed: int = 0) -> tuple[DigitsCNN, float]:
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(seed)
    model = DigitsCNN(width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean()
    return model, float(acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 4])
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    WEIGHTS.mkdir(exist_ok=True)
    for w in args.widths:
        model, acc = train(w, args.epochs)
        torch.save(model.state_dict(), WEIGHTS / f"digits_cnn_w{w}.pt")
        print(f"digits-cnn width {w}: held-out accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
