"""Pose and embedding tasks, the task plugin API and image-folder data, on real outputs."""
import json

import numpy as np
import pytest
import torch

import backendiff
from backendiff import BadInput
from backendiff.tasks import (
    decode_heatmaps,
    embeddings,
    object_keypoint_similarity,
    oks_ap,
    pck,
    pose,
    resolve_metric,
)

from .conftest import degraded_backend, needs


def test_decode_takes_the_argmax_and_a_quarter_pixel_toward_the_higher_neighbour():
    hm = np.zeros((1, 2, 16, 12), np.float32)
    hm[0, 0, 5, 3], hm[0, 0, 5, 4], hm[0, 0, 4, 3] = 1.0, 0.6, 0.2     # right and up are higher
    hm[0, 1, 0, 0] = 0.5                                                # a corner: no neighbour beyond
    xy, peak = decode_heatmaps(hm, (64, 48))
    assert xy[0, 0].tolist() == [(3.25 + 0.5) * 4 - 0.5, (4.75 + 0.5) * 4 - 0.5]
    assert xy[0, 1].tolist() == [1.5, 1.5] and peak[0].tolist() == [1.0, 0.5]


def test_training_targets_decode_back_to_their_keypoints():
    from backendiff.models.keypoints_data import make_split
    from backendiff.models.train_mspn import targets

    _, kp = make_split(20, seed=7)
    hm = targets(torch.from_numpy(kp), (16, 12), 3.5).numpy()
    xy, _ = decode_heatmaps(hm, (64, 48))
    err = np.linalg.norm(xy - kp[..., :2], axis=-1)[kp[..., 2] > 0]
    # a quarter heatmap pixel is one image pixel per axis; on the border (no shift) up to 1.5 per axis
    assert err.max() <= 1.5 * 2 ** 0.5 and err.mean() < 0.8


def test_pck_and_oks_ap_by_hand():
    kp = np.array([[[10.0, 10.0, 1], [20.0, 30.0, 1], [0.0, 0.0, 0]]])
    exact = kp[..., :2].copy()
    assert pck(exact, kp, 1.0) == 100.0
    off = exact + [[[5.0, 0.0], [0.5, 0.0], [99.0, 99.0]]]      # one visible keypoint out, invisible ignored
    assert pck(off, kp, 1.0) == 50.0
    assert object_keypoint_similarity(exact, kp, np.full(3, 0.079))[0] == 1.0
    # two images: OKS 0.9 (score 1) and 0.4 (score 0.5): AP = 9 thresholds x 51/101 recall points / 10
    assert oks_ap(np.array([0.9, 0.4]), np.array([1.0, 0.5])) == pytest.approx(100 * 0.9 * 51 / 101)
    assert oks_ap(np.array([1.0, 1.0]), np.array([0.2, 0.1])) == pytest.approx(100.0)


def test_pose_metric_counts_moved_keypoints_as_flips():
    rng = np.random.default_rng(0)
    ref = rng.random((6, 3, 16, 12)).astype(np.float32)
    act = ref.copy()
    act[2, 1] = np.roll(act[2, 1], 3, axis=1)                   # one keypoint of sample 2 moves
    xy, _ = decode_heatmaps(ref, (64, 48))
    labels = np.concatenate([xy, np.ones((6, 3, 1))], -1)
    out = pose(ref, act, labels, image_size=(64, 48))
    assert out["reference"] == 100.0 and out["flips"] == 1 and out["worst"][0] == 2
    assert out["max_shift_px"] == pytest.approx(12.0, abs=2.0) and out["value"] < 100.0
    assert out["ap_reference"] == pytest.approx(100.0)


def test_embeddings_metric_by_hand():
    angles = np.radians([0.0, 4.0, 10.0, 80.0, 85.0, 90.0])       # two groups of three directions
    ref = np.stack([np.cos(angles), np.sin(angles)], 1)
    act = ref.copy()
    act[2] = [np.cos(np.radians(45)), np.sin(np.radians(45))]     # sample 2 drifts toward group 1
    out = embeddings(ref, act, np.array([0, 0, 0, 1, 1, 1]))
    assert out["metric"] == "retrieval@1" and out["reference"] == 100.0 and out["value"] == pytest.approx(500 / 6)
    assert out["flips"] == 1 and out["worst"][0] == 2 and out["cosine_min"] == pytest.approx(np.cos(np.radians(35)))
    same = embeddings(ref, ref)
    assert same["metric"] == "retrieval agreement" and same["value"] == 100.0 and same["cosine_min"] == pytest.approx(1.0)


def test_mspn_tiny_is_really_trained():
    report = backendiff.compare("zoo:mspn-tiny", backends=["torch"])
    t = report.backend("torch").task
    assert report.task["name"] == "pose" and t["samples"] == 500
    assert t["reference"] >= 90.0 and t["pck@0.05_reference"] >= 80.0 and t["ap_reference"] >= 80.0
    assert t["delta"] == 0 and t["flip_rate"] == 0


def _coarse_heads(module):
    w = module.stage2.heads[0].weight
    w.copy_(torch.round(w * 4) / 4)


def test_a_degraded_pose_backend_shows_a_drop_and_flips():
    with degraded_backend("coarse-heads", _coarse_heads):      # final heatmap head rounded to 1/4
        report = backendiff.compare("zoo:mspn-tiny", backends=["coarse-heads"], max_task_drop=0.5)
    t = report.backend("coarse-heads").task
    assert t["flip_rate"] > 0.1 and t["pck@0.05"] < t["pck@0.05_reference"] and t["ap"] < t["ap_reference"]
    assert t["delta"] < -0.5 and t["exceeds_max_drop"] and report.exit_code == 1


@needs("ort")
def test_embeddings_task_on_a_real_runtime():
    report = backendiff.compare("zoo:digits-cnn-embed", backends=["ort"])
    t = report.backend("ort").task
    assert report.task["metric"] == "retrieval@1" and report.task["reference"] > 97.0
    assert t["cosine_min"] > 0.99999 and t["samples"] == 540 and abs(t["delta"]) <= 0.2


def test_plugin_by_module_function():
    report = backendiff.compare("zoo:digits-cnn", backends=["torch"], task_name="tests.task_plugin:argmax_agreement")
    assert report.task["metric"] == "argmax agreement" and report.task["name"] == "tests.task_plugin:argmax_agreement"
    t = report.backend("torch").task
    assert t["value"] == 100.0 and t["delta"] == 0.0 and t["flip_rate"] == 0.0


def test_plugin_by_entry_point(tmp_path, monkeypatch):
    dist = tmp_path / "my_metrics-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-metrics\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[backendiff.tasks]\nagreement = tests.task_plugin:argmax_agreement\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_metric("agreement").__name__ == "argmax_agreement"
    report = backendiff.compare("zoo:digits-cnn", backends=["torch"], task_name="agreement")
    assert report.backend("torch").task["metric"] == "argmax agreement"


@pytest.mark.parametrize("name, message", [
    ("nope", "unknown task 'nope': use one of classification, embeddings, pose"),
    ("tests.task_plugin:missing", "has no missing"),
    ("tests.task_plugin:NOT_A_FUNCTION", "is not a function"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    ("tests.task_plugin:broken", "failed on the reference's outputs: ValueError: labels are not what I expected"),
    ("tests.task_plugin:no_value", "returned no number for 'value'"),
    ("pose", "pose needs keypoint labels of shape (N, K, 3)"),
])
def test_bad_tasks_are_one_line_errors(name, message):
    with pytest.raises(BadInput) as e:
        backendiff.compare("zoo:digits-cnn", backends=["torch"], task_name=name)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_image_folder_data_end_to_end(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from backendiff.cli import cli
    from backendiff.models.train_digits import load_digits_split

    _, _, x, y = load_digits_split()
    for i in range(120):
        folder = tmp_path / "digits" / f"class_{y[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(x[i, 0] * 255).astype(np.uint8), mode="L").save(folder / f"{i:04d}.png")
    (tmp_path / "digits" / "preprocess.txt").write_text("# the 8x8 digits, grey\nmode=gray\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn", "--backends", "torch", "--data",
                                      str(tmp_path / "digits"), "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["task"]["samples"] == 120 and "preprocess.txt" in report["task"]["source"]
    assert report["backends"][0]["task"]["reference"] >= 97.5     # pixels rounded to 1/255, still the trained model
    bad = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn", "--backends", "torch", "--data",
                                   str(tmp_path / "digits"), "--preprocess", "crop=32x32", "--no-json"])
    assert bad.exit_code == 2 and "does not match the model's input size 8x8" in bad.output


def test_cli_task_option_takes_an_optional_name():
    from click.testing import CliRunner

    from backendiff.cli import cli

    ok = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn", "--task", "--backends", "torch", "--no-json", "-q"])
    assert ok.exit_code == 0 and "top1 99.07%" in ok.output
    off = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn", "--no-task", "--backends", "torch", "--no-json", "-q"])
    assert off.exit_code == 0 and "top1" not in off.output
    bad = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn", "--task", "pose", "--backends", "torch", "--no-json"])
    assert bad.exit_code == 2 and "pose needs keypoint labels" in bad.output and "Traceback" not in bad.output
    none = CliRunner().invoke(cli, ["compare", "zoo:resnet18", "--task", "--backends", "torch", "--no-json"])
    assert none.exit_code == 2 and "--task needs labelled data" in none.output
