"""Charts of a report as inline SVG (matplotlib), for the HTML report.

Pure functions from report data (the JSON dict) to SVG text: no pyplot state, no files, no
network. The SVG is deterministic for the same data (fixed hash salt, no date), so the
HTML rendered from a saved run is byte-identical to the one written by ``compare``.
"""
from __future__ import annotations

import io
import re

IDENTICAL_DB = 150.0      # where SQNR is undefined because the tensors are identical
FLOOR_DB = -20.0          # all noise, or no SQNR at all (NaN/Inf patterns differ), is drawn here


def _sqnr(metrics: dict) -> float:
    from .metrics import sqnr_value

    return max(min(sqnr_value(metrics, identical=IDENTICAL_DB, undefined=FLOOR_DB), IDENTICAL_DB), FLOOR_DB)


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "backendiff", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]          # drop the XML prolog and doctype: inline in HTML
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)   # RDF creator block


def layer_key(row: dict) -> str:
    return f"{row.get('module') or '<top>'} · {row.get('op_type')}"


def depth_chart(backend: dict, width: float = 10.0) -> str:
    """SQNR of every layer against depth for one backend, with the fp32-vs-fp64 floor of the
    reference (where known), fused layers drawn hollow, the first divergence and the first
    NaN/Inf marked. Higher is better; identical tensors sit at the top line."""
    from matplotlib.figure import Figure

    rows = backend["layers"]
    xs = list(range(len(rows)))
    ys = [_sqnr(r["metrics"]) for r in rows]
    fig = Figure(figsize=(width, 3.2))
    ax = fig.subplots()
    ax.plot(xs, ys, color="#1f77b4", lw=1.2, zorder=2, label=f"{backend['spec']} vs reference")
    fused = [i for i, r in enumerate(rows) if r.get("fused_into")]
    plain = [i for i in xs if i not in set(fused)]
    ax.scatter([xs[i] for i in plain], [ys[i] for i in plain], s=14, color="#1f77b4", zorder=3)
    if fused:
        ax.scatter([xs[i] for i in fused], [ys[i] for i in fused], s=22, facecolors="white",
                   edgecolors="#1f77b4", zorder=3, label="fused in the deployed model")
    floor = [(i, r["fp64_baseline"].get("sqnr_db")) for i, r in enumerate(rows) if r.get("fp64_baseline")]
    floor = [(i, min(v, IDENTICAL_DB) if v is not None else IDENTICAL_DB) for i, v in floor]
    if floor:
        ax.plot([i for i, _ in floor], [v for _, v in floor], color="#999999", lw=1, ls="--", zorder=1,
                label="torch fp32 vs fp64 (rounding floor)")
    past = [i for i, r in enumerate(rows) if not r.get("within_tolerance", True)]
    if past:
        ax.scatter([xs[i] for i in past], [ys[i] for i in past], s=30, marker="s", facecolors="none",
                   edgecolors="#ff7f0e", zorder=4, label="past tolerance")
    fd = backend.get("first_divergence")
    if fd:
        at = next((i for i, r in enumerate(rows) if r.get("index") == fd.get("index")), None)
        if at is not None:
            ax.axvline(at, color="#d62728", lw=1.2, ls=":", zorder=1)
            ax.annotate(f"divergence starts: {fd.get('module') or '<top>'}", (at, ys[at]), xytext=(6, -14),
                        textcoords="offset points", color="#d62728", fontsize=8)
    born = next((i for i, r in enumerate(rows) if r.get("nonfinite_born")), None)
    if born is not None:
        ax.scatter([born], [ys[born]], s=90, marker="X", color="#d62728", zorder=5, label="first NaN/Inf born")
    ax.set_ylabel("SQNR dB (higher = closer)")
    ax.set_xlabel("layer (reference order)")
    step = max(1, len(rows) // 40)
    ax.set_xticks(xs[::step])
    ax.set_xticklabels([rows[i].get("module") or "<top>" for i in xs[::step]], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.5, max(len(rows) - 0.5, 0.5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _svg(fig)


def heatmap(backends: list[dict]) -> str:
    """Layer x backend SQNR: one row per backend that has a layer view, one column per layer
    (the union of their layers in reference order). Red is error, blank means the backend
    has no such layer; the first divergence of each backend is boxed."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    with_layers = [b for b in backends if b.get("layers")]
    keys: list[str] = []
    for b in with_layers:
        for r in sorted(b["layers"], key=lambda r: r.get("index", 0)):
            k = layer_key(r)
            if k not in keys:
                keys.append(k)
    col = {k: i for i, k in enumerate(keys)}
    grid = np.full((len(with_layers), len(keys)), np.nan)
    for row, b in enumerate(with_layers):
        for r in b["layers"]:
            grid[row, col[layer_key(r)]] = _sqnr(r["metrics"])
    width = min(max(6.0, 0.16 * len(keys) + 3.0), 24.0)
    fig = Figure(figsize=(width, 0.45 * len(with_layers) + 2.2))
    ax = fig.subplots()
    image = ax.pcolormesh(np.arange(len(keys) + 1) - 0.5, np.arange(len(with_layers) + 1) - 0.5,
                          np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0.0, vmax=IDENTICAL_DB,
                          edgecolors="white", linewidth=0.3)
    ax.invert_yaxis()
    for row, b in enumerate(with_layers):
        fd = b.get("first_divergence")
        if fd:
            k = layer_key(fd)
            if k in col:
                ax.add_patch(Rectangle((col[k] - 0.5, row - 0.5), 1, 1, fill=False, ec="black", lw=1.6))
    ax.set_yticks(range(len(with_layers)))
    ax.set_yticklabels([b["spec"] for b in with_layers], fontsize=8)
    step = max(1, len(keys) // 60)
    ax.set_xticks(range(0, len(keys), step))
    ax.set_xticklabels([keys[i].split(" · ")[0] for i in range(0, len(keys), step)], rotation=60, ha="right",
                       fontsize=7)
    cbar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    cbar.set_label(f"SQNR dB ({IDENTICAL_DB:g} = identical)", fontsize=8)
    return _svg(fig)


def sysnoise_bars(result: dict) -> str:
    """Δ (clean − noisy) of every noise on every backend as grouped horizontal bars; rows
    that could not be measured are left empty."""
    import numpy as np
    from matplotlib.figure import Figure

    rows = [r for r in result["rows"] if r["noise"] != "clean"]
    backends = result["backends"]
    fig = Figure(figsize=(9.0, 0.28 * len(rows) * max(1, len(backends)) ** 0.5 + 1.5))
    ax = fig.subplots()
    height = 0.8 / max(1, len(backends))
    ys = np.arange(len(rows))
    for i, b in enumerate(backends):
        values = [r["cells"][b].get("delta") for r in rows]
        ax.barh(ys + i * height, [v if v is not None else 0.0 for v in values], height, label=b)
    ax.set_yticks(ys + height * (len(backends) - 1) / 2)
    ax.set_yticklabels([r["noise"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"Δ {result['metric']} (clean − noisy, points; right = the noise costs)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def sweep_heatmap(board: dict) -> str:
    """Model x spec: colour is the cell's worst output SQNR (grey where it did not run),
    the text its status, task delta and median latency."""
    import numpy as np
    from matplotlib.figure import Figure

    models, specs = board["models"], board["specs"]
    grid = np.full((len(models), len(specs)), np.nan)
    for i, m in enumerate(models):
        for j, s in enumerate(specs):
            cell = board["matrix"].get(m, {}).get(s, {})
            if cell.get("status") in ("ok", "diverged") and (cell.get("sqnr_db") is not None or cell.get("identical")):
                grid[i, j] = _sqnr(cell)
    fig = Figure(figsize=(min(max(6.0, 1.45 * len(specs) + 2.5), 22.0), 0.62 * len(models) + 1.6))
    ax = fig.subplots()
    ax.set_facecolor("#d9d9d9")
    image = ax.pcolormesh(np.arange(len(specs) + 1) - 0.5, np.arange(len(models) + 1) - 0.5,
                          np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0.0, vmax=IDENTICAL_DB,
                          edgecolors="white", linewidth=1.0)
    ax.invert_yaxis()
    for i, m in enumerate(models):
        for j, s in enumerate(specs):
            cell = board["matrix"].get(m, {}).get(s)
            if cell is None:
                continue
            lines = [str(cell.get("status"))]
            if cell.get("task"):
                lines.append(f"Δ {cell['task']['delta']:+.2f}{cell['task'].get('unit') or ''}")
            elif cell.get("sqnr_db") is not None:
                lines.append(f"{cell['sqnr_db']:.0f} dB")
            if cell.get("latency"):
                lines.append(f"{cell['latency']['median_ms']:.3g} ms")
            ax.text(j, i, "\n".join(lines), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(specs)))
    ax.set_xticklabels(specs, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels(models, fontsize=8)
    cbar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    cbar.set_label("worst output SQNR dB", fontsize=8)
    fig.tight_layout()
    return _svg(fig)


def latency_scatter(board: dict, model: str) -> str | None:
    """One model: median latency (with its 10-90 % spread) against the task delta, or the
    worst SQNR where the model has no task; one point per spec. None when nothing was timed."""
    from matplotlib.figure import Figure

    row = board["matrix"].get(model, {})
    points = [(s, c) for s, c in row.items() if c.get("latency")]
    if not points:
        return None
    use_task = all(c.get("task") for _, c in points)
    fig = Figure(figsize=(5.6, 3.4))
    ax = fig.subplots()
    for spec, c in points:
        lat = c["latency"]
        y = c["task"]["delta"] if use_task else _sqnr(c)
        ax.errorbar([lat["median_ms"]], [y], xerr=[[lat["median_ms"] - lat["p10_ms"]], [lat["p90_ms"] - lat["median_ms"]]],
                    fmt="o", ms=5, capsize=2, label=spec)
        ax.annotate(spec, (lat["median_ms"], y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"median latency ms (batch {points[0][1]['latency'].get('batch', 1)}, log)", fontsize=8)
    unit = points[0][1]["task"].get("unit", "") if use_task else ""
    ax.set_ylabel(f"{points[0][1]['task']['metric']} delta {unit}".strip() if use_task else "worst SQNR dB", fontsize=8)
    if use_task:
        ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_title(model, fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _svg(fig)
