"""The TensorRT adapter: the spec's variants and options, and the adapter contract's steps,
each delegating to this package's modules. It keeps no state between its steps: ``convert``
returns a ``TrtSource``, ``compile`` a ``TrtCompiled`` that carries what the layer hooks
read of the deployed engine (``self.deployed``, set by the runner).
"""
from __future__ import annotations

from pathlib import Path

from backendiff.contract import ModelView
from backendiff.errors import BackendUnavailable
from backendiff.specs import BackendSpec

from ..base import Adapter, Compiled, positive_int
from . import config, inspector, layerwise, probe
from .build import cached_engine_path, load_engine
from .debug import LAYER_METHODS
from .runner import TrtCompiled
from .source import as_source, source_of


class TrtAdapter(Adapter):
    name = "trt"
    description = "NVIDIA TensorRT 10 on the first CUDA device, from the dynamo ONNX export"
    packages = {"tensorrt": "tensorrt"}
    extra = "trt"
    variants = config.VARIANTS
    options = {"opt_level": config.OPT_LEVELS, "workspace_mb": positive_int, "keep": None,
               "precision_constraints": config.CONSTRAINT_MODES, "layers": LAYER_METHODS}
    #: ``keep=MODULE;MODULE``: those PyTorch modules' layers constrained to fp32
    keep_variants = config.KEEP_VARIANTS
    defaults = {"opt_level": "3"}

    @classmethod
    def needs_gpu(cls, spec) -> bool:
        return True

    @classmethod
    def check(cls) -> None:
        probe.check_runtime(cls.install_hint())

    def check_variant(self) -> None:
        probe.check_variant(self.variant)

    @classmethod
    def unavailable_variants(cls) -> dict[str, tuple[str, str | None]]:
        """Variant -> (why, hint) for every variant that cannot run here (all of them, with
        the backend's own reason, when TensorRT cannot run at all)."""
        try:
            cls.check()
        except BackendUnavailable as e:
            return {v: (e.reason, e.hint) for v in cls.variants}
        out = {}
        for variant in cls.variants:
            try:
                cls(BackendSpec(cls.name, variant)).check_variant()
            except BackendUnavailable as e:
                out[variant] = (e.reason, e.hint)
        return out

    @classmethod
    def canonical(cls, spec: BackendSpec) -> BackendSpec:
        out = super().canonical(spec)
        config.check_options(out)
        return out

    @property
    def precision(self) -> str:
        # strongly typed: the ONNX graph's own types, fp32 for the dynamo export
        return "fp32" if self.variant == "strongly_typed" else self.variant

    def route(self, model: ModelView) -> str:
        return "onnx"

    # -- convert and compile -----------------------------------------------------------
    def convert(self, model: ModelView, folder: Path):
        return source_of(model, self.spec)

    def compile(self, converted, folder: Path) -> Compiled:
        import tensorrt as trt

        source = as_source(converted)
        device, capability = probe.current_device()
        engine_path = cached_engine_path(trt, self.spec, source.onnx_path, folder, device, capability,
                                         source.calibration_sha)
        engine, runtime, self.cache_hit = load_engine(trt, self.spec, source, engine_path)
        out = TrtCompiled(engine, runtime)
        out.artifact, out.source, out.folder = engine_path, source, Path(folder)
        out.info = {"variant": self.variant, "tensorrt": trt.__version__, "device": device,
                    "compute_capability": f"{capability[0]}.{capability[1]}",
                    "opt_level": int(self.spec.option("opt_level", "3")), "engine": engine_path.name}
        if source.kept:
            out.info["kept"] = dict(source.kept)  # ONNX nodes of the export each kept module covers
        out.engine_layers, read = inspector.read_back(trt, engine, source.onnx_path)
        out.info.update(read)
        return out

    # -- layer-wise view: reads the deployed engine (self.deployed) --------------------------
    @property
    def layers_from(self) -> str | None:
        return layerwise.describe(layerwise.view_of(self.deployed))

    def layer_values(self, model: ModelView, sample):
        return layerwise.layer_values(self.spec, self.deployed, model, sample)

    def deployed_fusion(self):
        """What the deployed engine fused, from its layers (engine inspector) mapped to the
        ONNX export's nodes and their FX nodes."""
        deployed = self.deployed
        if deployed is None:
            return None, None
        return inspector.fusion(deployed.engine_layers, deployed.source.onnx_path,
                                layerwise.view_of(deployed).get("fx_names"))
