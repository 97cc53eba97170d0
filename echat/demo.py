"""``make demo`` and the notebooks' find-or-build helpers: corpus, recipe stages, evaluations, figures.

A run folder (``RUN_DIR``; ``make demo`` writes ``runs/demo``, ``runs/demo-smoke`` for the smoke preset)::

    echat-mini/                       the corpus: EChat-mini, seed 0 (smoke size for the smoke preset)
    recipe/{i}_{stage}/final          the recipe's stages in recipe order, as ``run_recipe`` writes them
    recipe/{i}_{stage}-{think}/       a think stage trained with another think mode than the recipe's (tag)
    brief-{N}/{i}_{stage}/            stages a notebook trained itself, each cut to N steps
    <stage folder>/eval_{...}/        a stage evaluation (``stage_eval``): eval.json and confusion plots
    recipe/timings.json               wall time of every stage the demo trained
    figures.json, figures.md          the demo's measured figures
    NN_*.ipynb, NN_*.html, index.html the executed notebooks

Notebooks 04-07 call :func:`corpus_for`, :func:`find_or_train` and :func:`find_or_evaluate`: what the
folder holds is reused, what is missing is built or trained (earlier stages first, by recipe order),
so each notebook runs alone on an empty folder and reuses ``make demo``'s work on a full one. Stages
are looked up by name; their folders are numbered by the recipe's order, never hard-coded.

``python -m echat.demo --preset mini --out runs/demo`` (what ``make demo`` calls) builds the corpus if
absent, runs the recipe (finished stages are skipped), evaluates the final checkpoint of each stage on
the test split, writes ``figures.json`` / ``figures.md``, runs every numbered notebook into the folder
and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from echat.notebooks import NOTEBOOK_DIR

RECIPE_THINK = "tag"  # the think mode run_recipe trains the empathy stage with (its default)
CORPUS_SEED = 0
DEFAULT_LIMIT = {"smoke": 2, "mini": 40}  # evaluation items per stage and test subset
EVALUATED = (("understanding", "understanding"), ("generation", "generation"), ("empathy", "empathy"))
FINAL = "final"  # echat.models.checkpoint.FINAL, repeated so that importing this module stays light


# ----------------------------------------------------------------------------------------------
# Where things live
# ----------------------------------------------------------------------------------------------


def recipe_name(preset: str) -> str:
    """The recipe (and corpus size) of a preset: ``smoke`` for smoke, ``mini`` for every other preset
    (the full world's model does not train on a CPU; its notebooks train the mini one)."""
    return "smoke" if preset == "smoke" else "mini"


def default_limit(preset: str) -> int:
    """Evaluation items per stage and test subset that the demo (and the notebooks, by default) use."""
    return DEFAULT_LIMIT[recipe_name(preset)]


def resolve_run_dir(run_dir: str | Path, preset: str) -> Path:
    """``run_dir``, or, when empty, the folder ``make demo`` writes for this preset (``runs/demo`` or
    ``runs/demo-smoke`` in the repository; ``$ECHAT_HOME/runs/...`` outside a checkout)."""
    if run_dir:
        return Path(run_dir)
    from echat.text_tokenizer import echat_home

    base = NOTEBOOK_DIR.parent / "runs" if NOTEBOOK_DIR.is_dir() else echat_home() / "runs"
    return base / ("demo" if recipe_name(preset) == "mini" else f"demo-{recipe_name(preset)}")


def build_corpus_if_absent(folder: str | Path, size: str, seed: int = CORPUS_SEED) -> Path:
    """``folder`` holding EChat-mini of ``size``, built there (``echat data mini``) when absent.

    A corpus of another size there is an error (one line): a mini run must not train on a smoke corpus.
    """
    folder = Path(folder)
    info = folder / "corpus.json"
    if info.is_file():
        found = json.loads(info.read_text(encoding="utf-8")).get("size")
        if found != size:
            raise ValueError(f"{folder} holds a {found} EChat-mini corpus, not {size}: use another run folder")
        return folder
    from echat.data.mini_corpus import build_corpus

    print(f"building EChat-mini ({size}, seed {seed}) in {folder}: once", flush=True)
    start = time.perf_counter()
    build_corpus(folder, size=size, seed=seed)
    print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def corpus_for(run_dir: str | Path, preset: str, corpus: str | Path = "") -> Path:
    """The corpus a notebook uses: ``corpus`` when given, else ``run_dir/echat-mini`` (``run_dir``
    empty: see :func:`resolve_run_dir`); built there at the preset's size (seed 0) when absent."""
    folder = Path(corpus) if corpus else resolve_run_dir(run_dir, preset) / "echat-mini"
    return build_corpus_if_absent(folder, recipe_name(preset))


# ----------------------------------------------------------------------------------------------
# Stages: find or train
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRun:
    """One stage's run folder: ``folder/final`` holds its checkpoint, ``folder/metrics.jsonl`` its log.

    ``stage`` is the recipe as trained (cut to the run's steps for a brief run); ``trained_now`` tells
    whether this call trained it or found it.
    """

    index: int
    stage: object  # echat.train.recipes.StageRecipe
    folder: Path
    trained_now: bool = False

    @property
    def final(self) -> Path:
        return self.folder / FINAL

    @property
    def done(self) -> bool:
        return (self.final / "model.safetensors").is_file()


def stage_folder_name(index: int, stage) -> str:
    """``{index}_{name}``, plus ``-{think}`` for a think stage trained in another mode than the recipe's."""
    suffix = f"-{stage.think}" if stage.think not in ("none", RECIPE_THINK) else ""
    return f"{index}_{stage.name}{suffix}"


def planned_runs(run_dir: str | Path, recipe: str, stage_name: str, think: str = RECIPE_THINK,
                 max_steps: int | None = None) -> list[StageRun]:
    """Where stage ``stage_name`` of ``recipe`` may live, in the order it is looked for: the full
    recipe's folder, then (when ``max_steps`` cuts the stage) the brief run's ``brief-{max_steps}``."""
    from echat.train.recipes import recipe as stages_of
    from echat.train.recipes import stage as cut

    stages = stages_of(recipe, think)
    index = next((i for i, s in enumerate(stages) if s.name == stage_name), None)
    if index is None:
        raise ValueError(f"recipe {recipe} has no stage {stage_name!r}; it has {', '.join(s.name for s in stages)}")
    full = stages[index]
    runs = [StageRun(index, full, Path(run_dir) / "recipe" / stage_folder_name(index, full))]
    if max_steps is not None and max_steps < full.max_steps:
        brief = cut(recipe, stage_name, think, max_steps)
        runs.append(StageRun(index, brief, Path(run_dir) / f"brief-{max_steps}" / stage_folder_name(index, brief)))
    return runs


def previous_stage(recipe: str, stage_name: str) -> str | None:
    """The name of the stage before ``stage_name`` in the recipe's order (None for the first)."""
    from echat.train.recipes import recipe as stages_of

    names = [s.name for s in stages_of(recipe)]
    index = names.index(stage_name)
    return names[index - 1] if index else None


def checkpoint_preset(checkpoint: str | Path) -> str:
    """The preset name stored in a checkpoint's ``config.json``."""
    return json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))["name"]


def _found(run: StageRun, recipe: str) -> StageRun:
    from echat.train.run import RECIPE_PRESET

    preset = checkpoint_preset(run.final)
    if preset != RECIPE_PRESET[recipe]:
        raise ValueError(f"{run.final} holds a {preset} model, not {RECIPE_PRESET[recipe]}: use another run folder")
    return run


def find_or_train(run_dir: str | Path, preset: str, stage_name: str, corpus: str | Path,
                  think: str = RECIPE_THINK, max_steps: int | None = None, seed: int = 0,
                  progress: bool = True) -> StageRun:
    """The run of stage ``stage_name`` in ``run_dir``: found, or trained now (earlier stages first).

    Looked for in the full recipe's folder, then in ``brief-{max_steps}``; a missing stage is trained
    for the recipe's length cut to ``max_steps`` (None: the full length) from the previous stage's run
    (found or trained the same way), with ``torch.manual_seed(seed)`` first. A run interrupted after a
    checkpoint resumes from it.
    """
    import torch

    from echat.train.run import RECIPE_PRESET, train_stage

    recipe = recipe_name(preset)
    runs = planned_runs(run_dir, recipe, stage_name, think, max_steps)
    for run in runs:
        if run.done:
            return _found(run, recipe)
    before = previous_stage(recipe, stage_name)
    init = find_or_train(run_dir, preset, before, corpus, think, max_steps, seed, progress).final if before else None
    run = runs[-1]
    resume = (run.folder / "ckpt" / "latest").is_file()
    if not resume and (run.folder / "metrics.jsonl").exists():
        (run.folder / "metrics.jsonl").unlink()  # a log without a checkpoint: start it again
    print(f"training stage {stage_name} ({run.stage.max_steps} steps) into {run.folder}", flush=True)
    torch.manual_seed(seed)
    train_stage(run.stage, corpus, run.folder, RECIPE_PRESET[recipe], init=init, resume=resume, progress=progress)
    return StageRun(run.index, run.stage, run.folder, trained_now=True)


def read_metrics(folder: str | Path) -> list[dict]:
    """The records of a stage's ``metrics.jsonl`` (per step: loss, task, lr; per dev evaluation: dev_loss)."""
    path = Path(folder) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def loss_plot(run: StageRun) -> Path:
    """Draw ``loss.png`` of a stage from its ``metrics.jsonl`` (training loss per task, dev loss)."""
    from echat.train.plots import plot_history

    path = run.folder / "loss.png"
    plot_history(read_metrics(run.folder), path, title=f"stage {run.index} {run.stage.name} ({run.folder.name})")
    return path


# ----------------------------------------------------------------------------------------------
# Evaluations: find or run
# ----------------------------------------------------------------------------------------------


def evaluation_folder(run: StageRun, eval_stage: str, think: str = RECIPE_THINK, limit: int | None = None) -> Path:
    """Where :func:`find_or_evaluate` keeps one evaluation of a stage's final checkpoint."""
    mode = f"_{think}" if eval_stage == "empathy" else ""
    return run.folder / f"eval_{eval_stage}{mode}_{f'limit{limit}' if limit else 'all'}"


def find_or_evaluate(run: StageRun, corpus: str | Path, eval_stage: str, think: str = RECIPE_THINK,
                     limit: int | None = None, progress: bool = True) -> dict:
    """The ``stage_eval`` report of one stage (``understanding``, ``generation`` or ``empathy``) of
    ``run``'s final checkpoint on the test split: read from :func:`evaluation_folder` when it is newer
    than the checkpoint, else evaluated now and saved there (``eval.json`` + confusion-matrix PNGs)."""
    from echat.eval.report import save_report
    from echat.eval.stage_eval import evaluate, load_model

    folder = evaluation_folder(run, eval_stage, think, limit)
    saved = folder / "eval.json"
    if saved.is_file() and saved.stat().st_mtime >= (run.final / "model.safetensors").stat().st_mtime:
        return json.loads(saved.read_text(encoding="utf-8"))
    report = evaluate(load_model(run.final), corpus, stages=[eval_stage], limit=limit, think=think,
                      progress=progress)
    report["checkpoint"] = str(run.final)
    save_report(report, folder)
    return report


def text_loss(model, corpus: str | Path, split: str = "test", subset: str | None = None,
              limit: int | None = None) -> dict:
    """Stage 0's measure: mean cross-entropy per target token of the text LM on a split's text.

    The text is what stage 0 trains on (``text_lm_records``: T2T pairs and dialogue turns as text),
    encoded as in training (every text position a target); ``subset`` keeps the records whose
    ``extra.subset`` is it (test: ``seen`` / ``unseen``), ``limit`` the first records.
    Returns ``{"records", "tokens", "loss", "perplexity"}`` (perplexity = exp(loss)).
    """
    import math

    import torch

    from echat.data.pipeline import DataPipeline, Sample
    from echat.data.schema import read_manifest
    from echat.tokens import IGNORE_INDEX
    from echat.train.recipes import text_lm_records

    records = [r for r in text_lm_records(read_manifest(Path(corpus) / f"{split}.jsonl"))
               if subset is None or r.extra.get("subset") == subset][:limit]
    pipe = DataPipeline(model.config, model.tokenizer, think="none", train=False, text_lm=True)
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in pipe.batches([Sample(r) for r in records]):
            count = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())  # shifted targets
            total += float(model(batch.to(model.device)).loss) * count
            tokens += count
    model.train(was_training)
    loss = total / max(tokens, 1)
    return {"records": len(records), "tokens": tokens, "loss": loss, "perplexity": math.exp(loss)}


def tts_tokens(model, text: str) -> list[int]:
    """The speech tokens ``model`` speaks ``text`` with, as the generation evaluation runs TTS: the
    reference's TTS sampling seeded with ``stage_eval.TTS_SEED``, at most ``speech_token_cap(text)``."""
    from dataclasses import replace

    from echat.eval.stage_eval import TTS_SEED, speech_token_cap
    from echat.models.generate import generate
    from echat.prompts import default_options
    from echat.tokens import TEXT2TOKEN, OutputType

    options = replace(default_options(OutputType.TTS), seed=TTS_SEED, max_speech_tokens=speech_token_cap(text))
    return generate(model, text=text, task=TEXT2TOKEN, options=options).speech_tokens


def empathy_output(model, record, think: str) -> str:
    """The raw text output (think block, then reply) of ``model`` on a dialogue record, as the empathy
    evaluation runs it: the record's family in the ``think`` form, greedy, 256 text tokens, no speech."""
    from echat.audio import load_audio
    from echat.eval.stage_eval import EMPATHY_OPTIONS, empathy_task
    from echat.models.generate import generate

    return generate(model, load_audio(record.audio_path()), task=empathy_task(record, think), think=think,
                    options=EMPATHY_OPTIONS).raw_text


# ----------------------------------------------------------------------------------------------
# make demo
# ----------------------------------------------------------------------------------------------


def step(number: int, total: int, what: str) -> None:
    """Print the demo's progress line ``[demo k/n] what``."""
    print(f"\n[demo {number}/{total}] {what}", flush=True)


def run_recipe_timed(recipe: str, corpus: Path, out: Path, seed: int = 0) -> dict[str, float]:
    """``run_recipe`` into ``out``, returning the wall seconds of every stage folder it ever trained.

    A stage trained now ends when its ``final/model.safetensors`` is written and starts when the stage
    before it ended (or at the call); the times are kept in ``out/timings.json``, so a re-run, which
    skips finished stages, still reports them.
    """
    import torch

    from echat.train.recipes import recipe as stages_of
    from echat.train.run import run_recipe

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


def evaluate_stages(run_dir: Path, preset: str, corpus: Path, limit: int | None) -> dict[str, dict]:
    """``stage_eval`` of every evaluated stage's final checkpoint (understanding after the understanding
    stage, TTS after generation, empathy after empathy), found or run: stage name -> report."""
    from echat.train.recipes import recipe as stages_of

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
    from echat.eval.probe import probe_run

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
    from echat.eval.report import dig

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
    import torch

    from echat.train.recipes import recipe as stages_of

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
    from echat.eval.report import format_cell, render

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
        from echat.eval.probe import render_probe

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


def run_demo(preset: str, out: str | Path, limit: int | None = None, only: Sequence[str] | None = None,
             notebooks: bool = True) -> tuple[dict, list]:
    """The whole demo into ``out``: corpus, recipe, evaluations, figures, then the notebooks
    (``only``: number prefixes; ``notebooks=False``: none). Returns the figures and the notebook results.
    ``limit``: evaluation items per stage and test subset (None: :func:`default_limit`; 0: all).

    ``figures["seconds"]`` holds the wall time of each part in this call (a part that found its work
    done takes little); the recipe's per-stage times are in ``figures["training"]``.
    """
    from echat.notebooks import run_all

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


def summary(figures: dict, out: Path) -> str:
    """The figures in a few lines, and where to look."""
    from echat.eval.report import format_cell

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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m echat.demo``: run the demo, print the figures; exit 1 if a notebook failed."""
    from echat.notebooks import summary as notebook_summary

    parser = argparse.ArgumentParser(
        prog="python -m echat.demo", description="Build EChat-mini, run the recipe, evaluate every stage, write "
        "figures.json / figures.md and run every numbered notebook into one folder.",
        epilog="example:\n  python -m echat.demo --preset mini --out runs/demo\n"
               "  python -m echat.demo --preset smoke --out runs/demo-smoke --only 04 05",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mini", choices=["smoke", "mini"])
    parser.add_argument("--out", default="runs/demo", help="run folder (corpus, recipe, figures, notebooks)")
    parser.add_argument("--limit", type=int, default=None,
                        help=f"evaluation items per stage and test subset, 0 for all (default by recipe: "
                             f"{DEFAULT_LIMIT})")
    parser.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 04 05")
    parser.add_argument("--no-notebooks", action="store_true", help="stop after the figures")
    args = parser.parse_args(argv)
    try:
        figures, results = run_demo(args.preset, args.out, args.limit, args.only, not args.no_notebooks)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    if results:
        print(notebook_summary(results))
    print(summary(figures, Path(args.out).resolve()))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
