"""Mixed-precision advice: the smallest set of PyTorch modules to keep in fp32 so that a
diverged low-precision variant comes back within tolerance, verified by re-running.

Candidates partition what runs in low precision: every leaf module with arithmetic, and the
functional ops each parent module computes itself (``<block>``, ``<top>`` for the model's
own), not only a prefix or suffix; the group of the first divergence and of its tensor's
consumers go first. Their order comes from the layer-wise view when the
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


def ordered_by_layers(rows: list[dict], entries: list[str], first=()) -> list[str]:
    """Candidate ``keep=`` entries ordered by where the layer view puts the error: ``first``
    (the group of the first divergence, then the groups of its consumers: a tensor that
    quantizes badly is quantized at its readers' inputs), NaN birth, then growth; entries
    the view has no row for come last, in graph order."""
    from .onnx_graph import row_matches

    lead = [e for e in dict.fromkeys(first) if e in entries]
    scored = []
    for i, e in enumerate(entries):    # ties keep graph order
        mine = [r for r in rows if row_matches(r["module"] or "", r["node"], e)]
        if mine and e not in lead:
            scored.append((not any(r["nonfinite_born"] for r in mine), -max(r["growth"] for r in mine), i, e))
    ranked = lead + [e for *_, e in sorted(scored)]
    return ranked + [e for e in entries if e not in ranked]


def _score(result) -> float:
    from .metrics import sqnr_value

    return min(sqnr_value(o.metrics) for o in result.outputs) if result.outputs else float("-inf")


def _record(spec: BackendSpec, result) -> dict:
    record = {"spec": spec.text, "status": result.status, "sqnr_db": _score(result),
              "kept": (result.info or {}).get("kept")}
    if result.error:
        record["error"] = result.error.get("message")
    return record


def advise(spec: BackendSpec, result, entries: list[str], trial, first=(), everything=None) -> dict | None:
    """``trial(spec) -> BackendResult`` runs the variant for real. ``entries`` are the
    candidate ``keep=`` entries (modules, ``<module>`` own ops, ``@node``), ``first`` those to
    try before the layer order, ``everything`` the entries that keep the whole graph (the
    all-fp32 run that must be within tolerance before "no fix" is said). Returns the
    advice, or a record of why none was found."""
    total = len(entries)
    if not entries:
        return {"found": False, "reason": "no op to keep in fp32 (no compute node of the model the backend ran "
                                          "carries a PyTorch module name)"}
    trials = 0
    if result.layers:
        order, method = ordered_by_layers(result.layers, entries, first), "layer growth"
    else:
        scores = {}
        for m in entries[:MAX_CANDIDATES]:
            scores[m] = _score(trial(with_keep(spec, [m])))
            trials += 1
        order, method = sorted(scores, key=lambda m: -scores[m]), "sensitivity (each candidate kept alone)"
    order = order[:MAX_CANDIDATES]
    kept, last = [], None
    for m in order:
        kept.append(m)
        last = trial(with_keep(spec, kept))
        trials += 1
        if last.status == "ok":
            break
    else:
        return no_fix(spec, kept, last, trials, method, total, everything, trial)
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
        "candidates": total,
        "verified": {"status": last.status, "sqnr_db": _score(last),
                     "max_abs": max(o.metrics["max_abs"] for o in last.outputs)},
    }


def no_fix(spec: BackendSpec, kept: list[str], last, trials: int, method: str, total: int, everything, trial) -> dict:
    """The record of a search that found no set: what keeping every tried candidate gave, and
    the all-fp32 run (every op kept). All-fp32 within tolerance means the candidates ran out;
    all-fp32 still outside it means the variant changes more than precision: a finding to
    report, not advice."""
    tried = with_keep(spec, kept)
    out = {"found": False, "method": method, "trials": trials, "candidates": total, "tried": _record(tried, last)}
    head = f"with {len(kept)} of {total} candidates kept in fp32 at once ({tried.text}) the outputs are still " \
           f"{last.status} (worst output SQNR {_score(last):.1f} dB)"
    if everything and set(everything) != set(kept):
        whole = with_keep(spec, list(everything))
        last = trial(whole)
        out["trials"] += 1
        out["all_fp32"] = _record(whole, last)
    else:
        out["all_fp32"] = out["tried"]
    if everything is None:
        out["reason"] = head + "; the all-fp32 run was not tried"
    elif out["all_fp32"]["status"] not in ("ok", "diverged", "vacuous"):
        out["reason"] = (head + f"; the all-fp32 run ({out['all_fp32']['spec'][:80]}…) could not run: "
                         f"{(out['all_fp32'].get('error') or '')[:200]}")
    elif out["all_fp32"]["status"] == "ok":
        out["reason"] = (head + f"; with every op kept in fp32 they are within tolerance, so a fix exists beyond "
                         f"the {len(kept)} candidates tried (raise the budget or keep larger modules)")
    else:
        out["bug"] = True
        out["reason"] = (head + f"; even with every op kept in fp32 the outputs are {out['all_fp32']['status']} "
                         f"(worst output SQNR {out['all_fp32']['sqnr_db']:.1f} dB): the {spec.variant} tool chain "
                         "changes the model beyond precision — a bug to report, not a precision choice")
    return out
