"""The recorder's Python side, without a browser: PCM bytes at the browser's rate become a 16 kHz wave, the
callbacks hear it, a bad recording is one ValueError line (and one status line when it comes from the browser)."""

import numpy as np
import pytest

from echat.app.recorder import Recorder, pcm_to_wave

BROWSER_RATE_HZ = 48_000


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    """A 0.5-amplitude sine, float32 ``(seconds * rate,)``."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_float32_pcm_at_48_khz_becomes_the_same_tone_at_16_khz():
    wave = Recorder().receive(tone(1.5, BROWSER_RATE_HZ).tobytes(), BROWSER_RATE_HZ)
    assert wave.dtype == np.float32 and wave.shape == (24_000,)
    middle = slice(1_000, -1_000)  # the resampler's edges ring
    np.testing.assert_allclose(wave[middle], tone(1.5, 16_000)[middle], atol=2e-3)


def test_int16_pcm_is_scaled_to_full_scale_one():
    pcm = (tone(0.5, BROWSER_RATE_HZ) * 32768).astype("<i2").tobytes()
    wave = pcm_to_wave(pcm, BROWSER_RATE_HZ, "int16")
    assert wave.shape == (8_000,)
    assert 0.49 < np.abs(wave).max() < 0.51


def test_pcm_already_at_16_khz_is_kept_sample_for_sample():
    samples = tone(0.25, 16_000)
    np.testing.assert_array_equal(pcm_to_wave(samples.tobytes(), 16_000), samples)


def test_wave_is_none_until_a_recording_then_the_last_one():
    recorder = Recorder()
    assert recorder.wave() is None
    recorder.receive(tone(0.2, BROWSER_RATE_HZ).tobytes(), BROWSER_RATE_HZ)
    recorder.receive(tone(0.4, BROWSER_RATE_HZ).tobytes(), BROWSER_RATE_HZ)
    assert recorder.wave().shape == (6_400,)
    assert recorder.status == "recorded 0.40 s"


def test_on_recorded_callbacks_get_each_wave():
    recorder, heard = Recorder(), []
    recorder.on_recorded(lambda wave: heard.append(wave.shape))
    recorder.on_recorded(lambda wave: heard.append(wave.dtype))
    recorder.receive(tone(0.3, BROWSER_RATE_HZ).tobytes(), BROWSER_RATE_HZ)
    assert heard == [(4_800,), np.float32]


@pytest.mark.parametrize(("pcm", "rate", "sample_format", "message"), [
    (b"", BROWSER_RATE_HZ, "float32", "the recording is empty"),
    (b"\x00" * 7, BROWSER_RATE_HZ, "float32", "7 bytes, not a whole number of 4-byte float32 samples"),
    (b"\x00" * 3, BROWSER_RATE_HZ, "int16", "3 bytes, not a whole number of 2-byte int16 samples"),
    (b"\x00" * 8, 0, "float32", "sample rate must be positive"),
    (b"\x00" * 8, BROWSER_RATE_HZ, "mp3", "unknown PCM sample format 'mp3'"),
])
def test_bad_recordings_raise_one_clear_line_and_keep_the_previous_wave(pcm, rate, sample_format, message):
    recorder, heard = Recorder(), []
    recorder.on_recorded(heard.append)
    recorder.receive(tone(0.2, 16_000).tobytes(), 16_000)
    with pytest.raises(ValueError, match=message) as caught:
        recorder.receive(pcm, rate, sample_format)
    assert "\n" not in str(caught.value)
    assert recorder.wave().shape == (3_200,) and len(heard) == 1


def test_the_browser_message_is_read_and_a_bad_one_shows_as_the_status_line():
    recorder = Recorder()
    recorder._on_browser_message(recorder, {"kind": "pcm", "rate": BROWSER_RATE_HZ},
                                 [memoryview(tone(1.0, BROWSER_RATE_HZ).tobytes())])
    assert recorder.wave().shape == (16_000,) and recorder.status == "recorded 1.00 s"
    recorder._on_browser_message(recorder, {"kind": "pcm", "rate": BROWSER_RATE_HZ}, [])
    assert recorder.status.startswith("the recording is empty")
    recorder._on_browser_message(recorder, {"kind": "other"}, [])
    assert recorder.wave().shape == (16_000,)


def test_the_browser_side_has_the_contract_hooks_and_uses_no_codec():
    script = Recorder._esm
    assert "echat-record" in script and '"Record"' in script and '"Stop"' in script
    assert "getUserMedia" in script and "AudioWorklet" in script and "MediaRecorder" not in script
