"""The deployed engine read back with the engine inspector (detailed profiling verbosity):
what ran in which precision, which ONNX nodes (so PyTorch modules) each fused layer
computes (the report's ``engine_layers``), and what the engine fused by FX node (the
layer rows' ``fused_into``). The name parsing and mapping are in ``layers``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import layers as L


def engine_information(trt: Any, engine: Any) -> str | None:
    """The engine inspector's JSON for every layer, or None where it is not available."""
    try:
        inspector = engine.create_engine_inspector()
        return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    except Exception:
        return None


def onnx_index_of(onnx_path: Path, fx_names=None) -> L.OnnxIndex:
    import onnx

    return L.onnx_index(onnx.load(str(onnx_path), load_external_data=False), fx_names)


def read_back(trt: Any, engine: Any, onnx_path: Path) -> tuple[list[L.EngineLayer] | None, dict]:
    """(the engine's layers, or None where the inspector gives none; the ``info`` entries
    they make: ``runtime_precisions``, ``runtime_precision``, ``engine_layers``, or
    ``engine_layers_error``: the read-back is extra, the engine still runs)."""
    from backendiff.precision import summarize

    layers, info = None, {}
    text = engine_information(trt, engine)
    if text:
        try:
            layers = L.read_engine_information(text)
            counts = L.runtime_precisions(layers)
            if counts:
                info["runtime_precisions"] = counts
                info["runtime_precision"] = summarize(counts)
            info["engine_layers"] = L.layer_modules(L.map_layers(layers, onnx_index_of(onnx_path)))
        except Exception as e:
            info["engine_layers_error"] = f"{type(e).__name__}: {e}"
    return layers, info


def fusion(engine_layers: list[L.EngineLayer] | None, onnx_path: Path | None, fx_names=None):
    """What the engine fused, from its layers mapped to the ONNX export's nodes and their FX
    nodes (``fx_names``: those of the layer program, when known): (FX values it still
    computes, or None; member -> the layer it is fused into, or None)."""
    if not engine_layers or onnx_path is None:
        return None, None
    mapped = L.map_layers(engine_layers, onnx_index_of(onnx_path, fx_names))
    present, groups = L.fusion_groups(mapped)
    return present, groups or None
