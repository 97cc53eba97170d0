"""echat.workbench.runs: the find-or-build helpers of notebooks 04-07 (corpus, stages, evaluations)."""

import json
import math
import os

import pytest

from echat.data.mini import corpus as mini_corpus
from echat.data.mini.corpus import SIZES
from echat.train.recipes import recipe
from echat.train.run import RECIPE_PRESET
from echat.workbench import runs


def test_each_preset_trains_its_own_model_on_a_corpus_size_that_exists():
    for name in ("smoke", "mini", "osum-echat"):
        recipe_name = runs.recipe_name(name)
        assert recipe_name in SIZES  # the corpus the notebooks build for it
        assert RECIPE_PRESET[recipe_name] == (name if name != "osum-echat" else "mini")  # the model it trains
    assert runs.default_limit("smoke") < runs.default_limit("mini")


def test_run_dir_defaults_to_the_folder_make_demo_writes(tmp_path):
    assert runs.resolve_run_dir(tmp_path, "mini") == tmp_path
    assert runs.resolve_run_dir("", "mini").parts[-2:] == ("runs", "demo")
    assert runs.resolve_run_dir("", "smoke").name == "demo-smoke"


@pytest.mark.parametrize("name", ["smoke", "mini"])
def test_stage_folders_follow_the_recipe_order(tmp_path, name):
    for index, stage in enumerate(recipe(name)):
        [run] = runs.planned_runs(tmp_path, name, stage.name)
        assert run.folder == tmp_path / "recipe" / f"{index}_{stage.name}"
        assert run.index == index and run.stage == stage and not run.done
        assert runs.previous_stage(name, stage.name) == (recipe(name)[index - 1].name if index else None)
    with pytest.raises(ValueError, match="has no stage 'nope'"):
        runs.planned_runs(tmp_path, name, "nope")


def test_a_brief_run_and_another_think_get_their_own_folders(tmp_path):
    full = {s.name: s for s in recipe("mini", "language")}
    index = [s.name for s in recipe("mini")].index("empathy")
    steps = full["empathy"].max_steps - 1
    recipe_run, brief = runs.planned_runs(tmp_path, "mini", "empathy", think="language", max_steps=steps)
    assert recipe_run.folder == tmp_path / "recipe" / f"{index}_empathy-language"
    assert brief.folder == tmp_path / f"brief-{steps}" / f"{index}_empathy-language"
    assert brief.stage.max_steps <= steps and brief.stage.think == "language"
    # a cap at or above the recipe's length is the recipe itself: no brief folder
    assert len(runs.planned_runs(tmp_path, "mini", "empathy", max_steps=full["empathy"].max_steps)) == 1


def test_a_corpus_is_built_once_and_must_have_the_right_size(tmp_path, monkeypatch):
    calls = []

    def fake_build(out, size, seed):
        calls.append((out, size, seed))
        out.mkdir(parents=True)
        (out / "corpus.json").write_text(json.dumps({"size": size}))

    monkeypatch.setattr(mini_corpus, "build_corpus", fake_build)
    folder = runs.corpus_for(tmp_path, "smoke")
    assert folder == tmp_path / "echat-mini" and calls == [(folder, "smoke", 0)]
    assert runs.corpus_for(tmp_path, "smoke") == folder and len(calls) == 1  # found, not rebuilt
    with pytest.raises(ValueError, match="holds a smoke EChat-mini corpus, not mini"):
        runs.corpus_for(tmp_path, "mini")
    assert runs.corpus_for("", "mini", tmp_path / "mine") == tmp_path / "mine" and calls[-1][1] == "mini"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smoke_corpus):
    """A run folder where stages 0-2 of the smoke recipe were trained by find_or_train (a few seconds)."""
    out = tmp_path_factory.mktemp("run")
    generation = runs.find_or_train(out, "smoke", "generation", smoke_corpus, progress=False)
    assert generation.trained_now
    return out


def _forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a stage was trained again")

    monkeypatch.setattr(runs, "train_stage", fail)


def test_find_or_train_trains_earlier_stages_first_then_reuses(run_dir, smoke_corpus, monkeypatch):
    names = [f"{i}_{s.name}" for i, s in enumerate(recipe("smoke"))]
    for name in names[:3]:
        assert (run_dir / "recipe" / name / "final" / "model.safetensors").is_file()
        assert (run_dir / "recipe" / name / "metrics.jsonl").is_file()
    assert not (run_dir / "recipe" / names[3]).exists()
    _forbid_training(monkeypatch)
    found = runs.find_or_train(run_dir, "smoke", "understanding", smoke_corpus, progress=False)
    assert not found.trained_now and found.done and found.folder.name == names[1]
    assert runs.read_metrics(found.folder)[-1]["step"] == found.stage.max_steps
    assert runs.loss_plot(found).is_file()


def test_another_think_trains_only_its_own_stage(run_dir, smoke_corpus, monkeypatch):
    trained = []
    real = runs.train_stage
    monkeypatch.setattr(runs, "train_stage", lambda stage, *a, **k: trained.append(stage.name) or real(stage, *a, **k))
    language = runs.find_or_train(run_dir, "smoke", "empathy", smoke_corpus, think="language", progress=False)
    assert trained == ["empathy"] and language.stage.think == "language"
    assert language.folder.name.endswith("_empathy-language") and language.done


def test_a_brief_run_is_kept_apart_from_the_recipe(tmp_path, smoke_corpus):
    run = runs.find_or_train(tmp_path, "smoke", "text", smoke_corpus, max_steps=2, progress=False)
    assert run.folder == tmp_path / "brief-2" / "0_text" and run.stage.max_steps == 2
    assert not (tmp_path / "recipe").exists()
    assert runs.read_metrics(run.folder)[-1]["step"] == 2


def test_a_checkpoint_of_another_preset_is_refused(tmp_path, smoke_corpus):
    final = tmp_path / "recipe" / "0_text" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text(json.dumps({"name": "mini"}))
    (final / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="holds a mini model, not smoke"):
        runs.find_or_train(tmp_path, "smoke", "text", smoke_corpus, progress=False)


def test_find_or_evaluate_saves_and_reuses_reports(run_dir, smoke_corpus, monkeypatch):
    calls = []

    def fake_evaluate(model, corpus, stages, limit, think, progress):
        calls.append((tuple(stages), limit, think))
        return {"model": model.config.name, "stages": list(stages), "think": think, "limit": limit, "subsets": {}}

    monkeypatch.setattr(runs, "evaluate", fake_evaluate)
    [run] = runs.planned_runs(run_dir, "smoke", "understanding")
    report = runs.find_or_evaluate(run, smoke_corpus, "understanding", limit=1, progress=False)
    folder = runs.evaluation_folder(run, "understanding", limit=1)
    assert json.loads((folder / "eval.json").read_text())["checkpoint"] == str(run.final) == report["checkpoint"]
    assert runs.find_or_evaluate(run, smoke_corpus, "understanding", limit=1) == report and len(calls) == 1
    runs.find_or_evaluate(run, smoke_corpus, "understanding", limit=2, progress=False)  # other settings: run
    assert len(calls) == 2
    weights = run.final / "model.safetensors"
    later = (folder / "eval.json").stat().st_mtime + 10
    os.utime(weights, (later, later))  # the checkpoint changed after its report: evaluate again
    runs.find_or_evaluate(run, smoke_corpus, "understanding", limit=1, progress=False)
    assert len(calls) == 3
    assert runs.evaluation_folder(run, "empathy", "language", None).name == "eval_empathy_language_all"


def test_text_loss_of_the_test_text(run_dir, smoke_corpus):
    from echat.eval.stage_eval import load_model

    [run] = runs.planned_runs(run_dir, "smoke", "text")
    model = load_model(run.final)
    every = runs.text_loss(model, smoke_corpus)
    assert every["records"] > 0 and every["tokens"] > every["records"]
    assert math.isfinite(every["loss"]) and every["perplexity"] == pytest.approx(math.exp(every["loss"]))
    parts = [runs.text_loss(model, smoke_corpus, subset=s)["records"] for s in ("seen", "unseen")]
    assert sum(parts) == every["records"] and all(parts)
    assert runs.text_loss(model, smoke_corpus, limit=1)["records"] == 1


def test_tts_tokens_and_empathy_output_use_the_evaluation_settings(run_dir, smoke_corpus):
    from echat.data.schema import read_manifest
    from echat.eval.stage_eval import dialogue_records, load_model, speech_token_cap

    [run] = runs.planned_runs(run_dir, "smoke", "generation")
    model = load_model(run.final).eval()
    text = "Hello there."
    tokens = runs.tts_tokens(model, text)
    assert tokens == runs.tts_tokens(model, text)  # seeded: repeats exactly
    assert len(tokens) <= speech_token_cap(text) + 2  # + the two boundary ids at most
    record = dialogue_records(read_manifest(smoke_corpus / "test.jsonl"))[0]
    assert isinstance(runs.empathy_output(model, record, "tag"), str)
