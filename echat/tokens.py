"""The one place for task tags, output types, special tokens and ids, think markers and label sets.

Nothing else in echat spells a task tag, a special id or a label literally: it imports it from here
(ids that depend on the preset are derived from the config and the tokenizer by :class:`SpecialIds`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, IntEnum

from echat.config import ThinkMode

# --- ChatML and think markers (plain text in the reference, not special tokens) ----------------
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # text EOS: ends every label and switches generation to the speech phase
ENDOFTEXT = "<|endoftext|>"
CHATML_SPECIALS = (ENDOFTEXT, IM_START, IM_END)
THINK_OPEN = "<think>"
THINK_CLOSE = "<think end>"
UNKNOWN_TAG = "<&&>"  # "unknown" label value; its middle piece is excluded from the loss
UNKNOWN_PIECE = "&&"

# --- Task tags ---------------------------------------------------------------------------------
TRANSCRIBE = "<TRANSCRIBE>"
S2TCHAT = "<S2TCHAT>"
TEXT2TOKEN = "<TEXT2TOKEN>"
TEXT2TEXT = "<TEXT2TEXT>"
THINK = "<THINK>"
THINKER = "<THINKER>"
HISTORY = "<HISTORY>"
STREAMING = "<STREAMING>"
S2TCHAT_FAKE = "<S2TCHAT_FAKE>"
# Tags that may be combined freely into an understanding task ("ASR+P"), e.g. "<TRANSCRIBE> <AGE>".
UNDERSTANDING_TAGS = (
    TRANSCRIBE, "<EMOTION>", "<AGE>", "<GENDER>", "<CAPTION>", "<STYLE>",
    "<ALIGN>", "<PUNCTUATION>", "<AUDIO>", S2TCHAT,
)


class OutputType(str, Enum):
    """What the model emits for a task; batches never mix output types (reference names)."""

    TEXT = "text"  # ASR / ASR+P / only-P understanding, with an instruction prompt
    S2T_CHAT = "s2t_chat"
    S2T_CHAT_FAKE = "s2t_chat_fake"
    S2T_THINK = "s2t_chat_think"
    T2T = "text2text"
    TTS = "text2token"
    TTS_STREAMING = "text2token_streaming"
    S2S = "speech2text_token"
    S2S_THINK = "speech2text_token_think"
    S2S_HISTORY = "speech2text_token_history"
    S2S_STREAMING = "speech2text_token_streaming"

    @property
    def speech_in(self) -> bool:
        return self not in (OutputType.T2T, OutputType.TTS, OutputType.TTS_STREAMING)

    @property
    def speech_out(self) -> bool:
        return self in SPEECH_OUTPUT_TYPES

    @property
    def text_out(self) -> bool:
        return self not in (OutputType.TTS,)

    @property
    def thinks(self) -> bool:
        return self in (OutputType.S2T_THINK, OutputType.S2S_THINK)


SPEECH_OUTPUT_TYPES = frozenset({
    OutputType.TTS, OutputType.TTS_STREAMING, OutputType.S2S, OutputType.S2S_THINK,
    OutputType.S2S_HISTORY, OutputType.S2S_STREAMING,
})

# Task tag -> output type, as the reference dataloader routes them (its section 4.1).
CHAT_TASKS: dict[str, OutputType] = {
    TEXT2TOKEN: OutputType.TTS,
    f"{TEXT2TOKEN} {STREAMING}": OutputType.TTS_STREAMING,
    f"{S2TCHAT} {TEXT2TOKEN}": OutputType.S2S,
    f"{S2TCHAT} {TEXT2TOKEN} {STREAMING}": OutputType.S2S_STREAMING,
    f"{S2TCHAT} {TEXT2TOKEN} {THINK}": OutputType.S2S_THINK,
    f"{S2TCHAT} {TEXT2TOKEN} {HISTORY}": OutputType.S2S_HISTORY,
    TEXT2TEXT: OutputType.T2T,
    S2TCHAT: OutputType.S2T_CHAT,
    S2TCHAT_FAKE: OutputType.S2T_CHAT_FAKE,
    f"{S2TCHAT} {THINKER}": OutputType.S2T_THINK,
}
# Spellings the reference rewrites before routing.
TASK_ALIASES = {
    "TEXT2TOKEN": TEXT2TOKEN,
    "<Speech2TEXTandTOKEN>": f"{S2TCHAT} {TEXT2TOKEN}",
    f"{S2TCHAT} {TEXT2TOKEN} <EMOTION>": f"{S2TCHAT} {TEXT2TOKEN}",
}
# Think tasks fall back to these when a model is trained or run without thinking (think="none").
WITHOUT_THINK = {OutputType.S2T_THINK: OutputType.S2T_CHAT, OutputType.S2S_THINK: OutputType.S2S}


def task_for(speech_out: bool, think: ThinkMode) -> str:
    """The chat task of a spoken user turn: a spoken (``speech_out``) or a text reply, with a think block
    unless ``think`` is none. Both think modes share the task and the prompt (as in the reference): the
    checkpoint's training decides whether the think is tags or language."""
    if ThinkMode(think) is ThinkMode.NONE:
        return f"{S2TCHAT} {TEXT2TOKEN}" if speech_out else S2TCHAT
    return f"{S2TCHAT} {TEXT2TOKEN} {THINK}" if speech_out else f"{S2TCHAT} {THINKER}"

_TAG = re.compile(r"<[^<>\s]+>")


class UnknownTaskError(ValueError):
    """A task string that is neither a chat task nor a combination of understanding tags."""


def normalize_task(task: str | None) -> str:
    """Canonical spelling of a task string: single spaces, reference aliases applied.

    A missing task is ``<TRANSCRIBE>``, as in the reference.
    """
    if not task or not task.strip():
        return TRANSCRIBE
    task = " ".join(task.split())
    return TASK_ALIASES.get(task, task)


def output_type(task: str | None) -> OutputType:
    """Output type of a task string; raises :class:`UnknownTaskError` for unknown tags."""
    task = normalize_task(task)
    if task in CHAT_TASKS:
        return CHAT_TASKS[task]
    parts = task.split(" ")
    unknown = [p for p in parts if p not in UNDERSTANDING_TAGS]
    if unknown or not all(_TAG.fullmatch(p) for p in parts):
        raise UnknownTaskError(f"unknown task {task!r} (unknown tag(s): {', '.join(unknown) or task})")
    return OutputType.TEXT


def is_only_p(task: str) -> bool:
    """True for understanding tasks that output tags only (no transcript), e.g. ``<AGE> <GENDER>``."""
    return output_type(task) is OutputType.TEXT and TRANSCRIBE not in normalize_task(task).split(" ")


# --- Label sets (reference spellings) ----------------------------------------------------------
AGES = ("<CHILD>", "<ADULT>", "<OLD>")
AGE_ALIASES = {"<YOUTH>": "<ADULT>", "<MIDDLE_AGE>": "<ADULT>", "<MIDDLE>": "<ADULT>"}
GENDERS = ("<MALE>", "<FEMALE>")
USER_EMOTIONS = ("<NEUTRAL>", "<HAPPY>", "<SAD>", "<ANGRY>", "<FEAR>", "<SURPRISE>", "<DISGUST>")
EMOTION_ALIASES = {"<ANGER>": "<ANGRY>"}
# Non-speech sound events ("caption"); <OTHER> is the reference default and means "no event".
NO_EVENT = "<OTHER>"
SOUND_EVENTS = ("<LAUGH>", "<COUGH>", "<CRY>", "<SIGH>", "<SNEEZE>", "<THROAT_CLEARING>", "<SCREAM>", NO_EVENT)
# Reply emotions of the tag-think model (reference, Chinese) and their English names (mini world).
REPLY_EMOTION_PAIRS = (
    ("<愉悦>", "<DELIGHTED>"), ("<抱歉>", "<SORRY>"), ("<开心>", "<HAPPY>"), ("<愤怒>", "<ANGRY>"),
    ("<惊讶>", "<SURPRISED>"), ("<厌恶>", "<DISGUSTED>"), ("<悲伤>", "<SAD>"), ("<害怕>", "<AFRAID>"),
    ("<哭腔>", "<TEARFUL>"), ("<安慰鼓励>", "<COMFORTING>"), ("<中立>", "<NEUTRAL>"),
)
REPLY_EMOTIONS = {
    "reference": tuple(zh for zh, _ in REPLY_EMOTION_PAIRS),
    "mini": tuple(en for _, en in REPLY_EMOTION_PAIRS),
}
NEUTRAL_REPLY = {"reference": "<中立>", "mini": "<NEUTRAL>"}
# Defaults the tag think uses for a missing field when it does not write <&&>.
FIELD_DEFAULTS = {"emotion": "<NEUTRAL>", "age": "<ADULT>", "gender": "<MALE>", "event": NO_EVENT}
LABEL_SETS = {"age": AGES, "gender": GENDERS, "emotion": USER_EMOTIONS, "event": SOUND_EVENTS}
# Cue field -> the key of a record's ``extra`` that holds its label, in the order a token adapter spells
# the cue tags after the transcript (and the default order of its cue frames, AdapterConfig.cue_frames).
CUE_FIELDS = {"gender": "gender", "age": "age", "emotion": "q_emotion", "event": "caption"}
# Understanding task tag -> the cue field its answer tag reports.
FIELD_OF_TASK_TAG = {"<GENDER>": "gender", "<AGE>": "age", "<EMOTION>": "emotion", "<CAPTION>": "event"}
THINK_FIELDS = ("age", "gender", "emotion", "event")  # the order the tag think reports them (prompts._TAG_THINK)


def asked_fields(task: str, thinks: bool = False) -> tuple[str, ...]:
    """The cue fields an answer to ``task`` reports, in the order it reports them: the task's own tags
    (``<TRANSCRIBE> <EMOTION> <AGE>`` -> emotion, age), or with a think all four in the think's order."""
    if thinks:
        return THINK_FIELDS
    return tuple(FIELD_OF_TASK_TAG[p] for p in normalize_task(task).split(" ") if p in FIELD_OF_TASK_TAG)


# In a pack layout (:func:`pack_layout`), the block of the transcript's tokens (cue fields are 0..3).
WORDS_BLOCK = len(CUE_FIELDS)
# In a pack layout with the answer's end (``AdapterConfig.end_frame``): one frame of the text EOS row.
END_BLOCK = WORDS_BLOCK + 1
# The task-agnostic layout: the transcript, then the cue frames in CUE_FIELDS order.
PLAIN_PACK_LAYOUT = (WORDS_BLOCK, *range(len(CUE_FIELDS)))
# Every cue-label tag of the four fields (LABEL_SETS order).
CUE_LABEL_TAGS = tuple(tag for labels in LABEL_SETS.values() for tag in labels)


def plain_pack_layout(end_frame: bool = False) -> tuple[int, ...]:
    """:data:`PLAIN_PACK_LAYOUT`, with ``end_frame`` followed by the answer's end (:data:`END_BLOCK`)."""
    return (*PLAIN_PACK_LAYOUT, END_BLOCK) if end_frame else PLAIN_PACK_LAYOUT


def pack_layout(task: str, thinks: bool = False, end_frame: bool = False) -> tuple[int, ...]:
    """The blocks of a token pack in the order an adapter with ``task_ordered_cues`` lays them out for
    ``task``: indices into :data:`CUE_FIELDS` for cue frames and :data:`WORDS_BLOCK` for the transcript.
    The packed frames follow the answer: the fields it reports in its order, then the others (CUE_FIELDS
    order); the transcript first, unless the answer starts with the tags (only-P), where it comes after
    the reported fields. The LLM then answers by copying the pack from its start, as it copies a
    transcript (docs/hearing.md, E65-E67). With ``end_frame`` the answer's end (:data:`END_BLOCK`) follows
    what an understanding answer reports, so that the LLM also stops by copying; for other tasks, whose
    answer is not the pack, it comes last.

    >>> pack_layout("<TRANSCRIBE> <EMOTION>"), pack_layout("<GENDER>")
    ((4, 2, 0, 1, 3), (0, 4, 1, 2, 3))
    >>> pack_layout("<AGE> <GENDER>", end_frame=True), pack_layout("<TRANSCRIBE>", end_frame=True)
    ((1, 0, 5, 4, 2, 3), (4, 5, 0, 1, 2, 3))
    """
    names = list(CUE_FIELDS)
    asked = asked_fields(task, thinks)
    fields = [names.index(n) for n in (*asked, *[n for n in names if n not in asked])]
    copied = output_type(task) is OutputType.TEXT and not thinks
    lead = len(asked) if is_only_p(task) and not thinks else 0
    blocks = [*fields[:lead], WORDS_BLOCK, *fields[lead:]]
    if end_frame:
        answered = len(asked) + (0 if lead else 1)  # the asked tags, and the transcript unless only-P
        blocks.insert(answered if copied else len(blocks), END_BLOCK)
    return tuple(blocks)


# Every English label tag: the mini tokenizer makes each one token, so a cue answer is one decision.
MINI_LABEL_TAGS = tuple(dict.fromkeys((*AGES, *GENDERS, *USER_EMOTIONS, *SOUND_EVENTS, *REPLY_EMOTIONS["mini"])))


def as_tag(value: str) -> str:
    """``HAPPY`` -> ``<HAPPY>``; values already in angle brackets are kept (reference rule)."""
    value = value.strip()
    return value if value.startswith("<") and value.endswith(">") else f"<{value}>"


def canonical_label(field: str, value: str) -> str:
    """Tag spelling for ``field`` (age/gender/emotion/event) with the reference's aliases folded."""
    tag = as_tag(value).upper() if field != "event" else as_tag(value).upper().replace(" ", "_")
    return {**AGE_ALIASES, **EMOTION_ALIASES}.get(tag, tag)


class Stream(IntEnum):
    """Which table embeds a sequence position: text ids, speech ids, or encoder frames (filled by the adapter)."""

    TEXT = 0
    SPEECH = 1
    AUDIO = 2


IGNORE_INDEX = -100  # label of positions outside the loss


# --- Ids ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecialIds:
    """Every special id one model uses, derived from its config and its text tokenizer.

    ``text_vocab`` is the size of the text head; combined labels put speech id ``s`` at
    ``text_vocab + s`` (one softmax over text and speech classes, as in the reference).
    """

    im_start: int
    im_end: int  # text EOS
    pad: int
    unknown: int  # the "&&" piece of <&&>: never a loss target
    text_vocab: int
    speech_boundary: int
    audio_bos: int
    audio_eos: int
    speech_head: int

    @classmethod
    def build(cls, config, tokenizer) -> SpecialIds:
        """From an :class:`~echat.config.EChatConfig` and a transformers tokenizer."""
        unknown = tokenizer.convert_tokens_to_ids(UNKNOWN_PIECE)
        if unknown is None or unknown == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no single token for {UNKNOWN_PIECE!r}")
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        return cls(
            im_start=tokenizer.convert_tokens_to_ids(IM_START),
            im_end=im_end,
            pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else im_end,
            unknown=unknown,
            text_vocab=config.llm.vocab_size,
            speech_boundary=config.speech.boundary_id,
            audio_bos=config.speech.audio_bos_id,
            audio_eos=config.speech.audio_eos_id,
            speech_head=config.speech.head_size,
        )


def split_speech_output(ids: list[int], text_eos: int, boundary: int) -> tuple[list[int], list[int]]:
    """Split generated S2S ids ``text.. <|im_end|> B s.. B`` into (text ids, speech tokens).

    Keeps every text token before ``<|im_end|>`` (the reference drops the last one) and strips both
    boundaries. If no ``<|im_end|>`` was produced, everything is text and there is no speech.
    """
    if text_eos not in ids:
        return list(ids), []
    cut = ids.index(text_eos)
    text, speech = list(ids[:cut]), list(ids[cut + 1:])
    if speech and speech[0] == boundary:
        speech = speech[1:]
    if boundary in speech:
        speech = speech[: speech.index(boundary)]
    return text, speech
