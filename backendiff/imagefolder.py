"""Labelled images in the ImageFolder layout: ``--data DIR``.

``DIR`` holds one sub-folder per class; the sorted folder names are the labels 0..C-1 (the
order torchvision's ``ImageFolder`` uses). Image files (.png .jpg .jpeg .bmp .gif .webp
.tif .tiff, any case) are found in each class folder and its sub-folders, in sorted order;
hidden files and folders (a leading ".") and other files are ignored.

Every image goes through one declared preprocessing (``Preprocess``): Pillow converts the
colour mode, resizes and center-crops; numpy scales, normalises and lays the channels out.
The preprocessing is the ``spec`` given (``--preprocess``), else the one the dataset declares
in ``DIR/preprocess.txt``, else the default: resize straight to the model's input size,
the colour mode its channel count implies, /255, NCHW. Pillow is imported lazily, so this
module imports without it. Small pure functions; nothing is printed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInput
from .inputs import DTYPES, first_line_of
from .tasks import TaskData

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PREPROCESS_FILE = "preprocess.txt"

MODES = {"rgb": "RGB", "gray": "L", "grey": "L", "grayscale": "L", "l": "L"}
LAYOUTS = ("NCHW", "NHWC")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
KEYS = ("resize", "crop", "size", "mode", "scale", "mean", "std", "layout", "interp")
PRESETS = ("imagenet",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How one image file becomes one model sample."""

    size: tuple[int, int]                 # (H, W) of the output
    resize: int | None = None             # shorter side resized to this, then center-crop `size`;
                                          # None: resized straight to `size`
    mode: str = "RGB"                     # "RGB" or "L"
    scale: float = 255.0                  # pixel values divided by this
    mean: tuple[float, ...] = (0.0,)      # per channel (or one for all), after scaling
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"                  # "NCHW" (channels first) or "NHWC"
    interpolation: str = "bilinear"       # "bilinear", "nearest" or "bicubic"

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        h, w = self.size
        return (self.channels, h, w) if self.layout == "NCHW" else (h, w, self.channels)

    def describe(self) -> str:
        """One line for reports, e.g. ``resize 256, center-crop 224x224, RGB, /255, mean
        0.485,0.456,0.406, std 0.229,0.224,0.225, NCHW, bilinear``."""
        h, w = self.size
        bits = [f"resize {self.resize}, center-crop {h}x{w}" if self.resize else f"resize {h}x{w}",
                self.mode, f"/{self.scale:g}"]
        if any(m != 0 for m in self.mean):
            bits.append("mean " + ",".join(f"{m:g}" for m in self.mean))
        if any(s != 1 for s in self.std):
            bits.append("std " + ",".join(f"{s:g}" for s in self.std))
        return ", ".join(bits + [self.layout, self.interpolation])


# --- the spec -------------------------------------------------------------------------------

def parse_preprocess(spec: str | None, sample_shape: tuple[int, ...]) -> Preprocess:
    """The preprocessing for a model whose one sample (no batch axis) has ``sample_shape``.

    ``spec``: comma-separated ``key=value`` items, e.g. ``resize=256,crop=224x224,mean=
    0.485/0.456/0.406,std=0.229/0.224/0.225`` (per-channel values separated by '/'), and/or
    the preset ``imagenet`` (resize to size*256/224, center-crop, RGB, /255, ImageNet
    mean/std), which the other items override whatever their order. Keys: resize=N|none,
    crop=HxW (or size=HxW, or N for a square; it must be the model's own size), mode=rgb|gray,
    scale=X, mean=..., std=... (one value or one per channel), layout=nchw|nhwc,
    interp=bilinear|nearest|bicubic. None or empty: the defaults.
    """
    spec = (spec or "").strip()
    items, presets = _items(spec)
    shape = tuple(sample_shape)
    where = f"in preprocessing {spec!r}"

    layout = items.get("layout", "NCHW")
    height, width, channels = _image_dims(shape, layout)
    if "imagenet" in presets:
        preset = {"resize": round(max(height, width) * 256 / 224), "mode": "RGB",
                  "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        items = {**preset, **items}

    mode = items.get("mode", "L" if channels == 1 else "RGB")
    wanted = 1 if mode == "L" else 3
    if wanted != channels:
        raise BadInput(f"mode {mode} {where} gives {wanted} channel{'s' * (wanted > 1)} but the model takes "
                       f"{channels} (sample shape {shape}, {layout})")

    size = items.get("crop", (height, width))
    if size != (height, width):
        raise BadInput(f"crop {size[0]}x{size[1]} {where} does not match the model's input size "
                       f"{height}x{width} (sample shape {shape}, {layout})")
    resize = items.get("resize")
    if resize is not None and resize < max(size):
        raise BadInput(f"resize {resize} {where} is smaller than the crop {size[0]}x{size[1]}: "
                       f"the shorter side must become at least {max(size)}")

    mean = _per_channel("mean", items.get("mean", (0.0,)), channels, mode, where)
    std = _per_channel("std", items.get("std", (1.0,)), channels, mode, where)
    return Preprocess(size=size, resize=resize, mode=mode, scale=items.get("scale", 255.0), mean=mean,
                      std=std, layout=layout, interpolation=items.get("interp", "bilinear"))


def _items(spec: str) -> tuple[dict, set[str]]:
    """The spec's ``key=value`` items, parsed and checked one by one, and its presets."""
    where = f"in preprocessing {spec!r}"
    items: dict = {}
    presets: set[str] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        key, sep, value = (s.strip() for s in item.partition("="))
        key = key.lower()
        if not sep:
            if key not in PRESETS:
                raise BadInput(f"malformed item {item!r} {where}: expected KEY=VALUE or a preset "
                               f"({', '.join(PRESETS)})")
            presets.add(key)
            continue
        key = {"size": "crop", "interpolation": "interp"}.get(key, key)
        if key not in KEYS:
            raise BadInput(f"unknown key {item.partition('=')[0].strip()!r} {where}; known: {', '.join(KEYS)} "
                           f"(and the preset {', '.join(PRESETS)})")
        if key in items:
            raise BadInput(f"{key} given twice {where}")
        items[key] = _value(key, value, where)
    return items, presets


def _value(key: str, value: str, where: str):
    text = value.lower()
    if key == "resize":
        return None if text == "none" else _positive_int(key, value, where)
    if key == "crop":
        dims = text.split("x")
        if len(dims) not in (1, 2):
            raise BadInput(f"bad size {value!r} for crop {where}: expected HxW, e.g. 224x224")
        h, w = (_positive_int(key, d, where) for d in (dims * 2)[:2])
        return (h, w)
    if key == "mode":
        if text not in MODES:
            raise BadInput(f"unknown mode {value!r} {where}; known: rgb, gray")
        return MODES[text]
    if key == "layout":
        if text.upper() not in LAYOUTS:
            raise BadInput(f"unknown layout {value!r} {where}; known: nchw, nhwc")
        return text.upper()
    if key == "interp":
        if text not in INTERPOLATIONS:
            raise BadInput(f"unknown interpolation {value!r} {where}; known: {', '.join(INTERPOLATIONS)}")
        return text
    if key == "scale":
        scale = _number(key, value, where)
        if not scale > 0:
            raise BadInput(f"bad number {value!r} for scale {where}: expected a number > 0")
        return scale
    values = tuple(_number(key, v, where) for v in value.split("/"))     # mean, std
    if key == "std" and not all(v > 0 for v in values):
        raise BadInput(f"bad number {value!r} for std {where}: expected numbers > 0")
    return values


def _number(key: str, text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"bad number {text.strip()!r} for {key} {where}") from None
    if not np.isfinite(value):
        raise BadInput(f"bad number {text.strip()!r} for {key} {where}: expected a finite number")
    return value


def _positive_int(key: str, text: str, where: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) == 0:
        raise BadInput(f"bad number {text!r} for {key} {where}: expected a positive integer")
    return int(text)


def _image_dims(shape: tuple, layout: str) -> tuple[int, int, int]:
    """(H, W, C) of one sample's shape in the layout; BadInput when it is not an image."""
    if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise BadInput(f"the model's sample shape {shape} is not an image: image data needs C,H,W (NCHW) "
                       "or H,W,C (layout=nhwc) with fixed sizes")
    c, h, w = shape if layout == "NCHW" else (shape[2], shape[0], shape[1])
    if c not in (1, 3):
        other = shape[-1] if layout == "NCHW" else shape[0]
        hint = f"; is the model {'channels-last? add layout=nhwc' if layout == 'NCHW' else 'channels-first? use layout=nchw'}" \
            if other in (1, 3) else ""
        raise BadInput(f"the model's sample shape {shape} has {c} channels in {layout} layout; "
                       f"image data needs 1 (gray) or 3 (RGB){hint}")
    return int(h), int(w), int(c)


def _per_channel(key: str, values: tuple, channels: int, mode: str, where: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(float(values[0]) for _ in range(channels))
    if len(values) != channels:
        raise BadInput(f"{key} has {len(values)} values {where} but the images have {channels} "
                       f"channel{'s' * (channels > 1)} ({mode}); give 1 or {channels} values separated by '/'")
    return tuple(float(v) for v in values)


def load_preprocess_file(path: str | Path) -> str | None:
    """The preprocessing ``DIR/preprocess.txt`` declares (one spec; '#' starts a comment; the
    lines of a longer spec are joined by commas), or None when there is none."""
    file = Path(path) / PREPROCESS_FILE
    if not file.is_file():
        return None
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {file}: {first_line_of(e)}") from None
    lines = (line.split("#", 1)[0].strip().strip(",") for line in text.splitlines())
    spec = ",".join(line for line in lines if line)
    return spec or None


# --- the folder -----------------------------------------------------------------------------

def class_names(path: str | Path) -> list[str]:
    """The class folders of ``path``, sorted: their index is the label. BadInput when the path
    is missing, not a folder, or has no class folders."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"data folder not found: {path}")
    if not path.is_dir():
        raise BadInput(f"data path {path} is not a folder (expected one sub-folder per class with images inside)")
    names = sorted(e.name for e in os.scandir(path) if e.is_dir() and not _hidden(e.name))
    if not names:
        loose = len(image_files(path, recursive=False))
        held = f"; it holds {loose} images directly: point --data at a folder of class folders" if loose else ""
        raise BadInput(f"no class sub-folders in {path} (ImageFolder layout: one sub-folder per class, "
                       f"images inside){held}")
    return names


def image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """The image files of one folder (and its sub-folders), sorted like torchvision's
    ImageFolder: folder by folder, files by name; hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _hidden(d)] if recursive else []
        found += [Path(root) / f for f in files if not _hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found, key=lambda p: (str(p.parent), p.name))


def _hidden(name: str) -> bool:
    return name.startswith(".")


def take_round_robin(per_class: list[list], limit: int | None) -> list[list]:
    """At most ``limit`` items in all, taken from the classes in turn (the first of each
    class, then the second of each, ...): each class keeps its first items."""
    if limit is None:
        return per_class
    counts = [0] * len(per_class)
    left = limit
    while left > 0:
        progress = False
        for c, items in enumerate(per_class):
            if left > 0 and counts[c] < len(items):
                counts[c] += 1
                left -= 1
                progress = True
        if not progress:
            break
    return [items[:n] for items, n in zip(per_class, counts)]


def load_image_folder(path: str | Path, sample_shape: tuple[int, ...], dtype: str = "float32",
                      preprocess: str | None = None, task: str = "classification",
                      limit: int | None = None) -> TaskData:
    """Every image of an ImageFolder tree, preprocessed to (N, *sample_shape) of ``dtype``,
    with int64 labels (the index of its class folder in sorted order).

    The preprocessing is ``preprocess`` when given, else ``DIR/preprocess.txt``, else the
    default (see ``parse_preprocess``); the spec given replaces the file's, it does not add to
    it. ``limit`` keeps at most that many images, taken round-robin over the classes (each
    class keeps its first images in sorted order), so a quick run still sees every class;
    the samples stay in the usual order, class by class.
    """
    path = Path(path)
    names = class_names(path)
    out_dtype = _dtype(dtype)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise BadInput(f"bad limit {limit!r} for the images of {path}: expected a positive integer")

    origin = None
    spec = preprocess.strip() if preprocess else None
    if not spec:
        spec = load_preprocess_file(path)
        origin = path / PREPROCESS_FILE if spec else None
    try:
        pre = parse_preprocess(spec, tuple(sample_shape))
    except BadInput as e:
        if origin is None:
            raise
        raise BadInput(f"{origin}: {e}") from None

    per_class = [image_files(path / name) for name in names]
    total = sum(len(files) for files in per_class)
    if total == 0:
        raise BadInput(f"no images in {path}: its {len(names)} class folders ({_listed(names)}) hold no "
                       f"{'/'.join(IMAGE_EXTENSIONS)} files")
    empty = [name for name, files in zip(names, per_class) if not files]
    if empty:
        raise BadInput(f"class folder{'s' * (len(empty) > 1)} without images in {path}: {_listed(empty)} "
                       f"(image files end in {'/'.join(IMAGE_EXTENSIONS)})")

    chosen = take_round_robin(per_class, limit)
    files = [(f, label) for label, fs in enumerate(chosen) for f in fs]
    inputs = np.empty((len(files), *pre.sample_shape), dtype=out_dtype)
    for i, (file, _) in enumerate(files):
        inputs[i] = _cast(preprocess_image(read_image(file), pre), out_dtype)
    labels = np.array([label for _, label in files], dtype=np.int64)

    count = f"{len(files)} images" if len(files) == total else f"{len(files)} of {total} images"
    how = pre.describe() + (f" (from {PREPROCESS_FILE})" if origin else "")
    return TaskData(task, inputs, labels, f"imagefolder {path} ({len(names)} classes, {count}; {how})")


def _listed(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _dtype(dtype) -> np.dtype:
    key = str(dtype).lower()
    if key in DTYPES:
        return np.dtype(DTYPES[key])
    try:
        return np.dtype(dtype)
    except TypeError:
        raise BadInput(f"unknown dtype {dtype!r} for image data; known: {', '.join(sorted(DTYPES))}") from None


def _cast(sample: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iub":
        return np.rint(sample).astype(dtype)
    return sample.astype(dtype)


# --- one image ------------------------------------------------------------------------------

def read_image(file: str | Path):
    """One image file, decoded by Pillow (the first frame of an animation); BadInput naming
    the file and Pillow's reason when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            img.load()
            if img.mode.startswith(("I", "F")):
                raise BadInput(f"cannot use image {file}: its mode {img.mode} is not 8-bit per channel "
                               "(convert it to 8-bit gray or RGB)")
            return img.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInput(f"cannot read image {file}: {first_line_of(e)}") from None


def preprocess_image(img, pre: Preprocess) -> np.ndarray:
    """One Pillow image to one float64 sample of ``pre.sample_shape``: convert the mode,
    resize (the shorter side to ``pre.resize``, then center-crop; or straight to the size),
    divide by the scale, normalise, lay out the channels. Sizes and crop offsets are the
    ones torchvision's Resize(int) and CenterCrop compute."""
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
                "bicubic": Image.Resampling.BICUBIC}[pre.interpolation]
    if img.mode != pre.mode:
        img = img.convert(pre.mode)
    h, w = pre.size
    if pre.resize is None:
        if img.size != (w, h):
            img = img.resize((w, h), resample)
    else:
        iw, ih = img.size
        r = pre.resize
        target = (r, int(r * ih / iw)) if iw <= ih else (int(r * iw / ih), r)
        if img.size != target:
            img = img.resize(target, resample)
        left, top = round((target[0] - w) / 2.0), round((target[1] - h) / 2.0)
        img = img.crop((left, top, left + w, top + h))
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    a = (a / pre.scale - np.asarray(pre.mean)) / np.asarray(pre.std)
    return a.transpose(2, 0, 1) if pre.layout == "NCHW" else a
