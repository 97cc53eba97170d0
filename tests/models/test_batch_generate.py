"""generate_batch: a batch of mixed prompts gives every item exactly what generate() gives it alone."""

import dataclasses

import numpy as np
import pytest
import torch

from echat.config import GenerationOptions
from echat.models.batch_generate import GenerationRequest, generate_batch
from echat.models.generate import generate
from echat.tokens import SpecialIds

GREEDY = GenerationOptions(do_sample=False, max_new_tokens=30, max_speech_tokens=40)


@pytest.fixture
def model(smoke_model):
    """The random smoke model, with the rows of <|im_end|> (text head) and of the speech boundary (speech
    head) set to scaled random directions, so that texts and speech end by themselves, each prompt after
    its own number of steps (random weights alone would run every item to its limit; the scales sit between
    "never ends" (0.08) and "ends at once" (0.15), where the ends hang on small differences of the logits)."""
    im_end = SpecialIds.build(smoke_model.config, smoke_model.tokenizer).im_end
    boundary = smoke_model.config.speech.boundary_id
    rows = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for head, row, scale in ((smoke_model.causal_lm.lm_head, im_end, 0.10),
                                 (smoke_model.speech_head, boundary, 0.12)):
            head.weight[row] = scale * torch.randn(head.weight.shape[1], generator=rows)
    return smoke_model


@pytest.fixture
def clips(fixture_samples):
    """Three fixture clips of different lengths, so the prompts are padded by different amounts."""
    by_length = {len(s.audio): s.audio for s in fixture_samples if s.audio is not None}
    return [by_length[n] for n in sorted(by_length)[:3]]


def _mixed(clips) -> list[GenerationRequest]:
    """ASR, only-P, S2T, S2S, S2S with think, TTS and T2T prompts of different lengths."""
    return [GenerationRequest(clips[0], task="<TRANSCRIBE>"),
            GenerationRequest(clips[1], task="<AGE> <GENDER>"),
            GenerationRequest(clips[2], task="<S2TCHAT>"),
            GenerationRequest(clips[1], task="<S2TCHAT> <TEXT2TOKEN>"),
            GenerationRequest(clips[2], task="<S2TCHAT> <TEXT2TOKEN> <THINK>", think="tag"),
            GenerationRequest(text="Please say this whole sentence out loud for me.", task="<TEXT2TOKEN>"),
            GenerationRequest(text="Hi?", task="<TEXT2TEXT>"),
            GenerationRequest(clips[0], task="<S2TCHAT> <TEXT2TOKEN>")]


def _alone(model, request: GenerationRequest, options=None):
    return generate(model, request.audio, request.text, request.task, request.think, request.options or options)


def _outputs(results) -> list[tuple]:
    return [(r.task, r.text_ids, r.speech_tokens) for r in results]


def test_a_greedy_batch_of_mixed_prompts_equals_each_prompt_alone(model, clips):
    requests = _mixed(clips)
    batch = generate_batch(model, requests, GREEDY)
    assert _outputs(batch) == _outputs(_alone(model, r, GREEDY) for r in requests)
    # what the batch went through: a text that ended and then spoke, a speech that stopped by itself
    # before its limit, an item at its limit, and items of many lengths
    assert any(r.text_ids and r.speech_tokens for r in batch)
    assert any(0 < len(r.speech_tokens) < GREEDY.max_speech_tokens for r in batch)
    assert any(len(r.text_ids) == GREEDY.max_new_tokens for r in batch)
    assert len({(len(r.text_ids), len(r.speech_tokens)) for r in batch}) >= 5
    assert all(r.timings.total_s > 0 and r.timings.n_text == len(r.text_ids) for r in batch)


def test_one_item_ends_early_and_the_others_go_on_without_it(model, clips):
    """Each step runs the LLM on the unfinished items only; the item that ended keeps what it had."""
    short = dataclasses.replace(GREEDY, max_new_tokens=2, max_speech_tokens=0)
    requests = [GenerationRequest(clips[0], task="<S2TCHAT> <TEXT2TOKEN>"),
                GenerationRequest(clips[1], task="<TRANSCRIBE>", options=short),
                GenerationRequest(text="Say it.", task="<TEXT2TOKEN>")]
    rows = []
    hook = model.causal_lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    try:
        batch = model.generate_batch(requests, GREEDY)
    finally:
        hook.remove()
    assert _outputs(batch) == _outputs(_alone(model, r, GREEDY) for r in requests)
    assert len(batch[1].text_ids) == 2 and batch[1].speech_tokens == []
    assert rows[:2] == [3, 3] and rows[2] == 2 and rows == sorted(rows, reverse=True) and rows[-1] == 1


def test_a_seeded_sampler_per_item_samples_what_it_samples_alone(model, clips):
    sampling = GenerationOptions(do_sample=True, top_k=15, top_p=0.8, temperature=1.2, max_new_tokens=20,
                                 max_speech_tokens=40)
    tts = GenerationRequest(text="Speak, please.", task="<TEXT2TOKEN>", options=dataclasses.replace(sampling, seed=0))
    s2s = GenerationRequest(clips[2], task="<S2TCHAT> <TEXT2TOKEN>", options=dataclasses.replace(sampling, seed=3))
    requests = [tts, s2s, tts]
    batch = generate_batch(model, requests)
    assert _outputs(batch) == _outputs(_alone(model, r) for r in requests)
    assert batch[0].speech_tokens == batch[2].speech_tokens and batch[0].speech_tokens


def test_batch_size_splits_the_requests_dicts_are_requests_and_a_token2wav_fills_the_audio(model, clips):
    requests = _mixed(clips)[3:7]
    whole = generate_batch(model, requests, GREEDY)
    pairs = generate_batch(model, [dataclasses.asdict(r) for r in requests], GREEDY, batch_size=3,
                           token2wav=lambda tokens: np.ones(2 * len(tokens), dtype=np.float32))
    assert _outputs(pairs) == _outputs(whole)
    assert [None if r.audio is None else len(r.audio) for r in pairs] == [
        2 * len(r.speech_tokens) if r.speech_tokens else None for r in whole]
    assert generate_batch(model, [], GREEDY) == []
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        generate_batch(model, requests, GREEDY, batch_size=0)
