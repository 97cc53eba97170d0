"""eSpeak NG synthesis through ctypes, and the real-speech fixtures it generates."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time

import librosa
import numpy as np
import pytest
import soundfile as sf

from echat.data.mini import espeak
from echat.data.mini.espeak import NATIVE_RATE_HZ, Voice, list_variants, list_voices, synthesize
from echat.data.schema import read_manifest
from tests.conftest import FIXTURES

RATE_HZ = 16_000
HELLO = "Hello, how are you today?"
MIN_RMS = 0.01  # speech at the default volume sits near 0.08 RMS; silence is 0
F0_MIN_HZ, F0_MAX_HZ = 60, 500
VOICED_RMS_FRACTION = 0.3  # frames above this fraction of the loudest frame's RMS count as voiced
FIXTURE_BUDGET_BYTES = 600 * 1024
MAX_CLIP_S = 3.0
SMOKE_CODEBOOK = 64
STALE_CLIP_TOLERANCE_S = 0.1
CLOCK_TICK_S = 1.1  # longer than the 1 s resolution of time(NULL)


def median_f0_hz(wave: np.ndarray, rate_hz: int = RATE_HZ) -> float:
    """Median YIN F0 over the loud frames of ``wave`` (N,), in Hz."""
    f0 = librosa.yin(wave, fmin=F0_MIN_HZ, fmax=F0_MAX_HZ, sr=rate_hz)
    rms = librosa.feature.rms(y=wave, frame_length=2048, hop_length=512)[0][: len(f0)]
    return float(np.median(f0[rms > VOICED_RMS_FRACTION * rms.max()]))


def load_generator():
    """The fixture generator script as a module (it lives outside the package)."""
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


# ----------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------


def test_hello_is_a_few_seconds_of_audible_float_speech():
    wave = synthesize(HELLO)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.5 <= len(wave) / RATE_HZ <= 5.0
    assert np.sqrt(np.mean(wave**2)) > MIN_RMS
    assert np.abs(wave).max() <= 1.0


def test_the_same_input_gives_identical_samples_after_other_calls_and_on_another_second():
    voice = Voice("en-us+f3", pitch=70)  # +f3 mixes in breath noise, which eSpeak seeds from the clock
    first = synthesize(HELLO, voice)
    synthesize("Something else, with another voice.", Voice("en-us+m3", rate_wpm=300))
    time.sleep(CLOCK_TICK_S)
    assert np.array_equal(first, synthesize(HELLO, voice))


def test_concurrent_calls_are_serialised_and_stay_deterministic():
    expected = synthesize(HELLO)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(synthesize(HELLO))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(np.array_equal(r, expected) for r in results)


def test_female_high_pitch_voice_has_a_higher_f0_than_male_low_pitch_voice():
    female = median_f0_hz(synthesize(HELLO, Voice("en-us+f3", pitch=70)))
    male = median_f0_hz(synthesize(HELLO, Voice("en-us+m3", pitch=30)))
    assert female > 1.5 * male, (female, male)


def test_a_faster_rate_gives_shorter_audio():
    assert len(synthesize(HELLO, Voice(rate_wpm=300))) < 0.75 * len(synthesize(HELLO, Voice(rate_wpm=120)))


def test_tract_scale_raises_f0_and_keeps_the_speaking_rate():
    plain = synthesize(HELLO, Voice("en-us+m3"))
    small = synthesize(HELLO, Voice("en-us+m3", tract_scale=1.5))
    assert median_f0_hz(small) > 1.3 * median_f0_hz(plain)
    assert 0.8 < len(small) / len(plain) < 1.2


def test_native_rate_is_kept_when_no_rate_is_asked():
    native = synthesize(HELLO, sample_rate=None)
    resampled = synthesize(HELLO)
    assert NATIVE_RATE_HZ == 22_050
    assert abs(len(native) / NATIVE_RATE_HZ - len(resampled) / RATE_HZ) < 0.01


def test_ssml_breaks_add_silence():
    plain = synthesize("<speak>Hello there</speak>", ssml=True)
    paused = synthesize('<speak>Hello <break time="800ms"/> there</speak>', ssml=True)
    assert len(paused) - len(plain) > 0.5 * RATE_HZ


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_a_value_error(text):
    with pytest.raises(ValueError, match="empty"):
        synthesize(text)


@pytest.mark.parametrize("name, match", [("xx-nowhere", "unknown eSpeak NG voice"),
                                         ("en-us+nobody", "unknown eSpeak NG voice variant")])
def test_unknown_voices_are_value_errors(name, match):
    with pytest.raises(ValueError, match=match):
        synthesize(HELLO, Voice(name))


@pytest.mark.parametrize("field, value", [("rate_wpm", 20), ("pitch", 101), ("pitch_range", -1),
                                          ("volume", 500), ("word_gap_10ms", -5), ("tract_scale", 3.0)])
def test_out_of_range_prosody_is_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        Voice(**{field: value})


def test_voices_and_variants_are_listed_from_the_data_folder():
    assert {"en-us", "en", "fr"} <= set(list_voices())
    assert {"f3", "m3", "m1"} <= set(list_variants())


def test_a_missing_library_is_a_runtime_error_naming_what_was_tried(monkeypatch, tmp_path):
    missing = tmp_path / "libespeak-ng.so"
    data = espeak._locate()[1]
    monkeypatch.setattr(espeak, "_locate", lambda: (str(missing), data))
    with pytest.raises(RuntimeError, match=str(missing)):
        synthesize(HELLO)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


def test_fixtures_stay_small():
    size = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert size < FIXTURE_BUDGET_BYTES


def test_fixture_manifest_parses_and_every_clip_is_short_16k_int16_mono():
    records = read_manifest(FIXTURES / "sample.jsonl", codebook_size=SMOKE_CODEBOOK)
    assert len(records) == 9
    paths = {p for r in records if r.wav for p in [r.audio_path(), *r.history_paths()]}
    for path in paths:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (RATE_HZ, 1, "PCM_16"), path
        assert info.duration <= MAX_CLIP_S, path


def test_the_same_words_with_another_cue_get_another_reply():
    lines = [json.loads(line) for line in (FIXTURES / "sample.jsonl").read_text(encoding="utf-8").splitlines()]
    by_key = {line["key"]: line for line in lines}
    sad, happy = by_key["s2s_think_0005"], by_key["s2s_0006"]
    assert sad["extra"]["q_txt"].rstrip(".!") == happy["extra"]["q_txt"].rstrip(".!")
    assert (sad["extra"]["q_emotion"], happy["extra"]["q_emotion"]) == ("<SAD>", "<HAPPY>")
    assert sad["txt"].startswith("<COMFORTING>") and happy["txt"].startswith("<HAPPY>")


def test_the_generator_reproduces_the_committed_manifest_and_is_deterministic(tmp_path):
    generator = load_generator()
    generator.write_fixtures(tmp_path / "a")
    generator.write_fixtures(tmp_path / "b")
    committed = (FIXTURES / "sample.jsonl").read_text(encoding="utf-8")
    assert (tmp_path / "a" / "sample.jsonl").read_text(encoding="utf-8") == committed
    for wav in sorted((tmp_path / "a" / "wav").iterdir()):
        assert wav.read_bytes() == (tmp_path / "b" / "wav" / wav.name).read_bytes(), wav.name
        # the committed clip is the same utterance (its bytes may differ under another eSpeak NG build)
        assert abs(sf.info(wav).duration - sf.info(FIXTURES / "wav" / wav.name).duration) < STALE_CLIP_TOLERANCE_S
