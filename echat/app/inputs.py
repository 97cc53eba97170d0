"""What the app hears: a corpus test clip, an uploaded file or a recording, as one :class:`Clip`.

Design choices:
- Every source ends as the same float32 mono wave at 16 kHz (:data:`echat.audio.SAMPLE_RATE_HZ`), decoded and
  checked by :func:`echat.audio.load_audio` (uploads go through a temporary file of the same suffix), so a bad
  file gives the loader's one-line reason, named after the upload.
- The sample picker lists the corpus's user clips (:func:`echat.eval.stage_eval.user_clips`: one record per
  labelled single-turn clip) with their labels, filtered by gender, age, emotion, event and seen/unseen.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from echat.audio import SAMPLE_RATE_HZ, AudioError, load_audio
from echat.data.schema import Record, read_manifest
from echat.eval.stage_eval import user_clips
from echat.tokens import CUE_FIELDS

UPLOAD_SUFFIXES = (".wav", ".flac", ".ogg")
ANY = "any"  # the filter value that keeps every clip
FILTER_FIELDS = (*CUE_FIELDS, "subset")  # gender, age, emotion, event, then seen/unseen


class AppError(ValueError):
    """A problem the app shows as one line (bad upload, missing input, unknown task, no checkpoint)."""


@dataclass(frozen=True)
class Clip:
    """One input utterance: ``wave`` (N,) float32 mono at 16 kHz, where it came from, and its labels if known."""

    wave: np.ndarray
    source: str  # "sample", "upload" or "microphone"
    name: str
    labels: dict[str, str] = field(default_factory=dict)  # cue field -> tag, "subset", "transcript"

    @property
    def seconds(self) -> float:
        return self.wave.shape[0] / SAMPLE_RATE_HZ

    def summary(self) -> str:
        """One line: source, name, duration (e.g. "2.31 s") and the labels."""
        labels = " ".join(value for key, value in self.labels.items() if key != "transcript")
        said = f" · “{self.labels['transcript']}”" if "transcript" in self.labels else ""
        return f"{self.source}: {self.name} · {self.seconds:.2f} s {labels}{said}".strip()


def record_labels(record: Record) -> dict[str, str]:
    """A corpus record's labels for the picker: each cue field's tag, the subset and the transcript."""
    labels = {name: str(record.extra.get(key, "")) for name, key in CUE_FIELDS.items()}
    labels["subset"] = str(record.extra.get("subset") or "all")
    labels["transcript"] = str(record.extra.get("q_txt", ""))
    return labels


def corpus_samples(corpus: str | Path, split: str = "test") -> list[Record]:
    """The labelled user clips of a corpus split, in manifest order."""
    manifest = Path(corpus) / f"{split}.jsonl"
    if not manifest.is_file():
        raise AppError(f"{manifest}: no such manifest (is {corpus} an EChat-mini folder?)")
    return user_clips(read_manifest(manifest))


def filter_values(records: list[Record]) -> dict[str, list[str]]:
    """Per filter field, ``any`` then every value the records hold (sorted)."""
    labels = [record_labels(r) for r in records]
    return {name: [ANY, *sorted({lab[name] for lab in labels})] for name in FILTER_FIELDS}


def filter_samples(records: list[Record], **wanted: str) -> list[Record]:
    """The records whose labels match every ``field=value`` given (``any`` or empty matches everything)."""
    unknown = set(wanted) - set(FILTER_FIELDS)
    if unknown:
        raise AppError(f"unknown filter {sorted(unknown)}; filters are {', '.join(FILTER_FIELDS)}")
    keep = {k: v for k, v in wanted.items() if v and v != ANY}
    return [r for r in records if all(record_labels(r)[k] == v for k, v in keep.items())]


def sample_clip(record: Record) -> Clip:
    """The clip of a corpus record."""
    return Clip(load_audio(record.audio_path()), "sample", record.key, record_labels(record))


def upload_clip(name: str, content: bytes) -> Clip:
    """An uploaded file (wav, flac or ogg) as a 16 kHz clip; :class:`AppError` (one line) when it cannot be."""
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise AppError(f"{name}: not a {'/'.join(s[1:] for s in UPLOAD_SUFFIXES)} file")
    with tempfile.NamedTemporaryFile(suffix=suffix) as file:
        file.write(bytes(content))
        file.flush()
        try:
            wave = load_audio(file.name)
        except AudioError as err:
            raise AppError(f"{name}: {err.problem.splitlines()[0]}") from err
    return Clip(wave, "upload", name)


def recorded_clip(wave: np.ndarray | None) -> Clip:
    """A microphone recording (float32 at 16 kHz, as the recorder gives it) as a clip."""
    if wave is None or np.asarray(wave).size == 0:
        raise AppError("the recording is empty: press Record, speak, then Stop")
    return Clip(np.ascontiguousarray(wave, dtype=np.float32), "microphone", "recording")
