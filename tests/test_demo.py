"""echat.demo: the find-or-build helpers of notebooks 04-07, and `make demo` end to end on the smoke preset."""

import json
import math
import os

import pytest

from echat import demo
from echat.train.recipes import recipe


def test_presets_map_to_recipes_and_limits():
    assert demo.recipe_name("smoke") == "smoke"
    assert demo.recipe_name("mini") == demo.recipe_name("osum-echat") == "mini"
    assert demo.default_limit("smoke") < demo.default_limit("mini")


def test_run_dir_defaults_to_the_folder_make_demo_writes(tmp_path):
    assert demo.resolve_run_dir(tmp_path, "mini") == tmp_path
    assert demo.resolve_run_dir("", "mini").parts[-2:] == ("runs", "demo")
    assert demo.resolve_run_dir("", "smoke").name == "demo-smoke"


@pytest.mark.parametrize("name", ["smoke", "mini"])
def test_stage_folders_follow_the_recipe_order(tmp_path, name):
    for index, stage in enumerate(recipe(name)):
        [run] = demo.planned_runs(tmp_path, name, stage.name)
        assert run.folder == tmp_path / "recipe" / f"{index}_{stage.name}"
        assert run.index == index and run.stage == stage and not run.done
        assert demo.previous_stage(name, stage.name) == (recipe(name)[index - 1].name if index else None)
    with pytest.raises(ValueError, match="has no stage 'nope'"):
        demo.planned_runs(tmp_path, name, "nope")


def test_a_brief_run_and_another_think_get_their_own_folders(tmp_path):
    full = {s.name: s for s in recipe("mini", "language")}
    index = [s.name for s in recipe("mini")].index("empathy")
    steps = full["empathy"].max_steps - 1
    recipe_run, brief = demo.planned_runs(tmp_path, "mini", "empathy", think="language", max_steps=steps)
    assert recipe_run.folder == tmp_path / "recipe" / f"{index}_empathy-language"
    assert brief.folder == tmp_path / f"brief-{steps}" / f"{index}_empathy-language"
    assert brief.stage.max_steps <= steps and brief.stage.think == "language"
    # a cap at or above the recipe's length is the recipe itself: no brief folder
    assert len(demo.planned_runs(tmp_path, "mini", "empathy", max_steps=full["empathy"].max_steps)) == 1


def test_a_corpus_is_built_once_and_must_have_the_right_size(tmp_path, monkeypatch):
    import echat.data.mini_corpus as mini_corpus

    calls = []

    def fake_build(out, size, seed):
        calls.append((out, size, seed))
        out.mkdir(parents=True)
        (out / "corpus.json").write_text(json.dumps({"size": size}))

    monkeypatch.setattr(mini_corpus, "build_corpus", fake_build)
    folder = demo.corpus_for(tmp_path, "smoke")
    assert folder == tmp_path / "echat-mini" and calls == [(folder, "smoke", 0)]
    assert demo.corpus_for(tmp_path, "smoke") == folder and len(calls) == 1  # found, not rebuilt
    with pytest.raises(ValueError, match="holds a smoke EChat-mini corpus, not mini"):
        demo.corpus_for(tmp_path, "mini")
    assert demo.corpus_for("", "mini", tmp_path / "mine") == tmp_path / "mine" and calls[-1][1] == "mini"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smoke_corpus):
    """A run folder where stages 0-2 of the smoke recipe were trained by find_or_train (a few seconds)."""
    out = tmp_path_factory.mktemp("run")
    generation = demo.find_or_train(out, "smoke", "generation", smoke_corpus, progress=False)
    assert generation.trained_now
    return out


def _forbid_training(monkeypatch):
    import echat.train.run as run

    def fail(*args, **kwargs):
        raise AssertionError("a stage was trained again")

    monkeypatch.setattr(run, "train_stage", fail)


def test_find_or_train_trains_earlier_stages_first_then_reuses(run_dir, smoke_corpus, monkeypatch):
    names = [f"{i}_{s.name}" for i, s in enumerate(recipe("smoke"))]
    for name in names[:3]:
        assert (run_dir / "recipe" / name / "final" / "model.safetensors").is_file()
        assert (run_dir / "recipe" / name / "metrics.jsonl").is_file()
    assert not (run_dir / "recipe" / names[3]).exists()
    _forbid_training(monkeypatch)
    found = demo.find_or_train(run_dir, "smoke", "understanding", smoke_corpus, progress=False)
    assert not found.trained_now and found.done and found.folder.name == names[1]
    assert demo.read_metrics(found.folder)[-1]["step"] == found.stage.max_steps
    assert demo.loss_plot(found).is_file()


def test_another_think_trains_only_its_own_stage(run_dir, smoke_corpus, monkeypatch):
    import echat.train.run as run

    trained = []
    real = run.train_stage
    monkeypatch.setattr(run, "train_stage", lambda stage, *a, **k: trained.append(stage.name) or real(stage, *a, **k))
    language = demo.find_or_train(run_dir, "smoke", "empathy", smoke_corpus, think="language", progress=False)
    assert trained == ["empathy"] and language.stage.think == "language"
    assert language.folder.name.endswith("_empathy-language") and language.done


def test_a_brief_run_is_kept_apart_from_the_recipe(tmp_path, smoke_corpus):
    run = demo.find_or_train(tmp_path, "smoke", "text", smoke_corpus, max_steps=2, progress=False)
    assert run.folder == tmp_path / "brief-2" / "0_text" and run.stage.max_steps == 2
    assert not (tmp_path / "recipe").exists()
    assert demo.read_metrics(run.folder)[-1]["step"] == 2


def test_a_checkpoint_of_another_preset_is_refused(tmp_path, smoke_corpus):
    final = tmp_path / "recipe" / "0_text" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text(json.dumps({"name": "mini"}))
    (final / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="holds a mini model, not smoke"):
        demo.find_or_train(tmp_path, "smoke", "text", smoke_corpus, progress=False)


def test_find_or_evaluate_saves_and_reuses_reports(run_dir, smoke_corpus, monkeypatch):
    import echat.eval.stage_eval as stage_eval

    calls = []

    def fake_evaluate(model, corpus, stages, limit, think, progress):
        calls.append((tuple(stages), limit, think))
        return {"model": model.config.name, "stages": list(stages), "think": think, "limit": limit, "subsets": {}}

    monkeypatch.setattr(stage_eval, "evaluate", fake_evaluate)
    [run] = demo.planned_runs(run_dir, "smoke", "understanding")
    report = demo.find_or_evaluate(run, smoke_corpus, "understanding", limit=1, progress=False)
    folder = demo.evaluation_folder(run, "understanding", limit=1)
    assert json.loads((folder / "eval.json").read_text())["checkpoint"] == str(run.final) == report["checkpoint"]
    assert demo.find_or_evaluate(run, smoke_corpus, "understanding", limit=1) == report and len(calls) == 1
    demo.find_or_evaluate(run, smoke_corpus, "understanding", limit=2, progress=False)  # other settings: run
    assert len(calls) == 2
    weights = run.final / "model.safetensors"
    later = (folder / "eval.json").stat().st_mtime + 10
    os.utime(weights, (later, later))  # the checkpoint changed after its report: evaluate again
    demo.find_or_evaluate(run, smoke_corpus, "understanding", limit=1, progress=False)
    assert len(calls) == 3
    assert demo.evaluation_folder(run, "empathy", "language", None).name == "eval_empathy_language_all"


def test_text_loss_of_the_test_text(run_dir, smoke_corpus):
    from echat.eval.stage_eval import load_model

    [run] = demo.planned_runs(run_dir, "smoke", "text")
    model = load_model(run.final)
    every = demo.text_loss(model, smoke_corpus)
    assert every["records"] > 0 and every["tokens"] > every["records"]
    assert math.isfinite(every["loss"]) and every["perplexity"] == pytest.approx(math.exp(every["loss"]))
    parts = [demo.text_loss(model, smoke_corpus, subset=s)["records"] for s in ("seen", "unseen")]
    assert sum(parts) == every["records"] and all(parts)
    assert demo.text_loss(model, smoke_corpus, limit=1)["records"] == 1


def test_tts_tokens_and_empathy_output_use_the_evaluation_settings(run_dir, smoke_corpus):
    from echat.data.schema import read_manifest
    from echat.eval.stage_eval import dialogue_records, load_model, speech_token_cap

    [run] = demo.planned_runs(run_dir, "smoke", "generation")
    model = load_model(run.final).eval()
    text = "Hello there."
    tokens = demo.tts_tokens(model, text)
    assert tokens == demo.tts_tokens(model, text)  # seeded: repeats exactly
    assert len(tokens) <= speech_token_cap(text) + 2  # + the two boundary ids at most
    record = dialogue_records(read_manifest(smoke_corpus / "test.jsonl"))[0]
    assert isinstance(demo.empathy_output(model, record, "tag"), str)


@pytest.mark.slow
def test_demo_end_to_end_on_smoke(tmp_path, smoke_corpus, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "echat-mini").symlink_to(smoke_corpus)  # the session's smoke corpus stands in for the build
    assert demo.main(["--preset", "smoke", "--out", str(out), "--limit", "1", "--only", "04"]) == 0
    printed = capsys.readouterr().out
    assert "[demo 5/5]" in printed and "figures.md" in printed and "index.html" in printed
    figures = json.loads((out / "figures.json").read_text())
    assert [s["stage"] for s in figures["training"]] == [s.name for s in recipe("smoke")]
    assert all(s["seconds"] is not None and s["final_train_loss"] is not None for s in figures["training"])
    assert set(figures["evaluation"]) == {"understanding", "generation", "empathy"}
    assert figures["evaluation"]["understanding"]["subsets"]["seen"]["items"] == 1
    assert [n["name"] for n in figures["notebooks"]] == ["04_stage0_text_pretraining"]
    assert figures["notebooks"][0]["ok"]
    text = (out / "figures.md").read_text()
    assert "## Training" in text and "ASR CER" in text and "loss.png" in text
    assert figures["bridge_probe"]["subsets"]["seen"]["clips"] == 1 and "gender_accuracy" in text
    assert 'href="figures.md"' in (out / "index.html").read_text()
    timings = json.loads((out / "recipe" / "timings.json").read_text())
    # a second run finds everything: nothing is trained or evaluated again, the timings stay
    assert demo.main(["--preset", "smoke", "--out", str(out), "--limit", "1", "--no-notebooks"]) == 0
    assert json.loads((out / "recipe" / "timings.json").read_text()) == timings
    again = json.loads((out / "figures.json").read_text())
    assert again["evaluation"] == figures["evaluation"]
    assert "stage text:" not in capsys.readouterr().out  # the trainer prints its recipe when it starts
