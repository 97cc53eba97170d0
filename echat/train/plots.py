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
