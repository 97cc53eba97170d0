"""Adapter from encoder frames (50 Hz) to LLM input embeddings (12.5 Hz), as in the reference.

Design choices:
- Three submodules: ``downsample`` (the reference's ``down_sample_2``), ``transformer``
  (``speech_transformer``) and ``proj`` (``speech_llama_proj``). Below those prefixes every name is
  the reference's, so :mod:`echat.models.reference_keys` only renames prefixes.
- ``downsample.conv`` is one ``nn.Sequential`` of [left pad, Conv1d, GELU] per stride, which puts the
  three convs at indices 1, 4 and 7 exactly like the reference's ``down_sample_2.conv.{1,4,7}``.
- The convs are causal (kernel 3, two frames of left padding): output frame ``t`` reads only inputs up
  to ``stride * t``, so right padding never reaches a valid output and nothing is masked there;
  valid lengths are ``ceil(L / stride)`` per stride.
- The transformer reuses the encoder's :class:`TransformerBlock` with key bias and ReLU, behind WeNet's
  ``linear`` input layer (Linear → LayerNorm(eps 1e-5) → dropout) and WeNet's interleaved sinusoid
  table, applied as ``x * sqrt(d) + pe``.
- The reference's unused ``ln_speech`` LayerNorm is not a module here; the key map exports it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echat.config import AdapterConfig
from echat.models.encoder import TransformerBlock, ceil_div, check_lengths, valid_mask

__all__ = [
    "TOKEN_OUTPUTS",
    "Adapter",
    "AdapterOutput",
    "AdapterTransformer",
    "CausalConvDownsampler",
    "ctc_path",
    "pack_tokens",
    "wenet_sinusoids",
]

TOKEN_OUTPUTS = ("token_mix", "token_pack")  # adapter outputs made of the LLM's own token embeddings


class AdapterOutput(NamedTuple):
    """LLM-width speech embeddings (12.5 Hz) and the number of valid ones per item."""

    embeddings: Tensor  # (B, T'', output_dim); padded rows are zero
    lengths: Tensor  # (B,) int64
    token_logits: Tensor | None = None  # (B, T'', V + 1) with a token output: text tokens, then the blank


def wenet_sinusoids(length: int, channels: int) -> Tensor:
    """WeNet's positional table ``(length, channels)``: sin on even channels, cos on odd ones."""
    if channels % 2:
        raise ValueError(f"WeNet sinusoids need an even channel count, got {channels}")
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    div_term = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * -(math.log(10_000.0) / channels))
    angles = position * div_term  # (L, D/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(length, channels)  # (L, D)


class CausalConvDownsampler(nn.Module):
    """[ConstantPad1d((2, 0)) → Conv1d(k3, stride s) → GELU] per stride (the reference ``down_sample_2``)."""

    def __init__(self, input_dim: int, d_model: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        if not strides:
            raise ValueError("the adapter needs at least one conv stride")
        self.strides = tuple(strides)
        layers: list[nn.Module] = []
        for index, stride in enumerate(self.strides):
            in_channels = input_dim if index == 0 else d_model
            conv = nn.Conv1d(in_channels, d_model, kernel_size=3, stride=stride)
            layers += [nn.ConstantPad1d((2, 0), 0.0), conv, nn.GELU()]
        self.conv = nn.Sequential(*layers)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid output frames: ``ceil(L / s)`` applied for each stride."""
        for stride in self.strides:
            lengths = ceil_div(lengths, stride)
        return lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (B, T, input_dim) → (B, T_out, d_model) and the downsampled lengths."""
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T_out, D)
        return y, self.output_lengths(lengths)


class ScaledPositionalEncoding(nn.Module):
    """``dropout(x * sqrt(d) + pe)`` with WeNet sinusoids in the persistent buffer ``pe`` (1, P, D)."""

    def __init__(self, d_model: int, max_positions: int, dropout: float) -> None:
        super().__init__()
        self.xscale = math.sqrt(d_model)
        self.register_buffer("pe", wenet_sinusoids(max_positions, d_model).unsqueeze(0))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x * self.xscale + self.pe[:, : x.size(1)])  # (B, T, D)


class LinearEmbedding(nn.Module):
    """WeNet ``linear`` input layer: ``out`` = Linear → LayerNorm → Dropout, then ``pos_enc``."""

    def __init__(self, input_dim: int, d_model: int, max_positions: int, dropout: float) -> None:
        super().__init__()
        self.out = nn.Sequential(
            nn.Linear(input_dim, d_model), nn.LayerNorm(d_model, eps=1e-5), nn.Dropout(dropout)
        )
        self.pos_enc = ScaledPositionalEncoding(d_model, max_positions, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.pos_enc(self.out(x))  # (B, T, D)


class AdapterTransformer(nn.Module):
    """Pre-LN ReLU transformer with biased q/k/v (the reference's ``speech_transformer``)."""

    def __init__(self, cfg: AdapterConfig, input_dim: int) -> None:
        super().__init__()
        self.embed = LinearEmbedding(input_dim, cfg.d_model, cfg.max_positions, cfg.dropout)
        self.after_norm = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.encoders = nn.ModuleList(
            TransformerBlock(
                cfg.d_model, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout,
                key_bias=True, activation=nn.ReLU(),
            )
            for _ in range(cfg.n_layers)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (B, T, input_dim), ``mask`` (B, T) bool key-padding mask → (B, T, D)."""
        x = self.embed(x)  # (B, T, D)
        for block in self.encoders:
            x = block(x, mask)  # (B, T, D)
        return self.after_norm(x)  # (B, T, D)


class Adapter(nn.Module):
    """Encoder frames → causal conv downsampling → transformer → projection to the LLM width."""

    def __init__(self, cfg: AdapterConfig, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.max_positions = cfg.max_positions
        self.downsample = CausalConvDownsampler(input_dim, cfg.d_model, cfg.conv_strides)
        self.transformer = AdapterTransformer(cfg, cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, output_dim)
        self.output_rms = cfg.output_rms
        self.output = cfg.output
        if cfg.output in TOKEN_OUTPUTS:
            self.blank = nn.Parameter(torch.zeros(output_dim))  # what the LLM reads where no token is spoken
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # softmax sharpness (learned)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid adapter outputs for ``lengths`` encoder frames."""
        return self.downsample.output_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor, token_table: Tensor | None = None) -> AdapterOutput:
        """``x`` (B, T, input_dim), ``lengths`` (B,) → ``AdapterOutput`` (B, T'', output_dim).
        ``token_table`` (V, output_dim): the LLM's input embeddings, needed by output "token_mix"."""
        if x.dim() != 3 or x.size(-1) != self.input_dim:
            raise ValueError(f"Adapter expects (B, T, {self.input_dim}) frames, got {tuple(x.shape)}")
        batch, frames, _ = x.shape
        out_frames = frames
        for stride in self.downsample.strides:
            out_frames = math.ceil(out_frames / stride)
        if out_frames > self.max_positions:
            raise ValueError(
                f"Adapter: {frames} encoder frames give {out_frames} adapter frames, more than "
                f"max_positions={self.max_positions}; split the audio or raise AdapterConfig.max_positions"
            )
        check_lengths(lengths, batch, frames, "Adapter")
        y, out_lengths = self.downsample(x, lengths)  # (B, T'', D)
        mask = valid_mask(out_lengths, y.size(1))  # (B, T'')
        y = self.proj(self.transformer(y, mask))  # (B, T'', output_dim)
        logits = None
        if self.output == "clip_norm":
            y = _normalise_clips(y, mask)
        elif self.output in TOKEN_OUTPUTS:
            y, logits = self._token_mix(y, token_table)
            if self.output == "token_pack":
                y = pack_tokens(y, logits.argmax(-1), out_lengths, blank=logits.shape[-1] - 1)
        if self.output_rms:
            y = y * (self.output_rms * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-12))
        return AdapterOutput(y.masked_fill(~mask.unsqueeze(-1), 0.0), out_lengths, logits)

    def _token_mix(self, y: Tensor, token_table: Tensor | None) -> tuple[Tensor, Tensor]:
        """Projected frames (B, T'', H) -> mixtures of [token_table; blank] (B, T'', H) and their logits
        (B, T'', V + 1): scaled cosine similarity between each frame and each embedding."""
        if token_table is None:
            raise ValueError("an adapter with output 'token_mix' needs the LLM's token embedding table")
        table = torch.cat([token_table, self.blank[None]], dim=0)  # (V + 1, H)
        cosine = F.normalize(y, dim=-1) @ F.normalize(table, dim=-1).T  # (B, T'', V + 1)
        logits = cosine * self.log_scale.exp()
        if self.output == "token_pack":  # the blank is scored, but the LLM reads it as nothing (zeros)
            table = torch.cat([token_table, torch.zeros_like(self.blank)[None]], dim=0)
        return logits.softmax(-1) @ table, logits


def ctc_path(ids: list[int], blank: int) -> list[int]:
    """Greedy CTC output of one clip's frame-wise ids: repeats merged, blanks dropped."""
    return [i for t, i in enumerate(ids) if i != blank and (t == 0 or i != ids[t - 1])]


def pack_tokens(frames: Tensor, ids: Tensor, lengths: Tensor, blank: int) -> Tensor:
    """Greedy CTC collapse, length-preserving: the frames (B, T, H) where ``ids`` (B, T) leaves the blank
    or changes token move to the front of their clip, in order; every other frame becomes zero.

    Why: the LLM then reads the spoken tokens as consecutive positions, as it reads text, instead of
    tokens scattered between blanks; the number of frames (and so the sequence layout) does not change.
    The order is decided by the greedy ids; gradients flow through the kept frames."""
    valid = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]  # (B, T)
    previous = F.pad(ids[:, :-1], (1, 0), value=blank)
    keep = valid & (ids != blank) & (ids != previous)  # (B, T)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept frames first, in time order
    packed = frames.gather(1, order.unsqueeze(-1).expand_as(frames))  # (B, T, H)
    in_front = torch.arange(ids.shape[1], device=ids.device)[None] < keep.sum(1, keepdim=True)  # (B, T)
    return packed * in_front.unsqueeze(-1).to(frames.dtype)


def _normalise_clips(y: Tensor, mask: Tensor) -> Tensor:
    """Remove each clip's mean frame and scale the clip to unit RMS. y: (B, T, H), mask: (B, T) valid."""
    valid = mask.unsqueeze(-1).to(y.dtype)  # (B, T, 1)
    count = valid.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    centred = (y - (y * valid).sum(1, keepdim=True) / count) * valid
    rms = (centred.pow(2).sum((1, 2), keepdim=True) / (count * y.shape[-1])).sqrt()  # (B, 1, 1)
    return centred / (rms + 1e-6)
