"""The mini world's token2wav: tokens -> k-means centroids (log-mel) -> Griffin-Lim waveform.

Design choices:
- Tokens become a log-mel ``(4L, 80)`` through :meth:`MiniSpeechTokenizer.decode_mel`; the Whisper
  squash of :func:`echat.audio.log_mel` is undone (``log10 mel = 4x - 4``, power mel = ``10 ** (4x - 4)``)
  and librosa inverts the mel power spectrogram with the analysis settings of ``log_mel``: 16 kHz,
  n_fft 400, hop 160, periodic Hann window, centred frames with reflect padding, the default Slaney
  mel filters of ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)``. ``log_mel`` drops the STFT's
  last frame, so the last mel frame is repeated once to give Griffin-Lim the T + 1 frames it expects.
- The inversion is ``librosa.feature.inverse.mel_to_audio`` taken apart into its two steps,
  ``mel_to_stft`` (NNLS) then ``griffinlim``, because ``mel_to_audio`` does not forward ``random_state``:
  passing a fixed ``random_state`` to ``griffinlim`` makes its random phase init, and so the output,
  deterministic without touching numpy's global random state. (On the fixture clips, random init beat
  ``init=None`` zero phase and reflect padding beat librosa's default constant padding, both slightly.)
- The wave is ``4L * 160`` samples long: exactly 40 ms per token, matching the 25 Hz token rate.
- Output is peak-normalised to PEAK_LEVEL (log-mel levels after k-means averaging are not a
  loudness worth keeping), float32 mono at 16 kHz. Silence (all-zero) stays zero.
- Ids >= codebook_size (the boundary / stop id) are dropped silently; negative ids raise ValueError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import librosa
import numpy as np
import torch

from echat.audio import HOP_SAMPLES, LOG_OFFSET, LOG_SCALE, N_FFT_SAMPLES, SAMPLE_RATE_HZ
from echat.data.speech_tokens import SPEECH_TOKENIZER_DIR, MiniSpeechTokenizer, as_token_ids

DEFAULT_N_ITER = 32  # Griffin-Lim iterations
DEFAULT_SEED = 0  # random state of Griffin-Lim's initial phase
PEAK_LEVEL = 0.9  # output peak, in full-scale units
MEL_POWER = 2.0  # log_mel works on |STFT|^2
WINDOW = "hann"  # scipy's periodic Hann, as torch.hann_window in log_mel
PAD_MODE = "reflect"  # edge padding of Griffin-Lim's STFTs, as torch.stft in log_mel


def log_mel_to_wave(mel: np.ndarray, n_iter: int = DEFAULT_N_ITER, seed: int = DEFAULT_SEED) -> np.ndarray:
    """A ``log_mel``-normalised mel ``(T, 80)`` -> float32 wave ``(T * 160,)`` at 16 kHz (not normalised)."""
    frames = np.concatenate([mel, mel[-1:]]).astype(np.float64)  # (T + 1, 80): log_mel drops the last frame
    power_mel = 10.0 ** (LOG_SCALE * frames.T - LOG_OFFSET)  # (80, T + 1) mel power
    magnitude = librosa.feature.inverse.mel_to_stft(
        power_mel, sr=SAMPLE_RATE_HZ, n_fft=N_FFT_SAMPLES, power=MEL_POWER,
    )  # (201, T + 1) linear STFT magnitude
    wave = librosa.griffinlim(
        magnitude, n_iter=n_iter, hop_length=HOP_SAMPLES, win_length=N_FFT_SAMPLES, n_fft=N_FFT_SAMPLES,
        window=WINDOW, center=True, pad_mode=PAD_MODE, length=mel.shape[0] * HOP_SAMPLES, random_state=seed,
    )  # (T * 160,)
    return wave.astype(np.float32)


def peak_normalise(wave: np.ndarray, level: float = PEAK_LEVEL) -> np.ndarray:
    """Scale ``wave`` so its largest magnitude is ``level``; an all-zero wave is returned unchanged."""
    peak = float(np.abs(wave).max(initial=0.0))
    return (wave * (level / peak)).astype(np.float32) if peak > 0 else wave.astype(np.float32)


class MiniToken2Wav:
    """Token2Wav for the mini world: ``MiniToken2Wav(tokenizer)(tokens)`` -> float32 wave at 16 kHz.

    ``n_iter``: Griffin-Lim iterations (more: cleaner phase, slower). ``seed``: its initial phase.
    """

    sample_rate: int = SAMPLE_RATE_HZ

    def __init__(self, tokenizer: MiniSpeechTokenizer, n_iter: int = DEFAULT_N_ITER, seed: int = DEFAULT_SEED,
                 peak: float = PEAK_LEVEL) -> None:
        if not tokenizer.is_fitted:
            raise ValueError("MiniToken2Wav needs a fitted MiniSpeechTokenizer (fit(...) or load(folder))")
        if n_iter < 1:
            raise ValueError(f"n_iter must be at least 1, got {n_iter}")
        self.tokenizer = tokenizer
        self.n_iter = n_iter
        self.seed = seed
        self.peak = peak

    @classmethod
    def from_folder(cls, folder: str | PathLike, **kw) -> MiniToken2Wav:
        """Build from a folder written by :meth:`MiniSpeechTokenizer.save`; ``kw`` go to the constructor."""
        return cls(MiniSpeechTokenizer.load(folder), **kw)

    @classmethod
    def beside(cls, folder: str | PathLike) -> MiniToken2Wav | None:
        """The token2wav of the speech tokenizer kept in ``folder`` (a corpus, or a mini checkpoint, which
        carries its corpus's codebook); None when there is none."""
        source = Path(folder) / SPEECH_TOKENIZER_DIR
        return cls.from_folder(source) if source.is_dir() else None

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size

    def fingerprint(self) -> str:
        """16 hex digits that change with anything a wave depends on: the codebook, Griffin-Lim's iterations and
        seed, the peak level."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(np.ascontiguousarray(self.tokenizer.codebook).tobytes())
        digest.update(f"{self.n_iter} {self.seed} {self.peak}".encode())
        return digest.hexdigest()

    def speech_ids(self, tokens: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """The ids that are speech: int64 ``(L',)``, boundary ids (>= codebook_size) dropped."""
        ids = as_token_ids(tokens)
        if ids.size and ids.min() < 0:
            raise ValueError(f"speech token ids must be non-negative, got {int(ids.min())}")
        return ids[ids < self.codebook_size]

    def __call__(self, tokens: Sequence[int] | np.ndarray | torch.Tensor, *, n_iter: int | None = None,
                 **kw) -> np.ndarray:
        """Tokens ``(L,)`` -> float32 wave ``(L' * 640,)`` for the L' speech ids, 40 ms each.

        Keywords meant for other token2wavs (e.g. a speaker prompt) are accepted and ignored.
        """
        ids = self.speech_ids(tokens)
        if ids.size == 0:
            return np.zeros(0, dtype=np.float32)
        mel = self.tokenizer.decode_mel(ids)  # (4L', 80)
        wave = log_mel_to_wave(mel, n_iter=self.n_iter if n_iter is None else n_iter, seed=self.seed)
        return peak_normalise(wave, self.peak)
