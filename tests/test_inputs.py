import numpy as np
import pytest

from backendiff import BadInput
from backendiff.inputs import InputSpec, load_npz, parse_input_spec, random_samples, samples_sha256


def test_parse_input_spec():
    assert parse_input_spec("x:1x3x8x8") == InputSpec("x", (1, 3, 8, 8), "float32")
    s = parse_input_spec("ids:2x16:int64:0..30522")
    assert (s.dtype, s.low, s.high) == ("int64", 0.0, 30522.0)


@pytest.mark.parametrize("text", ["x", "x:1x3:float9", "x:1,3", ":1x3", "x:1x3:int64:5..1", "x:1x3:int64:a..b"])
def test_bad_input_specs(text):
    with pytest.raises(BadInput):
        parse_input_spec(text)


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
