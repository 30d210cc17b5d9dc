"""Sweep integrity (issue 15): a row per model even when the models are one class around
different stored functions, identical entries named, every cell that did not run makes
exit 3, the scoreboard is built whatever a cell record holds (fuzzed), findings only
between cells that ran ok, and the scoreboard redrawn from the store alone."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from backendiff.compare import compare
from backendiff.errors import BadInput
from backendiff.html import render_sweep_html
from backendiff.render import print_scoreboard, scoreboard_cell
from backendiff.report import RAN
from backendiff.sweep import (
    CELL_SCHEMA,
    CellStore,
    exit_code,
    findings,
    identical_text,
    make_plan,
    render_from_store,
    run_sweep,
    scoreboard,
    summarize_cell,
)

from .conftest import needs

ROOT = Path(__file__).resolve().parents[1]

# One nn.Module class, its function stored on the instance: what a Python-source key cannot
# tell apart. ``sigmoid_again`` is ``sigmoid`` exactly; ``branchy`` cannot be exported.
ACTS = '''
import torch
from torch import nn


class Act(nn.Module):
    def __init__(self, act):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 4)
        self.act = act

    def forward(self, x):
        return self.act(self.fc(x))


class Branchy(Act):
    def forward(self, x):
        y = self.fc(x)
        return y if float(y.sum()) > 0 else -y      # data-dependent: torch.export refuses it


def _make(act, cls=Act):
    return cls(act).eval(), (torch.randn(2, 6, generator=torch.Generator().manual_seed(1)),)


def sigmoid():
    return _make(torch.sigmoid)


def tanh():
    return _make(torch.tanh)


def double():
    return _make(lambda t: t * 2)


def zero():
    return _make(lambda t: t * 0)


def sigmoid_again():
    return _make(torch.sigmoid)


def branchy():
    return _make(torch.tanh, Branchy)
'''
FACTORIES = ("sigmoid", "tanh", "double", "zero", "sigmoid_again", "branchy")

TINY = "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n" \
       "    return nn.Sequential(nn.Linear(6, 4), nn.Tanh()), (torch.randn(2, 6),)\n"


def _sweep_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "backendiff", "sweep", *map(str, args), "-q"],
                          capture_output=True, text=True, cwd=cwd)


# -- one class, many stored functions; identical entries --------------------------------------
@pytest.fixture(scope="module")
def act_sweep(tmp_path_factory, cache_dir):
    folder = tmp_path_factory.mktemp("acts")
    (folder / "acts.py").write_text(ACTS)
    names = [f"{folder / 'acts.py'}:{f}" for f in FACTORIES]
    plan = make_plan(names, ["ort"], runs=2, warmup=0)
    store = CellStore(folder / "store")
    board = run_sweep(plan, store, workers=2, cache_dir=str(cache_dir))
    return plan, store, board, dict(zip(FACTORIES, names))


@needs("ort")
def test_one_class_many_stored_functions_gives_a_key_and_a_row_each(act_sweep):
    """The 57-lambdas case in small: each factory its own cell key and row, each row's
    verdict that of ``compare`` without any cache on that model."""
    _, _, board, names = act_sweep
    distinct = [names[f] for f in FACTORIES if f != "sigmoid_again"]
    assert len({board["matrix"][n]["ort"]["key"] for n in distinct}) == len(distinct) == 5
    records = {r["key"]: r for r in board["cells"]}
    for f, name in names.items():
        cell = board["matrix"][name]["ort"]
        report = compare(name, backends=["ort"], use_cache=False, isolate=False)
        assert cell["status"] == report.backends[0].status, (f, cell)
        if f != "branchy":            # the record that serves the row is of this very model
            assert records[cell["key"]]["report"]["model"]["key"] == report.model["key"], f
    assert board["matrix"][names["branchy"]]["ort"]["resumable"] is False


@needs("ort")
def test_identical_entries_are_named_and_share_one_cell(act_sweep):
    _, _, board, names = act_sweep
    a, b = names["sigmoid"], names["sigmoid_again"]
    assert board["identical"] == [{"model": b, "same_as": a, "text": identical_text(b, a)}]
    assert "is identical to" in identical_text(b, a) and "one cell serves both" in identical_text(b, a)
    assert board["matrix"][b]["ort"] == board["matrix"][a]["ort"]           # both rows, one result
    assert board["matrix"][a]["ort"]["status"] == "ok"
    assert board["run"]["cells"] == 6 and board["run"]["ran"] == 5          # the shared cell ran once
    out = StringIO()
    print_scoreboard(board, Console(file=out, width=300))
    assert f"{b} is identical to {a}" in out.getvalue() and "1 shared by identical entries" in out.getvalue()
    assert f"{b} is identical to {a}" in render_sweep_html(board, {})
    assert f"{b} is identical to {a}" in json.dumps(board)


@needs("ort")
def test_rerun_resumes_keyed_models_and_reruns_the_unexportable_one(act_sweep, cache_dir):
    plan, store, first, names = act_sweep
    again = run_sweep(plan, store, workers=2, cache_dir=str(cache_dir))
    assert again["run"]["ran"] == 1 and again["run"]["resumed"] == 4       # branchy: a new nonce key
    branchy = names["branchy"]
    assert again["matrix"][branchy]["ort"]["key"] != first["matrix"][branchy]["ort"]["key"]
    assert exit_code(again) == exit_code(first) == 3                        # branchy cannot export: failed


# -- exit codes ------------------------------------------------------------------------------
def _board(statuses: dict) -> dict:
    specs = sorted({s for row in statuses.values() for s in row})
    return {"models": list(statuses), "specs": specs,
            "matrix": {m: {s: {"status": st_} for s, st_ in row.items() if st_ is not None} for m, row in statuses.items()}}


@pytest.mark.parametrize("statuses, code", [
    ({"a": {"ort": "ok", "tvm": "diverged"}}, 0),
    ({"a": {"ort": "ok", "tvm": "vacuous"}}, 0),                    # ran: it says nothing, but it ran
    ({"a": {"ort": "ok", "tvm": None}}, 3),                         # planned, no cell at all
    ({"a": {"ort": "ok", "tvm": "not run"}}, 3),
    *[({"a": {"ort": "ok", "tvm": s}}, 3) for s in ("lost", "error", "failed", "unavailable", "crashed", "timeout")],
    ({}, 3),
])
def test_exit_code_is_3_for_every_cell_that_did_not_run(statuses, code):
    assert exit_code(_board(statuses)) == code


def test_a_planned_cell_without_a_record_is_not_run():
    plan = make_plan(["a", "b"], ["ort"])
    board = scoreboard(plan, [_record("k1", "a", "ort")], [("a", "ort", "k1"), ("b", "ort", "k2")])
    assert board["matrix"]["b"]["ort"] == {"status": "not run", "key": "k2"} and exit_code(board) == 3
    assert str(scoreboard_cell(board["matrix"]["b"]["ort"])) == "not run"


# -- the CLI: wrong shape, failed conversion, crashed worker; rendering failure; re-rendering ---
@pytest.fixture(scope="module")
def bad_cells_cli(tmp_path_factory, cache_dir):
    folder = tmp_path_factory.mktemp("badcells")
    (folder / "tiny.py").write_text(TINY)
    args = [f"{folder / 'tiny.py'}:build", "-b", "wrongshape,failsconvert,segfaults", "--plugin", "tests.sweep_plugin",
            "--plugin", "tests.sweep_integrity_plugin", "--runs", "2", "--warmup", "0", "--workers", "2",
            "--out", folder / "out", "--cache-dir", cache_dir]
    return folder, args, _sweep_cli(*args)


def test_wrong_shape_failed_conversion_and_crash_still_give_a_scoreboard_and_exit_3(bad_cells_cli):
    folder, _, p = bad_cells_cli
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    board = json.loads((folder / "out" / "sweep.json").read_text())
    row = board["matrix"][board["models"][0]]
    assert row["wrongshape"]["status"] == "diverged" and "not compared" in row["wrongshape"]["note"]
    assert row["failsconvert"]["status"] == "failed" and "no conversion" in row["failsconvert"]["error"]
    assert row["segfaults"]["status"] == "crashed" and "SIGSEGV" in row["segfaults"]["error"]
    assert "not compared" in (folder / "out" / "sweep.html").read_text() and "wrongshape" in p.stdout
    assert len(list((folder / "out" / "store" / "cells").glob("*.json"))) == 3


def test_render_only_redraws_from_the_store_and_missing_cells_are_not_run(bad_cells_cli):
    folder, args, _ = bad_cells_cli
    before = json.loads((folder / "out" / "sweep.json").read_text())
    lost = before["matrix"][before["models"][0]]["segfaults"]["key"]
    (folder / "out" / "store" / "cells" / f"{lost}.json").unlink()
    (folder / "out" / "sweep.json").unlink()
    p = _sweep_cli(*args, "--render-only")
    assert p.returncode == 3 and "re-rendered from the store, none run, 1 not in the store" in p.stdout, p.stderr
    board = json.loads((folder / "out" / "sweep.json").read_text())
    row = board["matrix"][board["models"][0]]
    assert row["segfaults"]["status"] == "not run" and board["run"]["ran"] == 0
    assert {s: c["status"] for s, c in row.items() if s != "segfaults"} == {"wrongshape": "diverged", "failsconvert": "failed"}


def test_render_only_without_a_stored_run_is_one_line_exit_2(tmp_path):
    plan = make_plan(["zoo:digits-cnn-narrow"], ["ort"])
    with pytest.raises(BadInput, match="no run of this sweep in the store"):
        render_from_store(plan, CellStore(tmp_path))


@needs("torch")
def test_a_rendering_failure_keeps_the_store_and_render_only_redraws_it(tmp_path, cache_dir):
    (tmp_path / "tiny.py").write_text(TINY)
    out = tmp_path / "out"
    (out / "sweep.html").mkdir(parents=True)            # sweep.html cannot be written
    args = [f"{tmp_path / 'tiny.py'}:build", "-b", "torch", "--runs", "2", "--warmup", "0", "--out", out,
            "--cache-dir", cache_dir]
    p = _sweep_cli(*args)
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "sweep.html" in p.stderr and "--render-only" in p.stderr
    assert json.loads((out / "sweep.json").read_text())["matrix"][f"{tmp_path / 'tiny.py'}:build"]["torch"]["status"] == "ok"
    assert len(list((out / "store" / "cells").glob("*.json"))) == 1
    (out / "sweep.html").rmdir()
    p = _sweep_cli(*args, "--render-only")
    assert p.returncode == 0 and "re-rendered from the store, none run" in p.stdout, p.stderr
    assert "torch" in (out / "sweep.html").read_text()


# -- findings ----------------------------------------------------------------------------------
def _lat(ms):
    return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms}


@pytest.mark.parametrize("cell_status, base_status", [
    *[(s, "ok") for s in ("vacuous", "diverged", "failed", "crashed", "lost", "error", "not run", None)],
    *[("ok", s) for s in ("vacuous", "diverged", "failed", "not run")],
])
def test_findings_never_recommend_or_measure_against_a_cell_that_did_not_run_ok(cell_status, base_status):
    row = {"ort": {"status": base_status, "latency": _lat(2.0)},
           "ort:int8": {"status": cell_status, "latency": _lat(1.0), "sqnr_db": 0.0}}
    assert findings({"m": row}, ["ort", "ort:int8"]) == []
    row["ort"]["status"] = row["ort:int8"]["status"] = "ok"
    [f] = findings({"m": row}, ["ort", "ort:int8"])
    assert f["speedup"] == 2.0


def test_a_vacuous_cell_is_never_shown_as_agreement():
    plan = make_plan(["m"], ["ort", "ort:fp16"])
    vac = _record("k2", "m", "ort:fp16", status="vacuous", sqnr=None, identical=True, ms=0.5)
    board = scoreboard(plan, [_record("k1", "m", "ort"), vac], [("m", "ort", "k1"), ("m", "ort:fp16", "k2")])
    cell = board["matrix"]["m"]["ort:fp16"]
    assert cell["status"] == "vacuous" and cell["note"] == "the reference output is all zeros"
    assert board["findings"] == [] and exit_code(board) == 0
    text = str(scoreboard_cell(cell))
    assert "dB" not in text and "∞" not in text and "top1" not in text and "all zeros" in text
    last = render_sweep_html(board, {}).split('id="sweep-table"')[1].split("</table>")[0].split("<td>")[-1]
    assert "vacuous" in last and "all zeros" in last and "dB" not in last and "top1" not in last


# -- the fuzz: whatever a cell record holds, the scoreboard is built ----------------------------
def _record(key, model, spec, status="ok", sqnr=120.0, identical=False, ms=1.0, **backend):
    metrics = {"max_abs": 1e-7, "mean_abs": 1e-8, "max_rel": 1e-6, "cosine": 1.0, "sqnr_db": sqnr,
               "identical": identical, "nonfinite": 0, "nonfinite_mismatch": 0, "first_mismatch": None}
    b = {"spec": spec, "backend": spec.split(":")[0], "variant": None, "status": status, "error": None,
         "outputs": [{"name": "out", "shape": [2, 4], "metrics": metrics, "within_tolerance": status == "ok",
                      "violations": 0, "reference_shape": None, "status": status,
                      "reason": "the reference output is all zeros" if status == "vacuous" else None}],
         "task": {"metric": "top1", "unit": "%", "reference": 98.0, "value": 97.5, "delta": -0.5, "flip_rate": 0.01,
                  "flip_label": "flipped"},
         "latency": {"median_ms": ms, "p10_ms": ms * 0.9, "p90_ms": ms * 1.2, "runs": 5, "batch": 2},
         "first_divergence": {"module": "fc"} if status == "diverged" else None} | backend
    return {"schema": CELL_SCHEMA, "key": key, "model": model, "spec": spec, "status": status,
            "report": {"schema": "backendiff.report/1", "model": {"key": "m-" + key}, "environment": {"cpu": "test"},
                       "backends": [b]}}


def _kinds(key, model, spec) -> dict:
    wrong = _record(key, model, spec, status="diverged")
    wrong["report"]["backends"][0]["outputs"][0].update(metrics={}, within_tolerance=False, reference_shape=[2, 3])
    failed = _record(key, model, spec, status="failed", outputs=[], latency=None, task=None,
                     error={"stage": "convert", "type": "RuntimeError", "message": "no lowering for aten::foo"})
    crashed = _record(key, model, spec, status="crashed", outputs=[], latency=None, task=None,
                      error={"stage": "run", "type": "crashed", "message": "the worker died of SIGSEGV"})
    lost = {"schema": CELL_SCHEMA, "key": key, "model": model, "spec": spec, "status": "lost",
            "error": {"type": "WorkerLost", "message": "killed (SIGKILL)", "signal": "SIGKILL"}}
    error = {"schema": CELL_SCHEMA, "key": key, "model": model, "spec": spec, "status": "error",
             "error": {"type": "BadInput", "message": "bad model"}}
    return {"ok": _record(key, model, spec), "fast": _record(key, model, spec, ms=0.25),
            "diverged": _record(key, model, spec, status="diverged", sqnr=12.0),
            "vacuous": _record(key, model, spec, status="vacuous", sqnr=None, identical=True),
            "undefined": _record(key, model, spec, status="diverged", sqnr=None),
            "wrong_shape": wrong, "failed": failed, "crashed": crashed, "lost": lost, "error": error}


KINDS = tuple(_kinds("k", "m", "ort"))
GARBAGE = (None, float("nan"), math.inf, -math.inf, "x", "", [], {}, 0, -1, True, 1e308, [None], {"a": float("nan")},
           "ok", "vacuous", -999.0)


def _paths(value, path=()):
    """Every (container path, key) in a JSON-like value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield path + (i,)
            yield from _paths(v, path + (i,))


def _mutate(record, mutations):
    record = copy.deepcopy(record)
    for where, what in mutations:
        paths = list(_paths(record))
        if not paths:
            break
        *head, last = paths[where % len(paths)]
        parent = record
        for k in head:
            parent = parent[k]
        if what == len(GARBAGE):
            del parent[last]
        else:
            parent[last] = copy.deepcopy(GARBAGE[what])
    return record


MODELS, SPECS = ("a", "b"), ("ort", "ort:int8")
PLAN = make_plan(MODELS, SPECS)
CELL = st.one_of(
    st.none(),                                                  # no record: not run
    st.just("garbage"),                                         # a record that is not even a dict
    st.tuples(st.sampled_from(KINDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, len(GARBAGE))),
                                                max_size=6)))
BOARDS = st.tuples(st.lists(CELL, min_size=4, max_size=4), st.booleans())


def _fuzzed_board(cells, share):
    """Four planned cells (2 models x 2 specs) from mutated records; ``share``: model b is
    planned with model a's keys (identical entries)."""
    records, planned = [], []
    for i, ((m, s), cell) in enumerate(zip([(m, s) for m in MODELS for s in SPECS], cells)):
        key = f"k{i % 2}" if share else f"k{i}"
        planned.append({"model": m, "spec": s, "key": key})
        if cell == "garbage":
            records.append("garbage")
        elif cell is not None and not (share and m == "b"):
            kind, mutations = cell
            records.append(_mutate(_kinds(key, m, s)[kind], mutations))
    return scoreboard(PLAN, records, planned), records


def _check_board(board, records):
    json.dumps(board, allow_nan=False)
    for r in records:
        assert isinstance(summarize_cell(r)["status"], str)
    assert exit_code(board) in (0, 3)
    statuses = [board["matrix"][m][s]["status"] for m in MODELS for s in SPECS]
    assert exit_code(board) == (0 if all(s in RAN for s in statuses) else 3)
    for f in board["findings"]:
        assert board["matrix"][f["model"]][f["spec"]]["status"] == "ok"
        assert board["matrix"][f["model"]][f["base"]]["status"] == "ok"
    assert findings(board["matrix"], list(SPECS)) == [{k: v for k, v in f.items() if k != "text"} for f in board["findings"]]
    out = StringIO()
    print_scoreboard(board | {"run": {"cells": 4, "ran": 4, "resumed": 0, "executor": "local", "workers": 1,
                                      "wall_s": 1.0}}, Console(file=out, width=200))
    assert "backendiff sweep" in out.getvalue()


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(BOARDS)
def test_fuzz_the_scoreboard_never_fails_on_a_cell_record(drawn):
    board, records = _fuzzed_board(*drawn)
    _check_board(board, records)


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(BOARDS)
def test_fuzz_the_sweep_page_never_fails_on_a_cell_record(drawn):
    board, _ = _fuzzed_board(*drawn)
    page = render_sweep_html(board, {})
    assert 'id="sweep-table"' in page and "could not be drawn" not in page


def test_every_kind_of_cell_record_unmutated_and_stripped():
    """Each kind as is, and with each of its fields removed in turn (a record from another
    version), through the whole scoreboard, the terminal and the page."""
    for _kind, record in _kinds("k0", "a", "ort").items():
        for path in [None, *_paths(record)]:
            r = _mutate(record, [(list(_paths(record)).index(path), len(GARBAGE))]) if path else record
            board = scoreboard(PLAN, [r], [("a", "ort", "k0")])
            _check_board(board, [r])
    page = render_sweep_html(scoreboard(PLAN, list(_kinds("k0", "a", "ort").values())[:1], [("a", "ort", "k0")]), {})
    assert "<svg" in page


def test_the_terminal_scoreboard_folds_long_model_names_instead_of_cutting_them():
    specs = ["ort", "ort:int8", "ort:fp16", "openvino", "openvino:int8", "tvm", "tvm:fp16"]
    model = "backendiff.models.corpus.hf:swin_for_image_classification"
    cell = {"status": "ok", "sqnr_db": 120.5}
    board = {"models": [model], "specs": specs, "matrix": {model: {s: dict(cell) for s in specs}},
             "latency": {"runs": 0, "warmup": 0, "threads": 1}, "findings": []}
    out = StringIO()
    print_scoreboard(board, Console(file=out, width=120))
    first_column = "".join(line.split("│")[1].strip() for line in out.getvalue().splitlines() if line.count("│") > 2)
    assert model in first_column and "…" not in out.getvalue()
