"""Raw manifest records (the reference's ``data_type raw``): parsing, validation, reading, writing.

Design choices:
- One :class:`Record` per JSON line. The fields the reference names (``key``, ``wav``, ``txt``,
  ``task``, ``extra``, ``start``/``end``, multi-turn ``wav_N``/``txt_N``) are typed; every other
  top-level field rides along untouched in ``others``, so read -> write -> read gives equal records.
- Every problem is a :class:`Problem` pointing at ``file:line: key``. Readers never stop at the
  first bad line and never drop a good one; :class:`ManifestError` carries all problems at once.
- Validation is pure metadata (no audio, no torch); audio checks live in :mod:`echat.data.check`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from echat.tokens import TRANSCRIBE, OutputType, UnknownTaskError, normalize_task, output_type

PathType = str | PathLike
CORE_FIELDS = ("key", "wav", "txt", "task", "extra", "start", "end")
SPEECH_TOKEN = "speech_token"  # extra field: reply speech tokens of speech-output tasks
UNKNOWN_KEY = "-"  # shown in a Problem when the record's key is not known
HISTORY_FIELD = re.compile(r"(wav|txt)_([1-9][0-9]*)")  # multi-turn raw fields, N is 1-based
_TURN_TOKENS = re.compile(r"speech_token_([1-9][0-9]*)")  # extra field: speech tokens of turn N
_KEY_IN_BROKEN_LINE = re.compile(r'"key"\s*:\s*"((?:[^"\\]|\\.)*)"')
BLANK_LINE = object()  # what decode_line gives for a blank line (a JSON ``null`` line decodes to None)
_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one record (or one file), located as ``file:line: key``."""

    file: str
    line: int  # 1-based line (raw) or member index (shard tar); 0 when it concerns the whole file
    key: str  # the record's key, or "-" when unknown
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key or UNKNOWN_KEY}: {self.message}"


class ManifestError(ValueError):
    """Invalid manifest data; ``problems`` lists every problem, the message has one line per problem."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __reduce__(self):
        # Rebuild from the problems, so the error survives pickling (e.g. DataLoader workers).
        return type(self), (self.problems,)


class _Invalid(ValueError):
    """Field ``name`` of one record is wrong (caught by :func:`parse_record`)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")


@dataclass
class Record:
    """One utterance of a raw manifest, validated by :func:`parse_record`.

    ``source`` and ``line`` say where it was read from; they do not take part in equality.
    """

    key: str
    wav: str | None = None  # audio path as written in the manifest (None: text-only task)
    txt: str = ""
    task: str = TRANSCRIBE  # normalized task string
    extra: dict[str, Any] = field(default_factory=dict)
    start: float | None = None  # segment of the audio, in seconds (both or neither)
    end: float | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # [{"wav": .., "txt": ..}] turn 1..N
    others: dict[str, Any] = field(default_factory=dict)  # any other top-level field, unchanged
    source: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def output_type(self) -> OutputType:
        """What the model emits for this record's task."""
        return output_type(self.task)

    @property
    def base_dir(self) -> Path:
        """Folder that relative audio paths are resolved against: the manifest's folder."""
        return Path(self.source).parent if self.source else Path(".")

    def audio_path(self, base_dir: PathType | None = None) -> Path:
        """Path of ``wav``: relative to ``base_dir`` when one is given, else found by :func:`locate_audio`
        (the working directory, then the manifest's folder); raises :class:`AudioNotFoundError`."""
        if self.wav is None:
            raise ValueError(f"{self.key}: record has no wav (task {self.task})")
        return self.locate(self.wav, base_dir)

    def history_paths(self, base_dir: PathType | None = None) -> list[Path]:
        """Paths of the history turns' audio, resolved like :meth:`audio_path`."""
        return [self.locate(turn["wav"], base_dir) for turn in self.history]

    def locate(self, wav: str, base_dir: PathType | None = None) -> Path:
        """The file of ``wav``, an audio path of this record, resolved like :meth:`audio_path`."""
        if base_dir is not None:
            return resolve_path(wav, base_dir)
        return locate_audio(wav, (Path.cwd(), self.base_dir))

    def to_json_dict(self) -> dict[str, Any]:
        """The reference raw layout: key, wav, txt, task, extra, start/end, wav_N/txt_N, others."""
        out: dict[str, Any] = {"key": self.key}
        if self.wav is not None:
            out["wav"] = self.wav
        out.update(txt=self.txt, task=self.task, extra=dict(self.extra))
        if self.start is not None or self.end is not None:
            out.update(start=self.start, end=self.end)
        for number, turn in enumerate(self.history, 1):
            out[f"wav_{number}"] = turn["wav"]
            out[f"txt_{number}"] = turn["txt"]
        for name, value in self.others.items():
            out.setdefault(name, value)
        return out


def resolve_path(path: PathType, base_dir: PathType) -> Path:
    """``path`` itself when absolute, else ``base_dir / path``."""
    path = Path(path)
    return path if path.is_absolute() else Path(base_dir) / path


class AudioNotFoundError(FileNotFoundError):
    """An audio path found in none of the places it may be; the message names every path tried."""


def locate_audio(path: PathType, folders: Iterable[PathType]) -> Path:
    """The first existing ``folder / path`` of ``folders`` (``path`` itself when absolute).

    Why this order: the reference opens a raw list's relative paths from the working directory (its
    own sample list, ``./common_utils/fake_data/raw/wav/random.wav``, is run from the repository's
    root); echat's corpora write them relative to the manifest's folder. Trying both reads either.
    """
    tried = list(dict.fromkeys(resolve_path(path, folder) for folder in folders))
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise AudioNotFoundError(f"audio not found: {path} (tried {', '.join(str(p) for p in tried)})")


def json_kind(value: Any) -> str:
    """JSON type name of a decoded value, for messages ("an array", "null", ...)."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------------------------
# Validation of one record
# ----------------------------------------------------------------------------------------------


def parse_record(
    obj: Any, *, source: PathType, line: int, codebook_size: int | None = None, default_task: str | None = None
) -> Record:
    """Validate one decoded JSON line and build its :class:`Record`.

    Raises :class:`ManifestError` with one :class:`Problem` naming the first wrong field. Speech
    tokens (``extra.speech_token``, ``extra.speech_token_N``) must lie in ``[0, codebook_size)``
    when ``codebook_size`` is given. A record without a task is a problem unless ``default_task``
    is given (then it gets that task).
    """
    key = obj.get("key") if isinstance(obj, dict) else None
    shown = key if isinstance(key, str) and key else UNKNOWN_KEY
    try:
        return _build_record(obj, str(source), line, codebook_size, default_task)
    except _Invalid as err:
        raise ManifestError([Problem(str(source), line, shown, str(err))]) from None


def _build_record(obj: Any, source: str, line: int, codebook_size: int | None, default_task: str | None) -> Record:
    if not isinstance(obj, dict):
        raise _Invalid("record", f"expected a JSON object, got {json_kind(obj)}")
    key = _string(obj, "key", allow_empty=False)
    txt = _string(obj, "txt", allow_empty=True)
    task = _task(obj.get("task"), default_task)
    kind = output_type(task)
    extra = parse_extra(obj.get("extra"))
    wav = _wav(obj.get("wav"), task, kind)
    start, end = _span(obj.get("start"), obj.get("end"))
    history = _history(obj)
    _check_speech_tokens(extra, task, kind, codebook_size)
    others = {name: value for name, value in obj.items()
              if name not in CORE_FIELDS and not HISTORY_FIELD.fullmatch(name)}
    return Record(key=key, wav=wav, txt=txt, task=task, extra=extra, start=start, end=end,
                  history=history, others=others, source=source, line=line)


def _string(obj: dict, name: str, *, allow_empty: bool) -> str:
    if name not in obj:
        raise _Invalid(name, "missing (required)")
    value = obj[name]
    if not isinstance(value, str):
        raise _Invalid(name, f"expected a string, got {json_kind(value)}")
    if not allow_empty and not value.strip():
        raise _Invalid(name, "empty")
    return value


def _task(value: Any, default: str | None) -> str:
    """The normalized task. Why a missing one is a problem: the reference silently reads it as
    ``<TRANSCRIBE>``, so a misspelt field (its own combine sample has ``tas_tag``) trains a chat record
    as ASR; here it is reported, or given ``default`` on request (``--default-task``)."""
    if value is not None and not isinstance(value, str):
        raise _Invalid("task", f"expected a string, got {json_kind(value)}")
    if value is None or not value.strip():
        if default is None:
            raise _Invalid("task", "missing (give --default-task TASK to read such records as TASK)")
        value = default
    task = normalize_task(value)
    try:
        output_type(task)
    except UnknownTaskError as err:
        raise _Invalid("task", str(err)) from None
    return task


def parse_extra(value: Any) -> dict[str, Any]:
    """A record's ``extra`` as a dict: absent is empty, a JSON string is decoded; ValueError ("extra: ...")."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as err:
            raise _Invalid("extra", f"string is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise _Invalid("extra", f"expected an object (or a JSON string of one), got {json_kind(value)}")
    return value


def _wav(value: Any, task: str, kind: OutputType) -> str | None:
    if kind.speech_in:
        if value is None:
            raise _Invalid("wav", f"missing (required: task {task} takes speech input)")
        if not isinstance(value, str) or not value.strip():
            raise _Invalid("wav", f"expected a non-empty path string, got {json_kind(value)} {value!r}")
        return value
    if value is None or value == "":
        return None  # text-only tasks may omit the audio
    if not isinstance(value, str):
        raise _Invalid("wav", f"expected a path string, got {json_kind(value)}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(name, f"expected a finite number of seconds, got {json_kind(value)} {value!r}")
    return value


def _span(start: Any, end: Any) -> tuple[float | None, float | None]:
    if start is None and end is None:
        return None, None
    if start is None or end is None:
        raise _Invalid("start" if start is None else "end", "start and end must be given together")
    start, end = _number("start", start), _number("end", end)
    if not 0 <= start < end:
        raise _Invalid("start", f"need 0 <= start < end, got start={start}, end={end}")
    return start, end


def _history(obj: dict) -> list[dict[str, str]]:
    """Collect ``wav_N``/``txt_N`` into turns 1..N; every turn needs both fields."""
    turns: dict[int, dict[str, Any]] = {}
    for name, value in obj.items():
        match = HISTORY_FIELD.fullmatch(name)
        if match:
            turns.setdefault(int(match[2]), {})[match[1]] = value
    history = []
    for number in range(1, max(turns, default=0) + 1):
        turn = turns.get(number, {})
        for part in ("wav", "txt"):
            if part not in turn:
                raise _Invalid(f"{part}_{number}", f"missing (history turn {number} needs wav_{number} "
                               f"and txt_{number}; turns are numbered 1..{max(turns)})")
            value = turn[part]
            if not isinstance(value, str) or (part == "wav" and not value.strip()):
                raise _Invalid(f"{part}_{number}", f"expected a non-empty string, got {json_kind(value)}")
        history.append({"wav": turn["wav"], "txt": turn["txt"]})
    return history


def _check_speech_tokens(extra: dict, task: str, kind: OutputType, codebook_size: int | None) -> None:
    if kind.speech_out:
        if SPEECH_TOKEN not in extra:
            raise _Invalid(f"extra.{SPEECH_TOKEN}", f"missing (required: task {task} outputs speech)")
        if extra[SPEECH_TOKEN] == []:
            raise _Invalid(f"extra.{SPEECH_TOKEN}", f"empty (task {task} outputs speech)")
    for name, tokens in extra.items():
        if name == SPEECH_TOKEN or _TURN_TOKENS.fullmatch(name):
            check_speech_tokens(tokens, codebook_size, name=f"extra.{name}")


def check_speech_tokens(tokens: Any, codebook_size: int | None = None, *, name: str = SPEECH_TOKEN) -> None:
    """Check ``tokens`` is a list of ints in ``[0, codebook_size)``; raises ``ValueError`` naming ``name``.

    ``codebook_size=None`` only requires non-negative integers.
    """
    if not isinstance(tokens, list):
        raise _Invalid(name, f"expected a list of integers, got {json_kind(tokens)}")
    for index, token in enumerate(tokens):
        if type(token) is not int:
            raise _Invalid(name, f"speech token {token!r} at index {index} is not an integer")
    if not tokens:
        return
    high = codebook_size
    if min(tokens) >= 0 and (high is None or max(tokens) < high):
        return
    index, token = next((i, t) for i, t in enumerate(tokens) if t < 0 or (high is not None and t >= high))
    if high is None:
        raise _Invalid(name, f"speech token {token} is negative at index {index}")
    raise _Invalid(name, f"speech token {token} out of range [0, {high}) at index {index}")


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _parse_line(raw: bytes, source: str, number: int, codebook_size: int | None,
                default_task: str | None) -> Record | None:
    """Record of one raw line, ``None`` for a blank line; raises :class:`ManifestError`."""
    obj = decode_line(raw, source, number)
    if obj is BLANK_LINE:
        return None
    return parse_record(obj, source=source, line=number, codebook_size=codebook_size, default_task=default_task)


def decode_line(raw: bytes, source: str, number: int) -> Any:
    """The decoded JSON value of raw line ``number`` (1-based), :data:`BLANK_LINE` for a blank line; raises
    :class:`ManifestError` for bytes that are not UTF-8 or text that is not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        message = f"not valid UTF-8 ({err.reason} at byte {err.start})"
        raise ManifestError([Problem(source, number, UNKNOWN_KEY, message)]) from None
    if number == 1:
        text = text.removeprefix("\ufeff")  # byte-order mark
    text = text.strip()
    if not text:
        return BLANK_LINE
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        found = _KEY_IN_BROKEN_LINE.search(text)
        key = found[1] if found and found[1] else UNKNOWN_KEY
        detail = f"{err.msg} (column {err.colno})" if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise ManifestError([Problem(source, number, key, f"malformed JSON: {detail}")]) from None
    return obj


def read_manifest_report(
    path: PathType, *, codebook_size: int | None = None, default_task: str | None = None
) -> tuple[list[Record], list[Problem]]:
    """Every valid record of a JSON-lines manifest, in order, and a Problem for every bad line.

    Blank lines are skipped. A missing or unreadable file raises :class:`ManifestError`.
    ``default_task``: the task of records without one (else they are problems).
    """
    source = str(path)
    records: list[Record] = []
    problems: list[Problem] = []
    try:
        with Path(path).open("rb") as lines:
            for number, raw in enumerate(lines, 1):
                try:
                    record = _parse_line(raw, source, number, codebook_size, default_task)
                except ManifestError as err:
                    problems.extend(err.problems)
                    continue
                if record is not None:
                    records.append(record)
    except FileNotFoundError:
        raise ManifestError([Problem(source, 0, UNKNOWN_KEY, "manifest not found")]) from None
    except OSError as err:
        raise ManifestError([Problem(source, 0, UNKNOWN_KEY, f"cannot read manifest: {err}")]) from None
    return records, problems


def read_manifest(
    path: PathType, *, codebook_size: int | None = None, strict: bool = True, default_task: str | None = None
) -> list[Record]:
    """Records of a JSON-lines manifest.

    ``strict``: raise :class:`ManifestError` listing every problem of the file when there is any.
    Otherwise bad lines are skipped (see :func:`read_manifest_report` to get their problems).
    ``default_task``: the task of records without one (else they are problems).
    """
    records, problems = read_manifest_report(path, codebook_size=codebook_size, default_task=default_task)
    if strict and problems:
        raise ManifestError(problems)
    return records


def dump_json(obj: Any) -> str:
    """One-line JSON, UTF-8 text kept readable; falls back to ASCII escapes for lone surrogates."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj)
    return text


def write_manifest(records: Iterable[Record], path: PathType) -> Path:
    """Write records as JSON lines (reference raw layout, fixed field order); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for record in records:
            out.write(dump_json(record.to_json_dict()) + "\n")
    return path
