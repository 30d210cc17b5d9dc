"""Bisection mode: binary search over *unmodified* prefix graphs of the deployed ONNX model
for the first cut whose value diverges.

Marking every tensor as an output changes what a compiler fuses (Polygraphy's caveat).
Here each probe is the deployed graph cut at one layer (``onnx.utils.Extractor``: the
minimal prefix that computes it, with only that value as output), compiled and run as the
runtime would: O(log N) compiles. It assumes that once a value diverges, the values after
it do too (the usual bisection assumption; isolated mode checks layers one by one).
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from .layers import flat_out_spec


def bisect(candidates: list[str], diverges) -> tuple[int | None, int]:
    """Index of the first candidate for which ``diverges`` holds (None if the last does not),
    and the number of probes made."""
    if not candidates:
        return None, 0
    probes = 1
    if not diverges(candidates[-1]):
        return None, probes
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        probes += 1
        if diverges(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo, probes


def prefix_model(model, cut: str, folder: Path) -> Path:
    """The minimal prefix of ``model`` that computes ``cut``, with only it as output."""
    import onnx
    from onnx.utils import Extractor

    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    prefix = Extractor(model).extract_model(inputs, [cut])
    path = folder / f"prefix_{hashlib.sha256(cut.encode()).hexdigest()[:12]}.onnx"
    onnx.save(prefix, str(path))
    return path


def cut_candidates(model, layer_nodes: list[str]) -> list[str]:
    """The layers whose values the deployed graph still has (fused ones have no cut), in order."""
    values = {o for n in model.graph.node for o in n.output}
    return [n for n in layer_nodes if n in values]


def program_prefix(ep, cut: str):
    """A copy of an ExportedProgram that returns only node ``cut``'s value, everything that
    does not lead to it removed: the unmodified prefix of the program, for runtimes that
    import the program itself."""
    from torch.export.graph_signature import OutputKind, OutputSpec, TensorArgument

    from .layers import copy_sharing_weights

    ep = copy_sharing_weights(ep)
    graph = ep.graph_module.graph
    node = next(n for n in graph.nodes if n.name == cut)
    out = next(n for n in graph.nodes if n.op == "output")
    out.args = ((node,),)
    graph.eliminate_dead_code()
    ep.graph_module.recompile()
    ep.graph_signature.output_specs[:] = [OutputSpec(kind=OutputKind.USER_OUTPUT, arg=TensorArgument(name=cut),
                                                     target=None)]
    return flat_out_spec(ep)


def bisect_program(run_prefix, ep, layer_nodes: list[str], reference: dict, out_of_tolerance) -> dict:
    """Bisection over prefixes of an ExportedProgram (``program_prefix``); ``run_prefix(ep)``
    compiles one as the deployed route does and returns its one value."""
    import torch

    values = {n.name for n in ep.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)}
    candidates = [n for n in layer_nodes if n in values and n in reference]

    def diverges(cut: str) -> bool:
        return out_of_tolerance(run_prefix(program_prefix(ep, cut)), reference[cut])

    index, probes = bisect(candidates, diverges)
    return {"first_diverging_cut": candidates[index] if index is not None else None, "probes": probes,
            "candidates": len(candidates)}


def bisect_backend(adapter, deployed_onnx: Path, layer_nodes: list[str], sample: dict, reference: dict,
                   out_of_tolerance, carriers=None) -> dict:
    """Bisection over prefixes of an ONNX model run by ``adapter``. ``carriers(model)`` maps
    a model value to the layer it stands for (a quantized model's DequantizeLinear output);
    without it, values are named after their layers and each prefix is lowered as deployed
    (``adapter.lower_onnx``)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(deployed_onnx)))
    if carriers is None:
        cut_of = {n: n for n in cut_candidates(model, layer_nodes)}
        lower = adapter.lower_onnx
    else:
        cut_of = {node: value for value, node in carriers(model).items()}
        lower = None
    candidates = [n for n in layer_nodes if n in cut_of and n in reference]
    with tempfile.TemporaryDirectory(prefix="backendiff-bisect-") as tmp:
        def diverges(node: str) -> bool:
            path = prefix_model(model, cut_of[node], Path(tmp))
            value = adapter.run_onnx(lower(path) if lower else path, list(sample.values()), {})[cut_of[node]]
            return out_of_tolerance(value, reference[node])

        index, probes = bisect(candidates, diverges)
    return {"first_diverging_cut": candidates[index] if index is not None else None, "probes": probes,
            "candidates": len(candidates)}
