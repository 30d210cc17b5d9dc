"""Multimodal: CLIP (a text and an image tower, contrastive logits), as ``transformers``
builds it.

clip-vit-base-patch32's architecture (causal text transformer pooled at the end-of-text
token, pre-norm ViT with quick-GELU, projections and the learned temperature) at hidden size
64 in 2 layers of 4 heads per tower, projection 32, a 1024-token vocabulary, 16-token texts
and 32x32 images in 4x4 patches. The batch is 2 captions x 2 images.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import build, declare, ids_spec, mask_spec, padding_mask, pixels, pixels_spec, token_ids

BATCH, LENGTH, VOCAB, SIZE = 2, 16, 1024, 32
BOS, EOS = VOCAB - 2, VOCAB - 1        # CLIP's start/end-of-text are the last two ids of its vocabulary


class ContrastiveLogits(nn.Module):
    """``(input_ids, attention_mask, pixel_values)`` -> (logits per image ``(images, texts)``,
    logits per text ``(texts, images)``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)
        return out.logits_per_image, out.logits_per_text


def _captions() -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenised like CLIP's tokenizer: start-of-text, words, end-of-text, then padding (the
    end-of-text id, as openai/clip pads) under a 0 mask."""
    mask = padding_mask(BATCH, LENGTH)
    ids = token_ids(BATCH, LENGTH, BOS)                     # words: never the two special ids
    ids[:, 0] = BOS
    for row in range(BATCH):
        end = int(mask[row].sum()) - 1
        ids[row, end:] = EOS
    return ids, mask


def clip():
    """CLIPModel with the end-of-text token's id set (``eos_token_id``), so the text tower
    pools there as CLIP does."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=LENGTH, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    vision = dict(image_size=SIZE, patch_size=4, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4)
    model = build(CLIPModel, CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    ids, mask = _captions()
    wrapped = declare(ContrastiveLogits(model), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH), pixels_spec("pixel_values", BATCH, 3, SIZE, SIZE))
    return wrapped, (ids, mask, pixels(BATCH, 3, SIZE, SIZE))
