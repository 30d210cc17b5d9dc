"""Encoder text models (BERT and its descendants), as ``transformers`` builds them.

Every config keeps its architecture (post-norm blocks, learned absolute positions, GELU,
the pooler where the family has one) and shrinks only its sizes: a 1024-token vocabulary,
hidden size 64 in 2 layers of 4 heads with the family's 4x feed-forward, 64 positions; the
inputs are 2 sequences of 16 tokens, the second one padded (the mask's 0s are exercised).
"""
from __future__ import annotations

import torch
from torch import nn

from ._common import build, declare, ids_spec, mask_spec, padding_mask, token_ids

BATCH, LENGTH, VOCAB = 2, 16, 1024
SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
             max_position_embeddings=64)


def _padded_ids(pad_id: int, *, low: int = 0):
    """Token ids (never ``pad_id`` inside a sequence) with ``pad_id`` where the mask is 0, as
    a tokenizer pads."""
    ids, mask = token_ids(BATCH, LENGTH, VOCAB, low=low), padding_mask(BATCH, LENGTH)
    ids = torch.where(ids == pad_id, torch.full_like(ids, pad_id + 1), ids)
    return torch.where(mask.bool(), ids, torch.full_like(ids, pad_id)), mask


class WithTokenTypes(nn.Module):
    """``(input_ids, attention_mask, token_type_ids)`` -> (last hidden state, pooled output)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state, out.pooler_output


class HiddenStates(nn.Module):
    """``(input_ids, attention_mask)`` -> the last hidden state (and the pooled output where
    the family has a pooler)."""

    def __init__(self, model: nn.Module, pooled: bool):
        super().__init__()
        self.model = model
        self.pooled = pooled

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooled:
            return out.last_hidden_state, out.pooler_output
        return out.last_hidden_state


def _segments() -> torch.Tensor:
    """Token types: a single sentence in the first row, a sentence pair (0s then 1s) in the
    second."""
    types = torch.zeros(BATCH, LENGTH, dtype=torch.int64)
    types[1, LENGTH // 2:] = 1
    return types


def bert():
    """BertModel (bert-base's architecture: post-norm, learned positions, token types, tanh
    pooler)."""
    from transformers import BertConfig, BertModel

    model = build(BertModel, BertConfig(vocab_size=VOCAB, type_vocab_size=2, **SIZES))
    ids, mask = _padded_ids(model.config.pad_token_id)
    wrapped = declare(WithTokenTypes(model), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH), ids_spec("token_type_ids", BATCH, LENGTH, 2))
    return wrapped, (ids, mask, _segments())


def roberta():
    """RobertaModel: BERT with positions counted from the padding index (the position ids
    are computed from ``input_ids``), one token type, a byte-level vocabulary (shrunk)."""
    from transformers import RobertaConfig, RobertaModel

    # 64 positions after the padding offset, as roberta-base's 514 = 512 + 2
    config = RobertaConfig(vocab_size=VOCAB, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                           **{**SIZES, "max_position_embeddings": 66})
    model = build(RobertaModel, config)
    ids, mask = _padded_ids(config.pad_token_id)
    ids[:, 0] = config.bos_token_id
    wrapped = declare(HiddenStates(model, pooled=True), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH))
    return wrapped, (ids, mask)


def distilbert():
    """DistilBertModel: BERT at half the depth, no token types, no pooler (sizes named dim /
    n_layers / n_heads / hidden_dim in its config)."""
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=256,
                              max_position_embeddings=64)
    model = build(DistilBertModel, config)
    ids, mask = _padded_ids(config.pad_token_id)
    wrapped = declare(HiddenStates(model, pooled=False), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH))
    return wrapped, (ids, mask)


def albert():
    """AlbertModel: a factorised embedding (32 wide, projected to the hidden 64) and one layer's
    weights shared by both layers (``num_hidden_groups=1``), token types, pooler; gelu_new."""
    from transformers import AlbertConfig, AlbertModel

    config = AlbertConfig(vocab_size=VOCAB, embedding_size=32, num_hidden_groups=1, inner_group_num=1,
                          type_vocab_size=2, **SIZES)
    model = build(AlbertModel, config)
    ids, mask = _padded_ids(config.pad_token_id)
    wrapped = declare(WithTokenTypes(model), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH), ids_spec("token_type_ids", BATCH, LENGTH, 2))
    return wrapped, (ids, mask, _segments())
