"""SysNoise: each noise transform against an independent computation, and a table whose
deltas come from real runtime runs."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from backendiff import noise as N
from backendiff.errors import BadInput
from backendiff.tasks import decode_heatmaps

from .conftest import needs


@pytest.fixture
def img():
    return np.random.default_rng(0).integers(0, 256, (32, 24, 3), dtype=np.uint8)


def test_fixed_point_ycbcr_is_pillows(img):
    """Pillow's own RGB -> YCbCr (JFIF, BT.601 full range, integer arithmetic) is an
    independent implementation of the same equations."""
    pil = np.asarray(Image.fromarray(img).convert("YCbCr")).astype(int)
    assert np.abs(N._ycc_fixed(img.astype(np.int64)).astype(int) - pil).max() <= 1


def test_ycbcr_round_trips(img):
    assert np.allclose(np.linalg.inv(N.RGB_TO_YCC), N.YCC_TO_RGB, atol=1e-5)   # the BT.601 inverse
    for fixed in (False, True):
        back = N.ycc_round_trip(img, "444", fixed).astype(int)
        assert np.abs(back - img).max() <= 2            # 8-bit storage of Y, Cb, Cr only
    blocks = np.repeat(np.repeat(img[::2, ::2], 2, 0), 2, 1)   # constant on 2x2 blocks: 4:2:0 loses nothing more
    assert np.array_equal(N.ycc_round_trip(blocks, "420", True), N.ycc_round_trip(blocks, "444", True))
    assert np.abs(N.ycc_round_trip(img, "420", True).astype(int) - img).mean() > 10   # but on noise it does


@pytest.mark.parametrize("library, mode", [("pil", "box"), ("torch", "area"), ("opencv", "area")])
def test_area_resizes_are_block_means(img, library, mode):
    block = img.reshape(16, 2, 12, 2, 3).mean(axis=(1, 3))
    assert np.abs(N.resize(img, (16, 12), library, mode).astype(float) - block).max() <= 1.0


def test_resize_modes_differ_and_keep_shape(img):
    outs = {(lib, m): N.resize(img, (16, 12), lib, m) for lib, modes in
            (("pil", N.PIL_RESIZE), ("opencv", N.CV_RESIZE), ("torch", N.TORCH_RESIZE)) for m in modes}
    assert all(o.shape == (16, 12, 3) and o.dtype == np.uint8 for o in outs.values())
    assert not np.array_equal(outs["pil", "bilinear"], outs["opencv", "bilinear"])   # Pillow antialiases, OpenCV not
    assert np.array_equal(outs["opencv", "nearest"], img[::2, ::2])


def test_jpeg_decoders_read_the_same_file(img):
    pil, cv = N.jpeg_round_trip(img, 90, "pil"), N.jpeg_round_trip(img, 90, "opencv")
    assert pil.shape == cv.shape == img.shape and np.abs(pil.astype(int) - cv).max() <= 1
    assert np.abs(pil.astype(int) - img).mean() > 5        # JPEG is lossy on noise


def test_subpixel_decoding_finds_the_vertex_of_a_parabola():
    xs = np.arange(12)
    hm = np.zeros((1, 1, 16, 12))
    hm[0, 0, 7] = 10 - (xs - 5.3) ** 2                    # peak between columns 5 and 6, row 7
    hm[0, 0, 6] = hm[0, 0, 8] = hm[0, 0, 7] - 1
    xy, _ = decode_heatmaps(hm, (16, 12), "subpixel")
    assert xy[0, 0, 0] == pytest.approx(5.3) and xy[0, 0, 1] == pytest.approx(7.0)
    argmax, _ = decode_heatmaps(hm, (16, 12), "argmax")
    quarter, _ = decode_heatmaps(hm, (16, 12), "quarter")
    assert argmax[0, 0, 0] == 5.0 and quarter[0, 0, 0] == 5.25


@needs("ort")
def test_sysnoise_table_of_digits_on_real_runtimes(tmp_path):
    from backendiff.cli import cli

    out = tmp_path / "sn.json"
    page = tmp_path / "sn.html"
    result = CliRunner().invoke(cli, ["sysnoise", "zoo:digits-cnn", "--backends", "torch,ort", "--json", str(out),
                                      "--html", str(page), "-q"])
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    rows = {r["noise"]: r for r in table["rows"]}
    assert rows["clean"]["cells"]["torch"]["value"] == pytest.approx(100 * 535 / 540)      # the zoo's 99.07
    assert rows["clean"]["cells"]["ort"]["value"] == rows["clean"]["cells"]["torch"]["value"]
    for name in ("resize: pil bilinear", "resize: opencv bilinear", "resize: torch bilinear-aa", "decode: opencv",
                 "precision: int8", "combined"):
        cell = rows[name]["cells"]["ort"]
        assert cell["delta"] == pytest.approx(rows["clean"]["cells"]["ort"]["value"] - cell["value"])
    # a resize unlike the training box filter costs at least one of the 540 digits somewhere
    assert any(abs(r["cells"]["torch"]["delta"]) > 0.1 for r in table["rows"] if r["kind"] == "pre")
    assert rows["max-pool ceil mode flipped"]["cells"]["ort"]["error"].startswith("not applicable")
    assert "backendiff sysnoise · zoo:digits-cnn" in result.output
    html = page.read_text()
    assert html.count("<svg") == 1 and "<script" not in html and "<th>ort</th>" in html
    assert html.count("<tr>") == len(table["rows"]) + 1


def test_sysnoise_needs_a_declared_pipeline():
    from backendiff.cli import cli

    result = CliRunner().invoke(cli, ["sysnoise", "zoo:resnet18"])
    assert result.exit_code == 2 and "declares no training pipeline" in result.output
    result = CliRunner().invoke(cli, ["sysnoise", "zoo:digits-cnn", "--backends", "ort:int8"])
    assert result.exit_code == 2 and "base backend names" in result.output


def test_pixel_difference_by_hand():
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0], b[1, 1, 2] = 3, 1
    assert N.pixel_difference(a, b) == {"max_abs": 3, "mean_abs": 4 / 12, "differing": 2 / 12}


def test_decoders_on_real_photographs():
    from backendiff.cli import cli

    result = CliRunner().invoke(cli, ["decoders", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    rows = out["images"]
    shipped = [r for r in rows if r["stored"] == "the shipped file"]
    assert {r["image"] for r in shipped} == {"china.jpg", "flower.jpg"} and all(r["size"] == [427, 640] for r in shipped)
    trips = [r for r in rows if r["stored"] == "Pillow JPEG q90"]
    assert len(trips) >= 2 and all(1.0 < r["jpeg_loss_mean_abs"] < 5.0 for r in trips)
    # each decode really is OpenCV's and Pillow's: both read the file the same way it was written
    data = (N.photographs()[0][1])
    assert N.decode_bytes(data, "opencv").shape == N.decode_bytes(data, "pil").shape == (427, 640, 3)
    # prediction flips of the trained photo-patches model: the two decoders agree here bit for bit
    # (no flips), the JPEG round trip itself moves pixels and changes some predictions
    flips = {(r["a"], r["b"]): r for r in out["prediction_flips"]["rows"]}
    assert out["prediction_flips"]["crops"] == 538
    assert flips[("shipped files, pil", "shipped files, opencv")]["max_abs"] == 0
    assert flips[("shipped files, pil", "shipped files, opencv")]["flips"] == 0
    trip = flips[("source", "JPEG q90, pil")]
    assert trip["mean_abs"] > 1.0 and trip["flips"] == 3
    assert trip["top1_b"] == pytest.approx(100 * 512 / 538)       # as many right as through its per-crop pipeline


def test_decoder_flips_count_changed_predictions(monkeypatch):
    """A decoder that really differs (here: OpenCV's decode darkened by 8 levels) shows up as
    pixel difference and flips, counted crop by crop."""
    from backendiff import sysnoise as S

    real = N.decode_bytes

    def darker(data, decoder):
        img = real(data, decoder)
        return np.clip(img.astype(np.int16) - 8, 0, 255).astype(np.uint8) if decoder == "opencv" else img

    monkeypatch.setattr(N, "decode_bytes", darker)
    rows = {(r["a"], r["b"]): r for r in S.decoder_flips(90)["rows"]}
    row = rows[("JPEG q90, pil", "JPEG q90, opencv")]
    assert row["max_abs"] == 8 and row["flips"] > 0
    assert row["flip_rate"] == pytest.approx(row["flips"] / 538)


def test_compare_with_sysnoise_puts_the_table_in_the_report_and_its_html(tmp_path):
    """compare --sysnoise: the table is measured on the run's backends (base names, once) and
    is a section of the HTML report, rendered from the JSON alone."""
    import backendiff
    from backendiff.html import render_html
    from backendiff.report import Report

    report = backendiff.compare("zoo:digits-cnn-narrow", backends=["ort", "ort:int8"], sysnoise=True, advise=False)
    table = report.sysnoise
    assert table["backends"] == ["ort"] and table["metric"] == "top1"
    rows = {r["noise"]: r for r in table["rows"]}
    assert rows["clean"]["cells"]["ort"]["value"] == pytest.approx(report.backend("ort").task["reference"])
    assert rows["precision: int8"]["cells"]["ort"]["delta"] == pytest.approx(
        rows["clean"]["cells"]["ort"]["value"] - rows["precision: int8"]["cells"]["ort"]["value"])
    saved = tmp_path / "r.json"
    report.write(saved)
    again = Report.read(saved)
    assert again.sysnoise == json.loads(saved.read_text())["sysnoise"]
    page = render_html(json.loads(saved.read_text()))
    assert 'id="sysnoise"' in page and 'id="sysnoise-table"' in page and '<a href="#sysnoise">' in page
    assert page.count("<tr><td>") >= len(table["rows"])
    assert render_html(json.loads(saved.read_text()) | {"sysnoise": None}).count('id="sysnoise"') == 0


def test_compare_sysnoise_needs_a_declared_pipeline_before_any_work():
    import backendiff

    with pytest.raises(BadInput, match="declares no training pipeline"):
        backendiff.compare("zoo:resnet18", backends=["ort"], sysnoise=True)
