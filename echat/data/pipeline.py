"""From samples to model batches: features, one flat right-padded sequence per sample, dynamic batching.

Design choices:
- Every sample becomes ONE flat sequence: its layout (:func:`echat.prompts.build_layout`, the same
  layout generation uses) encoded by :class:`echat.sequence.SequenceEncoder` into ``ids``, ``stream``
  and ``labels`` (B, L). No pads between segments.
- Audio clips of a batch (the current turn and any history) are stacked in order of appearance in
  ``feats`` (N, T, 80); the model fills the ``AUDIO`` positions of each row with them in that order.
- Batches are homogeneous per output type; every bucket's leftovers are flushed at the end.
- Bad samples are skipped and counted in :class:`SkipSummary`; no valid sample is lost.
- Deterministic for a seed: shuffling, instruction draws, tag-think draws and SpecAugment.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from echat.audio import AudioError, load_audio, log_mel
from echat.config import EChatConfig, ThinkMode
from echat.data.schema import Record, read_manifest
from echat.prompts import (
    Cues,
    Segment,
    Turn,
    build_layout,
    chat_label,
    effective_output_type,
    instruction_prompts,
)
from echat.sequence import SequenceEncoder, clip_pack_layouts
from echat.tokens import IGNORE_INDEX, OutputType, Stream


@dataclass
class Sample:
    """A record with its decoded audio (16 kHz float32); ``audio`` is None for text-input tasks."""

    record: Record
    audio: np.ndarray | None = None
    history_audio: list[np.ndarray] = field(default_factory=list)


@dataclass
class Example:
    """One encoded sample. ``ids``/``stream``/``labels``: (L,); ``feats``: clips, each (T_i, n_mels)."""

    key: str
    kind: OutputType
    ids: torch.Tensor
    stream: torch.Tensor
    labels: torch.Tensor
    feats: list[torch.Tensor]
    txt: str = ""
    pack_layouts: list[tuple[int, ...]] = field(default_factory=list)  # per clip: the order of its pack's blocks

    @property
    def frames(self) -> int:
        return sum(f.shape[0] for f in self.feats)


@dataclass
class Batch:
    """Model input for one output type.

    ids, stream, labels, attention_mask: (B, L); feats: (N, T, n_mels) with feat_lengths (N,),
    the audio clips of all rows in order of appearance; pack_layouts (N, blocks): the order of each
    clip's token-pack blocks (CUE_FIELDS indices, WORDS_BLOCK, END_BLOCK: :func:`clip_pack_layouts`), None when no
    example gave one.
    """

    keys: list[str]
    kind: OutputType
    ids: torch.Tensor
    stream: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    feats: torch.Tensor
    feat_lengths: torch.Tensor
    txts: list[str]
    pack_layouts: torch.Tensor | None = None

    def to(self, device) -> Batch:
        tensors = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return Batch(**{**vars(self), **tensors})


@dataclass
class SkipSummary:
    """Samples left out of training, counted per reason, with the first few messages kept."""

    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        if len(self.messages) < 20:
            self.messages.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def render(self) -> str:
        if not self.total:
            return "no samples skipped"
        lines = [f"skipped {self.total} sample(s): " + ", ".join(f"{r} {n}" for r, n in self.counts.items())]
        return "\n".join(lines + [f"  {m}" for m in self.messages])


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------


def load_samples(records: Iterable[Record], base_dir: str | Path, config: EChatConfig,
                 skipped: SkipSummary) -> Iterator[Sample]:
    """Decode the audio of raw-manifest records lazily; unreadable clips are skipped and counted.
    Records that share a clip (ASR, ASR+P and chat records of one utterance) share one array."""
    decoded: dict[str, np.ndarray] = {}

    def load(wav, record):
        if wav not in decoded:
            decoded[wav] = _load(wav, record, base_dir, config)
        return decoded[wav]

    for record in records:
        try:
            clip = load(record.wav, record) if record.output_type.speech_in else None
            history = [load(turn["wav"], record) for turn in record.history]
        except AudioError as err:
            skipped.add("audio", f"{record.source}:{record.line}: {record.key}: {err}")
            continue
        yield Sample(record, clip, history)


def load_split(corpus: str | Path, split: str, config, default_task: str | None = None) -> list[Sample]:
    """Decoded samples of a corpus split; unusable ones are skipped and the summary printed. Invalid
    records (one without a task, unless ``default_task`` is given) raise ManifestError naming each."""
    corpus = Path(corpus)
    if not (corpus / f"{split}.jsonl").exists():
        raise FileNotFoundError(f"{corpus}: no {split}.jsonl (build one with `echat data mini --out {corpus}`)")
    skipped = SkipSummary()
    records = read_manifest(corpus / f"{split}.jsonl", codebook_size=config.speech.codebook_size,
                            default_task=default_task)
    samples = list(load_samples(records, corpus, config, skipped))
    if skipped.total:
        print(skipped.render())
    if not samples:
        raise ValueError(f"{corpus / (split + '.jsonl')}: no usable samples")
    return samples


def check_corpus(corpus: str | Path) -> Path:
    """A corpus folder with the files training reads, or one clear error."""
    corpus = Path(corpus)
    if corpus.is_file():
        raise FileNotFoundError(f"{corpus}: a file, not a corpus folder (a recipe trains on an EChat-mini corpus; "
                                "train one stage from a manifest with --stage)")
    if not corpus.is_dir():
        raise FileNotFoundError(f"{corpus}: no such data folder (build one with `echat data mini --out {corpus}`)")
    for name in ("train.jsonl", "dev.jsonl", "text_tokenizer"):
        if not (corpus / name).exists():
            raise FileNotFoundError(f"{corpus}: no {name} (build the corpus with `echat data mini --out {corpus}`)")
    return corpus


def _load(wav: str | None, record: Record, base_dir, config: EChatConfig) -> np.ndarray:
    if not wav:
        raise AudioError(f"record {record.key} has no wav")
    path = Path(wav) if Path(wav).is_absolute() else Path(base_dir) / wav
    return load_audio(path, config.audio.sample_rate_hz, config.audio.min_samples, config.audio.max_seconds)


def spec_augment(feats: torch.Tensor, config: EChatConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero ``spec_time_masks`` time spans and ``spec_freq_masks`` mel bands. feats: (T, n_mels)."""
    train = config.train
    out = feats.clone()
    n_frames, n_bins = out.shape
    for _ in range(train.spec_time_masks):
        width = int(torch.randint(0, train.spec_max_time + 1, (1,), generator=gen))
        start = int(torch.randint(0, max(1, n_frames - width), (1,), generator=gen))
        out[start:start + width] = 0.0
    for _ in range(train.spec_freq_masks):
        width = int(torch.randint(0, train.spec_max_freq + 1, (1,), generator=gen))
        start = int(torch.randint(0, max(1, n_bins - width), (1,), generator=gen))
        out[:, start:start + width] = 0.0
    return out


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


class SampleEncoder(SequenceEncoder):
    """Turns a :class:`Sample` into an :class:`Example` for one model (config + tokenizer + think mode)."""

    def __init__(self, config: EChatConfig, tokenizer, think: ThinkMode | str = ThinkMode.NONE,
                 instructions: dict | None = None, text_lm: bool = False):
        super().__init__(config, tokenizer, text_lm)
        self.think = ThinkMode(think)
        self.instructions = instructions
        self._feats: dict[int, tuple[np.ndarray, torch.Tensor]] = {}  # log-mel per decoded clip (by array identity)

    def layout(self, record: Record, rng: random.Random) -> tuple[OutputType, list[Segment]]:
        """Output type and segments of a record (clip 0.. are history turns, the last is current)."""
        prompt_set = self.config.text.prompt_set
        kind = effective_output_type(record.task, self.think)
        extra = record.extra
        speech = tuple(extra.get("speech_token") or ()) if kind.speech_out else None
        history = tuple(Turn(i, turn["txt"], tuple(extra.get(f"speech_token_{i + 1}") or ()))
                        for i, turn in enumerate(record.history))
        common = dict(boundary=self.ids.speech_boundary, history=history, audio_clip=len(history))
        if kind is OutputType.TEXT:
            instruction = rng.choice(instruction_prompts(record.task, prompt_set, self.instructions))
            return kind, build_layout(kind, prompt_set, label=record.txt, instruction=instruction, **common)
        if kind is OutputType.TTS:
            return kind, build_layout(kind, prompt_set, speech=speech, text_in=record.txt, **common)
        if kind is OutputType.T2T:
            return kind, build_layout(kind, prompt_set, label=record.txt,
                                      text_in=str(extra.get("question", "")), **common)
        label = chat_label(record.txt, kind, self.think, prompt_set, cues=Cues.from_extra(extra),
                           think_text=str(extra.get("think_str", "")), rng=rng,
                           unknown_prob=self.config.train.unknown_tag_prob)
        return kind, build_layout(kind, prompt_set, label=label, speech=speech, **common)

    def encode(self, sample: Sample, rng: random.Random, augment: torch.Generator | None = None) -> Example:
        """Flat ids/stream/labels for ``sample``; ``augment`` (a seeded generator) turns on SpecAugment."""
        kind, segments = self.layout(sample.record, rng)
        clips = [*sample.history_audio, *([sample.audio] if kind.speech_in else [])]
        feats = [self.features(clip) for clip in clips]
        if augment is not None:
            feats = [spec_augment(f, self.config, augment) for f in feats]
        ids, stream, labels = self.sequence(segments, feats)
        layouts = clip_pack_layouts(self.config, sample.record.task, kind, len(feats))
        return Example(sample.record.key, kind, ids, stream, labels, feats, sample.record.txt, layouts)

    def features(self, clip: np.ndarray) -> torch.Tensor:
        """Log-mel (T, n_mels) of a clip, computed once per clip array (epochs reuse it)."""
        key = id(clip)
        if key not in self._feats:
            self._feats[key] = (clip, log_mel(clip))  # keep the array alive so its id stays unique
        return self._feats[key][1]


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-pad rows to the longest; stack all clips. Shapes in :class:`Batch`."""
    length = max(len(e.ids) for e in examples)
    shape = (len(examples), length)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    stream = torch.full(shape, int(Stream.TEXT), dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n], stream[row, :n], labels[row, :n], mask[row, :n] = e.ids, e.stream, e.labels, 1
    clips = [f for e in examples for f in e.feats]
    n_mels = clips[0].shape[1] if clips else 0
    feats = torch.zeros(len(clips), max((c.shape[0] for c in clips), default=0), n_mels)
    for i, clip in enumerate(clips):
        feats[i, : clip.shape[0]] = clip
    lengths = torch.tensor([c.shape[0] for c in clips], dtype=torch.long)
    layouts = [layout for e in examples for layout in e.pack_layouts]
    pack_layouts = torch.tensor(layouts, dtype=torch.long) if clips and len(layouts) == len(clips) else None
    return Batch([e.key for e in examples], examples[0].kind, ids, stream, labels, mask, feats, lengths,
                 [e.txt for e in examples], pack_layouts)


def dynamic_batches(examples: Iterable[Example], max_tokens: int, max_frames: int,
                    pad_id: int) -> Iterator[Batch]:
    """Group examples per output type; a bucket is emitted before it would exceed
    ``max_tokens`` (longest sequence x rows) or ``max_frames`` (longest clip frames x rows).
    Leftovers of every bucket are emitted at the end (the reference drops all but one)."""
    buckets: dict[OutputType, list[Example]] = {}
    for example in examples:
        bucket = buckets.setdefault(example.kind, [])
        rows = len(bucket) + 1
        longest = max([len(example.ids)] + [len(e.ids) for e in bucket])
        most_frames = max([example.frames] + [e.frames for e in bucket])
        if bucket and (longest * rows > max_tokens or most_frames * rows > max_frames):
            yield collate(bucket, pad_id)
            bucket.clear()
        bucket.append(example)
    for bucket in buckets.values():
        if bucket:
            yield collate(bucket, pad_id)


@dataclass
class DataPipeline:
    """Samples -> shuffled, length-sorted, encoded, dynamically batched :class:`Batch` es.

    >>> pipe = DataPipeline(config, tokenizer, think="tag", train=True)
    >>> for batch in pipe.batches(samples, epoch=0): ...
    >>> print(pipe.skipped.render())
    """

    config: EChatConfig
    tokenizer: object
    think: ThinkMode = ThinkMode.NONE
    train: bool = True
    sort_buffer: int = 500
    instructions: dict | None = None
    text_lm: bool = False
    skipped: SkipSummary = field(default_factory=SkipSummary)

    def __post_init__(self):
        self.encoder = SampleEncoder(self.config, self.tokenizer, self.think, self.instructions, self.text_lm)

    def examples(self, samples: Iterable[Sample], epoch: int = 0) -> Iterator[Example]:
        """Encoded examples, shuffled (train) and sorted by length within ``sort_buffer`` windows."""
        seed = self.config.train.seed * 100_003 + epoch
        rng = random.Random(seed)
        augment = torch.Generator().manual_seed(seed) if self.train and self.config.train.spec_augment else None
        samples = list(samples)
        if self.train:
            rng.shuffle(samples)
        for start in range(0, len(samples), self.sort_buffer):
            window = [e for s in samples[start:start + self.sort_buffer]
                      if (e := self._encode(s, rng, augment)) is not None]
            yield from sorted(window, key=lambda e: len(e.ids)) if self.train else window

    def _encode(self, sample: Sample, rng, augment) -> Example | None:
        record = sample.record
        try:
            example = self.encoder.encode(sample, rng, augment)
        except (ValueError, KeyError, IndexError) as err:
            self.skipped.add("encode", f"{record.source}:{record.line}: {record.key}: {err}")
            return None
        if len(example.ids) > self.config.train.max_seq_len:
            self.skipped.add("too long", f"{record.source}:{record.line}: {record.key}: "
                             f"{len(example.ids)} positions > max_seq_len {self.config.train.max_seq_len}")
            return None
        return example

    def batches(self, samples: Iterable[Sample], epoch: int = 0, scale: float = 1.0) -> Iterator[Batch]:
        """Dynamic batches within the config's token and frame limits, both multiplied by ``scale``."""
        train = self.config.train
        yield from dynamic_batches(self.examples(samples, epoch), round(train.max_tokens_in_batch * scale),
                                   round(train.max_frames_in_batch * scale), self.encoder.ids.pad)
