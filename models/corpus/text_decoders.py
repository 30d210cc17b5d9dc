"""Decoder (causal) text models: GPT-2 with and without its KV cache, and Llama.

Sizes shrunk, architecture kept: a 1024-token vocabulary, hidden size 64 in 2 layers of 4
heads, 64 positions. GPT-2 keeps its pre-norm blocks, learned positions, gelu_new and tied
LM head; Llama its RMSNorm, rotary positions, SwiGLU and grouped-query attention (2 KV
heads for 4 query heads, as Llama 2 70B and Llama 3 share KV heads).
"""
from __future__ import annotations

import torch
from torch import nn

from backendiff.inputs import InputSpec

from ._common import build, declare, ids_spec, mask_spec, padding_mask, token_ids

BATCH, LENGTH, VOCAB = 2, 16, 1024
PAST = 15          # the decode step: 15 tokens already in the cache, one new one


def _gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                      bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)


class CausalLogits(nn.Module):
    """``(input_ids, attention_mask)`` -> next-token logits at every position, the whole
    sequence at once without a cache (``use_cache=False``): a prefill or a scoring pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class DecodeStep(nn.Module):
    """One step of cached generation with tensors in and out: ``(input_ids, past_keys,
    past_values)`` -> ``(logits, keys, values)``.

    The cache travels as two stacked tensors, ``(layers, batch, heads, past, head_dim)``; the
    step rebuilds the model's ``DynamicCache`` from them, runs the new token(s) with
    ``use_cache=True`` and returns the grown cache, ``past + new`` long, stacked the same way.
    A fixed past length keeps every shape static (the exported program is one decode step at
    that position), and the returned cache is compared output by output like the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, past_keys, past_values):
        out = self.model(input_ids=input_ids, use_cache=True, **{CACHE: holding(past_keys, past_values)})
        keys, values = stacked(out[CACHE])
        return out.logits, keys, values


def holding(past_keys: torch.Tensor, past_values: torch.Tensor):
    """A ``DynamicCache`` that holds the given past, layer by layer.

    Not ``DynamicCache(ddp_cache_data=...)``: that starts each layer from ``torch.tensor([])``
    and concatenates the past onto it, a 1-D empty + 4-D ``cat`` that PyTorch accepts but
    that, exported, OpenVINO ("Axis -2 out of the tensor rank range [-1, 0]" converting
    aten.cat) and TVM Relax ("Concat expects all input tensors to have same ndim") reject.
    A deployed decoder receives its past as an input, with no such concatenation."""
    from transformers import DynamicCache

    cache = DynamicCache(ddp_cache_data=[(None, None)] * past_keys.shape[0])
    for layer, keys, values in zip(cache.layers, past_keys, past_values):
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    return cache


def _cache_argument() -> str:
    """The cache's name in ``forward`` and in its output: ``cache`` since transformers 5.x
    (which warns on the older ``past_key_values``), ``past_key_values`` before."""
    import inspect

    from transformers import GPT2LMHeadModel

    return "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"


CACHE = _cache_argument()


def stacked(cache) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``DynamicCache`` as two tensors ``(layers, batch, heads, length, head_dim)``."""
    keys = torch.stack([layer.keys for layer in cache.layers])
    values = torch.stack([layer.values for layer in cache.layers])
    return keys, values


def gpt2():
    """GPT2LMHeadModel over a padded batch, no KV cache: logits ``(2, 16, 1024)``."""
    from transformers import GPT2LMHeadModel

    model = build(GPT2LMHeadModel, _gpt2_config())
    wrapped = declare(CausalLogits(model), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH))
    return wrapped, (token_ids(BATCH, LENGTH, VOCAB), padding_mask(BATCH, LENGTH))


def gpt2_kv():
    """GPT2LMHeadModel decoding one token after a 15-token prompt with ``use_cache=True``.

    The example's past is the real cache of that prompt (the model run on it), so keys and
    values have the scale the model gives them; further samples draw them within its range."""
    from transformers import GPT2LMHeadModel

    model = build(GPT2LMHeadModel, _gpt2_config())
    config = model.config
    prompt = token_ids(BATCH, PAST + 1, VOCAB)
    with torch.no_grad():
        keys, values = stacked(model(input_ids=prompt[:, :PAST], use_cache=True)[CACHE])
    shape = (config.n_layer, BATCH, config.n_head, PAST, config.n_embd // config.n_head)
    assert tuple(keys.shape) == shape, (keys.shape, shape)
    wrapped = declare(DecodeStep(model), ids_spec("input_ids", BATCH, 1, VOCAB),
                      InputSpec("past_keys", shape, "float32"), InputSpec("past_values", shape, "float32"))
    return wrapped, (prompt[:, PAST:], keys, values)


def llama():
    """LlamaForCausalLM over a padded batch, no KV cache: RMSNorm, RoPE, SwiGLU (intermediate
    176, Llama's 8/3 x hidden rounded up), grouped-query attention, untied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = build(LlamaForCausalLM, config)
    wrapped = declare(CausalLogits(model), ids_spec("input_ids", BATCH, LENGTH, VOCAB),
                      mask_spec("attention_mask", BATCH, LENGTH))
    return wrapped, (token_ids(BATCH, LENGTH, VOCAB), padding_mask(BATCH, LENGTH))
