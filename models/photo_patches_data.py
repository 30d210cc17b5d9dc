"""Patches of real photographs, one class per photograph: data that ship inside installed
packages (no download), cut deterministically.

The ten colour photographs: scikit-learn's two sample JPEGs (``sklearn/datasets/images``)
and eight files of scikit-image's wheel (``skimage/data``), each read with Pillow straight
from the package's folder (so nothing goes through scikit-image's downloader). The two
large ones (hubble_deep_field, retina) are halved with Pillow's ``reduce(2)`` so that no
photograph dominates the held-out split.

Every photograph is cut at ``SPLIT`` of its width: training crops (64x64) lie wholly in the
left 70% (seeded random positions, then a horizontal flip and a brightness factor at
random), held-out crops wholly in the right 30% (a fixed grid of stride 32 from the split
column). Crops with nothing in them (pixel standard deviation under ``FLAT`` levels: the
black corners of the retina photograph) are left out of both.

    x, y, boxes = train_crops(per_class=400, seed=0)   # x (N, 64, 64, 3) uint8
    x, y, boxes = heldout_crops()                       # boxes (N, 3): photo, top, left

The model's inputs are these crops through ``pipeline()``: stored as JPEG at quality 90,
decoded by Pillow, Pillow bilinear resize to 32x32, /255 (``inputs(crops)``).
"""
from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

import numpy as np

CROP = 64
SIZE = (32, 32)
SPLIT = 0.7
STRIDE = 32
FLAT = 2.0
# (class name, package, file in the package's data folder, Pillow reduce factor)
PHOTOS = (
    ("china", "sklearn.datasets", "images/china.jpg", 1),
    ("flower", "sklearn.datasets", "images/flower.jpg", 1),
    ("astronaut", "skimage", "data/astronaut.png", 1),
    ("chelsea", "skimage", "data/chelsea.png", 1),
    ("coffee", "skimage", "data/coffee.png", 1),
    ("rocket", "skimage", "data/rocket.jpg", 1),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", 2),
    ("ihc", "skimage", "data/ihc.png", 1),
    ("retina", "skimage", "data/retina.jpg", 2),
    ("motorcycle_left", "skimage", "data/motorcycle_left.png", 1),
)
CLASSES = tuple(p[0] for p in PHOTOS)


@lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """The ten photographs as (H, W, 3) uint8, in ``CLASSES`` order (read-only arrays)."""
    from PIL import Image

    out = []
    for _name, package, path, factor in PHOTOS:
        try:
            with (files(package) / path).open("rb") as f:
                img = Image.open(f).convert("RGB")
        except (ModuleNotFoundError, FileNotFoundError) as e:
            raise RuntimeError(f"photo-patches needs {package}'s bundled {path} "
                               "(pip install scikit-learn scikit-image)") from e
        if factor > 1:
            img = img.reduce(factor)
        a = np.asarray(img)
        a.setflags(write=False)
        out.append(a)
    return tuple(out)


def split_column(width: int) -> int:
    """The first column of the held-out region of a photograph ``width`` pixels wide."""
    return int(width * SPLIT)


def _flat(crop: np.ndarray) -> bool:
    return float(crop.std()) < FLAT


def heldout_boxes() -> np.ndarray:
    """(N, 3) int64: photo, top, left of every held-out crop, a stride-32 grid of the right 30%."""
    boxes = []
    for c, img in enumerate(photos()):
        h, w, _ = img.shape
        for top in range(0, h - CROP + 1, STRIDE):
            for left in range(split_column(w), w - CROP + 1, STRIDE):
                if not _flat(img[top:top + CROP, left:left + CROP]):
                    boxes.append((c, top, left))
    return np.array(boxes, np.int64)


def train_boxes(per_class: int, seed: int = 0) -> np.ndarray:
    """(N, 3) int64: photo, top, left of ``per_class`` seeded random crops from the left 70% of
    each photograph (never touching the held-out region), class by class."""
    rng = np.random.default_rng(seed)
    boxes = []
    for c, img in enumerate(photos()):
        h, w, _ = img.shape
        got = 0
        while got < per_class:
            top = int(rng.integers(0, h - CROP + 1))
            left = int(rng.integers(0, split_column(w) - CROP + 1))
            if not _flat(img[top:top + CROP, left:left + CROP]):
                boxes.append((c, top, left))
                got += 1
    return np.array(boxes, np.int64)


def cut(boxes: np.ndarray) -> np.ndarray:
    """The crops (N, 64, 64, 3) uint8 of ``boxes``."""
    imgs = photos()
    return np.stack([imgs[c][t:t + CROP, lft:lft + CROP] for c, t, lft in boxes])


def heldout_crops() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops, labels, boxes) of the held-out split."""
    boxes = heldout_boxes()
    return cut(boxes), boxes[:, 0].copy(), boxes


def train_crops(per_class: int = 400, seed: int = 0, jitter: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops, labels, boxes) of the training split: every crop flipped left-right with
    probability 1/2 and its pixels multiplied by a factor in [1 - jitter, 1 + jitter]
    (rounded, clipped to 0..255), all from ``seed``."""
    boxes = train_boxes(per_class, seed)
    x = cut(boxes)
    rng = np.random.default_rng([seed, 1])
    flip = rng.random(len(x)) < 0.5
    gain = rng.uniform(1 - jitter, 1 + jitter, len(x))
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    x = np.clip(np.rint(x * gain[:, None, None, None]), 0, 255).astype(np.uint8)
    return x, boxes[:, 0].copy(), boxes


def pipeline():
    """The training pipeline (``backendiff.noise.Pipeline``) from crops to model inputs."""
    from backendiff.noise import Pipeline

    return Pipeline(size=SIZE, resize=("pil", "bilinear"), decoder="pil", quality=90)


def inputs(crops: np.ndarray) -> np.ndarray:
    """Model inputs (N, 3, 32, 32) float32 of uint8 crops through ``pipeline()``."""
    from backendiff.noise import preprocess

    return preprocess(crops, pipeline())
