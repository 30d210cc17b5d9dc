"""A verdict needs signal: the vacuous check, the SQNR/cosine floors, the fp64 judge, and
honest numbers where NaN/Inf patterns differ."""
import json
import math
import types

import numpy as np
import torch
from torch import nn

import backendiff
from backendiff import verdict as V

from .conftest import degraded_backend, needs


# -- the rules, as pure functions -----------------------------------------------------------
def test_degenerate_references():
    assert "all zeros" in V.degenerate([np.zeros((2, 3), np.float32)], 1e-4)
    assert "constant" in V.degenerate([np.full((4,), 3.5, np.float32)], 1e-4)
    assert "within atol" in V.degenerate([np.linspace(-1e-9, 1e-9, 9)], 1e-4)
    assert V.degenerate([np.linspace(-1, 1, 9)], 1e-4) is None
    assert V.degenerate([np.zeros(3), np.linspace(0, 1, 3)], 1e-4) is None     # signal on another sample
    assert V.degenerate([np.array([0, 0, 0])], 1e-4) is None                    # integers are compared exactly


def test_floors_by_precision_and_overrides():
    assert V.floor_for("fp32") == V.Floor(40.0, 0.9999) and V.floor_for("int8") == V.Floor(10.0, 0.9)
    assert V.floor_for("fp16", min_sqnr=50).sqnr_db == 50 and V.floor_for("fp16", min_sqnr=50).cosine == 0.995
    assert V.below_floor({"sqnr_db": 0.0, "cosine": None}, V.floor_for("fp16")).startswith("SQNR 0.0 dB")
    assert "cosine" in V.below_floor({"sqnr_db": 60.0, "cosine": 0.5}, V.floor_for("fp32"))
    assert V.below_floor({"sqnr_db": None, "cosine": 1.0, "identical": True}, V.floor_for("fp32")) is None


def test_fp64_judge_excuses_rounding_not_error():
    rng = np.random.default_rng(0)
    gold = rng.standard_normal(1000)
    torch32 = gold + rng.standard_normal(1000) * 1e-6
    same_league = gold + rng.standard_normal(1000) * 1.5e-6
    worse = gold * (1 + 1e-3)
    assert V.fp64_judge([same_league], [torch32], [gold])["excused"]
    j = V.fp64_judge([worse], [torch32], [gold])
    assert not j["excused"] and j["ratio"] > 100
    # exact reference, any error: not excused (no division by zero)
    assert not V.fp64_judge([gold + 1e-9], [gold], [gold])["excused"]


def test_nan_disagreement_is_never_excused():
    m = {"max_abs": 0.0, "sqnr_db": None, "cosine": None, "nonfinite_mismatch": 3}
    v = V.judge_output(m, False, [np.ones(4)], [np.array([np.nan] * 3 + [1.0])], [np.ones(4)],
                       precision="fp32", atol=1e-4, floor=V.floor_for("fp32"))
    assert v.status == "diverged" and "3 elements" in v.reason


# -- the rules on real runtimes -------------------------------------------------------------
class Cancellation(nn.Module):
    """``(x @ x.T) - (x*x).sum(-1)``: large terms cancel, so fp32 rounding alone (PyTorch's
    included) leaves ~1e-3 absolute error, past fp32's atol of 1e-4."""

    def forward(self, x):
        return (x @ x.T) - (x * x).sum(-1)


def cancellation_input():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(64, 256, generator=g) * 4,)


@needs("ort")
def test_fp64_judge_on_ort_and_its_absence():
    kw = dict(inputs=cancellation_input(), backends=["ort"], use_cache=False, isolate=False)
    judged = backendiff.compare(Cancellation(), **kw)
    o = judged.backend("ort").outputs[0]
    assert not o.within_tolerance and o.status == "ok" and judged.backend("ort").status == "ok"
    assert "as close to fp64 as PyTorch fp32" in o.reason and o.judge["ratio"] < 2.0
    assert judged.exit_code == 0
    blind = backendiff.compare(Cancellation(), golden=False, atol=1e-4, **kw)
    assert blind.backend("ort").status == "diverged" and blind.exit_code == 1


def test_a_real_divergence_stays_diverged_with_the_judge():
    """A deployment that scales one node by 1 + 1e-3 is not excused as rounding."""
    def perturb(module):
        forward = module.forward
        module.forward = types.MethodType(lambda self, x: forward(x) * (1 + 1e-3), module)

    with degraded_backend("perturbed", perturb):
        r = backendiff.compare(Cancellation(), inputs=cancellation_input(), backends=["perturbed"],
                               use_cache=False, isolate=False)
    o = r.backend("perturbed").outputs[0]
    assert r.backend("perturbed").status == "diverged" and not o.judge["excused"] and o.judge["ratio"] > 10


class Tiny(nn.Module):
    """Outputs around 1e-12, as a random-weight EfficientNet's ~1e-20: fp16 underflows them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x) * 1e-12


class Zeros(nn.Module):
    """A head that starts at zero: all-zero logits whatever the input."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(torch.relu(x))


@needs("openvino", "ort", "tvm")
def test_fp16_underflow_is_never_ok():
    x = (torch.randn(2, 16, generator=torch.Generator().manual_seed(1)),)
    r = backendiff.compare(Tiny(), inputs=x, backends=["openvino:fp16", "tvm:fp16", "ort:fp16", "ort", "torch:fp16"],
                           use_cache=False, isolate=False)
    for b in r.backends:
        assert b.status in ("diverged", "vacuous"), (b.spec, b.status)
    fp16 = r.backend("openvino:fp16")
    assert fp16.status == "diverged" and "below the floor" in fp16.outputs[0].reason     # underflowed: 0 dB
    assert r.backend("ort").status == "vacuous"            # exact, but atol alone decided
    assert r.verdict != "pass" and r.exit_code != 0


@needs("ort", "openvino", "tvm")
def test_all_zero_outputs_are_vacuous_on_every_backend(tmp_path):
    x = (torch.randn(2, 16),)
    r = backendiff.compare(Zeros(), inputs=x, backends=["ort", "openvino", "tvm"], use_cache=False)
    assert [b.status for b in r.backends] == ["vacuous"] * 3
    o = r.backends[0].outputs[0]
    assert "all zeros" in o.reason and o.metrics["cosine"] is None      # two zero vectors: no cosine of 1
    assert r.verdict == "vacuous" and r.exit_code == 4 and not r
    data = json.loads(r.to_json())
    assert data["verdict"] == "vacuous" and data["backends"][0]["outputs"][0]["status"] == "vacuous"


def test_a_floor_fails_an_output_inside_atol():
    """Inside atol and rtol, but with half the signal gone: the SQNR floor catches it."""
    class Small(nn.Module):
        def forward(self, x):
            return x * 1e-3

    def halve(module):
        forward = module.forward
        module.forward = types.MethodType(lambda self, x: forward(x) * 0.5, module)

    x = (torch.linspace(-1, 1, 32).reshape(2, 16),)
    with degraded_backend("halved", halve):
        r = backendiff.compare(Small(), inputs=x, backends=["halved"], use_cache=False, isolate=False, atol=1e-3)
    o = r.backend("halved").outputs[0]
    assert o.within_tolerance and o.status == "diverged" and "below the floor" in o.reason
    with degraded_backend("halved", halve):
        loose = backendiff.compare(Small(), inputs=x, backends=["halved"], use_cache=False, isolate=False,
                                   atol=1e-3, min_sqnr=3.0, min_cosine=0.5)
    assert loose.backend("halved").status == "ok"


def test_nan_disagreement_counts_and_locates():
    """A backend that puts NaN where the reference has numbers: how many and where, in the JSON
    and the table; no max abs 0 / cosine 1 / SQNR sentinel."""
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return self.fc(x)

    def poison(module):
        forward = module.forward

        def run(self, x):
            y = forward(x).clone()
            y[1, 2:4] = float("nan")
            return y
        module.forward = types.MethodType(run, module)

    with degraded_backend("poisoned", poison):
        r = backendiff.compare(Lin(), inputs=(torch.randn(3, 4),), backends=["poisoned"], use_cache=False,
                               isolate=False)
    text = r.to_json()
    assert "-999" not in text and "Infinity" not in text
    m = json.loads(text)["backends"][0]["outputs"][0]["metrics"]
    assert m["nonfinite_mismatch"] == 2 and m["first_mismatch"] == [1, 2]
    assert m["sqnr_db"] is None and m["cosine"] is None
    from rich.console import Console

    from backendiff.render import output_notes, print_report

    console = Console(record=True, width=200)
    print_report(r, console)
    row = next(line for line in console.export_text().splitlines() if "poisoned" in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[3:8] == ["-", "-", "-", "-", "2 · 2≠"]       # max abs, max rel, cosine, SQNR, NaN/Inf
    notes = output_notes(json.loads(text)["backends"][0]["outputs"], None)
    assert notes == ["output: NaN/Inf differ from the reference at 2 elements (first at [1, 2])"]


@needs("ort")
def test_cli_floor_flags_and_exit_code_4(tmp_path):
    from click.testing import CliRunner

    from backendiff.cli import cli

    (tmp_path / "zeros.py").write_text(
        "import torch\nfrom torch import nn\n\nclass Z(nn.Module):\n    def forward(self, x):\n        return x * 0\n\n"
        "def build():\n    return Z(), (torch.randn(2, 4),)\n")
    run = CliRunner().invoke(cli, ["compare", f"{tmp_path / 'zeros.py'}:build", "-b", "ort", "--no-isolate", "-q",
                                   "--json", str(tmp_path / "r.json")])
    assert run.exit_code == 4, run.output
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "vacuous"
    strict = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn-narrow", "-b", "ort", "--no-isolate", "-q",
                                      "--no-task", "--min-sqnr", "400", "--json", str(tmp_path / "s.json")])
    assert strict.exit_code == 1, strict.output
    assert math.isclose(json.loads((tmp_path / "s.json").read_text())["backends"][0]["floor"]["sqnr_db"], 400)
