"""Speech-token input and output: a separate embedding and head, and speech-only repetition blocking.

Design choices:
- Speech ids have their own table and head (not an extended text vocabulary), as in the reference:
  embedding rows = codes + boundary + audio BOS + audio EOS (4099 for 4096 codes); head rows =
  codes + boundary (4097), the boundary doubling as the speech stop token.
- Repetition blocking acts on speech logits only and is applied by ``generate()`` in the speech
  phase (the reference's blocker never activates: its phase flag is never set). Its intended rules are
  kept, the special case of code 1446 included (run 10, 10 of the last 13, where others get 5 and 5 of 8).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from echat.config import GenerationOptions, SpeechConfig


def speech_embedding(cfg: SpeechConfig, hidden_size: int) -> nn.Embedding:
    """Embedding for speech ids 0..codebook (boundary) plus the audio BOS/EOS ids."""
    return nn.Embedding(cfg.embedding_size, hidden_size)


def speech_head(cfg: SpeechConfig, hidden_size: int) -> nn.Linear:
    """Head over speech codes plus the boundary/stop id (with bias, as released)."""
    return nn.Linear(hidden_size, cfg.head_size)


def blocked_speech_tokens(history: list[int], options: GenerationOptions) -> set[int]:
    """Speech ids banned at the next step given the speech ``history`` (boundary excluded by caller).

    A token is banned when it ended a run of ``speech_repeat_limit`` identical tokens, or when it occurs
    ``speech_window_limit`` times among the last ``speech_window`` tokens; a token listed in
    ``speech_token_limits`` has its own three limits (the reference's ``special_token_repeat_times_dict``
    and ``special_token_window_dict``). 0 turns a limit off.
    """
    own = {token: tuple(limits) for token, *limits in options.speech_token_limits}
    general = (options.speech_repeat_limit, options.speech_window, options.speech_window_limit)
    banned: set[int] = set()
    if history:
        last = history[-1]
        run_limit = own.get(last, general)[0]
        if run_limit and len(history) >= run_limit and len(set(history[-run_limit:])) == 1:
            banned.add(last)
    widest = max([general[1], *(limits[1] for limits in own.values())])
    for token in set(history[-widest:]) if widest else ():
        _, window, most = own.get(token, general)
        if window and most and history[-window:].count(token) >= most:
            banned.add(token)
    return banned


def apply_speech_blocking(logits: Tensor, history: list[int], options: GenerationOptions,
                          boundary: int) -> Tensor:
    """Set banned speech ids to -inf. logits: (V_speech,). The boundary (stop) is never banned."""
    banned = blocked_speech_tokens([t for t in history if t != boundary], options) - {boundary}
    if not banned:
        return logits
    out = logits.clone()
    out[torch.tensor(sorted(banned), device=logits.device)] = float("-inf")
    return out
