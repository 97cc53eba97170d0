"""The bridge probe: what a run's encoder carries, read by its bridge heads rather than by the LLM.

The character CTC head's greedy transcripts give a CER against ``extra.q_txt``; each cue head's
accuracy on the clips' mean encoder frame gives the share of the four cue fields the encoder holds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from echat.data.pipeline import DataPipeline, load_split
from echat.eval.metrics import cer
from echat.eval.report import format_cell
from echat.models.checkpoint import latest_trainer_checkpoint
from echat.models.echat import EChat
from echat.models.encoder import mean_frame
from echat.models.heads import BridgeHeads, load_heads
from echat.tokens import CUE_FIELDS, IGNORE_INDEX
from echat.train.bridge import bridge_targets
from echat.train.recipes import family


@torch.no_grad()
def probe(model, heads: BridgeHeads, samples) -> dict:
    """The character CTC's CER and each cue head's accuracy on ``samples``: decoded single-clip samples
    whose records hold ``q_txt`` and the cue labels."""
    by_key = {s.record.key: s.record for s in samples}
    refs, hyps, hits, counts = [], [], dict.fromkeys(CUE_FIELDS, 0), dict.fromkeys(CUE_FIELDS, 0)
    for batch in DataPipeline(model.config, model.tokenizer, train=False).batches(samples):
        records = [by_key[k] for k in batch.keys]
        targets = bridge_targets(records, model.tokenizer)
        enc = model.run_encoder(batch.feats, batch.feat_lengths)
        refs += [r.extra["q_txt"] for r in records]
        hyps += heads.transcripts(enc.hidden, enc.lengths)
        pooled = mean_frame(enc.hidden, enc.lengths).float()  # (N, D)
        for name, head in heads.cues.items():
            labels = targets.cues[name]
            known = labels != IGNORE_INDEX
            hits[name] += int((head(pooled).argmax(-1) == labels)[known].sum())
            counts[name] += int(known.sum())
    return {"char_cer": cer(refs, hyps), "clips": len(refs),
            **{f"{name}_accuracy": hits[name] / counts[name] for name in CUE_FIELDS if counts[name]},
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps, strict=True))[:3]]}


def probe_run(run: str | Path, corpus: str | Path, split: str = "test", limit: int | None = None) -> dict:
    """:func:`probe` of a run's newest trainer checkpoint on the clips of ``corpus/{split}.jsonl``, per
    test subset (``extra.subset``; ``all`` where there is none), at most ``limit`` clips each."""
    checkpoint = latest_trainer_checkpoint(run)
    model = EChat.from_checkpoint(checkpoint).eval()
    heads = load_heads(checkpoint, model.config)
    groups: dict[str, list] = {}
    for sample in load_split(corpus, split, model.config):
        if family(sample.record) == "asr":
            groups.setdefault(sample.record.extra.get("subset") or "all", []).append(sample)
    return {"checkpoint": str(checkpoint), "split": split,
            "subsets": {name: probe(model, heads, group[:limit]) for name, group in sorted(groups.items())}}


def render_probe(report: dict) -> str:
    """The probe report as a small table: one row per score, one column per subset."""
    subsets = report["subsets"]
    rows = ["clips", "char_cer", *[f"{name}_accuracy" for name in CUE_FIELDS]]
    lines = [f"bridge probe (encoder read by the bridge heads, not by the LLM): {report['checkpoint']}",
             f"{'':22}" + "".join(f"{name:>10}" for name in subsets)]
    for row in rows:
        values = [subsets[name].get(row) for name in subsets]
        lines.append(f"{row:22}" + "".join(f"{format_cell(v):>10}" for v in values))
    return "\n".join(lines)
