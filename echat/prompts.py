"""System prompts, instruction prompts, the CoT (think) formatter and the sequence layout per task.

Two prompt sets exist:
- ``reference``: the released OSUM-EChat strings, verbatim (the checkpoints were trained on them),
  Chinese instruction prompts and the Chinese tag-think wording;
- ``mini``: their English meaning for the EChat-mini world, naming the real close marker.

One layout builder (:func:`build_layout`) serves training *and* inference, so the two can never
drift apart (reference bug 4), and multi-turn history has a single ChatML form (reference bug 2).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Literal

from echat.config import GenerationOptions, ThinkMode
from echat.tokens import (
    CUE_FIELDS,
    FIELD_DEFAULTS,
    IM_END,
    IM_START,
    NEUTRAL_REPLY,
    REPLY_EMOTIONS,
    THINK_CLOSE,
    THINK_OPEN,
    TRANSCRIBE,
    UNKNOWN_TAG,
    WITHOUT_THINK,
    OutputType,
    canonical_label,
    normalize_task,
    output_type,
)

PromptSet = Literal["reference", "mini"]

SYSTEM_PROMPTS: dict[str, dict[str, str]] = {
    "reference": {
        "s2s": "You are OSUM-chat, a speech-to-speech dialogue assistant by ASLP Lab. You understand both "
        "the meaning and paralinguistic cues in speech then respond with appropriate text and emotionally "
        "matching synthetic speech.",
        "s2s_think": "You are OSUM-chat, a speech-to-speech dialogue assistant by ASLP Lab. You understand "
        "both the meaning and paralinguistic cues in speech. Before responding, first output your reasoning "
        "inside <think>...</think end>, analyzing the user\u2019s words and vocal cues. Then generate a reply "
        "with appropriate text and emotionally matched synthetic speech.",
        "s2s_streaming": "You are OSUM-chat, a speech-to-speech dialogue assistant by ASLP Lab. You analyze "
        "speech (content + paralinguistic cues) and respond with interleaved text and emotionally-matched "
        "synthetic speech.",
        "s2t": "You are OSUM-chat, a speech-to-text dialogue assistant by ASLP Lab. You understand both the "
        "meaning and paralinguistic cues in speech then respond exclusively with appropriate text.",
        "s2t_thinking": "You are OSUM-chat, a thinking-enabled speech-to-text dialogue assistant by ASLP Lab. "
        "You not only comprehend the semantic meaning and paralinguistic cues in speech but also engage in "
        "deliberate reasoning to process such information. Based on this thinking process, you then respond "
        "exclusively with appropriate text.",
        "t2t": "You are OSUM-chat, a text-to-text dialogue assistant by ASLP Lab. You understand user input in "
        "text then respond exclusively with appropriate text.",
        "understand": "You are OSUM-chat, an audio understanding assistant by ASLP Lab. You can transcribe "
        "speech accurately and analyze paralinguistic cues to provide precise text responses.",
        "tts": "You are OSUM-chat, a speech synthesis assistant by ASLP Lab. You generate natural and fluent "
        "speech from text input.",
        "tts_streaming": "You are OSUM-chat, a speech synthesis assistant by ASLP Lab. You generate natural "
        "speech from text input and output both audio and the original text in interleaved format.",
    },
    "mini": {
        "s2s": "You are EChat-mini, a speech-to-speech assistant. Hear what is said and how, then reply "
        "with fitting text and speech.",
        "s2s_think": "You are EChat-mini, a speech-to-speech assistant. First reason inside "
        "<think>...<think end> about the words and the voice, then reply with fitting text and speech.",
        "s2s_streaming": "You are EChat-mini, a speech-to-speech assistant. Reply with interleaved text "
        "and speech.",
        "s2t": "You are EChat-mini, a speech-to-text assistant. Hear what is said and how, then reply "
        "with fitting text.",
        "s2t_thinking": "You are EChat-mini, a thinking speech-to-text assistant. First reason inside "
        "<think>...<think end> about the words and the voice, then reply with fitting text.",
        "t2t": "You are EChat-mini, a text assistant. Reply to the user's text with fitting text.",
        "understand": "You are EChat-mini, an audio understanding assistant. Transcribe speech and "
        "describe its paralinguistic cues precisely.",
        "tts": "You are EChat-mini, a speech synthesis assistant. Speak the given text naturally.",
        "tts_streaming": "You are EChat-mini, a speech synthesis assistant. Speak the given text, "
        "interleaving text and speech.",
    },
}

# Output type -> system prompt key (reference mapping, section 4.2).
SYSTEM_PROMPT_OF = {
    OutputType.S2T_CHAT: "s2t",
    OutputType.S2T_CHAT_FAKE: "s2s_think",
    OutputType.S2T_THINK: "s2t_thinking",
    OutputType.TEXT: "understand",
    OutputType.S2S: "s2s",
    OutputType.S2S_HISTORY: "s2s",
    OutputType.S2S_THINK: "s2s_think",
    OutputType.S2S_STREAMING: "s2s_streaming",
    OutputType.TTS: "tts",
    OutputType.TTS_STREAMING: "tts_streaming",
    OutputType.T2T: "t2t",
}

# Instruction prompts of understanding tasks. The reference draws one at random from 2,859 Chinese
# prompts (conf/prompt_config.yaml, not redistributed here): we ship its first entry per task where
# known and compose the rest from parts; `load_instruction_prompts` reads the real file.
_ZH_KNOWN = {
    "<TRANSCRIBE>": ("转录如下音频。", "将这段音频的语音内容详细记录为文字稿。"),
    "<TRANSCRIBE> <S2TCHAT>": (
        "首先将语音转录为文字，然后对语音内容以文字的形式进行回复，转录和文字之间使用<开始回答>分割。",),
    "<TRANSCRIBE> <EMOTION>": ("请将以下音频内容进行转录，并在结尾处给出情感标签,以<>表示。",),
    "<EMOTION>": ("请辨认以下音频中发言者的情感，并用<>括住情感标签。",),
    "<AGE>": ("判断下列语音中说话者的年龄，并提供一个年龄标签，标签格式为<>。",),
}
_PART_NAMES = {
    "reference": {"<EMOTION>": "情感", "<AGE>": "年龄", "<GENDER>": "性别", "<CAPTION>": "声音事件",
                  "<STYLE>": "风格"},
    "mini": {"<EMOTION>": "emotion", "<AGE>": "age", "<GENDER>": "gender", "<CAPTION>": "sound event",
             "<STYLE>": "style"},
}
_MINI_TEMPLATES = {
    "transcribe": ("Transcribe the speech.", "Write down what is said.", "Transcribe this audio."),
    "transcribe_tags": ("Transcribe the speech, then give the {parts} tags.",
                        "Write down what is said and add {parts} tags at the end."),
    "tags": ("Give the speaker's {parts} tags.", "What are the {parts} of the speaker? Answer with tags."),
}


def system_prompt(kind: OutputType, prompt_set: PromptSet) -> str:
    """The full system turn, ``<|im_start|>system\\n...<|im_end|>\\n`` (no user header)."""
    return f"{IM_START}system\n{SYSTEM_PROMPTS[prompt_set][SYSTEM_PROMPT_OF[kind]]}{IM_END}\n"


def instruction_prompts(task: str, prompt_set: PromptSet, table: dict | None = None) -> tuple[str, ...]:
    """Candidate instructions for an understanding task (one is drawn per sample)."""
    task = normalize_task(task)
    if table and task in table:
        return tuple(table[task])
    if prompt_set == "reference" and task in _ZH_KNOWN:
        return _ZH_KNOWN[task]
    parts = [p for p in task.split(" ") if p in _PART_NAMES[prompt_set]]
    names = [_PART_NAMES[prompt_set][p] for p in parts]
    transcribe = TRANSCRIBE in task.split(" ")
    if prompt_set == "reference":
        joined = "、".join(names)
        return (f"请转录这段音频，并在结尾给出{joined}标签，以<>表示。" if transcribe and names
                else f"请判断这段音频中说话者的{joined}，并用<>给出标签。" if names else _ZH_KNOWN[TRANSCRIBE])
    key = "transcribe_tags" if transcribe and names else "tags" if names else "transcribe"
    return tuple(t.format(parts=", ".join(names)) for t in _MINI_TEMPLATES[key])


def load_instruction_prompts(path: str) -> dict[str, tuple[str, ...]]:
    """Read the reference's ``conf/prompt_config.yaml`` (task -> list of prompts)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of task -> list of prompts")
    return {normalize_task(k): tuple(v) for k, v in data.items()}


# ----------------------------------------------------------------------------------------------
# The think (CoT) formatter
# ----------------------------------------------------------------------------------------------

_TAG_THINK = {
    "reference": ("用户说的话是:{transcript},年龄为:{age},性别为:{gender},情感为:{emotion},声音事件为:{event},"
                  "推测使用的回复情感为:{reply_emotion},我应该综合用户的语义和副语言信息给出专业且对应的回答"),
    "mini": ("user said:{transcript},age:{age},gender:{gender},emotion:{emotion},sound event:{event},"
             "reply emotion:{reply_emotion},I should combine the user's words and vocal cues to give a "
             "professional and fitting answer"),
}


# The reference's OSUM_chat_LogitsProcessor: once per generation, right after the think's "年龄为:<" only these
# may follow (the unknown <&&> is not an age the tag-think model may write). Token strings, resolved through the
# tokenizer: with Qwen2.5's, 102185 17714 31252 -> 99119, 1808, 7863, the reference's ids.
AGE_CHOICE = ("年龄为:<", ("CHILD", "AD", "OLD"))


def prompt_texts(prompt_set: PromptSet) -> list[str]:
    """Every fixed text of a prompt set (system prompts, think template, instructions): what a
    tokenizer must cover before any corpus text is seen."""
    texts = [*SYSTEM_PROMPTS[prompt_set].values(), _TAG_THINK[prompt_set]]
    if prompt_set == "mini":
        texts += [t for group in _MINI_TEMPLATES.values() for t in group]
    return texts


_LEADING_TAG = re.compile(r"^\s*(<[^<>]+>)")


@dataclass(frozen=True)
class Cues:
    """What the think block reports about the user turn; ``None`` = unknown."""

    transcript: str = ""
    age: str | None = None
    gender: str | None = None
    emotion: str | None = None
    event: str | None = None

    @classmethod
    def from_extra(cls, extra: dict) -> Cues:
        """From a record's ``extra`` (reference field names: q_txt/question, age, gender, q_emotion, caption)."""
        return cls(
            transcript=str(extra.get("q_txt") or extra.get("question") or ""),
            age=extra.get(CUE_FIELDS["age"]) or None,
            gender=extra.get(CUE_FIELDS["gender"]) or None,
            emotion=extra.get(CUE_FIELDS["emotion"]) or None,
            event=extra.get(CUE_FIELDS["event"]) or None,
        )


def split_reply_tag(reply: str, prompt_set: PromptSet) -> tuple[str, str]:
    """``"<HAPPY>Great!"`` -> (``"<HAPPY>"``, ``"Great!"``); an absent or unknown tag becomes neutral."""
    match = _LEADING_TAG.match(reply)
    if not match:
        return NEUTRAL_REPLY[prompt_set], reply.strip()
    tag, rest = match.group(1), reply[match.end():].strip()
    return (tag if tag in REPLY_EMOTIONS[prompt_set] else NEUTRAL_REPLY[prompt_set]), rest


def tag_think_body(cues: Cues, reply_emotion: str, prompt_set: PromptSet, unknown: bool) -> str:
    """The tag think text between the markers; missing fields are ``<&&>`` if ``unknown`` else defaults."""
    def value(name: str) -> str:
        raw = getattr(cues, name)
        if raw:
            return canonical_label(name, raw)
        return UNKNOWN_TAG if unknown else FIELD_DEFAULTS[name]

    return _TAG_THINK[prompt_set].format(
        transcript=cues.transcript, age=value("age"), gender=value("gender"), emotion=value("emotion"),
        event=value("event"), reply_emotion=reply_emotion,
    )


def format_reply(reply: str, think: ThinkMode | str, prompt_set: PromptSet, *, cues: Cues | None = None,
                 think_text: str = "", rng: random.Random | None = None, unknown_prob: float = 0.85) -> str:
    """The assistant's text for a chat task under a think mode (label text, without ``<|im_end|>``).

    - ``none``: the reply without its emotion tag;
    - ``tag``: ``<think>{fields}<think end>{<reply-emotion>}{reply}`` (reference tag-think layout);
    - ``language``: ``<think>{think_text}<think end>{reply}`` (reference language-think layout).
    For ``tag``, one draw per sample decides whether missing fields read ``<&&>`` (``unknown_prob``)
    or the defaults, as in the reference.
    """
    emotion, text = split_reply_tag(reply, prompt_set)
    if think == ThinkMode.NONE:
        return text
    if think == ThinkMode.LANGUAGE:
        if not think_text:
            raise ValueError("language think needs a think text (extra.think_str)")
        return f"{THINK_OPEN}{think_text}{THINK_CLOSE}{text}"
    if think != ThinkMode.TAG:
        raise ValueError(f"unknown think mode {think!r}; choose none, tag or language")
    unknown = (rng or random.Random(0)).random() < unknown_prob
    body = tag_think_body(cues or Cues(), emotion, prompt_set, unknown)
    return f"{THINK_OPEN}{body}{THINK_CLOSE}{emotion}{text}"


def chat_label(reply: str, kind: OutputType, think: ThinkMode | str, prompt_set: PromptSet, **think_args) -> str:
    """Label text of a chat output type: think tasks get the think block; in the tag-think world the
    plain chat tasks keep their leading reply-emotion tag (as the reference's tag processor does)."""
    if kind.thinks:
        return format_reply(reply, think, prompt_set, **think_args)
    emotion, text = split_reply_tag(reply, prompt_set)
    return emotion + text if think == ThinkMode.TAG else text


@dataclass(frozen=True)
class ParsedReply:
    """A generated assistant text split into its parts; ``well_formed`` is False for a broken think."""

    think: str | None
    reply: str
    reply_emotion: str | None
    fields: dict[str, str] = field(default_factory=dict)
    well_formed: bool = True


def think_body(text: str) -> str | None:
    """The text between ``<think>`` (which must open ``text``) and ``<think end>``; None if absent."""
    if not text.startswith(THINK_OPEN) or THINK_CLOSE not in text:
        return None
    return text[len(THINK_OPEN):].split(THINK_CLOSE, 1)[0]


def think_well_formed(text: str, think: ThinkMode | str = ThinkMode.TAG, prompt_set: PromptSet = "mini") -> bool:
    """What a well-formed think is: ``text`` opens with a closed think block, and with ``think="tag"``
    its body also matches the tag-think template (:func:`parse_tag_think`)."""
    body = think_body(text)
    if body is None:
        return False
    return think != ThinkMode.TAG or bool(parse_tag_think(body, prompt_set))


def parse_reply(text: str, prompt_set: PromptSet) -> ParsedReply:
    """Inverse of :func:`format_reply` for any think mode; tolerant, reports ``well_formed``."""
    think = None
    well_formed = True
    if text.startswith(THINK_OPEN):
        think = think_body(text)
        if think is None:
            return ParsedReply(think=text[len(THINK_OPEN):], reply="", reply_emotion=None, well_formed=False)
        text = text[len(THINK_OPEN) + len(think) + len(THINK_CLOSE):]
    match = _LEADING_TAG.match(text)
    emotion = match.group(1) if match and match.group(1) in REPLY_EMOTIONS[prompt_set] else None
    reply = text[match.end():].strip() if emotion else text.strip()
    fields = parse_tag_think(think, prompt_set) if think is not None else {}
    return ParsedReply(think, reply, emotion, fields, well_formed)


def parse_tag_think(body: str, prompt_set: PromptSet) -> dict[str, str]:
    """Field values of a tag think body (empty dict if it is not in the tag layout)."""
    pattern = re.escape(_TAG_THINK[prompt_set])
    for name in ("transcript", "age", "gender", "emotion", "event", "reply_emotion"):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>.*?)")
    match = re.fullmatch(pattern, body, flags=re.S)
    return match.groupdict() if match else {}


# ----------------------------------------------------------------------------------------------
# Sequence layout
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One piece of a model sequence.

    ``text``: a string tokenised on its own; ``audio``: the encoder frames of clip ``clip`` framed by
    the audio BOS/EOS speech ids; ``speech``: speech ids (already framed by boundaries where needed).
    ``loss`` marks what the model is trained to predict.
    """

    kind: Literal["text", "audio", "speech"]
    text: str = ""
    tokens: tuple[int, ...] = ()
    clip: int = -1
    loss: bool = False


@dataclass(frozen=True)
class Turn:
    """A past dialogue turn: the user's clip index, and the assistant's reply text and speech."""

    clip: int
    reply: str
    speech: tuple[int, ...] = ()


USER_HEADER = f"{IM_START}user\n"
ASSISTANT_HEADER = f"{IM_END}\n{IM_START}assistant\n"  # the reference's "pattern2"


def effective_output_type(task: str, think: ThinkMode | str) -> OutputType:
    """Output type of ``task`` once the think mode is applied (think tasks without think fall back)."""
    kind = output_type(task)
    return WITHOUT_THINK.get(kind, kind) if think == ThinkMode.NONE else kind


def build_layout(kind: OutputType, prompt_set: PromptSet, *, label: str | None = None,
                 speech: tuple[int, ...] | None = None, boundary: int = 0, instruction: str = "",
                 text_in: str = "", history: tuple[Turn, ...] = (), audio_clip: int = 0) -> list[Segment]:
    """The segments of one sequence for output type ``kind``.

    With ``label`` (and ``speech`` for speech outputs) the targets are appended with ``loss=True``;
    without them the layout ends at the assistant header, ready for generation.
    """
    segs = [Segment("text", system_prompt(kind, prompt_set) + USER_HEADER)]
    for turn in history:
        segs += [Segment("audio", clip=turn.clip), Segment("text", ASSISTANT_HEADER + turn.reply + IM_END)]
        if turn.speech:
            segs.append(Segment("speech", tokens=(boundary, *turn.speech, boundary)))
        segs.append(Segment("text", "\n" + USER_HEADER))
    if kind is OutputType.TEXT and instruction:
        segs.append(Segment("text", instruction))
    if kind.speech_in:
        segs.append(Segment("audio", clip=audio_clip))
    else:
        segs.append(Segment("text", text_in))
    segs.append(Segment("text", ASSISTANT_HEADER))
    if kind is not OutputType.TTS and label is not None:
        segs += [Segment("text", label, loss=True), Segment("text", IM_END, loss=True)]
    if kind.speech_out and speech is not None:
        segs.append(Segment("speech", tokens=(boundary, *speech, boundary), loss=True))
    return segs


# Per-task decoding defaults, from the reference's generate* methods (section 8.2).
_SAMPLE = dict(do_sample=True)
DEFAULT_OPTIONS = {
    OutputType.TEXT: GenerationOptions(**_SAMPLE, top_k=5, top_p=0.9, temperature=1.0, repetition_penalty=1.05),
    OutputType.S2T_CHAT: GenerationOptions(**_SAMPLE, top_k=2, top_p=1.0, temperature=0.4, repetition_penalty=1.05),
    OutputType.T2T: GenerationOptions(do_sample=False, max_new_tokens=200),
    OutputType.TTS: GenerationOptions(**_SAMPLE, top_k=15, top_p=0.8, temperature=1.2),
    # The reference's SpeechOnlyNGramBlockingLogitsProcessor as meant (it never switches on there): code 1446,
    # which fills the ends of its replies' token lists, may repeat more than the others.
    OutputType.S2S: GenerationOptions(**_SAMPLE, top_k=10, top_p=0.9, temperature=1.2,
                                      speech_repeat_limit=5, speech_window=8, speech_window_limit=5,
                                      speech_token_limits=((1446, 10, 13, 10),)),
}
DEFAULT_OPTIONS[OutputType.S2T_THINK] = DEFAULT_OPTIONS[OutputType.S2T_CHAT]
DEFAULT_OPTIONS[OutputType.S2T_CHAT_FAKE] = DEFAULT_OPTIONS[OutputType.S2T_CHAT]
for _kind in (OutputType.S2S_THINK, OutputType.S2S_HISTORY, OutputType.S2S_STREAMING):
    DEFAULT_OPTIONS[_kind] = DEFAULT_OPTIONS[OutputType.S2S]
DEFAULT_OPTIONS[OutputType.TTS_STREAMING] = DEFAULT_OPTIONS[OutputType.TTS]


def default_options(kind: OutputType) -> GenerationOptions:
    """The reference's decoding settings for an output type (S2S: top_k 10, top_p 0.9, T 1.2, ...)."""
    return DEFAULT_OPTIONS[kind]

