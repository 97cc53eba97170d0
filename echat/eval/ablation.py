"""The paper's ablation in miniature (EChat-eval Table 1's last rows) and tag against language think.

One recipe, one graph of runs per seed (``echat ablate``): every run starts from its parent's final
checkpoint, and a run whose ``final`` exists is reused, so shared stages are trained once::

    0_text ─┬─ 1_understanding ── 2_generation ─┬─ 3_empathy-tag        full (stage 1 + dual think)
            │                                   ├─ 3_empathy-language  full, language think
            │                                   └─ 3_empathy-none      − dual think
            └─ 2_generation-no_u ─┬─ 3_empathy-tag-no_u                − understanding-driven
                                  └─ 3_empathy-none-no_u               − both

"− understanding-driven" is the paper's row "− U-Driven": no stage 1, the generation stage starts from
stage 0 (in the mini world the adapter then keeps its initial weights: stages 2 and 3 do not train it,
:mod:`echat.train.recipes`). "− dual think" trains and answers without a think. Each seed has its own
corpus (EChat-mini built with that seed) and training seed, as the hearing figures are reported.

A folder ``out`` holds::

    seed{S}/echat-mini/             the corpus of seed S
    seed{S}/runs/{node}/final       the graph's runs
    seed{S}/timings.json            wall seconds of every run trained (kept across calls)
    seed{S}/understanding-{N}.json  stage 1's understanding figures on N clips per subset (what the full model hears)
    seed{S}/benchmark/items.jsonl   EChat-eval rows of every variant (:mod:`echat.eval.echat_eval`)
    ablation.json, ablation.md, ablation.png, configs.json   the table, the claims, the chart, the settings
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from echat.config import ThinkMode
from echat.data.mini.corpus import build_corpus_if_absent
from echat.eval.echat_eval import (
    bootstrap_means,
    corpus_items,
    pending,
    plot_summary,
    read_rows,
    render_table,
    run_benchmark,
    summarise,
)
from echat.eval.judge import CATEGORIES, RubricJudge, reference_results
from echat.eval.metrics import ReplyEmotionClassifier
from echat.eval.stage_eval import evaluate, load_model
from echat.models.checkpoint import FINAL
from echat.train.recipes import stage as recipe_stage
from echat.train.run import RECIPE_PRESET, train_stage


@dataclass(frozen=True)
class Node:
    """One run of the grid: recipe stage ``stage`` (in think mode ``think``) from ``parent``'s final
    checkpoint (None: a fresh model)."""

    name: str
    stage: str
    parent: str | None
    think: ThinkMode = ThinkMode.TAG


@dataclass(frozen=True)
class Variant:
    """A row of the table: the system trained by ``node``, answering in think mode ``think``."""

    name: str
    node: str
    think: ThinkMode


NODES = (
    Node("0_text", "text", None),
    Node("1_understanding", "understanding", "0_text"),
    Node("2_generation", "generation", "1_understanding"),
    Node("2_generation-no_u", "generation", "0_text"),
    Node("3_empathy-tag", "empathy", "2_generation", ThinkMode.TAG),
    Node("3_empathy-none", "empathy", "2_generation", ThinkMode.NONE),
    Node("3_empathy-tag-no_u", "empathy", "2_generation-no_u", ThinkMode.TAG),
    Node("3_empathy-none-no_u", "empathy", "2_generation-no_u", ThinkMode.NONE),
    Node("3_empathy-language", "empathy", "2_generation", ThinkMode.LANGUAGE),
)

FULL, NO_THINK, NO_U, NO_BOTH, LANGUAGE = (
    "EChat-mini", "− dual think", "− U-driven", "− dual think − U-driven", "EChat-mini, language think")
VARIANTS = (
    Variant(FULL, "3_empathy-tag", ThinkMode.TAG),
    Variant(NO_THINK, "3_empathy-none", ThinkMode.NONE),
    Variant(NO_U, "3_empathy-tag-no_u", ThinkMode.TAG),
    Variant(NO_BOTH, "3_empathy-none-no_u", ThinkMode.NONE),
    Variant(LANGUAGE, "3_empathy-language", ThinkMode.LANGUAGE),
)
# The paper's claims as (better, worse) pairs, and the comparison it never made.
CLAIMS = ((FULL, NO_THINK), (FULL, NO_U), (NO_THINK, NO_BOTH), (NO_U, NO_BOTH), (FULL, LANGUAGE))
CORPUS_SIZE = {"smoke": "smoke", "mini": "mini"}


def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def run_dir(out: str | Path, seed: int, node: str) -> Path:
    return seed_dir(out, seed) / "runs" / node


def _node(name: str) -> Node:
    return next(n for n in NODES if n.name == name)


def needed_nodes(variants: tuple[Variant, ...] = VARIANTS) -> list[Node]:
    """The runs ``variants`` need, parents first (the order of :data:`NODES`)."""
    wanted: set[str] = set()
    for variant in variants:
        name: str | None = variant.node
        while name is not None:
            wanted.add(name)
            name = _node(name).parent
    return [n for n in NODES if n.name in wanted]


def _timings(folder: Path) -> dict[str, float]:
    path = folder / "timings.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def train_grid(recipe: str, out: str | Path, seed: int, variants: tuple[Variant, ...] = VARIANTS,
               progress: bool = True) -> dict[str, float]:
    """Build seed ``seed``'s corpus and train every run ``variants`` need that is not finished yet.

    Returns the wall seconds of every run of the graph ever trained in ``out`` (``timings.json``,
    written after each run, so an interrupted grid keeps what it measured); the corpus's build time
    is under ``"corpus"``."""
    folder = seed_dir(out, seed)
    timings = _timings(folder)
    start = time.perf_counter()
    corpus = build_corpus_if_absent(folder / "echat-mini", CORPUS_SIZE[recipe], seed=seed)
    timings.setdefault("corpus", round(time.perf_counter() - start, 1))
    for node in needed_nodes(variants):
        target = run_dir(out, seed, node.name)
        if (target / FINAL / "model.safetensors").is_file():
            continue
        print(f"[ablate] seed {seed}: {node.name} ({node.stage}, think {node.think}, "
              f"from {node.parent or 'a fresh model'})", flush=True)
        init = run_dir(out, seed, node.parent) / FINAL if node.parent else None
        torch.manual_seed(seed)
        start = time.perf_counter()
        train_stage(recipe_stage(recipe, node.stage, node.think), corpus, target, RECIPE_PRESET[recipe], init=init,
                    seed=seed, progress=progress)
        timings[node.name] = round(time.perf_counter() - start, 1)
        (folder / "timings.json").write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    return timings


# ----------------------------------------------------------------------------------------------
# Evaluation: EChat-eval per variant, stage 1's hearing, the claims
# ----------------------------------------------------------------------------------------------


def understanding_figures(out: str | Path, seed: int, limit: int | None, progress: bool = True) -> dict:
    """Stage 1's understanding figures of seed ``seed`` (:func:`echat.eval.stage_eval.evaluate`, ``limit`` clips
    per subset), kept in ``seed{S}/understanding-{limit}.json``: what the full model's LLM path hears."""
    path = seed_dir(out, seed) / f"understanding-{limit or 'all'}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    model = load_model(run_dir(out, seed, "1_understanding"))
    report = evaluate(model, seed_dir(out, seed) / "echat-mini", stages=["understanding"], limit=limit,
                      progress=progress)
    figures = {subset: _understanding_row(parts["understanding"]) for subset, parts in report["subsets"].items()}
    path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def _understanding_row(part: dict) -> dict:
    return {"items": part["items"], "asr_cer": part["asr"]["cer"],
            **{field: scores["accuracy"] for field, scores in part["labels"].items()}}


def benchmark_seed(out: str | Path, seed: int, judge, limit: int | None, variants: tuple[Variant, ...] = VARIANTS,
                   progress: bool = True) -> list[dict]:
    """EChat-eval of every variant of seed ``seed`` on its corpus's test split (``limit`` items per subset);
    rows already in ``seed{S}/benchmark/items.jsonl`` are kept. Returns the rows, each with its ``seed``."""
    corpus, folder = seed_dir(out, seed) / "echat-mini", seed_dir(out, seed) / "benchmark"
    items = corpus_items(corpus, "test", limit)
    for variant in variants:
        if not pending(items, folder, variant.name):
            continue  # every item judged already: the model is not even loaded
        model = load_model(run_dir(out, seed, variant.node))
        classifier = ReplyEmotionClassifier.from_corpus(corpus, "train", model.config.text.prompt_set)
        run_benchmark(model, items, judge, folder, variant.name, variant.think, classifier=classifier,
                      progress=progress)  # speaks with the checkpoint's own voice
    names, keys = {v.name for v in variants}, {item.key for item in items}
    return [{**row, "seed": seed} for row in read_rows(folder / "items.jsonl")
            if row["system"] in names and row["key"] in keys]


def paired_difference(rows: list[dict], better: str, worse: str, boot: int = 2000, seed: int = 0) -> dict:
    """Mean score difference ``better − worse`` (x 20, the table's 0-100 scale) over the items both were
    judged on, with a 95 % percentile bootstrap interval: items resampled within each seed (the same items
    for both systems: a paired comparison, tighter than two separate intervals)."""
    scores: dict[tuple, dict[str, float]] = {}
    for row in rows:
        if row.get("score") is not None and row["system"] in (better, worse):
            scores.setdefault((row.get("seed", 0), row["key"]), {})[row["system"]] = row["score"]
    by_seed: dict[int, list[float]] = {}
    for (run_seed, _), pair in scores.items():
        if len(pair) == 2:
            by_seed.setdefault(run_seed, []).append(20.0 * (pair[better] - pair[worse]))
    if not by_seed:
        return {"better": better, "worse": worse, "n": 0, "mean": None, "low": None, "high": None,
                "verdict": "no items"}
    groups = [np.asarray(d) for d in by_seed.values()]
    low, high = np.percentile(bootstrap_means(groups, boot, seed), [2.5, 97.5])
    mean = float(np.concatenate(groups).mean())
    verdict = "holds" if low > 0 else "reversed" if high < 0 else "not resolved (the interval spans 0)"
    return {"better": better, "worse": worse, "n": int(sum(len(g) for g in groups)), "mean": round(mean, 1),
            "low": round(float(low), 1), "high": round(float(high), 1), "verdict": verdict}


def _reference_rows() -> dict:
    """The paper's full model and ablation rows of EChat-eval Table 1 (``data/reference_results.json``):
    system -> category -> score (None for "–")."""
    rows = reference_results()["tables"]["echat_eval_gpt4o"]["rows"]
    return {row["system"]: row["scores"] for row in rows if row["kind"] in ("system", "ablation")}


def configs(recipe: str, seeds: tuple[int, ...], limit: int | None, judge_name: str) -> dict:
    """The settings of a grid: every run's recipe stage (as :meth:`StageRecipe.describe` prints it) and
    parent, the variants, the seeds, the items and the judge — written beside the table."""
    return {"recipe": recipe, "seeds": list(seeds), "limit_per_subset": limit, "judge": judge_name,
            "runs": {n.name: {"parent": n.parent, "think": str(n.think),
                              "stage": recipe_stage(recipe, n.stage, n.think).describe()} for n in NODES},
            "variants": {v.name: {"run": v.node, "think": str(v.think)} for v in VARIANTS}}


def ablate(recipe: str, out: str | Path, seeds: tuple[int, ...] = (0, 1), limit: int | None = 40, judge=None,
           progress: bool = True) -> dict:
    """The whole grid: train what is missing, evaluate every variant on every seed, and write
    ``ablation.json`` / ``ablation.md`` / ``ablation.png`` / ``configs.json`` into ``out``.

    ``judge``: an :class:`echat.eval.judge.Judge` (default :class:`~echat.eval.judge.RubricJudge`).
    Returns the result: the summary (:func:`echat.eval.echat_eval.summarise`), the claims
    (:func:`paired_difference`), stage 1's figures per seed, the wall seconds of every part."""
    out, judge = Path(out), judge or RubricJudge()
    start, seconds = time.perf_counter(), {}
    trained = {seed: train_grid(recipe, out, seed, progress=progress) for seed in seeds}
    seconds["training"] = round(time.perf_counter() - start, 1)
    hearing = {seed: understanding_figures(out, seed, limit, progress) for seed in seeds}
    rows = [row for seed in seeds for row in benchmark_seed(out, seed, judge, limit, progress=progress)]
    seconds["evaluation"] = round(time.perf_counter() - start - seconds["training"], 1)
    summary = summarise(rows, [v.name for v in VARIANTS])
    result = {"recipe": recipe, "seeds": list(seeds), "judge": judge.name, "summary": summary,
              "claims": [paired_difference(rows, better, worse) for better, worse in CLAIMS],
              "understanding": hearing, "training_seconds": trained, "seconds": seconds,
              "failures": [r for r in rows if r.get("score") is None], "reference": _reference_rows()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "configs.json").write_text(json.dumps(configs(recipe, seeds, limit, judge.name), indent=2) + "\n",
                                      encoding="utf-8")
    (out / "ablation.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_summary(summary, out / "ablation.png")
    (out / "ablation.md").write_text(render_ablation(result), encoding="utf-8")
    return result


# Stage 1's understanding targets of the mini recipe (seen, unseen): ASR CER at most, labels at least
# (the issue "EChat-mini hears"; docs/hearing.md).
UNDERSTANDING_TARGETS = {"asr_cer": (0.10, 0.25), "gender": (0.95, 0.95), "age": (0.80, 0.80),
                         "emotion": (0.80, 0.80), "event": (0.90, 0.90)}


def _missed(field: str, subset: str, value: float | None) -> bool:
    target = UNDERSTANDING_TARGETS[field][subset == "unseen"]
    return value is None or (value > target if field == "asr_cer" else value < target)


def _hearing_lines(understanding: dict) -> list[str]:
    lines = ["| seed | subset | items | ASR CER | gender | age | emotion | event |", "|---" * 8 + "|"]
    missed = []
    for seed, subsets in understanding.items():
        for subset, row in subsets.items():
            cells = []
            for field in UNDERSTANDING_TARGETS:
                miss = _missed(field, subset, row.get(field))
                cells.append(f"{row.get(field):.3f}{' (missed)' if miss else ''}")
                missed += [f"seed {seed} {subset} {field}"] if miss else []
            lines.append(f"| {seed} | {subset} | {row['items']} | " + " | ".join(cells) + " |")
    verdict = ("Every understanding target is met: the full model's LLM path reads its audio." if not missed else
               "Understanding targets missed: " + ", ".join(missed) + ". Read the table with that in mind.")
    return [*lines, "", verdict]


def render_ablation(result: dict) -> str:
    """``ablation.md``: the table, the claims, stage 1's figures, the paper's rows and the times."""
    seeds = ", ".join(map(str, result["seeds"]))
    lines = [f"# EChat-eval in miniature: the paper's ablation (recipe {result['recipe']}, seeds {seeds}, "
             f"judge {result['judge']})", "",
             "Scores 0-100 (judge score 1-5 x 20), mean over the items of every seed, 95 % bootstrap interval "
             "over items.", "", render_table(result["summary"]), "",
             "## The paper's claims, paired over the same items", "",
             "| better | worse | difference | 95 % interval | items | verdict |", "|---|---|---|---|---|---|"]
    for c in result["claims"]:
        lines.append(f"| {c['better']} | {c['worse']} | {c['mean']} | [{c['low']}, {c['high']}] | {c['n']} | "
                     f"{c['verdict']} |")
    lines += ["", "## What the full model hears: stage 1 through the LLM (test split)", "",
              *_hearing_lines(result["understanding"]), "",
              "## The paper's rows (EChat-eval Table 1: GPT-4o judge, prompt unpublished; another scale, "
              "judge and data)", "", "| system | " + " | ".join(CATEGORIES) + " |",
              "|---|" + "---|" * len(CATEGORIES)]
    for name, row in result["reference"].items():
        lines.append(f"| {name} | " + " | ".join("–" if row.get(c) is None else f"{row[c]:.1f}"
                                                  for c in CATEGORIES) + " |")
    lines += ["", "## Time (wall seconds)", ""]
    for seed, runs in result["training_seconds"].items():
        lines.append(f"- seed {seed}: " + ", ".join(f"{name} {sec:.0f}" for name, sec in runs.items())
                     + f"; total {sum(runs.values()):.0f}")
    lines.append(f"- this call: training {result['seconds']['training']:.0f}, evaluation "
                 f"{result['seconds']['evaluation']:.0f}")
    lines.append(f"- failed items: {len(result['failures'])}")
    return "\n".join(lines) + "\n"
