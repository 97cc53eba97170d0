"""One generate(): KV cache == no cache, streaming == generate, phases per call, stops, multi-turn."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from echat.config import GenerationOptions, ThinkMode
from echat.models.generate import Conversation, build_prompt, generate, stream
from echat.prompts import ASSISTANT_HEADER
from echat.tokens import OutputType, Stream

GREEDY = GenerationOptions(do_sample=False, max_new_tokens=40, max_speech_tokens=60)


@pytest.fixture
def wave(fixture_samples):
    return next(s.audio for s in fixture_samples if s.record.output_type is OutputType.S2S)


@pytest.mark.parametrize("task, think", [("<S2TCHAT> <TEXT2TOKEN>", "none"), ("<S2TCHAT> <TEXT2TOKEN> <THINK>", "tag"),
                                         ("<TRANSCRIBE>", "none"), ("<TEXT2TOKEN>", "none"),
                                         ("<TEXT2TEXT>", "none")])
def test_kv_cached_generation_equals_uncached_token_for_token(smoke_model, wave, task, think):
    audio = None if task in ("<TEXT2TOKEN>", "<TEXT2TEXT>") else wave
    text = "How are you today?" if audio is None else None
    cached = generate(smoke_model, audio, text, task, think, GREEDY)
    uncached = generate(smoke_model, audio, text, task, think, dataclasses.replace(GREEDY, use_cache=False))
    assert cached.text_ids == uncached.text_ids
    assert cached.speech_tokens == uncached.speech_tokens
    assert len(cached.text_ids) + len(cached.speech_tokens) > 0


def test_streaming_yields_exactly_what_generate_returns(smoke_model, wave):
    options = GenerationOptions(do_sample=True, top_k=10, temperature=1.2, seed=3, max_new_tokens=30,
                                max_speech_tokens=70, stream_chunk=8)
    events = list(stream(smoke_model, wave, task="<S2TCHAT> <TEXT2TOKEN>", options=options))
    result = events[-1].result
    assert events[-1].kind == "done"
    assert "".join(e.text for e in events if e.kind == "text") == result.raw_text
    chunks = [e.tokens for e in events if e.kind == "speech"]
    assert [t for c in chunks for t in c] == result.speech_tokens
    assert all(len(c) <= 8 for c in chunks)
    again = generate(smoke_model, wave, task="<S2TCHAT> <TEXT2TOKEN>", options=options)
    assert again.text_ids == result.text_ids and again.speech_tokens == result.speech_tokens


def test_speech_phase_is_entered_at_im_end_and_stops_at_the_boundary(smoke_model, wave, monkeypatch):
    """Bias the heads so the model says one word, ends the text, speaks 5 codes and stops."""
    model, ids = smoke_model, smoke_model.tokenizer
    im_end, boundary = ids.convert_tokens_to_ids("<|im_end|>"), model.config.speech.boundary_id
    calls = {"text": 0, "speech": 0}
    lm_head, speech_head = model.causal_lm.lm_head, model.speech_head

    def text_head(h):
        calls["text"] += 1
        out = torch.zeros(*h.shape[:-1], lm_head.out_features)
        out[..., im_end if calls["text"] > 1 else 300] = 100.0
        return out

    def speech_head_fn(h):
        calls["speech"] += 1
        out = torch.zeros(*h.shape[:-1], speech_head.out_features)
        out[..., boundary if calls["speech"] > 5 else calls["speech"]] = 100.0
        return out

    monkeypatch.setattr(lm_head, "forward", text_head)
    monkeypatch.setattr(speech_head, "forward", speech_head_fn)
    result = generate(model, wave, task="<S2TCHAT> <TEXT2TOKEN>", options=GREEDY)
    assert result.text_ids == [300] and result.speech_tokens == [1, 2, 3, 4, 5]
    assert result.timings.first_text_s <= result.timings.first_speech_s <= result.timings.total_s


def test_bug5_text_tasks_after_tts_still_use_the_text_head(smoke_model, wave):
    t2t_first = generate(smoke_model, text="Hello?", task="<TEXT2TEXT>", options=GREEDY)
    generate(smoke_model, text="Hello?", task="<TEXT2TOKEN>", options=GREEDY)
    t2t_after = generate(smoke_model, text="Hello?", task="<TEXT2TEXT>", options=GREEDY)
    assert t2t_first.text_ids == t2t_after.text_ids and t2t_after.speech_tokens == []


def test_tts_outputs_speech_only_and_respects_the_length_limit(smoke_model):
    options = dataclasses.replace(GREEDY, max_speech_tokens=12)
    result = generate(smoke_model, text="Speak this.", task="<TEXT2TOKEN>", options=options)
    assert result.text_ids == [] and 0 < len(result.speech_tokens) <= 12
    assert all(0 <= t < smoke_model.config.speech.codebook_size for t in result.speech_tokens)


def test_inference_prompt_is_the_training_layout_up_to_the_assistant_header(smoke_model, wave, batch_of):
    kind, ids, stream_codes, feats = build_prompt(smoke_model, wave, task="<S2TCHAT> <TEXT2TOKEN>")
    header = smoke_model.tokenizer(ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]
    assert ids[-len(header):].tolist() == header
    assert int((stream_codes == Stream.AUDIO).sum()) == smoke_model.config.llm_positions(feats[0].shape[0])


def test_think_task_without_think_mode_and_speech_task_without_audio_are_clear_errors(smoke_model):
    with pytest.raises(ValueError, match="think"):
        generate(smoke_model, [0.0] * 1600, task="<S2TCHAT> <TEXT2TOKEN> <THINK>")
    with pytest.raises(ValueError, match="needs audio"):
        generate(smoke_model, text="hi", task="<S2TCHAT> <TEXT2TOKEN>")


def test_conversation_feeds_history_in_the_training_layout(smoke_model, fixture_samples):
    clips = [s.audio for s in fixture_samples if s.audio is not None][:3]
    chat = Conversation(smoke_model, options=GREEDY, max_turns=2)
    for clip in clips:
        chat.say(clip)
    assert len(chat.turns) == 3
    _, _, codes, feats = build_prompt(smoke_model, clips[2], task="<S2TCHAT> <TEXT2TOKEN>",
                                      history=tuple(chat.turns[-2:]))
    assert len(feats) == 3
    chat.reset()
    assert chat.turns == []


class _CountingToken2Wav:
    """A token2wav that records what it was asked to vocode: 10 samples per speech token."""

    sample_rate = 16_000

    def __init__(self):
        self.calls = []

    def __call__(self, tokens, **kw):
        self.calls.append(list(tokens))
        return np.full(10 * len(tokens), len(self.calls), dtype=np.float32)


def test_a_token2wav_fills_the_audio_and_streams_audio_chunks(smoke_model):
    options = dataclasses.replace(GREEDY, max_speech_tokens=20, stream_chunk=8)
    speak = dict(text="How are you today?", task="<TEXT2TOKEN>", options=options)
    plain = generate(smoke_model, **speak)
    assert plain.audio is None and plain.speech_tokens
    vocoder = _CountingToken2Wav()
    spoken = generate(smoke_model, token2wav=vocoder, **speak)
    assert spoken.speech_tokens == plain.speech_tokens and vocoder.calls == [plain.speech_tokens]
    assert spoken.audio.shape == (10 * len(plain.speech_tokens),)
    smoke_model.token2wav = _CountingToken2Wav()  # held by the model: the default of every call
    try:
        events = list(stream(smoke_model, **speak))
    finally:
        smoke_model.token2wav = None
    chunks = [e for e in events if e.kind == "audio"]
    assert len(chunks) > 1 and [e.tokens for e in chunks] == [e.tokens for e in events if e.kind == "speech"]
    assert np.array_equal(events[-1].result.audio, np.concatenate([e.audio for e in chunks]))


class _StreamingToken2Wav:
    """A token2wav with a streamer, as CosyVoice's: it speaks every second chunk, and the rest at the end."""

    def __init__(self) -> None:
        self.pushed: list[list[int]] = []
        self.owed: list[int] = []

    def __call__(self, tokens):
        raise AssertionError("a token2wav with a streamer is never called chunk by chunk")

    def streamer(self):
        return self

    def push(self, tokens):
        self.pushed.append(list(tokens))
        self.owed += list(tokens)
        return self.finish() if len(self.pushed) % 2 == 0 else np.zeros(0, dtype=np.float32)

    def finish(self):
        wave, self.owed = np.asarray(self.owed, dtype=np.float32), []
        return wave


def test_stream_feeds_a_token2wav_with_a_streamer_and_keeps_every_sample(smoke_model):
    options = dataclasses.replace(GREEDY, max_speech_tokens=20, stream_chunk=6)
    vocoder = _StreamingToken2Wav()
    events = list(stream(smoke_model, text="How are you today?", task="<TEXT2TOKEN>", options=options,
                         token2wav=vocoder))
    speech = [e.tokens for e in events if e.kind == "speech"]
    audio = [e.audio for e in events if e.kind == "audio"]
    assert vocoder.pushed == speech and len(speech) >= 3
    assert 0 < len(audio) < len(speech) + 1  # the streamer speaks when it is ready, not per chunk
    result = events[-1].result
    assert np.array_equal(result.audio, np.concatenate(audio))
    assert result.audio.tolist() == [float(t) for t in result.speech_tokens]  # no sample lost or repeated


def test_the_stored_think_mode_is_the_default_and_another_one_is_warned_about(smoke_model, wave):
    options = dataclasses.replace(GREEDY, max_new_tokens=5, max_speech_tokens=5)
    assert smoke_model.config.think is ThinkMode.NONE
    assert generate(smoke_model, wave, options=options).task == "<S2TCHAT> <TEXT2TOKEN>"
    smoke_model.config.think = ThinkMode.TAG
    try:
        assert generate(smoke_model, wave, options=options).task == "<S2TCHAT> <TEXT2TOKEN> <THINK>"
        with pytest.warns(UserWarning, match="think=language asked of a model trained with think=tag"):
            result = generate(smoke_model, wave, think="language", options=options)
        assert result.task == "<S2TCHAT> <TEXT2TOKEN> <THINK>"  # the same prompt: the checkpoint decides
    finally:
        smoke_model.config.think = ThinkMode.NONE


def test_another_thread_stops_a_running_generate_and_gets_what_it_made_so_far(smoke_model):
    """The reference's InterruptStopper: an event set from a second thread ends the generation after its
    current step; the result holds the tokens made so far and says it was interrupted."""
    import threading
    import time

    from echat.tokens import SpecialIds

    im_end = SpecialIds.build(smoke_model.config, smoke_model.tokenizer).im_end
    with torch.no_grad():
        smoke_model.causal_lm.lm_head.weight[im_end] = 0.0  # the text would not end by itself
    interrupt, results = threading.Event(), []
    options = dataclasses.replace(GREEDY, max_new_tokens=1_000_000)
    worker = threading.Thread(target=lambda: results.append(
        generate(smoke_model, None, "hello", "<TEXT2TEXT>", "none", options, interrupt=interrupt)))
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive()
    interrupt.set()
    worker.join(timeout=60)
    assert not worker.is_alive()
    result, = results
    assert result.interrupted and 0 < len(result.text_ids) < 1_000_000
    assert not generate(smoke_model, None, "hello", "<TEXT2TEXT>", "none", GREEDY).interrupted
    stopped = list(stream(smoke_model, None, "hello", "<TEXT2TEXT>", "none", options, interrupt=interrupt))
    assert [e.kind for e in stopped] == ["done"] and stopped[0].result.text_ids == []


def test_the_generation_benchmark_times_readmes_python_example():
    """benchmarks/generation_speed.py --readme-only runs README's example (the mini preset, a real clip, a tag
    think) and prints its wall time and tokens/s."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout's echat, as `python -m` would find it
    out = subprocess.run([sys.executable, "benchmarks/generation_speed.py", "--readme-only", "--threads", "1"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = (r"README example \(mini, seed 0, hello\.wav, think=tag, flush-to-zero on\): from_preset [\d.]+ s, "
            r"generate [\d.]+ s wall, \d+ text \+ \d+ speech tokens, \d+ tok/s")
    assert re.search(line, out.stdout), out.stdout
