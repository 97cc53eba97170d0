"""The trainer: a whole smoke recipe, exact resume, checkpoints, and every fault with one clear message."""

import json
import subprocess
import sys

import pytest
import torch

from echat.data.pipeline import load_split
from echat.train.recipes import family, stage
from echat.train.run import _model
from echat.train.trainer import Trainer, TrainingError, latest_checkpoint


def _trainer(corpus, out, steps=4, **kw):
    model = _model("smoke", corpus, None)
    samples = load_split(corpus, "train", model.config)
    return Trainer(model, stage("smoke", "understanding", max_steps=steps), samples, out, progress=False, **kw)


def test_smoke_recipe_trains_every_stage_from_the_command_line(smoke_corpus, tmp_path):
    out = subprocess.run([sys.executable, "-m", "echat", "train", "--recipe", "smoke", "--data", str(smoke_corpus),
                          "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("0_text", "1_understanding", "2_generation", "3_empathy"):
        run = tmp_path / "runs" / name
        assert (run / "final" / "model.safetensors").exists() and (run / "loss.png").exists()
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps if "loss" in s)
    assert "phase 1" in out.stdout and "trainable x lr" in out.stdout


def test_resume_continues_exactly(smoke_corpus, tmp_path):
    torch.manual_seed(0)
    straight = _trainer(smoke_corpus, tmp_path / "a", steps=6)
    torch.manual_seed(0)
    halves = _trainer(smoke_corpus, tmp_path / "b", steps=6)
    straight.fit()
    halves.fit(until=3)
    torch.manual_seed(123)  # the resumed run must not depend on the RNG it starts with
    resumed = _trainer(smoke_corpus, tmp_path / "b", steps=6)
    resumed.resume()
    resumed.fit()
    a = [h["loss"] for h in straight.state.history if "loss" in h]
    b = [h["loss"] for h in resumed.state.history if "loss" in h]
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_checkpoints_are_kept_last_k_and_latest_points_at_the_newest(smoke_corpus, tmp_path):
    trainer = _trainer(smoke_corpus, tmp_path, steps=5, save_every=1, keep=2)
    trainer.fit()
    kept = sorted(p.name for p in (tmp_path / "ckpt").glob("step_*"))
    assert kept == ["step_000004", "step_000005"]
    assert latest_checkpoint(tmp_path).name == "step_000005"
    assert not list((tmp_path / "ckpt").glob(".*tmp"))


def test_a_non_finite_loss_stops_with_the_step_and_batch_keys(smoke_corpus, tmp_path):
    trainer = _trainer(smoke_corpus, tmp_path)
    with torch.no_grad():
        trainer.bare_model().adapter.proj.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite loss nan at step 0, batch text: \S+_"):
        trainer.fit()


def test_a_full_disk_leaves_the_previous_checkpoint_intact(smoke_corpus, tmp_path, monkeypatch):
    trainer = _trainer(smoke_corpus, tmp_path, steps=2)
    trainer.fit(until=1)
    before = latest_checkpoint(tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(TrainingError, match="No space left.*previous checkpoint is intact"):
        trainer.fit()
    assert latest_checkpoint(tmp_path) == before and (before / "trainer_state.pt").exists()


def _interrupt_at(trainer, monkeypatch, step):
    real = trainer._train_step

    def interrupted(batch):
        if trainer.state.step == step:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(trainer, "_train_step", interrupted)


def test_ctrl_c_saves_a_resumable_checkpoint(smoke_corpus, tmp_path, monkeypatch):
    trainer = _trainer(smoke_corpus, tmp_path, steps=4)
    _interrupt_at(trainer, monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert latest_checkpoint(tmp_path).name == "step_000002"
    again = _trainer(smoke_corpus, tmp_path, steps=4)
    again.resume()
    assert again.state.step == 2
    again.fit()
    assert again.state.step == 4


def test_ctrl_c_while_a_checkpoint_is_written_leaves_no_half_written_folder(smoke_corpus, tmp_path, monkeypatch):
    trainer = _trainer(smoke_corpus, tmp_path, steps=2)
    trainer.fit(until=1)

    def second_ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step_000001"]
    assert latest_checkpoint(tmp_path).name == "step_000001"


def test_an_interrupt_the_other_ranks_do_not_join_stops_with_one_line_naming_the_checkpoint_kept(
        smoke_corpus, tmp_path, monkeypatch):
    trainer = _trainer(smoke_corpus, tmp_path / "run", steps=4, barrier_timeout_s=2)
    trainer.fit(until=1)
    monkeypatch.setattr(trainer.interrupt_barrier, "wait", lambda: False)  # the other ranks never come
    _interrupt_at(trainer, monkeypatch, 2)
    with pytest.raises(TrainingError, match=r"^rank 0 of 1 interrupted at step 2: the other ranks did not reach the "
                       r"checkpoint barrier within 2 s \(ECHAT_BARRIER_TIMEOUT_S\), so no checkpoint of this step was "
                       r"written; the last complete checkpoint is kept: \S+step_000001; run the same command with "
                       r"--resume to continue from it$"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "run").name == "step_000001"
    fresh = _trainer(smoke_corpus, tmp_path / "fresh", steps=4)
    monkeypatch.setattr(fresh.interrupt_barrier, "wait", lambda: False)
    _interrupt_at(fresh, monkeypatch, 0)
    with pytest.raises(TrainingError, match="of this step was written; there is no earlier checkpoint in "):
        fresh.fit()
    assert not (tmp_path / "fresh" / "ckpt").exists()


def test_a_checkpoint_of_another_stage_or_preset_is_refused(smoke_corpus, tmp_path):
    _trainer(smoke_corpus, tmp_path, steps=1).fit()
    model = _model("smoke", smoke_corpus, None)
    other = Trainer(model, stage("smoke", "generation", max_steps=1), load_split(smoke_corpus, "train", model.config),
                    tmp_path, progress=False)
    with pytest.raises(TrainingError, match="written by stage understanding"):
        other.resume()
    with pytest.raises(TrainingError, match="holds a smoke model, not mini"):
        _model("mini", smoke_corpus, tmp_path)


def test_missing_data_and_empty_manifests_are_clear_errors(smoke_corpus, tmp_path):
    out = subprocess.run([sys.executable, "-m", "echat", "train", "--stage", "understanding", "--preset", "smoke",
                          "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "no such data folder" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train.jsonl").write_text("")
    with pytest.raises(ValueError, match="no usable samples"):
        load_split(tmp_path / "empty", "train", _model("smoke", smoke_corpus, None).config)


@pytest.mark.parametrize("stage_name", ["text", "understanding"])
def test_dev_evaluation_reports_the_stage_tasks_and_decodes(smoke_corpus, tmp_path, stage_name):
    model = _model("smoke", smoke_corpus, None)
    trainer = Trainer(model, stage("smoke", stage_name, max_steps=2), load_split(smoke_corpus, "train", model.config),
                      tmp_path, dev=load_split(smoke_corpus, "dev", model.config), eval_every=2, progress=False)
    trainer.fit()
    dev = [h for h in trainer.state.history if "dev_loss" in h]
    assert len(dev) == 1 and dev[0]["dev_loss"] and dev[0]["decodes"]
    expected = {"text": {"text2text", "text"}, "understanding": {"text"}}[stage_name]  # stage 0 adds dictation
    assert set(dev[0]["dev_loss"]) == expected


def test_the_dev_loss_reads_the_first_records_of_each_family(smoke_corpus, tmp_path, monkeypatch):
    import echat.train.trainer as trainer_module

    model = _model("smoke", smoke_corpus, None)
    dev = load_split(smoke_corpus, "dev", model.config)
    recipe = stage("smoke", "understanding", max_steps=2)
    families = {f for p in recipe.phases for f, _ in p.mix}
    pool = trainer_module.RecordPool.from_records([s.record for s in dev])
    assert all(len(pool.by_family[f]) > 1 for f in families)
    monkeypatch.setattr(trainer_module, "DEV_LOSS_RECORDS", 1)
    trainer = Trainer(model, recipe, load_split(smoke_corpus, "train", model.config), tmp_path, dev=dev, eval_every=2,
                      progress=False)
    trainer.fit()
    evaluated = [h for h in trainer.state.history if "dev_loss" in h]
    assert [h["dev_records"] for h in evaluated] == [len(families)]


def test_a_spread_tags_phase_sets_the_tag_rows_apart_once_at_its_start(smoke_corpus, tmp_path, monkeypatch):
    import dataclasses

    import echat.train.trainer as trainer_module
    from echat.train.recipes import Phase

    calls = []
    real = trainer_module.spread_tag_rows
    monkeypatch.setattr(trainer_module, "spread_tag_rows", lambda model, **kw: calls.append(
        trainer.state.step) or real(model, **kw))
    model = _model("smoke", smoke_corpus, None)
    samples = load_split(smoke_corpus, "train", model.config)
    text = stage("smoke", "text")
    asr = Phase((("asr", 1.0),), 2)
    tags = Phase((("asrp", 1.0), ("only_p", 1.0)), 3, spread_tags=True)
    recipe = dataclasses.replace(text, phases=(asr, tags), random_tags=1.0)
    trainer = Trainer(model, recipe, samples, tmp_path / "run", progress=False, eval_every=0, save_every=0)
    trainer.fit()
    assert calls == [2]  # once, before the first step of the second phase
    drilled = [k for k in trainer.audio if k.endswith("~tags")]
    assert drilled  # the ASR+P and only-P records of the tag phase had their labels redrawn


def test_tagged_dictation_writes_tags_into_asr_transcripts_only(smoke_corpus, tmp_path):
    import dataclasses

    from echat.train.bridge import TAGGED

    model = _model("smoke", smoke_corpus, None)
    samples = load_split(smoke_corpus, "train", model.config)
    recipe = dataclasses.replace(stage("smoke", "text"), tagged_dictation=1.0, random_tags=0.0)
    trainer = Trainer(model, recipe, samples, tmp_path / "run", progress=False, eval_every=0, save_every=0)
    drawn = [r for phase in range(len(recipe.phases)) for b in trainer.epoch_batches(0, phase) for r in b.keys]
    tagged = [k for k in drawn if k.endswith(TAGGED)]
    assert tagged and all(trainer.audio[k].record.task == "<TRANSCRIBE>" for k in tagged)
    assert all(k.endswith(TAGGED) for k in drawn if trainer.audio.get(k) and
               trainer.audio[k].record.task == "<TRANSCRIBE>" and trainer.audio[k].record.wav)


def test_resuming_from_a_damaged_trainer_state_is_one_line_without_torchs_advice(smoke_corpus, tmp_path):
    from echat.models.checkpoint import CheckpointError

    trainer = _trainer(smoke_corpus, tmp_path, steps=2, save_every=1)
    trainer.fit()
    state = latest_checkpoint(tmp_path) / "trainer_state.pt"
    state.write_bytes(b"not a trainer state")
    with pytest.raises(CheckpointError, match="trainer_state.pt: not a") as caught:
        _trainer(smoke_corpus, tmp_path, steps=2).resume()
    assert "weights_only" not in str(caught.value)


def test_think_drills_are_drawn_from_think_records_only_and_read_from_exact_frames(smoke_corpus, tmp_path):
    import dataclasses

    from echat.train.bridge import DRILL, BridgedModel

    model = _model("smoke", smoke_corpus, None)
    samples = load_split(smoke_corpus, "train", model.config)
    recipe = dataclasses.replace(stage("smoke", "empathy"), think_drills=1.0)
    trainer = Trainer(model, recipe, samples, tmp_path / "run", progress=False, eval_every=0, save_every=0)
    assert isinstance(trainer.acc.unwrap_model(trainer.model), BridgedModel)
    drawn = [k for b in trainer.epoch_batches(0, 0) for k in b.keys]
    drills = [k for k in drawn if k.endswith(DRILL)]
    assert drills and all(family(trainer.audio[k].record) in ("s2t_think", "s2s_think") for k in drills)
    assert not [k for k in drawn if not k.endswith(DRILL) and family(trainer.audio[k].record) in
                ("s2t_think", "s2s_think") and len(trainer.audio[k].record.extra["q_txt"].split()) > 1]
    trainer.fit(until=2)
    assert trainer.state.step == 2
