"""Model inputs: declared shapes, seeded random batches, the user's own arrays.

Every backend receives the very same numpy arrays (read-only, so no runtime can change
them under another); their SHA-256 goes into the report.
"""
from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInput

DTYPES = {
    "float32": np.float32, "fp32": np.float32, "float": np.float32, "f32": np.float32,
    "float64": np.float64, "fp64": np.float64, "double": np.float64,
    "float16": np.float16, "fp16": np.float16, "half": np.float16,
    "int64": np.int64, "long": np.int64, "i64": np.int64,
    "int32": np.int32, "int": np.int32, "i32": np.int32,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}

# dims joined by "x" or by "," (then optionally in brackets): 1x3x224x224, 1,3,224,224, [1,3,224,224]
_SHAPE = re.compile(r"^(\d+(?:x\d+)*|\d+(?:,\d+)*|\[\d+(?:,\d+)*\])$")


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape, dtype, and the range random values are drawn from."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def parse_input_spec(text: str) -> InputSpec:
    """``NAME:SHAPE[:DTYPE[:LOW..HIGH]]``, e.g. ``x:1x3x224x224`` or ``ids:1x16:int64:0..30522``.
    SHAPE is ``1x3x224x224``, ``1,3,224,224`` or ``[1,3,224,224]`` (as a shape is printed);
    ``:`` only separates fields, so the commas and brackets stay inside the shape."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0]:
        raise BadInput(f"malformed --input {text!r}: expected NAME:SHAPE[:DTYPE[:LOW..HIGH]], e.g. x:1x3x224x224")
    name = parts[0]
    shape = parse_shape(parts[1])
    if shape is None:
        raise BadInput(f"malformed shape {parts[1]!r} in --input {text!r}: expected dims joined by 'x' or ',', "
                       "e.g. 1x3x224x224, 1,3,224,224 or [1,3,224,224]")
    dtype = parts[2].lower() if len(parts) > 2 else "float32"
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {parts[2]!r} in --input {text!r}; known: {', '.join(sorted(set(DTYPES)))}")
    low = high = None
    if len(parts) == 4:
        lo, sep, hi = parts[3].partition("..")
        try:
            low, high = float(lo), float(hi)
        except ValueError:
            raise BadInput(f"malformed range {parts[3]!r} in --input {text!r}: expected LOW..HIGH") from None
        if not sep or not high > low:
            raise BadInput(f"malformed range {parts[3]!r} in --input {text!r}: expected LOW..HIGH with LOW < HIGH")
    return InputSpec(name, shape, np.dtype(DTYPES[dtype]).name, low, high)


def parse_shape(text: str) -> tuple[int, ...] | None:
    """``1x3x224x224``, ``1,3,224,224`` or ``[1,3,224,224]`` (spaces ignored) as a tuple;
    None when it is none of these."""
    text = text.lower().replace(" ", "")
    if not _SHAPE.match(text):
        return None
    return tuple(int(d) for d in re.split("[x,]", text.strip("[]")))


def random_sample(specs: list[InputSpec], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One batch: floats ~ N(0, 1) (or uniform in the range), integers and bools uniform in
    [low, high) (default [0, 10) and [0, 2))."""
    out = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            if spec.low is not None:
                a = rng.uniform(spec.low, spec.high, size=spec.shape)
            else:
                a = rng.standard_normal(size=spec.shape)
        else:
            lo = int(spec.low) if spec.low is not None else 0
            hi = int(spec.high) if spec.high is not None else 2 if dtype.kind == "b" else 10
            a = rng.integers(lo, hi, size=spec.shape)
        out[spec.name] = freeze(a.astype(dtype))
    return out


def random_samples(specs: list[InputSpec], seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [random_sample(specs, rng) for _ in range(count)]


def freeze(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def read_npz(path: str | Path, what: str = "inputs") -> dict[str, np.ndarray]:
    """Every array of an .npz, read without pickle; a missing or unreadable file is BadInput."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{what} file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise BadInput(f"cannot read {what} file {path}: {first_line_of(e)} (expected an .npz written by numpy.savez)") from None


def load_npz(path: str | Path, names: list[str]) -> dict[str, np.ndarray]:
    """The user's arrays, one per model input, read without pickle."""
    arrays = read_npz(path)
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in names]
    if missing or extra:
        bits = []
        if missing:
            bits.append(f"missing {', '.join(missing)}")
        if extra:
            bits.append(f"unexpected {', '.join(extra)}")
        raise BadInput(f"inputs file {path} does not match the model inputs ({', '.join(names)}): {'; '.join(bits)}")
    return {n: freeze(arrays[n]) for n in names}


def first_line_of(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def specs_of(sample: dict[str, np.ndarray]) -> list[InputSpec]:
    return [InputSpec(k, tuple(v.shape), v.dtype.name) for k, v in sample.items()]


def example_specs(example: dict[str, np.ndarray], declared: list[InputSpec] | None = None) -> list[InputSpec]:
    """The specs that more samples like ``example`` are drawn from: per input, the range the
    model declares for it (a vocabulary, say), else the example's own (``observed_range``).
    Random data outside the values a model is ever given (an attention mask of 7, token
    types it has no embedding for, pixels of -3) tests nothing it will meet deployed and
    skews int8 calibration."""
    ranges = {s.name: (s.low, s.high) for s in declared or [] if s.low is not None}
    specs = []
    for name, a in example.items():
        low, high = ranges.get(name) or observed_range(a) or (None, None)
        specs.append(InputSpec(name, tuple(a.shape), a.dtype.name, low, high))
    return specs


def observed_range(a: np.ndarray) -> tuple[float, float] | None:
    """The ``[low, high)`` to draw more of ``a`` from, as ``random_sample`` reads it.
    Integers and bools: the example's [min, max], inclusive (a 0/1 mask stays 0/1, one
    repeated value stays constant). Floats: uniform in the example's [min, max] (finite
    values), so that bounded data (images in [0, 1] or [0, 255]) stays within its bounds,
    as a declared range is drawn; None (N(0, 1)) where the example looks standard normal
    already or is constant (a placeholder that says nothing of the scale)."""
    if a.size == 0:
        return None
    if a.dtype.kind in "iub":
        return int(a.min()), int(a.max()) + 1
    if a.dtype.kind != "f":
        return None
    values = a[np.isfinite(a)].astype(np.float64)
    if values.size == 0 or values.min() == values.max() or standard_normal_like(values):
        return None
    return float(values.min()), float(values.max())


def standard_normal_like(values: np.ndarray) -> bool:
    """Mean within 0.25 of 0 and standard deviation within 0.75..1.33: a ``randn`` example or
    standardized data, for which N(0, 1) is the like draw (uniform in [min, max] would make
    its rare extremes common). Data in [0, 1] (std <= 0.5) or [-1, 1] (std <= 0.58) is not."""
    return abs(float(values.mean())) < 0.25 and 0.75 < float(values.std()) < 1.33


def describe_draws(specs: list[InputSpec]) -> str:
    """How ``random_sample`` draws each input, one line for the report, e.g.
    ``ids: integers in [3, 998]; mask: integers in [0, 1]; types: constant 0; x: N(0, 1)``."""
    return "; ".join(f"{s.name}: {describe_draw(s)}" for s in specs)


def describe_draw(spec: InputSpec) -> str:
    if np.dtype(spec.dtype).kind == "f":
        return "N(0, 1)" if spec.low is None else f"uniform in [{spec.low:g}, {spec.high:g}]"
    lo = int(spec.low) if spec.low is not None else 0
    hi = int(spec.high) - 1 if spec.high is not None else 1 if np.dtype(spec.dtype).kind == "b" else 9
    return f"constant {lo}" if lo == hi else f"integers in [{lo}, {hi}]"


def samples_sha256(samples: list[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for sample in samples:
        for name, a in sample.items():
            h.update(name.encode())
            h.update(str(a.dtype).encode())
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def nonfinite_inputs(samples: list[dict[str, np.ndarray]]) -> list[str]:
    """Names of inputs holding NaN/Inf (warned about, still run)."""
    bad = []
    for sample in samples:
        for name, a in sample.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all() and name not in bad:
                bad.append(name)
    return bad


def load_calibration_npz(path: str | Path, reference: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Calibration samples from one .npz: each array either has the input's own rank (one
    sample) or one leading axis more (a stack of samples)."""
    arrays = load_npz(path, list(reference))
    counts = set()
    for name, a in arrays.items():
        rank = reference[name].ndim
        if a.ndim == rank:
            counts.add(0)
        elif a.ndim == rank + 1:
            counts.add(a.shape[0])
        else:
            raise BadInput(f"calibration array {name} in {path} has shape {a.shape}; expected "
                           f"{reference[name].shape} or (N, *{reference[name].shape})")
    if len(counts) != 1:
        raise BadInput(f"calibration arrays in {path} disagree on the number of samples")
    n = counts.pop()
    if n == 0:
        return [arrays]
    return [{name: freeze(a[i]) for name, a in arrays.items()} for i in range(n)]
