"""The command line: the table, the JSON report, exit codes, and one clear line (exit 2,
no traceback) for every kind of bad input."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from backendiff.cli import cli

from .conftest import needs


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default reports/ land here, not in the checkout


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("backendiff: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,needles", [
    (["compare", "nope.pt"], ["model file not found: nope.pt"]),
    (["compare", "zoo:digits-cnn", "--backends", "tflite"], ["unknown backend 'tflite'"]),
    (["compare", "zoo:digits-cnn", "--backends", "ort:"], ["malformed backend spec"]),
    (["compare", "zoo:digits-cnn", "--backends", "ort,opt=fast"], ["bad value 'fast'"]),
    (["compare", "zoo:digits-cnn", "--input", "x:1x1x12x12"], ["does not run on the inputs"]),
    (["compare", "zoo:digits-cnn", "--input", "y:1x1x8x8"], ["unknown ['y']"]),
    (["compare", "zoo:digits-cnn", "--input", "x:1x1x8"], ["does not run on the inputs"]),
    (["compare", "zoo:digits-cnn", "--input", "x:1by1"], ["malformed shape"]),
    (["compare", "zoo:digits-cnn", "--samples", "0"], ["--samples must be at least 1"]),
    (["compare", "zoo:nope"], ["unknown zoo model 'nope'"]),
    (["compare", "zoo:digits-cnn", "--bogus"], ["No such option '--bogus'"]),
    (["compare", "zoo:digits-cnn", "--json", "/proc/nope/r.json"], ["cannot write report"]),
    (["report", "missing.json"], ["report file not found"]),
])
def test_bad_usage_is_one_line_exit_2(args, needles):
    one_line_error(run(*args), *needles)


def test_corrupt_and_wrong_shape_files(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    one_line_error(run("compare", str(bad)), "cannot read ONNX file")
    import torch

    ep = torch.export.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),))
    torch.export.save(ep, tmp_path / "m.pt2")
    one_line_error(run("compare", str(tmp_path / "m.pt2"), "--input", "input:1x3x9x9"),
                   "input input has shape (1, 3, 9, 9) but the model expects (1, 3, 8, 8)")
    import numpy as np

    np.savez(tmp_path / "in.npz", input=np.zeros((1, 3, 8, 8), np.float32), extra=np.zeros(1))
    one_line_error(run("compare", str(tmp_path / "m.pt2"), "--inputs", str(tmp_path / "in.npz")), "unexpected extra")


def test_no_traceback_from_the_real_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "backendiff", "compare", str(tmp_path / "x.pt2")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"backendiff: error: model file not found: {tmp_path / 'x.pt2'}"]


@needs("ort")
def test_compare_writes_table_and_json(tmp_path):
    out = tmp_path / "r.json"
    result = run("compare", "zoo:digits-cnn", "--backends", "ort,torch", "--json", str(out), "--samples", "2")
    assert result.exit_code == 0, result.output
    assert "ort" in result.stdout and "verdict: pass" in result.stdout and "torch fp32 vs fp64" in result.stdout
    data = json.loads(out.read_text())
    assert data["schema"] == "backendiff.report/1" and data["verdict"] == "pass"
    assert data["model"]["inputs"] == [{"name": "x", "shape": [8, 1, 8, 8], "dtype": "float32"}]
    ort = data["backends"][0]
    assert ort["spec"] == "ort" and ort["status"] == "ok" and ort["error"] is None
    assert set(ort["timings"]) == {"setup_s", "convert_s", "compile_s", "infer_s", "task_s", "peak_rss_mb"}
    assert ort["task"]["samples"] == 540 and ort["task"]["reference"] > 98.5
    assert set(ort["outputs"][0]["metrics"]) == {"max_abs", "mean_abs", "max_rel", "cosine", "sqnr_db", "identical",
                                                 "nonfinite", "nonfinite_mismatch", "first_mismatch"}
    assert data["environment"]["versions"]["onnxruntime"]
    # re-rendering the saved run gives the same table and exit code
    again = run("report", str(out))
    assert again.exit_code == 0 and "verdict: pass" in again.stdout


def test_requested_backend_that_cannot_run_exits_3(tmp_path):
    result = run("compare", "zoo:digits-cnn", "--backends", "torch,trt", "--no-json")
    trt_available = "trt" in result.stdout and "unavailable" not in result.stdout
    if trt_available:
        pytest.skip("TensorRT is available here")
    assert result.exit_code == 3
    assert "unavailable" in result.stdout and "ok" in result.stdout


def test_backends_lists_every_adapter():
    result = run("backends", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) >= {"ort", "openvino", "tvm", "trt", "torch"}
    assert rows["torch"]["available"] is True
    if not rows["trt"]["available"]:
        assert rows["trt"]["reason"] and rows["trt"]["hint"]


def test_default_report_goes_under_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("compare", "zoo:digits-cnn", "--backends", "torch")
    assert result.exit_code == 0
    files = list((tmp_path / "reports").glob("digits-cnn-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["verdict"] == "pass"


def test_zoo_lists_models_with_their_reference_score():
    result = run("zoo", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {"digits-cnn", "mini-pose", "resnet50", "fp16-overflow"} <= set(rows)
    assert rows["digits-cnn"]["task"] == "classification" and rows["digits-cnn"]["score"]["value"] > 98.5
    assert 25e6 < rows["resnet50"]["parameters"] < 26e6 and rows["resnet50"]["score"] is None
