"""The IREE backend on the real compiler and runtime (llvm-cpu, local-task): fp32 agrees with
PyTorch, fp16 runs in fp16 and says so, the compiled module is cached, the layer view has
rows, and what cannot run here (no IREE, route=export without iree-turbine) is unavailable
with the reason and the install hint. IREE only ever runs in compare's forked workers: a
local-task driver made in this process would not survive the next fork."""
import importlib.abc
import os
import sys

import pytest

import backendiff
from backendiff.errors import BackendUnavailable

from .conftest import needs


class Block(importlib.abc.MetaPathFinder):
    """Import of the ``names`` packages (and their submodules) fails, as if not installed."""

    def __init__(self, *names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if any(name == n or name.startswith(n + ".") for n in self.names):
            raise ImportError(f"No module named {name!r}", name=name)


def block(monkeypatch, *names):
    monkeypatch.setattr(sys, "meta_path", [Block(*names)] + sys.meta_path)
    for module in [m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in names)]:
        monkeypatch.delitem(sys.modules, module)


@needs("iree")
def test_fp32_agrees_fp16_runs_in_fp16_and_a_second_run_is_cached(tmp_path):
    first = backendiff.compare("zoo:digits-cnn", backends=["iree", "iree:fp16"], cache_dir=tmp_path)
    fp32, fp16 = first.backend("iree"), first.backend("iree:fp16")
    assert fp32.status == fp16.status == "ok", (fp32.error, fp16.error)
    m = fp32.outputs[0].metrics
    assert m["sqnr_db"] > 100 and m["max_abs"] < 1e-4
    assert fp32.task["delta"] == 0 and fp32.task["flips"] == 0   # every batch of the task, not just the first
    assert fp32.precision == {"requested": "fp32", "runtime": "fp32", "honoured": True}
    assert set(fp32.info["runtime_precisions"]) == {"fp32"}
    h = fp16.outputs[0].metrics
    assert 30 < h["sqnr_db"] < 90 and h["cosine"] > 0.9999      # fp16 rounding, within fp16's floor
    assert fp16.precision == {"requested": "fp16", "runtime": "fp16", "honoured": True}
    assert set(fp16.info["runtime_precisions"]) == {"fp16"} and "--iree-input-demote-f32-to-f16" in fp16.info["compile_flags"]
    assert (fp32.cache, fp16.cache) == ("miss", "miss")

    second = backendiff.compare("zoo:digits-cnn", backends=["iree", "iree:fp16"], cache_dir=tmp_path)
    for spec, before in (("iree", fp32), ("iree:fp16", fp16)):
        after = second.backend(spec)
        assert after.cache == "hit" and after.outputs[0].metrics == before.outputs[0].metrics
        assert after.timings["compile_s"] < before.timings["compile_s"] / 5   # loaded, not compiled
        assert after.info["runtime_precisions"] == before.info["runtime_precisions"]   # read back beside the module


@needs("iree")
def test_threads_and_opt_options_run(cache_dir):
    report = backendiff.compare("zoo:digits-cnn", backends=["iree:fp32,threads=1,opt=O2"], cache_dir=cache_dir)
    result = report.backends[0]
    assert result.status == "ok" and result.outputs[0].metrics["sqnr_db"] > 100
    assert "--iree-opt-level=O2" in result.info["compile_flags"]
    assert result.options["threads"] == "1" and result.options["target_cpu"] == "host"


@needs("iree")
def test_layer_view_gives_a_row_per_layer(cache_dir):
    report = backendiff.compare("zoo:digits-cnn", backends=["iree:fp16"], cache_dir=cache_dir, layerwise="always")
    result = report.backends[0]
    assert "layers_error" not in result.info, result.info.get("layers_error")
    assert result.info["layers_from"].startswith("IREE on the ONNX export")
    rows = result.layers
    assert len(rows) >= 10 and all(row["metrics"]["sqnr_db"] is not None for row in rows)
    assert all(20 < row["metrics"]["sqnr_db"] < 90 for row in rows)   # fp16 values, marked out of the fp16 module


@pytest.mark.slow
@needs("iree")
def test_isolated_layers_and_bisection(cache_dir):
    report = backendiff.compare("zoo:digits-cnn", backends=["iree:fp16"], cache_dir=cache_dir, layerwise="always",
                                isolate_layers=True, bisect=True)
    result = report.backends[0]
    assert "isolated_error" not in result.info and "isolated" in result.layers[0]
    assert result.info["bisection"]["program"] == "onnx"


def test_missing_iree_is_unavailable_with_the_install_hint(monkeypatch, cache_dir):
    from backendiff.backends.iree import IreeAdapter

    block(monkeypatch, "iree")
    found = IreeAdapter.availability()
    assert not found.available and "iree-base-compiler is not installed" in found.reason
    assert found.hint == "pip install 'backendiff[iree]'"
    result = backendiff.compare("zoo:digits-cnn", backends=["iree"], cache_dir=cache_dir).backends[0]
    assert result.status == "unavailable" and result.error["hint"] == "pip install 'backendiff[iree]'"


@needs("iree")
def test_route_export_without_iree_turbine_is_unavailable(monkeypatch, cache_dir):
    from backendiff.backends.iree import IreeAdapter

    block(monkeypatch, "iree.turbine")
    why, hint = IreeAdapter.unavailable_variants()["iree:route=export"]
    assert "iree-turbine" in why and "pip install iree-turbine" in hint
    result = backendiff.compare("zoo:digits-cnn", backends=["iree:fp32,route=export"], cache_dir=cache_dir).backends[0]
    assert result.status == "unavailable" and result.error["stage"] == "setup"
    assert "route=export needs iree-turbine" in result.error["message"] and "route=onnx" in result.error["hint"]


@needs("iree")
def test_one_local_task_driver_per_process(monkeypatch):
    """A second worker count in one process, or a driver inherited through a fork, is refused
    (the driver is checked before any is made: nothing is made in this process)."""
    from backendiff.backends import iree

    monkeypatch.setitem(iree._DRIVER, "local-task", (os.getpid(), 2))
    with pytest.raises(BackendUnavailable, match="already runs 2 workers"):
        iree.local_task_device(4)
    monkeypatch.setitem(iree._DRIVER, "local-task", (os.getpid() + 1, None))
    with pytest.raises(BackendUnavailable, match="do not survive a fork"):
        iree.local_task_device(None)


def test_precision_count_leaves_out_data_movement():
    from backendiff.backends.iree import count_precisions

    ops = [("linalg.fill", "f16", {"linalg.yield"}),
           ("linalg.generic", "f16", {"arith.mulf", "arith.addf", "linalg.yield"}),
           ("linalg.generic", "f16", {"arith.truncf", "linalg.yield"}),      # a cast
           ("linalg.matmul", "f32", {"arith.mulf", "arith.addf", "linalg.yield"}),
           ("linalg.generic", "i64", {"arith.addi", "linalg.yield"}),        # index arithmetic
           ("linalg.transpose", "f32", set())]
    assert count_precisions(ops) == {"fp16": 1, "fp32": 1}
