"""Every model source loads and compares: .pt2, TorchScript .pt, .onnx, file.py:factory,
package.module:factory with --weights, zoo:NAME; pickled modules are refused unless trusted."""

import pytest
import torch

import backendiff
from backendiff import BadInput
from backendiff.inputs import parse_input_spec
from backendiff.loading import load_model

from .conftest import ConvBnRelu, needs, seeded

X = torch.randn(1, 3, 11, 13, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    m = seeded(ConvBnRelu)
    ep = torch.export.export(m, (X,))
    torch.export.save(ep, d / "m.pt2")
    torch.jit.save(torch.jit.trace(m, (X,)), d / "ts.pt")
    torch.onnx.export(ep, dynamo=True).save(str(d / "m.onnx"))
    torch.save(m, d / "whole.pt")
    torch.save(m.state_dict(), d / "state.pt")
    (d / "factory.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def make():\n    torch.manual_seed(3)\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"
    )
    return d


@needs("ort")
@pytest.mark.parametrize("name,fmt", [("m.pt2", "pt2"), ("ts.pt", "torchscript"), ("m.onnx", "onnx")])
def test_file_formats_compare_on_ort(files, name, fmt):
    # TorchScript archives carry no example inputs: they are declared as on the CLI
    specs = (parse_input_spec("x:1x3x11x13"),) if fmt == "torchscript" else ()
    report = backendiff.compare(str(files / name), backends=["ort"], input_specs=specs)
    assert report.model["format"] == fmt
    assert report.backend("ort").status == "ok", report.backend("ort").error
    assert report.model["inputs"] == [{"name": "x", "shape": [1, 3, 11, 13], "dtype": "float32"}]
    assert report.backend("ort").outputs[0].metrics["max_abs"] < 1e-5
    assert report


def test_pt2_example_inputs_are_used_bit_for_bit(files):
    loaded = load_model(files / "m.pt2")
    assert torch.equal(loaded.example_args[0], X)
    report = backendiff.compare(str(files / "m.pt2"), backends=["torch"], samples=3)
    assert report.model["inputs_from"] == "example+random" and report.model["samples"] == 3


@needs("ort")
def test_onnx_reference_is_the_onnx_reference_evaluator(files):
    report = backendiff.compare(str(files / "m.onnx"), backends=["ort"])
    assert report.reference["backend"] == "onnx.reference"
    assert report.baseline["available"] is False


def test_file_factory_and_package_factory_with_weights(files, tmp_path):
    report = backendiff.compare(f"{files / 'factory.py'}:make", backends=["torch"], input_specs=(
        parse_input_spec("input:1x3x8x8"),))
    assert report.model["format"] == "factory" and report.backend("torch").status == "ok"
    # package.module:factory (tests.conftest:conv_net) with a state dict from elsewhere
    other = ConvBnRelu()
    torch.save(other.state_dict(), tmp_path / "w.pt")
    loaded = load_model("tests.conftest:conv_net", weights=tmp_path / "w.pt")
    assert torch.equal(loaded.module.conv.weight, other.conv.weight)


def test_weights_that_do_not_fit_are_bad_input(tmp_path):
    torch.save({"nope": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(BadInput, match="do not fit the model"):
        load_model("tests.conftest:conv_net", weights=tmp_path / "w.pt")


def test_zoo_models_load():
    from backendiff.models import ZOO

    for name in ("digits-cnn", "mini-pose", "tiny-transformer"):
        loaded = load_model(f"zoo:{name}")
        assert loaded.input_specs and loaded.module is not None
    with pytest.raises(BadInput, match="available: digits-cnn"):
        load_model("zoo:nope")
    assert len(ZOO) >= 2


def test_pickled_module_refused_unless_trusted(files):
    with pytest.raises(BadInput, match="pickled Python object.*--trust-pickle"):
        load_model(files / "whole.pt")
    loaded = load_model(files / "whole.pt", trust_pickle=True)
    assert loaded.format == "pickle"


def test_state_dict_as_model_is_explained(files):
    with pytest.raises(BadInput, match="holds a state dict"):
        load_model(files / "state.pt")


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"not a zip at all", "not a PyTorch archive"),
])
def test_bad_torch_files(tmp_path, content, match):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(BadInput, match=match):
        load_model(p)


def test_truncated_files(files, tmp_path):
    for name in ("ts.pt", "m.pt2", "m.onnx"):
        data = (files / name).read_bytes()
        p = tmp_path / name
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(BadInput, match="cannot read"):
            load_model(p)
