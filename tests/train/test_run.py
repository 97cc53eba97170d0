"""Running stages on a corpus folder: the training seed and the encoder cache kept beside the corpus."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from echat.models.checkpoint import WEIGHTS
from echat.models.echat import EChat
from echat.models.encoder import EncoderCache
from echat.train.recipes import stage
from echat.train.run import train_stage


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
