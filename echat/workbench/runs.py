"""The notebooks' find-or-build helpers: the corpus, the recipe's stages and their evaluations in a run folder.

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

``echat demo`` (:mod:`echat.workbench.demo`, what ``make demo`` calls) fills the same folder in one go.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from echat.audio import load_audio
from echat.config import ThinkMode
from echat.data.mini.corpus import build_corpus_if_absent
from echat.data.pipeline import DataPipeline, Sample
from echat.data.schema import read_manifest
from echat.eval.ablation import ablate
from echat.eval.report import save_report
from echat.eval.stage_eval import EMPATHY_OPTIONS, empathy_task, evaluate, load_model, tts_options
from echat.hub import echat_home
from echat.models.checkpoint import FINAL
from echat.models.generate import generate
from echat.tokens import IGNORE_INDEX, TEXT2TOKEN
from echat.train.plots import plot_history
from echat.train.recipes import recipe as stages_of
from echat.train.recipes import stage as cut
from echat.train.recipes import text_lm_records
from echat.train.run import RECIPE_PRESET, train_stage
from echat.workbench.notebooks import NOTEBOOK_DIR

RECIPE_THINK = ThinkMode.TAG  # the think mode run_recipe trains the empathy stage with (its default)
CORPUS_SEED = 0
DEFAULT_LIMIT = {"smoke": 2, "mini": 40}  # evaluation items per stage and test subset


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
    base = NOTEBOOK_DIR.parent / "runs" if NOTEBOOK_DIR.is_dir() else echat_home() / "runs"
    return base / ("demo" if recipe_name(preset) == "mini" else f"demo-{recipe_name(preset)}")


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
    suffix = f"-{stage.think}" if stage.think not in (ThinkMode.NONE, RECIPE_THINK) else ""
    return f"{index}_{stage.name}{suffix}"


def planned_runs(run_dir: str | Path, recipe: str, stage_name: str, think: ThinkMode | str = RECIPE_THINK,
                 max_steps: int | None = None) -> list[StageRun]:
    """Where stage ``stage_name`` of ``recipe`` may live, in the order it is looked for: the full
    recipe's folder, then (when ``max_steps`` cuts the stage) the brief run's ``brief-{max_steps}``."""
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
    names = [s.name for s in stages_of(recipe)]
    index = names.index(stage_name)
    return names[index - 1] if index else None


def checkpoint_preset(checkpoint: str | Path) -> str:
    """The preset name stored in a checkpoint's ``config.json``."""
    return json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))["name"]


def _found(run: StageRun, recipe: str) -> StageRun:
    preset = checkpoint_preset(run.final)
    if preset != RECIPE_PRESET[recipe]:
        raise ValueError(f"{run.final} holds a {preset} model, not {RECIPE_PRESET[recipe]}: use another run folder")
    return run


def find_or_train(run_dir: str | Path, preset: str, stage_name: str, corpus: str | Path,
                  think: ThinkMode | str = RECIPE_THINK, max_steps: int | None = None, seed: int = 0,
                  progress: bool = True) -> StageRun:
    """The run of stage ``stage_name`` in ``run_dir``: found, or trained now (earlier stages first).

    Looked for in the full recipe's folder, then in ``brief-{max_steps}``; a missing stage is trained
    for the recipe's length cut to ``max_steps`` (None: the full length) from the previous stage's run
    (found or trained the same way), with ``torch.manual_seed(seed)`` first. A run interrupted after a
    checkpoint resumes from it.
    """
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
    path = run.folder / "loss.png"
    plot_history(read_metrics(run.folder), path, title=f"stage {run.index} {run.stage.name} ({run.folder.name})")
    return path


# ----------------------------------------------------------------------------------------------
# Evaluations: find or run
# ----------------------------------------------------------------------------------------------


def evaluation_folder(run: StageRun, eval_stage: str, think: ThinkMode | str = RECIPE_THINK,
                      limit: int | None = None) -> Path:
    """Where :func:`find_or_evaluate` keeps one evaluation of a stage's final checkpoint."""
    mode = f"_{think}" if eval_stage == "empathy" else ""
    return run.folder / f"eval_{eval_stage}{mode}_{f'limit{limit}' if limit else 'all'}"


def find_or_evaluate(run: StageRun, corpus: str | Path, eval_stage: str, think: ThinkMode | str = RECIPE_THINK,
                     limit: int | None = None, progress: bool = True) -> dict:
    """The ``stage_eval`` report of one stage (``understanding``, ``generation`` or ``empathy``) of
    ``run``'s final checkpoint on the test split: read from :func:`evaluation_folder` when it is newer
    than the checkpoint, else evaluated now and saved there (``eval.json`` + confusion-matrix PNGs)."""
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
    records = [r for r in text_lm_records(read_manifest(Path(corpus) / f"{split}.jsonl"))
               if subset is None or r.extra.get("subset") == subset][:limit]
    pipe = DataPipeline(model.config, model.tokenizer, think=ThinkMode.NONE, train=False, text_lm=True)
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
    """The speech tokens ``model`` speaks ``text`` with, as the generation evaluation runs TTS
    (``stage_eval.tts_options``: the reference's TTS sampling, seeded, at most ``speech_token_cap(text)``)."""
    return generate(model, text=text, task=TEXT2TOKEN, options=tts_options(text)).speech_tokens


def empathy_output(model, record, think: ThinkMode | str) -> str:
    """The raw text output (think block, then reply) of ``model`` on a dialogue record, as the empathy
    evaluation runs it: the record's family in the ``think`` form, greedy, 256 text tokens, no speech."""
    return generate(model, load_audio(record.audio_path()), task=empathy_task(record, think), think=think,
                    options=EMPATHY_OPTIONS).raw_text


# ----------------------------------------------------------------------------------------------
# The ablation grid (notebook 09)
# ----------------------------------------------------------------------------------------------


def ablation_dir(run_dir: str | Path, preset: str, folder: str | Path = "") -> Path:
    """Where notebook 09 looks for ``echat ablate``'s folder: ``folder``, else ``RUN_DIR/ablation``."""
    return Path(folder) if folder else resolve_run_dir(run_dir, preset) / "ablation"


def find_or_ablate(run_dir: str | Path, preset: str, folder: str | Path = "", seeds: tuple[int, ...] = (0,),
                   limit: int | None = None, train: bool | None = None) -> dict | None:
    """The grid's result (:func:`echat.eval.ablation.ablate`): read from ``ablation.json`` when ``echat ablate``
    wrote the folder (:func:`ablation_dir`), else run now when ``train`` (default: on the smoke preset only —
    the mini grid trains nine runs per seed, over an hour on two cores); else None."""
    out = ablation_dir(run_dir, preset, folder)
    if (out / "ablation.json").is_file():
        return json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    if not (recipe_name(preset) == "smoke" if train is None else train):
        return None
    return ablate(recipe_name(preset), out, seeds, limit or default_limit(preset), progress=False)
