"""The prompt voice of CosyVoice-300M-25Hz: a wave -> prompt speech tokens, prompt mel and speaker x-vector.

What OSUM-EChat does (``../shared/reference/osum_echat_reference.md`` §3, ``frontend_zero_shot_22k``): the prompt wav
is read at 22,050 Hz (mono mean) for the prompt mel, and resampled 22,050 -> 16,000 Hz for the two ONNX models:
- speech tokens: Whisper's 128-bin log-mel ``(1, 128, T)`` at 100 frames/s (:func:`echat.audio.log_mel` with
  ``n_mels=128``) and its length ``(1,)`` int32 -> ``speech_tokenizer_v1.onnx`` -> 25 Hz ids, flattened to ``(1, Tp)``;
  prompts over 30 s are refused, as upstream asserts.
- speaker: an 80-bin Kaldi fbank (16 kHz, dither 0, otherwise Kaldi's defaults: 25 ms Povey windows every 10 ms,
  pre-emphasis 0.97, DC removal, snip edges, log power mel from 20 Hz to Nyquist), minus its mean over time,
  ``(1, T, 80)`` -> ``campplus.onnx`` -> a 192-d x-vector ``(1, 192)``.
- prompt mel: :func:`echat.audio.cosyvoice_mel` of the 22.05 kHz wave, ``(1, Tm, 80)``.

Design choices:
- The ONNX files are run positionally (first input, second input, first output), as upstream does: their I/O names
  are not a contract. Their ranks are: tokenizer ``feats`` (1, 128, T) float32 + ``feats_length`` (1,) int32 ->
  ids (1, T') integer; CAM++ (1, T, 80) float32 -> (1, 192) float32.
- The Kaldi fbank comes from ``kaldi-native-fbank`` (k2-fsa's maintained C++ implementation of Kaldi's
  ``compute-fbank-feats``, with Python wheels): upstream calls ``torchaudio.compliance.kaldi.fbank``, but no
  torchaudio release matches this project's ``torch==2.13.0`` (``pip install --dry-run torchaudio==2.13.0``:
  no such version, 2026-12-07) and installing one would replace torch. Like upstream, the wave is given in
  [-1, 1], not scaled to 16-bit integers.
- Resampling is librosa's soxr (:func:`echat.audio.resample`) where upstream uses torchaudio's sinc resampler: the
  prompt differs from upstream's by resampling error only.
- onnxruntime runs on the CPU unless the token2wav lives on CUDA and this onnxruntime has the CUDA provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import onnxruntime as ort
import torch

from echat.audio import COSYVOICE_RATE, SAMPLE_RATE_HZ, SPEECH_TOKENIZER_MAX_SECONDS, cosyvoice_mel, log_mel, resample

TOKENIZER_FILE = "speech_tokenizer_v1.onnx"
CAMPPLUS_FILE = "campplus.onnx"
TOKENIZER_N_MELS = 128  # Whisper large-v3's filterbank
FBANK_BINS = 80
SPEAKER_DIM = 192  # CAM++ x-vector
MAX_PROMPT_SECONDS = SPEECH_TOKENIZER_MAX_SECONDS  # the tokenizer's limit (upstream asserts it)


class CosyVoiceFileError(FileNotFoundError):
    """A file of the CosyVoice-300M-25Hz folder is missing; the message names it, the folder and the fix."""


def missing_file_error(name: str, folder: str | PathLike) -> CosyVoiceFileError:
    """The one error for a missing CosyVoice file: which file, which folder, how to get it."""
    return CosyVoiceFileError(f"{name} not found in {folder}: the CosyVoice-300M-25Hz folder needs it; "
                              "`echat download cosyvoice` fetches and unpacks it")


@dataclass
class Prompt:
    """One voice, made once: what the flow is conditioned on (CPU or the token2wav's device)."""

    tokens: torch.Tensor  # (1, Tp) int64 25 Hz speech ids of the prompt wave
    mel: torch.Tensor  # (1, Tm, 80) float32 CosyVoice log-mel of the prompt at 22.05 kHz
    speaker: torch.Tensor  # (1, 192) float32 CAM++ x-vector

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or self.tokens.shape[0] != 1 or self.tokens.is_floating_point():
            raise ValueError(f"Prompt tokens must be integer ids (1, Tp), got {tuple(self.tokens.shape)} "
                             f"{self.tokens.dtype}")
        if self.mel.ndim != 3 or self.mel.shape[0] != 1 or self.mel.shape[2] != FBANK_BINS:
            raise ValueError(f"Prompt mel must be (1, Tm, 80), got {tuple(self.mel.shape)}")
        if tuple(self.speaker.shape) != (1, SPEAKER_DIM):
            raise ValueError(f"Prompt speaker must be (1, {SPEAKER_DIM}), got {tuple(self.speaker.shape)}")

    @classmethod
    def speaker_only(cls, speaker: torch.Tensor) -> Prompt:
        """No prompt speech, only an x-vector ``(1, 192)`` or ``(192,)``: the flow starts from silence."""
        speaker = torch.as_tensor(speaker, dtype=torch.float32).reshape(1, -1)
        device = speaker.device
        return cls(torch.zeros(1, 0, dtype=torch.long, device=device),
                   torch.zeros(1, 0, FBANK_BINS, device=device), speaker)

    def to(self, device: torch.device | str) -> Prompt:
        return Prompt(self.tokens.to(device), self.mel.to(device), self.speaker.to(device))


def tokenizer_features(wave_16k: np.ndarray) -> np.ndarray:
    """A 16 kHz wave ``(N,)`` -> Whisper 128-bin log-mel ``(1, 128, N // 160)`` float32, the tokenizer's input."""
    return log_mel(wave_16k, n_mels=TOKENIZER_N_MELS).T[None].contiguous().numpy()


def speaker_features(wave_16k: np.ndarray) -> np.ndarray:
    """A 16 kHz wave ``(N,)`` -> Kaldi fbank minus its time mean ``(1, T, 80)`` float32, CAM++'s input.

    ``T = 1 + (N - 400) // 160`` (snip edges); raises ValueError for a wave shorter than one 25 ms frame.
    """
    options = knf.FbankOptions()
    options.frame_opts.samp_freq = SAMPLE_RATE_HZ
    options.frame_opts.dither = 0.0
    options.mel_opts.num_bins = FBANK_BINS
    fbank = knf.OnlineFbank(options)
    fbank.accept_waveform(SAMPLE_RATE_HZ, np.asarray(wave_16k, dtype=np.float32).tolist())
    fbank.input_finished()
    if fbank.num_frames_ready == 0:
        raise ValueError(f"the prompt is too short for a speaker embedding: {len(wave_16k)} samples at 16 kHz")
    feats = np.stack([fbank.get_frame(index) for index in range(fbank.num_frames_ready)])  # (T, 80)
    return (feats - feats.mean(axis=0, keepdims=True))[None].astype(np.float32)


def _session(path: Path, device: torch.device) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as upstream: the prompt is made once per voice
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


class CosyVoiceSpeechTokenizer:
    """``speech_tokenizer_v1.onnx`` alone: a 16 kHz wave -> its 25 Hz speech ids (the prompt's tokens, and
    ``echat tokens extract``'s for user data, which needs no CAM++)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session

    @classmethod
    def from_dir(cls, folder: str | PathLike, device: torch.device | str = "cpu") -> CosyVoiceSpeechTokenizer:
        """Load the folder's ``speech_tokenizer_v1.onnx``; :class:`CosyVoiceFileError` when it is missing."""
        path = Path(folder) / TOKENIZER_FILE
        if not path.is_file():
            raise missing_file_error(TOKENIZER_FILE, folder)
        return cls(_session(path, torch.device(device)))

    def __call__(self, wave_16k: np.ndarray) -> torch.Tensor:
        """A 16 kHz wave ``(N,)`` -> its 25 Hz speech ids ``(1, Tp)`` int64."""
        feats = tokenizer_features(wave_16k)  # (1, 128, T)
        first, second = (node.name for node in self.session.get_inputs()[:2])
        ids = self.session.run(None, {first: feats, second: np.array([feats.shape[2]], dtype=np.int32)})[0]
        return torch.from_numpy(np.asarray(ids).astype(np.int64).reshape(1, -1))


class PromptEncoder:
    """The two ONNX models of the CosyVoice folder: :meth:`prompt_from_wav` turns a voice into a :class:`Prompt`."""

    def __init__(self, tokenizer: ort.InferenceSession, campplus: ort.InferenceSession) -> None:
        self.tokenizer = tokenizer
        self.campplus = campplus

    @classmethod
    def from_dir(cls, folder: str | PathLike, device: torch.device | str = "cpu") -> PromptEncoder:
        """Load ``speech_tokenizer_v1.onnx`` and ``campplus.onnx``; :class:`CosyVoiceFileError` names a missing one."""
        folder = Path(folder)
        for name in (TOKENIZER_FILE, CAMPPLUS_FILE):
            if not (folder / name).is_file():
                raise missing_file_error(name, folder)
        device = torch.device(device)
        return cls(_session(folder / TOKENIZER_FILE, device), _session(folder / CAMPPLUS_FILE, device))

    def speech_tokens(self, wave_16k: np.ndarray) -> torch.Tensor:
        """A 16 kHz wave ``(N,)`` -> its 25 Hz speech ids ``(1, Tp)`` int64."""
        return CosyVoiceSpeechTokenizer(self.tokenizer)(wave_16k)

    def speaker(self, wave_16k: np.ndarray) -> torch.Tensor:
        """A 16 kHz wave ``(N,)`` -> CAM++ x-vector ``(1, 192)`` float32."""
        name = self.campplus.get_inputs()[0].name
        vector = self.campplus.run(None, {name: speaker_features(wave_16k)})[0]
        return torch.from_numpy(np.asarray(vector, dtype=np.float32).reshape(1, -1))

    def prompt_from_wav(self, wave: np.ndarray, rate: int) -> Prompt:
        """A mono wave ``(N,)`` at ``rate`` Hz -> :class:`Prompt` (on the CPU). Refuses more than 30 s."""
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"the prompt wave must be mono (N,), got shape {wave.shape}")
        if len(wave) / rate > MAX_PROMPT_SECONDS:
            raise ValueError(f"the prompt is {len(wave) / rate:.1f} s long; the speech tokenizer takes at most "
                             f"{MAX_PROMPT_SECONDS:.0f} s")
        wave_22k = resample(wave, rate, COSYVOICE_RATE)
        wave_16k = resample(wave_22k, COSYVOICE_RATE, SAMPLE_RATE_HZ)  # as upstream: 16 kHz from the 22.05 kHz read
        mel = cosyvoice_mel(torch.from_numpy(wave_22k)).transpose(1, 2).contiguous()  # (1, Tm, 80)
        return Prompt(self.speech_tokens(wave_16k), mel, self.speaker(wave_16k))
