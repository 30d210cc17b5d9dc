"""backendiff sweep: the plan, cell keys, resources, findings, and real sweeps on the local
and the Ray executor (same scoreboard, resumption, a crashing backend reported)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backendiff.errors import BadInput
from backendiff.latency import measure, speedup, summarize
from backendiff.sweep import (
    CellStore,
    LocalExecutor,
    ModelEntry,
    base_spec,
    cell_key,
    cell_payload,
    cell_resources,
    exit_code,
    finding_text,
    findings,
    load_sweep_file,
    make_plan,
    run_spec,
    run_sweep,
    task_score,
)

from .conftest import needs

ROOT = Path(__file__).resolve().parents[1]
MODEL = "zoo:digits-cnn-narrow"


# -- latency -----------------------------------------------------------------------------
def test_summarize_median_spread_throughput():
    times = [0.010, 0.011, 0.012, 0.013, 0.100]            # one outlier
    s = summarize(times, batch=8)
    assert s["median_ms"] == 12.0 and s["min_ms"] == 10.0 and s["runs"] == 5
    assert s["p10_ms"] == pytest.approx(10.4) and s["p90_ms"] == pytest.approx(65.2)
    assert s["throughput_per_s"] == pytest.approx(8 / 0.012, rel=1e-3)
    assert s["spread"] == pytest.approx(65.2 / 10.4, rel=1e-3)


def test_measure_warms_up_then_times_with_the_clock():
    calls, ticks = [], iter(np.arange(0.0, 100.0, 0.5))
    out = measure(lambda s: calls.append(1), {"x": np.zeros((4, 3))}, warmup=3, runs=4, clock=lambda: next(ticks))
    assert len(calls) == 7 and out["runs"] == 4 and out["warmup"] == 3
    assert out["median_ms"] == 500.0 and out["batch"] == 4
    with pytest.raises(ValueError):
        measure(lambda s: None, {"x": np.zeros(1)}, warmup=0, runs=0)


def test_speedup():
    assert speedup({"median_ms": 4.0}, {"median_ms": 2.0}) == 2.0
    assert speedup(None, {"median_ms": 2.0}) is None


# -- the plan ----------------------------------------------------------------------------
SWEEP_TOML = """
backends = ["ort", "ort:int8", "openvino:fp32,route=onnx"]
plugins = ["tests.sweep_plugin"]
[latency]
warmup = 2
runs = 7
threads = 2
[options]
samples = 2
[resources.trt]
GPU = 1
[resources."openvino:fp32,route=onnx"]
"cpu-xeon" = 0.5
[[models]]
model = "zoo:digits-cnn"
[[models]]
model = "zoo:mspn-tiny"
task = "pose"
data = "data/kp.npz"
metric = "ap"
"""


def test_sweep_file(tmp_path):
    f = tmp_path / "sweep.toml"
    f.write_text(SWEEP_TOML)
    plan = load_sweep_file(f)
    assert plan.specs == ("ort", "ort:int8", "openvino:fp32,route=onnx")
    assert [m.model for m in plan.models] == ["zoo:digits-cnn", "zoo:mspn-tiny"]
    assert plan.models[1].options == {"task": "pose", "data": str(tmp_path / "data/kp.npz")}   # relative to the file
    assert (plan.models[0].metric, plan.models[1].metric) == (None, "ap")
    assert (plan.warmup, plan.runs, plan.threads, plan.options) == (2, 7, 2, {"samples": 2})
    assert plan.plugins == ("tests.sweep_plugin",)
    assert len(plan.cells()) == 6


@pytest.mark.parametrize("text, message", [
    ("backends = ['ort']\nfoo = 1\n", "unknown key(s) foo"),
    ("backends = ['ort']\n[[models]]\nname = 'zoo:digits-cnn'\n", "models[0] needs model"),
    ("backends = ['ort']\n[[models]]\nmodel = 'zoo:digits-cnn'\nsamples = 'two'\n", "'samples' must be a number"),
    ("backends = ['ort']\n[[models]]\nmodel = 'zoo:digits-cnn'\nbatch = 3\n", "unknown option 'batch'"),
    ("backends = ['nosuch']\n[[models]]\nmodel = 'zoo:digits-cnn'\n", "nosuch"),
    ("backends = ['ort', 'ort']\n[[models]]\nmodel = 'zoo:digits-cnn'\n", "listed twice"),
    ("backends = ['ort']\n[latency]\nruns = 0\n[[models]]\nmodel = 'zoo:digits-cnn'\n", "runs must be"),
    ("backends = ['ort']\n[resources.ort]\nGPU = -1\n[[models]]\nmodel = 'zoo:digits-cnn'\n", "non-negative"),
    ("backends = ['ort'\n", "not valid TOML"),
    ("backends = ['ort']\n", "no models"),
])
def test_bad_sweep_files(tmp_path, text, message):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_sweep_file(f)


def test_bad_sweep_file_is_one_line_and_exit_2(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("backends = ['ort']\n[[models]]\nmodel = 'zoo:digits-cnn'\nsamples = 0\n")
    p = subprocess.run([sys.executable, "-m", "backendiff", "sweep", "--file", str(f), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "samples must be at least 1" in p.stderr


def test_run_spec_fixes_threads_where_the_backend_takes_them():
    assert run_spec("ort:int8", 2) == "ort:int8,threads=2"
    assert run_spec("openvino:fp32,route=onnx", 1) == "openvino:fp32,route=onnx,threads=1"
    assert run_spec("ort,threads=4", 1) == "ort,threads=4"            # the user's own wins
    assert run_spec("tvm", 3) == "tvm"                                 # TVM_NUM_THREADS in the worker
    assert run_spec("torch", 3) == "torch"


def test_cell_key_changes_with_everything_that_makes_the_cell(tmp_path):
    plan = make_plan([MODEL], ["ort"], runs=5)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros(3))
    base = cell_key("m1", "ort", {"data": str(data)}, plan, {"onnxruntime": "1.0"})
    assert base == cell_key("m1", "ort", {"data": str(data)}, plan, {"onnxruntime": "1.0"})
    variants = [cell_key("m2", "ort", {"data": str(data)}, plan, {"onnxruntime": "1.0"}),
                cell_key("m1", "ort:int8", {"data": str(data)}, plan, {"onnxruntime": "1.0"}),
                cell_key("m1", "ort", {"data": str(data), "samples": 2}, plan, {"onnxruntime": "1.0"}),
                cell_key("m1", "ort", {"data": str(data)}, make_plan([MODEL], ["ort"], runs=6), {"onnxruntime": "1.0"}),
                cell_key("m1", "ort", {"data": str(data)}, plan, {"onnxruntime": "1.1"})]
    np.savez(data, x=np.ones(3))                                       # the data's content, not its name
    variants.append(cell_key("m1", "ort", {"data": str(data)}, plan, {"onnxruntime": "1.0"}))
    assert len({base, *variants}) == 7


def test_cell_resources():
    assert cell_resources("ort", 2, {}) == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert cell_resources("trt:fp16", 1, {})["num_gpus"] == 1.0
    assert cell_resources("ort:cuda", 1, {})["num_gpus"] == 1.0
    assert cell_resources("ort:fp16,ep=trt", 1, {})["num_gpus"] == 1.0
    assert cell_resources("tensorrt:int8", 1, {})["num_gpus"] == 1.0
    assert cell_resources("ort:int8,ep=cpu", 1, {})["num_gpus"] == 0.0
    res = {"openvino": {"cpu-xeon": 1}, "openvino:int8": {"cpu-xeon": 0.5, "CPU": 4}}
    assert cell_resources("openvino", 1, res) == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"cpu-xeon": 1.0}}
    assert cell_resources("openvino:int8", 1, res) == {"num_cpus": 4.0, "num_gpus": 0.0, "resources": {"cpu-xeon": 0.5}}


def test_base_spec_and_findings():
    specs = ["ort", "ort:int8", "openvino:fp32,route=onnx", "openvino:int8", "tvm:fp16"]
    assert base_spec("ort:int8", specs) == "ort"
    assert base_spec("openvino:int8", specs) is None                 # no fp32 openvino with the same options
    assert base_spec("ort", specs) is None
    lat = lambda ms: {"median_ms": ms, "p10_ms": ms, "p90_ms": ms}    # noqa: E731
    matrix = {"m": {"ort": {"status": "ok", "latency": lat(2.0), "task": {"metric": "top1", "value": 98.0, "delta": 0.0}},
                    "ort:int8": {"status": "ok", "latency": lat(1.0), "sqnr_db": 30.0,
                                 "task": {"metric": "top1", "value": 97.7, "delta": -0.3, "unit": "%"}}}}
    [f] = findings(matrix, ["ort", "ort:int8"])
    assert f["speedup"] == 2.0 and f["drop"] == pytest.approx(0.3)
    assert finding_text(f) == "ort:int8 on m is 2.00x faster than ort for a 0.30-point drop in top1"
    assert finding_text(f | {"drop": 0.0}) == "ort:int8 on m is 2.00x faster than ort for no change in top1"
    matrix["m"]["ort:int8"]["latency"] = lat(4.0)
    assert "2.00x slower" in finding_text(findings(matrix, ["ort", "ort:int8"])[0])


def test_task_score_by_a_chosen_metric():
    task = {"metric": "pck@0.1", "unit": "%", "reference": 99.9, "value": 99.9, "delta": 0.0,
            "ap_reference": 94.2, "ap": 92.9, "flip_rate": 0.91, "flip_label": "moved"}
    assert task_score(task, None) == {"metric": "pck@0.1", "reference": 99.9, "value": 99.9, "delta": 0.0, "unit": "%",
                                      "flip_rate": 0.91, "flip_label": "moved"}
    ap = task_score(task, "ap")
    assert ap["metric"] == "ap" and ap["delta"] == pytest.approx(-1.3) and ap["flip_rate"] == 0.91
    assert task_score(task, "nosuch")["metric"] == "pck@0.1"           # not in the result: the headline
    assert task_score({"name": "pose", "error": "boom"}, "ap") is None


# -- real sweeps -------------------------------------------------------------------------
def _values(board):
    """The scoreboard without latencies (which differ between runs)."""
    return {m: {s: {k: c.get(k) for k in ("status", "sqnr_db", "max_abs", "task")} for s, c in row.items()}
            for m, row in board["matrix"].items()}


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, cache_dir):
    from backendiff.registry import register_backend

    from .sweep_plugin import Segfaults

    register_backend(Segfaults, replace=True)    # again, should another test have unregistered it here
    plan = make_plan([MODEL], ["ort", "openvino", "segfaults"], runs=5, warmup=1, plugins=["tests.sweep_plugin"])
    store = CellStore(tmp_path_factory.mktemp("store"))
    board = run_sweep(plan, store, executor="local", workers=2, cache_dir=str(cache_dir))
    return plan, store, board


@needs("ort", "openvino")
def test_local_sweep_scores_times_and_survives_a_crash(local_sweep):
    plan, store, board = local_sweep
    row = board["matrix"][MODEL]
    for spec in ("ort", "openvino"):
        cell = row[spec]
        assert cell["status"] == "ok" and cell["sqnr_db"] > 100
        assert cell["task"]["metric"] == "top1" and cell["task"]["delta"] == 0.0
        lat = cell["latency"]
        assert lat["runs"] == 5 and lat["warmup"] == 1 and 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
        assert lat["threads"] == 1
    crashed = row["segfaults"]
    assert crashed["status"] == "crashed" and "SIGSEGV" in crashed["error"]
    assert board["run"] == board["run"] | {"cells": 3, "ran": 3, "resumed": 0, "executor": "local"}
    assert exit_code(board) == 3
    assert len(list((store.root / "cells").glob("*.json"))) == 3


@needs("ort", "openvino")
def test_rerun_resumes_and_force_redoes(local_sweep, cache_dir):
    plan, store, first = local_sweep
    again = run_sweep(plan, store, executor="local", workers=2, cache_dir=str(cache_dir))
    assert again["run"]["ran"] == 0 and again["run"]["resumed"] == 3
    assert _values(again) == _values(first)
    assert all(r.get("resumed") for r in again["cells"])
    one = make_plan([MODEL], ["ort"], runs=5, warmup=1)
    forced = run_sweep(one, store, executor="local", workers=1, force=True, cache_dir=str(cache_dir))
    assert forced["run"]["ran"] == 1 and forced["run"]["resumed"] == 0


@needs("ort", "openvino")
def test_ray_executor_gives_the_same_scoreboard(local_sweep, tmp_path, cache_dir):
    pytest.importorskip("ray")
    plan, _, local = local_sweep
    board = run_sweep(plan, CellStore(tmp_path), executor="ray", workers=2, cache_dir=str(cache_dir))
    assert board["run"]["executor"] == "ray" and board["run"]["ran"] == 3
    assert _values(board) == _values(local)                  # the crashed cell too, on Ray's workers
    assert {c["worker"]["pid"] for c in board["cells"]}.isdisjoint({c["worker"]["pid"] for c in local["cells"]})
    assert all(c["latency"]["runs"] == 5 for s, c in board["matrix"][MODEL].items() if s != "segfaults")


@needs("ort")
def test_a_worker_that_dies_loses_only_its_cell(tmp_path, cache_dir):
    plan = make_plan([MODEL], ["ort"], runs=2, warmup=0)
    ok = cell_payload(plan, ModelEntry(MODEL), "ort", "k-ok", str(cache_dir))
    dies = cell_payload(plan, ModelEntry(MODEL), "ort", "k-dies", str(cache_dir)) | {"plugins": ["tests.sweep_plugin_dies"]}
    got = {}
    LocalExecutor(workers=2).run([dies, ok], lambda r: got.__setitem__(r["key"], r), lambda m: None)
    assert got["k-ok"]["status"] == "ok"
    assert got["k-dies"]["status"] == "lost" and got["k-dies"]["error"]["signal"] == "SIGKILL"
    assert "out-of-memory" in got["k-dies"]["error"]["message"]


@needs("ort")
def test_cli_sweep_writes_the_scoreboard_and_cell_reports(tmp_path, cache_dir):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "backendiff", "sweep", MODEL, "-b", "ort,ort:int8", "--runs", "3", "--warmup", "1",
           "--workers", "2", "--out", str(out), "--cache-dir", str(cache_dir), "-o", "samples=2",
           "-o", "compare_on=random"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "2 cells: 2 run, 0 resumed" in p.stdout and "ort:int8 on zoo:digits-cnn-narrow is" in p.stdout
    board = json.loads((out / "sweep.json").read_text())
    assert board["schema"] == "backendiff.sweep/1" and board["specs"] == ["ort", "ort:int8"]
    assert len(board["cells"]) == 2 and board["cells"][0]["report"]["schema"].startswith("backendiff.report/")
    page = (out / "sweep.html").read_text()
    for spec in ("ort", "ort:int8"):
        link = board["matrix"][MODEL][spec]["report"]
        assert (out / link).is_file() and f'href="{link}"' in page
    assert page.count("<svg") == 2 and 'id="sweep-heatmap"' in page and 'id="sweep-scatter"' in page
    assert board["matrix"][MODEL]["ort:int8"]["sqnr_db"] < board["matrix"][MODEL]["ort"]["sqnr_db"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "2 cells: 0 run, 2 resumed" in p.stdout


@needs("ort")
def test_ray_worker_that_dies_loses_only_its_cell(cache_dir):
    pytest.importorskip("ray")
    from backendiff.sweep import RayExecutor

    plan = make_plan([MODEL], ["ort"], runs=2, warmup=0)
    ok = cell_payload(plan, ModelEntry(MODEL), "ort", "k-ok", str(cache_dir))
    dies = cell_payload(plan, ModelEntry(MODEL), "ort", "k-dies", str(cache_dir)) | {"plugins": ["tests.sweep_plugin_dies"]}
    got = {}
    RayExecutor(None, workers=2, threads=1, resources={}).run([dies, ok], lambda r: got.__setitem__(r["key"], r),
                                                               lambda m: None)
    assert got["k-ok"]["status"] == "ok" and got["k-ok"]["report"]["backends"][0]["latency"]["runs"] == 2
    assert got["k-dies"]["status"] == "lost" and "Ray task was lost" in got["k-dies"]["error"]["message"]


@needs("ort")
def test_sweep_of_a_factory_file_and_its_key_follows_the_code(tmp_path, cache_dir):
    """A model given as file.py:factory is swept like a zoo model; editing the file changes
    its cells' keys (so a resumed sweep reruns them)."""
    net = tmp_path / "net.py"
    net.write_text("import torch\nfrom torch import nn\n\n"
                   "def build():\n    torch.manual_seed(0)\n"
                   "    return nn.Sequential(nn.Linear(6, 4), nn.ReLU()), (torch.randn(2, 6),)\n")
    store = CellStore(tmp_path / "store")
    plan = make_plan([f"{net}:build"], ["ort"], runs=3, warmup=0)
    board = run_sweep(plan, store, workers=1, cache_dir=str(cache_dir))
    cell = board["matrix"][f"{net}:build"]["ort"]
    assert cell["status"] == "ok" and cell["latency"]["batch"] == 2, cell.get("error")
    assert run_sweep(plan, store, workers=1, cache_dir=str(cache_dir))["run"]["resumed"] == 1
    net.write_text(net.read_text().replace("nn.Linear(6, 4)", "nn.Linear(6, 4), nn.Tanh()"))
    assert run_sweep(plan, store, workers=1, cache_dir=str(cache_dir))["run"]["ran"] == 1


def test_ray_address_nobody_listens_on_fails_fast():
    import socket

    from backendiff.sweep import check_ray_address

    with socket.socket() as s:                       # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BadInput, match=f"127.0.0.1:{port}: no Ray head node answers"):
        check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(BadInput, match="expected HOST:PORT"):
        check_ray_address("headnode")
    check_ray_address("auto")
    with socket.socket() as s:                       # something listening: accepted
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_ray_address(f"127.0.0.1:{s.getsockname()[1]}")


def _marked_processes(mark: bytes) -> list[int]:
    """Live processes whose environment holds ``mark``."""
    out = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if mark in env.read_bytes().split(b"\0"):
                out.append(int(env.parent.name))
        except OSError:
            pass
    return out


@needs("ort")
def test_interrupted_sweep_keeps_finished_cells_and_resumes(tmp_path, cache_dir):
    """Ctrl-C (SIGINT to the driver): exit 130, the cells finished so far stay stored, no
    worker is left behind, and the rerun runs only the rest."""
    import signal
    import time

    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "backendiff", "sweep", MODEL, "zoo:tiny-transformer", "zoo:digits-cnn",
           "-b", "ort", "--runs", "200", "--warmup", "0", "--workers", "1", "--out", str(out),
           "--cache-dir", str(cache_dir), "-q"]
    mark = f"BACKENDIFF_TEST_MARK={out}".encode()     # inherited by every process the sweep starts
    env = dict(os.environ, BACKENDIFF_TEST_MARK=str(out))
    # Ctrl-C as a terminal delivers it: a run started from a background job (CI scripts
    # run as `cmd &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cells = out / "store" / "cells"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cells.glob("*.json"))) < 1:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun to resume" in err and "Traceback" not in err
    done = len(list(cells.glob("*.json")))
    assert 1 <= done < 3
    time.sleep(1.0)
    assert _marked_processes(mark) == []                        # no worker survived the driver
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and f"3 cells: {3 - done} run, {done} resumed" in p.stdout
