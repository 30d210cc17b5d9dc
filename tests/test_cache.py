"""A second identical run takes exported and compiled artifacts from the cache."""
import sys

import pytest

import backendiff

from .conftest import available


@pytest.mark.parametrize("backend", ["ort", "openvino", "tvm"])
def test_second_run_hits_the_cache(tmp_path, backend):
    if not available(backend):
        pytest.skip(f"{backend} not installed")
    first = backendiff.compare("zoo:digits-cnn-narrow", backends=[backend], cache_dir=tmp_path)
    second = backendiff.compare("zoo:digits-cnn-narrow", backends=[backend], cache_dir=tmp_path)
    a, b = first.backend(backend), second.backend(backend)
    assert a.status == b.status == "ok"
    assert a.outputs[0].metrics == b.outputs[0].metrics
    assert (a.cache, b.cache) == ("miss", "hit")  # ORT's cached artifact is the ONNX export
    # the key is the exported program: both runs export, only the first converts
    assert "torch_export_s" in first.timings and "torch_export_s" in second.timings
    assert first.model["key"] == second.model["key"]
    off = backendiff.compare("zoo:digits-cnn-narrow", backends=[backend], cache_dir=tmp_path, use_cache=False)
    assert off.backend(backend).cache == "off" and "torch_export_s" in off.timings


def test_changed_weights_change_the_key(tmp_path):
    import torch

    from backendiff.compare import model_key
    from backendiff.config import CompareConfig
    from backendiff.inputs import InputSpec
    from backendiff.models import ZOO

    m = ZOO["digits-cnn-narrow"].build().eval()
    config = CompareConfig(input_specs=(InputSpec("x", (1, 1, 8, 8), "float32"),))
    k = model_key(m, config)
    with torch.no_grad():
        m.classifier.bias[0] += 1
    assert model_key(m, config) != k


def test_the_same_code_in_another_checkout_is_another_key(tmp_path, monkeypatch):
    """Identical model files at two paths: other keys, since the export's file:line locations
    (which reports show) differ; the same file twice: the same key."""
    from backendiff.compare import model_key
    from backendiff.config import CompareConfig
    from backendiff.inputs import InputSpec

    code = "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
           "        self.fc = nn.Linear(3, 2)\n\n    def forward(self, x):\n        return self.fc(x)\n\n" \
           "def build():\n    import torch\n    torch.manual_seed(0)\n    return Net(), (torch.randn(1, 3),)\n"
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "net.py").write_text(code)
    import importlib.util

    def built(where: str):
        spec = importlib.util.spec_from_file_location("net", tmp_path / where / "net.py")
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "net", mod)            # imported as a package's module is
        spec.loader.exec_module(mod)
        return mod.build()

    def key(where: str):
        module, example = built(where)
        return model_key(module, CompareConfig(input_specs=(InputSpec("x", tuple(example[0].shape), "float32"),)))

    a, b = key("a"), key("b")                                 # as a zoo entry's modules are keyed
    assert a != b and key("a") == a
