"""Speech: wav2vec 2.0 (raw waveform -> CTC logits) and the Whisper encoder (log-mel -> hidden
states), as ``transformers`` builds them.

Sizes shrunk, architecture kept: hidden size 64 in 2 layers of 4 heads with the 4x
feed-forward. Inputs are what each model's feature extractor hands it: wav2vec 2.0 a raw
16 kHz waveform in [-1, 1]; Whisper an 80-bin log-mel spectrogram computed from such a
waveform by ``WhisperFeatureExtractor`` (numpy, no download), scaled as Whisper scales it.
"""
from __future__ import annotations

import torch
from torch import nn

from backendiff.inputs import InputSpec

from ._common import build, declare, waveform

BATCH, RATE = 2, 16000


class CtcLogits(nn.Module):
    """``input_values`` (raw audio) -> CTC logits ``(batch, frames, vocabulary)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values):
        return self.model(input_values=input_values).logits


class EncoderStates(nn.Module):
    """``input_features`` (log-mel) -> the encoder's last hidden state."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_features):
        return self.encoder(input_features=input_features).last_hidden_state


def wav2vec2():
    """Wav2Vec2ForCTC as wav2vec2-base is built: a 7-layer conv feature encoder (kernels 10,3,..,2,
    strides 5,2,..,2: 20 ms frames; GroupNorm on the first layer), a grouped, weight-normed
    convolutional position embedding (kernel 16 of base's 128, 4 groups), post-norm
    transformer, 32-symbol CTC head. 0.5 s of audio: 24 frames."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=256, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=4, feat_extract_norm="group", do_stable_layer_norm=False)
    model = build(Wav2Vec2ForCTC, config)
    samples = RATE // 2
    wrapped = declare(CtcLogits(model), InputSpec("input_values", (BATCH, samples), "float32", -1.0, 1.0))
    return wrapped, (waveform(BATCH, samples, RATE),)


def log_mel(audio: torch.Tensor, seconds: int) -> torch.Tensor:
    """Whisper's input features of ``audio``: 80 mel bins every 10 ms over ``seconds`` (padded),
    log10, clamped to 8 below the maximum, scaled by (x + 4) / 4."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=RATE, hop_length=160, chunk_length=seconds,
                                        n_fft=400)
    features = extractor(list(audio.numpy()), sampling_rate=RATE, return_tensors="np").input_features
    return torch.from_numpy(features).float()


def whisper_encoder():
    """The encoder of WhisperModel (two GELU convs, the second of stride 2, sinusoidal
    positions, pre-norm blocks) as whisper-tiny is built, over a 2-second window instead of
    the 30-second one: ``max_source_positions`` 100, so the model expects 200 mel frames.
    The decoder is built (and shrunk) with it but not run."""
    from transformers import WhisperConfig, WhisperModel

    seconds = 2
    config = WhisperConfig(vocab_size=1024, num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                           encoder_ffn_dim=256, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=256,
                           max_source_positions=50 * seconds, max_target_positions=64, pad_token_id=1023,
                           bos_token_id=1023, eos_token_id=1023, decoder_start_token_id=1022,
                           begin_suppress_tokens=None)
    encoder = build(WhisperModel, config).get_encoder()
    features = log_mel(waveform(BATCH, RATE * seconds, RATE), seconds)
    # no declared range: further samples are drawn within the example's (the mel scale's) range
    wrapped = declare(EncoderStates(encoder), InputSpec("input_features", tuple(features.shape), "float32"))
    return wrapped, (features,)
