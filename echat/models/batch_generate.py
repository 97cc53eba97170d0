"""Many prompts at once: :func:`generate_batch`, one LLM forward per step for every unfinished item, with the
outputs :func:`echat.models.generate.generate` gives each item alone.

Design choices:
- Each prompt is built, encoded and embedded alone, as ``generate`` does it (:func:`prepare_call`); the
  embeddings are then left-padded into one (B, L, H) batch with an attention mask (B, L), and every
  position id is counted from the mask, so an item sees the keys and positions it sees alone (a padded key
  gets exactly zero attention weight: the mask is boolean, the softmax gives it exp(-inf) = 0).
- One KV cache for the batch; an item that is done leaves it (its row is dropped), so each step runs only the
  unfinished items.
- Every item is its own little state machine (:class:`_ItemRun`): the text phase, the ids fed without
  picking (``<|im_end|>``, then the speech boundary), the speech phase, done. It has its own logits
  processors (the age rule keeps state), its own generator (seeded as alone, so samples are the same) and
  its own timings; heads and picking run on its own hidden state (H,), through ``generate``'s rules.
- Always KV-cached (``options.use_cache`` only chooses ``generate``'s check path); no streaming.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from echat.config import GenerationOptions, ThinkMode
from echat.models.generate import (
    GenerationResult,
    Timings,
    embed_one,
    make_result,
    pick_next,
    prepare_call,
    sampling_processors,
    seeded_generator,
    text_processors,
)
from echat.models.speech import apply_speech_blocking
from echat.tokens import OutputType, SpecialIds


@dataclass(frozen=True)
class GenerationRequest:
    """One item of :func:`generate_batch`: the arguments of :func:`echat.models.generate.generate`.
    ``options`` None takes the batch's options, else the task's defaults."""

    audio: object = None
    text: str | None = None
    task: str | None = None
    think: ThinkMode | str | None = None
    options: GenerationOptions | None = None
    history: tuple = ()


class _ItemRun:
    """The decoding state of one item: what it feeds next, given its last hidden state, until it is done."""

    def __init__(self, model, task: str, kind: OutputType, options: GenerationOptions, start: float):
        self.model, self.task, self.kind, self.options, self.start = model, task, kind, options, start
        self.special = SpecialIds.build(model.config, model.tokenizer)
        self.procs, self.gen = sampling_processors(options), seeded_generator(options)
        self.text_procs = text_processors(model, options, self.procs) if kind.text_out else None
        self.text_ids: list[int] = []
        self.speech: list[int] = []
        self.forced: deque[tuple[int, bool]] = deque()  # (id, from the speech table) fed without picking
        self.timings = Timings()
        self.result: GenerationResult | None = None
        self.speaking = not kind.text_out
        if kind.text_out and options.max_new_tokens <= 0:
            self._finish()
        elif self.speaking:
            self._start_speech()

    def _start_speech(self) -> None:
        """Speak next (the boundary opens the speech), or end here when no speech is allowed."""
        self.speaking = True
        if self.options.max_speech_tokens > 0:
            self.forced.append((self.special.speech_boundary, True))
        else:
            self._finish()

    def _finish(self) -> None:
        self.timings.total_s = time.perf_counter() - self.start
        self.timings.n_text, self.timings.n_speech = len(self.text_ids), len(self.speech)
        self.result = make_result(self.model, self.task, self.kind, self.text_ids, self.speech, self.timings)

    def next_feed(self, hidden: torch.Tensor) -> tuple[int, bool] | None:
        """The (id, from the speech table) to feed after the hidden state (H,), or None once done."""
        if self.result is not None:
            return None
        if self.forced:
            return self.forced.popleft()
        return self._speech_step(hidden) if self.speaking else self._text_step(hidden)

    def _text_step(self, hidden: torch.Tensor) -> tuple[int, bool] | None:
        token = pick_next(self.model.causal_lm.lm_head(hidden), self.text_ids, self.options, self.text_procs,
                          self.gen)
        if token == self.special.im_end:
            if self.kind.speech_out:
                self._start_speech()  # <|im_end|> is fed, then the boundary, as alone
            else:
                self._finish()
            return None if self.result is not None else (token, False)
        self.timings.first_text_s = self.timings.first_text_s or time.perf_counter() - self.start
        self.text_ids.append(token)
        if len(self.text_ids) >= self.options.max_new_tokens:
            self._finish()  # the limit without <|im_end|>: no speech, as alone
            return None
        return token, False

    def _speech_step(self, hidden: torch.Tensor) -> tuple[int, bool] | None:
        boundary = self.model.config.speech.boundary_id
        logits = apply_speech_blocking(self.model.speech_head(hidden), self.speech, self.options, boundary)
        token = pick_next(logits, self.speech, self.options, self.procs, self.gen)
        if token != boundary:
            self.timings.first_speech_s = self.timings.first_speech_s or time.perf_counter() - self.start
            self.speech.append(token)
        if token == boundary or len(self.speech) >= self.options.max_speech_tokens:
            self._finish()
            return None
        return token, True


class _BatchDecoder:
    """Left-padded prompts through the LLM, then one embedding per remaining row and step, KV-cached."""

    def __init__(self, model, prompts: Sequence[torch.Tensor]):
        """``prompts``: each item's embeddings (1, L_i, H)."""
        self.lm, self.cache = model.causal_lm.model, DynamicCache()
        longest = max(p.shape[1] for p in prompts)
        self.prompt = prompts[0].new_zeros(len(prompts), longest, prompts[0].shape[-1])  # (B, L, H)
        self.mask = torch.zeros(len(prompts), longest, dtype=torch.long, device=self.prompt.device)  # (B, L)
        for row, embeds in enumerate(prompts):
            self.prompt[row, longest - embeds.shape[1]:] = embeds[0]
            self.mask[row, longest - embeds.shape[1]:] = 1

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, H) after ``x`` (B, T, H), whose positions are the mask's last T columns."""
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -x.shape[1]:]  # (B, T): each row's own count
        out = self.lm(inputs_embeds=x, attention_mask=self.mask, position_ids=positions, cache=self.cache,
                      use_cache=True)
        return out.last_hidden_state[:, -1]

    def prefill(self) -> torch.Tensor:
        """Last hidden states (B, H) of the prompts."""
        return self._forward(self.prompt)

    def step(self, new: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Keep only ``rows`` (indices of the current rows), append ``new`` (len(rows), 1, H) to them."""
        if len(rows) < self.mask.shape[0]:
            keep = torch.tensor(rows, device=self.mask.device)
            self.cache.batch_select_indices(keep)
            self.mask = self.mask[keep]
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(rows), 1)], dim=1)
        return self._forward(new)


@torch.inference_mode()
def _run_batch(model, requests: Sequence[GenerationRequest], options: GenerationOptions | None) -> list[
        GenerationResult]:
    """Every request of one batch decoded together (see the module docstring)."""
    start = time.perf_counter()
    items, prompts = [], []
    for request in requests:
        task, kind, chosen, embeds = prepare_call(model, request.audio, request.text, request.task, request.think,
                                                  request.options or options, request.history)
        items.append(_ItemRun(model, task, kind, chosen, start))
        prompts.append(embeds)
    decoder = _BatchDecoder(model, prompts)
    hidden, active = decoder.prefill(), list(range(len(items)))  # active[row]: the item in decoder row ``row``
    while True:
        feeds = [items[item].next_feed(hidden[row]) for row, item in enumerate(active)]
        rows = [row for row, feed in enumerate(feeds) if feed is not None]
        if not rows:
            return [item.result for item in items]
        new = torch.cat([embed_one(model, *feeds[row]) for row in rows])  # (len(rows), 1, H)
        hidden, active = decoder.step(new, rows), [active[row] for row in rows]


def generate_batch(model, requests: Sequence[GenerationRequest | dict], options: GenerationOptions | None = None,
                   token2wav=None, batch_size: int | None = None) -> list[GenerationResult]:
    """Run many :class:`GenerationRequest` s (or dicts of their fields), ``batch_size`` at a time (default all
    at once), and return their results in order, each as :func:`echat.models.generate.generate` returns it
    alone (greedy outputs are the same ids; a seeded sampler gives the same samples). Timings count from the
    start of the item's batch.

    ``options``: for every request whose own ``options`` is None (default: each task's); ``token2wav``: fills
    each ``result.audio`` (default ``model.token2wav``, if any).
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    requests = [r if isinstance(r, GenerationRequest) else GenerationRequest(**r) for r in requests]
    size = batch_size or max(len(requests), 1)
    results = [r for at in range(0, len(requests), size) for r in _run_batch(model, requests[at:at + size], options)]
    vocoder = token2wav if token2wav is not None else getattr(model, "token2wav", None)
    for result in results:
        if vocoder is not None and result.speech_tokens:
            result.audio = vocoder(result.speech_tokens)
    return results
