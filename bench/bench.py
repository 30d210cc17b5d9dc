"""Benchmarks, each measured in one run and printed as ratios.

    python bench/bench.py [--model zoo:resnet18] [--backends ort,openvino,tvm] [--skip-layerwise]

1. Tool overhead of ``compare`` (below).
2. Layer-wise at scale (``--layerwise-model zoo:resnet50``): wall time and peak RSS of a
   layer-wise compare on each backend alone and on all three at once (the peak for three
   should stay near the largest single one: results stream, one reference copy); and, on
   the same deployed ONNX file, Polygraphy's layer-wise ONNX Runtime comparison
   (``polygraphy run model.onnx --onnxrt --onnxrt --onnx-outputs mark all``) against
   ``backendiff compare --backends ort --layerwise`` (each a fresh process, warm caches).
   Then the cost of the layer view on the deployed route (export routes, int8 models)
   against the ONNX-route instrumentation used before, per backend.
3. ``backendiff sweep`` (``--sweep-models``, ``--sweep-backends``): wall time with 1 and 2
   local workers on a warm compile cache, and their ratio.
4. Compile time per backend (``--compile-models``, ``--compile-backends``, default with the
   ahead-of-time compilers iree and inductor), cold and on a cache hit, as ratios to ORT's.
5. Layer-wise ORT against Polygraphy (``--poly-models``: ResNet-50 and a ViT-B/16-sized
   transformer, 86 M parameters), warm and cold, wall time and peak RSS of whole processes,
   and backendiff's peak RSS at two depths of one width (``--depth-models``).

Runs ``backendiff.compare`` twice, each in a fresh process: cold (empty cache) and warm
(the same cache again); PyTorch is imported before the clock starts. For each run it prints the
wall time of the ``compare`` call, the
sum of the runtimes' own setup (import) + convert (including the torch.export / ONNX
export that route needs) + compile + infer time, and their ratio: the tool's overhead
(loading, the fp32 reference and fp64 golden runs, comparison, reporting). Target <= 1.15.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    return {"wall_s": wall, "backends": per,
            "tool": {k: v for k, v in report.timings.items() if k not in ("total_s", "peak_rss_mb")}}


def one_layerwise(model: str, backends: str, cache: str) -> dict:
    import resource

    import torch  # noqa: F401

    import backendiff

    t0 = time.perf_counter()
    report = backendiff.compare(model, backends=[backends], cache_dir=cache, layerwise="always", golden=False)
    wall = time.perf_counter() - t0
    from backendiff.cache import Cache
    from backendiff.compare import resolve_inputs
    from backendiff.config import CompareConfig
    from backendiff.loading import load_model
    from backendiff.model import ModelHandle

    loaded = load_model(model)
    samples = resolve_inputs(loaded, None, CompareConfig())[0]
    onnx_path = str(ModelHandle(loaded, samples, Cache(cache)).onnx_path())
    return {"wall_s": wall, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "layers": {b.spec: len(b.layers) for b in report.backends},
            "layers_s": {b.spec: b.timings.get("layers_s") for b in report.backends},
            "profile": {"run": report.timings, "backends": {b.spec: b.timings for b in report.backends}},
            "errors": {b.spec: b.info.get("layers_error") for b in report.backends if b.info.get("layers_error")},
            "onnx": onnx_path}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def layerwise_bench(model: str, backends: str) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="backendiff-bench-lw-") as cache:
        def child(specs: str) -> dict:
            out = f"{cache}/out.json"
            subprocess.run([sys.executable, __file__, "--layerwise-model", model, "--one-layerwise", specs, cache, out],
                           check=True)
            with open(out) as f:
                return json.load(f)

        child(backends)  # cold: exports, compiles, layer programs into the cache
        for specs in backends.split(",") + [backends]:
            rows.append((specs, child(specs)))
        onnx_path = rows[-1][1]["onnx"]
        poly = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))
        have_poly = Path(poly).exists()
        bd = timed([sys.executable, "-m", "backendiff", "compare", model, "--backends", "ort", "--layerwise",
                    "--no-golden", "--no-json", "-q", "--cache-dir", cache]) if have_poly else None
        pg = timed([poly, "run", onnx_path, "--onnxrt", "--onnxrt", "--onnx-outputs", "mark", "all"]) if have_poly \
            else None
    print(f"\nbackendiff bench: layer-wise {model} (warm caches, each run a fresh process)\n")
    print(f"{'backends':<22} {'wall s':>8} {'peak MB':>9}  layers")
    for specs, r in rows:
        print(f"{specs:<22} {r['wall_s']:>8.2f} {r['peak_mb']:>9.0f}  {r['layers']}"
              + (f"  errors: {r['errors']}" if r["errors"] else ""))
    for specs, r in rows[:-1]:
        print(profile_line(specs, r["profile"]))
    single = max(r["peak_mb"] for specs, r in rows[:-1])
    print(f"peak RSS, three backends / largest single backend: {rows[-1][1]['peak_mb'] / single:.2f} "
          f"(target: about 1, memory does not grow with the number of backends)")
    if bd is None:
        print("polygraphy not installed: `pip install polygraphy` for the comparison")
    else:
        print(f"layer-wise ORT on {Path(onnx_path).name}: backendiff {bd:.2f}s vs polygraphy {pg:.2f}s "
              f"-> ratio {bd / pg:.2f} (target <= 1; backendiff also runs the PyTorch reference, matches "
              f"modules, growth, fusion)")


def profile_line(specs: str, profile: dict) -> str:
    """Where one layer-wise compare spent its time (the run's own steps: export, reference,
    golden, layer programs; the backend's: convert, compile, infer, layer view) and its peak
    memory, largest first."""
    steps = {k[:-2]: v for k, v in profile["run"].items() if k.endswith("_s") and k != "total_s" and v}
    for timings in profile["backends"].values():
        steps.update({f"backend {k[:-2]}": v for k, v in timings.items() if k.endswith("_s") and v})
    total = profile["run"].get("total_s") or sum(steps.values())
    top = ", ".join(f"{k} {v:.2f}s ({100 * v / total:.0f}%)" for k, v in sorted(steps.items(), key=lambda kv: -kv[1])[:8])
    peaks = [t.get("peak_rss_mb") for t in profile["backends"].values() if t.get("peak_rss_mb")]
    return (f"  profile of {specs}: {top}; peak RSS: run {profile['run'].get('peak_rss_mb')} MB, "
            f"worker {max(peaks) if peaks else '-'} MB")


#: the layer view on the route and precision that is deployed (new) against the ONNX-route
#: instrumentation every backend used before (the same backend with route=onnx); int8 had none
INSTRUMENTATION = (("openvino", "openvino:fp32,route=onnx"), ("tvm", "tvm:fp32,route=onnx"),
                   ("ort:int8", None), ("openvino:int8", None))


def instrumentation_bench(model: str) -> None:
    """What the route-faithful layer view costs: seconds of the layer-wise step (``layers_s``:
    reference layers, instrumented convert + compile + run, alignment) per backend, the
    deployed route's against the ONNX route's, all in one child process on one cache."""
    specs = [s for pair in INSTRUMENTATION for s in pair if s]
    with tempfile.TemporaryDirectory(prefix="backendiff-bench-instr-") as cache:
        out = f"{cache}/out.json"
        subprocess.run([sys.executable, __file__, "--layerwise-model", model, "--one-layerwise", ",".join(specs),
                        cache, out], check=True)
        with open(out) as f:
            r = json.load(f)
    print(f"\nbackendiff bench: cost of the layer view on the deployed route, {model} (one process, cold)\n")
    print(f"{'deployed-route spec':<22} {'layers s':>9} {'rows':>5}   {'ONNX-route spec':<26} {'layers s':>9} {'rows':>5}  ratio")
    for new, old in INSTRUMENTATION:
        n, o = r["layers_s"].get(new), r["layers_s"].get(old) if old else None
        err = r["errors"].get(new)
        line = f"{new:<22} {n if n is not None else float('nan'):>9.2f} {r['layers'].get(new, 0):>5}   "
        line += (f"{old:<26} {o:>9.2f} {r['layers'].get(old, 0):>5}  {n / o:.2f}" if old and n and o
                 else f"{'(no layer view before)':<26} {'':>9} {'':>5}")
        print(line + (f"  error: {err}" if err else ""))


def sweep_bench(models: list[str], backends: str) -> None:
    """   Then the cost of the layer view on the deployed route (export routes, int8 models)
   against the ONNX-route instrumentation used before, per backend.
3. ``backendiff sweep`` wall time with 1 and 2 local workers, each a fresh process on a
    fresh cell store, after one sweep that fills the compile cache (so both time the same
    work: loading, references, runs, latency, reports)."""
    import os

    with tempfile.TemporaryDirectory(prefix="backendiff-bench-sweep-") as tmp:
        def sweep(label: str, workers: int) -> float:
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "backendiff", "sweep", *models, "-b", backends, "--workers",
                                str(workers), "--out", f"{tmp}/{label}", "--cache-dir", f"{tmp}/cache", "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if p.returncode not in (0, 3):            # 3: some cell could not run, still a full sweep
                raise SystemExit(f"sweep failed ({p.returncode}): {p.stderr.strip()[-400:]}")
            return time.perf_counter() - t0

        prime = sweep("prime", 2)
        one_worker = sweep("one", 1)
        two_workers = sweep("two", 2)
    cells = len(models) * len(backends.split(","))
    print(f"\nbackendiff bench: sweep of {len(models)} models x {backends} ({cells} cells, warm compile cache, "
          f"{os.cpu_count()} CPUs; first sweep with an empty cache {prime:.1f}s)\n")
    print(f"1 worker  {one_worker:8.1f}s")
    print(f"2 workers {two_workers:8.1f}s")
    print(f"speed-up 2 workers / 1 worker: {one_worker / two_workers:.2f}x")


def child_run(cmd: list[str], ok=(0, 1)) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process (exit code 1, a divergence, is a
    finished run)."""
    import os

    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in ok:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}): {err.read().decode()[-600:]}")
    return wall, usage.ru_maxrss / 1024


def export_onnx(model: str, out: str) -> None:
    """The ONNX file a Polygraphy user starts from: the model's dynamo export, optimized, as
    backendiff deploys it (this child's time is the cold run's export)."""
    import torch

    from backendiff.compare import resolve_inputs
    from backendiff.config import CompareConfig
    from backendiff.loading import load_model

    loaded = load_model(model)
    sample = resolve_inputs(loaded, None, CompareConfig(compare_on="random"))[0][0]
    args = tuple(torch.from_numpy(a.copy()) for a in sample.values())
    ep = torch.export.export(loaded.module, args, strict=False) if loaded.exported is None else loaded.exported
    torch.onnx.export(ep, dynamo=True, optimize=True).save(out)


def polygraphy_bench(models: list[str], depths: tuple[str, str] | None) -> None:
    """5. Layer-wise ONNX Runtime against Polygraphy (``polygraphy run M.onnx --onnxrt --onnxrt
    --onnx-outputs mark all``): wall time and peak RSS of each whole process, warm (caches
    filled) and cold (``--no-cache`` against ONNX export + Polygraphy), per model; then
    backendiff's peak RSS at two depths of one width."""
    poly = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))
    if not Path(poly).exists():
        print("\npolygraphy not installed: `pip install polygraphy` (make bench installs it) for the comparison")
        return
    lines = []
    with tempfile.TemporaryDirectory(prefix="backendiff-bench-poly-") as tmp:
        def ours(model: str, *extra: str) -> tuple[float, float]:
            return child_run([sys.executable, "-m", "backendiff", "compare", model, "-b", "ort", "--layerwise",
                              "--no-json", "-q", *extra])

        for model in models:
            cache, onnx = f"{tmp}/cache", f"{tmp}/model.onnx"
            cold = ours(model, "--no-cache")
            export = child_run([sys.executable, __file__, "--export-onnx", model, onnx], ok=(0,))
            ours(model, "--cache-dir", cache)                          # fills the cache
            warm = ours(model, "--cache-dir", cache)
            theirs = child_run([poly, "run", onnx, "--onnxrt", "--onnxrt", "--onnx-outputs", "mark", "all"], ok=(0,))
            lines.append((model, cold, export, warm, theirs))
        depth_rss = []
        for model in depths or ():
            cache = f"{tmp}/depth"
            ours(model, "--cache-dir", cache)
            depth_rss.append((model, ours(model, "--cache-dir", cache)[1]))
    print("\nbackendiff bench: layer-wise ORT, backendiff (`compare -b ort --layerwise`) against Polygraphy "
          "(`run --onnxrt --onnxrt --onnx-outputs mark all`), whole processes\n")
    print(f"{'model':<52} {'run':<5} {'backendiff s':>12} {'polygraphy s':>12} {'ratio':>6} "
          f"{'backendiff MB':>13} {'polygraphy MB':>13} {'ratio':>6}")
    for model, cold, export, warm, theirs in lines:
        for label, mine, other in (("warm", warm, theirs),
                                   ("cold", cold, (export[0] + theirs[0], max(export[1], theirs[1])))):
            print(f"{model:<52} {label:<5} {mine[0]:>12.2f} {other[0]:>12.2f} {mine[0] / other[0]:>6.2f} "
                  f"{mine[1]:>13.0f} {other[1]:>13.0f} {mine[1] / other[1]:>6.2f}")
    print("(targets <= 1.0; cold Polygraphy = the ONNX export's process + Polygraphy's; peak = the larger of the two)")
    if len(depth_rss) == 2:
        (m1, r1), (m2, r2) = depth_rss
        print(f"backendiff peak RSS by depth (warm): {m1} {r1:.0f} MB, {m2} {r2:.0f} MB -> ratio {r1 / r2:.2f} "
              f"(target: flat in depth, about 1)")


def compile_bench(models: list[str], backends: str) -> None:
    """4. Compile time per backend, each model cold (empty cache) then warm (a cache hit: the
    artifact loaded, not rebuilt), every backend of a model in one fresh process per run; the
    ratio to ONNX Runtime's compile shows what an ahead-of-time compiler costs."""
    rows = []
    for model in models:
        with tempfile.TemporaryDirectory(prefix="backendiff-bench-compile-") as cache:
            for label in ("cold", "warm"):
                out = f"{cache}/{label}.json"
                subprocess.run([sys.executable, __file__, "--model", model, "--backends", backends, "--one", cache, out],
                               check=True)
                with open(out) as f:
                    rows.append((model, label, json.load(f)["backends"]))
    specs = backends.split(",")
    print(f"\nbackendiff bench: convert + compile seconds per backend (each run a fresh process; ratio to "
          f"{specs[0]}'s cold build)\n")
    print(f"{'model':<18} {'run':<5} " + " ".join(f"{s:>16}" for s in specs))
    for model, label, per in rows:
        base = next((r for m, lab, r in rows if m == model and lab == "cold"), per)[specs[0]]
        base_s = base["convert_s"] + base["compile_s"] or float("nan")
        cells = []
        for s in specs:
            b = per.get(s, {})
            t = b.get("convert_s", 0.0) + b.get("compile_s", 0.0)
            ran = b.get("status") in ("ok", "diverged")
            cells.append(f"{t:7.2f}s {t / base_s:5.1f}x" if ran else f"{b.get('status', '-'):>16}")
        print(f"{model:<18} {label:<5} " + " ".join(f"{c:>16}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:resnet18")
    parser.add_argument("--backends", default="ort,openvino,tvm")
    parser.add_argument("--one", nargs=2, metavar=("CACHE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--layerwise-model", default="zoo:resnet50")
    parser.add_argument("--skip-layerwise", action="store_true")
    parser.add_argument("--sweep-models", default="zoo:digits-cnn,zoo:tiny-transformer,zoo:resnet18")
    parser.add_argument("--sweep-backends", default="ort,ort:int8,openvino,tvm")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--poly-models", default="zoo:resnet50,backendiff.models.corpus.vision_transformers:vit_b16")
    parser.add_argument("--depth-models", default="backendiff.models.corpus.vision_transformers:vit_b16,"
                                                   "backendiff.models.corpus.vision_transformers:vit_b16_half_depth")
    parser.add_argument("--skip-polygraphy", action="store_true")
    parser.add_argument("--export-onnx", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--compile-models", default="zoo:digits-cnn,zoo:resnet18")
    parser.add_argument("--compile-backends", default="ort,openvino,tvm,iree,inductor")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--one-layerwise", nargs=3, metavar=("SPECS", "CACHE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_onnx:
        export_onnx(*args.export_onnx)
        return 0
    if args.one_layerwise:
        specs, cache, out = args.one_layerwise
        with open(out, "w") as f:
            json.dump(one_layerwise(args.layerwise_model, specs, cache), f)
        return 0
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
    cold, warm = rows[0][1], rows[1][1]
    export = warm["tool"].get("torch_export_s", 0.0)
    print(f"warm / cold wall {warm['wall_s'] / cold['wall_s']:.2f} ({warm['wall_s']:.2f}s / {cold['wall_s']:.2f}s); "
          f"the warm run's torch.export, which keys the cache: {export:.2f}s "
          f"({100 * export / warm['wall_s']:.0f}% of the warm run)")
    if not args.skip_layerwise:
        layerwise_bench(args.layerwise_model, args.backends)
        instrumentation_bench(args.layerwise_model)
    if not args.skip_sweep:
        sweep_bench(args.sweep_models.split(","), args.sweep_backends)
    if not args.skip_compile:
        compile_bench(args.compile_models.split(","), args.compile_backends)
    if not args.skip_polygraphy:
        depths = args.depth_models.split(",")
        polygraphy_bench(args.poly_models.split(","), tuple(depths) if len(depths) == 2 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
