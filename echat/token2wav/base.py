"""The token2wav protocol: discrete 25 Hz speech tokens in, a mono waveform out.

Design choices:
- A structural ``typing.Protocol`` (``runtime_checkable``), not a base class: anything with an integer
  ``sample_rate`` and a ``__call__(tokens, **kw) -> np.ndarray`` is a token2wav, and
  ``isinstance(obj, Token2Wav)`` checks that shape (the attribute and the method exist, not their types).
- Output is always a float32 mono wave ``(N,)`` at ``sample_rate`` Hz, in [-1, 1].
- Ids at or above the codebook size (the segment boundary ``SpeechConfig.boundary_id``) are not speech;
  an implementation skips them rather than failing, and rejects negative ids with ValueError.
- Implementations: :class:`echat.token2wav.mini.MiniToken2Wav` (the CPU mini world: k-means codebook
  -> log-mel -> Griffin-Lim, 16 kHz) and :class:`echat.token2wav.cosyvoice.CosyVoiceToken2Wav` (the full
  world: CosyVoice-300M-25Hz flow matching + HiFT, 22.05 kHz, with a prompt voice and chunked streaming),
  so callers never need to know which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Token2Wav(Protocol):
    """Speech tokens -> waveform. ``tokens``: ids ``(L,)``; returns float32 ``(N,)`` at ``sample_rate`` Hz."""

    sample_rate: int

    def __call__(self, tokens: Sequence[int], **kw: Any) -> np.ndarray: ...
