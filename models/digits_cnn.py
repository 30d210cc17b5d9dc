"""A small CNN for scikit-learn's 8x8 digits: conv/BN/ReLU blocks and a ceil-mode max-pool
(the pooling mode SysNoise found runtimes disagree on)."""
from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),          # 8x8 -> 4x4
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        )
        self.classifier = nn.Linear(2 * w * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class DigitsEmbedding(DigitsCNN):
    """The trained digits CNN without its classifier: L2-normalised 512-d features (width 16),
    for the embeddings task (retrieval of same-digit neighbours)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(torch.flatten(self.features(x), 1), dim=1)
