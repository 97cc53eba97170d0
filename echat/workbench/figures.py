"""The figures ``echat demo`` measures in a run folder: every evaluated stage's report (found or run), the
bridge probe, training times and losses, written as ``figures.json`` and ``figures.md``."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from echat.eval.probe import probe_run, render_probe
from echat.eval.report import dig, format_cell, render
from echat.train.recipes import recipe as stages_of
from echat.workbench.runs import (
    RECIPE_THINK,
    evaluation_folder,
    find_or_evaluate,
    planned_runs,
    read_metrics,
    recipe_name,
    stage_folder_name,
)

EVALUATED = (("understanding", "understanding"), ("generation", "generation"), ("empathy", "empathy"))


def evaluate_stages(run_dir: Path, preset: str, corpus: Path, limit: int | None) -> dict[str, dict]:
    """``stage_eval`` of every evaluated stage's final checkpoint (understanding after the understanding
    stage, TTS after generation, empathy after empathy), found or run: stage name -> report."""
    recipe = recipe_name(preset)
    names = {s.name for s in stages_of(recipe, RECIPE_THINK)}
    reports = {}
    for stage_name, eval_stage in EVALUATED:
        if stage_name not in names:
            print(f"recipe {recipe} has no stage {stage_name}: its {eval_stage} evaluation is left out", flush=True)
            continue
        run = planned_runs(run_dir, recipe, stage_name)[0]
        if run.done:
            print(f"evaluating {eval_stage} of {run.final}", flush=True)
            reports[stage_name] = find_or_evaluate(run, corpus, eval_stage, limit=limit)
    return reports


def probe_understanding(run_dir: Path, preset: str, corpus: Path, limit: int | None) -> dict | None:
    """What the understanding stage's encoder carries, read by its bridge heads
    (:func:`echat.eval.probe.probe_run`); None when that stage trained no bridge."""
    run = planned_runs(run_dir, recipe_name(preset), "understanding")[0]
    if not run.done:
        return None
    try:
        return probe_run(run.final, corpus, limit=limit)
    except ValueError:
        return None


def _final_loss(folder: Path, last: int = 20) -> float | None:
    """Mean training loss of a stage's last ``last`` logged steps."""
    losses = [r["loss"] for r in read_metrics(folder) if "loss" in r] if (folder / "metrics.jsonl").is_file() else []
    return round(sum(losses[-last:]) / len(losses[-last:]), 4) if losses else None


HEADLINES = {  # stage_eval stage -> the scores of a subset that figures.json keeps
    "understanding": (("cer", ("asr", "cer")), ("wer", ("asr", "wer")),
                      *((f"{f}_accuracy", ("labels", f, "accuracy")) for f in ("age", "gender", "emotion", "event"))),
    "generation": tuple((k, (k,)) for k in ("wer_model", "wer_ground_truth", "wer_ratio", "within_2x")),
    "empathy": tuple((k, (k,)) for k in ("think_parse_rate", "reply_emotion_accuracy",
                                         "classifier_accuracy_ground_truth")),
}


def headline_scores(report: dict) -> dict:
    """The headline scores of a one-stage report, per subset: items, the stage's scores, a skip reason."""
    stage = report["stages"][0]
    out = {}
    for subset, stages in report["subsets"].items():
        scores = stages.get(stage, {})
        out[subset] = {"items": scores.get("items"), **{k: dig(scores, keys) for k, keys in HEADLINES[stage]}}
        if scores.get("skipped"):
            out[subset]["skipped"] = scores["skipped"]
    return out


def _rel(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (figures stay readable when the folder moves)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def collect_figures(run_dir: Path, preset: str, corpus: Path, timings: dict, reports: dict, seconds: dict) -> dict:
    """Everything the demo measured, JSON-able: machine, corpus, per-stage training, evaluations, times."""
    recipe = recipe_name(preset)
    stages = []
    for index, stage in enumerate(stages_of(recipe, RECIPE_THINK)):
        folder = run_dir / "recipe" / stage_folder_name(index, stage)
        stages.append({"stage": stage.name, "folder": str(folder.relative_to(run_dir)), "steps": stage.max_steps,
                       "seconds": timings.get(folder.name), "final_train_loss": _final_loss(folder)})
    evaluations = {name: {"stage": r["stages"][0], "checkpoint": _rel(r["checkpoint"], run_dir),
                          "limit": r["limit"], "think": r["think"], "seconds": r.get("seconds"),
                          "subsets": headline_scores(r)} for name, r in reports.items()}
    info = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))
    return {"preset": preset, "recipe": recipe, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
            "corpus": {"folder": _rel(corpus, run_dir), "size": info["size"], "seed": info["seed"],
                       "user_clips": info["user_clips"], "records": info["records"],
                       "mb": round(info["bytes"] / 1e6, 1)},
            "training": stages, "evaluation": evaluations, "seconds": seconds}


def figures_markdown(figures: dict, reports: dict, run_dir: Path) -> str:
    """``figures.md``: the figures as readable tables, with links to the loss curves and evaluations."""
    m, c = figures["machine"], figures["corpus"]
    lines = [f"# echat demo: preset {figures['preset']}, recipe {figures['recipe']}", "",
             f"Measured {figures['date']} on {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} "
             f"({m['torch_threads']} threads), CUDA {'yes' if m['cuda'] else 'no'}; 1-minute load average "
             f"{format_cell(m.get('load_average_at_start'), 1)} when the demo started (other processes on the CPUs "
             "slow the times below).", "",
             f"Corpus: EChat-mini `{c['size']}` (seed {c['seed']}), {c['user_clips']} user clips, records "
             + ", ".join(f"{n} {s}" for s, n in c["records"].items()) + f", {c['mb']} MB.", "",
             "## Training", "", "| stage | steps | wall time (s) | final train loss (last 20 steps) | loss curve |",
             "|---|---|---|---|---|"]
    for s in figures["training"]:
        lines.append(f"| {s['stage']} | {s['steps']} | {format_cell(s['seconds'], 1)} "
                     f"| {format_cell(s['final_train_loss'])} | [{s['folder']}/loss.png]({s['folder']}/loss.png) |")
    lines += ["", "## Evaluation (test split)", ""]
    for name, report in reports.items():
        run = planned_runs(run_dir, figures["recipe"], name)[0]
        rel = _rel(evaluation_folder(run, report["stages"][0], report["think"], report["limit"]), run_dir)
        lines += [f"### {report['stages'][0]}: the checkpoint of stage {run.index} ({name})", "",
                  f"Report and plots: [{rel}]({rel}/eval.json)",
                  "", "```text", render(report), "```", ""]
    if figures.get("bridge_probe"):
        lines += ["### probe: what the stage-1 encoder carries, read by its bridge heads (not by the LLM)", "",
                  "```text", render_probe(figures["bridge_probe"]), "```", ""]
    if figures.get("notebooks"):
        lines += ["## Notebooks", "", "| notebook | status | seconds |", "|---|---|---|"]
        lines += [f"| [{n['name']}]({n['name']}.html) | {'ok' if n['ok'] else 'FAILED'} | {n['seconds']} |"
                  for n in figures["notebooks"]]
        lines.append("")
    lines += ["## Wall time of this run (s)", "", "| part | seconds |", "|---|---|"]
    lines += [f"| {part} | {format_cell(value, 1)} |" for part, value in figures["seconds"].items()]
    return "\n".join(lines) + "\n"


def write_figures(run_dir: Path, figures: dict, reports: dict) -> tuple[Path, Path]:
    """Write ``figures.json`` and ``figures.md`` into ``run_dir``."""
    json_path, md_path = run_dir / "figures.json", run_dir / "figures.md"
    json_path.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(figures_markdown(figures, reports, run_dir), encoding="utf-8")
    return json_path, md_path


def summary(figures: dict, out: Path) -> str:
    """The figures in a few lines, and where to look."""
    lines = [f"training ({figures['recipe']} recipe):"]
    lines += [f"  {s['stage']:14} {s['steps']:5} steps  {format_cell(s['seconds'], 1):>8} s  final train loss "
              f"{format_cell(s['final_train_loss'])}" for s in figures["training"]]
    for name, e in figures["evaluation"].items():
        for subset, scores in e["subsets"].items():
            shown = ", ".join(f"{k} {format_cell(v)}" for k, v in scores.items() if k != "skipped" and v is not None)
            lines.append(f"{e['stage']}, {name} checkpoint, {subset}: {shown or scores.get('skipped', '-')}")
    lines += ["wall time: " + ", ".join(f"{k} {format_cell(v, 1)} s" for k, v in figures["seconds"].items()),
              f"figures: {out / 'figures.md'} (and figures.json)", f"notebooks: {out / 'index.html'}"]
    return "\n".join(lines)
