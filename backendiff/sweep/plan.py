"""Planning a sweep: its models, specs and options (from the command line or a TOML file)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import BadInput

SCHEMA = "backendiff.sweep/1"
CELL_SCHEMA = "backendiff.sweep-cell/1"
LOST = "lost"          # the cell's worker died or its task was lost: no report
ERROR = "error"        # backendiff raised inside the cell (a bad model or data)
NOT_RUN = "not run"    # planned, but no record of it (never ran, lost from the store)
# RAN (report): ok, diverged, vacuous (ran, but the reference output is degenerate: the
# comparison says nothing); every other status makes the sweep's exit code 3

# keys a sweep file (or --option) may set, for every model or per model -> CompareConfig field
OPTION_KEYS = {
    "samples": ("samples", int), "seed": ("seed", int), "calib_samples": ("calib_samples", int),
    "atol": ("atol", float), "rtol": ("rtol", float), "max_task_drop": ("max_task_drop", float),
    "data": ("data_file", str), "preprocess": ("preprocess", str), "task": ("task", str),
    "weights": ("weights", str), "inputs": ("input_files", list), "calib": ("calib_files", list),
    "input": ("input_specs", list), "layerwise": ("layerwise", str), "golden": ("golden", bool),
    "advise": ("advise", bool), "timeout": ("timeout", str), "nan_strict": ("nan_strict", bool),
    "compare_on": ("compare_on", str),
}
CHOICES = {"compare_on": ("data", "random"), "layerwise": ("auto", "always", "never")}
PATH_KEYS = {"data", "weights", "inputs", "calib"}


@dataclass(frozen=True)
class ModelEntry:
    model: str                                   # zoo:NAME, a file, module:factory
    options: dict = field(default_factory=dict)  # per-model OPTION_KEYS over the sweep's
    metric: str | None = None                    # the task's number to score by (default its headline)

    @property
    def label(self) -> str:
        return self.model


@dataclass(frozen=True)
class SweepPlan:
    models: tuple[ModelEntry, ...]
    specs: tuple[str, ...]
    options: dict = field(default_factory=dict)      # OPTION_KEYS for every model
    warmup: int = 5
    runs: int = 20
    threads: int = 1                                  # intra-op threads of every backend
    resources: dict = field(default_factory=dict)     # spec text or backend name -> Ray resources
    plugins: tuple[str, ...] = ()                     # modules imported in every worker first

    def cells(self) -> list[tuple[ModelEntry, str]]:
        return [(m, s) for m in self.models for s in self.specs]


# -- planning ---------------------------------------------------------------------------
def check_options(options: dict, where: str, base: Path | None) -> dict:
    """Validate OPTION_KEYS values; relative paths are resolved against ``base``."""
    out = {}
    for key, value in options.items():
        if key not in OPTION_KEYS:
            raise BadInput(f"{where}: unknown option {key!r} (options: {', '.join(sorted(OPTION_KEYS))})")
        _, kind = OPTION_KEYS[key]
        if kind is list:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BadInput(f"{where}: option {key!r} must be a string or a list of strings")
        elif kind is bool:
            if not isinstance(value, bool):
                raise BadInput(f"{where}: option {key!r} must be true or false")
        elif kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise BadInput(f"{where}: option {key!r} must be a number{' (whole)' if kind is int else ''}")
            value = kind(value)
        elif not isinstance(value, str):
            raise BadInput(f"{where}: option {key!r} must be a string")
        if key in CHOICES and value not in CHOICES[key]:
            raise BadInput(f"{where}: option {key!r} must be one of {', '.join(CHOICES[key])}, not {value!r}")
        if key in PATH_KEYS and base is not None:
            value = [str(base / v) for v in value] if isinstance(value, list) else str(base / value)
        out[key] = value
    if "samples" in out and out["samples"] < 1:
        raise BadInput(f"{where}: samples must be at least 1")
    return out


def _positive(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInput(f"sweep: {what} must be a whole number >= {minimum}, not {value!r}")
    return value


def check_specs(specs: Iterable[str]) -> tuple[str, ...]:
    """Every spec parses and names a known backend with known variant/options."""
    from ..compare import resolve_specs

    specs = tuple(s.strip() for text in specs for s in split_specs(text))
    if not specs:
        raise BadInput("sweep: no backend specs")
    resolve_specs(list(specs))
    if len(set(specs)) != len(specs):
        raise BadInput("sweep: a backend spec is listed twice")
    return specs


def split_specs(text: str) -> list[str]:
    """``"ort,ort:int8,openvino:fp32,route=onnx"`` -> one text per spec (options stay with theirs)."""
    from ..specs import parse_specs

    return [s.text for s in parse_specs(text)]


def make_plan(models: Iterable[str | ModelEntry], specs: Iterable[str], options: dict | None = None, *,
              warmup: int = 5, runs: int = 20, threads: int = 1, resources: dict | None = None,
              plugins: Iterable[str] = ()) -> SweepPlan:
    plugins = tuple(plugins)
    import_plugins(plugins)               # their backends are checked and keyed here too
    entries = tuple(m if isinstance(m, ModelEntry) else ModelEntry(str(m)) for m in models)
    if not entries:
        raise BadInput("sweep: no models")
    if len({m.model for m in entries}) != len(entries):
        raise BadInput("sweep: a model is listed twice")
    return SweepPlan(models=entries, specs=check_specs(specs), options=check_options(options or {}, "sweep", None),
                     warmup=_positive(warmup, "warmup", 0), runs=_positive(runs, "runs"),
                     threads=_positive(threads, "threads"), resources=check_resources(resources or {}),
                     plugins=plugins)


def import_plugins(modules: Iterable[str]) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise BadInput(f"sweep: cannot import plugin {module!r}: {e}") from None


def check_resources(resources: dict) -> dict:
    """``{spec or backend: {RESOURCE: amount}}``; ``CPU``/``GPU`` become Ray's num_cpus/num_gpus."""
    if not isinstance(resources, dict):
        raise BadInput("sweep: resources must be a table of backend -> {resource = amount}")
    for target, wants in resources.items():
        if not isinstance(wants, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in wants.values()):
            raise BadInput(f"sweep: resources for {target!r} must be a table of resource = non-negative amount")
    return {str(k): dict(v) for k, v in resources.items()}


def load_sweep_file(path: str | Path) -> SweepPlan:
    """A TOML sweep file::

        backends = ["ort", "ort:int8", "openvino", "openvino:int8", "tvm"]
        plugins = []                      # modules imported in every worker
        [latency]
        warmup = 5
        runs = 20
        threads = 1
        [options]                         # for every model
        samples = 2
        [resources."openvino:int8"]       # Ray: only on nodes with this custom resource
        "cpu-xeon" = 0.01
        [[models]]
        model = "zoo:digits-cnn"
        [[models]]
        model = "zoo:mspn-tiny"
        task = "pose"

    Relative paths (models that are files, data, inputs, weights) are relative to the file.
    """
    import tomllib

    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"sweep file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"sweep file {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"sweep file {path} is not valid TOML: {e}") from None
    known = {"backends", "models", "options", "latency", "resources", "plugins"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise BadInput(f"sweep file {path}: unknown key(s) {', '.join(unknown)} (keys: {', '.join(sorted(known))})")
    base = path.parent
    models = []
    for i, m in enumerate(doc.get("models") or []):
        if not isinstance(m, dict) or not isinstance(m.get("model"), str):
            raise BadInput(f"sweep file {path}: models[{i}] needs model = \"zoo:NAME\" or a path")
        name = m["model"]
        if not name.startswith("zoo:") and (base / name.partition(":")[0]).exists():
            name = str(base / name)
        metric = m.get("metric")
        if metric is not None and not isinstance(metric, str):
            raise BadInput(f"sweep file {path}: models[{i}]: metric must be a string (a key of the task's result)")
        models.append(ModelEntry(name, check_options({k: v for k, v in m.items() if k not in ("model", "metric")},
                                                     f"sweep file {path}: models[{i}]", base), metric))
    backends = doc.get("backends") or []
    if isinstance(backends, str):
        backends = [backends]
    latency = doc.get("latency") or {}
    unknown = sorted(set(latency) - {"warmup", "runs", "threads"})
    if unknown:
        raise BadInput(f"sweep file {path}: unknown [latency] key(s) {', '.join(unknown)}")
    return make_plan(models, backends, check_options(doc.get("options") or {}, f"sweep file {path}: [options]", base),
                     warmup=latency.get("warmup", 5), runs=latency.get("runs", 20), threads=latency.get("threads", 1),
                     resources=doc.get("resources") or {}, plugins=doc.get("plugins") or ())


