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
from echat.models.encoder import (
    ceil_div,
    check_lengths,
    check_positions,
    mean_frame,
    transformer_stack,
    valid_mask,
)
from echat.tokens import CUE_FIELDS, LABEL_SETS, WORDS_BLOCK, plain_pack_layout

__all__ = [
    "TOKEN_OUTPUTS",
    "Adapter",
    "AdapterOutput",
    "AdapterTransformer",
    "CausalConvDownsampler",
    "arrange_pack",
    "ctc_path",
    "mel_statistics",
    "pack_tokens",
    "spoken_tokens",
    "wenet_sinusoids",
]

TOKEN_OUTPUTS = ("token_mix", "token_pack")  # adapter outputs made of the LLM's own token embeddings


class AdapterOutput(NamedTuple):
    """LLM-width speech embeddings (12.5 Hz) and the number of valid ones per item."""

    embeddings: Tensor  # (B, T'', output_dim); padded rows are zero
    lengths: Tensor  # (B,) int64
    token_logits: Tensor | None = None  # (B, T'', V + 1) with a token output: text tokens, then the blank
    cue_logits: dict[str, Tensor] | None = None  # field -> (B, labels) with cue frames (LABEL_SETS order)


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
        self.encoders = transformer_stack(cfg, key_bias=True, activation=nn.ReLU)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (B, T, input_dim), ``mask`` (B, T) bool key-padding mask → (B, T, D)."""
        x = self.embed(x)  # (B, T, D)
        for block in self.encoders:
            x = block(x, mask)  # (B, T, D)
        return self.after_norm(x)  # (B, T, D)


class Adapter(nn.Module):
    """Encoder frames → causal conv downsampling → transformer → projection to the LLM width."""

    def __init__(self, cfg: AdapterConfig, input_dim: int, output_dim: int, n_mels: int = 80) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.max_positions = cfg.max_positions
        self.downsample = CausalConvDownsampler(input_dim, cfg.d_model, cfg.conv_strides)
        self.transformer = AdapterTransformer(cfg, cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, output_dim)
        self.output_rms = cfg.output_rms
        self.output = cfg.output
        self.hard_pack = cfg.hard_pack
        self.end_frame = cfg.end_frame
        if cfg.output in TOKEN_OUTPUTS:
            self.blank = nn.Parameter(torch.zeros(output_dim))  # what the LLM reads where no token is spoken
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # softmax sharpness (learned)
        if (cfg.cue_frames or cfg.bigram_frames or cfg.hard_pack) and cfg.output != "token_pack":
            raise ValueError(f"cue_frames, bigram_frames and hard_pack need the 'token_pack' adapter output, "
                             f"not {cfg.output!r}")
        if (cfg.end_frame or cfg.cue_mel_stats) and not cfg.cue_frames:
            raise ValueError("end_frame and cue_mel_stats need cue_frames")
        self.cue_mel_stats = cfg.cue_mel_stats
        if cfg.cue_frames:  # on the clip's mean encoder frame, apart from the transformer that spells
            pooled = input_dim + (2 * n_mels if cfg.cue_mel_stats else 0)
            self.cue_trunk = nn.Sequential(nn.Linear(pooled, cfg.d_model), nn.GELU())
            self.cues = nn.ModuleDict({name: nn.Linear(cfg.d_model, len(LABEL_SETS[name])) for name in CUE_FIELDS})
        self.bigram_frames = cfg.bigram_frames
        self.pack_align = cfg.pack_align
        if cfg.bigram_frames:  # fixed, rebuilt from seed 0 (not in the state dict): no weights, no keys
            self.register_buffer("previous_map", torch.empty(output_dim, output_dim), persistent=False)  # (H, H)
            self.register_buffer("first_previous", torch.empty(output_dim), persistent=False)  # (H,)
            self.build_fixed_buffers()

    def build_fixed_buffers(self, device=None) -> None:
        """(Re)build the bigram frames' fixed rotation and start direction (RMS 1) from seed 0, on ``device``
        (default: where the buffers are; a model built on the meta device calls this with a real one)."""
        if not self.bigram_frames:
            return
        size = self.previous_map.shape[0]
        generator = torch.Generator().manual_seed(0)
        rotation, _ = torch.linalg.qr(torch.randn(size, size, generator=generator))
        start = torch.randn(size, generator=generator)
        device = device or self.previous_map.device
        self.previous_map = rotation.to(device)
        self.first_previous = (start / start.pow(2).mean().sqrt()).to(device)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Valid adapter outputs for ``lengths`` encoder frames."""
        return self.downsample.output_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor, token_table: Tensor | None = None,
                cue_ids: dict[str, Tensor] | None = None, pack_layouts: Tensor | None = None,
                end_id: int | None = None, mel_stats: Tensor | None = None) -> AdapterOutput:
        """``x`` (B, T, input_dim), ``lengths`` (B,) → ``AdapterOutput`` (B, T'', output_dim).
        ``token_table`` (V, output_dim): the LLM's input embeddings, needed by the token outputs;
        ``cue_ids``: field -> token ids (labels,) of its label tags in LABEL_SETS order, for cue frames;
        ``pack_layouts`` (B, blocks): per clip, the order of its token pack's blocks: CUE_FIELDS indices
        for the cue frames, WORDS_BLOCK for the transcript, END_BLOCK for the answer's end
        (:func:`echat.tokens.pack_layout`, see ``AdapterConfig.task_ordered_cues``); None = the transcript,
        then the cue frames in CUE_FIELDS order (then the end); ``end_id``: the token whose row is the end
        frame (the text EOS), needed with ``end_frame``; ``mel_stats`` (B, 2 n_mels): each clip's
        :func:`mel_statistics`, needed with ``cue_mel_stats``."""
        if x.dim() != 3 or x.size(-1) != self.input_dim:
            raise ValueError(f"Adapter expects (B, T, {self.input_dim}) frames, got {tuple(x.shape)}")
        batch, frames, _ = x.shape
        out_frames = frames
        for stride in self.downsample.strides:
            out_frames = math.ceil(out_frames / stride)
        check_positions("Adapter", f"{frames} encoder frames", "adapter", out_frames, self.max_positions,
                        "AdapterConfig")
        check_lengths(lengths, batch, frames, "Adapter")
        y, out_lengths = self.downsample(x, lengths)  # (B, T'', D)
        mask = valid_mask(out_lengths, y.size(1))  # (B, T'')
        y = self.proj(self.transformer(y, mask))  # (B, T'', output_dim)
        logits = cue_logits = None
        if self.output == "clip_norm":
            y = _normalise_clips(y, mask)
        elif self.output in TOKEN_OUTPUTS:
            y, logits = self._token_mix(y, token_table)
            if self.output == "token_pack":
                y, cue_logits = self._pack(y, logits, out_lengths, x, lengths, token_table, cue_ids, pack_layouts,
                                           end_id, mel_stats)
        if self.output_rms:
            y = y * (self.output_rms * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-12))
        return AdapterOutput(y.masked_fill(~mask.unsqueeze(-1), 0.0), out_lengths, logits, cue_logits)

    def _pack(self, y: Tensor, logits: Tensor, out_lengths: Tensor, x: Tensor, lengths: Tensor, token_table: Tensor,
              cue_ids: dict[str, Tensor] | None, pack_layouts: Tensor | None,
              end_id: int | None, mel_stats: Tensor | None) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Token mixes (B, T'', H) -> the packed frames the LLM reads: the greedy CTC path of ``logits``, the
        cue frames and with ``end_frame`` the row of ``end_id``, in each clip's ``pack_layouts`` (default: the
        path, then the cues in CUE_FIELDS order, then the end),
        each carrying its predecessor with bigram frames, moved to the end of the clip with
        ``pack_align = "end"``; and the cue logits."""
        ids = logits.argmax(-1)  # (B, T'')
        blank = logits.shape[-1] - 1
        y = pack_tokens(y, ids, out_lengths, blank)
        spoken = spoken_tokens(ids, out_lengths, blank).sum(1)  # (B,)
        cue_logits = None
        if hasattr(self, "cues"):
            cue_logits, frames = self._cue_frames(x, lengths, token_table, cue_ids, mel_stats)
            if self.end_frame:
                if end_id is None:
                    raise ValueError("an adapter with end_frame needs the id of the answer's end token")
                frames = torch.cat([frames, token_table[end_id].expand(len(frames), 1, -1)], dim=1)  # (B, F + 1, H)
            if pack_layouts is None:
                layout = plain_pack_layout(self.end_frame)
                pack_layouts = torch.tensor(layout, device=y.device).expand(y.shape[0], -1)
            y, spoken = arrange_pack(y, spoken, frames, pack_layouts, out_lengths)
        return self.finish_pack(y, torch.minimum(spoken, out_lengths), out_lengths), cue_logits

    def finish_pack(self, frames: Tensor, counts: Tensor, lengths: Tensor) -> Tensor:
        """Packed frames (B, T, H) whose first ``counts`` (B,) per clip are tokens, of ``lengths`` (B,) valid
        frames: with bigram frames each token carries its predecessor; with ``pack_align = "end"`` the tokens
        move to the end of their clip's valid frames. Dictation frames go through the same steps."""
        if self.bigram_frames:
            frames = self.add_previous(frames, counts)
        return align_end(frames, counts, lengths) if self.pack_align == "end" else frames

    def add_previous(self, frames: Tensor, counts: Tensor) -> Tensor:
        """Packed frames (B, T, H), of which the first ``counts`` (B,) per clip are tokens: each of those
        plus the frame before it turned by ``previous_map``; the first one's predecessor is the fixed
        ``first_previous`` direction at the RMS of the clip's first frame."""
        rms = frames[:, :1].pow(2).mean(-1, keepdim=True).sqrt()  # (B, 1, 1)
        before = torch.cat([self.first_previous * rms, frames[:, :-1]], dim=1)  # (B, T, H)
        in_front = torch.arange(frames.shape[1], device=frames.device)[None] < counts[:, None]  # (B, T)
        return frames + (before @ self.previous_map.T) * in_front.unsqueeze(-1).to(frames.dtype)

    def _cue_frames(self, x: Tensor, lengths: Tensor, token_table: Tensor, cue_ids: dict[str, Tensor] | None,
                    mel_stats: Tensor | None) -> tuple[dict[str, Tensor], Tensor]:
        """Encoder frames (B, T, input_dim) with lengths (B,) -> each cue field's logits (B, labels) from the
        clip's mean encoder frame (with ``cue_mel_stats`` beside its ``mel_stats`` (B, 2 n_mels)), and the cue
        frames (B, fields, H): per field, its label tags' embeddings mixed by :meth:`_weights` (the softmax, or
        with ``hard_pack`` the chosen tag's row).

        Why the encoder frames and not the adapter's transformer: trained through the transformer, the cue
        losses slowed its token CTC (loss 4.3 against 2.4 after 200 steps, docs/hearing.md E24)."""
        if cue_ids is None:
            raise ValueError("an adapter with cue frames needs the token ids of the cue label tags")
        pooled = mean_frame(x, lengths)  # (B, input_dim)
        if self.cue_mel_stats:
            if mel_stats is None:
                raise ValueError("an adapter with cue_mel_stats needs each clip's log-mel statistics")
            pooled = torch.cat([pooled, mel_stats.to(pooled.dtype)], dim=-1)
        pooled = self.cue_trunk(pooled)  # (B, D)
        logits = {name: head(pooled) for name, head in self.cues.items()}
        frames = torch.stack([self._weights(logits[name]) @ token_table[cue_ids[name]] for name in self.cues], 1)
        return logits, frames  # frames: (B, fields, H)

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
        return self._weights(logits) @ table, logits

    def _weights(self, logits: Tensor) -> Tensor:
        """Mixing weights (..., K) of ``logits`` (..., K): the softmax, or with ``hard_pack`` the one-hot of
        its argmax carrying the softmax's gradient (straight-through)."""
        weights = logits.softmax(-1)
        if not self.hard_pack:
            return weights
        chosen = F.one_hot(weights.argmax(-1), weights.shape[-1]).to(weights.dtype)
        return chosen + weights - weights.detach()


def mel_statistics(feats: Tensor, lengths: Tensor) -> Tensor:
    """Log-mel clips (B, T, n_mels) with lengths (B,) -> the mean and standard deviation of each mel bin
    over the clip's valid frames, (B, 2 n_mels): loudness, spectral tilt and how much the voice moves,
    which a frozen ASR encoder's frames carry less of (docs/hearing.md §14)."""
    mean = mean_frame(feats, lengths)  # (B, n_mels)
    valid = valid_mask(lengths, feats.shape[1]).unsqueeze(-1).to(feats.dtype)  # (B, T, 1)
    spread = ((feats - mean[:, None]) ** 2 * valid).sum(1) / lengths.clamp(min=1)[:, None].to(feats.dtype)
    return torch.cat([mean, spread.sqrt()], dim=-1)


def ctc_path(ids: list[int], blank: int) -> list[int]:
    """Greedy CTC output of one clip's frame-wise ids: repeats merged, blanks dropped."""
    return [i for t, i in enumerate(ids) if i != blank and (t == 0 or i != ids[t - 1])]


def align_end(frames: Tensor, counts: Tensor, lengths: Tensor) -> Tensor:
    """Frames (B, T, H) whose first ``counts`` (B,) per clip hold tokens -> the same tokens as the last
    ``counts`` of each clip's ``lengths`` (B,) valid frames, zeros before them (and after ``lengths``)."""
    source = torch.arange(frames.shape[1], device=frames.device)[None] - (lengths - counts)[:, None]  # (B, T)
    keep = (source >= 0) & (source < counts[:, None])
    moved = frames.gather(1, source.clamp(min=0)[..., None].expand(-1, -1, frames.shape[-1]))
    return moved * keep.unsqueeze(-1).to(frames.dtype)


def spoken_tokens(ids: Tensor, lengths: Tensor, blank: int) -> Tensor:
    """Where the greedy CTC path of ``ids`` (B, T) emits a token (leaves the blank or changes token)
    within each clip's ``lengths`` (B,): a bool mask (B, T)."""
    valid = torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]  # (B, T)
    previous = F.pad(ids[:, :-1], (1, 0), value=blank)
    return valid & (ids != blank) & (ids != previous)


def pack_tokens(frames: Tensor, ids: Tensor, lengths: Tensor, blank: int) -> Tensor:
    """Greedy CTC collapse, length-preserving: the frames (B, T, H) where ``ids`` (B, T) leaves the blank
    or changes token move to the front of their clip, in order; every other frame becomes zero.

    Why: the LLM then reads the spoken tokens as consecutive positions, as it reads text, instead of
    tokens scattered between blanks; the number of frames (and so the sequence layout) does not change.
    The order is decided by the greedy ids; gradients flow through the kept frames."""
    keep = spoken_tokens(ids, lengths, blank)  # (B, T)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept frames first, in time order
    packed = frames.gather(1, order.unsqueeze(-1).expand_as(frames))  # (B, T, H)
    in_front = torch.arange(ids.shape[1], device=ids.device)[None] < keep.sum(1, keepdim=True)  # (B, T)
    return packed * in_front.unsqueeze(-1).to(frames.dtype)


def arrange_pack(words: Tensor, counts: Tensor, singles: Tensor, layouts: Tensor,
                 lengths: Tensor) -> tuple[Tensor, Tensor]:
    """The blocks of a token pack in each clip's layout. ``words`` (B, T, H): the transcript's frames packed
    at the front, ``counts`` (B,) of them; ``singles`` (B, S, H): the one-frame blocks, one per cue field in
    CUE_FIELDS order, then the answer's end frame if there is one; ``layouts`` (B, S + 1): the blocks' order
    (field indices, WORDS_BLOCK for the transcript, END_BLOCK for the end frame); ``lengths`` (B,): valid
    frames per clip. Returns the frames (B, T, H), blocks laid out from the front and zeros after them, and
    the number of packed frames (B,). A clip too short for all of them keeps every one-frame block and as
    many words as fit. Differentiable in ``words`` and ``singles``."""
    batch, steps, size = words.shape
    blocks = singles.shape[1]
    counts = torch.minimum(counts, (lengths - blocks).clamp(min=0))  # (B,)
    lead = (layouts == WORDS_BLOCK).int().argmax(1)[:, None]  # (B, 1) one-frame blocks before the transcript
    order = layouts[layouts != WORDS_BLOCK].view(batch, blocks)  # (B, S) block ids in layout order
    order = order - (order > WORDS_BLOCK).long()  # block id -> index into ``singles``
    at = torch.arange(steps, device=words.device)[None].expand(batch, -1)  # (B, T)
    in_words = (at >= lead) & (at < lead + counts[:, None])
    in_cues = (at < lead) | ((at >= lead + counts[:, None]) & (at < counts[:, None] + blocks))
    cue_slot = torch.where(at < lead, at, at - counts[:, None]).clamp(0, blocks - 1)  # (B, T)
    zero = steps + blocks  # index of an all-zero frame in the source below
    source = torch.where(in_cues, steps + order.gather(1, cue_slot), torch.where(in_words, at - lead, zero))
    source = torch.where(at < lengths[:, None], source, zero)
    pool = torch.cat([words, singles, words.new_zeros(batch, 1, size)], dim=1)  # (B, T + S + 1, H)
    frames = pool.gather(1, source[..., None].expand(-1, -1, size))
    return frames, torch.minimum(counts + blocks, lengths)


def _normalise_clips(y: Tensor, mask: Tensor) -> Tensor:
    """Remove each clip's mean frame and scale the clip to unit RMS. y: (B, T, H), mask: (B, T) valid."""
    valid = mask.unsqueeze(-1).to(y.dtype)  # (B, T, 1)
    count = valid.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    centred = (y - (y * valid).sum(1, keepdim=True) / count) * valid
    rms = (centred.pow(2).sum((1, 2), keepdim=True) / (count * y.shape[-1])).sqrt()  # (B, 1, 1)
    return centred / (rms + 1e-6)
