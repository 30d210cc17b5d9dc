"""SysNoise's pre-processing noise sources as small pure functions on uint8 images (H, W, C):
image decoders, resize modes of Pillow, OpenCV and torch, and the RGB -> YCbCr -> RGB
round trip of video pipelines (BT.601 full range as JPEG uses it; in float or in 8-bit
fixed point; chroma 4:4:4 or 4:2:0).

Every function returns a new uint8 image; libraries are imported lazily (OpenCV is
optional: ``pip install 'backendiff[sysnoise]'``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from .errors import BackendUnavailable

PIL_RESIZE = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CV_RESIZE = ("nearest", "bilinear", "area", "bicubic", "lanczos")
TORCH_RESIZE = ("nearest", "bilinear", "bilinear-aa", "bicubic", "bicubic-aa", "area")

# BT.601 full range (JFIF): Y, Cb, Cr from R, G, B in [0, 255]
RGB_TO_YCC = np.array([[0.299, 0.587, 0.114],
                       [-0.168736, -0.331264, 0.5],
                       [0.5, -0.418688, -0.081312]])
YCC_TO_RGB = np.array([[1.0, 0.0, 1.402],
                       [1.0, -0.344136, -0.714136],
                       [1.0, 1.772, 0.0]])


def _cv2():
    try:
        import cv2
    except ImportError:
        raise BackendUnavailable("OpenCV is not installed", "pip install 'backendiff[sysnoise]'") from None
    return cv2


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def resize(img: np.ndarray, size: tuple[int, int], library: str, mode: str) -> np.ndarray:
    """``img`` (H, W, C) uint8 to ``size`` = (h, w) with one library's interpolation mode."""
    h, w = size
    if library == "pil":
        from PIL import Image

        filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                   "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
                   "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS}
        planes = [np.asarray(Image.fromarray(img[..., c]).resize((w, h), filters[mode])) for c in range(img.shape[2])]
        return np.stack(planes, -1)
    if library == "opencv":
        cv2 = _cv2()
        flags = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
                 "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
        out = cv2.resize(img, (w, h), interpolation=flags[mode])
        return out.reshape(h, w, img.shape[2])
    if library == "torch":
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
        base, _, aa = mode.partition("-")
        kwargs = {} if base in ("nearest", "area") else {"align_corners": False, "antialias": aa == "aa"}
        y = F.interpolate(x, size=(h, w), mode=base, **kwargs)
        return _u8(y[0].permute(1, 2, 0).numpy())
    raise ValueError(f"unknown resize library {library!r}")


resize_image = resize   # for functions whose ``resize`` argument names a (library, mode) choice


def ycc_round_trip(img: np.ndarray, subsampling: str = "444", fixed_point: bool = False) -> np.ndarray:
    """RGB -> YCbCr (stored as 8 bits per channel, as a video frame is) -> RGB. ``fixed_point``:
    the integer arithmetic of 8-bit pipelines (coefficients scaled by 2^16, rounded shifts),
    else float. ``420``: chroma averaged over 2x2 blocks and replicated back."""
    rgb = img.astype(np.float64)
    if fixed_point:
        ycc = _ycc_fixed(img.astype(np.int64))
    else:
        ycc = _u8(rgb @ RGB_TO_YCC.T + [0.0, 128.0, 128.0])
    if subsampling == "420":
        ycc = ycc.copy()
        h, w = ycc.shape[:2]
        for c in (1, 2):
            plane = ycc[..., c].astype(np.float64)
            ph, pw = h + h % 2, w + w % 2
            padded = np.pad(plane, ((0, ph - h), (0, pw - w)), mode="edge")
            small = padded.reshape(ph // 2, 2, pw // 2, 2).mean(axis=(1, 3))
            ycc[..., c] = _u8(np.repeat(np.repeat(small, 2, 0), 2, 1)[:h, :w])
    elif subsampling != "444":
        raise ValueError(f"unknown chroma subsampling {subsampling!r}")
    if fixed_point:
        return _rgb_fixed(ycc.astype(np.int64))
    return _u8((ycc.astype(np.float64) - [0.0, 128.0, 128.0]) @ YCC_TO_RGB.T)


_ONE, _HALF = 1 << 16, 1 << 15


def _fix(m: np.ndarray) -> np.ndarray:
    return np.rint(m * _ONE).astype(np.int64)


def _ycc_fixed(rgb: np.ndarray) -> np.ndarray:
    out = (rgb @ _fix(RGB_TO_YCC).T + _HALF) >> 16
    out[..., 1:] += 128
    return np.clip(out, 0, 255).astype(np.uint8)


def _rgb_fixed(ycc: np.ndarray) -> np.ndarray:
    centred = ycc - np.array([0, 128, 128])
    out = (centred @ _fix(YCC_TO_RGB).T + _HALF) >> 16
    return np.clip(out, 0, 255).astype(np.uint8)


def jpeg_round_trip(img: np.ndarray, quality: int = 90, decoder: str = "pil") -> np.ndarray:
    """Encode with Pillow at ``quality`` (4:2:0, as most cameras and web images), decode with
    ``decoder`` (``pil`` or ``opencv``): what a dataset of JPEG files does to the pixels."""
    from PIL import Image

    gray = img.shape[2] == 1
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if gray else img).save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    if decoder == "pil":
        out = np.asarray(Image.open(io.BytesIO(data)).convert("L" if gray else "RGB"))
    elif decoder == "opencv":
        cv2 = _cv2()
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        out = raw if gray else raw[..., ::-1]
    else:
        raise ValueError(f"unknown decoder {decoder!r}")
    return np.ascontiguousarray(out).reshape(img.shape)


def decode_bytes(data: bytes, decoder: str) -> np.ndarray:
    """An RGB JPEG file's bytes decoded to (H, W, 3) uint8 by ``pil`` or ``opencv``."""
    if decoder == "pil":
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    cv2 = _cv2()
    return np.ascontiguousarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def pixel_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """How two decodes of one image differ: max and mean absolute difference in levels, and
    the share of pixel values that differ at all."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_abs": int(d.max()), "mean_abs": float(d.mean()), "differing": float((d > 0).mean())}


def photographs() -> list[tuple[str, bytes | None, np.ndarray]]:
    """Real photographs that ship in packages: scikit-learn's two sample JPEGs (name, the
    file's own bytes, pixels) and, when scikit-image is installed, its colour test images
    (name, None, pixels)."""
    from pathlib import Path

    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    out = [(Path(f).name, Path(f).read_bytes(), img) for f, img in zip(sample.filenames, sample.images)]
    try:
        import skimage.data as data
    except ImportError:
        return out
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        img = getattr(data, name)()
        if img.ndim == 3 and img.shape[2] == 3:
            out.append((f"skimage {name}", None, np.ascontiguousarray(img[..., :3])))
    return out


# -- the training pipeline a zoo model declares (stored images -> model inputs) ----------------------
@dataclass(frozen=True)
class Pipeline:
    """The training pipeline: stored images (JPEG at ``quality``, decoded by ``decoder``),
    resized to the model's input with ``resize`` = (library, mode), divided by ``scale``."""
    size: tuple[int, int]
    resize: tuple[str, str] = ("pil", "bilinear")
    decoder: str = "pil"
    quality: int = 95
    scale: float = 255.0

    def describe(self) -> str:
        return (f"JPEG q{self.quality} decoded by {self.decoder}, {self.resize[0]} {self.resize[1]} resize to "
                f"{self.size[0]}x{self.size[1]}, /{self.scale:g}")


@dataclass(frozen=True)
class Source:
    """Camera-side images (N, H, W, C) uint8, their labels, and the task they are for."""
    images: np.ndarray
    labels: np.ndarray
    task: str
    params: dict = field(default_factory=dict)


def preprocess(images: np.ndarray, pipeline: Pipeline, decoder: str | None = None, resize=None,
               ycc: tuple[str, bool] | None = None) -> np.ndarray:
    """Model inputs (N, C, h, w) float32 from source images through the pipeline, with any of
    its factors replaced: the decoder, the resize (library, mode), a YCbCr round trip
    (subsampling, fixed point) applied to the decoded image as a video pipeline would."""
    library, mode = resize or pipeline.resize
    out = []
    for img in images:
        x = jpeg_round_trip(img, pipeline.quality, decoder or pipeline.decoder)
        if ycc is not None:
            x = ycc_round_trip(x, *ycc) if x.shape[2] == 3 else x
        x = resize_image(x, pipeline.size, library, mode)
        out.append(np.transpose(x, (2, 0, 1)).astype(np.float32) / pipeline.scale)
    return np.stack(out)
