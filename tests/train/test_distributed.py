"""The trainer under ``accelerate launch`` with two CPU processes (gloo): ranks consume disjoint batches
and finish with identical weights that training really changed; Ctrl-C reaching one rank alone ends the run
within the barrier's bound, with one line, and leaves the previous checkpoint as the latest.

accelerate's launcher only starts several processes through torchrun (its ``--multi_gpu`` route) or
mpirun; ``--cpu`` alone runs one process. So the ranks are started with ``--multi_gpu`` while CUDA is
hidden: the Trainer then asks accelerate for the CPU, which gives ``MULTI_CPU`` over gloo (checked below).
A config file written here keeps a user's ``accelerate config`` out of the run; port 0 picks a free port.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from echat.models.checkpoint import CHECKPOINTS, latest_checkpoint, load_tensors
from echat.models.echat import EChat
from echat.train.ranks import BARRIER_TIMEOUT_ENV

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]  # the ranks import this checkout's echat, not an installed one
CONFIG = "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\nnum_processes: 2\n"


def launch_command(config: Path, corpus: Path, out: Path, steps: int, *worker_args: str) -> list[str]:
    """``accelerate launch`` of the worker on two local processes, every setting explicit."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--multi_gpu",
            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "0", str(WORKER), "--corpus", str(corpus), "--out", str(out),
            "--stage", "empathy", "--steps", str(steps), *worker_args]


def launch(corpus: Path, out: Path, steps: int, *worker_args: str, timeout: int = 300,
           **env: str) -> subprocess.CompletedProcess:
    """Run the worker on two ranks (``env`` added to their environment) for at most ``timeout`` seconds."""
    config = out / "accelerate.yaml"
    config.write_text(CONFIG)
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path, **env}
    return subprocess.run(launch_command(config, corpus, out, steps, *worker_args), env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_ranks(corpus: Path, out: Path, steps: int = 3) -> list[dict]:
    """Launch the worker and return the reports of its ranks, in rank order."""
    done = launch(corpus, out, steps)
    assert done.returncode == 0, f"accelerate launch failed ({done.returncode}):\n{done.stderr[-6000:]}"
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank_*.json"))]


def test_two_cpu_ranks_see_disjoint_batches_and_end_with_identical_changed_weights(smoke_corpus, tmp_path):
    ranks = run_ranks(smoke_corpus, tmp_path)
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    assert {(r["backend"], r["distributed_type"]) for r in ranks} == {("gloo", "DistributedType.MULTI_CPU")}
    assert all(r["steps"] == 3 and len(r["batches"]) == 3 and all(b["keys"] for b in r["batches"]) for r in ranks)
    # records are drawn with replacement (and sibling families share keys), so one key may sit in batches
    # of both ranks; what must never happen is a batch of an epoch going to both ranks
    seen = [{(b["epoch"], tuple(b["keys"])) for b in r["batches"]} for r in ranks]
    assert not seen[0] & seen[1]
    assert ranks[0]["initial_hash"] == ranks[1]["initial_hash"]
    assert ranks[0]["final_hash"] == ranks[1]["final_hash"] != ranks[0]["initial_hash"]
    run = tmp_path / "run"
    assert [p.name for p in sorted((run / "ckpt").glob("step_*"))] == ["step_000002", "step_000003"]
    assert any("dev_loss" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())


def test_ctrl_c_on_one_rank_ends_the_run_within_the_bound_and_keeps_the_previous_checkpoint(smoke_corpus, tmp_path):
    # rank 1 alone is interrupted after step 3 (checkpoint at step 2) while rank 0 goes on into step 4's
    # all-reduce: without the bounded barrier both would wait for the process group's 30 minutes
    start = time.monotonic()
    done = launch(smoke_corpus, tmp_path, 6, "--interrupt-ranks", "1", "--interrupt-step", "3", timeout=120,
                  **{BARRIER_TIMEOUT_ENV: "3"})
    took = time.monotonic() - start
    run = tmp_path / "run"
    assert done.returncode != 0 and took < 120, (done.returncode, took, done.stderr[-3000:])
    kept = run / CHECKPOINTS / "step_000002"
    line = re.search(r"^echat: error: rank 1 of 2 interrupted at step 3: the other ranks did not reach the "
                     r"checkpoint barrier within 3 s .*; the last complete checkpoint is kept: (\S+); run the same "
                     r"command with --resume", done.stderr, re.M)
    assert line and line[1] == str(kept), done.stderr[-3000:]
    assert latest_checkpoint(run) == kept
    assert sorted(p.name for p in (run / CHECKPOINTS).iterdir()) == ["latest", "step_000002"]
    assert load_tensors(kept / "trainer_state.pt")["step"] == 2
    assert EChat.from_checkpoint(kept).config.name == "smoke"


def test_ctrl_c_on_every_rank_saves_the_step_before_any_rank_exits(smoke_corpus, tmp_path):
    # the launcher stops every rank as soon as one exits: rank 1 waits at the barrier until rank 0 has written
    # the checkpoint, here slowed by 2 s (a launcher polls every 0.1 s)
    done = launch(smoke_corpus, tmp_path, 6, "--interrupt-ranks", "0", "1", "--interrupt-step", "3",
                  "--write-delay", "2", timeout=120, **{BARRIER_TIMEOUT_ENV: "30"})
    run = tmp_path / "run"
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr, done.stderr[-3000:]
    assert f"interrupted at step 3: resumable checkpoint in {run / CHECKPOINTS / 'step_000003'}" in done.stdout
    assert latest_checkpoint(run).name == "step_000003"
    assert load_tensors(run / CHECKPOINTS / "step_000003" / "trainer_state.pt")["step"] == 3
