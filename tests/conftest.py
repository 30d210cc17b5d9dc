
import copy
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backendiff.registry import adapter_class

CPU_BACKENDS = ("ort", "openvino", "tvm")


def available(name: str) -> bool:
    return adapter_class(name).availability().available


def needs(*names):
    missing = [n for n in names if not available(n)]
    return pytest.mark.skipif(bool(missing), reason=f"runtime not installed: {', '.join(missing)}")


@contextmanager
def degraded_backend(name: str, mutate):
    """A test-only backend registered for the block: PyTorch running a copy of the model
    changed in place by `mutate(module)` (a deliberately degraded deployment)."""
    from backendiff.backends.pytorch import TorchAdapter
    from backendiff.registry import register_backend, unregister_backend

    def convert(self, model, folder):
        module = copy.deepcopy(model.loaded.module)
        with torch.no_grad():
            mutate(module)
        return module

    register_backend(type("Degraded", (TorchAdapter,), {"name": name, "convert": convert}))
    try:
        yield
    finally:
        unregister_backend(name)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache for the whole session: a model compiled once is reused by later tests."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated_cache_env(monkeypatch, cache_dir):
    monkeypatch.setenv("BACKENDIFF_CACHE", str(cache_dir))


# Small models, one per operator family the issue names. Seeded in their factories.
class ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CeilPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.conv(x))


class Upsample(nn.Module):
    def __init__(self, align_corners: bool):
        super().__init__()
        self.align_corners = align_corners
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.interpolate(self.conv(x), scale_factor=2, mode="bilinear", align_corners=self.align_corners)


class NormGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 32)

    def forward(self, x):
        return F.gelu(self.fc(self.norm(x)))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def seeded(cls, *args):
    torch.manual_seed(0)
    return cls(*args).eval()


IMAGE = (1, 3, 11, 13)   # odd sizes: ceil-mode pooling and resizing edges matter
TOKENS = (2, 6, 16)

OP_MODELS = {
    "conv_bn_relu": (lambda: seeded(ConvBnRelu), IMAGE),
    "maxpool_ceil": (lambda: seeded(CeilPool), IMAGE),
    "bilinear_align_true": (lambda: seeded(Upsample, True), IMAGE),
    "bilinear_align_false": (lambda: seeded(Upsample, False), IMAGE),
    "layernorm_gelu": (lambda: seeded(NormGelu), TOKENS),
    "attention": (lambda: seeded(Attention), TOKENS),
}


def conv_net():
    """The factory used by file.py:factory tests (this file is importable as tests.conftest too)."""
    return seeded(ConvBnRelu)
