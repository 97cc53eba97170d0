"""The mini speech tokenizer: 25 Hz rate, token range, determinism, save/load and its error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echat.audio import log_mel
from echat.config import smoke
from echat.data.speech_tokens import (
    CODEBOOK_FILE,
    CONFIG_FILE,
    PATCH_DIMS,
    TOKEN_RATE_HZ,
    MiniSpeechTokenizer,
    mel_to_patches,
    num_tokens,
    patches_to_mel,
)

RATE_HZ = 16_000
CODEBOOK = smoke().speech.codebook_size  # 64 codes: fits on the ~11 s of fixture speech
SAMPLES_PER_TOKEN = 640  # 40 ms at 16 kHz


def test_rate_is_25_hz():
    assert TOKEN_RATE_HZ == 25
    assert PATCH_DIMS == 4 * 80


def test_two_second_clip_gives_fifty_tokens(tokenizer, waves):
    clip = max(waves, key=len)[: 2 * RATE_HZ]  # the longest fixture lasts 2.9 s
    assert clip.shape == (2 * RATE_HZ,)
    tokens = tokenizer.encode(clip)
    assert tokens.shape == (50,)
    assert tokens.dtype == np.int64
    assert tokens.min() >= 0 and tokens.max() < CODEBOOK


def test_tokens_in_range_for_every_clip(tokenizer, waves):
    for wave in waves:
        tokens = tokenizer.encode(wave)
        assert tokens.shape == (num_tokens(len(wave) // 160),)
        assert 0 <= tokens.min() and tokens.max() < tokenizer.codebook_size


def test_partial_patch_is_padded_with_the_last_frame():
    mel = np.arange(6 * 80, dtype=np.float32).reshape(6, 80)  # 6 frames: one full patch + 2 frames
    patches = mel_to_patches(mel)
    assert patches.shape == (2, PATCH_DIMS)
    frames = patches_to_mel(patches)  # (8, 80)
    np.testing.assert_array_equal(frames[:6], mel)
    np.testing.assert_array_equal(frames[6], mel[5])
    np.testing.assert_array_equal(frames[7], mel[5])


def test_decode_mel_gives_the_centroid_frames(tokenizer):
    tokens = np.array([3, 0, CODEBOOK - 1])
    mel = tokenizer.decode_mel(tokens)
    assert mel.shape == (12, 80)
    np.testing.assert_array_equal(mel[4:8].reshape(-1), tokenizer.codebook[0])
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tokenizer.decode_mel([CODEBOOK])


def test_fit_and_encode_are_deterministic(tokenizer, waves):
    again = MiniSpeechTokenizer().fit(waves, codebook_size=CODEBOOK, seed=0)
    np.testing.assert_array_equal(again.codebook, tokenizer.codebook)
    np.testing.assert_array_equal(tokenizer.encode(waves[1]), tokenizer.encode(waves[1]))
    other_seed = MiniSpeechTokenizer().fit(waves, codebook_size=CODEBOOK, seed=1)
    assert not np.array_equal(other_seed.codebook, tokenizer.codebook)


def test_fit_on_log_mels_equals_fit_on_waves(tokenizer, waves):
    from_mels = MiniSpeechTokenizer().fit([log_mel(w).numpy() for w in waves], codebook_size=CODEBOOK, seed=0)
    np.testing.assert_array_equal(from_mels.codebook, tokenizer.codebook)


def test_max_patches_subsamples(waves):
    small = MiniSpeechTokenizer().fit(waves, codebook_size=8, seed=0, max_patches=40)
    assert small.codebook.shape == (8, PATCH_DIMS)
    assert small.codebook.dtype == np.float32


def test_save_load_round_trip(tokenizer, waves, tmp_path):
    tokenizer.save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text(encoding="utf-8"))
    assert meta == {"codebook_size": CODEBOOK, "frames_per_token": 4, "n_mels": 80, "version": 1}
    loaded = MiniSpeechTokenizer.load(tmp_path)
    assert loaded.codebook_size == CODEBOOK
    for wave in waves:
        np.testing.assert_array_equal(loaded.encode(wave), tokenizer.encode(wave))


def test_load_without_files_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{CODEBOOK_FILE}, {CONFIG_FILE}"):
        MiniSpeechTokenizer.load(tmp_path)


def test_load_rejects_mismatched_codebook(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    np.save(tmp_path / CODEBOOK_FILE, tokenizer.codebook[:10])
    with pytest.raises(ValueError, match="does not match"):
        MiniSpeechTokenizer.load(tmp_path)


def test_unfitted_tokenizer_says_so(waves):
    fresh = MiniSpeechTokenizer()
    assert not fresh.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.encode(waves[0])
    with pytest.raises(RuntimeError, match="not fitted"):
        _ = fresh.codebook_size


def test_too_few_patches_for_the_codebook(waves):
    with pytest.raises(ValueError, match=r"too few patches to fit 512 codes: 1 clip\(s\) give \d+ patches"):
        MiniSpeechTokenizer().fit(waves[:1], codebook_size=512)


def test_bad_inputs_are_rejected(tokenizer, waves):
    with pytest.raises(TypeError, match="sequence of clips"):
        MiniSpeechTokenizer().fit(waves[0], codebook_size=4)
    with pytest.raises(ValueError, match="encode expects a wave"):
        tokenizer.encode(np.zeros((2, 1600), dtype=np.float32))
    with pytest.raises(TypeError, match="integers"):
        tokenizer.decode_mel([0.5, 1.0])
