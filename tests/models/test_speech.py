"""The speech side of the model: table and head sizes, and speech-only repetition blocking."""

import torch

from echat.config import GenerationOptions, preset
from echat.models.speech import apply_speech_blocking, blocked_speech_tokens, speech_embedding, speech_head


def test_the_table_and_the_head_have_the_reference_sizes():
    speech = preset("osum-echat").speech
    assert speech_embedding(speech, 8).num_embeddings == 4099  # codes + boundary + audio BOS + EOS
    head = speech_head(speech, 8)
    assert head.out_features == 4097 and head.bias is not None  # codes + boundary (the stop)


def test_a_run_of_repeats_and_a_crowded_window_are_banned():
    runs = GenerationOptions(speech_repeat_limit=3)
    assert blocked_speech_tokens([1, 7, 7, 7], runs) == {7}
    assert blocked_speech_tokens([7, 7, 1], runs) == set()
    window = GenerationOptions(speech_window=5, speech_window_limit=3)
    assert blocked_speech_tokens([4, 2, 4, 9, 4], window) == {4}
    assert blocked_speech_tokens([4, 2, 4, 9, 4, 5, 6, 1], window) == set()  # 4 left the window
    assert blocked_speech_tokens([3, 3, 3, 3], GenerationOptions()) == set()  # off by default


def test_blocking_never_bans_the_boundary_and_leaves_the_logits_alone_when_off():
    options = GenerationOptions(speech_repeat_limit=2)
    logits = torch.zeros(6)
    out = apply_speech_blocking(logits, [5, 2, 2], options, boundary=5)
    assert out[2] == float("-inf") and torch.isfinite(out[[0, 1, 3, 4, 5]]).all()
    assert apply_speech_blocking(logits, [5, 5], options, boundary=5) is logits  # only the boundary repeated
    assert torch.equal(logits, torch.zeros(6))  # the input is never changed
