"""The token2wav round trip: the TTS records of a split, and the WER of their audio against the reply text
before and after a token2wav (Whisper base replaced by a stand-in that reads back what was spoken)."""

import json

import numpy as np
import soundfile as sf

import echat.eval.roundtrip as roundtrip

RATE = 16_000


def _corpus(tmp_path):
    """Two TTS records (the first spoken right, the second not) and one ASR record."""
    (tmp_path / "wav").mkdir()
    lines = []
    for i, text in enumerate(("good morning", "see you soon")):
        sf.write(tmp_path / "wav" / f"r{i}.wav", np.full(RATE // 10, 0.1 * (i + 1), np.float32), RATE)
        lines.append({"key": f"tts{i}", "task": "<TEXT2TOKEN>", "txt": text,
                      "extra": {"speech_token": [i, i + 1], "reply_wav": f"wav/r{i}.wav"}})
    sf.write(tmp_path / "wav" / "u.wav", np.zeros(RATE // 10, np.float32), RATE)
    lines.append({"key": "asr", "task": "<TRANSCRIBE>", "txt": "hello", "wav": "wav/u.wav"})
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


def test_tts_records_are_the_text2token_ones_in_order(tmp_path):
    corpus = _corpus(tmp_path)
    assert [r.key for r in roundtrip.tts_records(corpus)] == ["tts0", "tts1"]
    assert [r.key for r in roundtrip.tts_records(corpus, limit=1)] == ["tts0"]


def test_round_trip_scores_the_original_and_the_resynthesised_audio(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path)
    heard = {0.1: "good morning", 0.2: "see you", 0.5: "good morning", 0.6: "see you soon"}
    monkeypatch.setattr(roundtrip, "transcribe", lambda waves: [heard[round(float(w[0]), 1)] for w in waves])

    def token2wav(tokens):  # the tokens [i, i + 1] become a wave that the stand-in reads back
        return np.full(RATE // 10, 0.5 + 0.1 * tokens[0], np.float32)

    scores = roundtrip.token2wav_round_trip(corpus, token2wav)
    assert scores == {"utterances": 2, "wer_original": round(1 / 5, 4), "wer_token2wav": 0.0}
