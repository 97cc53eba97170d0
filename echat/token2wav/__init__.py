"""Speech tokens -> waveform: the :class:`Token2Wav` protocol and the mini world's Griffin-Lim vocoder."""

from echat.token2wav.base import Token2Wav
from echat.token2wav.mini import MiniToken2Wav

__all__ = ["MiniToken2Wav", "Token2Wav"]
