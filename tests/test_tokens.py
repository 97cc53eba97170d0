"""Task routing, label sets, special ids and S2S output parsing."""

import pytest

from echat.config import ThinkMode, preset
from echat.tokens import (
    CHAT_TASKS,
    REPLY_EMOTION_PAIRS,
    OutputType,
    SpecialIds,
    UnknownTaskError,
    canonical_label,
    is_only_p,
    normalize_task,
    output_type,
    split_speech_output,
    task_for,
)


@pytest.mark.parametrize("task, kind", [
    ("<TEXT2TOKEN>", OutputType.TTS),
    ("TEXT2TOKEN", OutputType.TTS),
    ("<S2TCHAT> <TEXT2TOKEN>", OutputType.S2S),
    ("<Speech2TEXTandTOKEN>", OutputType.S2S),
    ("<S2TCHAT> <TEXT2TOKEN> <EMOTION>", OutputType.S2S),
    ("<S2TCHAT>  <TEXT2TOKEN>   <THINK>", OutputType.S2S_THINK),
    ("<S2TCHAT> <THINKER>", OutputType.S2T_THINK),
    ("<TEXT2TEXT>", OutputType.T2T),
    ("<TRANSCRIBE> <EMOTION> <AGE> <GENDER>", OutputType.TEXT),
    ("<AGE> <GENDER>", OutputType.TEXT),
    (None, OutputType.TEXT),
])
def test_tasks_route_to_the_reference_output_types(task, kind):
    assert output_type(task) is kind


@pytest.mark.parametrize("task", ["<FOO>", "<TRANSCRIBE> <BAR>", "TRANSCRIBE", "<S2TCHAT> <TEXT2TOKEN> <X>"])
def test_unknown_task_tags_are_rejected_with_the_tag_named(task):
    with pytest.raises(UnknownTaskError, match="unknown task"):
        output_type(task)


def test_every_chat_task_has_a_consistent_output_type():
    for task, kind in CHAT_TASKS.items():
        assert normalize_task(task) == task
        assert kind.speech_out == ("<TEXT2TOKEN>" in task)


def test_only_p_tasks_are_the_understanding_tasks_without_transcribe():
    assert is_only_p("<AGE> <GENDER>") and is_only_p("<EMOTION>")
    assert not is_only_p("<TRANSCRIBE> <AGE>") and not is_only_p("<S2TCHAT>")


def test_labels_fold_the_reference_aliases():
    assert canonical_label("age", "<MIDDLE_AGE>") == "<ADULT>"
    assert canonical_label("emotion", "anger") == "<ANGRY>"
    assert canonical_label("event", "throat clearing") == "<THROAT_CLEARING>"
    assert len({en for _, en in REPLY_EMOTION_PAIRS}) == len(REPLY_EMOTION_PAIRS) == 11


def test_bug3_s2s_parse_keeps_the_last_text_token_before_im_end():
    eos, b = 151645, 4096
    text, speech = split_speech_output([11, 12, 13, eos, b, 5, 6, 7, b], eos, b)
    assert text == [11, 12, 13] and speech == [5, 6, 7]


def test_s2s_parse_without_im_end_or_end_boundary_does_not_crash():
    assert split_speech_output([1, 2, 3], 9, 100) == ([1, 2, 3], [])
    assert split_speech_output([1, 9, 100, 4, 5], 9, 100) == ([1], [4, 5])


def test_special_ids_of_the_full_preset_come_from_the_real_qwen_tokenizer(qwen):
    ids = SpecialIds.build(preset("osum-echat"), qwen)
    assert (ids.im_start, ids.im_end, ids.unknown) == (151644, 151645, 7672)
    assert (ids.speech_boundary, ids.audio_bos, ids.audio_eos, ids.speech_head) == (4096, 4097, 4098, 4097)
    assert ids.text_vocab == 151_936


def test_special_ids_of_the_mini_preset_come_from_the_mini_tokenizer(mini_tok):
    ids = SpecialIds.build(preset("mini"), mini_tok)
    assert mini_tok.convert_ids_to_tokens(ids.unknown) == "&&"
    assert ids.speech_boundary == 512 and ids.audio_eos == 514


def test_pack_layout_follows_the_answer_the_task_asks_for():
    from echat.tokens import CUE_FIELDS, WORDS_BLOCK, asked_fields, pack_layout

    names = [*CUE_FIELDS, "words"]  # WORDS_BLOCK == len(CUE_FIELDS)
    blocks = lambda task, thinks=False: [names[i] for i in pack_layout(task, thinks)]  # noqa: E731
    assert WORDS_BLOCK == 4
    assert asked_fields("<TRANSCRIBE> <EMOTION> <AGE> <GENDER>") == ("emotion", "age", "gender")
    assert blocks("<TRANSCRIBE> <EMOTION> <AGE> <GENDER>") == ["words", "emotion", "age", "gender", "event"]
    assert blocks("<GENDER>") == ["gender", "words", "age", "emotion", "event"]  # only-P: the tag leads
    assert blocks("<AGE> <GENDER>") == ["age", "gender", "words", "emotion", "event"]
    assert blocks("<TRANSCRIBE>") == ["words", *CUE_FIELDS]  # nothing asked: CUE_FIELDS order
    assert blocks("<S2TCHAT> <TEXT2TOKEN> <THINK>", thinks=True) == [
        "words", "age", "gender", "emotion", "event"]  # the tag think's order, after what was said


@pytest.mark.parametrize("speech_out, think, task", [
    (True, "none", "<S2TCHAT> <TEXT2TOKEN>"), (True, "tag", "<S2TCHAT> <TEXT2TOKEN> <THINK>"),
    (True, "language", "<S2TCHAT> <TEXT2TOKEN> <THINK>"), (False, "none", "<S2TCHAT>"),
    (False, "tag", "<S2TCHAT> <THINKER>"), (False, "language", "<S2TCHAT> <THINKER>")])
def test_task_for_a_spoken_turn_follows_the_reply_kind_and_the_think(speech_out, think, task):
    assert task_for(speech_out, ThinkMode(think)) == task
    assert output_type(task).speech_out == speech_out and output_type(task).thinks == (think != "none")
