"""Each expensive artifact is made once per run: the model is translated to ONNX once, and
both the deployed ONNX (that translation, optimized) and the layer view's ONNX (the same
translation before the optimizer) come from it, each the same as its own export would be."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import backendiff
from backendiff.artifacts import Artifacts
from backendiff.cache import Cache
from backendiff.chatter import captured
from backendiff.loading import load_model

from .conftest import needs


class Block(nn.Module):
    """A small attention block: reshapes, a scale and a softmax give the exporter Constants
    that the optimizer folds and lifts (what a translation shared before the optimizer must
    keep apart from the optimized one)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.out, self.norm = nn.Linear(16, 48), nn.Linear(16, 16), nn.LayerNorm(16)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 2, 8).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, t, 16)
        return self.norm(x + nn.functional.gelu(self.out(y)))


def sample() -> dict:
    return {"x": np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)}


@pytest.fixture
def translations(monkeypatch):
    """The ``torch.onnx.export`` calls made while the test runs (their ``optimize``)."""
    calls, export = [], torch.onnx.export

    def counting(*args, **kwargs):
        calls.append(kwargs.get("optimize", True))
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    return calls


@needs("ort")
def test_a_cold_layerwise_compare_translates_the_model_to_onnx_once(tmp_path, translations):
    report = backendiff.compare(Block().eval(), inputs=sample(), backends=["ort"], layerwise="always",
                                isolate=False, cache_dir=tmp_path, golden=False)
    result = report.backend("ort")
    assert result.status == "ok" and result.layers, result.error or result.info.get("layers_error")
    assert translations == [False], "the deployed ONNX and the layer view's come from one translation"


@pytest.mark.parametrize("deployed_first", [True, False], ids=["deployed-first", "layers-first"])
def test_the_shared_translation_gives_what_each_export_of_its_own_gives(tmp_path, translations, deployed_first):
    import onnx
    from torch.onnx._internal.exporter import _core, _registration

    artifacts = Artifacts(load_model(Block()), sample(), Cache(tmp_path))
    ep = copy.deepcopy(artifacts.exported_program())
    if deployed_first:
        deployed = artifacts.onnx_path()
        layers, names = artifacts.layer_onnx()
    else:
        layers, names = artifacts.layer_onnx()
        deployed = artifacts.onnx_path()
    program = artifacts.program("onnx")
    assert translations == [False]

    with captured(streams=True):   # each made on its own, as before: the deployed ONNX, the layer view's
        direct = torch.onnx.export(copy.deepcopy(ep), dynamo=True, optimize=True, verbose=False).model_proto
        prepared = _core._prepare_exported_program_for_export(copy.deepcopy(ep),
                                                              registry=_registration.ONNXRegistry.from_torchlib())
        plain = torch.onnx.export(prepared, dynamo=True, optimize=False, verbose=False).model_proto
    assert onnx.load(str(deployed)).SerializeToString() == direct.SerializeToString()
    assert onnx.load(str(layers)).SerializeToString() == plain.SerializeToString()
    assert str(program.graph) == str(prepared.graph)
    fx = {n.name for n in prepared.graph.nodes if n.op == "call_function"}
    assert names == [vi.name for vi in plain.graph.value_info if vi.name in fx] and names
    assert (layers.parent / "layer_program.pt2").exists()


def test_a_failed_translation_is_kept_and_raised_by_both_views(tmp_path, translations, monkeypatch):
    from backendiff.artifacts import ExportFailed

    artifacts = Artifacts(load_model(Block()), sample(), Cache(tmp_path))
    artifacts.exported_program()

    def fail(*args, **kwargs):
        translations.append("failed")
        raise RuntimeError("no ONNX function for aten.block") from KeyError("aten.block")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ExportFailed, match="torch.onnx.export failed: KeyError: 'aten.block'"):   # by its root
        artifacts.onnx_path()
    with pytest.raises(ExportFailed):
        artifacts.onnx_path()
    with pytest.raises(RuntimeError, match="no ONNX function") as raised:    # the exporter's own error, as before
        artifacts.layer_onnx()
    assert isinstance(raised.value.__cause__, KeyError)                         # with the real error under it
    assert translations == ["failed"]
