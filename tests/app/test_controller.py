"""The app's logic without a browser, on a smoke model whose heads follow a script (tests/app/conftest.py)."""

import warnings

import numpy as np
import pytest

from echat.app.controller import TASK_NAMES, Controller, Settings, task_tag
from echat.app.inputs import AppError, Clip
from echat.app.render import split_streamed
from echat.prompts import parse_reply
from echat.tokens import THINK_CLOSE, THINK_OPEN, output_type

from .conftest import SCRIPTED_REPLY, SPEECH_CODES, script_heads

GREEDY_TAG = Settings(task="S2S think", think="tag", decoding="greedy")


@pytest.fixture
def clip(hello):
    return Clip(hello, "sample", "asrp_0002")


def test_a_run_gives_the_think_the_reply_the_audio_and_the_timings(scripted, clip):
    run = Controller(scripted).run(clip, "", GREEDY_TAG)
    expected = parse_reply(scripted.scripted_answer, "mini")
    assert run.result.think == expected.think and "emotion:<SAD>" in run.result.think
    assert run.result.text == SCRIPTED_REPLY.removeprefix("<COMFORTING>")
    assert run.result.speech_tokens == list(range(1, SPEECH_CODES + 1))
    assert run.result.audio.shape == (SPEECH_CODES * 640,)  # 40 ms per token at 16 kHz
    timings = run.timings()
    assert 0 < timings["first text token (s)"] <= timings["first speech token (s)"] <= run.wall_s
    assert timings["tokens/s"] > 0 and timings["real-time factor"] == pytest.approx(run.wall_s / 1.2)


def test_the_stream_reaches_the_callback_piece_by_piece(scripted, clip):
    events = []
    run = Controller(scripted).run(clip, "", GREEDY_TAG, events.append)
    pieces = [e.text for e in events if e.kind == "text"]
    assert len(pieces) > 10 and "".join(pieces) == scripted.scripted_answer == run.result.raw_text
    speech = [e.tokens for e in events if e.kind == "speech"]
    assert sum(speech, []) == run.result.speech_tokens and len(speech) == 2  # chunks of 25
    assert [e.kind for e in events][-1] == "done" and sum(e.kind == "audio" for e in events) == 2


def test_the_streamed_think_and_reply_split_as_they_grow():
    assert split_streamed("<thi") == (None, "")
    assert split_streamed(THINK_OPEN + "user said:hi") == ("user said:hi", "")
    assert split_streamed(f"{THINK_OPEN}x{THINK_CLOSE}<HAPPY>Good") == ("x", "<HAPPY>Good")
    assert split_streamed("plain reply") == (None, "plain reply")


def test_ab_runs_both_sides_and_b_can_use_another_model(scripted, clip, mini_tok):
    other = type(scripted)(scripted.config, mini_tok).eval()
    script_heads(other, "<think>a paragraph about her<think end>Take a breath.")
    a, b = Controller(scripted).compare(clip, "", GREEDY_TAG, Settings(task="S2T think", think="language",
                                                                       decoding="greedy"), model_b=other)
    assert a.task == "<S2TCHAT> <TEXT2TOKEN> <THINK>" and b.task == "<S2TCHAT> <THINKER>"
    assert a.result.text == "I'm sorry it was so hard." and b.result.text == "Take a breath."
    assert b.result.think == "a paragraph about her" and not b.result.speech_tokens and b.model is other


def test_a_chat_keeps_its_history_replays_a_turn_and_resets(scripted, clip):
    app = Controller(scripted)
    first = app.say(clip, GREEDY_TAG)
    second = app.say(clip, GREEDY_TAG)
    assert first.history == () and len(second.history) == 1
    wave, reply, speech = second.history[0]
    assert np.array_equal(wave, clip.wave) and reply == first.result.text and speech == first.result.speech_tokens
    again = app.replay(1)
    assert again.history == second.history and again.result.text_ids == second.result.text_ids
    assert len(app.chat.turns) == 2
    app.reset()
    assert app.chat.turns == [] and app.chat_runs == []
    with pytest.raises(AppError, match="no turn 1"):
        app.replay(0)


def test_the_chat_history_reaches_the_prompt(scripted, clip):
    """The second turn's prompt holds the first turn: its clip and its speech codes."""
    app = Controller(scripted)
    seen = []
    real = scripted.encode_clips
    scripted.encode_clips = lambda feats, *rest: seen.append(feats.shape[0]) or real(feats, *rest)
    app.say(clip, GREEDY_TAG)
    app.say(clip, GREEDY_TAG)
    assert seen == [1, 2]


def test_every_task_name_maps_to_a_task_and_bad_choices_are_one_line(scripted):
    for name in TASK_NAMES:
        output_type(task_tag(name, "tag"))
    with pytest.raises(AppError, match="needs a think mode"):
        task_tag("S2S think", "none")
    app = Controller(scripted)
    with pytest.raises(AppError, match="listens"):
        app.run(None, "", GREEDY_TAG)
    with pytest.raises(AppError, match="reads text"):
        app.run(None, " ", Settings(task="TTS"))
    with pytest.raises(AppError, match="no model"):
        Controller(None).run(None, "hi", Settings(task="T2T"))


def test_text_tasks_read_the_text_box(scripted):
    run = Controller(scripted).run(None, "How are you?", Settings(task="TTS", decoding="greedy"))
    assert run.task == "<TEXT2TOKEN>" and run.text == "How are you?" and run.result.speech_tokens
    assert run.clip is None and run.result.audio is not None


def test_decoding_settings_become_the_options():
    kind = output_type("<S2TCHAT> <TEXT2TOKEN>")
    assert not Settings(decoding="greedy").options(kind).do_sample
    sampled = Settings(decoding="sample", temperature=0.7, top_p=0.5, seed=3).options(kind)
    assert sampled.do_sample and (sampled.temperature, sampled.top_p, sampled.top_k, sampled.seed) == (0.7, 0.5, 0, 3)
    default = Settings().options(kind)
    assert default.do_sample and default.top_k == 10  # the reference's S2S defaults


def test_a_think_mode_other_than_the_checkpoints_is_a_note(scripted, clip):
    scripted.config.think = "language"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning must be caught by the controller, not raised
        run = Controller(scripted).run(clip, "", GREEDY_TAG)
    assert len(run.notes) == 1 and "trained with think=language" in run.notes[0]
