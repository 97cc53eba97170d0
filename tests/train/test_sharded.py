"""Checkpoints of multi-process runs: under FSDP2 (``configs/accelerate/fsdp.yaml``) a checkpoint is one full
echat folder and a resumed run goes on as if never stopped; the FSDP optimizer state (by parameter name) also
resumes in one process, a ZeRO-2 one stops an unsharded resume with one line; under DDP each rank gets its own
RNG streams back; FSDP refuses 0-d parameters, naming them.

The ranks are the worker of ``test_distributed.py`` (two CPU processes over gloo, free port, bounded by a
timeout), started with the shipped ``fsdp.yaml``. accelerate runs FSDP only on accelerator devices and on the
CPU falls back to DDP quietly, so ``--fsdp`` makes the worker turn its process state to FSDP with the plugin
that config's environment describes (``ddp_worker.cpu_fsdp_accelerator``); without it the same launch is DDP.
Straight runs and resumed runs agree to float rounding (about 4e-9 here; 3e-4 without each rank's own RNG
streams, from dropout). DeepSpeed ZeRO-2 needs CUDA and is not tested here."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import load_file

from echat.data.pipeline import load_split
from echat.models.checkpoint import CHECKPOINTS, LATEST, WEIGHTS, latest_checkpoint, load_tensors
from echat.models.echat import EChat
from echat.train.bridge import BridgedModel
from echat.train.recipes import stage
from echat.train.run import _model
from echat.train.sharded import OPTIMIZER_BY_NAME, OPTIMIZER_DEEPSPEED, check_shardable
from echat.train.trainer import Trainer, TrainingError
from tests.train.test_distributed import ROOT, WORKER

FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
STEPS = 4  # checkpoints at steps 2 and 4; the resumed runs start from step 2
CLOSE = 1e-6  # straight vs resumed: float rounding, far below what a lost state changes (3e-4 and more)


def launch_ranks(corpus: Path, out: Path, *worker_args: str) -> list[dict]:
    """The worker on two CPU ranks under fsdp.yaml (a ``generation`` stage of ``STEPS`` steps); their reports."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
               "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "0", str(WORKER), "--corpus", str(corpus), "--out", str(out), "--stage", "generation", "--steps",
               str(STEPS), *worker_args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, f"accelerate launch failed ({done.returncode}):\n{done.stderr[-6000:]}"
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank_*.json"))]


def resumed_from_step_2(corpus: Path, straight: Path, out: Path, *worker_args: str) -> Path:
    """A copy of the straight run cut back to its step-2 checkpoint, resumed to the end; its last checkpoint."""
    shutil.copytree(straight / "run", out / "run")
    shutil.rmtree(out / "run" / CHECKPOINTS / f"step_{STEPS:06d}")
    (out / "run" / CHECKPOINTS / LATEST).write_text("step_000002\n")
    launch_ranks(corpus, out, "--resume", *worker_args)
    return latest_checkpoint(out / "run")


def assert_same_training(a: Path, b: Path) -> None:
    """Checkpoints ``a`` and ``b`` hold the same weights and optimizer moments, to float rounding."""
    wa, wb = load_file(a / WEIGHTS), load_file(b / WEIGHTS)
    assert list(wa) == list(wb)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < CLOSE
    sa, sb = load_tensors(a / "trainer_state.pt"), load_tensors(b / "trainer_state.pt")
    assert sa["step"] == sb["step"] == STEPS and sa["scheduler"] == sb["scheduler"]
    for name, moments in sa["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert float((moments[key] - sb["optimizer"]["state"][name][key]).abs().max()) < CLOSE, (name, key)


@pytest.fixture(scope="module")
def fsdp_run(smoke_corpus, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A straight FSDP2 run of ``STEPS`` steps on two CPU ranks (evaluating and saving every 2 steps)."""
    out = tmp_path_factory.mktemp("fsdp")
    return out, launch_ranks(smoke_corpus, out, "--fsdp")


@pytest.mark.slow
def test_fsdp2_shards_on_two_cpu_ranks_and_writes_one_full_echat_checkpoint(fsdp_run, tmp_path):
    out, ranks = fsdp_run
    assert {(r["distributed_type"], r["backend"], r["parameter_type"]) for r in ranks} == {
        ("DistributedType.FSDP", "gloo", "DTensor")}
    final = out / "run" / CHECKPOINTS / f"step_{STEPS:06d}"
    state = load_tensors(final / "trainer_state.pt")
    assert state["optimizer_layout"] == OPTIMIZER_BY_NAME and len(state["rank_rng"]) == 2
    model = EChat.from_checkpoint(final)  # one unsharded file, every key at its full shape
    model.save(tmp_path / "plain")  # the same model written by one process: the same keys, ties and shapes
    with safe_open(final / WEIGHTS, "pt") as ours, safe_open(tmp_path / "plain" / WEIGHTS, "pt") as plain:
        assert ours.metadata() == plain.metadata() and sorted(ours.keys()) == sorted(plain.keys())
        assert all(ours.get_slice(k).get_shape() == plain.get_slice(k).get_shape() for k in plain.keys())
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("dev_loss" in m for m in metrics) == 2  # the evaluations ran on the sharded model


@pytest.mark.slow
def test_fsdp2_resumed_run_matches_the_straight_run(fsdp_run, smoke_corpus, tmp_path):
    out, _ = fsdp_run
    resumed = resumed_from_step_2(smoke_corpus, out, tmp_path, "--fsdp")
    assert_same_training(out / "run" / CHECKPOINTS / f"step_{STEPS:06d}", resumed)


@pytest.mark.slow
def test_an_fsdp_checkpoint_resumes_in_one_process(fsdp_run, smoke_corpus, tmp_path):
    out, _ = fsdp_run
    checkpoint = out / "run" / CHECKPOINTS / "step_000002"
    saved = load_tensors(checkpoint / "trainer_state.pt")["optimizer"]["state"]
    torch.manual_seed(0)
    model = _model("smoke", smoke_corpus, None)
    trainer = Trainer(model, stage("smoke", "generation", max_steps=STEPS), load_split(smoke_corpus, "train",
                      model.config), tmp_path / "run", progress=False)
    (tmp_path / "run").mkdir()  # resume rewrites the run's metrics.jsonl
    trainer.resume(checkpoint)
    by_name = dict(trainer.acc.unwrap_model(trainer.model).named_parameters())
    moments = {n: trainer.optimizer.state[by_name[n]]["exp_avg"] for n in saved}
    assert trainer.state.step == 2 and all(torch.equal(moments[n], saved[n]["exp_avg"]) for n in saved)
    assert torch.equal(by_name["speech_head.weight"], load_file(checkpoint / WEIGHTS)["speech_head.weight"])


@pytest.mark.slow
def test_a_zero2_checkpoint_does_not_resume_without_deepspeed(fsdp_run, smoke_corpus, tmp_path):
    checkpoint = tmp_path / "step_000002"
    shutil.copytree(fsdp_run[0] / "run" / CHECKPOINTS / checkpoint.name, checkpoint)
    state = load_tensors(checkpoint / "trainer_state.pt")
    torch.save({**state, "optimizer_layout": OPTIMIZER_DEEPSPEED, "optimizer": None}, checkpoint / "trainer_state.pt")
    model = _model("smoke", smoke_corpus, None)
    trainer = Trainer(model, stage("smoke", "generation", max_steps=STEPS), load_split(smoke_corpus, "train",
                      model.config), tmp_path / "run", progress=False)
    with pytest.raises(TrainingError, match=r"written by a DeepSpeed run; this run \(unsharded\) cannot read its "
                                            r"optimizer state: .* --init .*step_000002$"):
        trainer.resume(checkpoint)


@pytest.mark.slow
def test_ddp_resumed_run_matches_the_straight_run(smoke_corpus, tmp_path):
    straight = tmp_path / "straight"
    launch_ranks(smoke_corpus, straight)  # without --fsdp the CPU launch is DDP (MULTI_CPU)
    resumed = resumed_from_step_2(smoke_corpus, straight, tmp_path / "resumed")
    assert "optimizer_layout" not in load_tensors(resumed / "trainer_state.pt")
    assert_same_training(straight / "run" / CHECKPOINTS / f"step_{STEPS:06d}", resumed)


def test_fsdp_names_the_zero_dimensional_parameters_it_cannot_shard():
    fsdp, ddp = (SimpleNamespace(distributed_type=kind) for kind in (DistributedType.FSDP, DistributedType.MULTI_GPU))
    model = EChat.from_preset("smoke")
    check_shardable(fsdp, model)  # the smoke model (as the released one) has no 0-d parameter
    bridged = BridgedModel(model, 1.0)
    check_shardable(ddp, bridged)
    with pytest.raises(ValueError, match=r"FSDP2 cannot shard 0-d parameters \(heads\.log_scale;.*ddp\.yaml"):
        check_shardable(fsdp, bridged)
