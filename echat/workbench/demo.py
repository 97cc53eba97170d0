"""``echat demo`` (what ``make demo`` calls): build EChat-mini if absent, run the recipe (finished stages
are skipped), evaluate the final checkpoint of each stage on the test split, write ``figures.json`` /
``figures.md``, run every numbered notebook into the same folder and print the figures."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from echat.models.checkpoint import FINAL
from echat.train.recipes import recipe as stages_of
from echat.train.run import run_recipe
from echat.workbench.figures import collect_figures, evaluate_stages, probe_understanding, write_figures
from echat.workbench.notebooks import run_all
from echat.workbench.runs import RECIPE_THINK, build_corpus_if_absent, default_limit, recipe_name, stage_folder_name


def step(number: int, total: int, what: str) -> None:
    """Print the demo's progress line ``[demo k/n] what``."""
    print(f"\n[demo {number}/{total}] {what}", flush=True)


def run_recipe_timed(recipe: str, corpus: Path, out: Path, seed: int = 0) -> dict[str, float]:
    """``run_recipe`` into ``out``, returning the wall seconds of every stage folder it ever trained.

    A stage trained now ends when its ``final/model.safetensors`` is written and starts when the stage
    before it ended (or at the call); the times are kept in ``out/timings.json``, so a re-run, which
    skips finished stages, still reports them.
    """
    path = out / "timings.json"
    timings = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    names = [stage_folder_name(i, s) for i, s in enumerate(stages_of(recipe, RECIPE_THINK))]
    before = {n for n in names if (out / n / FINAL / "model.safetensors").is_file()}
    torch.manual_seed(seed)
    start = time.time()
    run_recipe(recipe, corpus, out, think=RECIPE_THINK)
    for name in names:
        weights = out / name / FINAL / "model.safetensors"
        if name not in before and weights.is_file():
            end = weights.stat().st_mtime
            timings[name] = round(end - start, 1)
            start = end
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    return timings


def run_demo(preset: str, out: str | Path, limit: int | None = None, only: Sequence[str] | None = None,
             notebooks: bool = True) -> tuple[dict, list]:
    """The whole demo into ``out``: corpus, recipe, evaluations, figures, then the notebooks
    (``only``: number prefixes; ``notebooks=False``: none). Returns the figures and the notebook results.
    ``limit``: evaluation items per stage and test subset (None: :func:`default_limit`; 0: all).

    ``figures["seconds"]`` holds the wall time of each part in this call (a part that found its work
    done takes little); the recipe's per-stage times are in ``figures["training"]``.
    """
    out, recipe, load = Path(out).resolve(), recipe_name(preset), os.getloadavg()[0]
    limit = default_limit(preset) if limit is None else limit or None  # 0: the whole test split
    seconds, total, start = {}, 5 if notebooks else 4, time.perf_counter()

    def lap(name: str) -> None:
        seconds[name] = round(time.perf_counter() - start - sum(seconds.values()), 1)

    step(1, total, f"corpus: EChat-mini {recipe} in {out / 'echat-mini'} (built once)")
    corpus = build_corpus_if_absent(out / "echat-mini", recipe)
    lap("corpus")
    step(2, total, f"recipe {recipe} into {out / 'recipe'} (finished stages are skipped)")
    timings = run_recipe_timed(recipe, corpus, out / "recipe")
    lap("recipe")
    step(3, total, f"evaluation on the test split, {f'at most {limit}' if limit else 'all'} items per stage "
                   "and subset")
    reports = evaluate_stages(out, preset, corpus, limit)
    probe = probe_understanding(out, preset, corpus, limit)
    lap("evaluation")
    step(4, total, f"figures: {out / 'figures.md'}")
    figures = collect_figures(out, preset, corpus, timings, reports, seconds)
    figures["bridge_probe"] = probe
    figures["machine"]["load_average_at_start"] = round(load, 2)
    write_figures(out, figures, reports)
    results = []
    if notebooks:
        step(5, total, f"notebooks into {out}")
        links = [("figures.md", "measured figures (markdown)"), ("figures.json", "measured figures (JSON)")]
        results = run_all(out, preset, only, links=links)
        lap("notebooks")
        figures["notebooks"] = [{"name": r.name, "ok": r.ok, "seconds": round(r.seconds, 1)} for r in results]
    seconds["total"] = round(time.perf_counter() - start, 1)
    write_figures(out, figures, reports)
    return figures, results
