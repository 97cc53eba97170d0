"""The hearing test: does the LLM path read its audio, or recite its text prior?

Why: training loss and all-token accuracy hide a deaf model — once the first answer token is chosen,
a tiny LLM recites a memorised sentence almost perfectly. The honest figures (see
``../shared/reference/hearing_notes.md``) are measured on fixed clips:

- **first-answer-token accuracy** under teacher forcing, next to the **most-common guess** (always
  answering the first token that is most common among the training clips of the set): a model that
  hears beats the guess by far, a deaf one equals it;
- **tag accuracy** of the ASR+P task (teacher-forced accuracy on the label-tag tokens after the
  transcript) next to its guess (the most common token at each tag position in the training clips);
- all-token accuracy; greedy CER of the transcripts and the number of distinct greedy outputs
  (a deaf model answers few distinct training sentences);
- the cosine between the mean adapter frames of different clips (near 1: one shared vector
  dominates what the LLM reads);
- for a token adapter, the two links apart: the adapter's **spelling CER** (its mixing weights read as
  text against transcript + tags: does the adapter hear?) with the share of clips whose spelled tags
  are right per cue field, and the LLM's first-token accuracy and greedy CER on exact **dictation**
  frames of the transcript (can the LLM copy what it is shown?);
- the **only-P** tasks one field at a time (``<GENDER>``, ``<AGE>``, ``<EMOTION>``, ``<CAPTION>``: the
  answer is the tag alone), teacher forced, from the audio and from exact dictation frames, each next to
  its guess: does the LLM read the cue a frame shows it (the link that the understanding evaluation's
  gender, age, emotion and event figures rest on)?
- the LLM's **tag rows** (input = output embeddings of the cue tags): mean cosine between the rows of
  one field's tags, and their norm beside the mean norm of the other rows. A frame holding ``<MALE>``
  can only be told from one holding ``<FEMALE>`` if their rows differ: when a field's rows collapse onto
  one vector (cosine near 1) the LLM cannot read that cue even from exact frames (docs/hearing.md E49-E52).

Sets (fixed, manifest order): ``train`` (the first ``size`` distinct training clips), ``seen`` and
``unseen`` (the first ``size`` clips of each test subset). Tasks: ASR (``<TRANSCRIBE>``) and one ASR+P
task (:data:`ASRP_TASK`), whose label is built from the clip's own labels exactly as the corpus does
(transcript, then the tags in task order).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from pathlib import Path

import torch

from echat.audio import log_mel_batch
from echat.config import GenerationOptions
from echat.data.pipeline import DataPipeline, Sample, load_split
from echat.eval.metrics import cer, pick_label, split_asr_output
from echat.eval.probe import probe
from echat.eval.report import format_cell
from echat.eval.stage_eval import load_model
from echat.models.adapter import TOKEN_OUTPUTS, ctc_path
from echat.models.checkpoint import latest_trainer_checkpoint
from echat.models.encoder import EncoderCache, mean_frame
from echat.models.generate import generate
from echat.models.heads import load_heads
from echat.tokens import CUE_FIELDS, FIELD_OF_TASK_TAG, LABEL_SETS, TRANSCRIBE, asked_fields, canonical_label
from echat.train.bridge import bridge_targets, cue_tags, dictation_for
from echat.train.plots import plot_hearing

ASRP_TASK = "<TRANSCRIBE> <EMOTION> <AGE> <GENDER>"
ASRP_FIELDS = tuple((field, CUE_FIELDS[field]) for field in asked_fields(ASRP_TASK))  # task order
ONLY_P_FIELD_TASKS = {field: task for task, field in FIELD_OF_TASK_TAG.items()}
SETS = ("train", "seen", "unseen")
GREEDY_OPTIONS = GenerationOptions(do_sample=False, max_new_tokens=64)


def is_labelled_clip(sample: Sample) -> bool:
    """A single-turn user clip with its transcript and every ASR+P label."""
    extra = sample.record.extra
    return (sample.audio is not None and not sample.record.history and bool(extra.get("q_txt"))
            and all(extra.get(key) for _, key in ASRP_FIELDS))


def distinct_clips(samples: list[Sample]) -> list[Sample]:
    """One labelled sample per distinct clip, in manifest order."""
    seen, out = set(), []
    for sample in samples:
        if is_labelled_clip(sample) and sample.record.wav not in seen:
            seen.add(sample.record.wav)
            out.append(sample)
    return out


def hearing_sets(train: list[Sample], test: list[Sample], size: int = 32) -> dict[str, list[Sample]]:
    """The fixed clip sets: the first ``size`` training clips, and the first ``size`` of each test subset."""
    sets = {"train": distinct_clips(train)[:size]}
    for sample in distinct_clips(test):
        subset = sample.record.extra.get("subset") or "test"
        if len(sets.setdefault(subset, [])) < size:
            sets[subset].append(sample)
    return sets


def as_task(sample: Sample, task: str) -> Sample:
    """The clip as a record of ``task``: ASR answers the transcript, ASR+P the transcript then the tags,
    a one-field only-P task (:data:`ONLY_P_FIELD_TASKS`) that field's tag."""
    extra = sample.record.extra
    txt = extra["q_txt"]
    only_p = {t: f for f, t in ONLY_P_FIELD_TASKS.items()}
    if task in only_p:
        txt = canonical_label(only_p[task], extra[CUE_FIELDS[only_p[task]]])
    elif task == ASRP_TASK:
        txt += "".join(canonical_label(name, extra[key]) for name, key in ASRP_FIELDS)
    record = dataclasses.replace(sample.record, key=f"{sample.record.key}|{task}", task=task, txt=txt)
    return Sample(record, sample.audio, [])


@dataclasses.dataclass
class ForcedAnswers:
    """Teacher-forced greedy predictions per clip: the answer's tokens, predicted and true."""

    predicted: list[list[int]]
    target: list[list[int]]

    def first_token_accuracy(self) -> float:
        return _mean([p[0] == t[0] for p, t in zip(self.predicted, self.target, strict=True)])

    def all_token_accuracy(self) -> float:
        return _mean([a == b for p, t in zip(self.predicted, self.target, strict=True) for a, b in zip(p, t)])

    def tail_accuracy(self, n: int) -> float:
        """Accuracy on the ``n`` answer tokens before the closing ``<|im_end|>`` (the tags of ASR+P)."""
        return _mean([a == b for p, t in zip(self.predicted, self.target, strict=True)
                      for a, b in zip(p[-n - 1:-1], t[-n - 1:-1])])


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def teacher_forced(model, samples: list[Sample], dictated: bool = False) -> ForcedAnswers:
    """Teacher-forced predictions of every answer token of ``samples`` (batched, no augmentation).
    ``dictated``: the LLM reads exact dictation frames of each clip's transcript and tags
    (:func:`echat.train.bridge.dictation_for`) instead of the audio — can it copy what it is shown?"""
    by_key: dict[str, tuple[list[int], list[int]]] = {}
    records = {s.record.key: s.record for s in samples}
    pipe = DataPipeline(model.config, model.tokenizer, train=False)
    for batch in pipe.batches(samples):
        batch = batch.to(model.device)
        clips = None
        if dictated:
            targets = bridge_targets([records[k] for k in batch.keys], model.tokenizer,
                                     batch.pack_layouts).to(model.device)
            clips = dictation_for(model, batch.feat_lengths, targets)
        predicted, target, rows = (t.tolist() for t in model.teacher_forced(batch, clips))
        for row, key in enumerate(batch.keys):
            picked = [i for i, r in enumerate(rows) if r == row]
            by_key[key] = ([predicted[i] for i in picked], [target[i] for i in picked])
    keys = [s.record.key for s in samples]
    return ForcedAnswers([by_key[k][0] for k in keys], [by_key[k][1] for k in keys])


def guess_accuracy(reference: ForcedAnswers, answers: ForcedAnswers, positions: slice) -> float:
    """Accuracy of always guessing, at each answer position of ``positions``, the token most common
    there in ``reference`` (the training clips)."""
    offsets = range(len(reference.target[0]))[positions] if reference.target else []
    hits = []
    for offset in offsets:
        common = Counter(t[offset] for t in reference.target if len(t) > abs(offset)).most_common(1)
        guess = common[0][0] if common else None
        hits += [t[offset] == guess for t in answers.target if len(t) > abs(offset)]
    return _mean(hits)


def tag_tokens(model) -> int:
    """Tokens of the ASR+P tags after the transcript (the same for every clip when each tag is one token;
    otherwise the count of the first clip's tags, a spelling the tokenizer splits)."""
    example = "".join(("<NEUTRAL>", "<ADULT>", "<MALE>"))
    return len(model.tokenizer(example, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def greedy_transcripts(model, samples: list[Sample], dictated: bool = False) -> list[str]:
    """Greedy ASR transcripts of the clips (any tags dropped). ``dictated``: the LLM reads exact
    dictation frames of each clip instead of the audio (the LLM's copying alone, as greedy CER)."""
    out = []
    for sample in samples:
        with dictating(model, sample.record) if dictated else contextlib.nullcontext():
            result = generate(model, sample.audio, task=TRANSCRIBE, options=GREEDY_OPTIONS)
        out.append(split_asr_output(result.raw_text)[0])
    return out


@contextlib.contextmanager
def dictating(model, record):
    """Within the block, ``model`` reads the dictation frames of ``record``'s transcript and tags
    (:func:`echat.train.bridge.dictation_for`) wherever it would read a clip's adapter frames."""
    def dictated(feats, lengths, pack_layouts=None):
        return dictation_for(model, lengths, bridge_targets([record], model.tokenizer, pack_layouts).to(model.device))

    model.encode_clips = dictated
    try:
        yield model
    finally:
        del model.encode_clips  # the class's own method again


@torch.no_grad()
def frame_cosine(model, samples: list[Sample]) -> float:
    """Mean cosine between the mean adapter frames of different clips (1.0: the LLM reads one vector)."""
    feats, lengths = log_mel_batch([s.audio for s in samples])
    clips = model.encode_clips(feats.to(model.device), lengths.to(model.device))
    means = torch.nn.functional.normalize(mean_frame(clips.embeddings, clips.lengths).float(), dim=-1)  # (N, H)
    cosine = means @ means.T  # (N, N)
    n = cosine.shape[0]
    return float((cosine.sum() - cosine.diagonal().sum()) / max(1, n * (n - 1)))


@torch.no_grad()
def adapter_reading(model, samples: list[Sample]) -> dict:
    """What a token adapter shows the LLM, read as text (the greedy path of its mixing logits, repeats
    merged, blanks dropped, then the most likely tag of each cue frame): ``adapter_spelling_cer`` against
    the transcript and cue tags, and
    ``adapter_<field>_accuracy``, the share of clips whose spelled tags hold the right label of each cue
    field. Empty for other adapters."""
    if model.adapter.output not in TOKEN_OUTPUTS:
        return {}
    refs, hyps, hits = [], [], Counter()
    records = {s.record.key: s.record for s in samples}
    for batch in DataPipeline(model.config, model.tokenizer, train=False).batches(samples):
        clips = model.encode_clips(batch.feats.to(model.device), batch.feat_lengths.to(model.device))
        blank = clips.token_logits.shape[-1] - 1
        for row, (ids, n, key) in enumerate(zip(clips.token_logits.argmax(-1).tolist(), clips.lengths.tolist(),
                                                batch.keys, strict=True)):
            record = records[key]
            hyps.append(model.tokenizer.decode(ctc_path(ids[:n], blank)))
            if clips.cue_logits is not None:  # the tags come from the cue frames' classifiers
                hyps[-1] += "".join(LABEL_SETS[name][int(logits[row].argmax())]
                                    for name, logits in clips.cue_logits.items())
            refs.append(record.extra["q_txt"] + cue_tags(record))
            spelled = split_asr_output(hyps[-1])[1]
            for name, extra_key in CUE_FIELDS.items():
                hits[name] += pick_label(spelled, name) == canonical_label(name, record.extra[extra_key])
    return {"adapter_spelling_cer": cer(refs, hyps),
            **{f"adapter_{name}_accuracy": hits[name] / len(refs) for name in CUE_FIELDS}}


def first_token_accuracy(model, samples: list[Sample], task: str = TRANSCRIBE, dictated: bool = False) -> float:
    """Teacher-forced first-answer-token accuracy of ``task`` on the clips (logged during stages 0 and 1);
    ``dictated``: read from dictation frames (see :func:`teacher_forced`)."""
    was_training = model.training
    model.eval()
    try:
        return teacher_forced(model, [as_task(s, task) for s in samples], dictated).first_token_accuracy()
    finally:
        model.train(was_training)


def only_p_reading(model, samples: list[Sample], from_audio: dict | None, reference: dict,
                   dictation: bool) -> dict:
    """Per cue field, the only-P answer's accuracy from the audio (``only_p_<field>``), its guess (the
    field's most common tag among the training clips, ``only_p_<field>_guess``) and, with ``dictation``,
    from exact dictation frames (``dictation_only_p_<field>``). ``from_audio``: answers already computed
    for these samples (field -> :class:`ForcedAnswers`); ``reference``: the training clips' answers."""
    row = {}
    for field, task in ONLY_P_FIELD_TASKS.items():
        tasked = [as_task(s, task) for s in samples]
        answers = (from_audio or {}).get(field) or teacher_forced(model, tasked)
        row[f"only_p_{field}"] = answers.first_token_accuracy()
        row[f"only_p_{field}_guess"] = guess_accuracy(reference[field], answers, slice(0, 1))
        if dictation:
            row[f"dictation_only_p_{field}"] = teacher_forced(model, tasked, dictated=True).first_token_accuracy()
    return row


def tag_rows(model) -> dict[str, float]:
    """Per cue field, ``<field>_cosine``: the mean cosine between the embedding rows of its label tags (pairs
    of distinct tags); ``norm_ratio``: the tags' mean row norm over the other rows' mean norm. Empty when the
    tokenizer spells the tags in pieces (they have no rows of their own)."""
    try:
        ids = model.cue_token_ids()  # field -> (labels,)
    except ValueError:
        return {}
    table = model.llm.get_input_embeddings().weight.detach().float()  # (V, H)
    out = {}
    for field, rows in ids.items():
        cosines = torch.nn.functional.normalize(table[rows], dim=-1)  # (K, H)
        cosines = cosines @ cosines.T  # (K, K)
        k = len(rows)
        out[f"{field}_cosine"] = float((cosines.sum() - cosines.diagonal().sum()) / (k * (k - 1)))
    others = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
    others[torch.cat(list(ids.values()))] = False
    out["norm_ratio"] = float(table[~others].norm(dim=-1).mean() / table[others].norm(dim=-1).mean())
    return out


def hearing_report(model, sets: dict[str, list[Sample]], heads=None, greedy: bool = True) -> dict:
    """Every hearing figure for every set (see the module docstring); ``heads``: the run's bridge heads,
    for the encoder's probe CER beside the LLM path's figures. The figures read each clip several times:
    the encoder (nothing here trains it) runs once per clip through an :class:`EncoderCache`."""
    model.eval()
    cache_before = model.encoder_cache
    model.encoder_cache = cache_before or EncoderCache()
    try:
        return _hearing_report(model, sets, heads, greedy)
    finally:
        model.encoder_cache = cache_before


def _hearing_report(model, sets: dict[str, list[Sample]], heads, greedy: bool) -> dict:
    n_tags = tag_tokens(model)
    reference = {task: teacher_forced(model, [as_task(s, task) for s in sets["train"]])
                 for task in (TRANSCRIBE, ASRP_TASK)}
    report = {"tasks": {"asr": TRANSCRIBE, "asrp": ASRP_TASK}, "tag_tokens": n_tags, "tag_rows": tag_rows(model),
              "sets": {}}
    only_p_reference = {"train": {field: teacher_forced(model, [as_task(s, task) for s in sets["train"]])
                                  for field, task in ONLY_P_FIELD_TASKS.items()}}
    for name, samples in sets.items():
        asr, asrp = (reference[task] if name == "train" else teacher_forced(model, [as_task(s, task) for s in samples])
                     for task in (TRANSCRIBE, ASRP_TASK))
        row = {"clips": len(samples),
               "asr_first_token": asr.first_token_accuracy(),
               "asr_first_token_guess": guess_accuracy(reference[TRANSCRIBE], asr, slice(0, 1)),
               "asr_all_tokens": asr.all_token_accuracy(),
               "asrp_first_token": asrp.first_token_accuracy(),
               "asrp_tags": asrp.tail_accuracy(n_tags),
               "asrp_tags_guess": guess_accuracy(reference[ASRP_TASK], asrp, slice(-n_tags - 1, -1)),
               "asrp_all_tokens": asrp.all_token_accuracy(),
               "frame_cosine": frame_cosine(model, samples)}
        if model.adapter.output in TOKEN_OUTPUTS:
            dictated = teacher_forced(model, [as_task(s, TRANSCRIBE) for s in samples], dictated=True)
            row.update(dictation_first_token=dictated.first_token_accuracy(), **adapter_reading(model, samples))
        row.update(only_p_reading(model, samples, only_p_reference[name] if name == "train" else None,
                                  only_p_reference["train"], model.adapter.output in TOKEN_OUTPUTS))
        if greedy:
            hyps = greedy_transcripts(model, samples)
            row.update(greedy_cer=cer([s.record.extra["q_txt"] for s in samples], hyps),
                       distinct_outputs=len(set(hyps)), examples=hyps[:3])
            if model.adapter.output in TOKEN_OUTPUTS:
                copied = greedy_transcripts(model, samples, dictated=True)
                row["dictation_greedy_cer"] = cer([s.record.extra["q_txt"] for s in samples], copied)
        if heads is not None:
            probed = probe(model, heads, samples)
            row.update(probe_cer=probed["char_cer"],
                       **{f"probe_{k}": v for k, v in probed.items() if k.endswith("_accuracy")})
        report["sets"][name] = row
    return report


def hearing_run(run: str | Path, corpus: str | Path, size: int = 32, greedy: bool = True) -> dict:
    """:func:`hearing_report` of a run's newest checkpoint on ``corpus`` (train and test splits), with
    the encoder probe when the run trained bridge heads."""
    model = load_model(run)
    heads = _heads(run, model.config)
    sets = hearing_sets(load_split(corpus, "train", model.config), load_split(corpus, "test", model.config), size)
    model.encoder_cache = EncoderCache.beside(corpus, model.encoder)
    report = hearing_report(model, sets, heads, greedy)
    model.encoder_cache.save()
    report["run"] = str(run)
    return report


def _heads(run, config):
    try:
        return load_heads(latest_trainer_checkpoint(run), config)
    except (FileNotFoundError, ValueError):
        return None


ROWS = ("clips", "asr_first_token", "asr_first_token_guess", "asr_all_tokens", "asrp_first_token", "asrp_tags",
        "asrp_tags_guess", "asrp_all_tokens", "greedy_cer", "distinct_outputs", "frame_cosine",
        "adapter_spelling_cer", "adapter_gender_accuracy", "adapter_age_accuracy", "adapter_emotion_accuracy",
        "adapter_event_accuracy", "dictation_first_token", "dictation_greedy_cer",
        *(f"{kind}{field}{guess}" for field in ONLY_P_FIELD_TASKS
          for kind, guess in (("only_p_", ""), ("only_p_", "_guess"), ("dictation_only_p_", ""))), "probe_cer",
        "probe_gender_accuracy", "probe_age_accuracy", "probe_emotion_accuracy", "probe_event_accuracy")


def render_hearing(report: dict) -> str:
    """The report as a table: one row per figure, one column per set."""
    sets = report["sets"]
    lines = [f"hearing test ({report.get('run', 'model')}): ASR {report['tasks']['asr']}, "
             f"ASR+P {report['tasks']['asrp']}", f"{'':24}" + "".join(f"{name:>10}" for name in sets)]
    for row in ROWS:
        if any(row in s for s in sets.values()):
            lines.append(f"{row:24}" + "".join(f"{format_cell(s.get(row)):>10}" for s in sets.values()))
    if report.get("tag_rows"):
        lines.append("tag rows (LLM): " + ", ".join(f"{k} {v:.2f}" for k, v in report["tag_rows"].items()))
    return "\n".join(lines)


def save_hearing(report: dict, out_dir: str | Path) -> list[Path]:
    """``hearing.json`` and ``hearing.png`` (bars per set: first token and tags against their guesses)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hearing.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_hearing(report, out / "hearing.png")
    return [out / "hearing.json", out / "hearing.png"]
