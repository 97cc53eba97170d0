"""Did the model listen? The LLM's attention from its answer tokens onto the clip's audio positions.

Design choices:
- One separate forward pass over the finished sequence (the prompt of :func:`echat.models.generate.build_prompt`,
  then the answer's text tokens), with the LLM switched to transformers' eager attention for that pass only
  (``output_attentions=True``; sdpa cannot return weights) and switched back after it.
- Row ``j`` is the attention of the position that *predicted* answer token ``j`` (the one before it): where the
  model looked when it chose that token. Heads are averaged; every layer is kept, so a picture picks one layer
  or their mean. A row sums to at most 1: the rest of its attention goes to the text positions.
- Audio positions map back to log-mel time through the adapter's frame layout. One adapter frame covers
  ``2 x prod(conv_strides)`` log-mel frames (100 Hz log-mel -> 50 Hz encoder -> the convs' strides: 80 ms in
  every preset here). A plain adapter gives position ``i`` = adapter frame ``i``. The mini preset's token-pack
  adapter moves the frames where its greedy CTC path emits a token to consecutive positions and adds one frame
  per cue field (gender, age, emotion, event) and the answer's end: a token position covers the 80 ms of the
  frame that emitted it (with bigram frames it also carries the token before it), a cue or end position the
  whole clip (shown apart, by name), and the zero frames ("blank") nothing. The layout is recomputed with the
  adapter's own packing functions applied to frame numbers instead of embeddings.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from echat.models.adapter import align_end, arrange_pack, pack_tokens, spoken_tokens
from echat.models.generate import build_prompt, prompt_embeddings
from echat.sequence import clip_pack_layouts
from echat.tokens import CUE_FIELDS, Stream

BLANK = "blank"  # a packed position that holds no frame (zeros)
END = "end"  # the pack's answer-end frame
MAX_LABELS = 40  # answer tokens named on the picture's axis (every n-th beyond that)


@dataclass
class AttentionMap:
    """Attention of one answer onto its clip.

    ``weights`` (layers, answer tokens, audio positions), head-averaged; ``tokens`` each answer token's text;
    ``spans`` (audio positions, 2): the log-mel frames [start, end) each position covers, (-1, -1) for a
    position without a time (see ``blocks``); ``blocks``: per position, "" for a time position, else the cue
    field, ``end`` or ``blank`` it holds; ``feats`` (T, n_mels): the clip's log-mel.
    """

    weights: np.ndarray
    tokens: list[str]
    spans: np.ndarray
    blocks: list[str]
    feats: np.ndarray

    def layer(self, index: int | None = None) -> np.ndarray:
        """(answer tokens, audio positions) of one layer, or the mean of all layers (``index`` None)."""
        return self.weights.mean(0) if index is None else self.weights[index]

    def over_time(self, index: int | None = None) -> np.ndarray:
        """(answer tokens, T) attention spread over the log-mel frames each position covers."""
        rows = self.layer(index)
        out = np.zeros((rows.shape[0], self.feats.shape[0]), dtype=np.float32)
        for position, (start, end) in enumerate(self.spans):
            if start >= 0:
                out[:, start:end] += rows[:, position:position + 1]
        return out


@contextmanager
def eager_attention(causal_lm):
    """The LLM with eager attention inside the block (it can return its weights), the previous one after."""
    before = causal_lm.config._attn_implementation
    causal_lm.set_attn_implementation("eager")
    try:
        yield causal_lm
    finally:
        causal_lm.set_attn_implementation(before)


def mel_frames_per_position(config) -> int:
    """Log-mel frames one adapter frame covers: the encoder halves 100 Hz, then each conv stride divides."""
    return 2 * math.prod(config.adapter.conv_strides)


def position_sources(model, feats: torch.Tensor, layout: tuple[int, ...]) -> torch.Tensor:
    """What each LLM audio position of one clip holds: (T'',) with v > 0 the adapter frame v - 1, v < 0 the
    one-frame block -v - 1 (cue fields in CUE_FIELDS order, then the end) and 0 nothing. ``feats``: the clip's
    log-mel (T, n_mels); ``layout``: its pack layout (:func:`echat.sequence.clip_pack_layouts`)."""
    lengths = torch.tensor([feats.shape[0]], device=model.device)
    clip = model.encode_clips(feats[None].to(model.device), lengths, torch.tensor([layout], device=model.device))
    steps = clip.embeddings.shape[1]
    frames = torch.arange(1, steps + 1, dtype=torch.float32, device=model.device)[None, :, None]  # (1, T'', 1)
    if model.config.adapter.output != "token_pack":
        return frames[0, :, 0].long()
    ids, blank = clip.token_logits.argmax(-1), clip.token_logits.shape[-1] - 1
    packed = pack_tokens(frames, ids, clip.lengths, blank)
    counts = spoken_tokens(ids, clip.lengths, blank).sum(1)
    if model.config.adapter.cue_frames:
        singles = -torch.arange(1, len(layout), dtype=torch.float32, device=model.device)[None, :, None]
        packed, counts = arrange_pack(packed, counts, singles, clip.lengths.new_tensor([layout]), clip.lengths)
    if model.config.adapter.pack_align == "end":
        packed = align_end(packed, torch.minimum(counts, clip.lengths), clip.lengths)
    return packed[0, :, 0].round().long()


def spans_and_blocks(sources: torch.Tensor, per_position: int, n_frames: int) -> tuple[np.ndarray, list[str]]:
    """Log-mel spans (P, 2) and block names (P,) of :func:`position_sources`' codes (P,)."""
    names = [*CUE_FIELDS, END]
    spans, blocks = np.full((len(sources), 2), -1, dtype=np.int64), []
    for position, code in enumerate(sources.tolist()):
        if code > 0:
            start = (code - 1) * per_position
            spans[position] = (min(start, n_frames), min(start + per_position, n_frames))
        blocks.append("" if code > 0 else BLANK if code == 0 else names[-code - 1])
    return spans, blocks


@torch.inference_mode()
def audio_attention(model, audio, text_ids: list[int], task: str, text: str | None = None,
                    think: str = "none", history: tuple = ()) -> AttentionMap:
    """The :class:`AttentionMap` of an answer (its text ids, think included) to ``audio`` (the current clip)
    under ``task`` (and ``history``, as the answer was generated)."""
    if not text_ids:
        raise ValueError("no answer tokens to inspect (the reply has no text)")
    kind, ids, codes, feats = build_prompt(model, audio, text, task, think, history)
    if not kind.speech_in:
        raise ValueError(f"task {task} has no audio to attend to")
    prompt = prompt_embeddings(model, task, kind, ids, codes, feats)  # (1, P, H)
    before = torch.tensor([text_ids[:-1]], dtype=torch.long, device=model.device)  # (1, n - 1): all but the last
    answer = model.llm.get_input_embeddings()(before)  # (1, n - 1, H)
    with eager_attention(model.causal_lm) as lm:
        out = lm.model(inputs_embeds=torch.cat([prompt, answer], 1), output_attentions=True, use_cache=False)
    n_audio = model.config.llm_positions(feats[-1].shape[0])
    audio_at = (codes == Stream.AUDIO).nonzero()[-n_audio:, 0].to(model.device)  # the current clip's positions
    rows = torch.arange(prompt.shape[1] - 1, prompt.shape[1] - 1 + len(text_ids), device=model.device)
    weights = torch.stack([a[0].float().mean(0)[rows][:, audio_at] for a in out.attentions])  # (layers, n, A)
    layout = clip_pack_layouts(model.config, task, kind, len(feats))[-1]
    sources = position_sources(model, feats[-1], layout)
    spans, blocks = spans_and_blocks(sources, mel_frames_per_position(model.config), feats[-1].shape[0])
    tokens = [model.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in text_ids]
    return AttentionMap(weights.cpu().numpy(), tokens, spans, blocks, feats[-1].cpu().numpy())


def attention_figure(amap: AttentionMap, layer: int | None = None, title: str = ""):
    """The clip's log-mel above the answer tokens' attention over the same time axis (80 ms columns), with
    the positions that have no time in a narrow panel beside it: each cue field and the end by name, the
    blank positions as one column (their sum). Returns a matplotlib ``Figure`` (no pyplot state is touched)."""
    from matplotlib.figure import Figure

    rows, timed = amap.layer(layer), amap.over_time(layer)
    side_rows, side_names = _untimed_columns(amap, rows)
    height = 2.0 + 0.12 * min(len(amap.tokens), MAX_LABELS)
    fig = Figure(figsize=(10, height + 1.6), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(1.6, height), width_ratios=(12, max(1.5, 0.4 * len(side_names))))
    mel = fig.add_subplot(grid[0, 0])
    mel.imshow(amap.feats.T, origin="lower", aspect="auto", cmap="magma")
    mel.set(ylabel="mel bin", title=title or f"attention onto the audio, {_layer_name(layer)}")
    heat = fig.add_subplot(grid[1, 0], sharex=mel)
    top = max(float(timed.max()), float(side_rows.max()) if side_names else 0.0, 1e-9)
    image = heat.imshow(timed, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=top)
    heat.set(xlabel="log-mel frame (10 ms)", ylabel="answer token")
    _token_axis(heat, amap.tokens)
    panels = [mel, heat]
    if side_names:
        side = fig.add_subplot(grid[1, 1], sharey=heat)
        side.imshow(side_rows, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0, vmax=top)
        side.set_xticks(range(len(side_names)), side_names, rotation=90)
        side.tick_params(labelleft=False)
        panels.append(side)
    fig.colorbar(image, ax=panels, label="attention (head mean)", shrink=0.6)
    return fig


def _untimed_columns(amap: AttentionMap, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The attention (answer tokens, columns) onto the positions without a time: one column per cue field and
    the end, then the blank positions summed into one; and the columns' names."""
    named = [i for i, block in enumerate(amap.blocks) if block and block != BLANK]
    blank = [i for i, block in enumerate(amap.blocks) if block == BLANK]
    columns, names = [rows[:, named]], [amap.blocks[i] for i in named]
    if blank:
        columns.append(rows[:, blank].sum(1, keepdims=True))
        names.append(f"{BLANK} x{len(blank)}")
    return np.concatenate(columns, axis=1), names


def _layer_name(layer: int | None) -> str:
    return "mean of layers" if layer is None else f"layer {layer}"


def _token_axis(axis, tokens: list[str]) -> None:
    step = max(1, math.ceil(len(tokens) / MAX_LABELS))
    at = list(range(0, len(tokens), step))
    axis.set_yticks(at, [repr(tokens[i])[1:-1][:14] for i in at], fontsize=7)
