"""EChat-eval: spoken replies of one or more systems judged per category, with bootstrap confidence intervals.

Protocol (one row per system and item in ``out/items.jsonl``):

- **items**: :func:`corpus_items` (EChat-mini: every single-turn spoken dialogue clip of a split, whatever the
  task of its record, since every one carries the cues and the intended reply) or :func:`manifest_items` (a
  user's jsonl). Each item's category comes from its cues (:func:`echat.eval.judge.item_category`) unless the
  manifest gives one.
- **generation**: the spoken reply with a think, ``task_for(speech_out=True, think)`` (``<S2TCHAT> <TEXT2TOKEN>
  <THINK>``; without think for ``none``), decoded as the empathy stage decodes
  (:data:`~echat.eval.stage_eval.EMPATHY_OPTIONS`: greedy, at most 256 text tokens) and at most
  :func:`~echat.eval.stage_eval.speech_token_cap` (reference reply) speech tokens. :data:`BATCH_SIZE`
  requests are decoded together (:func:`~echat.models.batch_generate.generate_batch`: the outputs of one at a
  time). The token2wav (default ``model.token2wav``) writes ``out/audio/<system>/<key>.wav`` at its own rate.
- **reply emotion**: :func:`~echat.eval.metrics.reply_emotion_prediction`: the output's tag, else the corpus's
  bag-of-words classifier (none without a corpus: then only the tag counts).
- **judged text**: the reply without its think block and leading reply-emotion tag; the think is kept in the row.
- **failures**: an item whose audio, generation or judge fails is a row with ``score`` None and an ``error``,
  never dropped; :func:`summarise` counts and lists them.
- **resuming**: items already in ``items.jsonl`` for the system (failed ones too) are skipped; rows are
  appended batch by batch, so an interrupted run continues where it stopped.

Summary: a 1..5 score x 20 -> 0-100; mean per system x category with a 95 % percentile bootstrap interval
over items (rows carrying ``seed``: items resampled within each seed, the seeds pooled).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from echat.audio import load_audio
from echat.config import ThinkMode
from echat.data.schema import (
    BLANK_LINE,
    UNKNOWN_KEY,
    AudioNotFoundError,
    ManifestError,
    Problem,
    Record,
    decode_line,
    dump_json,
    json_kind,
    locate_audio,
    read_manifest,
)
from echat.eval import judge as judges
from echat.eval.judge import CATEGORIES, Judge, JudgeItem, Verdict, item_category
from echat.eval.metrics import ReplyEmotionClassifier, reply_emotion_prediction
from echat.eval.stage_eval import (
    EMPATHY_OPTIONS,
    _classifier,
    corpus_token2wav,
    dialogue_records,
    group_subsets,
    reference_reply_emotion,
    speech_token_cap,
)
from echat.models.batch_generate import GenerationRequest, generate_batch
from echat.models.encoder import EncoderCache
from echat.prompts import Cues, parse_reply, split_reply_tag
from echat.text_tokenizer import load_tokenizer
from echat.tokens import CUE_FIELDS, LABEL_SETS, REPLY_EMOTION_PAIRS, REPLY_EMOTIONS, as_tag, canonical_label, task_for

BATCH_SIZE = 8  # requests decoded together
MINI = "mini"  # EChat-mini's prompt set: its tag names are the judge's
SCORE_SCALE = 20  # a 1..5 score x 20 -> 20..100
CONFIDENCE = 0.95
ROW_FIELDS = ("system", "key", "category", "score", "reason", "judge", "error", "reply", "reply_emotion",
              "reply_emotion_source", "think", "speech_tokens", "audio", "seconds")
OUTPUT_FILES = ("items.jsonl", "summary.json", "table.md", "summary.png")
MANIFEST_TEXT_FIELDS = ("key", "wav", "transcript", "reply")  # required, non-empty strings
_MINI_REPLY_EMOTION = dict(REPLY_EMOTION_PAIRS)  # the reference's (Chinese) name -> the mini name
_UNSAFE_NAME = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class EvalItem:
    """One benchmark item: a user clip and what its reply is judged against."""

    judge_item: JudgeItem
    wav: Path  # the user's audio

    @property
    def key(self) -> str:
        """The item's id, unique within a benchmark."""
        return self.judge_item.key


# ----------------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------------


def _cues(extra: dict) -> dict[str, str]:
    """The judge's cues (age, gender, emotion, event -> mini tags) of a record's ``extra``; unknown ones left out."""
    return {name: canonical_label(name, str(extra[field])) for name, field in CUE_FIELDS.items() if extra.get(field)}


def corpus_item(record: Record) -> EvalItem:
    """The item of one EChat-mini dialogue record (its cues, transcript, reply and reply emotion)."""
    cues = _cues(record.extra)
    judged = JudgeItem(key=record.key, category=item_category(cues),
                       transcript=Cues.from_extra(record.extra).transcript, cues=cues,
                       reference_reply=split_reply_tag(record.txt, MINI)[1],
                       reference_emotion=reference_reply_emotion(record, MINI))
    return EvalItem(judged, record.audio_path())


def corpus_items(corpus: str | Path, split: str = "test", limit: int | None = None) -> list[EvalItem]:
    """One item per single-turn spoken dialogue clip of ``corpus/{split}.jsonl``; per subset (``extra.subset``,
    seen / unseen) the first ``limit`` clips in manifest order."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    items = []
    for group in group_subsets(read_manifest(Path(corpus) / f"{split}.jsonl")).values():
        first_of_clip: dict[str, Record] = {}
        for record in dialogue_records(group):
            first_of_clip.setdefault(record.wav, record)
        items += [corpus_item(record) for record in list(first_of_clip.values())[:limit]]
    return items


class ManifestItemsError(ManifestError):
    """Bad lines of a benchmark manifest (one problem each, ``file:line: key: field: why``); ``items`` holds the
    items of its valid lines."""

    def __init__(self, problems: Sequence[Problem], items: Sequence[EvalItem] = ()) -> None:
        super().__init__(problems)
        self.items = list(items)

    def __reduce__(self):
        return type(self), (self.problems, self.items)


class _BadField(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")


def _text(obj: dict, name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _BadField(name, f"expected a non-empty string, got {json_kind(value)}")
    return value.strip()


def _label(obj: dict, name: str) -> str | None:
    """The cue ``name`` as a mini tag (``"sad"`` -> ``<SAD>``), None when absent."""
    value = obj.get(name)
    if value is None:
        return None
    tag = canonical_label(name, value) if isinstance(value, str) and value.strip() else None
    if tag not in LABEL_SETS[name]:
        raise _BadField(name, f"unknown label {value!r}; one of {', '.join(LABEL_SETS[name])}")
    return tag


def _reply_emotion(value: Any) -> str | None:
    """A reply-emotion tag in mini names (the reference's names are translated), None when absent."""
    if value is None:
        return None
    tag = as_tag(value) if isinstance(value, str) and value.strip() else None
    tag = _MINI_REPLY_EMOTION.get(tag, tag.upper() if tag else None)
    if tag not in REPLY_EMOTIONS[MINI]:
        raise _BadField("reply_emotion", f"unknown reply emotion {value!r}; one of {', '.join(REPLY_EMOTIONS[MINI])}")
    return tag


def _category(value: Any, cues: dict[str, str]) -> str:
    if value is None:
        return item_category(cues)
    if value not in CATEGORIES:
        raise _BadField("category", f"unknown category {value!r}; one of {', '.join(CATEGORIES)}")
    return value


def _manifest_item(obj: Any, folder: Path) -> EvalItem:
    """The item of one decoded manifest line; raises :class:`_BadField`."""
    if not isinstance(obj, dict):
        raise _BadField("line", f"expected a JSON object, got {json_kind(obj)}")
    key, wav, transcript, reply = (_text(obj, name) for name in MANIFEST_TEXT_FIELDS)
    cues = {name: tag for name in CUE_FIELDS if (tag := _label(obj, name))}
    category = _category(obj.get("category"), cues)
    parsed = parse_reply(reply, MINI)  # a leading reply-emotion tag is the reply emotion, not reply text
    emotion = _reply_emotion(obj.get("reply_emotion")) or parsed.reply_emotion
    try:
        path = locate_audio(wav, (Path.cwd(), folder))
    except AudioNotFoundError as err:
        raise _BadField("wav", str(err)) from None
    return EvalItem(JudgeItem(key, category, transcript, cues, parsed.reply, emotion), path)


def _line_item(raw: bytes, path: Path, number: int, lines_of_keys: dict[str, int]) -> EvalItem | None:
    """The item of manifest line ``number``, None for a blank line; raises :class:`ManifestError`."""
    obj = decode_line(raw, str(path), number)
    if obj is BLANK_LINE:
        return None
    try:
        item = _manifest_item(obj, path.parent)
        if item.key in lines_of_keys:
            raise _BadField("key", f"duplicate of line {lines_of_keys[item.key]}")
    except _BadField as err:
        key = obj.get("key") if isinstance(obj, dict) and isinstance(obj.get("key"), str) else UNKNOWN_KEY
        raise ManifestError([Problem(str(path), number, key, str(err))]) from None
    lines_of_keys[item.key] = number
    return item


def manifest_items(path: str | Path) -> list[EvalItem]:
    """The items of a user's jsonl, one object a line: ``key``, ``wav`` (relative to the working directory or the
    manifest's folder), ``transcript``, ``reply`` (a leading reply-emotion tag is taken as the reply emotion), and
    optionally ``category`` (else from the cues), ``age``, ``gender``, ``emotion``, ``event`` (tags, e.g. ``<SAD>``)
    and ``reply_emotion``. Bad lines raise one :class:`ManifestItemsError` naming each ``file:line: key: field``;
    its ``items`` keeps the valid lines. A missing file or one without items raises :class:`ManifestError`."""
    path = Path(path)
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as err:
        raise ManifestError([Problem(str(path), 0, UNKNOWN_KEY, f"cannot read the manifest: {err.strerror}")]) from None
    items, problems, lines_of_keys = [], [], {}
    for number, raw in enumerate(raw_lines, 1):
        try:
            item = _line_item(raw, path, number, lines_of_keys)
        except ManifestError as err:
            problems += err.problems
            continue
        items += [item] if item else []
    if problems:
        raise ManifestItemsError(problems, items)
    if not items:
        raise ManifestError([Problem(str(path), 0, UNKNOWN_KEY, "no items")])
    return items


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What every batch of one :func:`run_benchmark` needs."""

    model: Any
    judge: Judge
    out: Path
    system: str
    think: ThinkMode
    token2wav: Any
    classifier: ReplyEmotionClassifier | None

    @property
    def prompt_set(self) -> str:
        return self.model.config.text.prompt_set


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _request(item: EvalItem, think: ThinkMode) -> GenerationRequest:
    """The spoken reply with a think: greedy, 256 text tokens, the reference reply's speech-token cap."""
    options = replace(EMPATHY_OPTIONS, max_speech_tokens=speech_token_cap(item.judge_item.reference_reply))
    return GenerationRequest(load_audio(item.wav), task=task_for(True, think), think=think, options=options)


def _decode(run: _Run, requests: dict[int, GenerationRequest]) -> dict[int, Any]:
    """index -> result of each request, or its error; a batch that fails is decoded again one request at a
    time, so that one bad item fails alone."""
    try:
        results = generate_batch(run.model, list(requests.values()), token2wav=run.token2wav)
        return dict(zip(requests, results))
    except Exception as err:  # any failure of an item becomes its row's error, never the run's
        if len(requests) == 1:
            return {index: f"generation: {_one_line(err)}" for index in requests}
    outcomes = {}
    for index, request in requests.items():
        outcomes.update(_decode(run, {index: request}))
    return outcomes


def _generate(run: _Run, batch: Sequence[EvalItem]) -> list[Any]:
    """Each item's :class:`~echat.models.generate.GenerationResult`, or the error (a string) that stopped it."""
    requests, outcomes = {}, {}
    for index, item in enumerate(batch):
        try:
            requests[index] = _request(item, run.think)
        except Exception as err:  # an unreadable clip fails its item only
            outcomes[index] = f"audio: {_one_line(err)}"
    if requests:
        outcomes.update(_decode(run, requests))
    return [outcomes[index] for index in range(len(batch))]


def _verdict(judge: Judge, item: JudgeItem, reply: str, reply_emotion: str | None) -> Verdict:
    """The judge's verdict, or a failed one (score None) when it raises or gives no 1..5 score."""
    try:
        verdict = judge.judge(item, reply, reply_emotion)
    except Exception as err:  # a failing judge fails this item's row only
        return Verdict(None, "", judge.name, f"judge: {_one_line(err)}")
    if verdict.score is None:
        return replace(verdict, error=verdict.error or "judge: no score")
    if verdict.score not in range(1, 6):
        return replace(verdict, score=None, error=f"judge: score {verdict.score!r} is not 1..5")
    return verdict


def _safe_name(name: str) -> str:
    """A file or folder name for ``name``: characters other than letters, digits, ``.-_`` become ``_``."""
    return _UNSAFE_NAME.sub("_", name) or "_"


def _write_audio(run: _Run, key: str, wave: np.ndarray | None) -> tuple[str | None, float | None]:
    """Writes the reply's wave to ``out/audio/<system>/<key>.wav``; (path relative to ``out``, seconds)."""
    if wave is None or run.token2wav is None:
        return None, None
    relative = Path("audio") / _safe_name(run.system) / f"{_safe_name(key)}.wav"
    (run.out / relative).parent.mkdir(parents=True, exist_ok=True)
    rate = run.token2wav.sample_rate
    sf.write(run.out / relative, np.clip(wave, -1.0, 1.0), rate, subtype="PCM_16")
    return relative.as_posix(), round(len(wave) / rate, 3)


def _row(run: _Run, item: EvalItem, outcome: Any) -> dict:
    """One row of ``items.jsonl`` (:data:`ROW_FIELDS`) from a result, or from the error that stopped the item."""
    row = dict.fromkeys(ROW_FIELDS)
    row.update(system=run.system, key=item.key, category=item.judge_item.category, reason="", judge=run.judge.name)
    if isinstance(outcome, str):
        return {**row, "error": outcome}
    emotion, source = reply_emotion_prediction(outcome.raw_text, run.prompt_set, run.classifier)
    verdict = _verdict(run.judge, item.judge_item, outcome.text, emotion)
    audio, seconds = _write_audio(run, item.key, outcome.audio)
    row.update(score=verdict.score, reason=verdict.reason, judge=verdict.judge, error=verdict.error,
               reply=outcome.text, reply_emotion=emotion, reply_emotion_source=source, think=outcome.think,
               speech_tokens=len(outcome.speech_tokens), audio=audio, seconds=seconds)
    return row


def read_rows(path: str | Path) -> list[dict]:
    """The rows of an ``items.jsonl`` (none when it does not exist). A last line cut short by an interrupted
    write is left out; any other bad line raises a ValueError naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # no newline after it: a cut write, whose items run again
                break
            raise ValueError(f"{path}:{number}: not a JSON row ({err.msg})") from None
    return rows


def _append_rows(path: Path, rows: list[dict]) -> None:
    """Appends rows to ``path``, first dropping a last line cut short by an interrupted write."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as file:
                file.truncate(data.rfind(b"\n") + 1)
    with path.open("a", encoding="utf-8") as file:
        file.writelines(dump_json(row) + "\n" for row in rows)


def _batches(items: Sequence[EvalItem], size: int):
    for at in range(0, len(items), size):
        yield items[at:at + size]


def pending(items: Sequence[EvalItem], out: str | Path, system: str) -> list[EvalItem]:
    """The items of ``items`` that ``out/items.jsonl`` holds no row of ``system`` for (what is left to judge)."""
    done = {row.get("key") for row in read_rows(Path(out) / "items.jsonl") if row.get("system") == system}
    return [item for item in items if item.key not in done]


def run_benchmark(model, items: Sequence[EvalItem], judge: Judge, out: str | Path, system: str,
                  think: ThinkMode | str, token2wav=None, classifier: ReplyEmotionClassifier | None = None,
                  progress: bool = True, batch_size: int = BATCH_SIZE) -> Path:
    """Generate, judge and append one row per item to ``out/items.jsonl`` (see the module docstring); returns it.

    ``token2wav``: speaks the replies into ``out/audio/<system>/`` (default ``model.token2wav``; none: no audio);
    ``classifier``: the reply-emotion classifier (None: the output's tag only); items already in the file for
    ``system`` are skipped. The model runs in eval mode (its mode is restored); an ``model.encoder_cache`` is
    saved at the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    repeated = sorted(key for key, count in Counter(item.key for item in items).items() if count > 1)
    if repeated:
        raise ValueError(f"item keys must be unique; repeated: {', '.join(repeated[:5])}")
    out, think = Path(out), ThinkMode(think)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "items.jsonl"
    todo = pending(items, out, system)
    run = _Run(model, judge, out, system, think, token2wav or getattr(model, "token2wav", None), classifier)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(items), initial=len(items) - len(todo), desc=f"EChat-eval {system}", unit="item",
                  disable=not progress) as bar:
            for batch in _batches(todo, batch_size):
                _append_rows(path, [_row(run, item, outcome) for item, outcome in zip(batch, _generate(run, batch))])
                bar.update(len(batch))
    finally:
        model.train(was_training)
        if model.encoder_cache is not None:
            model.encoder_cache.save()
    path.touch()
    return path


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------


def bootstrap_means(groups: list[np.ndarray], boot: int, seed: int) -> np.ndarray:
    """``boot`` means (boot,) of the pooled groups, each group's items resampled with replacement on its own
    (groups: the seeds, so an interval over two seeds keeps each seed's items together)."""
    rng = np.random.default_rng(seed)
    sums = np.zeros(boot)
    for scores in groups:
        sums += scores[rng.integers(0, len(scores), size=(boot, len(scores)))].sum(axis=1)
    return sums / sum(len(scores) for scores in groups)


def _cell(rows: list[dict], boot: int, seed: int) -> dict | None:
    """{mean, low, high, n, failures} of one system x category (0-100), None without items."""
    if not rows:
        return None
    scored = sorted((r for r in rows if r.get("score") is not None), key=lambda r: (str(r.get("seed")), r["key"]))
    cell = {"mean": None, "low": None, "high": None, "n": len(scored), "failures": len(rows) - len(scored)}
    if not scored:
        return cell
    groups: dict[str, list[float]] = {}
    for row in scored:
        groups.setdefault(str(row.get("seed")), []).append(row["score"] * SCORE_SCALE)
    arrays = [np.asarray(scores, dtype=float) for scores in groups.values()]
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(bootstrap_means(arrays, boot, seed), [tail, 100 - tail])
    return {**cell, "mean": float(np.concatenate(arrays).mean()), "low": float(low), "high": float(high)}


def summarise(rows: Sequence[dict], systems: Sequence[str] | None = None, boot: int = 1000, seed: int = 0) -> dict:
    """Per system x category: the mean score x 20 (0-100), its 95 % percentile bootstrap interval over items
    (``boot`` resamples, ``numpy`` seeded with ``seed`` for every cell; rows with a ``seed`` key are resampled
    within their seed and pooled), ``n`` scored items and ``failures``; a category without items is None.

    Returns a JSON-able dict: ``systems -> name -> category -> cell``, ``categories`` (the judge's, then any
    other found in the rows), ``failures -> name -> [{key, category, error}]``, ``boot``, ``seed``,
    ``confidence`` and ``scale``. ``systems``: which, in this order (default: every one, in order of appearance).
    """
    if boot < 1:
        raise ValueError(f"boot must be at least 1, got {boot}")
    names = list(systems) if systems is not None else list(dict.fromkeys(row["system"] for row in rows))
    categories = [*CATEGORIES, *sorted({row["category"] for row in rows} - set(CATEGORIES))]
    summary = {"systems": {}, "categories": categories, "failures": {}, "boot": boot, "seed": seed,
               "confidence": CONFIDENCE, "scale": f"1..5 score x {SCORE_SCALE}"}
    for name in names:
        own = [row for row in rows if row["system"] == name]
        summary["systems"][name] = {category: _cell([r for r in own if r["category"] == category], boot, seed)
                                    for category in categories}
        summary["failures"][name] = [{"key": r["key"], "category": r["category"], "error": r.get("error")}
                                     for r in own if r.get("score") is None]
    return summary


def _cell_text(cell: dict | None) -> str:
    if not cell or cell["mean"] is None:
        return "–"
    return f"{cell['mean']:.1f} [{cell['low']:.1f}, {cell['high']:.1f}]"


def render_table(summary: dict) -> str:
    """A markdown table: one row per system, one column per category, cells ``58.0 [52.1, 63.9]`` (mean and
    interval, 0-100), ``–`` where there is no scored item."""
    categories = summary["categories"]
    lines = ["| system | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
    for name, cells in summary["systems"].items():
        lines.append(f"| {name} | " + " | ".join(_cell_text(cells.get(c)) for c in categories) + " |")
    return "\n".join(lines)


def plot_summary(summary: dict, path: str | Path) -> Path:
    """A grouped bar chart (categories on x, one bar per system) with the intervals as whiskers, 0-100, saved
    as a PNG to ``path``; a cell without a score has no bar."""
    from matplotlib.figure import Figure

    categories, systems = summary["categories"], summary["systems"]
    figure = Figure(figsize=(1.6 + 1.3 * len(categories), 4.0), layout="constrained")
    ax = figure.add_subplot()
    width = 0.8 / max(len(systems), 1)
    for index, (name, cells) in enumerate(systems.items()):
        scored = [cells.get(c) if cells.get(c) and cells[c]["mean"] is not None else None for c in categories]
        means = [cell["mean"] if cell else np.nan for cell in scored]
        whiskers = [[cell["mean"] - cell["low"] if cell else 0.0 for cell in scored],
                    [cell["high"] - cell["mean"] if cell else 0.0 for cell in scored]]
        ax.bar(np.arange(len(categories)) + (index - (len(systems) - 1) / 2) * width, means, width, yerr=whiskers,
               capsize=3, label=name)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"score (0-100), {CONFIDENCE:.0%} interval")
    ax.set_title("EChat-eval")
    if systems:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.savefig(path, dpi=110)
    return Path(path)


def write_summary(out: str | Path, systems: Sequence[str] | None = None, boot: int = 1000, seed: int = 0) -> dict:
    """Summarise ``out/items.jsonl`` into ``summary.json``, ``table.md`` and ``summary.png`` beside it."""
    out = Path(out)
    summary = summarise(read_rows(out / "items.jsonl"), systems, boot, seed)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "table.md").write_text(render_table(summary) + "\n", encoding="utf-8")
    plot_summary(summary, out / "summary.png")
    return summary


# ----------------------------------------------------------------------------------------------
# The command's set-up
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchmarkSetup:
    """What ``echat eval --benchmark`` runs with, and notes worth printing (bad manifest lines, what is missing)."""

    items: list[EvalItem]
    token2wav: Any
    classifier: ReplyEmotionClassifier | None
    notes: list[str]


def _corpus_setup(model, corpus: Path, split: str, limit: int | None) -> BenchmarkSetup:
    """A corpus's items, its token2wav and reply-emotion classifier; its text tokenizer and encoder cache when
    the model has none."""
    if model.tokenizer is None and (corpus / "text_tokenizer").is_dir():
        model.tokenizer = load_tokenizer(corpus / "text_tokenizer")
    model.encoder_cache = model.encoder_cache or EncoderCache.beside(corpus, model.encoder)
    notes = []
    token2wav, reason = corpus_token2wav(model, corpus)
    if token2wav is None:
        token2wav = model.token2wav
        notes.append(f"{reason}: " + ("the checkpoint's token2wav speaks" if token2wav else "no audio"))
    classifier, info = _classifier(corpus, [], model.config.text.prompt_set)
    notes += [f"{info['skipped']}: the reply emotion is the output's tag only"] if classifier is None else []
    return BenchmarkSetup(corpus_items(corpus, split, limit), token2wav, classifier, notes)


def _manifest_setup(model, manifest: Path, limit: int | None) -> BenchmarkSetup:
    """A user's jsonl: its valid items (bad lines are notes), the checkpoint's token2wav, no classifier."""
    notes = ["no corpus, no reply-emotion classifier: the reply emotion is the output's tag only"]
    if model.tokenizer is None:
        raise ValueError("the checkpoint has no text tokenizer: give a corpus folder as --data")
    try:
        items = manifest_items(manifest)
    except ManifestItemsError as err:
        notes += [f"skipped {problem}" for problem in err.problems]
        items = err.items
        if not items:
            raise
    if model.token2wav is None:
        notes.append("the checkpoint keeps no speech tokenizer: no audio")
    return BenchmarkSetup(items[:limit] if limit else items, model.token2wav, None, notes)


def benchmark_setup(model, data: str | Path, split: str = "test", limit: int | None = None) -> BenchmarkSetup:
    """The items and tools of a benchmark on ``data``: an EChat-mini corpus folder (``split``, ``limit`` items per
    subset) or a user's jsonl (its first ``limit`` items)."""
    data = Path(data)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if data.is_dir():
        return _corpus_setup(model, data, split, limit)
    if data.is_file():
        return _manifest_setup(model, data, limit)
    raise FileNotFoundError(f"{data}: no such corpus folder or jsonl manifest")


def make_judge(kind: str, url: str | None = None, model: str | None = None, cache_dir: Path | None = None) -> Judge:
    """The rubric judge, or an LLM judge at an OpenAI-compatible ``url`` (its answers cached in ``cache_dir``)."""
    if kind == "rubric":
        return judges.RubricJudge()
    if kind != "llm":
        raise ValueError(f"unknown judge {kind!r}; choose rubric or llm")
    if not url or not model:
        raise ValueError("the llm judge needs --judge-url and --judge-model")
    return judges.LLMJudge(url, model, cache_dir=cache_dir)
