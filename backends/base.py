"""The adapter contract.

An adapter is a small class with plain class attributes (``name = "ort"``) and two build
steps, ``convert`` (the model in the runtime's own format, by its own route) and
``compile`` (a ready-to-run ``Compiled``). Building is separate from running: the
``Compiled`` object is a context manager whose ``run`` maps one input sample to the list
of output arrays, in the model's output order. The hooks get the model as a ``ModelView``
(``backendiff.contract``): the members listed there are all an adapter may read of it.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from backendiff.contract import ModelView
from backendiff.errors import BackendUnavailable, BadInput
from backendiff.specs import BackendSpec


class FailedNodes(NamedTuple):
    """What a failure says a route has no translation for at all, so that every node of such
    a type fails whatever its arguments: the operator types (``aten.sort.stable``; TVM names
    them without the namespace) as nodes of the program ``decompose(ep)`` gives (what the
    route translates), and, where only nodes with complex (True) or real (False) inputs fail,
    which."""
    decompose: Callable
    targets: frozenset
    complex: bool | None = None


#: torch.onnx's dispatcher: no translation of that overload for real (complex) inputs
ONNX_UNSUPPORTED = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>\. "
                              r"Failure message: No decompositions registered for the (real|complex)-valued input")


@dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    versions: dict = field(default_factory=dict)
    reason: str | None = None
    hint: str | None = None
    variants: tuple[str, ...] = ()
    description: str = ""


class Compiled:
    """A model compiled for one runtime, ready to run samples."""

    #: what the runtime actually did, read back from it (precision, route, device, ...)
    info: dict
    #: the file the runtime loaded (the deployed ONNX, IR or library), which the layer view
    #: and bisection of a quantized model read; None where there is none
    artifact: Path | None

    def __init__(self):
        self.info = {}
        self.artifact = None

    def run(self, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def positive_int(value: str) -> str | None:
    """Option validator: None when ``value`` is a whole number of at least 1, else why not."""
    return None if value.isdigit() and int(value) >= 1 else "expected a whole number of at least 1"


class Adapter:
    name: str = ""
    description: str = ""
    #: modules to import, mapped to the distribution whose version is reported
    packages: dict[str, str] = {}
    #: the ``pip install backendiff[EXTRA]`` that brings the runtime
    extra: str | None = None
    variants: tuple[str, ...] = ("fp32",)
    #: option key -> allowed values (None: any value)
    options: dict[str, tuple[str, ...] | None] = {}
    #: default option values, filled into the canonical spec
    defaults: dict[str, str] = {}
    #: part of the default set run when the user names no backends
    default: bool = True
    #: what a worker would import afresh on every run (a runtime's frontend, the exporter it
    #: needs): imported once by ``preload`` in the process that forks the workers, which
    #: inherit it (TVM's PyTorch frontend: 1.2 s per worker otherwise)
    preload_modules: tuple[str, ...] = ()
    #: variants whose ``keep=MODULE;...`` option keeps modules in fp32 (mixed-precision advice)
    keep_variants: tuple[str, ...] = ()

    #: variants computing below fp32 (what SysNoise's precision rows and the sweep compare)
    LOW_PRECISION = ("fp16", "bf16", "int8")

    @classmethod
    def low_precision_variants(cls) -> tuple[str, ...]:
        return tuple(v for v in cls.variants if v in cls.LOW_PRECISION)

    @classmethod
    def other_routes(cls) -> tuple[str, ...]:
        """``route=...`` options other than the default conversion route (SysNoise's route row)."""
        default = cls.defaults.get("route")
        return tuple(f"route={r}" for r in cls.options.get("route") or () if r != default)

    @classmethod
    def needs_gpu(cls, spec: BackendSpec) -> bool:
        """Whether this spec runs on an NVIDIA GPU (the sweep asks Ray for one)."""
        return False

    @classmethod
    def build_environment(cls, spec: BackendSpec) -> str | None:
        """What a compiled artifact of this spec is specific to beyond the model, the spec
        and the runtime versions (e.g. the host CPU's instruction set for code compiled for
        it): part of the artifact's cache key, so that a shared cache never serves another
        machine's build. None: portable."""
        return None

    @classmethod
    def threads(cls, spec: BackendSpec) -> int | str:
        """The intra-op threads this spec runs with (reported beside latency)."""
        return int(spec.option("threads")) if spec.option("threads") else "runtime default"

    def __init__(self, spec: BackendSpec):
        self.spec = spec
        self.cache_hit = False

    # -- availability ---------------------------------------------------------------
    @classmethod
    def install_hint(cls) -> str | None:
        return f"pip install 'backendiff[{cls.extra}]'" if cls.extra else None

    @classmethod
    def check(cls) -> None:
        """Raise BackendUnavailable when the runtime cannot run here."""
        for module, dist in cls.packages.items():
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise BackendUnavailable(f"{dist} is not installed ({e.name or module})", cls.install_hint()) from None
            except Exception as e:  # a broken install: present but fails to import
                raise BackendUnavailable(f"{dist} fails to import: {type(e).__name__}: {e}", cls.install_hint()) from None

    @classmethod
    def preload(cls) -> None:
        """Import ``preload_modules`` here, before workers fork; a module that fails to import
        is left for the worker to meet and report."""
        for module in cls.preload_modules:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - the worker reports it as its own failure
                pass

    @classmethod
    def failed_nodes(cls, error: dict) -> FailedNodes | None:
        """What in the model's program a failure of this adapter (``BackendResult.error``) is
        certainly about, or None: what lets ``backendiff ops`` tell the failing samples of a
        batch without running them apart. Here: torch.onnx's operators without a translation
        (the onnx routes); an adapter adds its own importer's."""
        from backendiff.artifacts import prepare_for_onnx

        if m := ONNX_UNSUPPORTED.search(error.get("message") or ""):
            return FailedNodes(prepare_for_onnx, frozenset({f"{m.group(1)}.{m.group(2)}"}),
                               complex=m.group(3) == "complex")
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        from importlib import metadata

        out = {}
        for dist in cls.packages.values():
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        return out

    @classmethod
    def availability(cls) -> Availability:
        try:
            cls.check()
        except BackendUnavailable as e:
            return Availability(cls.name, False, cls.versions(), e.reason, e.hint, cls.variants, cls.description)
        return Availability(cls.name, True, cls.versions(), None, None, cls.variants, cls.description)

    # -- spec -----------------------------------------------------------------------
    @classmethod
    def canonical(cls, spec: BackendSpec) -> BackendSpec:
        """Validate the spec against this adapter; fill in the default variant and options."""
        variant = spec.variant or cls.variants[0]
        if variant not in cls.variants:
            raise BadInput(f"unknown variant {variant!r} for backend {cls.name!r}; available: {', '.join(cls.variants)}")
        opts = dict(cls.defaults)
        for key, value in spec.options:
            if key not in cls.options:
                known = ", ".join(sorted(cls.options)) or "none"
                raise BadInput(f"unknown option {key!r} for backend {cls.name!r}; known options: {known}")
            allowed = cls.options[key]
            if callable(allowed):
                problem = allowed(value)
                if problem:
                    raise BadInput(f"bad value {value!r} for option {key!r} of {cls.name!r}: {problem}")
            elif allowed is not None and value not in allowed:
                raise BadInput(f"bad value {value!r} for option {key!r} of {cls.name!r}; allowed: {', '.join(allowed)}")
            opts[key] = value
        return BackendSpec(cls.name, variant, tuple(sorted(opts.items())))

    @property
    def variant(self) -> str:
        return self.spec.variant or self.variants[0]

    @property
    def needs_calibration(self) -> bool:
        return self.variant == "int8"

    def check_variant(self) -> None:
        """Raise BackendUnavailable when this variant cannot run here (say, bf16 on a CPU
        without bf16 support). Called after ``check``."""

    @property
    def precision(self) -> str:
        """The precision this spec asks for (judges which default tolerance applies)."""
        return self.variant

    def route(self, model: ModelView) -> str:
        """How this adapter gets the model: ``export`` (ExportedProgram) or ``onnx``."""
        route = self.spec.option("route") or "export"
        return "onnx" if not model.has_torch else route

    #: how ``layer_values`` obtains intermediates (said in the report); None: not supported
    layers_from: str | None = None
    #: the ``Compiled`` this adapter's ``compile`` returned, set by the runner right after it:
    #: what the layer hooks (``layer_values``, ``bisect``, ``deployed_fusion``) read of the
    #: deployed model, instead of state ``compile`` leaves on the adapter
    deployed: Compiled | None = None

    def layers_source(self, model: ModelView) -> str | None:
        """``layers_from`` for the route ``model`` really takes: an ONNX source goes the onnx
        route whatever the spec's default route says."""
        import copy

        from backendiff.specs import BackendSpec

        if self.route(model) != "onnx" or "route" not in self.options or self.spec.option("route") == "onnx":
            return self.layers_from
        shadow = copy.copy(self)
        shadow.spec = BackendSpec(self.spec.name, self.spec.variant,
                                  tuple((k, v) for k, v in self.spec.options if k != "route") + (("route", "onnx"),))
        return shadow.layers_from

    def layers_program(self, model: ModelView) -> str:
        """The FX program whose node names key this adapter's layer values (``model.program``):
        ``onnx`` (decomposed as the ONNX exporter does: the ONNX routes) or ``core_aten``
        (the ExportedProgram as an importer that runs the default decompositions sees it)."""
        return "onnx"

    def layer_values(self, model: ModelView, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Every FX node's output on this backend for one sample, keyed by node name
        (propagated mode), or None when this adapter cannot give them yet."""
        return None

    def layer_source(self, model: ModelView, sample: dict[str, np.ndarray], budget: int | None):
        """This backend's layer values as the streamed layer view reads them, in execution
        order (``backendiff.layers.HeldValues`` / ``ChunkedValues``), or None as
        ``layer_values``. ``budget``: the bytes of values one capture may hold, for an adapter
        that can capture chunks of layers over several runs (None: no bound). Default: every
        value at once, from ``layer_values``."""
        from backendiff.layers import HeldValues

        values = self.layer_values(model, sample)
        return None if values is None else HeldValues(values)

    def run_onnx(self, path: Path, originals: list[np.ndarray], named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run an ONNX file (a layer view of the model) with this spec's settings: the graph's
        first inputs get ``originals`` in order, the rest their value in ``named``. Returns
        every graph output by name, floating values as float32. Adapters that can run ONNX
        files implement it; it gives them isolated mode."""
        raise NotImplementedError

    @property
    def runs_onnx(self) -> bool:
        return type(self).run_onnx is not Adapter.run_onnx

    def lower_onnx(self, path: Path) -> Path:
        """The variant's lowering of an ONNX file, for runtimes that lower at the ONNX level."""
        return path

    def isolated_values(self, model: ModelView, sample: dict[str, np.ndarray], reference: dict[str, np.ndarray]):
        """Isolated mode: every layer run on the reference's values of its inputs, all in one
        compiled model. Returns FX node -> value, or None when not supported."""
        if not self.runs_onnx:
            return None
        path, boundary, _ = model.isolated_onnx()
        named = {name: reference[value] for name, value in boundary.items()}
        return self.run_onnx(self.lower_onnx(path), list(sample.values()), named)

    def bisect(self, model: ModelView, sample: dict[str, np.ndarray], out_of_tolerance) -> dict | None:
        """Bisection over unmodified prefixes through this adapter's deployed route (see
        ``backendiff.bisect``), keyed on the program of that route: {"first_diverging_cut":
        node or None, "probes", "candidates", "graph": what was cut, "program": its kind}. None
        when this adapter cannot run prefixes. Default: prefixes of the deployed ONNX file."""
        if not self.runs_onnx:
            return None
        from backendiff.bisect import bisect_backend

        layers, reference = model.reference_layers("onnx")
        found = bisect_backend(self, model.onnx_path(), [layer.node for layer in layers], sample, reference,
                               out_of_tolerance)
        return found | {"graph": "prefixes of the deployed ONNX export, each compiled unmodified with one output",
                        "program": "onnx"}

    def deployed_fusion(self) -> tuple[set[str] | None, dict[str, str] | None]:
        """What the deployed (unmodified) compiled model fused, by FX node name: (values it
        still has, or None if unknown; member -> the layer it is fused into, or None)."""
        return None, None

    # -- build and run ---------------------------------------------------------------
    def convert(self, model: ModelView, folder: Path) -> Any:
        raise NotImplementedError

    def compile(self, converted: Any, folder: Path) -> Compiled:
        raise NotImplementedError


def feeds_in_order(input_names: list[str], originals: list[np.ndarray], named: dict) -> list[np.ndarray]:
    """Arrays for a graph's inputs: the first ones positionally, the others by name."""
    out = list(originals[: len(input_names)])
    for name in input_names[len(out):]:
        out.append(np.asarray(named[name]))
    return out


def bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values given by their 16-bit patterns, widened exactly to float32 (numpy has
    no bfloat16; runtimes hand such outputs over as raw 16-bit words)."""
    return (np.ascontiguousarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def as_float32(values: dict) -> dict:
    return {k: (v.astype(np.float32) if v.dtype in (np.float16,) else v) for k, v in values.items()}
