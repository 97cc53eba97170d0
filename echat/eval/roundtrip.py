"""Intelligibility of speech tokens: transcribe audio with an ASR nobody here trained (Whisper base,
:mod:`echat.eval.asr`) and score it against the text that was meant (WER, :mod:`echat.eval.metrics`)."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from echat.data.schema import read_manifest
from echat.eval.asr import transcribe
from echat.eval.metrics import wer


def tts_records(corpus: str | Path, split: str = "test", limit: int | None = None):
    """The TTS records of a split (reply text, reply speech tokens, the reply's original audio)."""
    records = [r for r in read_manifest(Path(corpus) / f"{split}.jsonl") if r.task == "<TEXT2TOKEN>"]
    return records[:limit] if limit else records


def token2wav_round_trip(corpus: str | Path, token2wav, split: str = "test", limit: int | None = 60) -> dict:
    """WER of the original reply audio vs the same reply re-synthesised from its speech tokens."""
    records = tts_records(corpus, split, limit)
    refs = [r.txt for r in records]
    originals = [sf.read(Path(corpus) / r.extra["reply_wav"], dtype="float32")[0] for r in records]
    resynth = [token2wav(r.extra["speech_token"]) for r in records]
    return {"utterances": len(records), "wer_original": round(wer(refs, transcribe(originals)), 4),
            "wer_token2wav": round(wer(refs, transcribe(resynth)), 4)}
