"""The app's inputs: corpus samples and their filters, uploads (good and bad), recordings."""

import io

import numpy as np
import pytest
import soundfile as sf

from echat.app.inputs import (
    ANY,
    AppError,
    corpus_samples,
    filter_samples,
    filter_values,
    recorded_clip,
    sample_clip,
    upload_clip,
)


def test_samples_are_listed_with_their_labels_and_filtered(tiny_corpus):
    records = corpus_samples(tiny_corpus)
    assert [r.key for r in records] == ["clip0", "clip1"]
    values = filter_values(records)
    assert values["gender"] == [ANY, "<FEMALE>", "<MALE>"] and values["subset"] == [ANY, "seen", "unseen"]
    assert [r.key for r in filter_samples(records, gender="<MALE>")] == ["clip1"]
    assert [r.key for r in filter_samples(records, emotion="<SAD>", subset="seen", age=ANY)] == ["clip0"]
    assert filter_samples(records, gender="<MALE>", event="<SIGH>") == []
    clip = sample_clip(records[0])
    assert clip.labels["emotion"] == "<SAD>" and f"{clip.seconds:.2f} s" in clip.summary()
    with pytest.raises(AppError, match="unknown filter"):
        filter_samples(records, mood="<SAD>")


def test_a_folder_without_a_test_split_is_one_line(tmp_path):
    with pytest.raises(AppError, match="test.jsonl: no such manifest"):
        corpus_samples(tmp_path)


def test_an_upload_is_decoded_and_resampled_to_16_khz():
    wave = 0.1 * np.sin(np.arange(44_100) / 10).astype(np.float32)
    for fmt in ("WAV", "FLAC", "OGG"):
        buffer = io.BytesIO()
        sf.write(buffer, np.stack([wave, wave], 1), 44_100, format=fmt)
        clip = upload_clip(f"mine.{fmt.lower()}", buffer.getvalue())
        assert clip.source == "upload" and abs(clip.wave.shape[0] - 16_000) <= 2, fmt


@pytest.mark.parametrize("name, content, message", [
    ("noise.wav", b"not audio at all", "noise.wav: unreadable or not audio"),
    ("empty.flac", b"", "empty.flac: empty file"),
    ("notes.txt", b"hello", "notes.txt: not a wav/flac/ogg file"),
])
def test_a_bad_upload_is_one_line_naming_the_file(name, content, message):
    with pytest.raises(AppError) as caught:
        upload_clip(name, content)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_recording_becomes_a_microphone_clip():
    clip = recorded_clip(np.zeros(8_000, dtype=np.float64))
    assert clip.source == "microphone" and clip.wave.dtype == np.float32 and "0.50 s" in clip.summary()
    with pytest.raises(AppError, match="recording is empty"):
        recorded_clip(None)
