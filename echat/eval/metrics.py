"""Evaluation metrics: WER/CER (``jiwer``), label accuracy and confusion matrices, think-block
parsing and the reply-emotion accuracy of empathetic replies.

WER and CER of English transcripts are computed with ``jiwer``.

Both references and hypotheses go through the same :func:`normalize_text` first, so the scores
ignore case, punctuation, emotion/style tags and contraction spelling.

Rates are corpus-level: total edits (substitutions + deletions + insertions) over the total
number of reference words (or characters), not a mean of per-utterance rates.

Empty references (after normalisation): an empty reference inside a corpus is allowed, and each
hypothesis word then counts as an insertion. :func:`wer` and :func:`cer` raise ValueError only when
*every* reference is empty, because the rate is then undefined. :func:`per_utterance_wer` raises
ValueError for any empty reference and names its index.

Labels (age, gender, emotion, sound event, reply emotion) are scored by :func:`label_accuracy`
(exact match, a missing prediction counts as wrong) and :func:`confusion_matrix` (rows = reference,
columns = prediction), drawn by :func:`plot_confusion`. :func:`parse_tags` and
:func:`split_asr_output` read the tags of understanding outputs (``"i finally finished<SAD><ADULT>"``).

Think blocks: :func:`think_parse_rate` is the share of outputs that open with ``<think>`` and close
it with ``<think end>`` (for the tag form, the body must also match the tag-think template field by
field, :func:`echat.prompts.parse_tag_think`); :func:`think_field_accuracy` scores the parsed
fields against the labels.

Reply-emotion accuracy (:func:`reply_emotion_prediction`, then :func:`label_accuracy` against
``extra.reply_emotion``) is defined in two ways, depending on what the output carries:

(a) **tag**: the output carries a reply-emotion tag, the leading tag of the reply (tag think puts
    one after ``<think end>``; a plain chat output may open with one), or else the ``reply emotion``
    field of a parsed tag think. That tag is the prediction.
(b) **classifier**: otherwise (language think, no think) the reply *text* is classified by
    :class:`ReplyEmotionClassifier`, a bag-of-words multinomial naive Bayes fitted on the training
    replies of the corpus (dialogue records, whose leading tag is the label). Its own accuracy on
    the ground-truth test replies says how far (b) can be trusted (``stage_eval`` reports it with
    every evaluation): on EChat-mini ``--size mini --seed 0`` (1,680 training replies) it labels
    all 340 ground-truth test replies and all 120 dev replies correctly (accuracy 1.0), because the
    mini world's reply wording follows the reply emotion. On the 26 training replies of a
    ``--size smoke`` corpus it is much weaker (8 of 9 test replies with seed 3: one template never
    occurs in training), so do not read (b) scores of smoke corpora as more than a check.
An output with neither a tag nor reply text (an empty reply, e.g. a think block that never ends)
has no prediction and counts as wrong.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jiwer
import numpy as np

from echat.data.schema import Record, read_manifest
from echat.prompts import parse_reply, split_reply_tag, think_well_formed
from echat.tokens import (
    LABEL_SETS,
    REPLY_EMOTIONS,
    OutputType,
    canonical_label,
    output_type,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Applied in this order, to lowercased text, on both sides. "'s" is left alone: it may stand for
# "is", "has" or a possessive. "'d" always becomes "would", though it may also stand for "had".
CONTRACTIONS: tuple[tuple[str, str], ...] = (
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\bcannot\b", "can not"),
    (r"\bshan't\b", "shall not"),
    (r"\b(\w+)n't\b", r"\1 not"),
    (r"\b(\w+)'re\b", r"\1 are"),
    (r"\b(\w+)'ve\b", r"\1 have"),
    (r"\b(\w+)'ll\b", r"\1 will"),
    (r"\b(\w+)'m\b", r"\1 am"),
    (r"\b(\w+)'d\b", r"\1 would"),
)
_CONTRACTIONS = tuple((re.compile(pattern), replacement) for pattern, replacement in CONTRACTIONS)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
_TAG = re.compile(r"<[^<>]*>")  # <HAPPY>, <|en|>, <TRANSCRIBE>, ...
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,000 -> 1000
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")  # 3.5 stays 3.5
_POINT_MARK = "\u0000"  # protects decimal points while punctuation is removed
_PUNCTUATION = re.compile(r"[^\w\s'\u0000]|_")
_EDGE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")  # quotes, not apostrophes inside words
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Normalise English text for WER/CER; applied identically to references and hypotheses.

    Steps, in order:

    1. Unicode NFKC; curly and other apostrophe look-alikes become ``'``.
    2. Angle-bracket tags (``<HAPPY>``, ``<|en|>``) are removed (replaced by a space).
    3. Lowercase.
    4. Contractions are expanded with the small fixed table :data:`CONTRACTIONS` (``won't`` ->
       ``will not``, ``I'm`` -> ``i am``, ``don't`` -> ``do not``, ``we'll`` -> ``we will``, ...), so
       that ``I'm`` and ``I am`` match. ``'s`` is kept as it is (``it's`` stays ``it's``).
    5. Punctuation (everything but letters, digits, whitespace and apostrophes; underscores too)
       becomes a space, so ``well-being`` gives two words. Apostrophes survive only inside a
       word (``it's``, ``o'clock``); quote marks at word edges are dropped.
    6. Whitespace is collapsed to single spaces and stripped.

    Numbers are left as digits, not spelled out (``5`` and ``five`` differ): thousands separators
    are dropped (``1,000`` -> ``1000``) and decimal points kept (``3.5``). Choose references without
    digits, or with the spelling the recognizer is expected to produce.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES)
    text = _TAG.sub(" ", text).lower()
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = _DECIMAL_POINT.sub(_POINT_MARK, _THOUSANDS.sub("", text.replace(_POINT_MARK, " ")))
    text = _PUNCTUATION.sub(" ", text)
    text = _EDGE_APOSTROPHE.sub("", text).replace(_POINT_MARK, ".")
    return _SPACES.sub(" ", text).strip()


def _normalized_pairs(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> tuple[list[str], list[str]]:
    refs = [refs] if isinstance(refs, str) else list(refs)
    hyps = [hyps] if isinstance(hyps, str) else list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no references given")
    return [normalize_text(r) for r in refs], [normalize_text(h) for h in hyps]


def _rate(output: jiwer.WordOutput | jiwer.CharacterOutput, unit: str) -> float:
    n_reference = output.hits + output.substitutions + output.deletions
    if n_reference == 0:
        raise ValueError(f"every reference is empty after normalisation: the {unit} error rate is undefined")
    return (output.substitutions + output.deletions + output.insertions) / n_reference


def wer(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> float:
    """Corpus-level word error rate of ``hyps`` against ``refs`` after :func:`normalize_text`.

    (substitutions + deletions + insertions) / reference words, summed over all pairs; can exceed 1.
    A single string is treated as a one-item list. ValueError if the lengths differ, the lists are
    empty, or every reference is empty after normalisation.
    """
    refs, hyps = _normalized_pairs(refs, hyps)
    return _rate(jiwer.process_words(refs, hyps), "word")


def cer(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> float:
    """Corpus-level character error rate after :func:`normalize_text`.

    Counts characters of the normalised text, including the single spaces between words. Same
    conventions and errors as :func:`wer`.
    """
    refs, hyps = _normalized_pairs(refs, hyps)
    return _rate(jiwer.process_characters(refs, hyps), "character")


def per_utterance_wer(refs: Sequence[str] | str, hyps: Sequence[str] | str) -> list[float]:
    """The word error rate of each pair, in order (after :func:`normalize_text`).

    ValueError if the lengths differ or a reference is empty after normalisation (its rate is
    undefined; the message names the index).
    """
    refs, hyps = _normalized_pairs(refs, hyps)
    empty = [i for i, ref in enumerate(refs) if not ref]
    if empty:
        raise ValueError(f"references {empty} are empty after normalisation: their word error rate is undefined")
    return [_rate(jiwer.process_words(ref, hyp), "word") for ref, hyp in zip(refs, hyps)]


# ----------------------------------------------------------------------------------------------
# Labels: accuracy and confusion matrices
# ----------------------------------------------------------------------------------------------

_ANY_TAG = re.compile(r"<[^<>]+>")


def label_accuracy(refs: Sequence[str | None], hyps: Sequence[str | None]) -> float:
    """Share of exact matches ``hyp == ref``; a missing prediction (None) is wrong.

    ValueError if the lengths differ or the lists are empty.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} predictions")
    if not refs:
        raise ValueError("no references given")
    return sum(h is not None and h == r for r, h in zip(refs, hyps)) / len(refs)


def confusion_matrix(refs: Sequence[str | None], hyps: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """Counts ``(len(labels), len(labels))``, int64: row = reference label, column = prediction.

    Pairs whose reference or prediction is not in ``labels`` are not counted; to count missing or
    malformed predictions, give them a label of their own (e.g. ``"<NONE>"``) and list it.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError(f"labels are not unique: {list(labels)}")
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for ref, hyp in zip(refs, hyps):
        if ref in index and hyp in index:
            matrix[index[ref], index[hyp]] += 1
    return matrix


def plot_confusion(matrix: np.ndarray | Sequence[Sequence[int]], labels: Sequence[str], title: str,
                   path: str | Path | None = None, ax: Axes | None = None) -> Figure:
    """Draw a confusion matrix (rows = reference, columns = prediction) with its counts.

    Colours are the row-normalised share (recall per reference label); angle brackets are dropped
    from the tick labels. Draws on ``ax`` when given, else on a new figure (no pyplot state is
    touched). Saves a PNG to ``path`` when given. Returns the figure.
    """
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64)
    if counts.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix shape {counts.shape} does not match {len(labels)} labels")
    if ax is None:
        size = 1.6 + 0.55 * len(labels)
        ax = Figure(figsize=(size + 1.0, size), layout="constrained").add_subplot()
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    names = [label.strip("<>") for label in labels]
    ax.set_xticks(range(len(labels)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    ax.set_title(title)
    for (row, col), count in np.ndenumerate(counts):
        if count:
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if shares[row, col] > 0.6 else "black", fontsize=8)
    figure = ax.get_figure()
    figure.colorbar(image, ax=ax, fraction=0.046, label="share of the row")
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


# ----------------------------------------------------------------------------------------------
# Tags of understanding outputs
# ----------------------------------------------------------------------------------------------


def parse_tags(text: str) -> list[str]:
    """The angle-bracket tags of ``text`` in order: ``"hi<SAD><ADULT>"`` -> ``["<SAD>", "<ADULT>"]``."""
    return _ANY_TAG.findall(text)


def split_asr_output(text: str) -> tuple[str, list[str]]:
    """An ASR+P output -> (transcript, tags).

    ``"i finally finished the report<SAD><ADULT>"`` -> (``"i finally finished the report"``,
    ``["<SAD>", "<ADULT>"]``). Tags are taken wherever they are; the transcript is the rest with
    whitespace collapsed and stripped.
    """
    return _SPACES.sub(" ", _ANY_TAG.sub(" ", text)).strip(), parse_tags(text)


def pick_label(tags: Iterable[str], field: str) -> str | None:
    """The first of ``tags`` that is a label of ``field`` (age, gender, emotion, event), in canonical
    spelling (aliases folded: ``<ANGER>`` -> ``<ANGRY>``); None when there is none."""
    allowed = LABEL_SETS[field]
    for tag in tags:
        label = canonical_label(field, tag)
        if label in allowed:
            return label
    return None


# ----------------------------------------------------------------------------------------------
# Think blocks
# ----------------------------------------------------------------------------------------------

THINK_FIELDS = ("transcript", "age", "gender", "emotion", "event", "reply_emotion")


def _raw_text(result: Any) -> str:
    return result if isinstance(result, str) else result.raw_text


def think_parse_rate(results: Sequence[Any], think: str = "tag", prompt_set: str = "mini") -> float:
    """Share of outputs with a well-formed think block (:func:`think_well_formed`).

    ``results``: raw output texts, or objects with a ``raw_text`` (``GenerationResult``). ValueError
    if empty.
    """
    if not results:
        raise ValueError("no outputs given")
    return sum(think_well_formed(_raw_text(r), think, prompt_set) for r in results) / len(results)


def _field_value(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if name == "transcript":
        return normalize_text(value)
    if name in LABEL_SETS:
        return canonical_label(name, value) if value.strip() else ""
    return value.strip()


def think_field_accuracy(parsed_fields: Sequence[dict[str, str]],
                         refs: Sequence[dict[str, str | None]]) -> dict[str, float | None]:
    """Per tag-think field, the share of items whose parsed value equals the reference.

    ``parsed_fields``: one dict per output, as :func:`echat.prompts.parse_tag_think` returns it
    (``{}`` when the think did not parse: every field is then wrong). ``refs``: one dict per output
    with the fields of :data:`THINK_FIELDS`. Values are compared after normalisation: the transcript
    with :func:`normalize_text`, labels in canonical spelling (``<&&>``, "unknown", is wrong), the
    rest stripped. A reference that is None or absent leaves that item out of that field; a field
    with no reference at all gets None.
    """
    if len(parsed_fields) != len(refs):
        raise ValueError(f"got {len(parsed_fields)} parsed outputs but {len(refs)} references")
    scores: dict[str, float | None] = {}
    for name in THINK_FIELDS:
        pairs = [(_field_value(name, ref.get(name)), _field_value(name, fields.get(name)))
                 for fields, ref in zip(parsed_fields, refs) if ref.get(name) is not None]
        scores[name] = sum(r == h for r, h in pairs) / len(pairs) if pairs else None
    return scores


# ----------------------------------------------------------------------------------------------
# Reply emotion
# ----------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return normalize_text(text).split()


def dialogue_replies(records: Iterable[Record], prompt_set: str = "mini") -> tuple[list[str], list[str]]:
    """(reply texts, reply-emotion tags) of the dialogue records (spoken or text chat, with or
    without think or history) whose target opens with a reply-emotion tag; the tag is removed
    from the text. Understanding, TTS and T2T records are skipped."""
    not_dialogue = (OutputType.TEXT, OutputType.TTS, OutputType.TTS_STREAMING, OutputType.T2T)
    texts, labels = [], []
    for record in records:
        if output_type(record.task) in not_dialogue or not record.txt.lstrip().startswith("<"):
            continue
        tag, text = split_reply_tag(record.txt, prompt_set)
        if record.txt.lstrip().startswith(tag):
            texts.append(text)
            labels.append(tag)
    return texts, labels


class ReplyEmotionClassifier:
    """Reply text -> reply-emotion tag: multinomial naive Bayes over bag-of-words counts.

    Words are the tokens of :func:`normalize_text`; ``alpha`` is the add-alpha (Laplace) smoothing
    of the word counts; words never seen in training are ignored; ties go to the first label in sorted
    order. Fit it on training replies (:meth:`from_corpus`), never on the replies it will judge.
    """

    def __init__(self, alpha: float = 0.1) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = alpha
        self.labels: list[str] = []
        self.log_prior: dict[str, float] = {}
        self.log_word: dict[str, dict[str, float]] = {}
        self.log_unseen: dict[str, float] = {}
        self.n_train = 0

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> ReplyEmotionClassifier:
        """Count words per label; ValueError if the lengths differ or nothing is given."""
        if len(texts) != len(labels):
            raise ValueError(f"got {len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise ValueError("no training replies given")
        counts: dict[str, Counter] = {}
        for text, label in zip(texts, labels):
            counts.setdefault(label, Counter()).update(_words(text))
        vocabulary = set().union(*counts.values())
        self.labels = sorted(counts)
        label_counts = Counter(labels)
        for label in self.labels:
            total = sum(counts[label].values()) + self.alpha * len(vocabulary)
            self.log_prior[label] = math.log(label_counts[label] / len(labels))
            self.log_word[label] = {w: math.log((counts[label][w] + self.alpha) / total) for w in vocabulary}
            self.log_unseen[label] = math.log(self.alpha / total)
        self.n_train = len(texts)
        return self

    def scores(self, text: str) -> dict[str, float]:
        """Log joint probability of ``text`` and each label (unnormalised)."""
        if not self.labels:
            raise ValueError("the classifier is not fitted (call fit or from_corpus first)")
        words = [w for w in _words(text) if w in self.log_word[self.labels[0]]]
        return {label: self.log_prior[label] + sum(self.log_word[label].get(w, self.log_unseen[label]) for w in words)
                for label in self.labels}

    def predict(self, texts: Sequence[str] | str) -> list[str]:
        """The most likely label of each text (a single string is a one-item list)."""
        texts = [texts] if isinstance(texts, str) else texts
        return [self._best(self.scores(text)) for text in texts]

    @staticmethod
    def _best(scores: dict[str, float]) -> str:
        return max(scores, key=scores.__getitem__)

    @classmethod
    def from_records(cls, records: Iterable[Record], prompt_set: str = "mini", alpha: float = 0.1):
        """Fitted on the dialogue replies of ``records`` (:func:`dialogue_replies`)."""
        return cls(alpha).fit(*dialogue_replies(records, prompt_set))

    @classmethod
    def from_corpus(cls, corpus: str | Path, split: str = "train", prompt_set: str = "mini", alpha: float = 0.1):
        """Fitted on the dialogue replies of ``corpus/{split}.jsonl``."""
        return cls.from_records(read_manifest(Path(corpus) / f"{split}.jsonl"), prompt_set, alpha)


def reply_emotion_prediction(raw_text: str, prompt_set: str = "mini",
                             classifier: ReplyEmotionClassifier | None = None) -> tuple[str | None, str]:
    """(predicted reply emotion, source) of one generated assistant text, by the module's definition.

    Source ``"tag"``: the reply's leading reply-emotion tag, or else the ``reply_emotion`` field of a
    parsed tag think (a). ``"classifier"``: ``classifier`` on the reply text (b). ``"none"``: no tag
    and no reply text (or no classifier): the prediction is None, which counts as wrong.
    """
    parsed = parse_reply(raw_text, prompt_set)
    if parsed.reply_emotion:
        return parsed.reply_emotion, "tag"
    if parsed.fields.get("reply_emotion", "").strip() in REPLY_EMOTIONS[prompt_set]:
        return parsed.fields["reply_emotion"].strip(), "tag"
    if classifier is not None and _words(parsed.reply):
        return classifier.predict(parsed.reply)[0], "classifier"
    return None, "none"
