"""The layer-wise view on TensorRT: every FX node's value from an engine built, with the
deployed engine's settings, on the ONNX export without the exporter's optimizer, read as
debug tensors (``debug``) or as network outputs (``outputs``), and the sentence the report
gives for how. What a call found (the method, unreadable debug tensors, the FX names that
key the values) is recorded in the deployed engine's ``info["layer_view"]``, where the
sentence and the fusion read it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from backendiff.contract import ModelView
from backendiff.specs import BackendSpec

from ..base import as_float32
from .build import cached_engine_path, load_engine
from .debug import choose_layer_method, has_debug_tensors
from .probe import current_device
from .runner import TrtCompiled

#: the deployed engine's ``info`` key of what the last ``layer_values`` call found
VIEW = "layer_view"


def view_of(deployed) -> dict:
    """What the last ``layer_values`` on this deployed engine recorded ({} before one)."""
    return (deployed.info.get(VIEW) or {}) if deployed is not None else {}


def describe(view: dict) -> str:
    """``layers_from`` for a recorded view: the method it used (before a call: what ``auto`` tries)."""
    base = ("TensorRT on the ONNX export without the exporter's optimizer, same builder settings, ")
    caveat = (" (this can change what TensorRT fuses and, in low precision, forces values out in the "
              "engine's types; final outputs are measured on the unmodified engine)")
    method = view.get("method")
    if method == "debug":
        lost = view.get("debug_errors") or []
        return base + "every FX node's value marked as a debug tensor (mark_debug, read by an IDebugListener)" \
            + caveat + (f"; {len(lost)} debug tensor(s) could not be read, e.g. {lost[0]}" if lost else "")
    if method == "outputs":
        return base + "every FX node's value marked as a network output" + caveat
    return base + ("every FX node's value as a debug tensor (mark_debug + IDebugListener) where this "
                   "TensorRT has them, else marked as a network output") + caveat


def layer_values(spec: BackendSpec, deployed, model: ModelView, sample) -> dict:
    """Every FX node's value for one sample (float32), from a layer engine cached beside the
    ``deployed`` one, built from the same calibration data and sample shapes."""
    import tensorrt as trt

    if deployed is None:
        raise RuntimeError("the deployed engine was not built in this process (the layer engine is built from "
                           "its source, beside it)")
    view = deployed.info.setdefault(VIEW, {})
    plain, names = model.layer_onnx()
    view["fx_names"] = list(names)
    method = choose_layer_method(spec.option("layers"), has_debug_tensors(trt), trt.__version__)
    path = plain if method == "debug" else model.instrumented_onnx()[0]
    device, capability = current_device()
    source = deployed.source
    folder = deployed.folder or Path(plain).parent
    where = cached_engine_path(trt, spec, Path(path), folder, device, capability,
                               [source.calibration_sha, method], kind="layers")
    engine, runtime, _ = load_engine(trt, spec, replace(source, onnx_path=Path(path)), where,
                                     debug_names=names if method == "debug" else ())
    view["method"] = method
    with TrtCompiled(engine, runtime) as compiled:
        if method == "debug":
            values, view["debug_errors"] = compiled.run_debug(trt, sample, names)
            if view["debug_errors"] and not values:
                raise RuntimeError(f"debug tensors could not be read: {view['debug_errors'][0]}")
        else:
            values = compiled.run_named(sample)
    wanted = set(names)
    return as_float32({k: v for k, v in values.items() if k in wanted})
