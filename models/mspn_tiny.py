"""mspn-tiny: a 2-stage MSPN-style pose network (Li et al., "Rethinking on Multi-Stage Networks
for Human Pose Estimation") scaled down for 64x48 images and 11 keypoints.

Each stage is a down path of residual blocks (1/4, 1/8, 1/16) and a top-down path that
upsamples with ``F.interpolate(mode='bilinear', align_corners=True)`` (as MSPN does) and adds
1x1 laterals, with a heatmap head at every scale for coarse-to-fine supervision. Cross-stage
aggregation: the second stage's down path adds 1x1 projections of the first stage's down and
up features at each scale. ``forward`` returns the last stage's 1/4-resolution heatmaps
(N, 11, 16, 12); ``forward_all`` returns every stage's heatmaps at every scale for training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KEYPOINTS = 11
CHANNELS = (24, 32, 48)     # down path at 1/4, 1/8, 1/16
UP = 32                     # top-down path width


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Stage(nn.Module):
    """One MSPN unit: down path, top-down path, a heatmap head per scale; with `aggregate`
    it adds 1x1 projections of the previous stage's down and up features (cross-stage)."""

    def __init__(self, cin: int, first_stride: int, aggregate: bool, keypoints: int = KEYPOINTS):
        super().__init__()
        widths = (cin,) + CHANNELS
        self.down = nn.ModuleList(Residual(widths[i], widths[i + 1], first_stride if i == 0 else 2) for i in range(3))
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(c, UP, 1, bias=False), nn.BatchNorm2d(UP)) for c in CHANNELS)
        self.smooth = nn.ModuleList(nn.Sequential(nn.Conv2d(UP, UP, 3, 1, 1, bias=False), nn.BatchNorm2d(UP), nn.ReLU())
                                    for _ in CHANNELS)
        self.heads = nn.ModuleList(nn.Conv2d(UP, keypoints, 3, 1, 1) for _ in CHANNELS)
        self.aggregate = aggregate
        self.upsample_mode, self.align_corners = "bilinear", True    # MSPN's; SysNoise swaps them
        if aggregate:
            self.from_down = nn.ModuleList(nn.Conv2d(c, c, 1) for c in CHANNELS)
            self.from_up = nn.ModuleList(nn.Conv2d(UP, c, 1) for c in CHANNELS)

    def forward(self, x, previous=None, heads=(0, 1, 2)):
        """(down features, up features, heatmaps) per scale, finest first; heatmaps only at
        the scales in `heads` (None elsewhere)."""
        downs = []
        for i, block in enumerate(self.down):
            x = block(x)
            if self.aggregate:
                prev_down, prev_up = previous
                x = x + self.from_down[i](prev_down[i]) + self.from_up[i](prev_up[i])
            downs.append(x)
        ups, heatmaps = [None] * 3, [None] * 3
        top = None
        for i in (2, 1, 0):                     # coarse to fine
            lat = self.lateral[i](downs[i])
            if top is not None:
                lat = lat + F.interpolate(top, size=lat.shape[-2:], mode=self.upsample_mode,
                                          align_corners=self.align_corners)
            top = self.smooth[i](F.relu(lat))
            ups[i] = top
            if i in heads:
                heatmaps[i] = self.heads[i](top)
        return downs, ups, heatmaps


class MSPNTiny(nn.Module):
    def __init__(self, keypoints: int = KEYPOINTS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())   # 1/2
        self.stage1 = Stage(16, 2, aggregate=False, keypoints=keypoints)
        self.stage2 = Stage(UP, 1, aggregate=True, keypoints=keypoints)

    def forward_all(self, image: torch.Tensor, final_only: bool = False) -> list[list[torch.Tensor]]:
        """[[stage-1 heatmaps at 1/4, 1/8, 1/16], [stage-2 ...]]; with `final_only` only the
        last stage's finest heatmaps are computed (the rest are None)."""
        downs, ups, first = self.stage1(self.stem(image), heads=() if final_only else (0, 1, 2))
        _, _, second = self.stage2(ups[0], (downs, ups), heads=(0,) if final_only else (0, 1, 2))
        return [first, second]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_all(image, final_only=True)[-1][0]
