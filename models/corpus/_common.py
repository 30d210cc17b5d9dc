"""What every corpus factory shares: seeded building, the declared inputs, example data.

A factory returns ``(module, example_args)``: ``module`` is an ``nn.Module`` in eval mode
whose ``forward`` takes plain tensors (named as the model names them) and returns a tensor or
a tuple of tensors, with ``example_input_specs``: one ``InputSpec`` per input, carrying the
range the model is given deployed (token ids within the vocabulary, 0/1 masks, audio in
[-1, 1]; no range for pixels, which are drawn N(0, 1) as normalised images are). backendiff
takes the first sample from ``example_args`` and draws any further sample and the int8
calibration data within those ranges (``loading._call_factory``, ``inputs.example_specs``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from backendiff.inputs import InputSpec

SEED = 0


def build(model_cls, config) -> nn.Module:
    """``model_cls(config)`` with random weights, seeded so that every run builds the same
    model, in eval mode (dropout off)."""
    torch.manual_seed(SEED)
    return model_cls(config).eval()


def trained_like_head(module: nn.Module, example: tuple, *heads: str) -> nn.Module:
    """Re-draw the output heads ``heads`` (submodule paths of ``module``: every Linear / Conv2d
    inside) as a trained head is scaled: N(0, 1/fan_in) weights, zero bias, the first layer
    divided by the RMS of what it reads on ``example``, so that the logits (or the boxes'
    pre-sigmoid values) are O(1). At transformers' init (std 0.02) over random features a
    classifier's logits stay within a few hundredths of zero, inside the int8 (0.1) and fp16
    (0.01) tolerances, and backendiff rightly calls such a comparison vacuous; boxes would all
    be sigmoid(~0) = 0.5. Seeded by ``build``'s ``manual_seed``."""
    firsts, seen = [], {}
    with torch.no_grad():
        for path in heads:
            layers = [m for m in module.get_submodule(path).modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            for m in layers:
                m.weight.normal_(0.0, m.weight[0].numel() ** -0.5)
                if m.bias is not None:
                    m.bias.zero_()
            firsts.append(layers[0])

        def record(layer, args):
            seen.setdefault(layer, args[0].pow(2).mean().sqrt())

        hooks = [m.register_forward_pre_hook(record) for m in firsts]
        module.eval()(*example)
        for h in hooks:
            h.remove()
        for m in firsts:
            m.weight.div_(seen[m])
    return module


def declare(module: nn.Module, *specs: InputSpec) -> nn.Module:
    """``module`` in eval mode with its inputs declared (the order of its ``forward``)."""
    module.example_input_specs = tuple(specs)
    return module.eval()


def generator(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def token_ids(batch: int, length: int, vocab: int, *, low: int = 0, stream: int = 1) -> torch.Tensor:
    """Token ids uniform in [low, vocab): int64 ``(batch, length)`` (``stream``: another seeded
    draw, for a second sequence of the same model)."""
    return torch.randint(low, vocab, (batch, length), generator=generator(stream), dtype=torch.int64)


def ids_spec(name: str, batch: int, length: int, vocab: int) -> InputSpec:
    return InputSpec(name, (batch, length), "int64", 0, vocab)


def padding_mask(batch: int, length: int) -> torch.Tensor:
    """A tokenizer's attention mask: 1 over each sequence, 0 over its right padding; the
    first row is full, the others are shorter (the padded path is exercised)."""
    mask = torch.ones(batch, length, dtype=torch.int64)
    for row in range(1, batch):
        mask[row, length - 2 * row:] = 0
    return mask


def mask_spec(name: str, batch: int, length: int) -> InputSpec:
    return InputSpec(name, (batch, length), "int64", 0, 2)


def pixels(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """An image as the models' processors give it: normalised per channel, N(0, 1)-like."""
    return torch.randn(batch, channels, height, width, generator=generator(2))


def pixels_spec(name: str, batch: int, channels: int, height: int, width: int) -> InputSpec:
    return InputSpec(name, (batch, channels, height, width), "float32")


def waveform(batch: int, samples: int, rate: int = 16000) -> torch.Tensor:
    """Raw audio in [-1, 1]: two tones and a little noise at ``rate`` Hz."""
    t = torch.arange(samples, dtype=torch.float32) / rate
    tones = 0.5 * torch.sin(2 * math.pi * 220.0 * t) + 0.3 * torch.sin(2 * math.pi * 1330.0 * t)
    noise = 0.1 * torch.randn(batch, samples, generator=generator(3))
    return (tones + noise).clamp(-1.0, 1.0)


def module_size(module: nn.Module) -> int:
    """Parameters of a module (for the corpus's table)."""
    return sum(p.numel() for p in module.parameters())
