"""One rank of the multi-process trainer check, started by ``tests/train/test_distributed.py`` through
``accelerate launch`` (two CPU processes, gloo). Not a test module: pytest does not collect it.

Every rank trains a few optimizer steps of a smoke stage with the real :class:`~echat.train.trainer.Trainer`
(evaluating and checkpointing at step 2, so those run under DDP too) and writes ``rank_<R>.json`` to
``--out``: its rank and world size, the backend, the sample keys of every batch it really consumed (taken
from the batches the trainer's stream yielded), and SHA-256 hashes of all model weights right after
``accelerate.prepare`` and after training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from echat.data.pipeline import load_split
from echat.train.recipes import stage
from echat.train.run import _model
from echat.train.trainer import Trainer


def weights_hash(model) -> str:
    """SHA-256 over every parameter and buffer of ``model``, by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def record_batches(trainer: Trainer, consumed: list[dict]) -> None:
    """Make ``trainer`` note the epoch and keys of each batch its stream hands to the training loop."""
    stream = trainer._stream

    def recording():
        for batch in stream():
            consumed.append({"epoch": trainer.state.epoch, "keys": list(batch.keys)})
            yield batch

    trainer._stream = recording


def rank_report(trainer: Trainer, consumed: list[dict], initial_hash: str) -> dict:
    """What this rank did: its place in the run, the batches it consumed, its weights before and after."""
    acc = trainer.acc
    return {"rank": acc.process_index, "world": acc.num_processes, "backend": acc.state.backend,
            "distributed_type": str(acc.distributed_type), "steps": trainer.state.step, "batches": consumed,
            "initial_hash": initial_hash, "final_hash": weights_hash(acc.unwrap_model(trainer.model))}


def main() -> None:
    """Train ``--steps`` steps of ``--stage`` on ``--corpus`` and write this rank's report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", default="empathy")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = _model("smoke", args.corpus, None)
    samples = load_split(args.corpus, "train", model.config)
    recipe = stage("smoke", args.stage, max_steps=args.steps)
    trainer = Trainer(model, recipe, samples, args.out / "run", dev=load_split(args.corpus, "dev", model.config),
                      eval_every=2, save_every=2, progress=False)
    consumed, initial = [], weights_hash(trainer.acc.unwrap_model(trainer.model))
    record_batches(trainer, consumed)
    trainer.fit()
    report = rank_report(trainer, consumed, initial)
    (args.out / f"rank_{report['rank']}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
