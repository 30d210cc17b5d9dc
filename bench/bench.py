"""Tool overhead of ``compare``: total wall time against the runtimes' own time.

    python bench/bench.py [--model zoo:resnet18] [--backends ort,openvino,tvm]

Runs ``backendiff.compare`` twice, each in a fresh process: cold (empty cache) and warm
(the same cache again); PyTorch is imported before the clock starts. For each run it prints the wall time of the ``compare`` call, the
sum of the runtimes' own setup (import) + convert (including the torch.export / ONNX
export that route needs) + compile + infer time, and their ratio: the tool's overhead
(loading, the fp32 reference and fp64 golden runs, comparison, reporting). Target <= 1.15.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

STAGES = ("setup_s", "convert_s", "compile_s", "infer_s")


def one(model: str, backends: str, cache: str) -> dict:
    # PyTorch is imported before the clock starts: it is the framework the model lives in
    # (a user of the Python API has it loaded already), not backendiff's overhead. Each
    # runtime's import is timed, as that runtime's setup_s.
    import torch  # noqa: F401

    import backendiff

    t0 = time.perf_counter()
    report = backendiff.compare(model, backends=backends.split(","), cache_dir=cache)
    wall = time.perf_counter() - t0
    per = {b.spec: {k: b.timings.get(k, 0.0) for k in STAGES} | {"status": b.status, "cache": b.cache}
           for b in report.backends}
    return {"wall_s": wall, "backends": per, "tool": {k: v for k, v in report.timings.items() if k != "total_s"}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:resnet18")
    parser.add_argument("--backends", default="ort,openvino,tvm")
    parser.add_argument("--one", nargs=2, metavar=("CACHE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        cache, out = args.one
        with open(out, "w") as f:
            json.dump(one(args.model, args.backends, cache), f)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="backendiff-bench-") as cache:
        for label in ("cold", "warm"):
            out = f"{cache}/{label}.json"
            subprocess.run([sys.executable, __file__, "--model", args.model, "--backends", args.backends,
                            "--one", cache, out], check=True)
            with open(out) as f:
                rows.append((label, json.load(f)))
    print(f"\nbackendiff bench: {args.model} on {args.backends} (each run in a fresh process)\n")
    print(f"{'run':<5} {'backend':<10} {'status':<9} {'cache':<5} " + " ".join(f"{s:>10}" for s in STAGES))
    worst = 0.0
    for label, r in rows:
        runtime = 0.0
        for spec, b in r["backends"].items():
            runtime += sum(b[s] for s in STAGES)
            print(f"{label:<5} {spec:<10} {b['status']:<9} {b['cache'] or '-':<5} "
                  + " ".join(f"{b[s]:>10.3f}" for s in STAGES))
        ratio = r["wall_s"] / runtime if runtime else float("inf")
        worst = max(worst, ratio)
        tool = ", ".join(f"{k} {v:.3f}" for k, v in r["tool"].items())
        print(f"{label:<5} compare wall {r['wall_s']:.3f}s · runtimes' own {runtime:.3f}s · "
              f"ratio {ratio:.3f} (tool: {tool})\n")
    print(f"worst overhead ratio {worst:.3f} (target <= 1.15): {'OK' if worst <= 1.15 else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
