"""Vision transformers: ViT, DeiT (with its distillation token), BEiT (relative position bias),
Swin (shifted windows), as ``transformers`` builds them.

Sizes shrunk, architecture kept: 32x32 images in 4x4 patches (64 tokens and the class
token) for the plain ViTs, hidden size 64 in 2 layers of 4 heads with the 4x MLP, a 10-class
head; Swin at 64x64 in 4x4 patches and windows of 4 over 2 stages (16x16 then 8x8 tokens,
so each stage has a regular and a shifted-window block and a patch merge between them).
Inputs: 2 images N(0, 1)-like, as the image processors normalise them.
"""
from __future__ import annotations

from torch import nn

from ._common import build, declare, pixels, pixels_spec, trained_like_head

BATCH, SIZE, PATCH, CLASSES = 2, 32, 4, 10
SIZES = dict(image_size=SIZE, patch_size=PATCH, num_channels=3, hidden_size=64, num_hidden_layers=2,
             num_attention_heads=4, intermediate_size=256, num_labels=CLASSES)


class ImageLogits(nn.Module):
    """``pixel_values`` -> the classifier's logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def classifier(model: nn.Module, size: int = SIZE, heads=("classifier",)):
    """The wrapped classifier with its one declared input and an example batch; its head
    drawn at a trained head's scale (``_common.trained_like_head``)."""
    example = (pixels(BATCH, 3, size, size),)
    wrapped = declare(ImageLogits(model), pixels_spec("pixel_values", BATCH, 3, size, size))
    return trained_like_head(wrapped, example, *(f"model.{h}" for h in heads)), example


def vit():
    """ViTForImageClassification: pre-norm blocks, learned positions, class-token head."""
    from transformers import ViTConfig, ViTForImageClassification

    return classifier(build(ViTForImageClassification, ViTConfig(**SIZES)))


def deit():
    """DeiTForImageClassificationWithTeacher: a class and a distillation token, two heads whose
    logits are averaged (DeiT's inference)."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    return classifier(build(DeiTForImageClassificationWithTeacher, DeiTConfig(**SIZES)),
                      heads=("cls_classifier", "distillation_classifier"))


def beit():
    """BeitForImageClassification as BEiT's fine-tuned classifiers are configured: a relative
    position bias in every layer, LayerScale, mean pooling of the patch tokens."""
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(**SIZES, use_relative_position_bias=True, use_absolute_position_embeddings=False,
                        use_mean_pooling=True, layer_scale_init_value=0.1)
    return classifier(build(BeitForImageClassification, config))


def swin():
    """SwinForImageClassification: windowed attention with a relative position bias, shifted
    windows in every second block (with their attention mask), patch merging."""
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=64, patch_size=4, num_channels=3, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                        window_size=4, mlp_ratio=4.0, num_labels=CLASSES)
    return classifier(build(SwinForImageClassification, config), 64)


def dinov2():
    """Dinov2Model as DINOv2's backbones are built: LayerScale, position embeddings
    interpolated (bicubic) to the image's grid, an MLP ratio of 4; the outputs are the
    features a downstream head takes, the class token's pooled output and the patch tokens."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(**{k: v for k, v in SIZES.items() if k not in ("num_labels", "intermediate_size")},
                          mlp_ratio=4)
    model = build(Dinov2Model, config)
    wrapped = declare(Features(model), pixels_spec("pixel_values", BATCH, 3, SIZE, SIZE))
    return wrapped, (pixels(BATCH, 3, SIZE, SIZE),)


class Features(nn.Module):
    """``pixel_values`` -> (pooled output, last hidden state): a backbone's features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        return out.pooler_output, out.last_hidden_state


def vit_b16(layers: int = 12):
    """ViT-B/16 at its real size (224x224 in 16x16 patches, hidden 768, 12 heads, 3072 MLP,
    1000 classes: 86 M parameters with 12 layers), one image: the large model of the
    layer-wise memory benchmark (``layers`` changes only the depth)."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=768, num_hidden_layers=layers,
                       num_attention_heads=12, intermediate_size=3072, num_labels=1000)
    example = (pixels(1, 3, 224, 224),)
    wrapped = declare(ImageLogits(build(ViTForImageClassification, config)), pixels_spec("pixel_values", 1, 3, 224, 224))
    return trained_like_head(wrapped, example, "model.classifier"), example


def vit_b16_half_depth():
    """``vit_b16`` with 6 layers: the same width at half the depth (peak memory against depth)."""
    return vit_b16(layers=6)
