"""Segmentation: SegFormer (semantic) and Mask2Former (universal: masked-attention decoder
over a multi-scale deformable-attention pixel decoder), as ``transformers`` builds them.

The compared outputs are the raw heads (per-pixel class logits; per-query class logits and
mask logits), never the post-processing that turns them into label maps; the class heads are
drawn at a trained head's scale (``_common.trained_like_head``). 2 images of 64x64, N(0, 1)-like,
10 classes.
"""
from __future__ import annotations

from torch import nn

from ._common import build, declare, pixels, pixels_spec, trained_like_head

BATCH, SIZE, CLASSES = 2, 64, 10


class SegmentationLogits(nn.Module):
    """``pixel_values`` -> per-pixel class logits ``(batch, classes, size / 4, size / 4)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


class QueryMasks(nn.Module):
    """``pixel_values`` -> (class logits per query ``(batch, queries, classes + 1)``, mask logits
    per query ``(batch, queries, size / 4, size / 4)``): the last decoder layer's, without the
    auxiliary ones."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        return out.class_queries_logits, out.masks_queries_logits


def segformer():
    """SegformerForSemanticSegmentation: MiT-b0's four stages (overlapping patch embeddings,
    efficient attention with spatial reduction 8/4/2/1, Mix-FFN with a depthwise conv) at one
    block per stage and half b0's widths, and its all-MLP decode head."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 80, 128], num_attention_heads=[1, 2, 5, 8],
                             decoder_hidden_size=64, num_labels=CLASSES)
    model = build(SegformerForSemanticSegmentation, config)
    example = (pixels(BATCH, 3, SIZE, SIZE),)
    wrapped = declare(SegmentationLogits(model), pixels_spec("pixel_values", BATCH, 3, SIZE, SIZE))
    return trained_like_head(wrapped, example, "model.decode_head.classifier"), example


def mask2former():
    """Mask2FormerForUniversalSegmentation on transformers' Swin backbone (4 stages, windows
    of 4 — the 64x64 image gives 16x16..2x2 maps), its pixel decoder with multi-scale
    deformable attention (``grid_sample``) and a masked-attention transformer decoder:
    hidden 32, 2 encoder and 3 decoder layers (one round over the 3 scales), 10 queries.
    ``use_auxiliary_loss`` stays True as in the released configs: transformers 5.24's
    forward reads the per-layer decoder states that only it keeps (False raises there)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, encoder_layers=2, decoder_layers=3, num_attention_heads=4,
                               dim_feedforward=64, num_queries=10, num_labels=CLASSES)
    model = build(Mask2FormerForUniversalSegmentation, config)
    example = (pixels(BATCH, 3, SIZE, SIZE),)
    wrapped = declare(QueryMasks(model), pixels_spec("pixel_values", BATCH, 3, SIZE, SIZE))
    return trained_like_head(wrapped, example, "model.class_predictor"), example
