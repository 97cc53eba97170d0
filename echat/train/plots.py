"""Loss curves of a training run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np


def plot_history(history: list[dict], path: str | Path, title: str = "", smooth: int = 20) -> None:
    """Training loss per task and auxiliary (bridge) loss, as moving averages over ``smooth`` steps, and dev
    loss, saved as a PNG."""
    from matplotlib.figure import Figure  # a standalone figure: the caller's plotting backend is untouched

    train = defaultdict(list)
    dev = defaultdict(list)
    for record in history:
        if "loss" in record:
            train[record["task"]].append((record["step"], record["loss"]))
        for name, value in record.items():
            if name.startswith("aux_"):  # the bridge losses of echat.train.bridge
                train[name.replace("_", " ", 1)].append((record["step"], value))
        for task, loss in record.get("dev_loss", {}).items():
            dev[task].append((record["step"], loss))
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for task, points in sorted(train.items()):
        steps, losses = np.array(points).T
        k = min(smooth, len(losses))
        ax.plot(steps[k - 1:], np.convolve(losses, np.ones(k) / k, mode="valid"), label=f"train {task}")
    for task, points in sorted(dev.items()):
        steps, losses = np.array(points).T
        ax.plot(steps, losses, "o--", label=f"dev {task}")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy", title=title, yscale="log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_hearing(report: dict, path: str | Path) -> None:
    """Bars per clip set (train / seen / unseen) of the hearing test: the first answer token and the ASR+P
    tags under teacher forcing, each beside the accuracy of the most common guess (a deaf model's score)."""
    from matplotlib.figure import Figure

    sets = report["sets"]
    bars = (("asr_first_token", "ASR first token"), ("asr_first_token_guess", "its guess"),
            ("asrp_tags", "ASR+P tags"), ("asrp_tags_guess", "their guess"))
    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        values = [sets[name].get(key) or 0.0 for name in sets]
        ax.bar(np.arange(len(sets)) + (i - (len(bars) - 1) / 2) * width, values, width, label=label,
               hatch="//" if "guess" in key else None, alpha=0.6 if "guess" in key else 1.0)
    ax.set_xticks(np.arange(len(sets)), [f"{name} ({sets[name]['clips']})" for name in sets])
    ax.set(ylim=(0, 1), ylabel="teacher-forced accuracy", title="hearing test: does the LLM read its audio?")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


HEARING_CURVES = (("hearing_first_token", "o-", "first answer token (LLM path)"),
                  ("dictation_first_token", "^-", "first answer token (dictation: is the LLM copying?)"),
                  ("probe_cer", "s--", "encoder probe CER"))


def plot_hearing_history(history: list[dict], path: str | Path) -> None:
    """The hearing figures a stage logs over its steps: first-answer-token accuracy of the LLM path (stage 1)
    or of dictation (stage 0), and the encoder's probe CER."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key, style, label in HEARING_CURVES:
        points = [(r["step"], r[key]) for r in history if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set(xlabel="optimizer step", ylim=(0, 1), title="hearing during training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
