"""An export that fails says why in a few lines, where in the user's code, and what to do
next; the exporter's own printout (an FX graph of thousands of lines) stays out of the
terminal. ``--export draft`` continues past data-dependent guards and says what it assumed."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from backendiff.inputs import parse_input_spec

from .conftest import needs

ROOT = Path(__file__).resolve().parents[1]

DETECTOR = textwrap.dedent('''
    import torch
    from torch import nn


    class Detector(nn.Module):
        """A backbone and a head, then data-dependent post-processing (a threshold and a cap)."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.backbone = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 5, 1)

        def forward(self, x):
            y = self.head(torch.relu(self.backbone(x))).flatten(2).transpose(1, 2)[0]
            keep = y[y[:, 4].sigmoid() > 0.5]
            if keep.shape[0] > 10:
                keep = keep[:10]
            return keep


    def make():
        return Detector().eval()
''')


def run(tmp_path, *extra):
    (tmp_path / "det.py").write_text(DETECTOR)
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "backendiff", "compare", f"{tmp_path / 'det.py'}:make", "--input",
                        "x:1x3x16x16", "-b", "ort,openvino", "--no-cache", "--no-golden", "--json", str(out), *extra],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
    return p, json.loads(out.read_text())


@needs("ort", "openvino")
def test_a_data_dependent_export_failure_is_short_and_says_what_next(tmp_path):
    p, report = run(tmp_path)
    text = p.stdout + p.stderr
    assert p.returncode == 3 and "Traceback" not in text
    assert "def forward" not in text and "torch.ops.aten" not in text          # no FX graph dump
    about = [line for line in text.splitlines() if "GuardOnDataDependent" in line or "same failure" in line
             or line.startswith("next") or "det.py:18" in line]
    assert 1 <= len([line for line in text.splitlines() if line.startswith("next")]) <= 2
    assert len(text.splitlines()) <= 20 and len(about) <= 5, text
    assert "the same failure as ort" in text and "--export draft" in text and "det.py:18" in text
    err = report["backends"][0]["error"]
    assert err["export_class"] == "data-dependent" and err["user_source"].endswith("det.py:18: if keep.shape[0] > 10:")
    assert "torch.ops.aten" in err.get("exporter_output", "") or "exporter_output" not in err   # kept in the JSON


@needs("ort", "openvino")
def test_draft_export_runs_and_says_what_it_assumed(tmp_path):
    p, report = run(tmp_path, "--export", "draft")
    assert p.returncode in (0, 1, 3) and "Traceback" not in p.stderr
    assert report["model"]["export"]["mode"] == "draft"
    issues = report["model"]["export"]["draft_issues"]
    assert len(issues) == 1 and "u0 > 10" in issues[0] and "det.py:18" in issues[0]
    assert "export (draft) assumed: data dependent error `u0 > 10`" in p.stdout
    ort, openvino = report["backends"]
    assert ort["status"] in ("ok", "diverged")              # the draft program exports to ONNX and runs
    # OpenVINO's own converter may refuse the unbacked size; then with its own reason, past the export
    assert openvino["status"] in ("ok", "diverged") or openvino["error"]["stage"] == "convert"


EIGH = textwrap.dedent('''
    import torch


    class Spectrum(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            y = self.lin(x)
            return torch.linalg.eigh(y @ y.T)[0]


    def make():
        return Spectrum().eval()
''')


@needs("ort")
def test_an_onnx_conversion_failure_names_the_operator_not_the_exporters_wrapper(tmp_path):
    """torch.onnx wraps the real error ("No ONNX function found for aten._linalg_eigh") in a
    generic coloured "Failed to convert ... step 3/3"; the report keeps the real one."""
    from backendiff.compare import compare

    (tmp_path / "eigh.py").write_text(EIGH)
    report = compare(f"{tmp_path / 'eigh.py'}:make", backends=["ort"], input_specs=(parse_input_spec("x:4x4"),),
                     use_cache=False, golden=False)
    error = report.backends[0].error
    assert error["stage"] == "export" and error["type"] == "DispatchError"
    assert "aten._linalg_eigh" in error["message"] and "\x1b" not in error["message"]
    assert "Failed to convert" not in error["message"]
    assert error["export_class"] == "onnx-op" and "custom_translation_table" in error["hint"]
    assert any("eigh.py:12" in w.get("source", "") for w in error.get("where", [])), error
