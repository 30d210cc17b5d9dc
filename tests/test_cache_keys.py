"""A cache hit can never change a verdict: artifacts are keyed by what the runtimes consume
(the exported program), so models that differ only in a stored callable, a lambda, a helper
in another file, a constant or a buffer never share an artifact."""
import sys
import textwrap

import pytest

import backendiff
from backendiff.compare import model_key

from .conftest import available

MODELS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn

    import keys_helper


    class Net(nn.Module):
        """One class; the factories differ only in what they store on it."""

        def __init__(self, fn, scale=1.0, shift=None):
            super().__init__()
            self.fn = fn
            self.scale = scale
            self.register_buffer("shift", torch.zeros(8) if shift is None else shift)

        def forward(self, x):
            return self.fn(x) * self.scale + self.shift


    def example():
        return (torch.linspace(-3, 3, 16).reshape(2, 8),)


    def gelu():
        return Net(F.gelu), example()

    def gelu_tanh():
        return Net(lambda x: F.gelu(x, approximate="tanh")), example()

    def sigmoid():
        return Net(torch.sigmoid), example()

    def lam_half():
        return Net(lambda x: x * 0.5), example()

    def lam_quarter():
        return Net(lambda x: x * 0.25), example()

    def scaled():
        return Net(F.gelu, scale=2.0), example()

    def buffer():
        return Net(F.gelu, shift=torch.ones(8)), example()

    def helper():
        return Net(keys_helper.act), example()
''')

FACTORIES = ["gelu", "gelu_tanh", "sigmoid", "lam_half", "lam_quarter", "scaled", "buffer", "helper"]


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    (tmp_path / "keys_helper.py").write_text("import torch\n\ndef act(x):\n    return torch.tanh(x)\n")
    (tmp_path / "keys_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "keys_helper", raising=False)
    return tmp_path / "keys_models.py"


def test_models_differing_only_in_a_callable_constant_or_buffer_have_distinct_keys(model_file):
    keys = {name: model_key(f"{model_file}:{name}") for name in FACTORIES}
    assert len(set(keys.values())) == len(FACTORIES), keys
    assert model_key(f"{model_file}:gelu") == keys["gelu"]     # and the same model keys the same


@pytest.mark.skipif(not available("ort"), reason="onnxruntime not installed")
def test_cached_verdicts_equal_uncached_verdicts(model_file, tmp_path):
    """Every model through one shared cache, then each without a cache: the same verdict and
    the same numbers (a shared artifact would make the others diverge)."""
    cache = tmp_path / "cache"
    for name in FACTORIES:
        source = f"{model_file}:{name}"
        cached = backendiff.compare(source, backends=["ort"], cache_dir=cache, isolate=False, golden=False)
        fresh = backendiff.compare(source, backends=["ort"], use_cache=False, isolate=False, golden=False)
        a, b = cached.backend("ort"), fresh.backend("ort")
        assert a.status == b.status == "ok", (name, a.status, a.worst())
        assert a.outputs[0].metrics == b.outputs[0].metrics, name
        assert a.cache == "miss", name       # no model found another's artifact


@pytest.mark.skipif(not available("ort"), reason="onnxruntime not installed")
def test_editing_a_helper_in_another_file_recompiles(model_file, tmp_path):
    """The helper ``forward`` calls lives in another file: editing it changes the exported
    program, so the next run compiles again and agrees, without --no-cache."""
    cache, source = tmp_path / "cache", f"{model_file}:helper"
    first = backendiff.compare(source, backends=["ort"], cache_dir=cache, isolate=False, golden=False)
    again = backendiff.compare(source, backends=["ort"], cache_dir=cache, isolate=False, golden=False)
    assert (first.backend("ort").cache, again.backend("ort").cache) == ("miss", "hit")

    (model_file.parent / "keys_helper.py").write_text("import torch\n\ndef act(x):\n    return torch.sigmoid(x)\n")
    del sys.modules["keys_helper"]                 # a new process would import it afresh
    edited = backendiff.compare(source, backends=["ort"], cache_dir=cache, isolate=False, golden=False)
    b = edited.backend("ort")
    assert edited.model["key"] != first.model["key"]
    assert b.cache == "miss" and b.status == "ok", (b.status, b.worst())


def test_a_model_that_does_not_export_is_never_cached(tmp_path):
    """No export, no content key: its artifacts go to a temporary folder, never reused."""
    (tmp_path / "noexport.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Net(nn.Module):
            def forward(self, x):
                if x.sum().item() > 0:      # data-dependent control flow: torch.export refuses it
                    return x * 2
                return x - 1

        def build():
            return Net(), (torch.ones(2, 3),)
    '''))
    report = backendiff.compare(f"{tmp_path / 'noexport.py'}:build", backends=["ort"], cache_dir=tmp_path / "c",
                                isolate=False, golden=False)
    assert report.model["cached"] is False
    assert report.backend("ort").status == "failed"
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.onnx"))
