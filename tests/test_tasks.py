"""End-task evaluation on real labelled data and real runtime outputs."""
import numpy as np
import pytest
import torch

import backendiff
from backendiff.tasks import batches, classification

from .conftest import degraded_backend, needs


def test_classification_metric():
    ref = np.array([[3.0, 1, 0, 0, 0], [0, 2, 1, 0, 0], [0, 0, 1, 2, 0]])
    act = np.array([[3.0, 1, 0, 0, 0], [0, 1, 2, 0, 0], [0, 0, 1, 2, 0]])
    labels = np.array([0, 1, 2])
    out = classification(ref, act, labels)
    assert out["reference"] == pytest.approx(200 / 3) and out["value"] == pytest.approx(100 / 3)
    assert out["delta"] == pytest.approx(-100 / 3) and out["flips"] == 1 and out["worst"][0] == 1
    assert out["top5"] == 100.0


def test_batches_pad_the_last_one():
    parts = batches(np.arange(10).reshape(10, 1), 4)
    assert [real for _, real in parts] == [4, 4, 2] and parts[-1][0].ravel().tolist() == [8, 9, 9, 9]


def test_the_zoo_weights_are_really_trained():
    for name, floor in (("digits-cnn", 98.5), ("digits-cnn-narrow", 97.0)):
        report = backendiff.compare(f"zoo:{name}", backends=["torch"])
        t = report.backend("torch").task
        assert t["samples"] == 540 and t["reference"] >= floor and t["delta"] == 0 and t["flip_rate"] == 0


def _round_classifier(module):
    module.classifier.weight.copy_(torch.round(module.classifier.weight * 3) / 3)


def test_a_degraded_backend_shows_a_drop_and_flips():
    with degraded_backend("degraded", _round_classifier):      # classifier weights rounded to 1/3
        report = backendiff.compare("zoo:digits-cnn-narrow", backends=["degraded"], max_task_drop=0.5)
    t = report.backend("degraded").task
    assert t["delta"] < -0.5 and t["flip_rate"] > 0 and t["flips"] == round(t["flip_rate"] * 540)
    assert t["exceeds_max_drop"] and report.backend("degraded").status == "diverged" and report.exit_code == 1


@needs("ort", "openvino")
def test_task_on_real_runtimes_and_user_data(tmp_path):
    from backendiff.models.train_digits import load_digits_split

    _, _, x, y = load_digits_split()
    np.savez(tmp_path / "data.npz", inputs=x[:100], labels=y[:100])
    report = backendiff.compare("zoo:digits-cnn", backends=["ort", "openvino:int8"], data_file=tmp_path / "data.npz")
    assert report.task["source"].endswith("data.npz") and report.task["samples"] == 100
    for b in report.backends:
        assert b.task["samples"] == 100 and abs(b.task["delta"]) <= 2.0
    assert report.backend("ort").task["flip_rate"] == 0.0


def test_malformed_data_is_bad_input(tmp_path):
    from backendiff import BadInput

    np.savez(tmp_path / "bad.npz", inputs=np.zeros((3, 1, 8, 8), np.float32))
    with pytest.raises(BadInput, match="lacks labels"):
        backendiff.compare("zoo:digits-cnn", backends=["torch"], data_file=tmp_path / "bad.npz")


def test_a_model_with_real_data_is_compared_on_it_not_on_noise(tmp_path):
    """The backends get the first batches of the held-out split (or of --data), shaped like
    the example batch; --compare-on random keeps the example and seeded random batches."""
    from backendiff.inputs import samples_sha256
    from backendiff.models.train_digits import load_digits_split

    _, _, held_x, _ = load_digits_split()
    report = backendiff.compare("zoo:digits-cnn", backends=["torch"], samples=2, golden=False)
    assert report.model["inputs_from"] == "held-out data (zoo:digits-cnn held-out split)" and report.model["samples"] == 2
    batch = report.model["inputs"][0]["shape"][0]
    expected = [{"x": np.ascontiguousarray(held_x[i * batch:(i + 1) * batch], dtype=np.float32)} for i in range(2)]
    assert report.model["inputs_sha256"] == samples_sha256(expected)
    noise = backendiff.compare("zoo:digits-cnn", backends=["torch"], samples=2, golden=False, compare_on="random")
    assert noise.model["inputs_from"] == "random" and noise.model["inputs_sha256"] != report.model["inputs_sha256"]

    x, y = held_x[-40:], np.zeros(40, np.int64)
    np.savez(tmp_path / "mine.npz", inputs=x, labels=y)
    mine = backendiff.compare("zoo:digits-cnn", backends=["torch"], golden=False, data_file=tmp_path / "mine.npz")
    assert mine.model["inputs_from"].startswith("held-out data (") and "mine.npz" in mine.model["inputs_from"]
    assert mine.model["inputs_sha256"] == samples_sha256([{"x": np.ascontiguousarray(x[:batch], dtype=np.float32)}])
