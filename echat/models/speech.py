"""Speech-token input and output: a separate embedding and head, and speech-only repetition blocking.

Design choices:
- Speech ids have their own table and head (not an extended text vocabulary), as in the reference:
  embedding rows = codes + boundary + audio BOS + audio EOS (4099 for 4096 codes); head rows =
  codes + boundary (4097), the boundary doubling as the speech stop token.
- Repetition blocking acts on speech logits only and is applied by ``generate()`` in the speech
  phase (the reference's blocker never activates: its phase flag is never set).
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
    ``speech_window_limit`` times among the last ``speech_window`` tokens.
    """
    banned: set[int] = set()
    limit = options.speech_repeat_limit
    if limit and len(history) >= limit and len(set(history[-limit:])) == 1:
        banned.add(history[-1])
    window, most = options.speech_window, options.speech_window_limit
    if window and most:
        recent = history[-window:]
        banned.update(t for t in set(recent) if recent.count(t) >= most)
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
