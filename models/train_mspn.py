"""Train mspn-tiny on the synthetic keypoint data (``keypoints_data.py``).

    python -m backendiff.models.train_mspn          # writes weights/mspn_tiny.pt

Deterministic: the data come from fixed seeds (train 0, held-out 1), torch is seeded and
runs single-threaded. Coarse-to-fine supervision as in MSPN: every stage predicts heatmaps
at 1/4, 1/8 and 1/16 of the image, each against Gaussian targets whose width shrinks from
coarse to fine scale and from the first stage to the second; the loss is the mean squared
error over visible keypoints. Prints PCK@0.1 and PCK@0.05 (of the larger image side) on the
held-out split, decoded as MSPN does.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .keypoints_data import HEIGHT, WIDTH, make_split
from .mspn_tiny import MSPNTiny

WEIGHTS = Path(__file__).parent / "weights"
TRAIN_SEED, TEST_SEED = 0, 1
TEST_SAMPLES = 500
# Gaussian sigma in image pixels per stage, for the 1/4, 1/8 and 1/16 heatmaps
SIGMAS_PX = ((5.0, 7.0, 10.0), (3.5, 5.5, 8.0))


def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The evaluation split: 500 images and their keypoints (x, y, visible)."""
    return make_split(TEST_SAMPLES, TEST_SEED)


def targets(keypoints: torch.Tensor, size: tuple[int, int], sigma_px: float) -> torch.Tensor:
    """Gaussian heatmaps (N, K, h, w) peaking at each keypoint, in heatmap coordinates that
    match the decoder: heatmap pixel j covers image pixels around (j + 0.5) * stride - 0.5."""
    h, w = size
    sy, sx = HEIGHT / h, WIDTH / w
    cx = (keypoints[..., 0] + 0.5) / sx - 0.5
    cy = (keypoints[..., 1] + 0.5) / sy - 0.5
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    d2 = ((xs - cx[..., None, None]) * sx) ** 2 + ((ys - cy[..., None, None]) * sy) ** 2
    return torch.exp(-d2 / (2 * sigma_px ** 2))


def loss_fn(outputs: list[list[torch.Tensor]], keypoints: torch.Tensor) -> torch.Tensor:
    visible = keypoints[..., 2][..., None, None]
    total = 0.0
    for stage, heatmaps in enumerate(outputs):
        for scale, hm in enumerate(heatmaps):
            target = targets(keypoints, hm.shape[-2:], SIGMAS_PX[stage][scale])
            total = total + (((hm - target) ** 2) * visible).mean()
    return total


def evaluate(model: MSPNTiny, images: np.ndarray, keypoints: np.ndarray) -> dict:
    from backendiff.tasks import decode_heatmaps, pck

    model.eval()
    with torch.no_grad():
        hm = torch.cat([model(torch.from_numpy(images[i:i + 100])) for i in range(0, len(images), 100)]).numpy()
    pred, _ = decode_heatmaps(hm, (HEIGHT, WIDTH))
    side = max(HEIGHT, WIDTH)
    return {"pck@0.1": pck(pred, keypoints, 0.1 * side), "pck@0.05": pck(pred, keypoints, 0.05 * side)}


def train(samples: int = 8000, epochs: int = 20, seed: int = 0, batch: int = 32, log=print) -> tuple[MSPNTiny, dict]:
    torch.manual_seed(seed)
    images, keypoints = make_split(samples, TRAIN_SEED)
    x_te, k_te = heldout()
    model = MSPNTiny()
    steps = epochs * ((samples + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    xt, kt = torch.from_numpy(images), torch.from_numpy(keypoints)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        start, running = time.perf_counter(), 0.0
        for idx in torch.randperm(samples, generator=g).split(batch):
            opt.zero_grad()
            loss = loss_fn(model.forward_all(xt[idx]), kt[idx]) * 1000.0
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        if log and (epoch % 5 == 4 or epoch == epochs - 1):
            scores = evaluate(model, x_te, k_te)
            log(f"epoch {epoch + 1}: loss {running / samples:.4f}, held-out PCK@0.1 {scores['pck@0.1']:.2f}, "
                f"PCK@0.05 {scores['pck@0.05']:.2f} ({time.perf_counter() - start:.1f} s/epoch)")
    return model.eval(), evaluate(model, x_te, k_te)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=WEIGHTS / "mspn_tiny.pt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, scores = train(args.samples, args.epochs)
    args.out.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"mspn-tiny: held-out PCK@0.1 {scores['pck@0.1']:.2f}, PCK@0.05 {scores['pck@0.05']:.2f} -> {args.out}")


if __name__ == "__main__":
    main()
