"""One ``generate()`` for every task: KV-cached, text phase then speech phase, streaming underneath.

Design choices:
- The prompt is built by the same layout function training uses (:func:`echat.prompts.build_layout`).
- The phase (text head/table or speech head/table) is a local of each call, never model state:
  text-output tasks start in the text phase and switch at ``<|im_end|>`` when they also speak;
  TTS starts in the speech phase. The first speech token is the boundary id (it is always the first
  speech target in training), generation stops at the second boundary or at the length limits.
- :func:`stream` is the engine; :func:`generate` drains it, so both yield the same tokens.
- Sampling uses transformers' logits processors (repetition penalty, temperature, top-k, top-p);
  speech-only repetition blocking comes from :mod:`echat.models.speech`.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from echat.audio import load_audio, log_mel
from echat.config import GenerationOptions, ThinkMode
from echat.models.speech import apply_speech_blocking
from echat.prompts import AGE_CHOICE, Turn, build_layout, default_options, instruction_prompts, parse_reply
from echat.sequence import SequenceEncoder, clip_pack_layouts
from echat.tokens import TEXT2TEXT, OutputType, SpecialIds, output_type, task_for


@dataclass
class Timings:
    """Seconds from the call's start to the first text / first speech code, and decoding speed."""

    first_text_s: float | None = None
    first_speech_s: float | None = None
    total_s: float = 0.0
    n_text: int = 0
    n_speech: int = 0

    @property
    def tokens_per_s(self) -> float:
        return (self.n_text + self.n_speech) / self.total_s if self.total_s else 0.0


@dataclass
class GenerationResult:
    """What one call produced; ``raw_text`` is the whole text phase (think block included)."""

    task: str
    kind: OutputType
    raw_text: str
    text: str
    think: str | None
    reply_emotion: str | None
    think_well_formed: bool
    speech_tokens: list[int]
    text_ids: list[int]
    timings: Timings
    audio: np.ndarray | None = None  # filled by a token2wav, when one is attached
    interrupted: bool = False  # stopped by its ``interrupt`` before its end: what came so far


@dataclass
class StreamEvent:
    """``kind`` is "text" (a decoded piece), "speech" (a chunk of speech codes), "audio" (that chunk as a
    wave, when a token2wav is attached) or "done" (the result)."""

    kind: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    result: GenerationResult | None = None
    audio: np.ndarray | None = None  # (N,) float32 at the token2wav's sample rate


def default_task(audio, text, think: ThinkMode) -> str:
    """Speech in -> spoken reply (with think unless ``think`` is none); text only -> text reply."""
    return TEXT2TEXT if audio is None else task_for(True, think)


def resolve_think(model, think: ThinkMode | str | None) -> ThinkMode:
    """The think mode of one call: the one asked for, else the one the model's checkpoint stores
    (``config.think``). Asking for another mode than the stored one is allowed (the prompt is the same
    for every mode) but warned about: the model answers the way it was trained."""
    stored = ThinkMode(model.config.think)
    if think is None:
        return stored
    think = ThinkMode(think)
    if think is not stored and stored is not ThinkMode.NONE:
        warnings.warn(f"think={think} asked of a model trained with think={stored}; it answers as trained",
                      stacklevel=4)
    return think


def _as_wave(audio) -> np.ndarray:
    if isinstance(audio, (str, Path)):
        return load_audio(audio)
    return np.asarray(audio.cpu() if isinstance(audio, torch.Tensor) else audio, dtype=np.float32)


def build_prompt(model, audio=None, text: str | None = None, task: str | None = None,
                 think: ThinkMode | str = ThinkMode.NONE,
                 history: tuple = ()) -> tuple[OutputType, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(kind, ids (L,), stream (L,), clip features) of the prompt, ending at the assistant header.

    ``history``: past turns as (wave, reply text, speech tokens) triples.
    """
    if model.tokenizer is None:
        raise ValueError("this model has no text tokenizer attached (EChat(config, tokenizer=...))")
    think = ThinkMode(think)
    task = task or default_task(audio, text, think)
    kind = output_type(task)
    if think is ThinkMode.NONE and kind.thinks:
        raise ValueError(f"task {task} thinks; pass think='tag' or 'language'")
    if kind.speech_in and audio is None:
        raise ValueError(f"task {task} needs audio")
    prompt_set = model.config.text.prompt_set
    turns = tuple(Turn(i, reply, tuple(tokens)) for i, (_, reply, tokens) in enumerate(history))
    clips = [_as_wave(wave) for wave, _, _ in history] + ([_as_wave(audio)] if kind.speech_in else [])
    instruction = text or instruction_prompts(task, prompt_set)[0] if kind is OutputType.TEXT else ""
    segments = build_layout(kind, prompt_set, boundary=model.config.speech.boundary_id, instruction=instruction,
                            text_in=text or "", history=turns, audio_clip=len(turns))
    feats = [log_mel(clip) for clip in clips]
    ids, stream, _ = SequenceEncoder(model.config, model.tokenizer).sequence(segments, feats)
    return kind, ids, stream, feats


def prompt_embeddings(model, task: str, kind: OutputType, ids: torch.Tensor, codes: torch.Tensor,
                      feats: list[torch.Tensor]) -> torch.Tensor:
    """The LLM's input embeddings (1, L, H) of a prompt from :func:`build_prompt`: ids and stream (L,), its
    clips' log-mel (T_i, n_mels) encoded together, each with the task's token-pack layout."""
    device, clips = model.device, None
    if feats:
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(device)
        layouts = clip_pack_layouts(model.config, task, kind, len(feats))
        clips = model.encode_clips(padded, torch.tensor([f.shape[0] for f in feats], device=device),
                                   torch.tensor(layouts, device=device))
    return model.embed(ids[None].to(device), codes[None].to(device), clips=clips)


def prepare_call(model, audio, text, task, think, options, history) -> tuple[str, OutputType, GenerationOptions,
                                                                          torch.Tensor]:
    """What one call decodes from: its task (default :func:`default_task`), output type, options (default the
    task's, :func:`echat.prompts.default_options`) and prompt embeddings (1, L, H)."""
    think = resolve_think(model, think)
    task = task or default_task(audio, text, think)
    kind, ids, codes, feats = build_prompt(model, audio, text, task, think, history)
    return task, kind, options or default_options(kind), prompt_embeddings(model, task, kind, ids, codes, feats)


def seeded_generator(options: GenerationOptions) -> torch.Generator | None:
    """The sampling generator of one call: seeded with ``options.seed``, else None (torch's global one)."""
    return torch.Generator().manual_seed(options.seed) if options.seed is not None else None


def sampling_processors(options: GenerationOptions) -> LogitsProcessorList:
    """Repetition penalty, then (when sampling) temperature, top-k and top-p, as ``options`` asks."""
    procs = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
    if options.do_sample:
        if options.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(options.temperature))
        if options.top_k:
            procs.append(TopKLogitsWarper(options.top_k))
        if options.top_p < 1.0:
            procs.append(TopPLogitsWarper(options.top_p))
    return procs


class ChoiceAfter(LogitsProcessor):
    """Once per generation, right after the ids ``prefix`` only the ids ``allowed`` may follow (the rest of
    the scores (1, V) set to -inf): the reference's age rule, :data:`echat.prompts.AGE_CHOICE`."""

    def __init__(self, prefix: list[int], allowed: list[int]):
        self.prefix, self.allowed, self.used = list(prefix), list(allowed), False

    @classmethod
    def age_rule(cls, tokenizer) -> ChoiceAfter:
        """The age rule in ``tokenizer``'s ids (each choice's first token)."""
        after, choices = AGE_CHOICE
        prefix = tokenizer.encode(after, add_special_tokens=False)
        return cls(prefix, [tokenizer.encode(choice, add_special_tokens=False)[0] for choice in choices])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n = len(self.prefix)
        if self.used or input_ids.shape[1] < n or input_ids[0, -n:].tolist() != self.prefix:
            return scores
        self.used = True
        keep = torch.full_like(scores, float("-inf"))
        keep[:, self.allowed] = 0.0
        return scores + keep


def text_processors(model, options: GenerationOptions, procs: LogitsProcessorList) -> LogitsProcessorList:
    """The text phase's processors: the reference's age rule first (before any top-k could drop its
    choices) when ``options.age_rule`` says so, or by default with the Qwen2.5 tokenizer; then ``procs``."""
    on = options.age_rule if options.age_rule is not None else model.config.text.tokenizer == "qwen2.5"
    return LogitsProcessorList([ChoiceAfter.age_rule(model.tokenizer), *procs] if on else procs)


def pick_next(logits: torch.Tensor, history: list[int], options, procs, gen) -> int:
    """Next id from logits (V,) given the ids generated so far in this phase."""
    scores = logits[None].float()
    if procs:
        scores = procs(torch.tensor([history], dtype=torch.long, device=logits.device), scores)
    if not options.do_sample:
        return int(scores.argmax(-1))
    return int(torch.multinomial(torch.softmax(scores, -1), 1, generator=gen))


class _Decoder:
    """Feeds one embedding at a time to the LLM, with or without a KV cache. embeds: (1, L, H)."""

    def __init__(self, model, embeds: torch.Tensor, use_cache: bool):
        self.lm, self.use_cache = model.causal_lm.model, use_cache
        self.cache = DynamicCache() if use_cache else None
        self.seq = embeds

    def step(self, new: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden state (H,) after appending ``new`` (1, 1, H) (None = the prompt itself)."""
        if self.use_cache:
            x = self.seq if new is None else new
            out = self.lm(inputs_embeds=x, cache=self.cache, use_cache=True)
        else:
            if new is not None:
                self.seq = torch.cat([self.seq, new], dim=1)
            out = self.lm(inputs_embeds=self.seq, use_cache=False)
        return out.last_hidden_state[0, -1]


class _TextStream:
    """Decodes text ids piece by piece; a piece ending inside a multi-byte character waits for the next
    token. Byte-level BPE decodes by concatenation, so the pieces join to the full decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.pending = tokenizer, [], []

    def push(self, token: int) -> str:
        self.ids.append(token)
        self.pending.append(token)
        piece = self.tokenizer.decode(self.pending, clean_up_tokenization_spaces=False)
        if piece.endswith("\ufffd"):
            return ""
        self.pending = []
        return piece


def embed_one(model, token: int, speech: bool) -> torch.Tensor:
    """Embedding (1, 1, H) of one generated id from the text or the speech table."""
    table = model.speech_embedding if speech else model.llm.get_input_embeddings()
    return table(torch.tensor([[token]], device=model.device))


def stream(model, audio=None, text: str | None = None, task: str | None = None,
           think: ThinkMode | str | None = None, options: GenerationOptions | None = None,
           history: tuple = (), token2wav=None, interrupt: threading.Event | None = None) -> Iterator[StreamEvent]:
    """Generate, yielding text pieces and speech chunks as they come, then a "done" event. With a
    token2wav (``token2wav``, else ``model.token2wav``), speech chunks are followed by "audio" events holding
    their wave, and the result's ``audio`` is those waves joined. A token2wav with a ``streamer()`` (CosyVoice:
    its chunk rule, the flow over every token so far, cross-faded seams) is fed the chunks and speaks when it
    is ready; any other vocodes each chunk on its own. ``interrupt``: as in :func:`generate`."""
    vocoder = token2wav if token2wav is not None else getattr(model, "token2wav", None)
    voice = _ChunkVoice(vocoder) if vocoder is not None else None
    for event in _events(model, audio, text, task, think, options, history, interrupt):
        if event.kind == "done" and voice is not None and event.result.speech_tokens:
            if (tail := voice.finish()).size:
                yield StreamEvent("audio", tokens=[], audio=tail)
            event.result.audio = voice.joined()
        yield event
        if event.kind == "speech" and voice is not None and (wave := voice.push(event.tokens)).size:
            yield StreamEvent("audio", tokens=event.tokens, audio=wave)


class _ChunkVoice:
    """The waves of one streamed reply: a token2wav's own streamer when it has one, else each chunk vocoded
    alone; every wave made is kept for the result's ``audio``."""

    def __init__(self, vocoder) -> None:
        self.vocoder, self.waves = vocoder, []
        self.streamer = vocoder.streamer() if hasattr(vocoder, "streamer") else None

    def push(self, tokens: list[int]) -> np.ndarray:
        wave = self.streamer.push(tokens) if self.streamer is not None else self.vocoder(tokens)
        self.waves.append(wave)
        return wave

    def finish(self) -> np.ndarray:
        wave = self.streamer.finish() if self.streamer is not None else np.zeros(0, dtype=np.float32)
        self.waves.append(wave)
        return wave

    def joined(self) -> np.ndarray:
        return np.concatenate(self.waves).astype(np.float32, copy=False)


@torch.inference_mode()
def _events(model, audio, text, task, think, options, history, interrupt=None) -> Iterator[StreamEvent]:
    """The engine of :func:`stream`: text pieces, speech chunks, then "done"."""
    start = time.perf_counter()
    task, kind, options, embeds = prepare_call(model, audio, text, task, think, options, history)
    special = SpecialIds.build(model.config, model.tokenizer)
    decoder = _Decoder(model, embeds, options.use_cache)
    gen = seeded_generator(options)
    procs, timings, text_out = sampling_processors(options), Timings(), _TextStream(model.tokenizer)
    hidden, speech, ended = decoder.step(), [], not kind.text_out
    if kind.text_out:
        text_procs = text_processors(model, options, procs)
        for _ in range(options.max_new_tokens):
            if _stopped(interrupt):
                break
            token = pick_next(model.causal_lm.lm_head(hidden), text_out.ids, options, text_procs, gen)
            if token == special.im_end:
                ended = True
                break
            timings.first_text_s = timings.first_text_s or time.perf_counter() - start
            if piece := text_out.push(token):
                yield StreamEvent("text", text=piece)
            hidden = decoder.step(embed_one(model, token, speech=False))
    if kind.speech_out and ended:
        if kind.text_out:
            decoder.step(embed_one(model, special.im_end, speech=False))
        hidden = decoder.step(embed_one(model, special.speech_boundary, speech=True))
        yield from _speech_phase(model, decoder, hidden, speech, options, procs, gen, timings, start, interrupt)
    timings.total_s = time.perf_counter() - start
    timings.n_text, timings.n_speech = len(text_out.ids), len(speech)
    result = make_result(model, task, kind, text_out.ids, speech, timings)
    result.interrupted = _stopped(interrupt)
    yield StreamEvent("done", result=result)


def _stopped(interrupt: threading.Event | None) -> bool:
    return interrupt is not None and interrupt.is_set()


def _speech_phase(model, decoder, hidden, speech: list[int], options, procs, gen, timings, start, interrupt=None):
    """Sample speech codes until the closing boundary (or the interrupt); appends to ``speech``, yields chunks."""
    boundary = model.config.speech.boundary_id
    chunk: list[int] = []
    for _ in range(options.max_speech_tokens):
        if _stopped(interrupt):
            break
        logits = apply_speech_blocking(model.speech_head(hidden), speech, options, boundary)
        token = pick_next(logits, speech, options, procs, gen)
        if token == boundary:
            break
        timings.first_speech_s = timings.first_speech_s or time.perf_counter() - start
        speech.append(token)
        chunk.append(token)
        if len(chunk) == options.stream_chunk:
            yield StreamEvent("speech", tokens=chunk)
            chunk = []
        hidden = decoder.step(embed_one(model, token, speech=True))
    if chunk:
        yield StreamEvent("speech", tokens=chunk)


def make_result(model, task, kind, text_ids, speech, timings) -> GenerationResult:
    raw = model.tokenizer.decode(text_ids, clean_up_tokenization_spaces=False)
    parsed = parse_reply(raw, model.config.text.prompt_set)
    return GenerationResult(task=task, kind=kind, raw_text=raw, text=parsed.reply, think=parsed.think,
                            reply_emotion=parsed.reply_emotion, think_well_formed=parsed.well_formed,
                            speech_tokens=list(speech), text_ids=list(text_ids), timings=timings)


def generate(model, audio=None, text: str | None = None, task: str | None = None,
             think: ThinkMode | str | None = None, options: GenerationOptions | None = None,
             history: tuple = (), token2wav=None, interrupt: threading.Event | None = None) -> GenerationResult:
    """Run one task end to end and return a :class:`GenerationResult`.

    ``audio``: a 16 kHz waveform (array/tensor) or a file path; ``text``: the instruction (understanding
    tasks), the question (T2T) or the text to speak (TTS); ``task``: a task tag string (default: spoken
    reply for audio, text reply for text); ``think``: none | tag | language (default: the mode the
    model's checkpoint stores, :func:`resolve_think`); ``options``: decoding settings (default: the
    reference's for this task); ``token2wav``: turns the speech tokens into ``result.audio`` (default:
    ``model.token2wav``, if any); ``interrupt``: a :class:`threading.Event` that another thread may set to stop
    the generation after its current step (the reference's ``InterruptStopper``); the result then holds what
    was produced so far and ``interrupted`` is True.
    """
    for event in _events(model, audio, text, task, think, options, history, interrupt):
        if event.kind == "done":
            vocoder = token2wav if token2wav is not None else getattr(model, "token2wav", None)
            if vocoder is not None and event.result.speech_tokens:
                event.result.audio = vocoder(event.result.speech_tokens)
            return event.result
    raise RuntimeError("generation ended without a result")


class Conversation:
    """Multi-turn spoken dialogue; history is laid out exactly as in training (no think in history)."""

    def __init__(self, model, think: ThinkMode | str | None = None, max_turns: int = 5,
                 options: GenerationOptions | None = None):
        self.model, self.think, self.max_turns, self.options = model, think, max_turns, options
        self.turns: list[tuple[np.ndarray, str, list[int]]] = []

    def history(self) -> tuple:
        """The turns the next reply reads: the last ``max_turns`` (clip, reply text, speech codes)."""
        return tuple(self.turns[-self.max_turns:])

    def remember(self, wave: np.ndarray, result: GenerationResult) -> None:
        """Add a turn as training lays it out: the user's clip, the reply text without think, its speech codes."""
        self.turns.append((wave, result.text, result.speech_tokens))

    def say(self, audio) -> GenerationResult:
        """Reply to one user clip, then remember the turn."""
        wave = _as_wave(audio)
        result = generate(self.model, wave, think=self.think, options=self.options, history=self.history())
        self.remember(wave, result)
        return result

    def reset(self) -> None:
        self.turns.clear()
