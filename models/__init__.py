"""The built-in model zoo (installed as ``backendiff.models``): ``zoo:NAME`` on the CLI.

Each entry: a definition, the inputs it takes, and where trained, small committed
weights with the script that trained them (``train_digits.py``). Random-weight entries
are seeded, so every run builds the same model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backendiff.inputs import InputSpec

WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    factory: Callable
    inputs: tuple[InputSpec, ...]
    weights: str | None = None  # file in weights/, loaded with weights_only=True
    task: str | None = None     # the end task its data is labelled for
    data: Callable | None = None  # () -> (inputs, labels): its held-out evaluation data

    def build(self):
        import torch

        model = self.factory()
        if self.weights:
            state = torch.load(WEIGHTS / self.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        return model.eval()


def _digits_heldout():
    from .train_digits import load_digits_split

    _, _, x_test, y_test = load_digits_split()
    return x_test, y_test


def _digits(width: int):
    def make():
        from .digits_cnn import DigitsCNN

        return DigitsCNN(width=width)

    return make


def _seeded(builder: str):
    def make():
        import torch

        from . import nets

        torch.manual_seed(0)
        return getattr(nets, builder)()

    return make


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("digits-cnn", "CNN trained on scikit-learn digits (conv/BN/ReLU, ceil-mode max-pool), width 16",
                 _digits(16), (InputSpec("x", (8, 1, 8, 8), "float32", 0.0, 1.0),), "digits_cnn_w16.pt",
                 "classification", _digits_heldout),
        ZooEntry("digits-cnn-narrow", "the same CNN at width 4",
                 _digits(4), (InputSpec("x", (8, 1, 8, 8), "float32", 0.0, 1.0),), "digits_cnn_w4.pt",
                 "classification", _digits_heldout),
        ZooEntry("mini-pose", "MSPN-style down/up path: bilinear upsampling (align_corners True and False), "
                 "heatmap head (random weights)", _seeded("MiniPose"), (InputSpec("image", (1, 3, 64, 48)),)),
        ZooEntry("tiny-transformer", "2-layer pre-norm transformer encoder: LayerNorm, multi-head attention, "
                 "GELU (random weights)", _seeded("TinyTransformer"), (InputSpec("tokens", (2, 16, 32)),)),
        ZooEntry("resnet18", "ResNet-18 at 224x224 (random weights; for scale and benchmarks)",
                 _seeded("resnet18"), (InputSpec("x", (1, 3, 224, 224)),)),
        ZooEntry("fp16-overflow", "two linear layers, the first overflowing fp16 (where a NaN/Inf is born)",
                 _seeded("Fp16Overflow"), (InputSpec("x", (4, 16)),)),
        ZooEntry("resnet50", "ResNet-50 at 224x224 (random weights; for the layer-wise memory benchmark)",
                 _seeded("resnet50"), (InputSpec("x", (1, 3, 224, 224)),)),
    ]
}
