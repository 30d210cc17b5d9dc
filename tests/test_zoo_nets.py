"""The MobileNetV2 and ViT-Tiny zoo entries: published sizes, output shape, and a real
ONNX Runtime run through the command line."""
import json

import pytest
import torch
from click.testing import CliRunner

from backendiff.cli import cli

from .conftest import needs

# name -> published parameter count (torchvision mobilenet_v2 1.0; DeiT-Tiny, Touvron et al. 2021)
PUBLISHED = {"mobilenetv2": 3.50e6, "vit-tiny": 5.72e6}


@pytest.fixture(scope="module", params=sorted(PUBLISHED))
def entry(request):
    from backendiff.models import ZOO

    return ZOO[request.param]


def test_parameter_count_matches_the_published_architecture(entry):
    n = sum(p.numel() for p in entry.build().parameters())
    assert abs(n - PUBLISHED[entry.name]) / PUBLISHED[entry.name] < 0.02, n


def test_output_shape(entry):
    assert [s.shape for s in entry.inputs] == [(1, 3, 224, 224)]
    with torch.no_grad():
        out = entry.build()(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_the_same_seeded_weights_every_build(entry):
    a, b = entry.build().state_dict(), entry.build().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_attention_is_written_out():
    from backendiff.models import ZOO
    from backendiff.models.nets import ViTAttention

    model = ZOO["vit-tiny"].build()
    attn = [m for m in model.modules() if isinstance(m, ViTAttention)]
    assert len(attn) == 12 and not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


@needs("ort")
def test_ort_agrees(entry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["compare", f"zoo:{entry.name}", "--backends", "ort", "--no-layerwise",
                                      "--no-cache", "--no-golden", "--json", str(out), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["verdict"] == "pass"
    (ort,) = data["backends"]
    assert ort["spec"] == "ort" and ort["status"] == "ok" and ort["error"] is None
    assert ort["outputs"][0]["shape"] == [1, 1000]
    worst = max(o["metrics"]["max_abs"] for o in ort["outputs"])
    assert worst < 1e-3 and ort["outputs"][0]["metrics"]["nonfinite"] == 0
