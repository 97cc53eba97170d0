"""Speech-only repetition blocking: the reference's SpeechOnlyNGramBlockingLogitsProcessor as it was meant."""

import torch

from echat.config import GenerationOptions
from echat.models.speech import apply_speech_blocking, blocked_speech_tokens
from echat.prompts import default_options
from echat.tokens import OutputType

S2S = default_options(OutputType.S2S)


def test_a_run_of_five_bans_the_token_and_four_does_not():
    assert blocked_speech_tokens([7, 3, 3, 3, 3, 3], S2S) == {3}
    assert blocked_speech_tokens([7, 3, 3, 3, 3], S2S) == set()


def test_five_of_the_last_eight_ban_a_token_that_is_not_in_a_run():
    assert blocked_speech_tokens([3, 1, 3, 2, 3, 3, 4, 3], S2S) == {3}
    assert blocked_speech_tokens([3, 1, 3, 2, 3, 3, 4, 3, 5], S2S) == set()  # the first 3 left the window


def test_code_1446_has_the_references_own_limits():
    """The reference lets 1446 run 10 times and fill 10 of the last 13 (special_token_*_dict)."""
    assert blocked_speech_tokens([1446] * 9, S2S) == set()
    assert blocked_speech_tokens([1446] * 10, S2S) == {1446}
    spread = [1446, 1, 1446, 1446, 2, 1446, 1446, 1446, 3, 1446, 1446, 1446, 1446]  # 10 of 13, no run of 10
    assert blocked_speech_tokens(spread, S2S) == {1446}
    assert blocked_speech_tokens(spread[1:] + [4], S2S) == set()
    assert blocked_speech_tokens([5] * 5, S2S) == {5}  # the others keep the general limits


def test_blocking_is_off_by_default_and_never_bans_the_stop_boundary():
    assert blocked_speech_tokens([3] * 20, GenerationOptions()) == set()
    logits = torch.zeros(9)
    out = apply_speech_blocking(logits, [8, 2, 2, 2, 2, 2, 8], S2S, boundary=8)
    assert out[2] == float("-inf") and torch.isfinite(out[[0, 1, 3, 8]]).all()
