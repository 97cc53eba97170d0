"""EChat-eval judges: score one spoken-dialogue reply from 1 to 5 against what the user said, how they said it
and the intended reply.

Two judges share the :class:`Judge` protocol:

- :class:`RubricJudge` (``"rubric-v1"``, the offline default): a deterministic rubric over EChat-mini's reply
  grammar (:mod:`echat.data.mini.text`); its class docstring is the rubric.
- :class:`LLMJudge`: any OpenAI-compatible ``/chat/completions`` endpoint with our versioned prompt
  (:func:`judge_messages`, ``JUDGE_PROMPT_VERSION``), strict JSON parsing (:func:`parse_verdict`), retries with
  backoff, an on-disk cache and a request counter. The paper's judge is GPT-4o with an unpublished prompt, so
  no judge here reproduces its numbers; :func:`reference_results` loads them (another scale, another judge).

A judge that cannot score an item returns ``Verdict(score=None, error=...)``: a failure, never a zero.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from echat.data.mini.text import AGE_CLOSERS, EVENT_OPENERS, REPLY_FOR_EVENT, REPLY_FRAMES, TEMPLATES
from echat.tokens import NO_EVENT

JUDGE_PROMPT_VERSION = "echat-judge-v1"
CATEGORIES = ("emotion", "age", "gender", "event", "multi")  # EChat-eval's columns, in the paper's order
REFERENCE_RESULTS = Path(__file__).resolve().parents[2] / "data" / "reference_results.json"


@dataclass(frozen=True)
class JudgeItem:
    """One benchmark item as a judge sees it (tags in mini names, e.g. ``"<CHILD>"``, ``"<COMFORTING>"``)."""

    key: str  # item id (unique within a benchmark)
    category: str  # one of CATEGORIES
    transcript: str  # what the user said
    cues: dict[str, str]  # {"age","gender","emotion","event"} -> tag; a missing key = unknown
    reference_reply: str  # the intended reply text (no leading tag)
    reference_emotion: str | None  # the intended reply emotion tag, or None when not known


@dataclass(frozen=True)
class Verdict:
    """A judge's score of one reply: 1..5, or None when the judge failed (``error`` says why)."""

    score: int | None
    reason: str  # one line
    judge: str  # the judge's id, e.g. "rubric-v1" or "llm:<model>:echat-judge-v1"
    error: str | None = None


class Judge(Protocol):
    """Anything that scores a reply (text and the emotion its voice carried) to a :class:`JudgeItem`."""

    name: str  # id written to every Verdict

    def judge(self, item: JudgeItem, reply: str, reply_emotion: str | None) -> Verdict: ...


# ----------------------------------------------------------------------------------------------
# Which cues decide an item
# ----------------------------------------------------------------------------------------------


def deciding_cues(cues: dict[str, str]) -> tuple[str, ...]:
    """The cue fields that change EChat-mini's intended reply, in the order (emotion, age, event).

    event: its sound has an opener (``EVENT_OPENERS``) or sets the reply emotion (``REPLY_FOR_EVENT``);
    age: it has a closer (``<CHILD>``, ``<OLD>``); emotion: known, not ``<NEUTRAL>``, and no event overrides
    the reply emotion it sets. Gender never decides in EChat-mini.
    """
    event, age, emotion = cues.get("event"), cues.get("age"), cues.get("emotion")
    deciding = {
        "emotion": emotion is not None and emotion != "<NEUTRAL>" and event not in REPLY_FOR_EVENT,
        "age": bool(AGE_CLOSERS.get(age or "")),
        "event": event in EVENT_OPENERS or event in REPLY_FOR_EVENT,
    }
    return tuple(field for field, decides in deciding.items() if decides)


def item_category(cues: dict[str, str]) -> str:
    """EChat-eval's category of an EChat-mini item: the one cue field that decides its reply
    (:func:`deciding_cues`), ``"multi"`` for two or more, ``"emotion"`` for none (a neutral reply is the
    answer to a neutral voice). ``"gender"`` never comes out: EChat-mini's replies do not depend on it."""
    deciding = deciding_cues(cues)
    if len(deciding) > 1:
        return "multi"
    return deciding[0] if deciding else "emotion"


# ----------------------------------------------------------------------------------------------
# The rubric
# ----------------------------------------------------------------------------------------------

_TAG = re.compile(r"<[^<>\s]*>")
# Words that carry no topic: they never count as content, so "the report" and "the wallet" share none.
_FUNCTION_WORDS = frozenset(
    "a an the to of in on at for from with by and or but my your our their his her its me us them "
    "i you we they he she it is are was were be been this that these those".split())


def _words(text: str) -> list[str]:
    """Lower-case words of ``text`` without tags; a possessive ``'s`` is dropped (``sister's`` -> ``sister``)."""
    words = re.findall(r"[a-z0-9']+", _TAG.sub(" ", text.lower()))
    return [w.removesuffix("'s").strip("'") for w in words if w.strip("'")]


def _normalised(text: str) -> str:
    return " " + " ".join(_words(text)) + " "


def _grammar_vocabulary() -> frozenset[str]:
    """Every word of EChat-mini's reply frames, topic phrases (slots removed), event openers and age closers."""
    texts = [frame.replace("{t}", " ") for frames in REPLY_FRAMES.values() for frame in frames]
    texts += [topic.replace("{x}", " ") for _, _, topic in TEMPLATES]
    return frozenset(_words(" ".join([*texts, *EVENT_OPENERS.values(), *AGE_CLOSERS.values()])))


GRAMMAR_VOCABULARY = _grammar_vocabulary()


def content_words(text: str) -> set[str]:
    """The words of a reply that are neither EChat-mini's reply grammar nor function words: the slot it names."""
    return {w for w in _words(text) if w not in GRAMMAR_VOCABULARY and w not in _FUNCTION_WORDS}


def _phrases_found(text: str, phrases: dict[str, str]) -> set[str]:
    """The tags (keys of ``phrases``) whose phrase occurs in ``text``, as whole words, case and punctuation aside."""
    found = _normalised(text)
    return {tag for tag, phrase in phrases.items() if phrase and _normalised(phrase) in found}


def on_topic(wanted: set[str], said: set[str]) -> bool:
    """More than half of the intended content words ``wanted`` are ``said``, and at least half of the words
    ``said`` are wanted (an empty set counts as fully matched on its side)."""
    shared = wanted & said
    recall_ok = not wanted or len(shared) > len(wanted) / 2
    precision_ok = not said or len(shared) >= len(said) / 2
    return recall_ok and precision_ok


@dataclass(frozen=True)
class RubricPoints:
    """The rubric's reading of one reply, point by point (see :class:`RubricJudge`)."""

    empty: bool  # the reply has no words (score 1)
    checks: dict[str, bool]  # cue check -> passed: the deciding cues, then any spurious acknowledgement
    cue_points: int  # 0..2
    emotion_point: int  # 0/1
    content_point: int  # 0/1
    intended_content: frozenset[str]  # content words of the intended reply
    reply_content: frozenset[str]  # content words of the reply

    @property
    def score(self) -> int:
        return 1 if self.empty else 1 + self.cue_points + self.emotion_point + self.content_point


class RubricJudge:
    """EChat-mini's offline judge: a deterministic 1-5 rubric over the mini world's reply grammar.

    EChat-mini's intended reply is a pure function of the cues (:mod:`echat.data.mini.text`): an event opener
    (``EVENT_OPENERS``), a frame of the reply emotion (``REPLY_FRAMES``; the emotion comes from
    ``REPLY_FOR_EVENT``, else ``REPLY_FOR_EMOTION``) around the topic, and an age closer (``AGE_CLOSERS``).
    The rubric reads those parts back::

        score = 1 + cue points (0..2) + emotion point (0/1) + content point (0/1)     (1..5)

    - **cue points** = 2 x (passed cue checks / cue checks), rounded half up. One check per *deciding* cue:
      the item's category, or for ``"multi"`` every cue of :func:`deciding_cues` (emotion if none):

      - emotion: the reply emotion equals the intended one;
      - age: the reply's age closers are exactly the intended reply's (the right one, no other);
      - event: the reply's event openers are exactly the intended reply's, and for an event that sets the reply
        emotion (``<CRY>``, ``<SCREAM>``, ``<LAUGH>``) the reply emotion is the intended one;
      - gender (only from a user's explicit category; EChat-mini's replies do not depend on it): only the reply
        emotion can be checked.

      Plus one failed check for each non-deciding cue the reply acknowledges anyway (an age closer for a
      speaker whose intended reply has none, an event opener for a sound that did not happen).
    - **emotion point**: the reply emotion equals the intended one (None, no emotion read, is wrong).
    - **content point**: the reply answers what was said. Content words are the words that are neither in
      the grammar's vocabulary (frames, the templates' topic phrases such as "speaking in front of", openers,
      closers) nor function words (articles, prepositions, pronouns), so what is left is the slot the user
      named ("the whole school"): more than half of the intended reply's content words must be in the
      reply, and at least half of the reply's content words must be intended ones (an empty set counts as
      matched).
    - an empty reply (no words) scores 1.

    An item without an intended reply emotion (a user's manifest may omit it) cannot check the emotion: those
    checks pass, and the reason says so. The reason names what was missed, on one line. Replies outside the
    mini grammar (a user's free-text data) are scored by words alone: prefer :class:`LLMJudge` there.

    Changes from the first draft of this rubric (whose content point was "at least half of the words outside
    frames, openers and closers"): the topic phrases and function words are out of the content and "more than
    half" is needed, since otherwise a reply about another slot of the same template ("speaking in front of
    the whole school" for "... of your class") kept the point; a precision condition (an intended reply with
    no topic, ``<AFRAID>``'s, is matched only by a reply without one); a closer or opener must be the *only*
    one of its kind; spurious acknowledgements cost a check; an empty reply scores 1.
    """

    name = "rubric-v1"

    def judge(self, item: JudgeItem, reply: str, reply_emotion: str | None) -> Verdict:
        """Score ``reply`` (text, tags ignored) said with ``reply_emotion`` against ``item``."""
        points = self.points(item, reply, reply_emotion)
        reason = "empty reply" if points.empty else _reason(item, reply_emotion, points)
        return Verdict(points.score, reason, self.name)

    def points(self, item: JudgeItem, reply: str, reply_emotion: str | None) -> RubricPoints:
        """The rubric's points for ``reply`` said with ``reply_emotion``, check by check."""
        emotion_ok = item.reference_emotion is None or reply_emotion == item.reference_emotion
        checks = _cue_checks(item, reply, emotion_ok)
        wanted, said = content_words(item.reference_reply), content_words(reply)
        return RubricPoints(empty=not _words(reply), checks=checks,
                            cue_points=math.floor(2 * sum(checks.values()) / len(checks) + 0.5),
                            emotion_point=int(emotion_ok), content_point=int(on_topic(wanted, said)),
                            intended_content=frozenset(wanted), reply_content=frozenset(said))


def _deciding_fields(item: JudgeItem) -> tuple[str, ...]:
    if item.category == "multi":
        return deciding_cues(item.cues) or ("emotion",)
    return (item.category,)


def _cue_checks(item: JudgeItem, reply: str, emotion_ok: bool) -> dict[str, bool]:
    """{check name: passed} for the deciding cues, plus a failed check per spurious closer or opener."""
    closers = (_phrases_found(reply, AGE_CLOSERS), _phrases_found(item.reference_reply, AGE_CLOSERS))
    openers = (_phrases_found(reply, EVENT_OPENERS), _phrases_found(item.reference_reply, EVENT_OPENERS))
    event_sets_emotion = item.cues.get("event") in REPLY_FOR_EVENT
    passed = {
        "emotion": emotion_ok,
        "gender": emotion_ok,
        "age": closers[0] == closers[1],
        "event": openers[0] == openers[1] and (emotion_ok or not event_sets_emotion),
    }
    deciding = _deciding_fields(item)
    checks = {field: passed[field] for field in deciding}
    if "age" not in deciding and closers[0] - closers[1]:
        checks["spurious age closer"] = False
    if "event" not in deciding and openers[0] - openers[1]:
        checks["spurious event opener"] = False
    return checks


def _reason(item: JudgeItem, reply_emotion: str | None, points: RubricPoints) -> str:
    """One line naming what the reply missed (or that it missed nothing)."""
    misses = []
    if not points.emotion_point:
        misses.append(f"reply emotion {reply_emotion or 'unknown'} (intended {item.reference_emotion})")
    for name, ok in points.checks.items():
        if not ok and name in ("age", "event"):
            misses.append(f"{name} {item.cues.get(name, 'unknown')} not acknowledged as intended")
        elif not ok and name.startswith("spurious"):
            misses.append(name)
    if not points.content_point:
        missing = sorted(points.intended_content - points.reply_content)
        misses.append("off topic" + (f" (missing: {', '.join(missing)})" if missing else ""))
    if not misses:
        unchecked = "" if item.reference_emotion else " (reply emotion not checked: none intended)"
        return "deciding cues acknowledged, reply emotion right, on topic" + unchecked
    return "missed: " + "; ".join(misses)


# ----------------------------------------------------------------------------------------------
# The LLM judge
# ----------------------------------------------------------------------------------------------

JUDGE_SYSTEM_PROMPT = (
    "You judge replies of empathetic spoken dialogue systems. A user spoke to a voice assistant. Besides the "
    "words, the voice carried paralinguistic cues: the speaker's age and gender, their emotion, and possibly a "
    "non-speech sound (a cough, a laugh, crying...). A good reply answers what was said and responds fittingly "
    "to how it was said. You are given the cues, one intended reply written for them (a good answer, not the "
    "only one), and the system's reply with the emotion its voice carried.\n"
    "Score the system's reply from 1 to 5, focusing on the category under test:\n"
    "5 = answers the content and responds to every relevant cue, with a fitting emotion;\n"
    "4 = good, one small miss;\n"
    "3 = answers the content but misses an important cue or has an unfitting emotion;\n"
    "2 = generic, or mostly ignores the cues;\n"
    "1 = off topic, inappropriate or empty.\n"
    'Answer with one JSON object and nothing else: {"score": <integer 1-5>, "reason": "<one short sentence>"}'
)


def _readable(tag: str | None) -> str:
    """``"<THROAT_CLEARING>"`` -> ``"throat clearing"``; None -> ``"unknown"``."""
    return "unknown" if tag is None else tag.strip("<>").lower().replace("_", " ")


def judge_messages(item: JudgeItem, reply: str, reply_emotion: str | None) -> list[dict[str, str]]:
    """The chat messages (system, user) of prompt ``JUDGE_PROMPT_VERSION`` for one reply."""
    event = item.cues.get("event")
    cues = {"age": _readable(item.cues.get("age")), "gender": _readable(item.cues.get("gender")),
            "emotion": _readable(item.cues.get("emotion")),
            "sound event": "none" if event == NO_EVENT else _readable(event)}
    user = (f"Category under test: {item.category}\n"
            f"The user said: {json.dumps(item.transcript, ensure_ascii=False)}\n"
            f"Cues: {', '.join(f'{name} = {value}' for name, value in cues.items())}\n"
            f"Intended reply (emotion: {_readable(item.reference_emotion)}): "
            f"{json.dumps(item.reference_reply, ensure_ascii=False)}\n"
            f"System reply (emotion: {_readable(reply_emotion)}): {json.dumps(reply, ensure_ascii=False)}")
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_verdict(content: str, judge: str) -> Verdict:
    """The judge model's answer -> Verdict. Strict: one JSON object (optionally inside one ```json fence)
    with an integer ``score`` in 1..5 and an optional string ``reason``; anything else is a failure."""
    text = content.strip()
    fenced = _FENCE.match(text)
    try:
        answer = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return _failure(judge, f"judge answer is not JSON: {_snippet(text)}")
    if not isinstance(answer, dict) or "score" not in answer:
        return _failure(judge, f"judge answer has no score: {_snippet(text)}")
    score, reason = answer["score"], answer.get("reason", "")
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
        return _failure(judge, f"judge score {score!r} is not an integer from 1 to 5")
    if not isinstance(reason, str):
        return _failure(judge, f"judge reason {reason!r} is not a string")
    return Verdict(score, " ".join(reason.split()), judge)


def _failure(judge: str, error: str) -> Verdict:
    return Verdict(None, "judge failed", judge, error=error)


def _snippet(text: str, limit: int = 120) -> str:
    one_line = " ".join(text.split())
    return repr(one_line if len(one_line) <= limit else one_line[:limit] + "...")


class JudgeRequestError(RuntimeError):
    """The endpoint gave no usable answer (after the retries that apply); the message never holds the key."""


MAX_RETRY_AFTER_S = 30.0  # a server's Retry-After up to this is waited for; a longer one ends the item
_RETRYABLE = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


class LLMJudge:
    """A judge model behind an OpenAI-compatible ``POST {url}/chat/completions`` (OpenAI, vLLM, llama.cpp...).

    The request carries ``model``, the messages of :func:`judge_messages` and temperature 0; the API key is
    read from the environment variable ``api_key_env`` at each request (absent: no Authorization header, as a
    local server needs) and never logged, cached or put in an error. ``timeout`` (s) bounds each blocking
    socket operation of a request. 429, 5xx, connection errors and timeouts are retried up to ``retries``
    times, waiting ``backoff x 2**attempt`` s (or the server's Retry-After when longer, if at most
    ``MAX_RETRY_AFTER_S``); other HTTP errors and unparseable answers fail the item at once (temperature 0
    would repeat them). Successful verdicts are cached in ``cache_dir`` (one JSON file per key, see
    :meth:`cache_key`), so a re-run makes no requests; failures are not cached. ``calls`` counts HTTP requests.

    The standard library's ``urllib.request`` does the HTTP: ``requests`` is not among echat's dependencies,
    and one JSON POST needs nothing more.
    """

    def __init__(self, url: str, model: str, api_key_env: str = "ECHAT_JUDGE_API_KEY", cache_dir: Path | None = None,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 1.0):
        self.url = url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.name = f"llm:{model}:{JUDGE_PROMPT_VERSION}"
        self.calls = 0

    def judge(self, item: JudgeItem, reply: str, reply_emotion: str | None) -> Verdict:
        """Ask the judge model (or the cache) to score ``reply``; a failure is ``Verdict(score=None, error=...)``."""
        messages = judge_messages(item, reply, reply_emotion)
        key = self.cache_key(item, reply, reply_emotion)
        cached = self._read_cache(key)
        if cached is not None:
            return cached
        try:
            content = self._complete(messages)
        except JudgeRequestError as err:
            return _failure(self.name, str(err))
        verdict = parse_verdict(content, self.name)
        if verdict.score is not None:
            self._write_cache(key, item.key, verdict)
        return verdict

    def cache_key(self, item: JudgeItem, reply: str, reply_emotion: str | None) -> str:
        """sha256 (hex) of the prompt version, the model, the item key, the reply and its emotion, and the
        prompt's messages (so an item whose data changed under the same key is asked again)."""
        parts = [JUDGE_PROMPT_VERSION, self.model, item.key, reply, reply_emotion,
                 judge_messages(item, reply, reply_emotion)]
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.json" if self.cache_dir is not None else None

    def _read_cache(self, key: str) -> Verdict | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            return Verdict(int(saved["score"]), str(saved["reason"]), self.name)
        except (ValueError, KeyError, TypeError):  # a damaged file is a miss; it is rewritten
            return None

    def _write_cache(self, key: str, item_key: str, verdict: Verdict) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = {"prompt_version": JUDGE_PROMPT_VERSION, "model": self.model, "item": item_key,
                 "score": verdict.score, "reason": verdict.reason}
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")
        partial.replace(path)

    def _complete(self, messages: list[dict[str, str]]) -> str:
        """The assistant message's content, with the retries; raises JudgeRequestError."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0}).encode("utf-8")
        last = ""
        for attempt in range(self.retries + 1):
            wait, last = self._attempt(body, attempt)
            if wait is None:
                return last
            if attempt < self.retries:
                time.sleep(wait)
        raise JudgeRequestError(f"no answer from {self.url} after {self.retries + 1} requests: {last}")

    def _attempt(self, body: bytes, attempt: int) -> tuple[float | None, str]:
        """(None, content) on success, (seconds to wait, what went wrong) when worth retrying."""
        request = urllib.request.Request(f"{self.url}/chat/completions", data=body, method="POST",
                                         headers=self._headers())
        self.calls += 1
        delay = self.backoff * 2 ** attempt
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return None, self._content(response.read())
        except urllib.error.HTTPError as err:
            return self._http_error(err, delay)
        except _RETRYABLE as err:
            reason = getattr(err, "reason", err)
            return delay, self._scrub(f"{type(err).__name__}: {reason}")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _http_error(self, err: urllib.error.HTTPError, delay: float) -> tuple[float, str]:
        """Retry 429 and 5xx (honouring a short Retry-After); raise on anything else."""
        detail = self._scrub(f"HTTP {err.code}: {_snippet(_body(err))}")
        if err.code != 429 and err.code < 500:
            raise JudgeRequestError(detail) from None
        retry_after = _seconds(err.headers.get("Retry-After") if err.headers else None)
        if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
            raise JudgeRequestError(f"{detail}; Retry-After {retry_after:g} s is over {MAX_RETRY_AFTER_S:g} s")
        return max(delay, retry_after or 0.0), detail

    def _content(self, raw: bytes) -> str:
        """The first choice's message content of a chat-completions response body."""
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeRequestError(self._scrub(f"not a chat-completions response: "
                                                f"{_snippet(raw.decode('utf-8', 'replace'))}")) from None
        if not isinstance(content, str):
            raise JudgeRequestError(f"message content is {type(content).__name__}, not text")
        return content

    def _scrub(self, text: str) -> str:
        """``text`` with the API key (should a server echo it) replaced by ``***``."""
        key = os.environ.get(self.api_key_env, "")
        return text.replace(key, "***") if key else text


def _body(err: urllib.error.HTTPError) -> str:
    """An error response's body as text ("" when it cannot be read)."""
    try:
        return (err.read() or b"").decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""


def _seconds(value: str | None) -> float | None:
    """A Retry-After header given in seconds; None when absent or an HTTP date."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------
# The paper's numbers
# ----------------------------------------------------------------------------------------------


def reference_results(path: Path = REFERENCE_RESULTS) -> dict:
    """The paper's EChat-eval tables (``data/reference_results.json``): GPT-4o-judged scores and the human
    evaluation, 0-100 as printed, None for "-", with their sources. Another judge and scale than ours.
    The file lives in the source checkout (``data/``), beside the notebooks: an install without it is told so."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the paper's EChat-eval tables are not there; they are read from a source "
                                "checkout of echat (git clone, then pip install -e .)")
    return json.loads(path.read_text(encoding="utf-8"))
