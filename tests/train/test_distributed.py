"""The trainer under ``accelerate launch`` with two CPU processes (gloo): ranks consume disjoint batches
and finish with identical weights that training really changed.

accelerate's launcher only starts several processes through torchrun (its ``--multi_gpu`` route) or
mpirun; ``--cpu`` alone runs one process. So the ranks are started with ``--multi_gpu`` while CUDA is
hidden: the Trainer then asks accelerate for the CPU, which gives ``MULTI_CPU`` over gloo (checked below).
A config file written here keeps a user's ``accelerate config`` out of the run; port 0 picks a free port.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("ddp_worker.py")
CONFIG = "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\nnum_processes: 2\n"


def launch_command(config: Path, corpus: Path, out: Path, steps: int) -> list[str]:
    """``accelerate launch`` of the worker on two local processes, every setting explicit."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--multi_gpu",
            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "0", str(WORKER), "--corpus", str(corpus), "--out", str(out),
            "--stage", "empathy", "--steps", str(steps)]


def run_ranks(corpus: Path, out: Path, steps: int = 3) -> list[dict]:
    """Launch the worker and return the reports of its ranks, in rank order."""
    config = out / "accelerate.yaml"
    config.write_text(CONFIG)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(launch_command(config, corpus, out, steps), env=env, capture_output=True, text=True,
                          timeout=300)
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
