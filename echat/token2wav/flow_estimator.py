"""The flow-matching velocity estimator of CosyVoice-300M-25Hz: a 1-D U-Net of ResNet and transformer blocks.

Design choices (facts from ``ASLP-lab/OSUM@f2bcfac``, read only: ``OSUM-EChat/tts/cosyvoice/flow/decoder.py``
(``ConditionalDecoder``) and the Matcha-TTS components it imports,
``OSUM-EChat/tts/third_party/Matcha-TTS/matcha/models/components/{decoder,transformer}.py``; numbers from
``shared/reference/cosyvoice_300m_25hz_hparams.md`` §2.4):
- Names and registration order are the reference's so ``decoder.estimator.*`` loads strictly: ``time_mlp.linear_{1,2}``,
  ``down_blocks.{i}.{0: resnet, 1: transformer blocks, 2: resample}``, ``mid_blocks.{i}.{0,1}``, ``up_blocks`` like the
  down path, ``final_block.block.{0,1}``, ``final_proj``. A resnet is ``mlp.1``, ``block1``, ``block2``, ``res_conv``;
  a transformer block is ``norm1``, ``attn1.to_{q,k,v}`` (no bias), ``attn1.to_out.0``, ``norm3``, ``ff.net.0.proj``,
  ``ff.net.2``. Every level but the last resamples through a module holding ``conv`` (stride-2 Conv1d k3 down,
  ConvTranspose1d k4 s2 up); the last level has a plain Conv1d k3 (key without ``conv.``).
- Input is ``[x; mu; speaker; cond]`` packed on channels (4 × 80 = 320), the speaker vector repeated over time.
- Time: Matcha's sinusoid of ``1000·t`` over ``in_channels`` features (half sin, half cos, frequencies
  ``10000^(-i/(half-1))``), then Linear → SiLU → Linear to ``4 × channels[0]``; each resnet adds
  ``Linear(Mish(t_emb))`` after its first conv block.
- Conv blocks are Conv1d k3 → GroupNorm(8) → Mish, with the mask applied before the conv and after the block.
  GroupNorm's statistics include the (zeroed) padded frames, as in the reference, so in a padded batch a
  valid frame depends on its item's padding; inference runs batch 1 without padding.
- A transformer block is pre-LN self-attention (no cross-attention) and an exact-erf GELU feed-forward (×4),
  each with a residual; attention is ``F.scaled_dot_product_attention`` with a boolean key-padding mask. The
  reference turns the same padding mask into an additive -1e10 bias; with batch 1 (inference) nothing is masked.
- Skips: each down level saves its output before resampling; an up level concatenates the (cropped) upsampled
  signal with the saved skip, so up resnets take 2 × channels. Masks follow the time axis (``mask[..., ::2]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConditionalEstimator", "timestep_features"]

TIME_SCALE = 1000.0  # Matcha's SinusoidalPosEmb scale: t in [0, 1] -> positions in [0, 1000]
GROUPS = 8  # GroupNorm groups in every conv block of the estimator
FF_MULT = 4  # transformer feed-forward width / channels
TIME_EMBED_MULT = 4  # time embedding width / channels[0]


def timestep_features(t: Tensor, dim: int) -> Tensor:
    """Flow times ``t`` (B,) in [0, 1] -> sinusoids ``(B, dim)``: [sin | cos] of ``1000·t·10000^(-i/(dim/2-1))``."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = TIME_SCALE * t.float()[:, None] * frequencies[None]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(t.dtype)


class TimestepEmbedding(nn.Module):
    """``linear_2(silu(linear_1(features)))``: (B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class ConvBlock(nn.Module):
    """Masked Conv1d k3 → GroupNorm → Mish: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim_in, dim_out, 3, padding=1), nn.GroupNorm(GROUPS, dim_out), nn.Mish())

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``mask`` (B, 1, T), 1 where valid."""
        return self.block(x * mask) * mask


class ResnetBlock(nn.Module):
    """Two conv blocks with the time embedding added between them, plus a 1×1 residual projection."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, dim_out))
        self.block1 = ConvBlock(dim_in, dim_out)
        self.block2 = ConvBlock(dim_out, dim_out)
        self.res_conv = nn.Conv1d(dim_in, dim_out, 1)

    def forward(self, x: Tensor, mask: Tensor, time_emb: Tensor) -> Tensor:
        """``x`` (B, C_in, T), ``mask`` (B, 1, T), ``time_emb`` (B, time_dim) -> (B, C_out, T)."""
        h = self.block1(x, mask) + self.mlp(time_emb)[:, :, None]
        return self.block2(h, mask) + self.res_conv(x * mask)


class Attention(nn.Module):
    """Self-attention in the diffusers layout: ``to_q/k/v`` without bias, ``to_out.0`` with bias."""

    def __init__(self, dim: int, n_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """``x`` (B, T, C), ``key_mask`` (B, T) True where valid -> (B, T, C)."""
        batch, length, _ = x.shape

        def heads(y: Tensor) -> Tensor:  # (B, T, H·d) -> (B, H, T, d)
            return y.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x)), attn_mask=key_mask[:, None, None, :],
        )  # (B, H, T, d)
        return self.to_out(context.transpose(1, 2).reshape(batch, length, -1))


class GeluProjection(nn.Module):
    """``gelu(proj(x))`` with the exact (erf) GELU: the diffusers ``GELU`` layer, key ``proj``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """``net`` = GELU projection (×4) → Dropout → Linear: (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(GeluProjection(dim, FF_MULT * dim), nn.Dropout(dropout), nn.Linear(FF_MULT * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """``x + attn1(norm1(x))``, then ``x + ff(norm3(x))``: (B, T, C) -> (B, T, C)."""

    def __init__(self, dim: int, n_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, n_heads, head_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x), key_mask)
        return x + self.ff(self.norm3(x))


class Resample(nn.Module):
    """Holds the ``conv`` that halves (stride-2 Conv1d) or doubles (ConvTranspose1d) the time axis."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class ConditionalEstimator(nn.Module):
    """Velocity ``v(x, t | mu, speaker, cond)``: all (B, 80, T) but speaker (B, 80) and t (B,) -> (B, 80, T)."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], n_heads: int, head_dim: int,
                 n_blocks: int, n_mid_blocks: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        time_dim = TIME_EMBED_MULT * channels[0]
        self.time_mlp = TimestepEmbedding(in_channels, time_dim)

        def level(dim_in: int, dim_out: int) -> list[nn.Module]:
            blocks = nn.ModuleList(TransformerBlock(dim_out, n_heads, head_dim, dropout) for _ in range(n_blocks))
            return [ResnetBlock(dim_in, dim_out, time_dim), blocks]

        last = len(channels) - 1
        widths_in = [in_channels, *channels[:-1]]
        self.down_blocks = nn.ModuleList(
            nn.ModuleList([*level(c_in, c), nn.Conv1d(c, c, 3, padding=1) if i == last
                           else Resample(nn.Conv1d(c, c, 3, stride=2, padding=1))])
            for i, (c_in, c) in enumerate(zip(widths_in, channels))
        )
        self.mid_blocks = nn.ModuleList(nn.ModuleList(level(channels[-1], channels[-1])) for _ in range(n_mid_blocks))
        widths_up = [*channels[::-1], channels[0]]
        self.up_blocks = nn.ModuleList(
            nn.ModuleList([*level(2 * c_in, c), nn.Conv1d(c, c, 3, padding=1) if i == last
                           else Resample(nn.ConvTranspose1d(c, c, 4, stride=2, padding=1))])
            for i, (c_in, c) in enumerate(zip(widths_up[:-1], widths_up[1:]))
        )
        self.final_block = ConvBlock(channels[0], channels[0])
        self.final_proj = nn.Conv1d(channels[0], out_channels, 1)

    @staticmethod
    def transform(blocks: nn.ModuleList, x: Tensor, mask: Tensor) -> Tensor:
        """Run transformer ``blocks`` over ``x`` (B, C, T) with ``mask`` (B, 1, T) -> (B, C, T)."""
        hidden = x.transpose(1, 2)  # (B, T, C)
        for block in blocks:
            hidden = block(hidden, mask[:, 0].bool())
        return hidden.transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor, mu: Tensor, t: Tensor, spks: Tensor, cond: Tensor) -> Tensor:
        """``x``, ``mu``, ``cond`` (B, 80, T); ``mask`` (B, 1, T); ``t`` (B,); ``spks`` (B, 80) -> (B, 80, T)."""
        time_emb = self.time_mlp(timestep_features(t, self.in_channels))  # (B, time_dim)
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.shape[-1]), cond], dim=1)  # (B, 320, T)
        skips, masks = [], [mask]
        for resnet, blocks, resample in self.down_blocks:
            h = self.transform(blocks, resnet(h, masks[-1], time_emb), masks[-1])
            skips.append(h)
            h = resample(h * masks[-1])
            masks.append(masks[-1][:, :, ::2])
        masks.pop()  # the last level does not downsample: the mid blocks run at its length
        for resnet, blocks in self.mid_blocks:
            h = self.transform(blocks, resnet(h, masks[-1], time_emb), masks[-1])
        for resnet, blocks, resample in self.up_blocks:
            skip, level_mask = skips.pop(), masks.pop()
            h = torch.cat([h[:, :, :skip.shape[-1]], skip], dim=1)
            h = self.transform(blocks, resnet(h, level_mask, time_emb), level_mask)
            h = resample(h * level_mask)
        h = self.final_block(h, level_mask)
        return self.final_proj(h * level_mask) * mask
