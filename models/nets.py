"""Random-weight architectures for numeric divergence and scale (seeded by the zoo)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MiniPose(nn.Module):
    """A one-stage MSPN-flavoured pose net: a down path, a top-down path that upsamples with
    ``F.interpolate(mode='bilinear', align_corners=True)`` as MSPN does, a skip merged with
    ``align_corners=False``, and a 17-keypoint heatmap head at 1/4 resolution."""

    def __init__(self, keypoints: int = 17):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, 16, 2), conv_bn_relu(16, 16))
        self.down1 = conv_bn_relu(16, 32, 2)
        self.down2 = conv_bn_relu(32, 64, 2)
        self.lateral1 = nn.Conv2d(32, 64, 1)
        self.lateral0 = nn.Conv2d(16, 64, 1)
        self.head = nn.Sequential(conv_bn_relu(64, 32), nn.Conv2d(32, keypoints, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        c0 = self.stem(image)                    # 1/2
        c1 = self.down1(c0)                      # 1/4
        c2 = self.down2(c1)                      # 1/8
        p1 = F.interpolate(c2, size=c1.shape[-2:], mode="bilinear", align_corners=True) + self.lateral1(c1)
        p0 = F.interpolate(p1, scale_factor=2, mode="bilinear", align_corners=False) + self.lateral0(c0)
        return self.head(F.max_pool2d(p0, 2, ceil_mode=True))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, classes: int = 10):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def shortcut(cin: int, cout: int, stride: int):
    """ResNet's projection shortcut where the shape changes, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = shortcut(cin, cout, stride)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = shortcut(cin, cout, stride)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):
    """ResNet-18/50 layouts (torchvision's module names), built here so no torchvision is needed."""

    def __init__(self, layers=(2, 2, 2, 2), classes: int = 1000, block=BasicBlock):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        expansion = getattr(block, "expansion", 1)
        for i, (w, n) in enumerate(zip(widths, layers)):
            blocks = [block(cin, w, 1 if i == 0 else 2)] + [block(w * expansion, w, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w * expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512 * expansion, classes)
        for m in self.modules():  # running stats away from the identity, as in a trained net
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet18():
    return ResNet((2, 2, 2, 2))


def resnet50():
    return ResNet((3, 4, 6, 3), block=Bottleneck)


class Fp16Overflow(nn.Module):
    """A layer whose activations reach ~4e5, past fp16's 65504, scaled back down after: fine
    in fp32, Inf in fp16 wherever the runtime really computes that layer in fp16."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 4)
        with torch.no_grad():
            self.up.weight.mul_(2e5)

    def forward(self, x):
        return self.down(self.up(x) * 1e-3)
