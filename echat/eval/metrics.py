"""Word and character error rates (WER, CER) of English transcripts, computed with ``jiwer``.

Both references and hypotheses go through the same :func:`normalize_text` first, so the scores
ignore case, punctuation, emotion/style tags and contraction spelling.

Rates are corpus-level: total edits (substitutions + deletions + insertions) over the total
number of reference words (or characters), not a mean of per-utterance rates.

Empty references (after normalisation): an empty reference inside a corpus is allowed, and each
hypothesis word then counts as an insertion. :func:`wer` and :func:`cer` raise ValueError only when
*every* reference is empty, because the rate is then undefined. :func:`per_utterance_wer` raises
ValueError for any empty reference and names its index.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import jiwer

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
