"""The ceiling ladder: which link of the LLM path fails, one rung at a time, on the same training clips.

Why: when the LLM path answers at the guess, the fault can lie in the LLM and its prompt layout, in the
LLM's reading of frames that carry the words, or in what the encoder and adapter make of the audio.
Each rung replaces everything below one link by its ceiling and measures the same teacher-forced ASR
figures (first answer token against the most common guess, all tokens):

1. ``lookup`` — one learned frame sequence per clip in place of encoder + adapter (the LLM frozen,
   only the frames train, :func:`train_lookup`): can this LLM, with this prompt and these masks, tell the
   clips apart from a prefix at all? (``../shared/reference/hearing_notes.md``: 0.97 after 200 steps.)
2. ``dictation`` — exact dictation frames of each clip's transcript and tags
   (:func:`echat.train.bridge.dictation_for`): what a perfect adapter would show; does the LLM copy it?
3. ``audio`` — the model's own encoder and adapter on the audio: does the whole path hear?

A rung that fails while the one above it passes names the failing link. The mini world's encoder is
Whisper base, frozen, so "a trained encoder with a fresh adapter" is what stage 1 itself trains.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from echat.data.pipeline import DataPipeline, Sample, load_split
from echat.eval.hearing import ForcedAnswers, as_task, guess_accuracy, hearing_sets, teacher_forced
from echat.eval.stage_eval import load_model
from echat.models.adapter import AdapterOutput
from echat.models.encoder import EncoderCache
from echat.tokens import TRANSCRIBE

RUNGS = ("lookup", "dictation", "audio")


class ClipLookup(nn.Module):
    """One learned frame sequence per clip, as long as the adapter output the clip would get: (N, T, H)."""

    def __init__(self, lengths: list[int], width: int, scale: float):
        super().__init__()
        self.lengths = torch.tensor(lengths)
        self.frames = nn.Parameter(torch.randn(len(lengths), max(lengths), width) * scale)

    def forward(self, rows: list[int]) -> AdapterOutput:
        lengths = self.lengths[rows]
        frames = self.frames[rows, :int(lengths.max())]  # (B, T, H)
        mask = torch.arange(frames.shape[1])[None] < lengths[:, None]  # (B, T)
        return AdapterOutput(frames * mask.unsqueeze(-1).to(frames.dtype), lengths.to(frames.device))


def train_lookup(model, samples: list[Sample], steps: int = 200, lr: float = 1e-2,
                 progress: bool = True) -> tuple[ClipLookup, dict[str, int]]:
    """Rung 1: fit one frame sequence per clip of ``samples`` (ASR records, as :func:`as_task` makes them)
    through the frozen LLM for ``steps`` passes over the clips. Returns the lookup and its row per key."""
    pipe = DataPipeline(model.config, model.tokenizer, train=False)
    batches = [batch.to(model.device) for batch in pipe.batches(samples)]
    keys = [key for batch in batches for key in batch.keys]
    row_of = {key: i for i, key in enumerate(keys)}
    lengths = {key: n for batch in batches for key, n in zip(
        batch.keys, model.adapter.output_lengths(model.encoder.output_lengths(batch.feat_lengths)).tolist(),
        strict=True)}
    table = model.llm.get_input_embeddings().weight
    lookup = ClipLookup([lengths[k] for k in keys], table.shape[1], float(table.detach().pow(2).mean().sqrt()))
    lookup.to(model.device)
    optimizer = torch.optim.Adam(lookup.parameters(), lr=lr)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model.eval()
    try:
        for _ in tqdm(range(steps), desc="ladder: per-clip lookup", disable=not progress):
            for batch in batches:
                loss = model(batch, clips=lookup([row_of[k] for k in batch.keys])).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return lookup, row_of


@torch.no_grad()
def lookup_answers(model, samples: list[Sample], lookup: ClipLookup, row_of: dict[str, int]) -> ForcedAnswers:
    """Teacher-forced answers of ``samples`` read from their learned frames."""
    by_key = {}
    for batch in DataPipeline(model.config, model.tokenizer, train=False).batches(samples):
        batch = batch.to(model.device)
        predicted, target, rows = (t.tolist() for t in model.teacher_forced(
            batch, lookup([row_of[k] for k in batch.keys])))
        for row, key in enumerate(batch.keys):
            picked = [i for i, r in enumerate(rows) if r == row]
            by_key[key] = ([predicted[i] for i in picked], [target[i] for i in picked])
    keys = [s.record.key for s in samples]
    return ForcedAnswers([by_key[k][0] for k in keys], [by_key[k][1] for k in keys])


def ladder_report(model, samples: list[Sample], steps: int = 200, progress: bool = True) -> dict:
    """Every rung's first-token and all-token accuracy (ASR, teacher forced) on the clips ``samples``,
    with the most common first token's share as the guess."""
    asr = [as_task(s, TRANSCRIBE) for s in samples]
    lookup, row_of = train_lookup(model, asr, steps, progress=progress)
    answers = {"lookup": lookup_answers(model, asr, lookup, row_of)}
    with torch.no_grad():
        answers["dictation"] = teacher_forced(model, asr, dictated=True)
        answers["audio"] = teacher_forced(model, asr)
    guess = guess_accuracy(answers["audio"], answers["audio"], slice(0, 1))
    return {"clips": len(samples), "lookup_steps": steps, "first_token_guess": guess,
            "rungs": {name: {"first_token": a.first_token_accuracy(), "all_tokens": a.all_token_accuracy()}
                      for name, a in answers.items()}}


def ladder_run(run: str | Path, corpus: str | Path, size: int = 32, steps: int = 200) -> dict:
    """:func:`ladder_report` of a run's newest checkpoint on the first ``size`` training clips of ``corpus``."""
    model = load_model(run)
    model.encoder_cache = EncoderCache.beside(corpus, model.encoder)
    samples = hearing_sets(load_split(corpus, "train", model.config), [], size)["train"]
    report = ladder_report(model, samples, steps)
    model.encoder_cache.save()
    report["run"] = str(run)
    return report


def render_ladder(report: dict) -> str:
    """The rungs as a table, the guess beside them."""
    lines = [f"ceiling ladder ({report.get('run', 'model')}): ASR on {report['clips']} training clips, "
             f"most common first token {report['first_token_guess']:.3f}",
             f"{'rung':12}{'first token':>14}{'all tokens':>12}"]
    for name, row in report["rungs"].items():
        lines.append(f"{name:12}{row['first_token']:>14.3f}{row['all_tokens']:>12.3f}")
    return "\n".join(lines)
