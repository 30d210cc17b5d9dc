"""A small CNN for 32x32 colour patches of photographs (``zoo:photo-patches``): conv/BN/ReLU
blocks, two max-pools, global average pooling and a linear classifier."""
from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class PhotoPatchesCNN(nn.Module):
    def __init__(self, width: int = 24, classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(3, w), *_block(w, w),
            nn.MaxPool2d(2),                                    # 32x32 -> 16x16
            *_block(w, 2 * w), *_block(2 * w, 2 * w),
            nn.MaxPool2d(2),                                    # 16x16 -> 8x8
            *_block(2 * w, 4 * w),
        )
        self.classifier = nn.Linear(4 * w, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x).mean((2, 3)), 1))
