"""Convolutional classifiers: ResNet, ConvNeXt, MobileNetV2, EfficientNet, as ``transformers``
builds them.

Each keeps its blocks (bottlenecks, depthwise 7x7 + LayerNorm + inverted MLP, inverted
residuals with ReLU6 and TensorFlow "SAME" padding, MBConv with squeeze-excitation and
swish) and shrinks only widths, depths and the image: 2 images of 64x64, N(0, 1)-like, a
10-class head. BatchNorm statistics and affines are moved off the identity
(``nets.trained_like_batchnorm``, as a trained net has them): at their init values a
backend that folds BatchNorm wrongly would still agree.
"""
from __future__ import annotations

from ..nets import trained_like_batchnorm
from ._common import build
from .vision_transformers import classifier

SIZE, CLASSES = 64, 10


def _trained_like(model):
    trained_like_batchnorm(model)        # seeded by build()'s manual_seed: the same every time
    return model


def resnet():
    """ResNetForImageClassification with ResNet-50's bottleneck blocks (1x1 / 3x3 / 1x1, 4x
    expansion, a projection shortcut per stage) at 1/8 of its widths, one block per stage."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                          layer_type="bottleneck", num_labels=CLASSES)
    return classifier(_trained_like(build(ResNetForImageClassification, config)), SIZE)


def convnext():
    """ConvNextForImageClassification: patchify stem, depthwise 7x7, channels-first LayerNorm,
    inverted MLP with GELU, LayerScale. The LayerScale starts at 1.0, not ConvNeXt's 1e-6
    init: a trained ConvNeXt's scales are far from it, and at 1e-6 every block of a random
    model would be the identity."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(patch_size=4, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                            layer_scale_init_value=1.0, image_size=SIZE, num_labels=CLASSES)
    return classifier(build(ConvNextForImageClassification, config), SIZE)


def mobilenet_v2():
    """MobileNetV2ForImageClassification at depth multiplier 0.35 (a released size): all 17
    inverted-residual blocks, ReLU6, TensorFlow-style SAME padding as in the original
    checkpoints."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(image_size=SIZE, depth_multiplier=0.35, num_labels=CLASSES)
    return classifier(_trained_like(build(MobileNetV2ForImageClassification, config)), SIZE)


def efficientnet():
    """EfficientNetForImageClassification: B0's stages (kernel sizes, strides, expansion ratios)
    at width 0.25 and depth 0.5 (one or two MBConv blocks per stage), squeeze-excitation,
    swish, and the library's global pooling (an AvgPool2d of kernel ``hidden_dim`` with
    ceil_mode). ``hidden_dim`` is B0's 1280 top channels scaled by the width, as it must be."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    config = EfficientNetConfig(image_size=SIZE, width_coefficient=0.25, depth_coefficient=0.5, hidden_dim=320,
                                dropout_rate=0.2, num_labels=CLASSES)
    return classifier(_trained_like(build(EfficientNetForImageClassification, config)), SIZE)


def mobilevit():
    """MobileViTForImageClassification: MobileNetV2 blocks with MobileViT blocks (unfold to
    patches, a transformer over them, fold back, fuse by conv) at mobilevit-xx-small's
    widths (the smallest released), 64x64."""
    from transformers import MobileViTConfig, MobileViTForImageClassification

    config = MobileViTConfig(image_size=SIZE, hidden_sizes=[64, 80, 96], expand_ratio=2.0, num_labels=CLASSES,
                             neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320])
    return classifier(_trained_like(build(MobileViTForImageClassification, config)), SIZE)
