"""Speech tokens -> waveform: the :class:`Token2Wav` protocol, the mini world's Griffin-Lim vocoder and the full
world's CosyVoice-300M-25Hz (flow + HiFT)."""

from echat.token2wav.base import Token2Wav
from echat.token2wav.cosyvoice import CosyVoiceToken2Wav, StreamOptions
from echat.token2wav.cosyvoice_prompt import CosyVoiceFileError, Prompt
from echat.token2wav.mini import MiniToken2Wav

__all__ = ["CosyVoiceFileError", "CosyVoiceToken2Wav", "MiniToken2Wav", "Prompt", "StreamOptions", "Token2Wav"]
