"""Whisper-style speech encoder in the WeNet key layout of the released OSUM-EChat checkpoint.

Design choices:
- Parameter names are the reference's (``embed.conv.{0,2}``, ``embed.pos_enc.pe``, ``after_norm``,
  ``encoders.{i}.self_attn.linear_{q,k,v,out}``, ``feed_forward.w_{1,2}``, ``norm{1,2}``), so the
  checkpoint loads under the prefix ``encoder.`` without renaming. ``after_norm`` is registered before
  ``encoders`` because that is the reference's state-dict order.
- One pre-LN block class (:class:`TransformerBlock`) serves both this encoder (no key bias, GELU) and
  the adapter's transformer (key bias, ReLU); the bias flag and the FFN activation are arguments.
- Attention is ``F.scaled_dot_product_attention`` with a boolean key-padding mask.
- Output lengths are ``ceil(lengths / 2)`` per item. The reference derives them from the parity of
  the padded batch length, which is off by one for some items; we fix that.
- Padded frames are zeroed before each convolution, so a valid output frame never depends on how
  much right padding its batch carries (in the reference the last valid frame sees the padding).
- The positional table is Whisper's sinusoid formula, stored as a persistent buffer of
  ``max_positions`` rows (the reference keeps 30 000 rows = 10 min at 50 Hz; Whisper keeps 1500).
- Whisper weights load through an explicit key map (:func:`whisper_to_encoder_state_dict`) from the
  openai-whisper or the transformers layout; their positional table is checked against our formula
  and then dropped, because our buffer is the same formula with more rows.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echat.config import EncoderConfig

__all__ = [
    "EncoderCache",
    "EncoderOutput",
    "FeedForward",
    "SelfAttention",
    "SpeechEncoder",
    "TransformerBlock",
    "ceil_div",
    "check_lengths",
    "load_whisper_encoder",
    "mean_frame",
    "valid_mask",
    "weights_fingerprint",
    "whisper_sinusoids",
    "whisper_to_encoder_state_dict",
]


class EncoderOutput(NamedTuple):
    """Encoder frames (50 Hz) and the number of valid frames per item."""

    hidden: Tensor  # (B, T', D); padded frames are zero
    lengths: Tensor  # (B,) int64


# ----------------------------------------------------------------------------------------------
# Helpers shared with the adapter
# ----------------------------------------------------------------------------------------------


def valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(B, max_len)`` bool mask, True on the first ``lengths[b]`` frames of item ``b``."""
    positions = torch.arange(max_len, device=lengths.device)  # (T,)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)


def mean_frame(frames: Tensor, lengths: Tensor) -> Tensor:
    """The mean of each clip's valid frames: (N, T, D) with lengths (N,) -> (N, D)."""
    valid = valid_mask(lengths, frames.shape[1]).unsqueeze(-1).to(frames.dtype)  # (N, T, 1)
    return (frames * valid).sum(1) / lengths.clamp(min=1)[:, None].to(frames.dtype)


def ceil_div(lengths: Tensor, stride: int) -> Tensor:
    """``ceil(lengths / stride)`` in integer arithmetic."""
    return torch.div(lengths + stride - 1, stride, rounding_mode="floor")


def check_lengths(lengths: Tensor, batch: int, max_len: int, where: str) -> None:
    """Raise ValueError unless ``lengths`` is ``(batch,)`` with every value in ``[1, max_len]`` (the values only
    when they exist: a shape run on the meta device has none)."""
    if lengths.shape != (batch,):
        raise ValueError(f"{where}: lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{where}: lengths must be integers, got {lengths.dtype}")
    if batch and not lengths.is_meta and (int(lengths.min()) < 1 or int(lengths.max()) > max_len):
        raise ValueError(f"{where}: every length must lie in [1, {max_len}], got {lengths.tolist()}")


def check_positions(where: str, frames: str, out_frames: str, count: int, max_positions: int, config: str) -> None:
    """Raise ValueError when ``count`` output frames exceed ``max_positions`` (the positional table);
    ``frames`` / ``out_frames`` name the input ("80 mel frames") and the output unit ("encoder")."""
    if count > max_positions:
        raise ValueError(f"{where}: {frames} give {count} {out_frames} frames, more than "
                         f"max_positions={max_positions}; split the audio or raise {config}.max_positions")


def whisper_sinusoids(length: int, channels: int) -> Tensor:
    """Whisper's positional table ``(length, channels)``: ``[sin ‖ cos]`` of log-spaced timescales."""
    if channels % 2 or channels < 4:
        raise ValueError(f"Whisper sinusoids need an even channel count >= 4, got {channels}")
    increment = math.log(10_000) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))  # (D/2,)
    scaled_time = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]  # (L, D/2)
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)  # (L, D)


# ----------------------------------------------------------------------------------------------
# Transformer block (shared with the adapter)
# ----------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with WeNet names; ``key_bias=False`` is Whisper's bias-free key."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, key_bias: bool) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model, bias=key_bias)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape  # (B, T, D)
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, T, D/H)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (B, T, D); ``mask`` (B, T) bool, True on frames that may be attended to."""
        b, t, d = x.shape
        q = self._split_heads(self.linear_q(x))  # (B, H, T, D/H)
        k = self._split_heads(self.linear_k(x))
        v = self._split_heads(self.linear_v(x))
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, T)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        # y: (B, H, T, D/H)
        return self.linear_out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class FeedForward(nn.Module):
    """Position-wise FFN ``w_2(dropout(act(w_1(x))))`` (WeNet ``PositionwiseFeedForward``)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: nn.Module) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, ffn_dim)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)
        self.w_2 = nn.Linear(ffn_dim, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))  # (B, T, D)


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + drop(attn(norm1(x)))`` then ``x + drop(ffn(norm2(x)))``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        key_bias: bool,
        activation: nn.Module,
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_heads, attention_dropout, key_bias)
        self.feed_forward = FeedForward(d_model, ffn_dim, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (B, T, D); ``mask`` (B, T) bool key-padding mask."""
        x = x + self.dropout(self.self_attn(self.norm1(x), mask))  # (B, T, D)
        return x + self.dropout(self.feed_forward(self.norm2(x)))  # (B, T, D)


def transformer_stack(cfg, key_bias: bool, activation: type[nn.Module]) -> nn.ModuleList:
    """``cfg.n_layers`` :class:`TransformerBlock` s of ``cfg``'s width (an EncoderConfig or AdapterConfig);
    ``activation``: the feed-forward's class, one instance per block."""
    return nn.ModuleList(
        TransformerBlock(cfg.d_model, cfg.n_heads, cfg.ffn_dim, cfg.dropout, cfg.attention_dropout,
                         key_bias=key_bias, activation=activation())
        for _ in range(cfg.n_layers)
    )


# ----------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------


class WhisperPositionalEncoding(nn.Module):
    """Adds Whisper sinusoids (scale 1.0) from the persistent buffer ``pe`` (1, max_positions, D)."""

    def __init__(self, d_model: int, max_positions: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("pe", whisper_sinusoids(max_positions, d_model).unsqueeze(0))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[:, : x.size(1)])  # (B, T, D)


class Conv1dSubsampling2(nn.Module):
    """Conv1d(k3, p1) → GELU → Conv1d(k3, s2, p1) → GELU, then positions (WeNet ``conv1d2``)."""

    def __init__(self, n_mels: int, d_model: int, max_positions: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, d_model, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
        )
        self.pos_enc = WhisperPositionalEncoding(d_model, max_positions, dropout)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``feats`` (B, T, n_mels) → (B, ceil(T/2), D) and lengths ``ceil(lengths/2)``."""
        mask = valid_mask(lengths, feats.size(1))  # (B, T)
        x = feats.masked_fill(~mask.unsqueeze(-1), 0.0).transpose(1, 2)  # (B, n_mels, T)
        x = self.conv[1](self.conv[0](x))  # (B, D, T)
        x = x.masked_fill(~mask.unsqueeze(1), 0.0)
        x = self.conv[3](self.conv[2](x)).transpose(1, 2)  # (B, T', D)
        return self.pos_enc(x), ceil_div(lengths, 2)


class SpeechEncoder(nn.Module):
    """Whisper encoder (WeNet layout): log-mel (100 Hz) → frames of width ``d_model`` (50 Hz)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.n_mels = cfg.n_mels
        self.max_positions = cfg.max_positions
        self.embed = Conv1dSubsampling2(cfg.n_mels, cfg.d_model, cfg.max_positions, cfg.dropout)
        self.after_norm = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.encoders = transformer_stack(cfg, key_bias=False, activation=nn.GELU)

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        """Valid encoder frames for ``lengths`` mel frames: ``ceil(lengths / 2)``."""
        return ceil_div(lengths, 2)

    def forward(self, feats: Tensor, lengths: Tensor) -> EncoderOutput:
        """``feats`` (B, T, n_mels), ``lengths`` (B,) → ``EncoderOutput`` (B, ceil(T/2), D)."""
        if feats.dim() != 3 or feats.size(-1) != self.n_mels:
            raise ValueError(
                f"SpeechEncoder expects (B, T, {self.n_mels}) features, got {tuple(feats.shape)}"
            )
        batch, frames, _ = feats.shape
        check_positions("SpeechEncoder", f"{frames} mel frames", "encoder", math.ceil(frames / 2), self.max_positions,
                        "EncoderConfig")
        check_lengths(lengths, batch, frames, "SpeechEncoder")
        x, out_lengths = self.embed(feats, lengths)  # (B, T', D)
        mask = valid_mask(out_lengths, x.size(1))  # (B, T')
        for block in self.encoders:
            x = block(x, mask)  # (B, T', D)
        x = self.after_norm(x).masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, T', D)
        return EncoderOutput(x, out_lengths)


class EncoderCache:
    """Encoder outputs per clip, for an encoder that does not train (a frozen Whisper in the mini recipe).

    Why: a frozen encoder gives the same frames for a clip in every epoch, and on CPU it costs more than
    the rest of a training step; computing each clip once makes a step cost the adapter and the LLM only.
    Clips are keyed by their exact log-mel (length and bytes), so a changed input is a new entry; the
    encoder runs in eval mode without gradients. Never use it while the encoder's weights change.

    With a ``path`` (see :meth:`beside`) the frames outlive the process: every stage, evaluation and
    ablation of a corpus encodes each clip once in all (Whisper base: ~150 s for EChat-mini's
    1,600 training clips on 2 cores; ~0.3 MB per clip on disk). The file name carries a fingerprint
    of the encoder's weights, so another encoder never reads these frames.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.frames: dict[bytes, Tensor] = {}  # clip key -> (T', D) valid frames
        self.added = 0  # entries not yet saved
        if self.path and self.path.exists():
            self.frames = torch.load(self.path, weights_only=True)

    @classmethod
    def beside(cls, folder: str | Path, encoder: SpeechEncoder) -> EncoderCache:
        """The cache of ``encoder``'s frames kept in ``folder/cache/`` (a corpus folder)."""
        return cls(Path(folder) / "cache" / f"encoder-{weights_fingerprint(encoder)}.pt")

    def save(self) -> Path | None:
        """Write new entries to ``path`` (atomically); None when there is no path or nothing new.
        A folder that cannot be written is reported on one line; training goes on without the file."""
        if not self.path or not self.added:
            return None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            torch.save(self.frames, partial)
            os.replace(partial, self.path)
        except OSError as error:
            print(f"encoder cache not saved ({self.path}): {error}")
            return None
        self.added = 0
        return self.path

    @staticmethod
    def key(feats: Tensor) -> bytes:
        """Key of one clip's valid log-mel (T, n_mels)."""
        return hashlib.blake2b(feats.detach().cpu().numpy().tobytes(), digest_size=16).digest() + \
            feats.shape[0].to_bytes(4, "little")

    def __call__(self, encoder: SpeechEncoder, feats: Tensor, lengths: Tensor) -> EncoderOutput:
        """Like ``encoder(feats, lengths)``: (B, T, n_mels), (B,) -> frames (B, ceil(T/2), D), padded with zeros."""
        keys = [self.key(feats[i, : int(n)]) for i, n in enumerate(lengths)]
        missing = [i for i, k in enumerate(keys) if k not in self.frames]
        if missing:
            was_training = encoder.training
            encoder.eval()
            with torch.no_grad():
                out = encoder(feats[missing, : int(lengths[missing].max())], lengths[missing])
            encoder.train(was_training)
            for row, i in enumerate(missing):
                self.frames[keys[i]] = out.hidden[row, : int(out.lengths[row])].clone()
            self.added += len(missing)
        out_lengths = ceil_div(lengths, 2)
        hidden = feats.new_zeros(len(keys), math.ceil(feats.shape[1] / 2), encoder.after_norm.normalized_shape[0])
        for i, k in enumerate(keys):
            hidden[i, : int(out_lengths[i])] = self.frames[k]
        return EncoderOutput(hidden, out_lengths)


def weights_fingerprint(module: nn.Module) -> str:
    """16 hex digits that change when any of ``module``'s parameters or buffers change."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Whisper checkpoints
# ----------------------------------------------------------------------------------------------

# Per-layer module names: openai-whisper and transformers spellings → ours.
_WHISPER_LAYER_MODULES = {
    "attn.query": "self_attn.linear_q",
    "attn.key": "self_attn.linear_k",
    "attn.value": "self_attn.linear_v",
    "attn.out": "self_attn.linear_out",
    "attn_ln": "norm1",
    "mlp.0": "feed_forward.w_1",
    "mlp.2": "feed_forward.w_2",
    "mlp_ln": "norm2",
    "self_attn.q_proj": "self_attn.linear_q",
    "self_attn.k_proj": "self_attn.linear_k",
    "self_attn.v_proj": "self_attn.linear_v",
    "self_attn.out_proj": "self_attn.linear_out",
    "self_attn_layer_norm": "norm1",
    "fc1": "feed_forward.w_1",
    "fc2": "feed_forward.w_2",
    "final_layer_norm": "norm2",
}
# Encoder-level module names (both layouts) → ours.
_WHISPER_TOP_MODULES = {
    "conv1": "embed.conv.0",
    "conv2": "embed.conv.2",
    "ln_post": "after_norm",
    "layer_norm": "after_norm",
}
_WHISPER_POSITION_KEYS = ("positional_embedding", "embed_positions.weight")
_LAYER_KEY = re.compile(r"(?:blocks|layers)\.(\d+)\.(.+)\.(weight|bias)")
_TOP_KEY = re.compile(r"(.+)\.(weight|bias)")


def _whisper_prefix(keys: Mapping[str, Tensor]) -> str:
    """The prefix in front of encoder keys: a full model has ``model.encoder.`` or ``encoder.``."""
    for prefix in ("model.encoder.", "encoder."):
        if any(key.startswith(prefix) for key in keys):
            return prefix
    return ""


def _our_key(name: str) -> str | None:
    """Our key for one Whisper encoder key (prefix removed), or None when it has no counterpart."""
    match = _LAYER_KEY.fullmatch(name)
    if match and match.group(2) in _WHISPER_LAYER_MODULES:
        index, module, kind = match.groups()
        return f"encoders.{index}.{_WHISPER_LAYER_MODULES[module]}.{kind}"
    match = _TOP_KEY.fullmatch(name)
    if match and match.group(1) in _WHISPER_TOP_MODULES:
        return f"{_WHISPER_TOP_MODULES[match.group(1)]}.{match.group(2)}"
    return None


def _check_whisper_positions(table: Tensor, key: str) -> None:
    """Raise ValueError unless a Whisper positional table equals our sinusoid formula."""
    if table.is_meta:
        return
    rows = table.reshape(-1, table.shape[-1]).detach().float().cpu()  # (P, D)
    expected = whisper_sinusoids(rows.shape[0], rows.shape[1])  # (P, D)
    tolerance = max(1e-4, torch.finfo(table.dtype).eps if table.dtype.is_floating_point else 0.0)
    error = (rows - expected).abs().max().item() if rows.numel() else 0.0
    if error > tolerance:
        raise ValueError(
            f"{key}: positional table differs from the Whisper sinusoids by up to {error:.2e} "
            f"(tolerance {tolerance:.0e}); a learned table cannot be loaded into SpeechEncoder"
        )


def whisper_to_encoder_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an OpenAI-whisper or transformers Whisper encoder state dict to SpeechEncoder keys.

    Keys may carry a prefix (``encoder.`` for openai-whisper and ``WhisperModel``,
    ``model.encoder.`` for ``WhisperForConditionalGeneration``, none for ``WhisperEncoder``); keys
    outside it (decoder, heads) are ignored. Map, openai-whisper | transformers -> ours:

    - ``conv1`` | ``conv1`` -> ``embed.conv.0``; ``conv2`` | ``conv2`` -> ``embed.conv.2``
    - ``blocks.N.attn.{query,key,value,out}`` | ``layers.N.self_attn.{q,k,v,out}_proj``
      -> ``encoders.N.self_attn.linear_{q,k,v,out}``
    - ``blocks.N.attn_ln`` | ``layers.N.self_attn_layer_norm`` -> ``encoders.N.norm1``
    - ``blocks.N.mlp.0`` / ``mlp.2`` | ``layers.N.fc1`` / ``fc2`` -> ``encoders.N.feed_forward.w_1`` / ``w_2``
    - ``blocks.N.mlp_ln`` | ``layers.N.final_layer_norm`` -> ``encoders.N.norm2``
    - ``ln_post`` | ``layer_norm`` -> ``after_norm``
    - ``positional_embedding`` | ``embed_positions.weight`` -> checked, then dropped

    Whisper's positional table has 1500 rows, ours ``max_positions``; both are the same sinusoid
    formula, so the given table is only checked against it (within 1e-4, or the table dtype's
    epsilon for half-precision checkpoints) and the result has no ``embed.pos_enc.pe`` entry.
    Raises ValueError on encoder keys that have no counterpart.
    """
    prefix = _whisper_prefix(state_dict)
    ours: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in _WHISPER_POSITION_KEYS:
            _check_whisper_positions(tensor, key)
            continue
        target = _our_key(name)
        if target is None or target in ours:
            unknown.append(key)
        else:
            ours[target] = tensor
    if unknown:
        raise ValueError(f"unrecognised or duplicated Whisper encoder keys: {', '.join(unknown)}")
    return ours


def load_whisper_encoder(encoder: SpeechEncoder, state_dict: Mapping[str, Tensor]) -> None:
    """Load Whisper encoder weights (any layout of :func:`whisper_to_encoder_state_dict`) in place.

    The encoder keeps its own positional buffer. Missing keys, unexpected keys and shape mismatches
    are all reported in one ValueError before anything is copied.
    """
    mapped = whisper_to_encoder_state_dict(state_dict)
    own = encoder.state_dict()
    mapped["embed.pos_enc.pe"] = own["embed.pos_enc.pe"]
    missing = [key for key in own if key not in mapped]
    unexpected = [key for key in mapped if key not in own]
    mismatched = [
        f"{key} {tuple(tensor.shape)} vs {tuple(own[key].shape)}"
        for key, tensor in mapped.items()
        if key in own and tensor.shape != own[key].shape
    ]
    if missing or unexpected or mismatched:
        lines = ["cannot load the Whisper weights into SpeechEncoder:"]
        groups = (("missing", missing), ("unexpected", unexpected), ("shape (given vs ours)", mismatched))
        for label, items in groups:
            if items:
                lines.append(f"  {label}: {', '.join(items)}")
        raise ValueError("\n".join(lines))
    encoder.load_state_dict(mapped, strict=True)
