"""Speech tokens for user data (``echat tokens extract``): ``extra.speech_token`` from each record's reply audio.

What it reads and writes: a raw JSON-lines manifest (reference §6.1), one record per line, into a new one.
Shard tars, combine lists and data-list yamls are not read: tokenise the raw lines before making shards.
- A record whose task outputs speech (TTS, S2S and their think / history / streaming forms) and names reply
  audio gets ``extra.speech_token``: the 25 Hz CosyVoice-300M-25Hz ids of that audio (ids already there are
  replaced). Every other field is written as it was read, in its order; an ``extra`` given as a JSON string
  is written back as an object.
- Where the reply audio is: ``reply_field`` (an ``extra`` key, or ``wav`` for the record's own audio) when
  given; else ``extra.a_wav_path`` (the reference's S2S data, §6.1), then ``extra.reply_wav`` (EChat-mini),
  then, for a TTS task (no speech input), the record's ``wav``: a TTS record's only audio is the speech of its
  ``txt``, which CosyVoice's ``extract_speech_token.py`` tokenised (§3). ``start``/``end`` cut the record's own
  ``wav`` only. Relative paths are looked up as ``echat data check`` does (working directory, then the
  manifest's folder, or ``base_dir`` only).
- Every other line (text-output tasks, speech-output records without reply audio) is copied as read.
- History turns' ``extra.speech_token_N`` are not made: a raw record names no reply audio for them.

Design choices:
- ``echat.data`` sits below ``echat.token2wav``, so the tokenizer comes in as a callable (16 kHz wave ``(N,)``
  -> ids). ``echat tokens extract`` passes :class:`echat.token2wav.cosyvoice_prompt.CosyVoiceSpeechTokenizer`,
  the onnxruntime path the prompt voice takes (Whisper 128-bin log-mel -> ``speech_tokenizer_v1.onnx``), not
  the PyPI ``s3tokenizer``: that pulls torchaudio 2.11.1, which fails to load against this project's torch 2.13.
- The audio is read at 16 kHz directly (:func:`echat.audio.load_audio`: channel mean, soxr), as upstream's
  extractor does. Longer than ``max_seconds`` (30 s: the tokenizer's limit, which upstream asserts) is a problem.
- Errors are collected, not fatal: each bad record (unreadable line, unknown task, missing or unreadable
  audio, too long, ids outside the codebook) is one :class:`~echat.data.schema.Problem`
  (``file:line: key: field: message``), left out of the output, and the run goes on; every good record is
  written. Why: one run names every bad file of a corpus, where stopping at the first needs one run per file;
  and the output holds only complete records, so ``echat data check`` passes on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from echat.audio import SAMPLE_RATE_HZ, SPEECH_TOKENIZER_MAX_SECONDS, AudioError, load_audio
from echat.config import SpeechConfig
from echat.data.check import is_shard_list
from echat.data.schema import (
    BLANK_LINE,
    SPEECH_TOKEN,
    UNKNOWN_KEY,
    AudioNotFoundError,
    ManifestError,
    PathType,
    Problem,
    check_speech_tokens,
    decode_line,
    dump_json,
    json_kind,
    locate_audio,
    parse_extra,
    resolve_path,
)
from echat.tokens import OutputType, UnknownTaskError, normalize_task, output_type

DEFAULT_REPLY_FIELDS = ("a_wav_path", "reply_wav")  # extra keys: the reference's, EChat-mini's
OWN_AUDIO = "wav"  # the record's own audio: a TTS record's reply
CODEBOOK_SIZE = SpeechConfig().codebook_size  # 4096 CosyVoice-300M-25Hz codes
MAX_REPLY_SECONDS = SPEECH_TOKENIZER_MAX_SECONDS  # speech_tokenizer_v1.onnx's limit, one constant in echat.audio

Tokenize = Callable[[np.ndarray], Any]  # a 16 kHz wave (N,) -> integer ids, any shape (flattened)


class _BadRecord(ValueError):
    """One record cannot be tokenised: ``name`` is the field at fault."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")


@dataclass
class ExtractReport:
    """What :func:`extract_reply_tokens` did to one manifest."""

    source: str
    out: str
    tokenised: int = 0  # records written with fresh extra.speech_token
    copied: int = 0  # lines copied as read
    without_audio: int = 0  # speech-output records copied with neither reply audio nor speech tokens
    seconds: float = 0.0  # reply audio tokenised
    tokens: int = 0  # ids written
    problems: list[Problem] = field(default_factory=list)  # one per record left out

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        """Counts, the records ``echat data check`` will refuse, every problem, the verdict."""
        rate = f", {self.tokens / self.seconds:.1f} tokens/s" if self.seconds else ""
        lines = [f"tokens extract: {self.source} -> {self.out}",
                 f"records: {self.tokenised} tokenised ({self.seconds:.1f} s of reply audio, {self.tokens} tokens"
                 f"{rate}), {self.copied} copied as read, {len(self.problems)} left out"]
        if self.without_audio:
            lines.append(f"speech-output records with no reply audio and no {SPEECH_TOKEN}: {self.without_audio} "
                         "(copied; `echat data check` names them; --reply-audio-field says where their audio is)")
        if self.problems:
            lines += ["problems:", *(str(problem) for problem in self.problems)]
        lines.append("result: OK" if self.ok else f"result: FAILED ({len(self.problems)} record(s) left out)")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Job:
    """The settings of one extraction, shared by every line."""

    source: Path
    tokenize: Tokenize
    max_seconds: float | None
    reply_field: str | None
    base_dir: PathType | None
    codebook_size: int


def extract_reply_tokens(
    manifest: PathType,
    out: PathType,
    tokenize: Tokenize,
    *,
    max_seconds: float | None = MAX_REPLY_SECONDS,
    reply_field: str | None = None,
    base_dir: PathType | None = None,
    codebook_size: int = CODEBOOK_SIZE,
    progress: bool | None = None,
) -> ExtractReport:
    """Write ``manifest`` to ``out`` with ``extra.speech_token`` from each speech-output record's reply audio.

    ``tokenize`` turns a 16 kHz wave ``(N,)`` into ids in ``[0, codebook_size)``; ``reply_field`` names where
    the reply audio is (module docstring: the defaults). Bad records are left out and listed in the report's
    ``problems``; ``progress=None`` shows a tqdm bar on a terminal. Raises ValueError / FileNotFoundError for
    a manifest that is missing, not raw JSON lines, or the same file as ``out``.
    """
    source, target = Path(manifest), Path(out)
    _check_paths(source, target)
    job = _Job(source, tokenize, max_seconds, _field_name(reply_field), base_dir, codebook_size)
    report = ExtractReport(str(source), str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as lines, target.open("w", encoding="utf-8", newline="\n") as sink:
        for number, raw in enumerate(tqdm(lines, desc="speech tokens", unit="line",
                                          disable=None if progress is None else not progress), 1):
            try:
                written = _process_line(job, report, raw, number)
            except ManifestError as err:
                report.problems.extend(err.problems)
                continue
            if written is not None:
                sink.write(written + "\n")
    return report


def _check_paths(source: Path, target: Path) -> None:
    if not source.is_file():
        raise FileNotFoundError(f"{source}: manifest not found")
    if is_shard_list(source):
        raise ValueError(f"{source}: a shard or combine list; tokens extract reads a raw JSON-lines manifest "
                         "(tokenise the raw lines before making shards)")
    if target.exists() and target.resolve() == source.resolve():
        raise ValueError(f"--out {target}: is the input manifest; write the tokens to a new file")


def _field_name(reply_field: str | None) -> str | None:
    """``wav``, an ``extra`` key (``extra.`` prefix optional) or None; ValueError for an empty name."""
    if reply_field is None:
        return None
    name = reply_field.removeprefix("extra.")
    if not name.strip():
        raise ValueError(f"--reply-audio-field {reply_field!r}: give `wav` or an extra key such as a_wav_path")
    return name


def _process_line(job: _Job, report: ExtractReport, raw: bytes, number: int) -> str | None:
    """The output line of input line ``number`` (None: blank); raises ManifestError for a bad record."""
    obj = decode_line(raw, str(job.source), number)
    if obj is BLANK_LINE:
        return None
    key = obj.get("key") if isinstance(obj, dict) else None
    shown = key if isinstance(key, str) and key else UNKNOWN_KEY
    try:
        tokens = _record_tokens(job, obj)
    except _BadRecord as err:
        raise ManifestError([Problem(str(job.source), number, shown, str(err))]) from None
    if tokens is None:
        report.copied += 1
        report.without_audio += _lacks_tokens(obj)
        return raw.decode("utf-8").strip().removeprefix("\ufeff")
    ids, seconds = tokens
    obj["extra"] = {**_extra(obj), SPEECH_TOKEN: ids}  # the key keeps its place when it was there
    report.tokenised += 1
    report.seconds += seconds
    report.tokens += len(ids)
    return dump_json(obj)


def _record_tokens(job: _Job, obj: Any) -> tuple[list[int], float] | None:
    """``(ids, seconds of audio)`` of the record's reply audio; None when it has none or needs none."""
    kind = _output_type(obj)
    if not kind.speech_out:
        return None
    found = _reply_audio(obj, _extra(obj), kind, job.reply_field)
    if found is None:
        return None
    name, path = found
    shown = _shown(name)
    try:
        wave = load_audio(_locate(job, path))  # (N,) at 16 kHz
    except (AudioNotFoundError, AudioError) as err:
        raise _BadRecord(shown, str(err)) from None
    if name == OWN_AUDIO:
        wave = _segment(wave, obj)
    seconds = len(wave) / SAMPLE_RATE_HZ
    if job.max_seconds is not None and seconds > job.max_seconds:
        raise _BadRecord(shown, f"{path} is {seconds:.2f} s long; the speech tokenizer takes at most "
                                f"{job.max_seconds:g} s")
    ids = _as_ids(job.tokenize(wave))
    if not ids:
        raise _BadRecord(shown, f"{path} gave no speech tokens ({seconds:.3f} s is too short)")
    try:
        check_speech_tokens(ids, job.codebook_size, name=f"tokens of {shown}")
    except ValueError as err:
        raise _BadRecord("extra." + SPEECH_TOKEN, f"the tokenizer's output is not in the codebook ({err})") from None
    return ids, seconds


def _shown(name: str) -> str:
    """How a reply-audio field is named in messages: ``wav`` or ``extra.NAME``."""
    return name if name == OWN_AUDIO else f"extra.{name}"


def _output_type(obj: Any) -> OutputType:
    """What the record's task outputs; a missing task is ``<TRANSCRIBE>``'s text, as the reference reads it."""
    if not isinstance(obj, dict):
        raise _BadRecord("record", f"expected a JSON object, got {json_kind(obj)}")
    task = obj.get("task")
    if task is None or (isinstance(task, str) and not task.strip()):
        return OutputType.TEXT
    if not isinstance(task, str):
        raise _BadRecord("task", f"expected a string, got {json_kind(task)}")
    try:
        return output_type(normalize_task(task))
    except UnknownTaskError as err:
        raise _BadRecord("task", str(err)) from None


def _extra(obj: dict) -> dict:
    """The record's ``extra`` as a dict (absent: empty; a JSON string: decoded)."""
    try:
        return parse_extra(obj.get("extra"))
    except ValueError as err:
        raise _BadRecord("extra", str(err).removeprefix("extra: ")) from None


def _reply_audio(obj: dict, extra: dict, kind: OutputType, reply_field: str | None) -> tuple[str, str] | None:
    """``(field, path as written)`` of the reply audio, or None when the record names none."""
    if reply_field is not None:
        names = (reply_field,)
    else:
        names = DEFAULT_REPLY_FIELDS + (() if kind.speech_in else (OWN_AUDIO,))
    for name in names:
        value = obj.get(name) if name == OWN_AUDIO else extra.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or not value.strip():
            raise _BadRecord(_shown(name), f"expected an audio path string, got {json_kind(value)} {value!r}")
        return name, value
    return None


def _locate(job: _Job, path: str) -> Path:
    """The file of reply audio ``path``; AudioNotFoundError naming every place tried."""
    if job.base_dir is not None:
        return resolve_path(path, job.base_dir)
    return locate_audio(path, (Path.cwd(), job.source.parent))


def _segment(wave: np.ndarray, obj: dict) -> np.ndarray:
    """The record's ``start``..``end`` seconds of its own 16 kHz ``wave`` ``(N,)`` (all of it without both)."""
    start, end = obj.get("start"), obj.get("end")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, end))
    if not numbers:
        return wave
    if not 0 <= start < end:
        raise _BadRecord("start", f"need 0 <= start < end, got start={start}, end={end}")
    return wave[int(round(start * SAMPLE_RATE_HZ)):int(round(end * SAMPLE_RATE_HZ))]


def _as_ids(ids: Any) -> list[int]:
    """The tokenizer's output (a tensor, an array or a list, any shape) as a flat list of Python ints."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise _BadRecord("extra." + SPEECH_TOKEN, f"the tokenizer gave {array.dtype} values, not integer ids")
    return [int(value) for value in array]


def _lacks_tokens(obj: Any) -> bool:
    """True for a speech-output record (copied) that has no speech tokens either."""
    try:
        return _output_type(obj).speech_out and not _extra(obj).get(SPEECH_TOKEN)
    except _BadRecord:
        return False
