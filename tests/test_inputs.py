import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import backendiff
from backendiff import BadInput, CompareConfig
from backendiff.cli import cli
from backendiff.compare import resolve_inputs
from backendiff.inputs import InputSpec, example_specs, load_npz, parse_input_spec, random_samples, samples_sha256
from backendiff.loading import load_model

from .conftest import needs


def test_parse_input_spec():
    assert parse_input_spec("x:1x3x8x8") == InputSpec("x", (1, 3, 8, 8), "float32")
    s = parse_input_spec("ids:2x16:int64:0..30522")
    assert (s.dtype, s.low, s.high) == ("int64", 0.0, 30522.0)


@pytest.mark.parametrize("text", ["x:1x3x224x224:float32", "x:1,3,224,224:float32", "x:[1,3,224,224]:float32",
                                  "x:[1, 3, 224, 224]", "x:1X3X224X224"])
def test_shape_forms_parse_alike(text):
    assert parse_input_spec(text) == InputSpec("x", (1, 3, 224, 224), "float32")


@pytest.mark.parametrize("text", ["x", "x:1x3:float9", ":1x3", "x:1x3:int64:5..1", "x:1x3:int64:a..b",
                                  "x:1x3,4", "x:[1x3]", "x:[1,3", "x:1,3]", "x:1,,3", "x:[]", "x:(1,3)",
                                  "x:[1:3]"])
def test_bad_input_specs(text):
    with pytest.raises(BadInput) as e:
        parse_input_spec(text)
    assert "\n" not in str(e.value)


def test_bad_shape_is_one_line_on_the_command_line():
    result = CliRunner().invoke(cli, ["compare", "zoo:digits-cnn", "--input", "x:[1,3,8"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "malformed shape '[1,3,8'" in lines[0] and "[1,3,224,224]" in lines[0], result.stderr


def test_input_help_names_the_range_and_shape_forms():
    text = " ".join(CliRunner().invoke(cli, ["compare", "--help"]).output.split())
    assert ":LOW..HIGH" in text and "1,3,224,224" in text and "[1,3,224,224]" in text


def test_random_samples_are_seeded_and_frozen():
    specs = [InputSpec("x", (2, 3)), InputSpec("ids", (4,), "int64", 0, 5)]
    a, b = random_samples(specs, 7, 2), random_samples(specs, 7, 2)
    assert samples_sha256(a) == samples_sha256(b)
    assert samples_sha256(a) != samples_sha256(random_samples(specs, 8, 2))
    assert not np.array_equal(a[0]["x"], a[1]["x"])
    assert a[0]["ids"].dtype == np.int64 and a[0]["ids"].max() < 5
    with pytest.raises(ValueError):
        a[0]["x"][0, 0] = 1.0


def test_npz_names_must_match(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, x=np.zeros((1, 2), np.float32), extra=np.ones(1))
    with pytest.raises(BadInput, match="unexpected extra"):
        load_npz(path, ["x"])
    with pytest.raises(BadInput, match="missing y"):
        load_npz(path, ["x", "y", "extra"])
    assert load_npz(path, ["x", "extra"])["x"].shape == (1, 2)


def test_npz_is_read_without_pickle(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BadInput, match="cannot read inputs file"):
        load_npz(path, ["x"])


class TinyBert(nn.Module):
    """A BERT-shaped head: token and token-type embeddings, masked mean pooling. It takes
    only what a tokenizer gives: ids below 1000, a 0/1 mask, token types 0 or 1."""

    def __init__(self):
        super().__init__()
        self.words = nn.Embedding(1000, 8)
        self.types = nn.Embedding(2, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = (self.words(input_ids) + self.types(token_type_ids)) * attention_mask.unsqueeze(-1).float()
        return self.out(h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1))


def tiny_bert():
    torch.manual_seed(0)
    ids = torch.randint(100, 900, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.int64)
    mask[1, 7:] = 0
    return TinyBert().eval(), (ids, mask, torch.zeros(2, 12, dtype=torch.int64))


def assert_like_the_example(sample, example):
    ids = example["input_ids"]
    assert sample["input_ids"].dtype == np.int64
    assert ids.min() <= sample["input_ids"].min() and sample["input_ids"].max() <= ids.max()
    assert set(np.unique(sample["attention_mask"])) <= {0, 1}
    assert not sample["token_type_ids"].any()


@needs("ort")
def test_more_samples_and_calibration_stay_within_the_examples_ranges(monkeypatch):
    handles = []

    class Recorded(backendiff_compare.ModelHandle):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            handles.append(self)

    monkeypatch.setattr(backendiff_compare, "ModelHandle", Recorded)
    report = backendiff.compare(f"{__name__}:tiny_bert", backends=["ort:int8"], samples=4, calib_samples=6,
                                golden=False, layerwise="never", advise=False)
    assert report.model["inputs_from"] == "example+random"
    samples, calib = handles[0].samples, handles[0].calibration()
    example = samples[0]
    assert len(samples) == 4 and len(calib) == 6
    for sample in samples[1:] + calib:
        assert_like_the_example(sample, example)
    ids = np.stack([s["input_ids"] for s in samples[1:] + calib])
    assert ids.max() > 100 and len(np.unique(ids)) > 100          # drawn across the ids' range, not 0..9
    masks = np.stack([s["attention_mask"] for s in samples[1:] + calib])
    assert 0 < masks.mean() < 1                                    # both values drawn
    assert report.calibration["source"] == "random"
    assert report.calibration["drawn"] == (f"input_ids: integers in [{example['input_ids'].min()}, "
                                           f"{example['input_ids'].max()}]; attention_mask: integers in [0, 1]; "
                                           "token_type_ids: constant 0")


backendiff_compare = sys.modules["backendiff.compare"]


def test_float_image_example_keeps_its_range():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 16, 16)
    model = torch.export.export(nn.Conv2d(3, 4, 3).eval(), (image,))
    samples, _, specs = resolve_inputs(load_model(model), None, CompareConfig(samples=5))
    drawn = np.stack([s["input"] for s in samples[1:]])
    assert drawn.dtype == np.float32 and drawn.shape == (4, 1, 3, 16, 16)
    assert image.min() <= drawn.min() < 0.01 and 0.99 < drawn.max() <= image.max()
    assert 0.45 < drawn.mean() < 0.55                              # uniform in [0, 1], not N(0, 1)
    assert specs == [InputSpec("input", (1, 3, 16, 16), "float32", float(image.min()), float(image.max()))]


@pytest.mark.parametrize("values,low,high", [
    (np.linspace(0, 255, 64, dtype=np.float32), 0.0, 255.0),       # an image in [0, 255]
    (np.linspace(-1, 1, 64, dtype=np.float32), -1.0, 1.0),          # normalized to [-1, 1]
    (np.random.default_rng(0).standard_normal(4096).astype(np.float32), None, None),  # randn: N(0, 1)
    (np.zeros(64, np.float32), None, None),                         # a placeholder: no scale to keep
    (np.array([0, 1, 1, 0], np.int64), 0, 2),                        # a mask stays 0/1
    (np.array([7, 7, 7], np.int32), 7, 8),                           # one value stays constant
    (np.array([True, True]), 1, 2),                                  # all-True mask stays True
])
def test_example_ranges(values, low, high):
    spec, = example_specs({"v": values})
    assert (spec.low, spec.high) == (low, high)
    drawn = random_samples([spec], 0, 3)
    if low is not None:
        assert all(low <= d["v"].min() and d["v"].max() <= (high - 1 if values.dtype.kind in "ib" else high)
                   for d in drawn)


def test_declared_range_wins_over_the_example():
    declared = [InputSpec("ids", (1, 8), "int64", 0, 30522)]
    spec, = example_specs({"ids": np.arange(8, dtype=np.int64).reshape(1, 8)}, declared)
    assert (spec.low, spec.high) == (0, 30522)


def test_explicit_range_wins_over_the_example():
    model = torch.export.export(TinyBert().eval(), tiny_bert()[1])
    specs = tuple(parse_input_spec(s) for s in ("input_ids:2x12:int64:0..1000", "attention_mask:2x12:int64:0..2",
                                                "token_type_ids:2x12:int64:0..2"))
    samples, source, used = resolve_inputs(load_model(model), None, CompareConfig(samples=3, input_specs=specs))
    assert source == "random" and used == list(specs)
    ids = np.stack([s["input_ids"] for s in samples])
    assert ids.min() < 100 or ids.max() >= 900                      # beyond the example's 100..899
    assert all(0 <= s["input_ids"].min() and s["input_ids"].max() < 1000 for s in samples)
    assert any(s["token_type_ids"].any() for s in samples)
