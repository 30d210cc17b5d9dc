"""The corpus: real architectures every release is held to (issue #17).

Each entry is a model family built offline by its own code, the Hugging Face
``transformers`` model class from its config object, with random weights
(``torch.manual_seed(0)`` before building) and a small but unmodified config: sizes shrunk
(hidden size, layers, heads, image size, vocabulary), never the architecture. A factory
returns ``(module, example_args)``: the module in eval mode, its ``forward`` taking plain
tensors and returning a tensor or a tuple of tensors, its inputs declared with their real
ranges in ``example_input_specs`` (token ids within the vocabulary, 0/1 masks, normalised
pixels, audio in [-1, 1]); see ``_common``.

On the command line an entry is ``backendiff.models.corpus.MODULE:FACTORY``, e.g.
``backendiff compare backendiff.models.corpus.text_encoders:bert -b ort``;
``corpus-sweep.toml`` here sweeps all of them (``make corpus``). Needs ``transformers``
(the ``hf`` extra).
"""
from __future__ import annotations

from dataclasses import dataclass

PACKAGE = __name__


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str        # encoder text, decoder text, encoder-decoder, vision transformer, CNN, ...
    factory: str       # MODULE:FACTORY in this package

    @property
    def target(self) -> str:
        """What ``backendiff compare`` and sweep files take: ``package.module:factory``."""
        return f"{PACKAGE}.{self.factory}"

    def build(self):
        """``(module, example_args)`` from the factory."""
        import importlib

        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(f"{PACKAGE}.{module}"), attr)()


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture("bert", "encoder text", "text_encoders:bert"),
        Architecture("roberta", "encoder text", "text_encoders:roberta"),
        Architecture("distilbert", "encoder text", "text_encoders:distilbert"),
        Architecture("albert", "encoder text", "text_encoders:albert"),
        Architecture("gpt2", "decoder text", "text_decoders:gpt2"),
        Architecture("gpt2-kv", "decoder text", "text_decoders:gpt2_kv"),
        Architecture("llama", "decoder text", "text_decoders:llama"),
        Architecture("t5", "encoder-decoder", "seq2seq:t5"),
        Architecture("bart", "encoder-decoder", "seq2seq:bart"),
        Architecture("vit", "vision transformer", "vision_transformers:vit"),
        Architecture("deit", "vision transformer", "vision_transformers:deit"),
        Architecture("beit", "vision transformer", "vision_transformers:beit"),
        Architecture("swin", "vision transformer", "vision_transformers:swin"),
        Architecture("dinov2", "vision transformer", "vision_transformers:dinov2"),
        Architecture("resnet", "CNN", "cnns:resnet"),
        Architecture("convnext", "CNN", "cnns:convnext"),
        Architecture("mobilenet-v2", "CNN", "cnns:mobilenet_v2"),
        Architecture("efficientnet", "CNN", "cnns:efficientnet"),
        Architecture("mobilevit", "CNN", "cnns:mobilevit"),
        Architecture("detr", "detection", "detection:detr"),
        Architecture("yolos", "detection", "detection:yolos"),
        Architecture("segformer", "segmentation", "segmentation:segformer"),
        Architecture("mask2former", "segmentation", "segmentation:mask2former"),
        Architecture("wav2vec2", "speech", "speech:wav2vec2"),
        Architecture("whisper-encoder", "speech", "speech:whisper_encoder"),
        Architecture("clip", "multimodal", "multimodal:clip"),
    ]
}
