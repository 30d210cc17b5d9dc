"""Random-weight architectures for numeric divergence and scale (seeded by the zoo)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def trained_like_batchnorm(module: nn.Module) -> None:
    """Move every BatchNorm's affine and running statistics away from the identity, as in a
    trained net (random-weight models would otherwise hide BN folding differences)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)


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
        trained_like_batchnorm(self)

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


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going more than 10% below ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_relu6(cin, cout, kernel=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), the paper's (t, c, n, s) table and width multiplier."""

    config = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width: float = 1.0, classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        cin = _make_divisible(32 * width)
        last = _make_divisible(1280 * max(1.0, width))
        layers = [conv_bn_relu6(3, cin, 3, 2)]
        for t, c, n, s in self.config:
            cout = _make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, classes))
        trained_like_batchnorm(self)

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def mobilenet_v2(width: float = 1.0, classes: int = 1000):
    return MobileNetV2(width, classes)


class ViTAttention(nn.Module):
    """Multi-head self-attention written out (qkv Linear, softmax(q k^T * scale) v, proj), so the
    exported graph keeps its MatMul/Softmax ops under this module's name."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    """Pre-norm encoder block: x + attn(norm(x)), then x + mlp(norm(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al. 2021): conv patch embedding, class token, learned
    position embeddings, pre-norm blocks, final LayerNorm and a linear head on the class token."""

    def __init__(self, image: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
                 mlp_ratio: float = 4.0, classes: int = 1000):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)   # (B, N, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit_tiny(classes: int = 1000):
    """DeiT-Tiny dimensions: 224x224, patch 16, dim 192, depth 12, 3 heads, MLP ratio 4."""
    return ViT(224, 16, 192, 12, 3, 4.0, classes)
