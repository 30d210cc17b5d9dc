"""Encoder-decoder text: T5, as ``transformers`` builds it.

t5-small's architecture (RMS-style T5 LayerNorm without bias, relative position buckets
shared by the layers of each stack, ReLU feed-forward, tied embeddings scaled before the
head) at d_model 64, 2 encoder and 2 decoder layers of 4 heads, d_ff 256, a 1024-token
vocabulary; one teacher-forced pass: 2 source sequences of 16 tokens (the second padded)
and 8 target tokens that start with the decoder start token, without a KV cache.
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import build, declare, ids_spec, mask_spec, padding_mask, token_ids

BATCH, LENGTH, TARGET, VOCAB = 2, 16, 8, 1024


class Seq2SeqLogits(nn.Module):
    """``(input_ids, attention_mask, decoder_input_ids)`` -> the decoder's logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                          use_cache=False).logits


def t5():
    """T5ForConditionalGeneration: logits ``(2, 8, 1024)``."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2,
                      num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = build(T5ForConditionalGeneration, config)
    mask = padding_mask(BATCH, LENGTH)
    source = torch.where(mask.bool(), token_ids(BATCH, LENGTH, VOCAB, low=2), torch.zeros_like(mask))
    target = token_ids(BATCH, TARGET, VOCAB, low=2, stream=11)
    target[:, 0] = config.decoder_start_token_id          # shifted right, as in training and generation
    wrapped = declare(Seq2SeqLogits(model), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH), ids_spec("decoder_input_ids", BATCH, TARGET, VOCAB))
    return wrapped, (source, mask, target)


def bart():
    """BartForConditionalGeneration: bart-base's architecture (post-norm encoder and decoder,
    learned positions offset by 2, GELU, tied head with a final-logits bias) at d_model 64,
    2+2 layers of 4 heads, feed-forward 256; the target starts with BART's decoder start
    token (``</s>``), then ``<s>``, as ``shift_tokens_right`` gives it."""
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=64,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                        forced_eos_token_id=2)
    model = build(BartForConditionalGeneration, config)
    mask = padding_mask(BATCH, LENGTH)
    source = torch.where(mask.bool(), token_ids(BATCH, LENGTH, VOCAB, low=3), torch.ones_like(mask))
    source[:, 0] = config.bos_token_id
    for row in range(BATCH):
        source[row, int(mask[row].sum()) - 1] = config.eos_token_id
    target = token_ids(BATCH, TARGET, VOCAB, low=3, stream=11)
    target[:, 0], target[:, 1] = config.decoder_start_token_id, config.bos_token_id
    wrapped = declare(Seq2SeqLogits(model), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH), ids_spec("decoder_input_ids", BATCH, TARGET, VOCAB))
    return wrapped, (source, mask, target)
