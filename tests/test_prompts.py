"""System prompts, the CoT formatter (byte-exact against the reference) and the shared layout builder."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from echat.prompts import (
    ASSISTANT_HEADER,
    SYSTEM_PROMPT_OF,
    USER_HEADER,
    Cues,
    Turn,
    build_layout,
    chat_label,
    default_options,
    format_reply,
    instruction_prompts,
    parse_reply,
    system_prompt,
)
from echat.tokens import IM_END, REPLY_EMOTIONS, THINK_CLOSE, OutputType


class AlwaysUnknown(random.Random):
    def random(self):
        return 0.0


class NeverUnknown(random.Random):
    def random(self):
        return 0.99


def test_tag_think_label_is_byte_exact_against_the_reference_example():
    cues = Cues(transcript="你好", age="<ADULT>", gender="<FEMALE>")
    label = format_reply("<开心>好的呀。", "tag", "reference", cues=cues, rng=AlwaysUnknown())
    assert label == ("<think>用户说的话是:你好,年龄为:<ADULT>,性别为:<FEMALE>,情感为:<&&>,声音事件为:<&&>,"
                     "推测使用的回复情感为:<开心>,我应该综合用户的语义和副语言信息给出专业且对应的回答"
                     "<think end><开心>好的呀。")


def test_tag_think_fills_missing_fields_with_defaults_in_the_other_draw():
    label = format_reply("好的呀。", "tag", "reference", cues=Cues(transcript="你好"), rng=NeverUnknown())
    assert "年龄为:<ADULT>,性别为:<MALE>,情感为:<NEUTRAL>,声音事件为:<OTHER>,推测使用的回复情感为:<中立>" in label
    assert label.endswith("<think end><中立>好的呀。")


def test_tag_think_wraps_bare_values_and_replaces_unknown_reply_tags():
    cues = Cues(transcript="hi", age="CHILD", gender="MALE", emotion="happy", event="<LAUGH>")
    label = format_reply("<WHATEVER>Hi!", "tag", "mini", cues=cues)
    assert label == ("<think>user said:hi,age:<CHILD>,gender:<MALE>,emotion:<HAPPY>,sound event:<LAUGH>,"
                     "reply emotion:<NEUTRAL>,I should combine the user's words and vocal cues to give a "
                     "professional and fitting answer<think end><NEUTRAL>Hi!")


def test_language_think_label_is_byte_exact_against_the_reference_example():
    label = format_reply("<开心>好的呀。", "language", "reference", think_text="用户是成年女性")
    assert label == "<think>用户是成年女性<think end>好的呀。"


def test_language_think_without_a_think_text_is_a_clear_error():
    with pytest.raises(ValueError, match="think_str"):
        format_reply("hi", "language", "mini")


def test_bug1_only_x_understanding_layout_keeps_the_label_tags():
    """The layout keeps them; tests/data/test_pipeline.py checks the encoded targets in every think mode."""
    segments = build_layout(OutputType.TEXT, "mini", label="<CHILD><MALE>", instruction="Give tags.")
    assert [s.text for s in segments if s.loss] == ["<CHILD><MALE>", IM_END]


def test_bug2_history_keeps_speech_tokens_and_has_a_single_im_end_per_turn():
    history = (Turn(0, "Hello there.", (3, 4)), Turn(1, "How are you?", ()))
    segs = build_layout(OutputType.S2S_HISTORY, "mini", label="Fine.", speech=(7,), boundary=64,
                        history=history, audio_clip=2)
    flat = "".join(s.text if s.kind == "text" else f"[{s.kind}{s.clip}{s.tokens}]" for s in segs)
    assert f"{IM_END}{IM_END}" not in flat
    assert "[speech-1(64, 3, 4, 64)]" in flat
    assert [s.clip for s in segs if s.kind == "audio"] == [0, 1, 2]
    assert not any(s.loss for s in segs[: segs.index(next(s for s in segs if s.clip == 2))])


@pytest.mark.parametrize("kind", list(SYSTEM_PROMPT_OF))
def test_bug4_inference_layout_is_exactly_the_training_prefix(kind):
    train = build_layout(kind, "reference", label="x", speech=(1, 2), boundary=9, instruction="转录如下音频。")
    infer = build_layout(kind, "reference", boundary=9, instruction="转录如下音频。")
    assert train[: len(infer)] == infer
    assert all(not s.loss for s in infer) and infer[-1].text == ASSISTANT_HEADER
    assert infer[0].text == system_prompt(kind, "reference") + USER_HEADER


def test_bug4_mini_think_prompts_name_the_close_marker_the_labels_use():
    for key in ("s2s_think", "s2t_thinking"):
        assert THINK_CLOSE in system_prompt(OutputType.S2S_THINK if key == "s2s_think" else OutputType.S2T_THINK,
                                            "mini")


def test_bug5_decoding_phase_and_defaults_are_per_output_type_not_state():
    tts = build_layout(OutputType.TTS, "mini", speech=(1,), text_in="hi", boundary=9)
    t2t = build_layout(OutputType.T2T, "mini", label="ok", text_in="hi", boundary=9)
    assert [s.kind for s in tts if s.loss] == ["speech"]
    assert [s.kind for s in t2t if s.loss] == ["text", "text"]
    assert default_options(OutputType.T2T).do_sample is False
    assert default_options(OutputType.TTS).top_k == 15 and default_options(OutputType.S2S).top_k == 10


def test_reference_decoding_defaults():
    s2s = default_options(OutputType.S2S_THINK)
    assert (s2s.top_k, s2s.top_p, s2s.temperature) == (10, 0.9, 1.2)
    tts = default_options(OutputType.TTS)
    assert (tts.top_k, tts.top_p, tts.temperature) == (15, 0.8, 1.2)
    s2t = default_options(OutputType.S2T_CHAT)
    assert (s2t.top_k, s2t.temperature) == (2, 0.4)
    asr = default_options(OutputType.TEXT)
    assert (asr.top_k, asr.top_p) == (5, 0.9)


@pytest.mark.parametrize("kind, tokens", [(OutputType.S2S, 50), (OutputType.TEXT, 42), (OutputType.TTS, 33)])
def test_full_preset_system_prompts_tokenize_to_the_reference_lengths(qwen, kind, tokens):
    text = system_prompt(kind, "reference") + USER_HEADER
    assert len(qwen(text, add_special_tokens=False)["input_ids"]) == tokens


def test_instruction_prompts_exist_for_every_understanding_combination():
    for task in ("<TRANSCRIBE>", "<EMOTION>", "<TRANSCRIBE> <CAPTION> <AGE> <GENDER>", "<AGE> <GENDER>"):
        for prompt_set in ("reference", "mini"):
            assert instruction_prompts(task, prompt_set)
    assert instruction_prompts("<TRANSCRIBE>", "reference")[0] == "转录如下音频。"


def test_plain_chat_labels_keep_the_reply_tag_only_in_the_tag_world():
    assert chat_label("<SAD>Oh no.", OutputType.S2S, "tag", "mini") == "<SAD>Oh no."
    assert chat_label("<SAD>Oh no.", OutputType.S2S, "language", "mini") == "Oh no."


_text = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), min_size=1, max_size=30)
_label = st.sampled_from(["<CHILD>", "<ADULT>", "<OLD>", "<MALE>", "<HAPPY>", None])


@given(reply=_text, transcript=_text.filter(lambda t: "," not in t and ":" not in t), age=_label, gender=_label,
       prompt_set=st.sampled_from(["reference", "mini"]), mode=st.sampled_from(["none", "tag", "language"]),
       emotion_index=st.integers(0, 10), seed=st.integers(0, 10))
def test_formatted_replies_parse_back(reply, transcript, age, gender, prompt_set, mode, emotion_index, seed):
    emotion = REPLY_EMOTIONS[prompt_set][emotion_index]
    cues = Cues(transcript=transcript, age=age, gender=gender)
    label = format_reply(emotion + reply, mode, prompt_set, cues=cues, think_text="thinking.",
                         rng=random.Random(seed))
    parsed = parse_reply(label, prompt_set)
    assert parsed.well_formed and parsed.reply == reply.strip()
    if mode == "tag":
        assert parsed.reply_emotion == emotion
        assert parsed.fields["transcript"] == transcript and parsed.fields["reply_emotion"] == emotion
    if mode == "language":
        assert parsed.think == "thinking."


def test_parse_flags_an_unclosed_think_block():
    assert not parse_reply("<think>user said: hi, age:", "mini").well_formed
