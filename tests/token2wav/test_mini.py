"""The mini token2wav: protocol, round trip on real speech against a shuffled control, ids it tolerates."""

from __future__ import annotations

import numpy as np
import pytest

from echat.audio import HOP_SAMPLES, log_mel
from echat.config import smoke
from echat.data.speech_tokens import MiniSpeechTokenizer
from echat.token2wav import MiniToken2Wav, Token2Wav
from echat.token2wav.mini import PEAK_LEVEL

RATE_HZ = 16_000
CODEBOOK = smoke().speech.codebook_size  # 64 codes: fits on the ~11 s of fixture speech
SAMPLES_PER_TOKEN = 640  # 40 ms at 16 kHz
MAX_ERROR_RATIO = 0.7  # round-trip log-mel error must be >= 30 % below the shuffled-token control


@pytest.fixture(scope="module")
def t2w(tokenizer) -> MiniToken2Wav:
    return MiniToken2Wav(tokenizer)


def log_mel_error(reference: np.ndarray, wave: np.ndarray) -> float:
    """Mean abs log-mel difference, each log-mel taken relative to its own peak (level-free)."""
    ref, out = log_mel(reference).numpy(), log_mel(wave).numpy()  # (T, 80) each
    n = min(len(ref), len(out))
    return float(np.abs((ref[:n] - ref.max()) - (out[:n] - out.max())).mean())


def test_satisfies_the_protocol(t2w):
    assert isinstance(t2w, Token2Wav)
    assert t2w.sample_rate == RATE_HZ
    assert t2w.n_iter == 32


def test_round_trip_beats_shuffled_tokens_on_real_speech(t2w, tokenizer, waves):
    rng = np.random.default_rng(0)
    for wave in waves:
        tokens = tokenizer.encode(wave)
        resynth = t2w(tokens)
        shuffled = t2w(rng.permutation(tokens))
        assert log_mel_error(wave, resynth) < MAX_ERROR_RATIO * log_mel_error(wave, shuffled)


def test_duration_is_40_ms_per_token(t2w, tokenizer, waves):
    for wave in waves:
        tokens = tokenizer.encode(wave)
        out = t2w(tokens)
        assert out.shape == (SAMPLES_PER_TOKEN * len(tokens),)
        assert abs(len(out) / RATE_HZ - 0.04 * len(tokens)) <= HOP_SAMPLES / RATE_HZ
        assert abs(len(out) - len(wave)) < SAMPLES_PER_TOKEN  # padding adds less than one token


def test_output_is_float32_peak_normalised_and_deterministic(t2w, tokenizer, waves):
    tokens = tokenizer.encode(waves[0])
    out = t2w(tokens)
    assert out.dtype == np.float32
    assert np.abs(out).max() == pytest.approx(PEAK_LEVEL, abs=1e-6)
    np.testing.assert_array_equal(out, t2w(tokens))
    np.testing.assert_array_equal(out, MiniToken2Wav(tokenizer)(list(tokens)))


def test_boundary_ids_are_ignored(t2w, tokenizer, waves):
    tokens = tokenizer.encode(waves[0])[:20]
    boundary = smoke().speech.boundary_id
    with_boundaries = np.concatenate([tokens[:10], [boundary], tokens[10:], [boundary]])
    np.testing.assert_array_equal(t2w(with_boundaries), t2w(tokens))
    assert t2w([boundary]).shape == (0,)
    assert t2w([]).dtype == np.float32


def test_negative_ids_are_rejected(t2w):
    with pytest.raises(ValueError, match="non-negative"):
        t2w([1, -1, 2])


def test_from_folder_matches(t2w, tokenizer, waves, tmp_path):
    tokenizer.save(tmp_path)
    loaded = MiniToken2Wav.from_folder(tmp_path)
    tokens = tokenizer.encode(waves[2])
    np.testing.assert_array_equal(loaded(tokens), t2w(tokens))


def test_fingerprint_follows_what_a_wave_depends_on(tokenizer, t2w, tmp_path):
    tokenizer.save(tmp_path)
    assert MiniToken2Wav.from_folder(tmp_path).fingerprint() == t2w.fingerprint()  # the same codebook, read back
    assert MiniToken2Wav(tokenizer, n_iter=4).fingerprint() != t2w.fingerprint()
    assert MiniToken2Wav(tokenizer, seed=1).fingerprint() != t2w.fingerprint()
    assert MiniToken2Wav(MiniSpeechTokenizer(tokenizer.codebook + 1e-3)).fingerprint() != t2w.fingerprint()


def test_needs_a_fitted_tokenizer():
    with pytest.raises(ValueError, match="fitted"):
        MiniToken2Wav(MiniSpeechTokenizer())


def test_beside_finds_the_speech_tokenizer_of_a_folder_or_none(tokenizer, tmp_path):
    assert MiniToken2Wav.beside(tmp_path) is None
    tokenizer.save(tmp_path / "speech_tokenizer")
    found = MiniToken2Wav.beside(tmp_path)
    assert found is not None and found.codebook_size == tokenizer.codebook_size
