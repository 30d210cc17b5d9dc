"""Detection transformers: DETR (CNN backbone + encoder-decoder with object queries) and
YOLOS (a plain ViT with detection tokens), as ``transformers`` builds them.

The compared outputs are the raw heads, class logits ``(batch, queries, classes + 1)`` and
boxes ``(batch, queries, 4)`` (sigmoid, centre/size normalised to the image), never the
post-processing (thresholds, NMS-free matching to labels), which is the application's. The
class and box heads are drawn at a trained head's scale (``_common.trained_like_head``).
Sizes shrunk, architecture kept: 10 queries, 10 classes, d_model 64 in 2+2 layers of 4
heads; 2 images, N(0, 1)-like.
"""
from __future__ import annotations

import torch
from torch import nn

from backendiff.inputs import InputSpec

from ._common import SEED, build, declare, pixels, pixels_spec, trained_like_head

BATCH, CLASSES, QUERIES = 2, 10, 10
HEADS = ("model.class_labels_classifier", "model.bbox_predictor")


class Detections(nn.Module):
    """``pixel_values`` -> (class logits, boxes)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        return out.logits, out.pred_boxes


class MaskedDetections(nn.Module):
    """``(pixel_values, pixel_mask)`` -> (class logits, boxes); ``pixel_mask`` is 1 on the image
    and 0 on the padding DETR's processor adds to batch images of different sizes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, pixel_mask):
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return out.logits, out.pred_boxes


def _frozen_norms_trained_like(model: nn.Module) -> None:
    """DETR's backbone BatchNorms are frozen (``DetrFrozenBatchNorm2d``: buffers, not
    parameters) and start at the identity; move them off it as ``nets.trained_like_batchnorm``
    does for ``nn.BatchNorm2d``."""
    g = torch.Generator().manual_seed(SEED)
    for m in model.modules():
        if type(m).__name__.endswith("FrozenBatchNorm2d"):
            n = m.weight.shape[0]
            m.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
            m.bias.copy_(torch.empty(n).uniform_(-0.2, 0.2, generator=g))
            m.running_mean.copy_(torch.empty(n).uniform_(-0.2, 0.2, generator=g))
            m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=g))


def detr():
    """DetrForObjectDetection with transformers' own ResNet backbone (bottlenecks, 1/8 of
    ResNet-50's widths, last stage only, frozen BatchNorm), sine position embeddings of the
    pixel mask, 10 object queries. 128x128 images (a 4x4 feature map); the second image of the
    batch is padded on the right and bottom, as the processor pads a smaller one."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                            layer_type="bottleneck", out_features=["stage4"])
    config = DetrConfig(backbone_config=backbone, d_model=64, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                        decoder_ffn_dim=128, num_queries=QUERIES, num_labels=CLASSES)
    model = build(DetrForObjectDetection, config)
    with torch.no_grad():
        _frozen_norms_trained_like(model)
    image = pixels(BATCH, 3, 128, 128)
    mask = torch.ones(BATCH, 128, 128, dtype=torch.int64)
    mask[1, 96:, :] = 0
    mask[1, :, 112:] = 0
    image[1] *= mask[1]                             # the padding is zeros, as the processor pads
    wrapped = declare(MaskedDetections(model), pixels_spec("pixel_values", BATCH, 3, 128, 128),
                      InputSpec("pixel_mask", (BATCH, 128, 128), "int64", 0, 2))
    return trained_like_head(wrapped, (image, mask), *HEADS), (image, mask)


def yolos():
    """YolosForObjectDetection: a ViT over 8x8 patches of a 64x96 image with 10 detection
    tokens, mid-layer position embeddings (as yolos-small), the class and box MLP heads."""
    from transformers import YolosConfig, YolosForObjectDetection

    config = YolosConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                         image_size=[64, 96], patch_size=8, num_detection_tokens=QUERIES, num_labels=CLASSES)
    model = build(YolosForObjectDetection, config)
    example = (pixels(BATCH, 3, 64, 96),)
    wrapped = declare(Detections(model), pixels_spec("pixel_values", BATCH, 3, 64, 96))
    return trained_like_head(wrapped, example, *HEADS), example
