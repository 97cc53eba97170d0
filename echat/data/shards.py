"""Shard tars in the reference layout (``data_type shard``): write, read, convert back to raw.

One sample is a run of consecutive tar members sharing the prefix ``<key>`` (member name up to the
LAST '.', so keys may contain dots):

- ``<key>.txt``, ``<key>.task``, ``<key>.extra`` (JSON of ``extra`` without ``duration``),
  ``<key>.duration`` (when ``extra`` has one), ``<key>.wav`` (16 kHz mono int16 PCM WAV; absent for
  text-only records), history turns ``<key>.wav_<N>`` / ``<key>.txt_<N>``;
- ours: ``<key>.meta`` (JSON with ``start``/``end``/``others`` when present), so raw -> shard -> raw
  is lossless. Other members the reference writes (``.lang``, ``.speaker``, ...) are read into
  ``others`` as text.

A ``shards_list.txt`` lists the tars (``<prefix>_<9-digit index>.tar``), one per line, relative to the
list's folder. Readers report problems as :class:`~echat.data.schema.Problem`: collected into a list
when one is given, else raised as :class:`ShardError`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from echat.data.schema import (
    HISTORY_FIELD,
    UNKNOWN_KEY,
    AudioNotFoundError,
    ManifestError,
    PathType,
    Problem,
    Record,
    dump_json,
    parse_record,
    write_manifest,
)

SHARD_LIST = "shards_list.txt"
PER_SHARD = 1000  # utterances per tar (reference num_utts_per_shard)
SAMPLE_RATE_HZ = 16_000
PCM_SCALE = 32768.0  # int16 full scale, as soundfile/torchaudio read it back
RESAMPLE_TYPE = "soxr_hq"
META = "meta"
_TEXT_MEMBERS = ("txt", "task", "extra", "duration", META)
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
_AUDIO_ERRORS = (sf.SoundFileError, RuntimeError, ValueError, TypeError, EOFError)

Members = dict[str, bytes]  # suffix ("txt", "wav", "wav_1", ...) -> member bytes


class ShardError(ManifestError):
    """A shard list, tar or sample that cannot be read (carries its problems like ManifestError)."""


@dataclass
class ShardSample:
    """One sample read from a shard tar.

    ``record.wav`` (and each history ``wav``) is the member name inside the tar, ``record.source``
    the tar path and ``record.line`` the 1-based index of the sample's first member. ``audio`` is
    the whole stored wave (float32, 16 kHz); ``record.start``/``record.end`` still apply to it.
    """

    record: Record
    audio: np.ndarray | None
    history_audio: list[np.ndarray] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------


def read_wave(source: PathType | io.BytesIO, sample_rate: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Decode audio as a float32 mono wave ``(N,)`` at ``sample_rate`` (channel mean, librosa soxr)."""
    data, rate = sf.read(source, dtype="float32", always_2d=True)  # (N, C)
    wave = data.mean(axis=1, dtype=np.float32)  # (N,)
    if rate != sample_rate and wave.size:
        import librosa  # lazy: slow import, only needed for off-rate files

        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type=RESAMPLE_TYPE)
    return np.ascontiguousarray(wave, dtype=np.float32)


def encode_wav(wave: np.ndarray, sample_rate: int = SAMPLE_RATE_HZ) -> bytes:
    """WAV bytes of a float wave ``(N,)`` as int16 PCM (``round(x * 32768)``, clipped)."""
    pcm = np.clip(np.round(np.asarray(wave, dtype=np.float64) * PCM_SCALE), -PCM_SCALE, PCM_SCALE - 1)
    buffer = io.BytesIO()
    sf.write(buffer, pcm.astype(np.int16), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _fail(problems: list[Problem] | None, *found: Problem) -> None:
    """Collect ``found`` into ``problems``, or raise them as a :class:`ShardError` when it is None."""
    if problems is None:
        raise ShardError(found)
    problems.extend(found)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def check_key(key: str) -> str:
    """``key`` when it can name tar members and files; raises ``ValueError`` otherwise."""
    if any(bad in key for bad in ("/", "\\", "\0", "\n")) or key in (".", ".."):
        raise ValueError(f"key {key!r} cannot be used in a shard (no '/', '\\', NUL, newline, '.' or '..')")
    return key


def _check_keys(records: list[Record]) -> None:
    seen: dict[str, Record] = {}
    for record in records:
        check_key(record.key)
        if record.key in seen:
            first = seen[record.key]
            raise ShardError([Problem(record.source, record.line, record.key,
                                      f"duplicate key (first at {first.source}:{first.line})")])
        seen[record.key] = record


def _audio_member(wav: str, record: Record, base_dir: PathType | None, sample_rate: int) -> bytes:
    """WAV bytes of the record's audio path ``wav`` resampled to ``sample_rate``; raises
    :class:`ShardError` naming the file (every path tried when it is found nowhere)."""
    try:
        path = record.locate(wav, base_dir)
        if not path.is_file():
            raise AudioNotFoundError(f"audio not found: {path}")
    except AudioNotFoundError as err:
        raise ShardError([Problem(record.source, record.line, record.key, str(err))]) from None
    try:
        return encode_wav(read_wave(path, sample_rate), sample_rate)
    except _AUDIO_ERRORS as err:
        raise ShardError([Problem(record.source, record.line, record.key,
                                  f"unreadable audio {path}: {err}")]) from None


def _record_members(record: Record, base_dir: PathType | None, sample_rate: int) -> list[tuple[str, bytes]]:
    """The ``(suffix, bytes)`` members of one record, in writing order."""
    extra = dict(record.extra)
    members = [("txt", record.txt.encode("utf-8")), ("task", record.task.encode("utf-8"))]
    if "duration" in extra:
        members.append(("duration", dump_json(extra.pop("duration")).encode("utf-8")))
    members.append(("extra", dump_json(extra).encode("utf-8")))
    if record.wav is not None:
        members.append(("wav", _audio_member(record.wav, record, base_dir, sample_rate)))
    for number, turn in enumerate(record.history, 1):
        members.append((f"wav_{number}", _audio_member(turn["wav"], record, base_dir, sample_rate)))
        members.append((f"txt_{number}", turn["txt"].encode("utf-8")))
    meta: dict[str, Any] = {}
    if record.start is not None or record.end is not None:
        meta.update(start=record.start, end=record.end)
    if record.others:
        meta["others"] = record.others
    if meta:
        members.append((META, dump_json(meta).encode("utf-8")))
    return members


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def _write_tar(path: Path, records: list[Record], base_dir: PathType | None, sample_rate: int,
               progress: tqdm) -> None:
    """Write one tar atomically (a temporary name, renamed when complete)."""
    partial = path.with_name(path.name + ".partial")
    try:
        with tarfile.open(partial, "w") as tar:
            for record in records:
                for suffix, payload in _record_members(record, base_dir, sample_rate):
                    _add_member(tar, f"{record.key}.{suffix}", payload)
                progress.update(1)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_shards(
    records: Iterable[Record],
    out_dir: PathType,
    *,
    base_dir: PathType | None = None,
    per_shard: int = PER_SHARD,
    prefix: str = "shards",
    sample_rate: int = SAMPLE_RATE_HZ,
) -> Path:
    """Write records as shard tars ``<prefix>_<000000000>.tar`` plus ``shards_list.txt``.

    Relative audio paths are resolved against ``base_dir`` (default: each record's manifest folder);
    audio is re-encoded as mono int16 WAV at ``sample_rate``. Keys must be unique and usable as
    file names. Returns the path of the list.
    """
    if per_shard < 1:
        raise ValueError(f"per_shard must be at least 1, got {per_shard}")
    records = list(records)
    _check_keys(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    with tqdm(total=len(records), desc="write shards", unit="utt", disable=None) as progress:
        for index, first in enumerate(range(0, len(records), per_shard)):
            names.append(f"{prefix}_{index:09d}.tar")
            _write_tar(out / names[-1], records[first:first + per_shard], base_dir, sample_rate, progress)
    list_path = out / SHARD_LIST
    list_path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return list_path


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


COMBINES_LIST, COMBINES_TAR_ROOT = "combines_list.txt", "combines_tar_root.txt"  # reference §6.3


@dataclass(frozen=True)
class ListEntry:
    """One tar of a shard list; ``metadata``: a combine entry's JSONL (its records give each sample's
    ``txt``, ``task`` and ``extra``; the tar gives the audio), None for a plain shard."""

    line: int
    tar: Path
    metadata: Path | None = None
    source: str = ""  # the list file that names it


def _read_list(list_path: PathType, what: str = "shard list") -> list[tuple[int, str]]:
    """``(line, text)`` of every non-blank line; raises :class:`ShardError` (naming ``what``) when unreadable."""
    source = str(list_path)
    try:
        text = Path(list_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ShardError([Problem(source, 0, UNKNOWN_KEY, f"{what} not found")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ShardError([Problem(source, 0, UNKNOWN_KEY, f"cannot read {what}: {err}")]) from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def listed_path(path: str, folder: Path) -> Path:
    """A listed path: absolute, else from the working directory when it is there (the reference's
    lists are read from its repository's root), else from the list's folder."""
    listed = Path(path)
    if listed.is_absolute() or listed.exists():
        return listed
    return folder / listed


def list_entries(list_path: PathType) -> list[ListEntry]:
    """The tars of a shard list: lines ``<tar>``, ``-|<tar>`` (a plain shard) or ``<jsonl>|<tar>`` (a
    combine entry), or a reference ``combines_list.txt`` (per-tar JSONL files, the tars in the folder
    named by ``combines_tar_root.txt`` beside it: ``<root>/<JSONL name without extension>.tar``)."""
    folder = Path(list_path).parent
    lines = _read_list(list_path)
    if Path(list_path).name == COMBINES_LIST:
        root = _combines_root(Path(list_path))
        return [ListEntry(number, root / f"{Path(jsonl).stem}.tar", listed_path(jsonl, folder), str(list_path))
                for number, jsonl in lines]
    entries = []
    for number, line in lines:
        metadata, bar, tar = line.rpartition("|")
        combine = bool(bar) and metadata.strip() != "-"
        entries.append(ListEntry(number, listed_path(tar.strip(), folder),
                                 listed_path(metadata.strip(), folder) if combine else None, str(list_path)))
    return entries


def _combines_root(list_path: Path) -> Path:
    """The tar folder named by the ``combines_tar_root.txt`` beside a ``combines_list.txt``."""
    root_file = list_path.parent / COMBINES_TAR_ROOT
    try:
        root = root_file.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ShardError([Problem(str(list_path), 0, UNKNOWN_KEY, f"cannot read {root_file}: {err}")]) from None
    return listed_path(root, list_path.parent)


def read_shard_list(list_path: PathType) -> list[Path]:
    """Tar paths listed in a shard list (see :func:`list_entries` for the layouts and paths)."""
    return [entry.tar for entry in list_entries(list_path)]


def refused_member(info: tarfile.TarInfo) -> str | None:
    """Why a tar member is not read (None: it is a plain file with a safe name). Why refuse, though
    members are read into memory and never extracted by name: a link, a device, an absolute name or a
    ``..`` in a shard is a damaged or hostile file, and converting it to raw would write outside its folder."""
    if info.issym() or info.islnk():
        return f"member {info.name!r} is a link"
    if not info.isfile():
        return f"member {info.name!r} is not a regular file"
    if info.name.startswith(("/", "\\")) or ".." in PurePosixPath(info.name.replace("\\", "/")).parts:
        return f"member {info.name!r} has an absolute name or a '..' in it"
    return None


def _iter_groups(tar_path: Path) -> Iterator[tuple[int, str, Members] | Problem]:
    """``(first member index, prefix, members)`` per sample; a refused member gives a Problem and is
    skipped; tar damage ends it with a Problem."""
    current, first, members, index = None, 0, {}, 0
    try:
        with tarfile.open(tar_path, mode="r|*") as tar:
            for index, info in enumerate(tar, 1):
                if info.isdir():
                    continue
                refused = refused_member(info)
                if refused:
                    yield Problem(str(tar_path), index, UNKNOWN_KEY, f"{refused}: refused")
                    continue
                prefix, dot, suffix = info.name.rpartition(".")
                if not dot or not prefix or prefix != current or suffix in members:
                    if current is not None:  # the previous sample is complete
                        yield first, current, members
                    current, first, members = prefix or None, index, {}
                if current is None:
                    yield Problem(str(tar_path), index, UNKNOWN_KEY, f"member {info.name!r} has no extension")
                    continue
                members[suffix] = tar.extractfile(info).read()
    except _TAR_ERRORS as err:
        yield Problem(str(tar_path), index, UNKNOWN_KEY, f"unreadable or truncated tar: {err}")
        return
    if current is not None:
        yield first, current, members


def _member_text(members: Members, suffix: str) -> str:
    try:
        return members[suffix].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"member .{suffix} is not UTF-8 text ({err.reason})") from None


def _member_json(members: Members, suffix: str) -> Any:
    try:
        return json.loads(_member_text(members, suffix))
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"member .{suffix} is not valid JSON ({err})") from None


def _group_fields(prefix: str, members: Members) -> dict[str, Any]:
    """The raw-layout dict of one sample's members (``wav`` fields hold member names)."""
    obj: dict[str, Any] = {"key": prefix, "txt": _member_text(members, "txt") if "txt" in members else ""}
    if "task" in members:
        obj["task"] = _member_text(members, "task")
    extra = _member_json(members, "extra") if "extra" in members else {}
    if "duration" in members and isinstance(extra, dict):
        extra["duration"] = _member_json(members, "duration")
    obj["extra"] = extra
    meta = _member_json(members, META) if META in members else {}
    if not isinstance(meta, dict):
        raise TypeError(f"member .{META} is not a JSON object")
    obj.update({name: meta[name] for name in ("start", "end") if name in meta})
    for suffix in members:
        if suffix == "wav" or (HISTORY_FIELD.fullmatch(suffix) and suffix.startswith("wav")):
            obj[suffix] = f"{prefix}.{suffix}"
        elif HISTORY_FIELD.fullmatch(suffix):
            obj[suffix] = _member_text(members, suffix)
        elif suffix not in _TEXT_MEMBERS:
            obj.setdefault(suffix, _member_text(members, suffix))
    for name, value in dict(meta.get("others") or {}).items():
        obj.setdefault(name, value)
    return obj


def _combine_record(tar: Path, first: int, prefix: str, members: Members, metadata: dict[str, dict], jsonl: Path,
                    codebook_size: int | None, default_task: str | None) -> tuple[Record, Members]:
    """Validated record of one combine sample and its members; raises :class:`ManifestError`."""
    try:
        obj, kept = _combined(prefix, members, metadata, jsonl)
    except ValueError as err:
        raise ManifestError([Problem(str(tar), first, prefix, str(err))]) from None
    return parse_record(obj, source=tar, line=first, codebook_size=codebook_size, default_task=default_task), kept


def _group_record(tar: Path, first: int, prefix: str, members: Members,
                  codebook_size: int | None, default_task: str | None = None) -> Record:
    """Validated record of one sample; raises :class:`ManifestError` with one Problem."""
    try:
        obj = _group_fields(prefix, members)
    except (ValueError, TypeError) as err:
        raise ManifestError([Problem(str(tar), first, prefix, str(err))]) from None
    return parse_record(obj, source=tar, line=first, codebook_size=codebook_size, default_task=default_task)


def _combine_metadata(jsonl: Path, problems: list[Problem] | None) -> dict[str, dict]:
    """Key -> JSON object of a combine entry's JSONL; bad lines and duplicate keys are problems."""
    found: dict[str, dict] = {}
    try:
        lines = _read_list(jsonl, "combine JSONL")
    except ShardError as err:
        _fail(problems, *err.problems)
        return found
    for number, line in lines:
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            _fail(problems, Problem(str(jsonl), number, UNKNOWN_KEY, f"malformed JSON: {err}"))
            continue
        key = obj.get("key") if isinstance(obj, dict) else None
        if not isinstance(key, str) or not key:
            _fail(problems, Problem(str(jsonl), number, UNKNOWN_KEY, "key: missing"))
        elif key in found:
            _fail(problems, Problem(str(jsonl), number, key, "duplicate key"))
        else:
            found[key] = obj
    return found


def _combined(prefix: str, members: Members, metadata: dict[str, dict], jsonl: Path) -> tuple[dict, Members]:
    """A combine sample's raw fields (``txt``, ``task``, ``extra`` from its JSONL entry, the audio from the
    tar) and its members without history turns, which combine mode ignores (reference §6.3)."""
    if prefix not in metadata:
        raise ValueError(f"no entry with this key in {jsonl}")
    entry = metadata[prefix]
    missing = [name for name in ("txt", "extra") if name not in entry]
    if missing:
        raise ValueError(f"{', '.join(missing)}: missing in {jsonl} (required in combine mode)")
    kept = {suffix: data for suffix, data in members.items() if not HISTORY_FIELD.fullmatch(suffix)}
    obj = {"key": prefix, "txt": entry["txt"], "extra": entry["extra"], "task": entry.get("task")}
    if "wav" in kept:
        obj["wav"] = f"{prefix}.wav"
    return obj, kept


def _tar_records(entry: ListEntry, problems: list[Problem] | None, codebook_size: int | None,
                 default_task: str | None) -> Iterator[tuple[Record, Members]]:
    metadata = _combine_metadata(entry.metadata, problems) if entry.metadata else None
    for item in _iter_groups(entry.tar):
        if isinstance(item, Problem):
            _fail(problems, item)
            continue
        try:
            if metadata is None:
                found = _group_record(entry.tar, *item, codebook_size, default_task), item[2]
            else:
                found = _combine_record(entry.tar, *item, metadata, entry.metadata, codebook_size, default_task)
        except ManifestError as err:
            _fail(problems, *err.problems)
            continue
        yield found


def iter_shard_records(
    list_path: PathType, problems: list[Problem] | None = None, *, codebook_size: int | None = None,
    default_task: str | None = None,
) -> Iterator[tuple[Record, Members]]:
    """``(record, raw member bytes)`` of every valid sample of every listed tar, without decoding audio.

    Problems (missing list or tar, damaged tar, refused member, invalid sample) are appended to
    ``problems`` when given (the rest is still read), else raised as :class:`ShardError`.
    ``default_task``: the task of samples without a ``.task`` member (else they are problems).
    """
    try:
        entries = list_entries(list_path)
    except ShardError as err:
        _fail(problems, *err.problems)
        return
    yield from iter_entry_records(entries, problems, codebook_size=codebook_size, default_task=default_task)


def iter_entry_records(
    entries: Iterable[ListEntry], problems: list[Problem] | None = None, *, codebook_size: int | None = None,
    default_task: str | None = None,
) -> Iterator[tuple[Record, Members]]:
    """Like :func:`iter_shard_records`, for list entries already read (e.g. a weighted data mix's)."""
    for entry in entries:
        for path, what in ((entry.tar, "shard tar"), (entry.metadata, "combine JSONL")):
            if path is not None and not path.is_file():
                _fail(problems, Problem(entry.source, entry.line, UNKNOWN_KEY, f"{what} not found: {path}"))
                break
        else:
            yield from _tar_records(entry, problems, codebook_size, default_task)


def _decode_member(record: Record, members: Members, suffix: str, sample_rate: int) -> np.ndarray:
    try:
        return read_wave(io.BytesIO(members[suffix]), sample_rate)
    except _AUDIO_ERRORS as err:
        raise ShardError([Problem(record.source, record.line, record.key,
                                  f"corrupt audio member {record.key}.{suffix}: {err}")]) from None


def iter_shards(
    list_path: PathType,
    problems: list[Problem] | None = None,
    *,
    codebook_size: int | None = None,
    sample_rate: int = SAMPLE_RATE_HZ,
    default_task: str | None = None,
) -> Iterator[ShardSample]:
    """Every valid sample of the tars in ``list_path``, with its audio decoded (float32).

    Problems are appended to ``problems`` when given (reading goes on), else raised as
    :class:`ShardError` naming the list, tar or member.
    """
    samples = iter_shard_records(list_path, problems, codebook_size=codebook_size, default_task=default_task)
    yield from _decoded(samples, problems, sample_rate)


def iter_entry_samples(
    entries: Iterable[ListEntry],
    problems: list[Problem] | None = None,
    *,
    codebook_size: int | None = None,
    sample_rate: int = SAMPLE_RATE_HZ,
    default_task: str | None = None,
) -> Iterator[ShardSample]:
    """Like :func:`iter_shards`, for list entries already read (e.g. a weighted data mix's)."""
    samples = iter_entry_records(entries, problems, codebook_size=codebook_size, default_task=default_task)
    yield from _decoded(samples, problems, sample_rate)


def _decoded(samples: Iterable[tuple[Record, Members]], problems: list[Problem] | None,
             sample_rate: int) -> Iterator[ShardSample]:
    """Each ``(record, members)`` with its audio members decoded; a corrupt one is a problem."""
    for record, members in samples:
        try:
            audio = _decode_member(record, members, "wav", sample_rate) if "wav" in members else None
            history = [_decode_member(record, members, f"wav_{number}", sample_rate)
                       for number in range(1, len(record.history) + 1)]
        except ShardError as err:
            _fail(problems, *err.problems)
            continue
        yield ShardSample(record=record, audio=audio, history_audio=history)


# ----------------------------------------------------------------------------------------------
# Shards -> raw
# ----------------------------------------------------------------------------------------------


def _extract(record: Record, members: Members, out: Path, manifest: Path) -> Record:
    """Write one sample's audio members under ``out/wav`` and return its raw record."""
    try:
        name = check_key(record.key)
    except ValueError as err:
        raise ShardError([Problem(record.source, record.line, record.key, str(err))]) from None
    wav = None
    if "wav" in members:
        wav = f"wav/{name}.wav"
        (out / wav).write_bytes(members["wav"])
    history = []
    for number, turn in enumerate(record.history, 1):
        path = f"wav/history/{name}_{number}.wav"
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(members[f"wav_{number}"])
        history.append({"wav": path, "txt": turn["txt"]})
    return dataclasses.replace(record, wav=wav, history=history, source=str(manifest), line=0)


def _raw_records(list_path: PathType, out: Path, manifest: Path,
                 problems: list[Problem] | None) -> Iterator[Record]:
    seen: set[str] = set()
    samples = iter_shard_records(list_path, problems)
    for record, members in tqdm(samples, desc="shards to raw", unit="utt", disable=None):
        if record.key in seen:
            _fail(problems, Problem(record.source, record.line, record.key, "duplicate key (skipped)"))
            continue
        try:
            yield _extract(record, members, out, manifest)
        except ShardError as err:
            _fail(problems, *err.problems)
            continue
        seen.add(record.key)


def shards_to_raw(list_path: PathType, out_dir: PathType, problems: list[Problem] | None = None) -> Path:
    """Convert shards back to raw: audio to ``out_dir/wav/<key>.wav``, records to ``out_dir/data.jsonl``.

    Paths in the manifest are relative to ``out_dir``. Returns the manifest path. Problems are
    collected into ``problems`` when given, else raised as :class:`ShardError`.
    """
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    manifest = out / "data.jsonl"
    return write_manifest(_raw_records(list_path, out, manifest, problems), manifest)
