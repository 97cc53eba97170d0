"""Stage-by-stage evaluation of an EChat model on an EChat-mini style corpus.

:func:`evaluate` runs three stages on one split (default ``test``), for each test subset
(``extra.subset``: ``seen`` and ``unseen``; records without one are reported under ``all``)
separately. ``limit`` caps the items of every stage per subset (taken in manifest order).

Protocol:

- **understanding**: items are the split's user clips (one per distinct ``wav`` among single-turn
  records whose ``extra`` holds q_txt, age, gender, q_emotion and caption). Four calls per clip,
  each with the first instruction prompt of its task (``instruction_prompts(task, prompt_set)[0]``)
  and greedy decoding, ``GenerationOptions(do_sample=False, max_new_tokens=64)``: ``<TRANSCRIBE>``
  gives the transcript (any tags dropped), scored against ``extra.q_txt`` by corpus-level CER and
  WER; the only-P tasks ``<AGE> <GENDER>``, ``<EMOTION>`` and ``<CAPTION>`` give the labels: the
  first tag of the output that belongs to the field's label set is the prediction, and an output
  without one counts as ``<NONE>`` (wrong). Accuracy and a confusion matrix per field.
- **generation** (TTS round trip): items are the split's ``<TEXT2TOKEN>`` records. The model speaks
  the reply text with the reference's default TTS sampling (top_k 15, top_p 0.8, temperature 1.2),
  seeded with :data:`TTS_SEED` for every utterance (so runs repeat exactly), and at most
  ``min(750, 50 + 20 x words)`` speech tokens (750 tokens = 30 s at 25 Hz, Whisper's window; the
  corpus averages about 8.4 tokens per word, so only a model that never stops hits the cap). Its
  tokens, and the ground-truth tokens (``extra.speech_token``), go through the corpus's
  ``MiniToken2Wav`` (``speech_tokenizer/``) and Whisper base (the ground truth's transcripts are kept in
  the corpus's ``cache/``: :func:`truth_round_trip`); both WERs are taken against the reply text. The
  target "within 2x of the re-synthesised ground truth" is ``within_2x``: ``wer_model <= 2 * wer_ground_truth``.
  The stage reports None with a reason when the speech tokenizer folder is missing, its codebook differs
  from the model's, Whisper base is not installed, or there is no TTS record.
- **empathy**: items are the split's single-turn dialogue records of every chat task (S2T, S2T
  think, S2S, S2S think). The labels are on every dialogue clip, so all are used, each in the form
  of its family that the think mode asks for: ``<S2TCHAT> <THINKER>`` / ``<S2TCHAT> <TEXT2TOKEN>
  <THINK>`` with think tag or language, ``<S2TCHAT>`` / ``<S2TCHAT> <TEXT2TOKEN>`` with think none.
  Greedy, at most 256 text tokens and no speech (nothing scored here is in the speech). Scores: the
  think parse rate (think tag or language), the think field accuracy (think tag) and the
  reply-emotion accuracy, as defined in :mod:`echat.eval.metrics` (the output's reply-emotion tag,
  else a bag-of-words classifier fitted on the corpus's training replies, whose own accuracy on the
  ground-truth replies is reported next to it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from echat.audio import load_audio
from echat.config import GenerationOptions, ThinkMode
from echat.data.schema import Record, read_manifest
from echat.data.speech_tokens import SPEECH_TOKENIZER_DIR
from echat.eval.asr import transcribe
from echat.eval.metrics import (
    ReplyEmotionClassifier,
    cer,
    confusion_matrix,
    dialogue_replies,
    label_accuracy,
    parse_tags,
    pick_label,
    reply_emotion_prediction,
    split_asr_output,
    think_field_accuracy,
    think_parse_rate,
    wer,
)
from echat.eval.whisper_ct2 import whisper_base_files
from echat.models.batch_generate import GenerationRequest, generate_batch
from echat.models.checkpoint import resolve_checkpoint
from echat.models.echat import EChat
from echat.models.encoder import EncoderCache
from echat.prompts import Cues, default_options, parse_tag_think, split_reply_tag, think_body
from echat.text_tokenizer import load_tokenizer
from echat.token2wav.mini import MiniToken2Wav
from echat.tokens import (
    CUE_FIELDS,
    LABEL_SETS,
    REPLY_EMOTIONS,
    TEXT2TOKEN,
    TRANSCRIBE,
    OutputType,
    canonical_label,
    output_type,
    task_for,
)

STAGES = ("understanding", "generation", "empathy")
NONE_LABEL = "<NONE>"  # the prediction of an output that holds no label of the field
ONLY_P_TASKS = {"<AGE> <GENDER>": ("age", "gender"), "<EMOTION>": ("emotion",), "<CAPTION>": ("event",)}
UNDERSTANDING_OPTIONS = GenerationOptions(do_sample=False, max_new_tokens=64)
EMPATHY_OPTIONS = GenerationOptions(do_sample=False, max_new_tokens=256, max_speech_tokens=0)
TTS_SEED = 0
WHISPER_MAX_TOKENS = 750  # 30 s at 25 tokens/s
BATCH_SIZE = 8  # generation requests decoded together (generate_batch): the figures are those of one at a time
DIALOGUE_KINDS = (OutputType.S2T_CHAT, OutputType.S2T_THINK, OutputType.S2T_CHAT_FAKE, OutputType.S2S,
                  OutputType.S2S_THINK)
PROTOCOL = {
    "understanding": "per user clip: <TRANSCRIBE> (CER/WER vs extra.q_txt) and only-P <AGE> <GENDER>, <EMOTION>, "
                     "<CAPTION> (first tag of the field's label set, else <NONE>); greedy, 64 new tokens",
    "generation": f"TTS records: default TTS sampling seeded {TTS_SEED}, <= min(750, 50 + 20 x words) speech "
                  "tokens; MiniToken2Wav + Whisper base WER vs the reply text, model and ground-truth tokens",
    "empathy": "single-turn dialogue records in the think form of their family; greedy, 256 text tokens, "
               "no speech; reply emotion: the output's tag, else the bag-of-words classifier",
}


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def load_model(path: str | Path, device: str = "cpu"):
    """The :class:`~echat.models.echat.EChat` of a checkpoint or run folder (:func:`resolve_checkpoint`); a
    mini checkpoint that keeps its speech tokenizer speaks: its ``token2wav`` fills ``result.audio``."""
    checkpoint = resolve_checkpoint(path)
    model = EChat.from_checkpoint(checkpoint, device)
    model.token2wav = MiniToken2Wav.beside(checkpoint)
    return model


# ----------------------------------------------------------------------------------------------
# Items
# ----------------------------------------------------------------------------------------------


def group_subsets(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Records by ``extra.subset`` (``"all"`` when absent), subsets in sorted order."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(str(record.extra.get("subset") or "all"), []).append(record)
    return dict(sorted(groups.items()))


def user_clips(records: Sequence[Record]) -> list[Record]:
    """One single-turn record per distinct user clip that carries every understanding label."""
    seen: set[str] = set()
    clips = []
    for record in records:
        labelled = all(record.extra.get(key) for key in ("q_txt", *CUE_FIELDS.values()))
        if record.wav and not record.history and labelled and record.wav not in seen:
            seen.add(record.wav)
            clips.append(record)
    return clips


def tts_records(records: Sequence[Record]) -> list[Record]:
    """The TTS records with a reply text and ground-truth speech tokens."""
    return [r for r in records if r.task == TEXT2TOKEN and r.txt.strip() and r.extra.get("speech_token")]


def dialogue_records(records: Sequence[Record]) -> list[Record]:
    """The single-turn spoken dialogue records (S2T, S2T think, S2S, S2S think)."""
    return [r for r in records if r.wav and not r.history and output_type(r.task) in DIALOGUE_KINDS]


def empathy_task(record: Record, think: ThinkMode) -> str:
    """The task a dialogue record is run with: its family (text or speech reply) in the think form."""
    return task_for(output_type(record.task).speech_out, think)


def _cap(items: list, limit: int | None) -> list:
    return items[:limit] if limit else items


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------


@dataclass
class StageContext:
    """What every stage of one evaluation needs: the model, the think mode, the per-subset item
    limit, the reply-emotion classifier, the token2wav (or the reason the generation stage is
    skipped), the device Whisper runs on, whether to show progress bars and how many generation
    requests are decoded together."""

    model: Any
    think: ThinkMode
    limit: int | None
    classifier: ReplyEmotionClassifier | None
    token2wav: Any
    skip_reason: str | None
    device: str
    progress: bool
    batch_size: int = BATCH_SIZE
    cache: Path | None = None  # where the ground truth's round trips are kept (the corpus's cache/ folder)

    @property
    def prompt_set(self) -> str:
        return self.model.config.text.prompt_set


def _generate_all(ctx: StageContext, requests: list[GenerationRequest], desc: str, unit: str,
                  token2wav=None) -> list:
    """The results of ``requests`` in order, :attr:`StageContext.batch_size` at a time, with a progress bar."""
    results = []
    with tqdm(total=len(requests), desc=desc, unit=unit, disable=not ctx.progress) as bar:
        for at in range(0, len(requests), ctx.batch_size):
            results += generate_batch(ctx.model, requests[at:at + ctx.batch_size], token2wav=token2wav)
            bar.update(len(results) - bar.n)
    return results


def _label_scores(refs: list[str], hyps: list[str], label_set: Sequence[str]) -> dict:
    labels = [*label_set, *sorted({*refs, *hyps} - {*label_set, NONE_LABEL})]
    labels += [NONE_LABEL] if NONE_LABEL in hyps else []
    return {"accuracy": label_accuracy(refs, hyps), "labels": labels,
            "confusion": confusion_matrix(refs, hyps, labels).tolist()}


def _rate(metric, refs: list[str], hyps: list[str]) -> float | None:
    try:
        return metric(refs, hyps)
    except ValueError:
        return None


def run_understanding(ctx: StageContext, clips: list[Record], desc: str) -> dict:
    """ASR CER/WER and age/gender/emotion/event accuracy of the clips (see the module protocol)."""
    refs: dict[str, list[str]] = {field: [] for field in LABEL_SETS}
    hyps: dict[str, list[str]] = {field: [] for field in LABEL_SETS}
    asr_refs, asr_hyps, examples = [], [], []
    tasks = (TRANSCRIBE, *ONLY_P_TASKS)
    requests = [GenerationRequest(wave, task=task, options=UNDERSTANDING_OPTIONS)
                for wave in (load_audio(record.audio_path()) for record in clips) for task in tasks]
    raws = iter(result.raw_text for result in _generate_all(ctx, requests, desc, "call"))
    for record in clips:
        outputs = {task: next(raws) for task in tasks}
        asr_refs.append(record.extra["q_txt"])
        asr_hyps.append(split_asr_output(outputs[TRANSCRIBE])[0])
        for task, fields in ONLY_P_TASKS.items():
            for field in fields:
                refs[field].append(canonical_label(field, record.extra[CUE_FIELDS[field]]))
                hyps[field].append(pick_label(parse_tags(outputs[task]), field) or NONE_LABEL)
        if len(examples) < 2:
            examples.append({"key": record.key, "outputs": outputs})
    return {"items": len(clips), "asr": {"cer": _rate(cer, asr_refs, asr_hyps), "wer": _rate(wer, asr_refs, asr_hyps)},
            "labels": {field: _label_scores(refs[field], hyps[field], LABEL_SETS[field]) for field in LABEL_SETS},
            "examples": examples}


def speech_token_cap(text: str) -> int:
    """Most speech tokens TTS may produce for ``text``: min(750, 50 + 20 x words)."""
    return min(WHISPER_MAX_TOKENS, 50 + 20 * len(text.split()))


def tts_options(text: str) -> GenerationOptions:
    """How the generation stage speaks ``text``: the reference's TTS sampling seeded with :data:`TTS_SEED`, at
    most :func:`speech_token_cap` tokens."""
    return replace(default_options(OutputType.TTS), seed=TTS_SEED, max_speech_tokens=speech_token_cap(text))


def _skipped_generation(items: int, reason: str) -> dict:
    return {"items": items, "skipped": reason, "wer_model": None, "wer_ground_truth": None,
            "wer_ratio": None, "within_2x": None}


def run_generation(ctx: StageContext, records: list[Record], desc: str) -> dict:
    """TTS round-trip WER of the model's speech tokens and of the ground-truth tokens."""
    if ctx.skip_reason or not records:
        return _skipped_generation(len(records), ctx.skip_reason or "no TTS records in this subset")
    requests = [GenerationRequest(text=r.txt, task=TEXT2TOKEN, options=tts_options(r.txt)) for r in records]
    results = _generate_all(ctx, requests, desc, "utt", token2wav=ctx.token2wav)
    spoken = [result.speech_tokens for result in results]
    waves = [result.audio if result.audio is not None else ctx.token2wav(result.speech_tokens) for result in results]
    truth = [list(r.extra["speech_token"])[:WHISPER_MAX_TOKENS] for r in records]
    texts = transcribe(waves, device=ctx.device, progress=ctx.progress) + truth_round_trip(ctx, records, truth)
    refs = [r.txt for r in records]
    wer_model, wer_truth = wer(refs, texts[:len(refs)]), wer(refs, texts[len(refs):])
    return {"items": len(records), "skipped": None, "wer_model": wer_model, "wer_ground_truth": wer_truth,
            "wer_ratio": wer_model / wer_truth if wer_truth else None, "within_2x": wer_model <= 2 * wer_truth,
            "speech_tokens_model": sum(map(len, spoken)) / len(spoken),
            "speech_tokens_ground_truth": sum(map(len, truth)) / len(truth),
            "examples": [{"key": r.key, "reference": r.txt, "model": m, "ground_truth": t}
                         for r, m, t in list(zip(records, texts, texts[len(refs):]))[:2]]}


def truth_round_trip(ctx: StageContext, records: list[Record], truth: list[list[int]]) -> list[str]:
    """Whisper's transcript of each record's ground-truth speech tokens ``truth`` spoken by ``ctx.token2wav``.

    Why kept: they depend on the corpus, the token2wav and Whisper only, never on the model evaluated, and they
    were half of the generation stage's time (Whisper reads a 30 s window per clip). With a token2wav that has a
    ``fingerprint`` they are read from and added to ``ctx.cache/tts-truth-{fingerprint}.json``, each under its
    record's key with a digest of its tokens (tokens that changed are transcribed again)."""
    fingerprint = getattr(ctx.token2wav, "fingerprint", None)
    path = ctx.cache / f"tts-truth-{fingerprint()}.json" if ctx.cache and fingerprint else None
    kept = _read_kept(path)
    digests = [hashlib.blake2b(np.asarray(tokens, dtype=np.int64).tobytes(), digest_size=8).hexdigest()
               for tokens in truth]
    todo = [i for i, r in enumerate(records) if kept.get(r.key, {}).get("tokens") != digests[i]]
    if todo:
        texts = transcribe([ctx.token2wav(truth[i]) for i in todo], device=ctx.device, progress=ctx.progress)
        kept |= {records[i].key: {"tokens": digests[i], "text": text} for i, text in zip(todo, texts)}
        _keep(path, kept)
    return [kept[r.key]["text"] for r in records]


def _read_kept(path: Path | None) -> dict:
    """The round trips kept in ``path``; none when there is no file or it is not a JSON object (then it is
    written afresh: a cache is never a reason to stop)."""
    try:
        kept = json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        print(f"round-trip cache ignored ({path}): {error}")
        return {}
    return kept if isinstance(kept, dict) else {}


def _keep(path: Path | None, kept: dict) -> None:
    """Write ``kept`` to ``path`` atomically; a folder that cannot be written is reported on one line."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        print(f"round-trip cache not saved ({path}): {error}")


def reference_reply_emotion(record: Record, prompt_set: str) -> str:
    """``extra.reply_emotion``, else the leading tag of the record's target."""
    return record.extra.get("reply_emotion") or split_reply_tag(record.txt, prompt_set)[0]


def think_references(record: Record) -> dict[str, str | None]:
    """The tag-think fields a record's think should report (None = unknown)."""
    cues = Cues.from_extra(record.extra)
    return {"transcript": cues.transcript or None, "age": cues.age, "gender": cues.gender, "emotion": cues.emotion,
            "event": cues.event, "reply_emotion": record.extra.get("reply_emotion")}


def run_empathy(ctx: StageContext, records: list[Record], desc: str) -> dict:
    """Think parse rate, think field accuracy and reply-emotion accuracy of the dialogue records."""
    record_tasks = [empathy_task(record, ctx.think) for record in records]
    tasks = Counter(record_tasks)
    requests = [GenerationRequest(load_audio(record.audio_path()), task=task, think=ctx.think, options=EMPATHY_OPTIONS)
                for record, task in zip(records, record_tasks, strict=True)]
    raws = [result.raw_text for result in _generate_all(ctx, requests, desc, "dialogue")]
    predictions = [reply_emotion_prediction(raw, ctx.prompt_set, ctx.classifier) for raw in raws]
    refs = [reference_reply_emotion(r, ctx.prompt_set) for r in records]
    hyps = [label or NONE_LABEL for label, _ in predictions]
    fields = [parse_tag_think(think_body(raw) or "", ctx.prompt_set) for raw in raws]
    out = {"items": len(records), "tasks": dict(tasks),
           "think_parse_rate": think_parse_rate(raws, ctx.think, ctx.prompt_set) if ctx.think != "none" else None,
           "think_field_accuracy": (think_field_accuracy(fields, [think_references(r) for r in records])
                                    if ctx.think == "tag" else None),
           "reply_emotion_accuracy": label_accuracy(refs, hyps),
           "reply_emotion_sources": dict(Counter(source for _, source in predictions)),
           "reply_emotion": _label_scores(refs, hyps, REPLY_EMOTIONS[ctx.prompt_set]),
           "classifier_accuracy_ground_truth": None, "examples": raws[:2]}
    if ctx.classifier is not None:
        truth = [split_reply_tag(r.txt, ctx.prompt_set)[1] for r in records]
        out["classifier_accuracy_ground_truth"] = label_accuracy(refs, ctx.classifier.predict(truth))
    return out


# ----------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------


def _classifier(corpus: Path, records: list[Record], prompt_set: str) -> tuple[ReplyEmotionClassifier | None, dict]:
    """The reply-emotion classifier fitted on the corpus's train split, and its accuracy on ``records``."""
    try:
        classifier = ReplyEmotionClassifier.from_corpus(corpus, "train", prompt_set)
    except ValueError as err:
        return None, {"skipped": f"no reply-emotion classifier: {str(err).splitlines()[0]}"}
    texts, labels = dialogue_replies(records, prompt_set)
    return classifier, {"kind": "multinomial naive Bayes over word counts", "train_replies": classifier.n_train,
                        "test_replies": len(texts),
                        "test_accuracy": label_accuracy(labels, classifier.predict(texts)) if texts else None}


def corpus_token2wav(model, corpus: Path) -> tuple[MiniToken2Wav | None, str | None]:
    """The corpus's MiniToken2Wav (``speech_tokenizer/``), or None and why not (no folder, another codebook)."""
    folder = corpus / SPEECH_TOKENIZER_DIR
    if not folder.is_dir():
        return None, f"no speech tokenizer folder {folder}"
    token2wav = MiniToken2Wav.from_folder(folder)
    if token2wav.codebook_size != model.config.speech.codebook_size:
        return None, (f"the corpus's speech codebook has {token2wav.codebook_size} tokens, the model's "
                      f"{model.config.speech.codebook_size}")
    return token2wav, None


def _token2wav(model, corpus: Path) -> tuple[Any, str | None]:
    """The corpus's MiniToken2Wav, or None and the reason the generation stage is skipped."""
    token2wav, reason = corpus_token2wav(model, corpus)
    if token2wav is None:
        return None, reason
    try:
        whisper_base_files()
    except RuntimeError as err:
        return None, str(err)
    return token2wav, None


def _check(stages: Sequence[str], think: ThinkMode | str, limit: int | None, batch_size: int) -> None:
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"unknown or no stages {list(stages)}; choose from {', '.join(STAGES)}")
    if think not in tuple(ThinkMode):
        raise ValueError(f"unknown think mode {think!r}; choose one of {', '.join(ThinkMode)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


def _subset_report(ctx: StageContext, records: list[Record], stages: Sequence[str], name: str) -> dict:
    """The stages of one subset, in the order of :data:`STAGES`, each with its wall-clock seconds; a
    stage without items reports ``{"items": 0, "skipped": reason}``."""
    runs = {"understanding": (run_understanding, user_clips), "generation": (run_generation, tts_records),
            "empathy": (run_empathy, dialogue_records)}
    out: dict[str, Any] = {}
    for stage in (s for s in STAGES if s in stages):
        run, find = runs[stage]
        items, start = _cap(find(records), ctx.limit), time.perf_counter()
        if not items and stage != "generation":
            out[stage] = {"items": 0, "skipped": f"no {stage} items in this subset"}
            continue
        out[stage] = run(ctx, items, f"{name} {stage}")
        out[stage]["seconds"] = round(time.perf_counter() - start, 1)
    return out


def evaluate(model, corpus: str | Path, split: str = "test", stages: Sequence[str] = STAGES,
             limit: int | None = None, think: ThinkMode | str = ThinkMode.TAG, progress: bool = True,
             batch_size: int = BATCH_SIZE) -> dict:
    """Evaluate ``model`` on ``corpus/{split}.jsonl`` stage by stage, per test subset.

    Returns a JSON-able report: ``subsets -> {seen, unseen} -> {understanding, generation,
    empathy}`` plus the settings, the protocol and the reply-emotion classifier's own accuracy
    (see the module docstring). The model is put in eval mode for the run (its mode is restored);
    a model without a text tokenizer gets the corpus's ``text_tokenizer/``. ``batch_size``: generation requests
    decoded together (:func:`~echat.models.batch_generate.generate_batch`; the figures do not depend on it).
    """
    stages = tuple(stages)
    _check(stages, think, limit, batch_size)
    think = ThinkMode(think)
    corpus, start = Path(corpus), time.perf_counter()
    if not corpus.is_dir():
        raise FileNotFoundError(f"{corpus}: no such corpus folder")
    records = read_manifest(corpus / f"{split}.jsonl")
    if model.tokenizer is None and (corpus / "text_tokenizer").is_dir():
        model.tokenizer = load_tokenizer(corpus / "text_tokenizer")
    prompt_set = model.config.text.prompt_set
    classifier, classifier_info = _classifier(corpus, records, prompt_set) if "empathy" in stages else (None, None)
    token2wav, reason = _token2wav(model, corpus) if "generation" in stages else (None, None)
    ctx = StageContext(model, think, limit, classifier, token2wav, reason, model.device.type, progress, batch_size,
                       cache=corpus / "cache")
    report = {"model": model.config.name, "corpus": str(corpus), "split": split, "stages": list(stages),
              "think": think, "limit": limit, "batch_size": batch_size, "prompt_set": prompt_set, "protocol": PROTOCOL,
              "reply_emotion_classifier": classifier_info, "subsets": {}}
    was_training, cache_before = model.training, model.encoder_cache
    model.eval()
    model.encoder_cache = cache_before or EncoderCache.beside(corpus, model.encoder)
    try:
        for name, group in group_subsets(records).items():
            report["subsets"][name] = _subset_report(ctx, group, stages, name)
    finally:
        model.train(was_training)
        model.encoder_cache.save()
        model.encoder_cache = cache_before
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report
