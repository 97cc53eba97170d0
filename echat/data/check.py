"""``echat data check``: validate a raw manifest or a shard list before training on it.

Design choices:
- Every record is validated with :func:`~echat.data.schema.parse_record`, and (``check_audio``)
  every audio file or member it refers to is probed through its header with ``soundfile.info``
  (never decoded): missing, unreadable, shorter than ``min_samples`` at 16 kHz, longer than
  ``max_seconds``. Formats soundfile cannot open are reported as unreadable.
- The report counts records per task and per label, sums audio hours, and lists every problem as
  ``file:line: key: message``. Nothing here imports torch, so a check starts in well under a second.
"""

from __future__ import annotations

import io
import math
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import soundfile as sf
from tqdm import tqdm

from echat.config import AudioConfig
from echat.data.mixes import is_data_yaml, read_data_yaml
from echat.data.schema import (
    UNKNOWN_KEY,
    AudioNotFoundError,
    ManifestError,
    PathType,
    Problem,
    Record,
    read_manifest_report,
)
from echat.data.shards import COMBINES_LIST, iter_entry_records, iter_shard_records
from echat.tokens import CUE_FIELDS, LABEL_SETS, OutputType

SAMPLE_RATE_HZ = AudioConfig.sample_rate_hz  # the front-end rate (echat.audio.SAMPLE_RATE_HZ), read light
LABEL_FIELDS = tuple(CUE_FIELDS[field] for field in LABEL_SETS)  # extra fields counted as labels
TXT_TAGS = "txt tag"  # label group: <TAG>s inside the transcripts of understanding tasks
END_TOLERANCE_S = 0.01  # a segment may end this far past the end of its audio
_TAG = re.compile(r"<[^<>\s]+>")
_AUDIO_ERRORS = (sf.SoundFileError, RuntimeError, ValueError, TypeError, EOFError, OSError)


@dataclass(frozen=True)
class AudioLimits:
    """What audio a record may have: at least ``min_samples`` at 16 kHz, at most ``max_seconds``."""

    min_samples: int = 400
    max_seconds: float | None = None


@dataclass
class CheckReport:
    """What :func:`check_manifest` found in one manifest."""

    path: str
    kind: str  # "raw" (JSON lines) or "shards" (a list of tars)
    records: int = 0  # records that parsed (their audio may still have problems)
    tasks: Counter = field(default_factory=Counter)
    labels: dict[str, Counter] = field(default_factory=dict)  # group ("age", "txt tag", ...) -> counts
    seconds: float | None = None  # total audio duration; None when audio was not checked
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def hours(self) -> float | None:
        return None if self.seconds is None else self.seconds / 3600.0

    def render(self) -> str:
        """Counts tables, then every problem as ``file:line: key: message``, then the verdict."""
        kind = "raw manifest" if self.kind == "raw" else "shard list"
        lines = [f"manifest: {self.path} ({kind})",
                 f"records: {self.records} parsed, {len(self.problems)} problem(s)"]
        if self.seconds is None:
            lines.append("audio: not checked")
        else:
            lines.append(f"audio: {self.hours:.4f} h ({self.seconds:.1f} s)")
        lines += _table("task", self.tasks)
        for group, counts in sorted(self.labels.items()):
            lines += _table(f"label: {group}", counts)
        if self.problems:
            lines += _table("problem", Counter(_problem_kind(problem) for problem in self.problems))
            lines.append("problems:")
            lines += [str(problem) for problem in self.problems]
        lines.append("result: OK" if self.ok else f"result: FAILED ({len(self.problems)} problem(s))")
        return "\n".join(lines)


def _problem_kind(problem: Problem) -> str:
    """What a problem is about, for counting: its field (``task: missing``) or its first words."""
    head, colon, rest = problem.message.partition(": ")
    if colon and " " not in head:
        return f"{head}: {rest.split(' (')[0]}"
    return problem.message.split(":")[0].split(" (")[0]


def _table(title: str, counts: Counter) -> list[str]:
    """Two-column text table, most frequent first (ties by name)."""
    if not counts:
        return []
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    width = max(len(title), *(len(name) for name, _ in rows))
    return [f"{title:<{width}}  count"] + [f"{name:<{width}}  {count:>5}" for name, count in rows]


def _count(report: CheckReport, record: Record) -> None:
    """Add one record to the task and label counts."""
    report.records += 1
    report.tasks[record.task] += 1
    for name in LABEL_FIELDS:
        value = record.extra.get(name)
        if isinstance(value, str) and value:
            report.labels.setdefault(name, Counter())[value] += 1
    if record.output_type is OutputType.TEXT:
        for tag in _TAG.findall(record.txt):
            report.labels.setdefault(TXT_TAGS, Counter())[tag] += 1


# ----------------------------------------------------------------------------------------------
# Audio probing
# ----------------------------------------------------------------------------------------------


def _probe(source: Path | io.BytesIO, shown: str) -> tuple[int, int]:
    """``(frames, sample rate)`` from the audio header; raises ``ValueError`` naming ``shown``."""
    if isinstance(source, Path) and not source.is_file():
        raise ValueError(f"audio file not found: {shown}")
    try:
        info = sf.info(source if isinstance(source, io.BytesIO) else str(source))
    except _AUDIO_ERRORS as err:
        raise ValueError(f"unreadable audio {shown}: {err}") from None
    if info.samplerate <= 0 or info.frames < 0:
        raise ValueError(f"unreadable audio {shown}: bad header ({info.frames} frames at {info.samplerate} Hz)")
    return info.frames, info.samplerate


def _usable_seconds(frames: int, rate: int, span: tuple[float | None, float | None], shown: str,
                   limits: AudioLimits) -> float:
    """Seconds used (the ``(start, end)`` segment, else all); raises ``ValueError`` if unusable."""
    start, end = span
    total = frames / rate
    if end is not None and end > total + END_TOLERANCE_S:
        raise ValueError(f"segment end {end} s is past the end of {shown} ({total:.3f} s)")
    seconds = (total if end is None else end) - (start or 0.0)
    samples = math.ceil(seconds * SAMPLE_RATE_HZ - 1e-9)
    if samples < limits.min_samples:
        raise ValueError(f"audio too short: {shown} has {samples} samples at {SAMPLE_RATE_HZ} Hz "
                         f"< min_samples={limits.min_samples}")
    if limits.max_seconds is not None and seconds > limits.max_seconds:
        raise ValueError(f"audio too long: {shown} is {seconds:.2f} s > max_seconds={limits.max_seconds} s")
    return seconds


def _audio_names(record: Record, members: dict[str, bytes] | None) -> list[str]:
    """The main audio (first, if any) and each history turn's audio of ``record``: member suffixes for a
    shard sample, else the paths as the manifest writes them."""
    if members is not None:  # shard sample: audio is in the tar
        turns = [f"wav_{number}" for number in range(1, len(record.history) + 1)]
        return (["wav"] if "wav" in members else []) + turns
    return ([record.wav] if record.wav is not None else []) + [turn["wav"] for turn in record.history]


def _open(record: Record, members: dict[str, bytes] | None, name: str,
          base_dir: PathType | None) -> tuple[Path | io.BytesIO, str]:
    """``(source, shown name)`` of one audio of ``record``; raises :class:`AudioNotFoundError` naming every
    path tried when a file is in none of its places."""
    if members is not None:
        return io.BytesIO(members[name]), f"member {record.key}.{name}"
    path = record.locate(name, base_dir)
    return path, str(path)


def _check_audio(report: CheckReport, record: Record, members: dict[str, bytes] | None,
                 limits: AudioLimits, base_dir: PathType | None = None) -> None:
    """Probe every audio of ``record``: one Problem per bad file; the main audio's duration is summed."""
    for number, name in enumerate(_audio_names(record, members)):
        is_main = number == 0 and record.wav is not None
        span = (record.start, record.end) if is_main else (None, None)
        try:
            source, shown = _open(record, members, name, base_dir)
            seconds = _usable_seconds(*_probe(source, shown), span, shown, limits)
        except (ValueError, AudioNotFoundError) as err:
            report.problems.append(Problem(record.source, record.line, record.key, str(err)))
            continue
        if is_main:
            report.seconds += seconds


# ----------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------


def is_shard_list(path: PathType) -> bool:
    """True when ``path`` lists tars (a shard list, ``<jsonl>|<tar>`` combine lines, a reference
    ``combines_list.txt`` or a data-list yaml), not JSON records."""
    if Path(path).name == COMBINES_LIST or is_data_yaml(path):
        return True
    try:
        with Path(path).open("r", encoding="utf-8", errors="replace") as lines:
            first = next((line.strip() for line in lines if line.strip()), "")
    except OSError:
        return Path(path).suffix == ".txt"
    return not first.startswith("{") and first.endswith(".tar")


def _entries(path: Path, kind: str, problems: list[Problem], codebook_size: int | None,
             default_task: str | None) -> Iterator[tuple[Record, dict[str, bytes] | None]]:
    """Valid records (with their tar members for shards), streamed; problems go to ``problems``."""
    if kind == "shards" and is_data_yaml(path):
        try:  # each tar once: the mix's weights repeat or subsample tars, which checking them does not need
            entries = list(dict.fromkeys(read_data_yaml(path)))
        except ManifestError as err:
            problems.extend(err.problems)
            return
        yield from iter_entry_records(entries, problems, codebook_size=codebook_size, default_task=default_task)
        return
    if kind == "shards":
        yield from iter_shard_records(path, problems, codebook_size=codebook_size, default_task=default_task)
        return
    try:
        records, found = read_manifest_report(path, codebook_size=codebook_size, default_task=default_task)
    except ManifestError as err:
        records, found = [], err.problems
    problems.extend(found)
    yield from ((record, None) for record in records)


def _duplicate(first: dict[str, Record], record: Record) -> Problem | None:
    """A Problem when ``record``'s key was already seen (``first`` maps key -> first record)."""
    if record.key not in first:
        first[record.key] = record
        return None
    seen = first[record.key]
    return Problem(record.source, record.line, record.key, f"duplicate key (first at {seen.source}:{seen.line})")


def check_manifest(
    path: PathType,
    *,
    codebook_size: int | None = None,
    min_samples: int = AudioConfig.min_samples,
    max_seconds: float | None = None,
    check_audio: bool = True,
    default_task: str | None = None,
    base_dir: PathType | None = None,
) -> CheckReport:
    """Validate every record of a raw JSON-lines manifest or a shard list (and, optionally, its audio).

    Relative audio paths of a raw manifest are looked up in the working directory, then in the
    manifest's folder (:func:`~echat.data.schema.locate_audio`), or only in ``base_dir`` when given.
    Records without a task are problems unless ``default_task`` is given; a manifest without a single
    record is one. Problems are sorted by file and line.
    """
    path = Path(path)
    kind = "shards" if is_shard_list(path) else "raw"
    report = CheckReport(path=str(path), kind=kind, seconds=0.0 if check_audio else None)
    limits = AudioLimits(min_samples=min_samples, max_seconds=max_seconds)
    first: dict[str, Record] = {}
    for record, members in tqdm(_entries(path, kind, report.problems, codebook_size, default_task),
                                desc="check", unit="utt", disable=None):
        _count(report, record)
        duplicate = _duplicate(first, record)
        if duplicate is not None:
            report.problems.append(duplicate)
        if check_audio:
            _check_audio(report, record, members, limits, base_dir)
    if not report.records and not report.problems:
        report.problems.append(Problem(str(path), 0, UNKNOWN_KEY, "no records"))
    report.problems.sort(key=lambda problem: (problem.file, problem.line))
    return report


def run_check(
    path: PathType,
    *,
    codebook_size: int | None = None,
    min_samples: int = AudioConfig.min_samples,
    max_seconds: float | None = None,
    check_audio: bool = True,
    out: TextIO | None = None,
    default_task: str | None = None,
    base_dir: PathType | None = None,
) -> int:
    """Check ``path``, print the report to ``out`` (default stdout); exit code 0 if ok, else 1."""
    report = check_manifest(path, codebook_size=codebook_size, min_samples=min_samples,
                            max_seconds=max_seconds, check_audio=check_audio, default_task=default_task,
                            base_dir=base_dir)
    print(report.render(), file=out if out is not None else sys.stdout)
    return 0 if report.ok else 1

