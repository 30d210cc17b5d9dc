"""zoo:photo-patches: patches of the photographs bundled in scikit-learn and scikit-image,
cut deterministically, and a CNN trained on them through its declared pipeline."""
import socket

import numpy as np
import pytest
import torch

import backendiff

pytest.importorskip("sklearn")
pytest.importorskip("skimage")

from backendiff.models import photo_patches_data as data

HELDOUT_PER_CLASS = [60, 60, 45, 24, 44, 60, 36, 45, 94, 70]   # CLASSES order, 538 crops
HELDOUT_CORRECT = 512                                           # top-1 95.17% of the committed weights


def test_photos_load_from_the_packages_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("photo-patches tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    data.photos.cache_clear()
    imgs = data.photos()
    assert len(imgs) == len(data.CLASSES) == 10
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 300 for a in imgs)
    assert imgs[data.CLASSES.index("retina")].shape == (706, 706, 3)     # 1411x1411 halved by reduce(2)


def test_train_and_heldout_regions_never_overlap_and_are_deterministic():
    imgs = data.photos()
    held, train = data.heldout_boxes(), data.train_boxes(60, seed=0)
    assert np.array_equal(held, data.heldout_boxes()) and np.array_equal(train, data.train_boxes(60, seed=0))
    assert not np.array_equal(train, data.train_boxes(60, seed=1))
    assert np.bincount(held[:, 0]).tolist() == HELDOUT_PER_CLASS and np.bincount(train[:, 0]).tolist() == [60] * 10
    for c, img in enumerate(imgs):
        h, w, _ = img.shape
        split = data.split_column(w)
        tr, te = train[train[:, 0] == c], held[held[:, 0] == c]
        assert (tr[:, 2] >= 0).all() and (tr[:, 2] + data.CROP <= split).all()     # wholly left of the split
        assert (te[:, 2] >= split).all() and (te[:, 2] + data.CROP <= w).all()     # wholly right of it
        assert (tr[:, 1] >= 0).all() and (tr[:, 1] + data.CROP <= h).all() and (te[:, 1] + data.CROP <= h).all()
        assert ((te[:, 2] - split) % data.STRIDE == 0).all() and (te[:, 1] % data.STRIDE == 0).all()
    x1, y1, b1 = data.train_crops(20, seed=3)
    x2, y2, b2 = data.train_crops(20, seed=3)
    assert x1.shape == (200, 64, 64, 3) and x1.dtype == np.uint8
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and np.array_equal(b1, b2)
    crops, labels, boxes = data.heldout_crops()
    assert crops.shape == (538, 64, 64, 3) and crops.dtype == np.uint8 and np.array_equal(labels, boxes[:, 0])
    assert np.array_equal(crops[0], imgs[boxes[0, 0]][boxes[0, 1]:boxes[0, 1] + 64, boxes[0, 2]:boxes[0, 2] + 64])


def test_declared_pipeline_reproduces_the_task_and_training_inputs():
    from backendiff.models import ZOO
    from backendiff.sysnoise import Pipeline, preprocess

    entry = ZOO["photo-patches"]
    source, pipeline = entry.sysnoise()
    assert pipeline == Pipeline(size=(32, 32), resize=("pil", "bilinear"), decoder="pil", quality=90)
    assert source.task == entry.task == "classification" and source.images.shape == (538, 64, 64, 3)
    x, y = entry.data()
    assert x.shape == (538, 3, 32, 32) and x.dtype == np.float32
    assert np.array_equal(preprocess(source.images, pipeline), x) and np.array_equal(source.labels, y)
    crops, _, _ = data.train_crops(4, seed=0)
    assert np.array_equal(data.inputs(crops), preprocess(crops, pipeline))     # what train_photo_patches feeds


def test_photo_patches_is_really_trained():
    report = backendiff.compare("zoo:photo-patches", backends=["torch"])
    t = report.backend("torch").task
    assert report.task["name"] == "classification" and report.task["samples"] == 538
    assert report.task["reference"] == pytest.approx(100 * HELDOUT_CORRECT / 538)       # 95.17
    assert t["delta"] == 0 and t["flip_rate"] == 0


def test_a_short_training_run_is_bit_for_bit_reproducible():
    from backendiff.models.train_photo_patches import train

    torch.set_num_threads(1)
    (m1, a1), (m2, a2) = (train(per_class=40, epochs=1, log=None) for _ in range(2))
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1) and a1 == a2
    assert 30_000 <= sum(p.numel() for p in m1.parameters()) <= 150_000
