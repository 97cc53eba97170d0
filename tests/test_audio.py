"""Tests for echat.audio: file loading, and the log-mel front-end against an independent numpy version."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from echat import audio
from echat.audio import AudioError, cosyvoice_mel, load_audio, log_mel, log_mel_batch, num_frames, resample
from echat.config import AudioConfig

RATE_HZ = 16_000
MAX_ABS_ERROR = 1e-4  # features are ~[-1, 1.5]; fp32 STFT vs fp64 numpy stays well inside this
BATCH_VS_ONE_ERROR = 1e-5  # log_mel_batch vs log_mel: the same frames, |X|^2 and mel sums in another order
FORMANTS_HZ = (700.0, 1_200.0, 2_600.0)  # an /a/-like vowel
FORMANT_BANDWIDTH_HZ = 120.0
F0_MAX_HZ = 160.0  # top of the vowel's pitch glide


def vowel(seconds: float, rate_hz: int = RATE_HZ, seed: int = 0) -> np.ndarray:
    """A vowel-like float32 wave (N,): gliding pitch, formant-shaped harmonics, swell envelope, breath.

    Pitch and envelope are closed-form functions of time, so the same vowel at two sample rates
    is the same continuous signal (up to the breath noise and band limit).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate_hz)) / rate_hz  # (N,) seconds
    # f0(t) = 120 + 40 sin(2 pi 1.5 t) Hz (intonation between 80 and 160 Hz), integrated exactly.
    cycles = 120.0 * t + 40.0 / (2 * np.pi * 1.5) * (1 - np.cos(2 * np.pi * 1.5 * t))
    wave = np.zeros_like(t)
    for harmonic in range(1, 30):
        if harmonic * F0_MAX_HZ >= rate_hz / 2:  # stay below Nyquist: no aliasing at any pitch
            break
        freq_hz = harmonic * 140.0  # nominal harmonic frequency for the formant weight
        gain = sum(1.0 / (1.0 + ((freq_hz - f) / FORMANT_BANDWIDTH_HZ) ** 2) for f in FORMANTS_HZ)
        wave += gain / harmonic * np.sin(2 * np.pi * harmonic * cycles)
    envelope = np.sin(np.pi * t / seconds) ** 2  # rise and fall over the clip
    wave = envelope * wave + 0.003 * rng.standard_normal(len(t))
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def numpy_log_mel(wave: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Independent float64 Whisper-style log-mel: (N,) -> (N // 160, n_mels)."""
    n_fft, hop = 400, 160
    x = np.pad(np.asarray(wave, dtype=np.float64), n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # (T + 1, 400)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (T + 1, 201)
    power = power[:-1]  # (T, 201): the reference drops the last frame
    filters = librosa.filters.mel(sr=RATE_HZ, n_fft=n_fft, n_mels=n_mels).astype(np.float64)  # (n_mels, 201)
    logs = np.log10(np.maximum(power @ filters.T, 1e-10))  # (T, n_mels)
    logs = np.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0


def noise(n_samples: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n_samples)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Constants and shapes
# ----------------------------------------------------------------------------------------------


def test_constants_match_audio_config():
    cfg = AudioConfig()
    assert audio.SAMPLE_RATE_HZ == cfg.sample_rate_hz
    assert audio.N_FFT_SAMPLES == cfg.n_fft_samples
    assert audio.HOP_SAMPLES == cfg.hop_samples
    assert audio.N_MELS == cfg.n_mels
    assert audio.MIN_SAMPLES == cfg.min_samples
    assert audio.FRAME_RATE_HZ == cfg.frame_rate_hz
    assert audio.LOG_FLOOR == 1e-10
    assert audio.DYNAMIC_RANGE_LOG10 == 8.0


def test_log_mel_shapes_and_dtype():
    one = log_mel(noise(16_000))
    assert one.shape == (100, 80) and one.dtype == torch.float32
    batch = log_mel(np.stack([noise(16_000, seed) for seed in range(3)]))
    assert batch.shape == (3, 100, 80) and batch.dtype == torch.float32


@pytest.mark.parametrize("n_samples", [201, 400, 1_234, 16_000, 48_001])
def test_num_frames_matches_log_mel(n_samples):
    assert log_mel(noise(n_samples)).shape[0] == num_frames(n_samples) == n_samples // 160


def test_log_mel_accepts_torch_and_float64():
    wave = noise(4_000)
    expected = log_mel(wave)
    torch.testing.assert_close(log_mel(torch.from_numpy(wave)), expected, rtol=0, atol=0)
    torch.testing.assert_close(log_mel(wave.astype(np.float64)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [np.zeros(200, np.float32), np.zeros((1, 2, 800), np.float32)])
def test_log_mel_rejects_bad_shapes(bad):
    with pytest.raises(ValueError):
        log_mel(bad)


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [400, 1_234, 16_000, 48_000])
@pytest.mark.parametrize("kind", ["noise", "vowel"])
def test_log_mel_matches_numpy_reference(n_samples, kind):
    wave = noise(n_samples) if kind == "noise" else vowel(n_samples / RATE_HZ)
    ours = log_mel(wave).numpy()
    ref = numpy_log_mel(wave)
    assert ours.shape == ref.shape == (n_samples // 160, 80)
    assert np.abs(ours - ref).max() < MAX_ABS_ERROR


def test_whisper_128_bin_log_mel_matches_numpy_reference():
    wave = vowel(1.0)
    ours = log_mel(wave, n_mels=128).numpy()
    assert ours.shape == (100, 128)
    assert np.abs(ours - numpy_log_mel(wave, n_mels=128)).max() < MAX_ABS_ERROR
    with pytest.raises(ValueError, match=r"n_mels must be one of \(80, 128\).*got 64"):
        log_mel(wave, n_mels=64)


def test_log_mel_floor_is_per_utterance():
    loud, quiet = vowel(0.5), 1e-4 * vowel(0.5, seed=1)
    batch = log_mel(np.stack([loud, quiet]))  # (2, 50, 80)
    torch.testing.assert_close(batch[0], log_mel(loud), rtol=0, atol=1e-6)
    torch.testing.assert_close(batch[1], log_mel(quiet), rtol=0, atol=1e-6)
    for row, wave in zip(batch, (loud, quiet)):
        assert np.abs(row.numpy() - numpy_log_mel(wave)).max() < MAX_ABS_ERROR


def test_log_mel_batch_equals_single_utterances():
    waves = [vowel(1.0), noise(1_234, seed=1), torch.from_numpy(vowel(0.3, seed=2)), noise(400, seed=3)]
    feats, lengths = log_mel_batch(waves)
    assert feats.shape == (4, 100, 80) and feats.dtype == torch.float32
    assert lengths.dtype == torch.int64
    assert lengths.tolist() == [100, 7, 30, 2]
    for index, wave in enumerate(waves):
        n = int(lengths[index])
        torch.testing.assert_close(feats[index, :n], log_mel(wave), rtol=0, atol=BATCH_VS_ONE_ERROR)
        assert torch.count_nonzero(feats[index, n:]) == 0  # zero padding only


# Clip lengths in samples: the shortest the reflect padding allows, under one window, off the hop, on it.
BATCH_LENGTHS = [201, 300, 399, 400, 559, 1_234, 1_600, 16_000 + 37, 48_000 + 159, 80_000]


def test_log_mel_batch_is_the_per_utterance_formula_for_every_length():
    waves = [vowel(n / RATE_HZ, seed=i) if i % 2 else noise(n, seed=i) for i, n in enumerate(BATCH_LENGTHS)]
    waves[3] = 1e-3 * waves[3]  # a quiet clip beside loud ones: its floor is its own
    feats, lengths = log_mel_batch(waves)
    assert lengths.tolist() == [n // 160 for n in BATCH_LENGTHS]
    assert feats.shape == (len(waves), max(BATCH_LENGTHS) // 160, 80)
    for index, wave in enumerate(waves):
        n = int(lengths[index])
        assert np.abs(feats[index, :n].numpy() - numpy_log_mel(wave)).max() < MAX_ABS_ERROR
        assert np.abs(feats[index, :n].numpy() - log_mel(wave).numpy()).max() < BATCH_VS_ONE_ERROR
        assert torch.count_nonzero(feats[index, n:]) == 0


def test_log_mel_batch_of_one_and_of_equal_lengths():
    one = vowel(0.7)
    feats, lengths = log_mel_batch([one])
    assert lengths.tolist() == [70] and np.abs(feats[0].numpy() - log_mel(one).numpy()).max() < BATCH_VS_ONE_ERROR
    same = [noise(3_210, seed) for seed in range(3)]
    feats, lengths = log_mel_batch(same)
    assert lengths.tolist() == [20, 20, 20]
    assert np.abs(feats.numpy() - log_mel(np.stack(same)).numpy()).max() < BATCH_VS_ONE_ERROR


def test_log_mel_batch_rejects_empty_and_2d():
    with pytest.raises(ValueError):
        log_mel_batch([])
    with pytest.raises(ValueError, match="wave 0: expected a 1-D wave"):
        log_mel_batch([np.zeros((2, 800), np.float32)])


@pytest.mark.parametrize("bad, problem", [(np.zeros(200, np.float32), "at least 201 samples"),
                                          (np.full(800, np.nan, np.float32), "NaN")])
def test_log_mel_batch_names_the_bad_wave(bad, problem):
    with pytest.raises(ValueError, match=f"log_mel_batch wave 1: .*{problem}"):
        log_mel_batch([noise(800), bad])


def test_the_frontend_benchmark_runs_and_finds_the_batch_exact():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout's echat, as `python -m` would find it
    out = subprocess.run([sys.executable, "benchmarks/frontend.py", "--clips", "3", "--repeats", "1", "--threads", "1"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"3 clips, 1\.0-20\.0 s .*\nreference per-utterance loop: [\d.]+ ms\n"
                     r"echat log_mel_batch: +[\d.]+ ms\nspeed-up [\d.]+x; max abs diff", out.stdout), out.stdout


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def test_load_wav_roundtrip(tmp_path):
    wave = vowel(0.8)
    path = tmp_path / "mono.wav"
    sf.write(path, wave, RATE_HZ, subtype="FLOAT")
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    np.testing.assert_array_equal(loaded, wave)


def test_load_stereo_mixes_channels_by_mean(tmp_path):
    left, right = vowel(0.5), vowel(0.5, seed=3)[::-1]
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), RATE_HZ, subtype="FLOAT")
    loaded = load_audio(path)
    assert loaded.shape == (len(left),)
    np.testing.assert_allclose(loaded, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("rate_hz, seconds", [(44_100, 1.5), (8_000, 1.0), (22_050, 0.7)])
def test_load_resamples_to_16k(tmp_path, rate_hz, seconds):
    path = tmp_path / f"rate{rate_hz}.wav"
    sf.write(path, vowel(seconds, rate_hz), rate_hz, subtype="FLOAT")
    loaded = load_audio(path)
    assert loaded.dtype == np.float32
    assert abs(len(loaded) - seconds * RATE_HZ) <= 1
    # The same vowel made at 16 kHz directly: resampling keeps pitch and formants.
    direct = vowel(seconds, RATE_HZ)
    n = min(len(loaded), len(direct))
    assert np.corrcoef(loaded[:n], direct[:n])[0, 1] > 0.99


def test_load_custom_sample_rate(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, vowel(1.0), RATE_HZ, subtype="FLOAT")
    assert len(load_audio(path, sample_rate=8_000)) == 8_000


@pytest.mark.parametrize(
    "suffix, subtype, max_error", [(".flac", "PCM_16", 1 / 32_768), (".ogg", "VORBIS", None)]
)
def test_load_flac_and_ogg(tmp_path, suffix, subtype, max_error):
    wave = vowel(1.0)
    path = tmp_path / f"clip{suffix}"
    sf.write(path, wave, RATE_HZ, subtype=subtype)
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    assert abs(len(loaded) - len(wave)) <= 0.01 * RATE_HZ
    n = min(len(loaded), len(wave))
    if max_error is not None:  # lossless: only 16-bit quantisation
        assert np.abs(loaded[:n] - wave[:n]).max() <= max_error
    else:  # lossy: the waveform is kept closely
        assert np.corrcoef(loaded[:n], wave[:n])[0, 1] > 0.95


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile built without MP3")
def test_load_mp3(tmp_path):
    path = tmp_path / "clip.mp3"
    sf.write(path, vowel(1.0, 44_100), 44_100, format="MP3")
    loaded = load_audio(path)
    assert loaded.dtype == np.float32
    assert abs(len(loaded) - RATE_HZ) <= 0.1 * RATE_HZ  # the encoder adds a little delay/padding


def test_load_falls_back_to_librosa(tmp_path, monkeypatch):
    left, right = vowel(0.5), vowel(0.5, seed=4)
    path = tmp_path / "fallback.wav"
    sf.write(path, np.stack([left, right], axis=1), 8_000, subtype="FLOAT")
    expected = load_audio(path)

    def refuse(*args, **kwargs):
        raise sf.LibsndfileError(1, "pretend libsndfile cannot read this: ")

    monkeypatch.setattr(audio.sf, "read", refuse)
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-6)


def _assert_audio_error(path, **kwargs) -> AudioError:
    with pytest.raises(AudioError, match=re.escape(str(path))) as info:
        load_audio(path, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value


def test_error_missing_file(tmp_path):
    err = _assert_audio_error(tmp_path / "nope.wav")
    assert "not found" in str(err)


def test_error_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio, just text\n" * 20, encoding="utf-8")
    err = _assert_audio_error(path)
    assert "not audio" in str(err)


def test_error_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert "empty" in str(_assert_audio_error(path))


def test_error_wav_without_samples(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), RATE_HZ)
    assert "empty" in str(_assert_audio_error(path))


def test_error_too_short(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, noise(100), RATE_HZ)
    assert "too short" in str(_assert_audio_error(path))


def test_error_too_short_after_resampling(tmp_path):
    path = tmp_path / "short8k.wav"
    sf.write(path, noise(150), 8_000)  # 150 samples at 8 kHz -> 300 at 16 kHz < 400
    assert "too short" in str(_assert_audio_error(path))


def test_error_too_long(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, vowel(2.0), RATE_HZ)
    assert "too long" in str(_assert_audio_error(path, max_seconds=1.5))
    assert len(load_audio(path, max_seconds=2.0)) == 2 * RATE_HZ


def test_resample_keeps_a_16_khz_wave_and_brings_48_khz_to_16():
    same = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    assert np.array_equal(resample(same, 16_000), same)
    tone = np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000).astype(np.float32)  # 1 s at 48 kHz
    down = resample(tone, 48_000)
    assert down.dtype == np.float32 and down.shape == (16_000,)
    expected = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    assert np.abs(down[1000:-1000] - expected[1000:-1000]).max() < 0.01


# ----------------------------------------------------------------------------------------------
# The CosyVoice-300M-25Hz front-end (22.05 kHz)
# ----------------------------------------------------------------------------------------------

COSYVOICE_RATE_HZ = 22_050
TONES_HZ = (220.0, 1_000.0, 5_000.0)


def tones(n_samples: int) -> np.ndarray:
    """Three equal sines at TONES_HZ over a quiet noise floor, 22.05 kHz, float32 ``(N,)``.

    The noise keeps every mel band well above the 1e-5 floor, where float32 FFT rounding (next to the
    tones' large bins) would dominate a pure tone's empty bands in the log domain.
    """
    t = np.arange(n_samples) / COSYVOICE_RATE_HZ
    wave = 0.2 * sum(np.sin(2 * np.pi * hz * t) for hz in TONES_HZ) + 0.1 * noise(n_samples)
    return wave.astype(np.float32)


def numpy_cosyvoice_mel(wave: np.ndarray) -> np.ndarray:
    """The Matcha-TTS mel of CosyVoice's feat_extractor in numpy/librosa (float64): ``(80, N // 256)``."""
    padded = np.pad(wave.astype(np.float64), 384, mode="reflect")
    spec = librosa.stft(padded, n_fft=1024, hop_length=256, win_length=1024, window="hann", center=False)
    magnitude = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)  # (513, T)
    filters = librosa.filters.mel(sr=22_050, n_fft=1024, n_mels=80, fmin=0, fmax=8000, dtype=np.float64)
    return np.log(np.maximum(filters @ magnitude, 1e-5))


@pytest.mark.parametrize("n_samples", [385, 4_000, 22_050])
def test_cosyvoice_mel_matches_a_numpy_librosa_computation(n_samples):
    wave = tones(n_samples)
    ours = cosyvoice_mel(wave)
    ref = numpy_cosyvoice_mel(wave)
    assert ours.shape == (1, 80, n_samples // 256) and ours.dtype == torch.float32
    assert ref.shape == ours.shape[1:]
    assert np.abs(ours[0].numpy() - ref).max() < MAX_ABS_ERROR


def test_cosyvoice_mel_has_finite_gradients_through_silence():
    wave = torch.from_numpy(tones(4_000))
    wave[1_000:3_000] = 0.0  # whole frames of digital silence: |X| = 0 there
    wave.requires_grad_(True)
    cosyvoice_mel(wave).sum().backward()
    assert torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_cosyvoice_mel_puts_each_tone_in_its_mel_band_and_nothing_above_8_khz():
    mel = cosyvoice_mel(tones(22_050))[0].mean(dim=1)  # (80,) time-averaged log-mel
    centres_hz = librosa.mel_frequencies(n_mels=82, fmin=0.0, fmax=8_000.0)[1:-1]  # each filter's peak
    for hz in TONES_HZ:
        band = int(np.abs(centres_hz - hz).argmin())
        assert mel[band] == mel[band - 2 : band + 3].max()  # the band centred nearest the tone peaks
        assert mel[band] > mel.median() + 3.0  # 20 times the magnitude of a noise-only band
    assert centres_hz[-1] < 8_000.0


def test_cosyvoice_mel_batch_rows_equal_single_waves_and_torch_input_is_accepted():
    waves = np.stack([tones(5_000), noise(5_000)])
    batch = cosyvoice_mel(torch.from_numpy(waves))
    assert batch.shape == (2, 80, 19)
    for index, wave in enumerate(waves):
        torch.testing.assert_close(batch[index : index + 1], cosyvoice_mel(wave))


@pytest.mark.parametrize(
    "bad, problem",
    [(np.zeros(384, np.float32), "more than 384 samples"), (np.zeros((1, 2, 800), np.float32), "wave \\(N,\\)"),
     (np.full(800, np.nan, np.float32), "NaN")],
)
def test_cosyvoice_mel_rejects_bad_input_with_one_clear_error(bad, problem):
    with pytest.raises(ValueError, match=problem):
        cosyvoice_mel(bad)


def test_cosyvoice_constants():
    assert audio.COSYVOICE_RATE == 22_050
    assert audio.COSYVOICE_HOP_SAMPLES == 256 and audio.COSYVOICE_N_MELS == 80
