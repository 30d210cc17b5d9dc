"""``backendiff ops``: PyTorch's OpInfo database through the runtimes, one cell per operator
and backend, stored as it finishes (a small subset here; the full run is `make ops`)."""
import json
from pathlib import Path

import pytest

from backendiff.config import CompareConfig
from backendiff.ops import merge, names_the_op

from .conftest import needs

pytest.importorskip("expecttest", reason="PyTorch's operator database needs expecttest (backendiff[hf])")

def config(tmp_path):
    """compare's settings for the cells; the latest matrix goes to this test's own cache."""
    return CompareConfig(layerwise="never", advise=False, task="off", use_cache=False, cache_dir=tmp_path / "cache")


@needs("ort", "tvm")
def test_a_subset_finds_tvms_selu_and_resumes(tmp_path, monkeypatch):
    import backendiff.ops as ops

    matrix = ops.run(["sigmoid", "nn.functional.selu"], ["ort", "tvm"], ["fp32"], 4, tmp_path, False, config(tmp_path))
    cells = {(row["op"], spec): cell for row in matrix["rows"] for spec, cell in row["cells"].items()}
    assert cells[("sigmoid", "ort")]["status"] == "agree" and cells[("nn.functional.selu", "ort")]["status"] == "agree"
    assert cells[("sigmoid", "ort")]["samples"] >= 2
    selu = cells[("nn.functional.selu", "tvm")]       # TVM's SELU (ExportedProgram route) is off by ~5%
    assert selu["status"] == "diverged" and selu["worst"]["metrics"]["sqnr_db"] < 40
    assert selu["worst"]["sample"].startswith("Tensor[")
    # its reproducer runs without backendiff and shows the divergence
    import re
    import subprocess
    import sys

    source = Path(selu["reproducer"]).read_text()
    assert "backendiff" not in source.split('"""')[2]                     # no import of ours
    shown = subprocess.run([sys.executable, selu["reproducer"]], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert float(re.search(r"max abs difference ([0-9.e+-]+)", shown.stdout).group(1)) > 0.01
    assert "reproducer" not in cells[("sigmoid", "ort")]
    assert matrix["summary"]["ort"] == {"agree": 2}
    assert json.loads((tmp_path / "matrix.json").read_text())["summary"] == matrix["summary"]
    assert len(list((tmp_path / "cells").glob("*.json"))) == 4

    def boom(*args, **kwargs):
        raise AssertionError("a stored cell was recomputed")

    monkeypatch.setattr(ops, "run_batch", boom)          # a rerun reads what is stored
    again = ops.run(["sigmoid", "nn.functional.selu"], ["ort", "tvm"], ["fp32"], 4, tmp_path, False, config(tmp_path))
    assert again["summary"] == matrix["summary"]
    with pytest.raises(AssertionError, match="recomputed"):  # --force recomputes
        ops.run(["sigmoid"], ["ort"], ["fp32"], 4, tmp_path, True, config(tmp_path))


@needs("tvm")
def test_an_operator_a_runtime_cannot_convert_fails_with_its_reason_without_splitting(tmp_path):
    import backendiff.ops as ops

    matrix = ops.run(["nonzero"], ["tvm"], ["fp32"], 4, tmp_path, False, config(tmp_path))
    cell = matrix["rows"][0]["cells"]["tvm"]
    assert cell["status"] == "failed" and cell["stage"] == "convert" and "nonzero" in cell["message"]
    assert cell["failed_samples"] == cell["samples"] == 4 and cell["examples"]


def test_halves_of_a_batch_merge_worst_first():
    failed = {"status": "failed", "stage": "convert", "message": "m", "examples": ["a"], "samples": 2,
              "failed_samples": 2}
    diverged = {"status": "diverged", "samples": 3, "diverged_samples": 1, "worst": {"sample": "b"}, "diverged_indices": [1]}
    merged = merge([diverged, failed])
    assert merged["status"] == "failed" and merged["samples"] == 5 and merged["also_diverged"] == {"sample": "b"}
    assert merge([{"status": "agree", "samples": 2}, diverged]) | {} == {**diverged, "samples": 5}
    assert names_the_op("Unsupported function types ['nonzero.default']", "nonzero")
    assert not names_the_op("shapes do not match", "nn.functional.selu")


def test_the_default_batch_leaves_every_job_two_batches_at_least():
    from backendiff.ops import OPS_PER_MODULE, batch_size

    assert batch_size(677, 2) == OPS_PER_MODULE == 8      # the whole database: full modules
    assert batch_size(20, 2) == 5                           # a filtered run: 4 batches for 2 jobs
    assert batch_size(3, 4) == batch_size(1, 1) == 1


def test_bad_ops_arguments_are_one_line(tmp_path):
    from click.testing import CliRunner

    from backendiff.cli import cli

    for args, expected in ((["--dtypes", "fp64"], "supported here: fp32"),
                           (["--ops", "no_such_op_*"], "no operator of PyTorch's database matches")):
        result = CliRunner().invoke(cli, ["ops", "-b", "ort", "--out", str(tmp_path), "-q", *args])
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


@needs("tvm")
def test_compare_notes_a_known_divergent_operator_before_running(tmp_path):
    """Pre-flight: with a stored matrix that lists SELU as diverged on tvm, comparing a model
    that uses SELU on tvm says so, with the module and line that use it; ort, where the
    matrix has it agreeing, gets no note."""
    import io

    import torch
    from rich.console import Console

    import backendiff
    import backendiff.ops as ops
    from backendiff.render import print_report

    ops.run(["nn.functional.selu"], ["tvm", "ort"], ["fp32"], 2, tmp_path / "ops", False, config(tmp_path))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = torch.nn.Linear(8, 8), torch.nn.SELU()

        def forward(self, x):
            return self.act(self.fc(x))

    seen = []
    report = backendiff.compare(Net().eval(), inputs=(torch.randn(2, 8),), backends=["tvm", "ort"],
                                cache_dir=tmp_path / "cache", isolate=False, progress=seen.append)
    note = report.backend("tvm").info["known_divergent_ops"][0]
    assert note["op"] == "nn.functional.selu" and note["status"] == "diverged" and note["where"][0]["module"] == "act"
    assert "known_divergent_ops" not in report.backend("ort").info
    assert any("operator matrix lists nn.functional.selu" in m for m in seen)      # before the results
    out = io.StringIO()
    print_report(report, Console(file=out, width=200))
    assert "pre-flight tvm: nn.functional.selu diverged in the operator matrix" in out.getvalue()
    assert "this model uses it at act (test_ops.py:" in out.getvalue()


@needs("tvm")
def test_pre_flight_matches_the_calls_that_diverged_not_every_use_of_the_operator(tmp_path):
    """TVM's max_pool2d diverges only where the indices are returned (max_pool2d_with_indices);
    a model pooling without indices gets no note, one asking for the indices gets it."""
    import torch

    import backendiff
    import backendiff.ops as ops

    matrix = ops.run(["nn.functional.max_pool2d"], ["tvm"], ["fp32"], 16, tmp_path / "ops", False, config(tmp_path))
    cell = matrix["rows"][0]["cells"]["tvm"]
    assert cell["status"] == "diverged" and {c["op"] for c in cell["calls"]["diverged"]} == {"max_pool2d_with_indices"}

    class Pool(torch.nn.Module):
        def __init__(self, indices):
            super().__init__()
            self.pool = torch.nn.MaxPool2d(3, stride=2, ceil_mode=True, return_indices=indices)

        def forward(self, x):
            out = self.pool(x)
            return (out[0], out[1].float()) if isinstance(out, tuple) else out

    def notes(indices):
        report = backendiff.compare(Pool(indices).eval(), inputs=(torch.randn(1, 2, 9, 9),), backends=["tvm"],
                                    cache_dir=tmp_path / "cache", isolate=False, layerwise="never", advise=False)
        return report.backend("tvm").info.get("known_divergent_ops")

    assert notes(False) is None
    (note,) = notes(True)
    assert note["op"] == "nn.functional.max_pool2d" and note["where"][0]["module"] == "pool"


def test_the_deciding_arguments_are_the_values_only_diverging_samples_have():
    from backendiff.ops import same_arguments

    calls = {"diverged": [{"op": "pool", "args": {"k": 3, "ceil_mode": True}},
                          {"op": "pool", "args": {"k": 2, "ceil_mode": True}}],
             "agreeing": [{"op": "pool", "args": {"k": 3, "ceil_mode": False}},
                          {"op": "pool", "args": {"k": 2, "ceil_mode": False}}, {"op": "other", "args": {}}]}
    assert same_arguments(calls, "pool", {"k": 5, "ceil_mode": True}) == (True, {"ceil_mode": True})
    assert same_arguments(calls, "pool", {"k": 3, "ceil_mode": False}) == (False, {"ceil_mode": True})
    assert same_arguments(calls, "other", {}) == (False, {})             # this op only ever agreed
    assert same_arguments(None, "pool", {}) == (None, {})                # an older cell: the operator alone
    mixed = {"diverged": calls["diverged"], "agreeing": [{"op": "pool", "args": {"k": 3, "ceil_mode": True}}]}
    assert same_arguments(mixed, "pool", {"k": 3, "ceil_mode": False}) == (None, {})   # nothing tells them apart


@needs("tvm")
def test_the_cli_writes_the_matrix_page_with_each_divergence_and_its_reproducer(tmp_path):
    from click.testing import CliRunner

    from backendiff.cli import cli

    result = CliRunner().invoke(cli, ["ops", "-b", "tvm", "--ops", "nn.functional.selu", "--ops", "empty_like",
                                      "--samples", "2", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "c"), "-q"])
    assert result.exit_code == 1, result.output                      # SELU diverges on TVM
    page = (tmp_path / "matrix.html").read_text()
    assert "matrix.html" in result.output and "nn.functional.selu" in page
    assert 'class="diverged"' in page and 'href="reproducers/' in page and "SQNR" in page
    assert 'class="semantics"' in page and "uninitialized memory" in page


@needs("ort")
def test_a_batch_the_reference_cannot_run_as_one_module_is_split_not_the_end_of_the_run(tmp_path):
    """broadcast_tensors' samples, put in one module, make PyTorch's own reference fail (the
    full run ended there with exit 2); each half is tried alone and the run goes on."""
    import backendiff.ops as ops

    matrix = ops.run(["broadcast_tensors", "sigmoid"], ["ort"], ["fp32"], 8, tmp_path, False, config(tmp_path))
    cells = {row["op"]: row["cells"]["ort"] for row in matrix["rows"]}
    assert cells["sigmoid"]["status"] == "agree" and cells["broadcast_tensors"]["status"] in ("agree", "skipped")


@needs("tvm")
def test_operators_share_a_module_and_a_failure_is_split_to_the_operator_it_names(tmp_path, monkeypatch):
    """Three operators in one module: TVM cannot convert nonzero; the failure names it, so it
    is split out (not halved blindly) and the others keep the verdicts they have alone."""
    import backendiff
    import backendiff.ops as ops

    calls = []
    real = backendiff.compare

    def counting(module, **kw):
        calls.append(len(kw["inputs"]))
        return real(module, **kw)

    monkeypatch.setattr(backendiff, "compare", counting)
    names = ["sigmoid", "nonzero", "nn.functional.selu"]
    batched = ops.run(names, ["tvm"], ["fp32"], 4, tmp_path / "b", False, config(tmp_path), batch=3)
    # the batch, then the other two: TVM names nonzero's type, so its samples fail without a run of their own
    assert len(calls) == 2
    alone = ops.run(names, ["tvm"], ["fp32"], 4, tmp_path / "a", False, config(tmp_path), batch=1)
    got = {r["op"]: r["cells"]["tvm"] for r in batched["rows"]}
    single = {r["op"]: r["cells"]["tvm"] for r in alone["rows"]}
    assert {k: c["status"] for k, c in got.items()} == {k: c["status"] for k, c in single.items()} == \
        {"sigmoid": "agree", "nonzero": "failed", "nn.functional.selu": "diverged"}
    assert got["nn.functional.selu"]["worst"]["metrics"] == single["nn.functional.selu"]["worst"]["metrics"]
    assert got["sigmoid"]["batch_ops"] == 3 and single["sigmoid"]["batch_ops"] == 1
    assert got["nonzero"]["failed_samples"] == single["nonzero"]["failed_samples"] == got["nonzero"]["samples"]


@needs("ort")
def test_only_the_samples_with_an_untranslatable_node_fail(tmp_path, monkeypatch):
    """torch.onnx has no translation of adaptive_max_pool3d, but only half of the database's
    samples keep one after its decompositions (an output size of 1 becomes amax): those fail,
    found from the program without a run each, and the others run and agree."""
    import backendiff
    import backendiff.ops as ops

    calls = []
    real = backendiff.compare
    monkeypatch.setattr(backendiff, "compare", lambda module, **kw: calls.append(1) or real(module, **kw))
    names = ["nn.functional.adaptive_max_pool3d", "sigmoid"]
    matrix = ops.run(names, ["ort"], ["fp32"], 16, tmp_path / "b", False, config(tmp_path), batch=2)
    cells = {r["op"]: r["cells"]["ort"] for r in matrix["rows"]}
    pool = cells["nn.functional.adaptive_max_pool3d"]
    assert pool["status"] == "failed" and pool["samples"] == 16 and pool["failed_samples"] == 8
    assert "adaptive_max_pool3d" in pool["message"]
    assert cells["sigmoid"]["status"] == "agree"
    assert len(calls) == 2                      # the batch, then everything but the 8 failing samples
    # each sample alone, for the truth of it
    alone = [ops.run_batch([ops.OpCase(c.name, c.dtype, c.op, (s,))], ["ort"], config(tmp_path))
             for c in ops.cases(ops.load_database(), ["nn.functional.adaptive_max_pool3d"], "fp32", 16)
             for s in c.samples]
    assert sum(next(iter(a.values()))["status"] == "failed" for a in alone) == 8



@needs("openvino")
def test_a_failure_that_names_the_operator_is_still_split_to_the_samples_that_fail_alone(tmp_path):
    """OpenVINO's CPU plugin cannot compile repeat_interleave with tensor repeats (a Tile of
    dynamic rank): the failure names the operator, yet only 2 of its 5 samples fail alone,
    as each alone shows. Taking the named operator's every sample as failed said 5."""
    import backendiff.ops as ops

    matrix = ops.run(["repeat_interleave"], ["openvino"], ["fp32"], 16, tmp_path, False, config(tmp_path))
    cell = matrix["rows"][0]["cells"]["openvino"]
    assert cell["status"] == "failed" and "repeat_interleave" in cell["message"]
    assert (cell["samples"], cell["failed_samples"]) == (5, 2)
    assert all("repeats=Tensor" in e for e in cell["examples"])


def test_failures_that_name_what_a_route_cannot_translate_are_read_per_adapter():
    from backendiff.backends.openvino import OpenVinoAdapter
    from backendiff.backends.ort import OrtAdapter
    from backendiff.backends.tvm import TvmAdapter

    tvm = TvmAdapter.failed_nodes({"message": "Unsupported function types ['sort.stable', 'amax.default']"})
    assert tvm.targets == {"sort.stable", "amax.default"} and tvm.complex is None
    onnx = ("torch.onnx.export failed: DispatchError: No ONNX function found for <OpOverload(op='aten.constant_pad_nd', "
            "overload='default')>. Failure message: No decompositions registered for the complex-valued input")
    for adapter in (OrtAdapter, OpenVinoAdapter, TvmAdapter):        # any onnx route meets torch.onnx's
        found = adapter.failed_nodes({"message": onnx})
        assert found.targets == {"aten.constant_pad_nd.default"} and found.complex is True
    ov = OpenVinoAdapter.failed_nodes({"message": "Model wasn't fully converted.\nSummary:\n-- No conversion rule "
                                                  "found for operations: aten.polygamma.default, aten.lgamma.default"})
    assert ov.targets == {"aten.polygamma.default", "aten.lgamma.default"}
    # a failure of one node's arguments is not every node of its type's
    assert OpenVinoAdapter.failed_nodes({"message": "-- Conversion is failed for: aten.avg_pool2d.default"}) is None
    assert OrtAdapter.failed_nodes({"message": "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code"}) is None


def test_a_runtime_failure_is_shown_by_the_line_that_says_what_failed():
    from backendiff.ops import Part, failure_line, named_parts

    message = ("Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\n"
               "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted. Failed operations "
               "detailed log:\n-- aten.avg_pool2d.default with a message:\nException happened during conversion of "
               "operation avg_pool2d_5/aten.avg_pool2d.default with schema NONE\nCheck 'pads_begin.size() == "
               "num_spatial' failed at src/core/shape_inference/include/pooling_shape_inference_util.hpp:23:\n"
               "While validating node 'opset14::AvgPool AvgPool_188':\nExpected pads_begin size to be equal to "
               "input size - 2. Got: 1\nSummary:\n-- Conversion is failed for: aten.avg_pool2d.default")
    err = {"message": message, "operator": "aten.avg_pool2d.default"}
    assert failure_line(err) == "aten.avg_pool2d.default: Expected pads_begin size to be equal to input size - 2. Got: 1"
    assert failure_line({"message": "No ONNX function found for aten.x"}) == "No ONNX function found for aten.x"

    class Case:
        def __init__(self, name):
            self.name = name

    parts = [Part(Case("nn.functional.avg_pool2d"), (0,), (frozenset({"avg_pool2d", "add"}),)),
             Part(Case("sigmoid"), (0,), (frozenset({"sigmoid", "add"}),)),
             Part(Case("nn.functional.adaptive_max_pool1d"), (0,), (frozenset({"adaptive_max_pool2d", "add"}),))]
    assert named_parts(err, parts) == {"nn.functional.avg_pool2d"}
    # named through an ATen operator of its own (the database name differs), not one all share
    onnx = {"message": "DispatchError: No ONNX function found for aten.adaptive_max_pool2d; add failed"}
    assert named_parts(onnx, parts) == {"nn.functional.adaptive_max_pool1d"}


@needs("tvm")
def test_runtime_frontends_are_imported_before_workers_fork(tmp_path):
    """compare imports TVM's PyTorch frontend in the parent (Adapter.preload), so a forked
    worker does not import it again on every run."""
    import subprocess
    import sys

    code = ("import sys, torch, backendiff\n"
            "assert 'tvm.relax.frontend.torch' not in sys.modules\n"
            "m = torch.nn.Linear(3, 2)\n"
            f"r = backendiff.compare(m, inputs=(torch.ones(1, 3),), backends=['tvm'], cache_dir={str(tmp_path)!r})\n"
            "assert r.backends[0].status == 'ok', r.backends[0].status\n"
            "print('tvm.relax.frontend.torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("True")


FIVE = {"tvm": ["nn.functional.selu", "add", "addr"], "ort": ["scatter_reduce.mean"], "openvino": ["erfinv"]}


@needs("ort", "openvino", "tvm")
def test_five_reproducers_run_standalone_and_show_their_divergence(tmp_path):
    """A sample of five divergences of the full run (TVM's SELU, add's alpha, addr's beta=0
    with NaN input; ORT's scatter_reduce mean with include_self, OpenVINO's erfinv near ±1):
    each reproducer runs without backendiff, in a clean folder, and prints the difference."""
    import re
    import shutil
    import subprocess
    import sys

    import backendiff.ops as ops

    made = []
    for spec, names in FIVE.items():
        matrix = ops.run(names, [spec], ["fp32"], 16, tmp_path / spec, False, config(tmp_path))
        for row in matrix["rows"]:
            cell = row["cells"][spec]
            assert cell["status"] == "diverged" and cell.get("reproducer"), (row["op"], spec, cell)
            made.append(Path(cell["reproducer"]))
    assert len(made) == 5
    for path in made:
        alone = tmp_path / "alone" / path.stem
        alone.mkdir(parents=True)
        for suffix in (".py", ".npz"):
            shutil.copy(path.with_suffix(suffix), alone / path.with_suffix(suffix).name)
        assert "backendiff" not in (alone / path.name).read_text().split('"""')[2]
        shown = subprocess.run([sys.executable, path.name], capture_output=True, text=True, timeout=300, cwd=alone)
        assert shown.returncode == 0, (path.name, shown.stderr[-2000:])
        worst = max(float(x) for x in re.findall(r"max abs difference ([0-9.e+-]+|nan|inf)", shown.stdout))
        differ = sum(int(x) for x in re.findall(r"NaN/Inf differ at (\d+)", shown.stdout))
        assert worst > 1e-3 or differ > 0 or "shape" in shown.stdout, (path.name, shown.stdout)


@needs("ort")
def test_batches_in_parallel_jobs_give_the_matrix_of_one_job(tmp_path):
    """Two forked jobs share the batches; every cell is stored once and the matrix is the
    one a single process builds."""
    import backendiff.ops as ops

    names = ["sigmoid", "abs", "nn.functional.selu", "nonzero"]
    one = ops.run(names, ["ort"], ["fp32"], 4, tmp_path / "one", False, config(tmp_path), batch=1)
    two = ops.run(names, ["ort"], ["fp32"], 4, tmp_path / "two", False, config(tmp_path), batch=1, jobs=2)

    def view(matrix):
        return {r["op"]: (r["cells"]["ort"]["status"], r["cells"]["ort"]["samples"], tuple(r["aten"])) for r in matrix["rows"]}

    assert view(two) == view(one) and len(view(one)) == 4
    assert len(list((tmp_path / "two" / "cells").glob("*.json"))) == 4
