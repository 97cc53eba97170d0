"""Running stages on a corpus folder: the training seed and the encoder cache kept beside the corpus."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from echat.config import GenerationOptions
from echat.models.checkpoint import WEIGHTS
from echat.models.echat import EChat
from echat.models.encoder import EncoderCache
from echat.train.recipes import stage
from echat.train.run import train_stage
from echat.train.trainer import TrainingError


def test_the_training_seed_decides_a_fresh_run(smoke_corpus, tmp_path):
    text = stage("smoke", "text", max_steps=2)
    runs = {name: train_stage(text, smoke_corpus, tmp_path / name, "smoke", progress=False, seed=seed)
            for name, seed in (("a", 1), ("b", 1), ("c", 2))}
    weights = {name: load_file(str(folder / WEIGHTS)) for name, folder in runs.items()}
    key = "llm.lm_head.weight"  # tied: the token embeddings
    assert key in weights["a"]
    assert all((weights["a"][k] == weights["b"][k]).all() for k in weights["a"])
    assert not (weights["a"][key] == weights["c"][key]).all()
    assert EChat.from_checkpoint(runs["a"]).config.train.seed == 1


def test_a_frozen_encoder_is_run_once_per_clip_and_corpus(smoke_corpus, tmp_path):
    """Stage 1 keeps the encoder frozen: its frames are saved beside the corpus, and the next stage that
    freezes the same encoder starts from them."""
    understanding = stage("smoke", "understanding", max_steps=2)
    final = train_stage(understanding, smoke_corpus, tmp_path / "u", "smoke", progress=False)
    model = EChat.from_checkpoint(final)
    cache = EncoderCache.beside(smoke_corpus, model.encoder)
    assert cache.path.exists() and len(cache.frames) > 0


def test_the_adapter_keeps_what_stage_1_taught_it_through_stages_2_and_3(smoke_corpus, tmp_path):
    """Stages 2 and 3 move the LLM but not one adapter weight (its cue classifiers have no loss of their
    own there, see echat.train.recipes)."""
    finals, init = {}, None
    for name in ("understanding", "generation", "empathy"):  # each stage from the one before it
        finals[name] = init = train_stage(stage("smoke", name, max_steps=2), smoke_corpus, tmp_path / name,
                                          "smoke", init=init, progress=False)
    before, after = (load_file(str(finals[name] / WEIGHTS)) for name in ("understanding", "empathy"))
    adapter = [k for k in before if k.startswith("adapter.")]
    assert adapter and all((before[k] == after[k]).all() for k in adapter)
    assert not (before["llm.lm_head.weight"] == after["llm.lm_head.weight"]).all()


@pytest.mark.parametrize("name", ["text", "understanding", "empathy"])
def test_the_dev_evaluations_change_no_weight(smoke_corpus, tmp_path, name):
    """A stage evaluated after every step (dev loss, decodes, the hearing figures) ends with the same weights
    as one never evaluated: how often a recipe evaluates decides only its time (recipes._EVAL_EVERY)."""
    cut = stage("smoke", name, max_steps=3)
    init = None
    if name == "empathy":
        init = train_stage(stage("smoke", "generation", max_steps=2), smoke_corpus, tmp_path / "g", "smoke",
                           progress=False)
    finals = {every: train_stage(cut, smoke_corpus, tmp_path / f"e{every}", "smoke", init=init, progress=False,
                                 seed=1, eval_every=every) for every in (1, 0)}
    evaluated = [json.loads(line) for line in (tmp_path / "e1" / "metrics.jsonl").read_text().splitlines()]
    assert sum("dev_loss" in record for record in evaluated) == 3
    watched, unwatched = (load_file(str(finals[every] / WEIGHTS)) for every in (1, 0))
    assert all(torch.equal(watched[k], unwatched[k]) for k in watched)


def test_hearing_history_plots_whatever_the_stage_logged(tmp_path):
    from echat.train.plots import plot_hearing_history

    stage0 = [{"step": 100, "dictation_first_token": 0.2}, {"step": 200, "dictation_first_token": 0.9}]
    stage1 = [{"step": 100, "hearing_first_token": 0.3, "probe_cer": 0.4}, {"step": 200, "loss": 1.0}]
    for name, history in (("s0.png", stage0), ("s1.png", stage1)):
        plot_hearing_history(history, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000


def test_a_recipe_chains_its_stages_and_skips_the_finished_ones(smoke_corpus, tmp_path, monkeypatch):
    import echat.train.run as run

    calls = []

    def fake_train(stage, corpus, out, preset, init=None, **kw):
        calls.append((stage.name, out.name, preset, init and init.parent.name, stage.think))
        (out / "final").mkdir(parents=True)
        (out / "final" / "model.safetensors").write_bytes(b"")
        return out / "final"

    monkeypatch.setattr(run, "train_stage", fake_train)
    finals = run.run_recipe("smoke", smoke_corpus, tmp_path, think="language")
    assert [f.parent.name for f in finals] == ["0_text", "1_understanding", "2_generation", "3_empathy"]
    assert [c[3] for c in calls] == [None, "0_text", "1_understanding", "2_generation"]
    assert {c[2] for c in calls} == {"smoke"} and calls[-1][4] == "language"
    calls.clear()
    assert run.run_recipe("smoke", smoke_corpus, tmp_path) == finals and not calls  # all found


def test_a_think_stage_stores_its_think_mode_in_its_checkpoints(smoke_corpus, tmp_path):
    empathy = stage("smoke", "empathy", "language", max_steps=1)
    final = train_stage(empathy, smoke_corpus, tmp_path / "run", "smoke", progress=False)
    assert json.loads((final / "config.json").read_text())["think"] == "language"
    assert EChat.from_checkpoint(final).config.think == "language"


def test_a_final_checkpoint_keeps_its_speech_tokenizer_and_speaks(smoke_corpus, tmp_path):
    from echat.eval.stage_eval import load_model

    final = train_stage(stage("smoke", "generation", max_steps=1), smoke_corpus, tmp_path / "run", "smoke",
                        progress=False)
    assert (final / "speech_tokenizer" / "speech_codebook.npy").is_file()
    model = load_model(final)
    result = model.generate(text="Hello there.", task="<TEXT2TOKEN>",
                            options=GenerationOptions(do_sample=False, max_speech_tokens=12))
    assert model.token2wav is not None and result.speech_tokens
    assert result.audio.shape == model.token2wav(result.speech_tokens).shape


def test_a_run_refuses_a_missing_corpus_and_a_checkpoint_of_another_preset(smoke_corpus, tmp_path):
    text = stage("smoke", "text", max_steps=1)
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        train_stage(text, tmp_path / "none", tmp_path / "run", "smoke", progress=False)
    first = train_stage(text, smoke_corpus, tmp_path / "run", "smoke", progress=False)
    with pytest.raises(TrainingError, match="holds a smoke model, not mini"):
        train_stage(text, smoke_corpus, tmp_path / "again", "mini", init=first, progress=False)


def test_a_killed_recipe_resumes_its_unfinished_stage_and_logs_each_step_once(smoke_corpus, tmp_path, monkeypatch):
    """``echat train --recipe … --resume``: finished stages are kept, the unfinished one continues from its
    latest checkpoint, and the steps it had logged after that checkpoint are logged once, not twice."""
    from echat.train.run import run_recipe
    from echat.train.trainer import Trainer

    after_step = Trainer._after_step

    class Killed(BaseException):
        """A kill the trainer cannot catch (Ctrl-C would save a checkpoint at the step it stops at)."""

    def killed_at_step_3_of_stage_1(self):
        after_step(self)
        if self.recipe.name == "understanding" and self.state.step == 3:
            raise Killed

    monkeypatch.setattr(Trainer, "_after_step", killed_at_step_3_of_stage_1)
    with pytest.raises(Killed):
        run_recipe("smoke", smoke_corpus, tmp_path, progress=False, save_every=2)
    monkeypatch.undo()
    stage_0 = (tmp_path / "0_text" / "final" / "model.safetensors").stat().st_mtime_ns
    run_recipe("smoke", smoke_corpus, tmp_path, progress=False, save_every=2, resume=True)
    assert (tmp_path / "0_text" / "final" / "model.safetensors").stat().st_mtime_ns == stage_0
    logged = [json.loads(line) for line in (tmp_path / "1_understanding" / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in logged if "loss" in record]
    assert steps == list(range(1, stage("smoke", "understanding").max_steps + 1))
    assert (tmp_path / "3_empathy" / "final" / "model.safetensors").exists()
