"""One settings object, built from the CLI options (or the API's keywords) and passed down."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .inputs import InputSpec


@dataclass(frozen=True)
class CompareConfig:
    backends: tuple[str, ...] | None = None     # spec texts; None: every available default backend
    seed: int = 0
    samples: int = 1
    compare_on: str = "data"                    # "data": a model's held-out task inputs where it has them; "random"
    input_specs: tuple[InputSpec, ...] = ()     # --input NAME:SHAPE[:DTYPE]
    input_files: tuple[Path, ...] = ()          # --inputs FILE.npz (one sample each)
    calib_files: tuple[Path, ...] = ()          # --calib FILE.npz: int8 calibration data
    calib_samples: int = 32                     # random calibration batches when no data is given
    weights: Path | None = None
    export_mode: str = "non-strict"             # --export: torch.export's tracing (artifacts.EXPORT_MODES)
    reference: str = "auto"                     # --reference for .onnx sources: auto, onnx or ort
    trust_pickle: bool = False
    rtol: float | None = None
    atol: float | None = None
    cache_dir: Path | None = None               # None: the default cache folder
    use_cache: bool = True
    golden: bool = True
    fp64_factor: float = 2.0                    # fp32 backends within this x PyTorch fp32's RMSE vs fp64 agree
    min_sqnr: float | None = None               # SQNR floor (dB) over the precision's default
    min_cosine: float | None = None             # cosine floor over the precision's default
    # per-layer divergence where the backend can give it: "auto" for backends that diverged,
    # "always", or "never"
    layerwise: str = "auto"
    isolate_layers: bool = False                # also run every layer on the reference's inputs
    max_memory: int | None = None               # --max-memory: bytes a layer-wise view may hold (None: half the machine's)
    bisect: bool = False                        # also bisect over unmodified prefix graphs
    advise: bool = True                         # mixed-precision advice for diverged low-precision variants
    task: str = "auto"                          # "auto": when the model or data declares one; "on"; "off"
    task_name: str | None = None                # --task NAME: built-in, entry point or module:function
    data_file: Path | None = None               # --data FILE.npz or DIR (ImageFolder): labelled task data
    preprocess: str | None = None               # --preprocess: how --data DIR images become inputs
    max_task_drop: float | None = None          # fail a backend whose task metric drops by more (points)
    nan_strict: bool = False                    # a NaN/Inf in an output diverges even where the reference has it
    isolate: bool = True                        # each backend in its own worker process
    timeout: str | None = None                  # --timeout: SECONDS or STAGE=SECONDS,... per stage
    partial_path: Path | None = None            # append-only log of finished backends (nothing lost)
    sysnoise: bool = False                      # also measure the SysNoise table (zoo models with a pipeline)
    keep_outputs: bool = False                  # the backend's raw outputs of the first sample on BackendResult.arrays
    latency_runs: int = 0                       # timed runs per backend after its results (0: no latency)
    latency_warmup: int = 5                     # untimed runs before them
    command: str | None = None
    progress: Callable[[str], None] | None = field(default=None, compare=False)

    def but(self, **changes) -> "CompareConfig":
        return replace(self, **changes)
