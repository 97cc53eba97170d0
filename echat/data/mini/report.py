"""Reports written next to EChat-mini: counts per split/task/label, durations, label balance, and the
acoustic evidence that every label is in the audio (``cue_stats.json`` + ``cue_stats.png``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from echat.audio import SAMPLE_RATE_HZ
from echat.data.mini.cue_stats import clip_features, nearest_centroid_accuracy, per_label_means, plot_cues
from echat.tokens import CUE_FIELDS

MAX_CUE_CLIPS = 360  # acoustic statistics use at most this many clips (YIN is the slow part)


def _counts(splits) -> dict:
    counts = {}
    for name, records in splits.items():
        first = {r.key.rsplit("_", 1)[0]: r for r in records if r.wav}  # one record per user clip
        counts[name] = {
            "records": len(records),
            "tasks": dict(Counter(r.task for r in records).most_common()),
            "labels": {family: dict(sorted(Counter(r.extra.get(field) for r in first.values()
                                                   if field in r.extra).items()))
                       for family, field in CUE_FIELDS.items()},
            "subsets": dict(Counter(r.extra.get("subset") or "-" for r in first.values())),
        }
    return counts


def _durations(waves: dict[str, np.ndarray]) -> dict:
    seconds = np.array([len(w) / SAMPLE_RATE_HZ for w in waves.values()])
    return {"clips": len(seconds), "hours": round(float(seconds.sum()) / 3600, 3),
            "mean_s": round(float(seconds.mean()), 2), "min_s": round(float(seconds.min()), 2),
            "max_s": round(float(seconds.max()), 2)}


def cue_evidence(waves: dict[str, np.ndarray], clips, out: Path) -> dict:
    """Acoustic features of up to MAX_CUE_CLIPS user clips; per-label means and nearest-centroid accuracy."""
    chosen = clips[:: max(1, len(clips) // MAX_CUE_CLIPS)][:MAX_CUE_CLIPS]
    features = np.stack([clip_features(waves[c.clip_id], len(c.sentence.text.split())) for c in chosen])
    labels = {"gender": [c.recipe.speaker.gender for c in chosen], "age": [c.recipe.speaker.age for c in chosen],
              "emotion": [c.recipe.emotion for c in chosen], "event": [c.recipe.event for c in chosen]}
    plot_cues(features, labels, out / "cue_stats.png")
    return {"clips": len(chosen),
            "nearest_centroid_accuracy": {k: round(nearest_centroid_accuracy(features, v), 3)
                                          for k, v in labels.items()},
            "chance": {k: round(1 / len(set(v)), 3) for k, v in labels.items()},
            "means": {k: per_label_means(features, v) for k, v in labels.items()}}


def _markdown(counts: dict, durations: dict, cues: dict) -> str:
    lines = ["# EChat-mini statistics", "", f"User clips: {durations['clips']}, {durations['hours']} h "
             f"(mean {durations['mean_s']} s, {durations['min_s']}–{durations['max_s']} s).", ""]
    lines += ["| split | records | " + " | ".join(counts["train"]["tasks"]) + " |",
              "|---|---|" + "---|" * len(counts["train"]["tasks"])]
    for name, c in counts.items():
        lines.append(f"| {name} | {c['records']} | " + " | ".join(str(c["tasks"].get(t, 0))
                                                              for t in counts["train"]["tasks"]) + " |")
    lines += ["", "## Label balance (user clips)", ""]
    for family in CUE_FIELDS:
        classes = sorted({k for c in counts.values() for k in c["labels"][family]})
        lines += [f"| {family} | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        lines += [f"| {name} | " + " | ".join(str(c["labels"][family].get(k, 0)) for k in classes) + " |"
                  for name, c in counts.items()]
        lines.append("")
    acc, chance = cues["nearest_centroid_accuracy"], cues["chance"]
    lines += ["## Are the labels in the audio?", "",
              f"Nearest-centroid accuracy on {cues['clips']} clips from 7 acoustic statistics "
              "(z-scored, pitch and brightness in log; leave-one-out; "
              "see cue_stats.png):", "", "| label | accuracy | chance |", "|---|---|---|"]
    lines += [f"| {k} | {acc[k]:.2f} | {chance[k]:.2f} |" for k in acc]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, splits, waves: dict[str, np.ndarray], clips) -> dict:
    """Write stats.json, stats.md, cue_stats.json and cue_stats.png into ``out``."""
    counts, durations = _counts(splits), _durations(waves)
    cues = cue_evidence(waves, clips, out)
    (out / "stats.json").write_text(json.dumps({"counts": counts, "durations": durations}, indent=2) + "\n")
    (out / "cue_stats.json").write_text(json.dumps(cues, indent=2) + "\n")
    (out / "stats.md").write_text(_markdown(counts, durations, cues))
    return {"counts": counts, "durations": durations, "cues": cues}
