"""The HTML report and the Markdown summary of a real multi-backend run."""
import json
import re
import shutil

import pytest
from click.testing import CliRunner

from backendiff.cli import cli

from .conftest import needs

SPECS = ["ort", "openvino", "openvino:int8", "tvm", "openvino:fp32,precision_hint=default", "trt"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """digits-cnn on the CPU runtimes with the layer view for all, an int8 variant, OpenVINO's
    default (bf16 on AMX CPUs, else fp32) and TensorRT (unavailable without a GPU)."""
    folder = tmp_path_factory.mktemp("html")
    paths = {k: folder / f"run.{k}" for k in ("json", "html", "md")}
    result = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn", "--backends", ",".join(SPECS), "--layerwise",
                                      "--json", str(paths["json"]), "--html", str(paths["html"]),
                                      "--md", str(paths["md"]), "-q"], catch_exceptions=False)
    assert result.exit_code in (0, 1, 3), result.output
    return paths


@needs("ort", "openvino", "tvm")
def test_html_shows_every_backend_with_charts_and_no_network(run):
    page = run["html"].read_text()
    data = json.loads(run["json"].read_text())
    for b in data["backends"]:
        assert f'data-backend="{b["spec"]}"' in page          # a summary row and a section each
        assert page.count(f'data-backend="{b["spec"]}"') == 2
    layered = [b for b in data["backends"] if b["layers"]]
    assert len(layered) >= 4
    assert page.count('class="chart depth-chart"') == len(layered) and 'id="heatmap-chart"' in page
    assert page.count("<svg") == len(layered) + 1
    # self-contained: no scripts, no stylesheets or images fetched, no http(s) resource anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"url\((?!#)", page)            # only references inside the page's own SVG
    assert data["command"] in page.replace("&#39;", "'").replace("&amp;", "&")
    trt = next(b for b in data["backends"] if b["spec"] == "trt")
    if trt["status"] == "unavailable":
        assert 'id="not-run"' in page and trt["error"]["message"].split(":")[0] in page
    assert "Task: classification" in page and "top1" in page


@needs("ort", "openvino", "tvm")
def test_saved_run_renders_the_same_html_and_markdown(run, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(run["json"]), "--html", str(tmp_path / "again.html"),
                                      "--md", str(tmp_path / "again.md")])
    assert result.exit_code in (0, 1, 3), result.output
    assert (tmp_path / "again.html").read_bytes() == run["html"].read_bytes()
    assert (tmp_path / "again.md").read_bytes() == run["md"].read_bytes()


@needs("ort", "openvino", "tvm")
def test_markdown_summary_is_compact(run):
    md = run["md"].read_text()
    data = json.loads(run["json"].read_text())
    assert md.startswith("### backendiff · `zoo:digits-cnn`")
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == [b["spec"] for b in data["backends"]]
    assert data["command"] in md and len(md.splitlines()) < 40


def test_bad_report_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a report"}')
    result = CliRunner().invoke(cli, ["report", str(bad), "--html", str(tmp_path / "x.html")])
    assert result.exit_code == 2 and "cannot read" in result.output and not (tmp_path / "x.html").exists()


CHROMIUM = shutil.which("chromium")


def _watched_page(browser, errors: list, requests: list):
    """A new page whose console errors, page errors and requested URLs are collected."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    return page


def _launch(playwright):
    """Headless Debian chromium, offline."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


@needs("ort", "openvino", "tvm")
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make browser installs it as root)")
def test_html_opens_in_headless_chromium(run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    import numpy as np
    from PIL import Image

    errors, requests = [], []
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        try:
            page = _watched_page(browser, errors, requests)
            page.goto(run["html"].as_uri())
            boxes = [svg.bounding_box() for svg in page.query_selector_all(".chart svg")]
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            verdict = page.inner_text("#verdict")
        finally:
            browser.close()
    assert errors == []
    assert requests == [run["html"].as_uri()]             # the page fetched nothing else
    assert len(boxes) >= 5 and all(b and b["width"] > 300 and b["height"] > 150 for b in boxes)
    assert verdict in ("pass", "fail")
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("RGB"), dtype=np.float32)
    assert shot.shape[0] > 2000 and shot.std() > 20        # a long page with content, not a blank one
    # the heat map's colours are on the page: some strongly red/orange and some green pixels
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    assert ((g > r + 40) & (g > b + 40)).sum() > 1000 and ((r > g + 60) & (r > b + 60)).sum() > 200


@needs("ort", "openvino", "tvm")
def test_html_marks_where_a_nan_is_born_and_shows_the_advice(tmp_path):
    nan = tmp_path / "nan.html"
    result = CliRunner().invoke(cli, ["compare", "zoo:fp16-overflow", "--backends", "openvino:fp16,tvm:fp16",
                                      "--layerwise", "--no-json", "--html", str(nan), "-q"])
    assert result.exit_code == 1, result.output
    page = nan.read_text()
    # tvm:fp16 overflows in 'up'; OpenVINO's fp16 model converted from the ExportedProgram (its
    # deployed route) stays finite, and its layer view, taken on that route, says so
    assert page.count("First NaN/Inf born at <code>up</code>") == 1 and "SQNR dB" in page
    advised = tmp_path / "advice.html"
    result = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn", "--backends", "ort:int8", "--atol", "0.03",
                                      "--rtol", "0.03", "--no-json", "--html", str(advised), "-q"])
    page = advised.read_text()
    assert "Mixed-precision advice:</strong> keep <code>features." in page
    assert "--backends 'ort:int8,keep=features." in page


@needs("tvm")
def test_html_of_a_backend_that_failed_without_a_hint(tmp_path):
    """TVM rejects mini-pose's stride-less max_pool2d: a failure with an operator but no
    install hint renders, in the summary and among the backends that did not run."""
    page = tmp_path / "failed.html"
    result = CliRunner().invoke(cli, ["compare", "zoo:mini-pose", "--backends", "tvm,torch", "--no-json",
                                      "--html", str(page), "-q"])
    assert result.exit_code == 3, result.output
    html = page.read_text()
    assert 'id="not-run"' in html and "Check failed: strides.size() == 2" in html
    assert "Operator <code>max_pool2d</code>" in html


@needs("ort", "openvino", "tvm")
def test_a_report_missing_newer_fields_still_renders(run, tmp_path):
    """A report saved by an earlier version (no nonfinite_inputs, partial, task metric, ...)."""
    data = json.loads(run["json"].read_text())
    for key in ("nonfinite_inputs", "inputs_sha256"):
        data["model"].pop(key, None)
    for key in ("partial", "calibration", "baseline"):
        data.pop(key, None)
    for key in ("metric", "reference", "unit"):
        data["task"].pop(key, None)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["report", str(old), "--html", str(tmp_path / "old.html"),
                                      "--md", str(tmp_path / "old.md")])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Task: classification" in (tmp_path / "old.html").read_text()


@needs("ort")
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make browser installs it as root)")
def test_sweep_scoreboard_opens_and_links_to_each_cell_report(tmp_path, cache_dir):
    """The sweep's page in a real browser: no errors, nothing fetched, the heat map and the
    scatter drawn, and a scoreboard link opens that cell's own report."""
    import subprocess
    import sys

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra) is not installed")
    out = tmp_path / "sweep"
    p = subprocess.run([sys.executable, "-m", "backendiff", "sweep", "zoo:digits-cnn-narrow", "-b", "ort,ort:int8",
                        "--runs", "3", "--warmup", "0", "--workers", "2", "--out", str(out), "--cache-dir",
                        str(cache_dir), "-q"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    errors, requests = [], []
    with sync_api.sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = _watched_page(browser, errors, requests)
            page.goto((out / "sweep.html").as_uri())
            boxes = [svg.bounding_box() for svg in page.query_selector_all(".chart svg")]
            links = page.query_selector_all("#sweep-table a")
            page.click("#sweep-table a >> nth=1")                # the ort:int8 cell
            page.wait_for_selector("#verdict")
            opened, verdict = page.url, page.inner_text("#verdict")
        finally:
            browser.close()
    assert errors == []
    assert requests[0] == (out / "sweep.html").as_uri() and requests[1:] == [opened]
    assert len(boxes) == 2 and all(b and b["width"] > 300 and b["height"] > 150 for b in boxes)
    assert len(links) == 2 and opened == (out / "cells" / "zoo-digits-cnn-narrow__ort-int8.html").as_uri()
    assert verdict in ("pass", "fail")
