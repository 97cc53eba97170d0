"""Audio loading and the OSUM-EChat log-mel front-end (16 kHz mono, 80 bins, 100 frames/s).

Design choices:
- ``load_audio`` turns any file soundfile (or, failing that, librosa/audioread) can decode into a
  float32 mono wave at 16 kHz, and reports every problem as one :class:`AudioError` naming the file.
- ``log_mel`` follows the reference's Whisper-style recipe step for step: torch STFT with reflect
  padding, last frame dropped, Slaney mel filters, log10, a floor 8 decades below the utterance's
  peak, then ``(x + 4) / 4``. No padding to 30 s: ``T = N // 160``.
- The dynamic-range floor is per utterance, so batching never changes an utterance's features.
- ``log_mel(wave, n_mels=128)`` is Whisper's 128-bin variant (``whisper.log_mel_spectrogram(n_mels=128)``, whose
  filters are ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=128)``): what CosyVoice's ``speech_tokenizer_v1.onnx``
  reads. Everything else in the recipe is the same.
- ``log_mel_batch`` (clips of different lengths) is the same formula made cheaper: |X|^2 as re^2 + im^2 summed
  inside the mel product, which reads only the FFT bins each group of filters weighs, written straight into
  the padded batch; about 2x faster than the per-utterance loop (``benchmarks/frontend.py``).
- ``cosyvoice_mel`` is the other front-end: the 22.05 kHz mel of CosyVoice-300M-25Hz (the flow's prompt mel,
  what HiFT vocodes), Matcha-TTS's ``mel_spectrogram`` as configured by CosyVoice's ``feat_extractor``
  (``../shared/reference/cosyvoice_300m_25hz_hparams.md`` section 3: sources ``FunAudioLLM/CosyVoice@ace7c47``
  ``examples/libritts/cosyvoice/conf/cosyvoice.yaml`` and ``ASLP-lab/OSUM@f2bcfac``
  ``OSUM-EChat/tts/third_party/Matcha-TTS/matcha/utils/audio.py``): reflect pad (n_fft - hop) / 2 = 384
  samples per side, uncentred torch STFT with a periodic Hann(1024), magnitude ``sqrt(re^2 + im^2 + 1e-9)``,
  librosa's Slaney filterbank (0-8 kHz), natural log of ``clamp(x, 1e-5)``. ``frames = N // 256``. Unlike
  ``log_mel`` it stays on the wave's device (the prompt mel of a GPU run is made on the GPU).
"""

from __future__ import annotations

import functools
import warnings
from os import PathLike
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from echat.config import AudioConfig

# The rates and hops of the front-end, for every module that reads or writes audio. Their numbers are
# written once, as the defaults of config.AudioConfig, which every checkpoint stores (and which the light
# modules read, such as the manifest checker, that must not import torch).
_FRONT_END = AudioConfig()
SAMPLE_RATE_HZ = _FRONT_END.sample_rate_hz  # 16 kHz mono
N_FFT_SAMPLES = _FRONT_END.n_fft_samples  # 25 ms analysis window
HOP_SAMPLES = _FRONT_END.hop_samples  # 10 ms hop
N_MELS = _FRONT_END.n_mels
FRAME_RATE_HZ = SAMPLE_RATE_HZ // HOP_SAMPLES  # 100 feature frames per second
WHISPER_N_MELS = (N_MELS, 128)  # the filterbank sizes Whisper ships: 80, and 128 for large-v3 and CosyVoice
MIN_SAMPLES = _FRONT_END.min_samples  # 25 ms; the reference rejects shorter clips ("Audio too short")
LOG_FLOOR = 1e-10  # mel power clamp before log10 (avoids log of zero)
DYNAMIC_RANGE_LOG10 = 8.0  # keep 8 decades (80 dB) below each utterance's peak
LOG_OFFSET = 4.0  # Whisper's affine squash: (log10 + 4) / 4 lands speech near [-1, 1]
LOG_SCALE = 4.0
RESAMPLE_TYPE = "soxr_hq"  # librosa's soxr backend, high quality
# log_mel_batch's mel product in 5 groups of 16 filters, each over its own bins only: of 1 to 10 groups
# (and of groups cut by their bins' span) the fastest measured, 16 filling one 16-float vector
MEL_GROUPS = 5

# The CosyVoice-300M-25Hz front-end (cosyvoice_mel): 22.05 kHz, 80 mel bins, 256-sample hop (11.6 ms);
# HiFT makes COSYVOICE_HOP_SAMPLES samples of wave per mel frame.
COSYVOICE_RATE = 22050  # Hz
SPEECH_TOKENIZER_MAX_SECONDS = 30.0  # CosyVoice's speech_tokenizer_v1.onnx reads at most this (upstream asserts it)
COSYVOICE_N_FFT = 1024  # samples (46 ms), also the window length
COSYVOICE_HOP_SAMPLES = 256
COSYVOICE_N_MELS = 80
COSYVOICE_FMAX_HZ = 8000.0  # the filterbank spans 0-8 kHz
COSYVOICE_MAGNITUDE_EPS = 1e-9  # inside the square root of re^2 + im^2: a finite gradient at silence
COSYVOICE_LOG_FLOOR = 1e-5  # mel magnitude clamp before the natural log
_COSYVOICE_PAD = (COSYVOICE_N_FFT - COSYVOICE_HOP_SAMPLES) // 2  # 384 samples of reflection per side

# torch.stft(center=True) reflect-pads n_fft // 2 samples per side; reflection needs more input.
_MIN_STFT_SAMPLES = N_FFT_SAMPLES // 2 + 1

PathType = str | PathLike


class AudioError(ValueError):
    """A file that cannot serve as an utterance; the message names the file and the problem."""

    def __init__(self, path: PathType, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):
        # Rebuild from (path, problem), so the error survives pickling (e.g. DataLoader workers).
        return type(self), (self.path, self.problem)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` to ``(wave, rate)``; wave is float32 ``(N, C)`` in [-1, 1]."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
        return data, int(rate)
    except sf.LibsndfileError as sf_err:
        first_error = sf_err
    # Formats libsndfile lacks go through librosa -> audioread, whose backends (ffmpeg,
    # gstreamer, mad, ...) raise unrelated exception types, hence the broad catch.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns that it is falling back to audioread
            data, rate = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
    except Exception as err:
        reason = f"{first_error}; librosa: {type(err).__name__} {err}".strip()
        raise AudioError(path, f"unreadable or not audio ({reason})") from err
    data = np.atleast_2d(data).T  # librosa gives (C, N) or (N,) -> (N, C)
    return np.ascontiguousarray(data, dtype=np.float32), int(rate)


def resample(wave: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """A mono wave ``(N,)`` at ``rate`` Hz as float32 at ``sample_rate`` Hz (librosa's soxr; unchanged when
    the rates agree)."""
    wave = np.asarray(wave, dtype=np.float32)
    if int(rate) == sample_rate:
        return wave
    return librosa.resample(wave, orig_sr=int(rate), target_sr=sample_rate, res_type=RESAMPLE_TYPE)


def load_audio(
    path: PathType,
    sample_rate: int = SAMPLE_RATE_HZ,
    min_samples: int = MIN_SAMPLES,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Read an audio file as a float32 mono wave ``(N,)`` at ``sample_rate`` Hz.

    Channels are averaged; resampling uses librosa's soxr. Raises :class:`AudioError` (naming
    ``path``) when the file is missing, unreadable, empty, shorter than ``min_samples`` samples
    after resampling, or longer than ``max_seconds`` seconds.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    file = Path(path)
    if not file.is_file():
        raise AudioError(path, "file not found")
    if file.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    data, rate = _decode(file)  # (N, C)
    if data.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples)")
    duration_s = data.shape[0] / rate
    if max_seconds is not None and duration_s > max_seconds:
        raise AudioError(path, f"too long: {duration_s:.2f} s > max_seconds={max_seconds} s")
    wave = resample(data.mean(axis=1, dtype=np.float32), rate, sample_rate)  # (N,) mono by channel mean
    if wave.shape[0] < min_samples:
        raise AudioError(
            path, f"too short: {wave.shape[0]} samples at {sample_rate} Hz < min_samples={min_samples}"
        )
    if not np.isfinite(wave).all():
        raise AudioError(path, "contains NaN or infinite samples")
    return np.ascontiguousarray(wave, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


def num_frames(n_samples: int) -> int:
    """Log-mel frames for ``n_samples`` samples (one per hop; the STFT's last frame is dropped)."""
    return int(n_samples) // HOP_SAMPLES


@functools.lru_cache(maxsize=2)
def _mel_filters(n_mels: int = N_MELS) -> torch.Tensor:
    """Slaney-normalised mel filterbank, float32 ``(n_mels, n_fft // 2 + 1)``: (80, 201), or (128, 201)."""
    filters = librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=N_FFT_SAMPLES, n_mels=n_mels)
    return torch.from_numpy(np.asarray(filters, dtype=np.float32))


@functools.lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    """Periodic Hann window ``(n_fft,)``, as ``torch.hann_window`` gives by default."""
    return torch.hann_window(N_FFT_SAMPLES)


def _as_wave_tensor(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate ``wave`` (``(N,)`` or ``(B, N)``) and return it as a float32 CPU tensor."""
    tensor = torch.as_tensor(wave).detach().to(device="cpu", dtype=torch.float32)
    if tensor.ndim not in (1, 2):
        raise ValueError(f"log_mel expects a wave (N,) or batch (B, N), got shape {tuple(tensor.shape)}")
    if tensor.shape[-1] < _MIN_STFT_SAMPLES:
        raise ValueError(
            f"log_mel needs at least {_MIN_STFT_SAMPLES} samples (reflect padding), got {tensor.shape[-1]}"
        )
    if not torch.isfinite(torch.stack(torch.aminmax(tensor))).all():  # min and max carry any NaN or inf
        raise ValueError("log_mel input contains NaN or infinite samples")
    return tensor


def log_mel(wave: np.ndarray | torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """OSUM-EChat (Whisper-style) log-mel features, float32.

    ``wave`` is a 16 kHz wave ``(N,)`` -> ``(T, n_mels)``, or an equal-length batch ``(B, N)`` ->
    ``(B, T, n_mels)``, with ``T = N // 160``. The -8 decade floor is taken per utterance. ``n_mels``: 80 (the
    OSUM-EChat encoder) or 128 (Whisper large-v3's, which CosyVoice's speech tokenizer reads).
    """
    if n_mels not in WHISPER_N_MELS:
        raise ValueError(f"log_mel n_mels must be one of {WHISPER_N_MELS} (Whisper's filterbanks), got {n_mels}")
    batch = _as_wave_tensor(wave)
    single = batch.ndim == 1
    if single:
        batch = batch.unsqueeze(0)  # (1, N)
    spec = torch.stft(
        batch, n_fft=N_FFT_SAMPLES, hop_length=HOP_SAMPLES, window=_window(), center=True,
        pad_mode="reflect", return_complex=True,
    )  # (B, F=201, T + 1)
    power = spec[..., :-1].abs() ** 2  # (B, F, T): the reference drops the last frame
    mel = _mel_filters(n_mels) @ power  # (B, n_mels, T)
    logs = torch.clamp(mel, min=LOG_FLOOR).log10()
    peak = logs.amax(dim=(-2, -1), keepdim=True)  # (B, 1, 1): per-utterance maximum
    logs = torch.maximum(logs, peak - DYNAMIC_RANGE_LOG10)
    feats = ((logs + LOG_OFFSET) / LOG_SCALE).transpose(-1, -2).contiguous()  # (B, T, n_mels)
    return feats[0] if single else feats


def _wave_of_batch(index: int, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Wave ``index`` of a ``log_mel_batch`` call as a float32 tensor ``(N,)``; errors name the index."""
    if np.ndim(wave) != 1:
        raise ValueError(f"log_mel_batch wave {index}: expected a 1-D wave, got shape {np.shape(wave)}")
    try:
        return _as_wave_tensor(wave)
    except ValueError as err:
        raise ValueError(f"log_mel_batch wave {index}: {err}") from None


@functools.lru_cache(maxsize=1)
def _mel_filter_groups() -> tuple[tuple[slice, slice, torch.Tensor], ...]:
    """The mel filterbank cut into ``MEL_GROUPS`` groups of consecutive filters, each kept only over the FFT
    bins its filters weigh (the filters are narrow: 391 of the 80 x 201 weights are non-zero).

    Per group: the columns it reads of an interleaved power spectrum ``(T, 402)`` (re^2, im^2 per bin), the
    mel bins it writes, and its weights ``(2 * bins, filters)``, each bin's weight twice, so that the
    product also sums re^2 + im^2.
    """
    filters = _mel_filters()  # (80, 201)
    groups = []
    for mels in torch.arange(N_MELS).chunk(MEL_GROUPS):
        first, stop = int(mels[0]), int(mels[-1]) + 1
        used = filters[first:stop].sum(dim=0).nonzero()  # (bins, 1): the FFT bins the group weighs
        low, high = int(used.min()), int(used.max()) + 1
        weights = filters[first:stop, low:high].t().repeat_interleave(2, dim=0).contiguous()  # (2 bins, filters)
        groups.append((slice(2 * low, 2 * high), slice(first, stop), weights))
    return tuple(groups)


def _stft_frames(wave: torch.Tensor) -> torch.Tensor:
    """A wave ``(N,)`` -> its windowed analysis frames ``(N // 160, 400)``: reflect-padded by ``n_fft // 2`` per
    side and framed every hop, as ``torch.stft(center=True)`` frames it, the last frame dropped."""
    half = N_FFT_SAMPLES // 2
    padded = torch.cat([wave[1 : half + 1].flip(0), wave, wave[-half - 1 : -1].flip(0)])  # (N + 400,)
    return padded.unfold(0, N_FFT_SAMPLES, HOP_SAMPLES)[:-1] * _window()


def _log_mel_into(wave: torch.Tensor, out: torch.Tensor) -> None:
    """Write the log-mel of one wave ``(N,)`` into ``out`` ``(N // 160, 80)``, a view of a batch's features."""
    frames = _stft_frames(wave)  # (T, 400)
    squares = torch.view_as_real(torch.fft.rfft(frames)).square_().view(len(frames), -1)  # (T, 402)
    for columns, mels, weights in _mel_filter_groups():
        torch.matmul(squares[:, columns], weights, out=out[:, mels])
    logs = out.clamp_(min=LOG_FLOOR).log10_()
    logs.clamp_(min=logs.max() - DYNAMIC_RANGE_LOG10).add_(LOG_OFFSET).div_(LOG_SCALE)


def log_mel_batch(waves: list[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features for variable-length waves, zero padded: each wave's rows equal ``log_mel`` of it alone.

    ``waves``: B waves ``(N_b,)`` -> features ``(B, T_max, 80)`` float32 and lengths ``(B,)`` int64
    (``T_b = N_b // 160`` frames per utterance). The same FFT frames as ``log_mel``; |X|^2 and the mel
    product are summed in another order (within 1e-5 of it), and the mel product reads only the bins each
    filter group weighs. One wave at a time, so each step's data stays in the processor's cache (one FFT over
    all waves' frames at once was slower), written straight into the padded batch.
    """
    if len(waves) == 0:
        raise ValueError("log_mel_batch needs at least one wave")
    tensors = [_wave_of_batch(index, wave) for index, wave in enumerate(waves)]
    lengths = torch.tensor([num_frames(tensor.shape[0]) for tensor in tensors], dtype=torch.int64)  # (B,)
    feats = torch.empty(len(tensors), int(lengths.max()), N_MELS)  # (B, T_max, 80)
    for index, wave in enumerate(tensors):
        n_frames = int(lengths[index])
        _log_mel_into(wave, feats[index, :n_frames])
        feats[index, n_frames:] = 0.0
    return feats, lengths


# ----------------------------------------------------------------------------------------------
# The CosyVoice-300M-25Hz front-end (22.05 kHz)
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cosyvoice_mel_filters() -> torch.Tensor:
    """Slaney mel filterbank of the CosyVoice front-end, float32 ``(80, 513)``."""
    filters = librosa.filters.mel(
        sr=COSYVOICE_RATE, n_fft=COSYVOICE_N_FFT, n_mels=COSYVOICE_N_MELS, fmin=0.0, fmax=COSYVOICE_FMAX_HZ
    )
    return torch.from_numpy(np.asarray(filters, dtype=np.float32))


def cosyvoice_mel(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """CosyVoice-300M-25Hz log-mel of a 22.05 kHz wave ``(N,)`` or batch ``(B, N)`` -> float32 ``(B, 80, N // 256)``.

    A 1-D wave gives a batch of one. The result stays on the wave's device and keeps its autograd graph
    (gradients are finite even through silence, thanks to the 1e-9 inside the square root). Raises ValueError
    for another number of dimensions, fewer than 385 samples (the 384-sample reflect padding needs more) or
    NaN/inf.
    """
    batch = torch.as_tensor(wave).to(dtype=torch.float32)  # keeps autograd: usable in a mel loss
    if batch.ndim not in (1, 2):
        raise ValueError(f"cosyvoice_mel expects a wave (N,) or batch (B, N), got shape {tuple(batch.shape)}")
    batch = batch.reshape(-1, batch.shape[-1])  # (B, N)
    if batch.shape[-1] <= _COSYVOICE_PAD:
        raise ValueError(f"cosyvoice_mel needs more than {_COSYVOICE_PAD} samples at {COSYVOICE_RATE} Hz "
                         f"(reflect padding), got {batch.shape[-1]}")
    if not torch.isfinite(batch).all():
        raise ValueError("cosyvoice_mel input contains NaN or infinite samples")
    padded = torch.nn.functional.pad(batch.unsqueeze(1), (_COSYVOICE_PAD, _COSYVOICE_PAD), mode="reflect")
    window = torch.hann_window(COSYVOICE_N_FFT, device=batch.device)  # periodic
    spec = torch.stft(
        padded.squeeze(1), n_fft=COSYVOICE_N_FFT, hop_length=COSYVOICE_HOP_SAMPLES, win_length=COSYVOICE_N_FFT,
        window=window, center=False, return_complex=True,
    )  # (B, 513, N // 256)
    magnitude = torch.sqrt(spec.real.square() + spec.imag.square() + COSYVOICE_MAGNITUDE_EPS)
    mel = _cosyvoice_mel_filters().to(batch.device) @ magnitude  # (B, 80, frames)
    return torch.clamp(mel, min=COSYVOICE_LOG_FLOOR).log()
