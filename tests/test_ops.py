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

    monkeypatch.setattr(ops, "run_case", boom)          # a rerun reads what is stored
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
    diverged = {"status": "diverged", "samples": 3, "diverged_samples": 1, "worst": {"sample": "b"}}
    merged = merge([diverged, failed])
    assert merged["status"] == "failed" and merged["samples"] == 5 and merged["also_diverged"] == {"sample": "b"}
    assert merge([{"status": "agree", "samples": 2}, diverged]) | {} == {**diverged, "samples": 5}
    assert names_the_op("Unsupported function types ['nonzero.default']", "nonzero")
    assert not names_the_op("shapes do not match", "nn.functional.selu")


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
