"""Mixed-precision advice: the smallest set of PyTorch modules to keep in fp32 so that a
diverged low-precision variant comes back within tolerance, verified by re-running.

Candidates are the modules that own compute ops (Conv, Gemm, MatMul, ...) in the exported
graph, not only a prefix or suffix. Their order comes from the layer-wise view when the
backend gave one (NaN birth first, then growth), else from a measured sensitivity scan
(each module kept in fp32 alone, best output SQNR first, as AIMET's quant analyzer does).
Then greedy: keep modules in that order until the outputs are within tolerance; then prune
every module whose removal keeps them within. Every step is a real convert, compile and
run of the variant with ``keep=...``.
"""
from __future__ import annotations

from .specs import BackendSpec

MAX_CANDIDATES = 16


def with_keep(spec: BackendSpec, modules: list[str]) -> BackendSpec:
    options = tuple((k, v) for k, v in spec.options if k != "keep")
    if modules:
        options += (("keep", ";".join(modules)),)
    return BackendSpec(spec.name, spec.variant, options)


def ordered_by_layers(rows: list[dict], modules: list[str]) -> list[str]:
    """Candidate modules ordered by where the layer view puts the error: NaN birth first,
    then by growth; modules the view has no row for come last, in graph order."""
    from .onnx_graph import in_modules

    scored = []
    for m in modules:
        mine = [r for r in rows if r["module"] and in_modules(r["module"], [m])]
        if mine:
            scored.append((not any(r["nonfinite_born"] for r in mine), -max(r["growth"] for r in mine), m))
    ranked = [m for *_, m in sorted(scored)]
    return ranked + [m for m in modules if m not in ranked]


def _score(result) -> float:
    from .metrics import sqnr_value

    return min(sqnr_value(o.metrics) for o in result.outputs) if result.outputs else float("-inf")


def advise(spec: BackendSpec, result, modules: list[str], trial) -> dict | None:
    """``trial(spec) -> BackendResult`` runs the variant for real. Returns the advice, or a
    record of why none was found."""
    total, modules = len(modules), modules[:MAX_CANDIDATES]
    if not modules:
        return {"found": False, "reason": "no module with compute ops to keep in fp32 (no compute node of the "
                                          "model the backend ran carries a PyTorch module name)"}
    trials = 0
    if result.layers:
        order, method = ordered_by_layers(result.layers, modules), "layer growth"
    else:
        scores = {}
        for m in modules:
            scores[m] = _score(trial(with_keep(spec, [m])))
            trials += 1
        order, method = sorted(modules, key=lambda m: -scores[m]), "sensitivity (each module kept alone)"
    kept, last = [], None
    for m in order:
        kept.append(m)
        last = trial(with_keep(spec, kept))
        trials += 1
        if last.status == "ok":
            break
    else:
        # what was run is every candidate kept at once, not an all-fp32 model: ops outside the
        # candidates (functional ops of a parent module, say) still ran in low precision
        tried = with_keep(spec, kept)
        sqnr = _score(last)
        record = {"spec": tried.text, "status": last.status, "sqnr_db": sqnr,
                  "kept": (last.info or {}).get("kept")}
        if last.error:
            record["error"] = last.error.get("message")
        reason = (f"with all {len(kept)} candidate modules kept in fp32 at once ({tried.text}) the outputs are "
                  f"still {last.status} (worst output SQNR {sqnr:.1f} dB)"
                  + (f"; only the first {len(modules)} of {total} candidates were tried" if total > len(modules)
                     else "")
                  + f"; ops outside those modules still ran in {spec.variant}, so this was not an all-fp32 run")
        return {"found": False, "reason": reason, "method": method, "trials": trials, "candidates": len(modules),
                "tried": record}
    for m in list(kept):
        if len(kept) == 1:
            break
        fewer = [k for k in kept if k != m]
        attempt = trial(with_keep(spec, fewer))
        trials += 1
        if attempt.status == "ok":
            kept, last = fewer, attempt
    final = with_keep(spec, kept)
    return {
        "found": True, "keep": kept, "spec": final.text, "method": method, "trials": trials,
        "candidates": len(modules),
        "verified": {"status": last.status, "sqnr_db": _score(last),
                     "max_abs": max(o.metrics["max_abs"] for o in last.outputs)},
    }
