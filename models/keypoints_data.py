"""Synthetic keypoint data: rendered articulated stick figures, generated deterministically.

Every image shows one figure with 11 joints (head, neck, both elbows and wrists, pelvis, both
knees and ankles) drawn as anti-aliased limbs on a cluttered, noisy background with
distractor strokes, some in the limbs' colours, and in 30% of images an occluding patch.
Left limbs are warm, right limbs cool (so left and right can be told apart), with
per-image colour jitter. The pose is sampled from joint-angle ranges, the figure is placed,
scaled and rotated at random, and joints that leave the image are marked invisible.

    images, keypoints = make_split(n=500, seed=1)
    # images (N, 3, 64, 48) float32 in [0, 1]; keypoints (N, 11, 3): x, y (pixels), visible

Pixel coordinates: the centre of pixel (row r, column c) is (x=c, y=r).
"""
from __future__ import annotations

import numpy as np

HEIGHT, WIDTH = 64, 48
JOINTS = ("head", "neck", "l_elbow", "l_wrist", "r_elbow", "r_wrist",
          "pelvis", "l_knee", "l_ankle", "r_knee", "r_ankle")
# COCO-style per-keypoint OKS constants (head ~ nose/eyes, neck ~ shoulders, pelvis ~ hips)
SIGMAS = np.array([0.026, 0.079, 0.072, 0.062, 0.072, 0.062, 0.107, 0.087, 0.089, 0.087, 0.089])
# limbs as (from, to, side): side 0 centre, 1 left, 2 right
LIMBS = ((0, 1, 0), (1, 6, 0), (1, 2, 1), (2, 3, 1), (1, 4, 2), (4, 5, 2),
         (6, 7, 1), (7, 8, 1), (6, 9, 2), (9, 10, 2))
SEGMENT = {"neck": 6.0, "torso": 15.0, "upper_arm": 8.0, "forearm": 7.0, "thigh": 9.5, "shin": 8.5}


def _rot(angle: float) -> np.ndarray:
    """Unit vector pointing `angle` radians from straight down (y grows downwards)."""
    return np.array([np.sin(angle), np.cos(angle)])


def sample_pose(rng: np.random.Generator) -> np.ndarray:
    """Joint positions (11, 2) of a figure with its pelvis at the origin, scale 1."""
    s = SEGMENT
    lean = rng.uniform(-0.35, 0.35)
    up = -_rot(lean)                                   # from pelvis towards the neck
    pelvis = np.zeros(2)
    neck = pelvis + s["torso"] * up
    head = neck + s["neck"] * -_rot(lean + rng.uniform(-0.4, 0.4))
    joints = {"head": head, "neck": neck, "pelvis": pelvis}
    for side, sign in (("l", 1.0), ("r", -1.0)):
        # arms hang from the neck: shoulder angle from down, elbow bend relative to it
        shoulder = lean + sign * rng.uniform(0.2, 2.6)
        elbow = joints["neck"] + s["upper_arm"] * _rot(shoulder)
        wrist = elbow + s["forearm"] * _rot(shoulder + sign * rng.uniform(-0.3, 1.8))
        hip = lean + sign * rng.uniform(0.05, 0.8)
        knee = pelvis + s["thigh"] * _rot(hip)
        ankle = knee + s["shin"] * _rot(hip - sign * rng.uniform(0.0, 1.2))
        joints.update({f"{side}_elbow": elbow, f"{side}_wrist": wrist, f"{side}_knee": knee, f"{side}_ankle": ankle})
    return np.stack([joints[name] for name in JOINTS])


def place(pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale, rotate and translate a pose so that its box is mostly inside the image."""
    scale = rng.uniform(0.7, 1.25)
    angle = rng.uniform(-0.3, 0.3)
    c, s = np.cos(angle), np.sin(angle)
    pts = pose * scale @ np.array([[c, -s], [s, c]]).T
    lo, hi = pts.min(0), pts.max(0)
    centre = np.array([rng.uniform(WIDTH * 0.35, WIDTH * 0.65), rng.uniform(HEIGHT * 0.4, HEIGHT * 0.6)])
    return pts - (lo + hi) / 2 + centre


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((px - a) @ ab) / max(ab @ ab, 1e-9), 0.0, 1.0)
    return np.linalg.norm(px - (a + t[..., None] * ab), axis=-1)


def _grid(scale: int) -> np.ndarray:
    """Pixel centres of an image rendered ``scale`` times larger, in base-image coordinates."""
    xs = (np.arange(WIDTH * scale) + 0.5) / scale - 0.5
    ys = (np.arange(HEIGHT * scale) + 0.5) / scale - 0.5
    return np.stack(np.meshgrid(xs, ys), -1)


def _background(rng: np.random.Generator, scale: int = 1) -> np.ndarray:
    """Low-frequency colour clutter, distractor strokes (some in the limbs' own colours, so
    colour alone does not find a limb) and pixel noise."""
    coarse = rng.uniform(0.0, 0.5, size=(3, 5, 4))
    rows = np.linspace(0, 4, HEIGHT * scale)
    cols = np.linspace(0, 3, WIDTH * scale)
    r0, c0 = np.floor(rows).astype(int).clip(0, 3), np.floor(cols).astype(int).clip(0, 2)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    img = (coarse[:, r0][:, :, c0] * (1 - fr) * (1 - fc) + coarse[:, r0 + 1][:, :, c0] * fr * (1 - fc)
           + coarse[:, r0][:, :, c0 + 1] * (1 - fr) * fc + coarse[:, r0 + 1][:, :, c0 + 1] * fr * fc)
    grid = _grid(scale)
    for _ in range(rng.integers(1, 5)):
        a = rng.uniform([0, 0], [WIDTH, HEIGHT])
        b = a + rng.uniform(6, 14) * _rot(rng.uniform(0, 2 * np.pi))
        alpha = np.clip((rng.uniform(1.0, 1.8) - _segment_distance(grid, a, b)) * scale, 0, 1) * rng.uniform(0.4, 0.9)
        colour = _PALETTE[rng.integers(0, 3)](rng) if rng.random() < 0.5 else rng.uniform(0.2, 0.8, size=3)
        img = img * (1 - alpha) + alpha * colour[:, None, None]
    return img


_PALETTE = (lambda rng: rng.uniform([0.8, 0.8, 0.8], [1.0, 1.0, 1.0]),       # centre: light
            lambda rng: rng.uniform([0.8, 0.4, 0.0], [1.0, 0.75, 0.25]),     # left: warm
            lambda rng: rng.uniform([0.0, 0.4, 0.8], [0.25, 0.75, 1.0]))     # right: cool


def _occlude(img: np.ndarray, rng: np.random.Generator, scale: int = 1) -> np.ndarray:
    """A rectangle of clutter over part of the image (30% of images): joints under it keep
    their labels, as occluded keypoints do in COCO."""
    if rng.random() >= 0.3:
        return img
    h, w = rng.integers(6, 16), rng.integers(6, 14)
    top, left = rng.integers(0, HEIGHT - h), rng.integers(0, WIDTH - w)
    h, w, top, left = h * scale, w * scale, top * scale, left * scale
    img = img.copy()
    img[:, top:top + h, left:left + w] = rng.uniform(0.1, 0.6, size=(3, 1, 1)) + rng.normal(0, 0.05, (3, h, w))
    return img


def render(points: np.ndarray, rng: np.random.Generator, scale: int = 1) -> np.ndarray:
    """(3, H, W) float32 image in [0, 1] of the figure with joints `points` (11, 2); with
    ``scale`` the same scene on a grid that many times finer (edges stay one pixel soft)."""
    img = _background(rng, scale)
    grid = _grid(scale)
    palette = [make(rng) for make in _PALETTE]
    thick = rng.uniform(1.2, 1.9)
    for a, b, side in LIMBS:
        alpha = np.clip((thick - _segment_distance(grid, points[a], points[b])) * scale, 0.0, 1.0)[None]
        img = img * (1 - alpha) + alpha * palette[side][:, None, None]
    head = np.clip((3.2 - np.linalg.norm(grid - points[0], axis=-1)) * scale, 0.0, 1.0)[None]
    img = img * (1 - head) + head * palette[0][:, None, None]
    img = _occlude(img, rng, scale) + rng.normal(0.0, 0.06, size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def make_split(n: int, seed: int, scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (n, 3, 64, 48) and keypoints (n, 11, 3) = x, y, visible; the same for the
    same seed on every machine (NumPy's PCG64 and float64 arithmetic). With ``scale`` the
    images are rendered that many times larger (the keypoints stay in 64x48 coordinates):
    the camera-side source of the SysNoise pipeline, which resizes them to the model's input."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, HEIGHT * scale, WIDTH * scale), np.float32)
    keypoints = np.empty((n, len(JOINTS), 3), np.float32)
    for i in range(n):
        pts = place(sample_pose(rng), rng)
        images[i] = render(pts, rng, scale)
        visible = (pts[:, 0] >= 0) & (pts[:, 0] <= WIDTH - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= HEIGHT - 1)
        keypoints[i, :, :2] = pts
        keypoints[i, :, 2] = visible
    return images, keypoints
