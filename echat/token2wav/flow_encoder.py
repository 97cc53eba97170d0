"""The CosyVoice-300M-25Hz flow's token encoder: a pre-LN transformer with ESPnet relative positions.

Design choices (facts from ``ASLP-lab/OSUM@f2bcfac:OSUM-EChat/tts/cosyvoice/transformer/``, read only;
numbers from ``shared/reference/cosyvoice_300m_25hz_hparams.md`` §2.1):
- Parameter names and registration order are the reference's, so ``flow.pt``'s ``encoder.*`` keys load
  strictly: ``embed.out.{0,1}`` (Linear, LayerNorm eps 1e-5), ``after_norm`` (eps 1e-5) before
  ``encoders.{i}``; a block holds ``self_attn``, ``feed_forward.w_{1,2}``, ``norm_ff``, ``norm_mha`` (LayerNorm
  eps 1e-12, ``encoder_layer.py``); the attention's own ``pos_bias_u``/``pos_bias_v`` (H, d_k) come before
  ``linear_{q,k,v,out}`` (with bias) and ``linear_pos`` (no bias) in state-dict order.
- The conformer of the recipe runs without its convolution module and without the macaron FFN, so a block
  is attention then a swish (SiLU) FFN, each pre-normed with a residual (``encoder_layer.py``).
- Positions are ESPnet's "rel_pos_espnet" (``embedding.py::EspnetRelPositionalEncoding``): the input is
  scaled by sqrt(d_model), and the relative table holds positions T-1 … -(T-1) (sin on even, cos on odd
  channels). We compute it for the length at hand instead of keeping a 5000-row table: the values are the same.
- Attention scores are ``(q + u)·kᵀ + rel_shift((q + v)·pᵀ)``, over sqrt(d_k) (``attention.py``). The shift is
  a gather (query i, key j reads relative position i - j), and the sum runs in
  ``F.scaled_dot_product_attention`` with the position term as its additive mask.
- Padded keys are masked with a boolean key-padding mask; the reference zeroes the attention weights of
  padded keys the same way. Inference uses batch 1 without padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FlowEncoder", "RelPositionAttention", "relative_positions", "relative_shift"]

ENCODER_NORM_EPS = 1e-5  # embed.out.1 and after_norm
BLOCK_NORM_EPS = 1e-12  # norm_mha and norm_ff inside a block


def relative_positions(length: int, d_model: int, device=None, dtype=torch.float32) -> Tensor:
    """Sinusoids of relative positions ``length-1 … -(length-1)``: ``(1, 2*length - 1, d_model)``."""
    position = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)[:, None]  # (2T-1, 1)
    inverse_wavelength = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / d_model)
    )  # (d_model / 2,)
    table = torch.zeros(2 * length - 1, d_model, device=device)
    table[:, 0::2] = torch.sin(position * inverse_wavelength)
    table[:, 1::2] = torch.cos(position * inverse_wavelength)
    return table[None].to(dtype)


def relative_shift(scores: Tensor) -> Tensor:
    """``(B, H, T, 2T-1)`` scores over relative positions T-1 … -(T-1) -> ``(B, H, T, T)``: [i, j] at i - j."""
    length = scores.shape[2]
    query = torch.arange(length, device=scores.device)[:, None]
    key = torch.arange(length, device=scores.device)[None, :]
    index = (length - 1 - query + key).expand(*scores.shape[:2], length, length)  # column of position i - j
    return scores.gather(-1, index)


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (ESPnet layout)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, d_model // n_heads, dropout
        self.pos_bias_u = nn.Parameter(torch.empty(n_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(n_heads, self.head_dim))
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def heads(self, x: Tensor) -> Tensor:
        """``(B, T, D)`` -> ``(B, H, T, d_k)``."""
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, pos_emb: Tensor, key_mask: Tensor) -> Tensor:
        """``x`` (B, T, D), ``pos_emb`` (1, 2T-1, D), ``key_mask`` (B, T) True where valid -> (B, T, D)."""
        q, k, v = self.heads(self.linear_q(x)), self.heads(self.linear_k(x)), self.heads(self.linear_v(x))
        p = self.heads(self.linear_pos(pos_emb))  # (1, H, 2T-1, d_k)
        position_scores = relative_shift((q + self.pos_bias_v[:, None]) @ p.transpose(-2, -1))  # (B, H, T, T)
        bias = (position_scores / math.sqrt(self.head_dim)).masked_fill(~key_mask[:, None, None, :], float("-inf"))
        context = F.scaled_dot_product_attention(
            q + self.pos_bias_u[:, None], k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, d_k)
        return self.linear_out(context.transpose(1, 2).reshape(x.shape))


class PositionwiseFeedForward(nn.Module):
    """``w_2(dropout(swish(w_1 x)))``: (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, hidden)
        self.w_2 = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(F.silu(self.w_1(x))))


class EncoderBlock(nn.Module):
    """Pre-LN block: ``x + attn(norm_mha(x))``, then ``x + ffn(norm_ff(x))``."""

    def __init__(self, d_model: int, n_heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(d_model, n_heads, dropout)
        self.feed_forward = PositionwiseFeedForward(d_model, hidden, dropout)
        self.norm_ff = nn.LayerNorm(d_model, eps=BLOCK_NORM_EPS)
        self.norm_mha = nn.LayerNorm(d_model, eps=BLOCK_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos_emb: Tensor, key_mask: Tensor) -> Tensor:
        """``x`` (B, T, D) -> (B, T, D)."""
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos_emb, key_mask))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))


class LinearInput(nn.Module):
    """The 'linear' input layer: ``out`` = Linear, LayerNorm, Dropout; then the x·sqrt(D) position scaling."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model, eps=ENCODER_NORM_EPS),
                                 nn.Dropout(dropout))
        self.position_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (B, T, D) -> scaled input (B, T, D) and relative positions (1, 2T-1, D)."""
        x = self.out(x) * math.sqrt(x.shape[-1])
        pos_emb = relative_positions(x.shape[1], x.shape[-1], device=x.device, dtype=x.dtype)
        return self.position_dropout(x), self.position_dropout(pos_emb)


class FlowEncoder(nn.Module):
    """Token embeddings ``(B, T, D)`` -> encoded ``(B, T, D)``; ``after_norm`` on the last block's output."""

    def __init__(self, d_model: int, n_heads: int, hidden: int, n_blocks: int, dropout: float) -> None:
        super().__init__()
        self.embed = LinearInput(d_model, dropout)
        self.after_norm = nn.LayerNorm(d_model, eps=ENCODER_NORM_EPS)
        self.encoders = nn.ModuleList(EncoderBlock(d_model, n_heads, hidden, dropout) for _ in range(n_blocks))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, D), ``key_mask`` (B, T) True where valid (default: all) -> (B, T, D)."""
        if key_mask is None:
            key_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        x, pos_emb = self.embed(x)
        for block in self.encoders:
            x = block(x, pos_emb, key_mask)
        return self.after_norm(x)
