"""One rank of the multi-process trainer check, started by ``tests/train/test_distributed.py`` through
``accelerate launch`` (two CPU processes, gloo). Not a test module: pytest does not collect it.

Every rank trains a few optimizer steps of a smoke stage with the real :class:`~echat.train.trainer.Trainer`
(evaluating and checkpointing at step 2, so those run under DDP too) and writes ``rank_<R>.json`` to
``--out``: its rank and world size, the backend, the sample keys of every batch it really consumed (taken
from the batches the trainer's stream yielded), and SHA-256 hashes of all model weights right after
``accelerate.prepare`` and after training. With ``--interrupt-ranks R.. --interrupt-step N`` those ranks
raise ``KeyboardInterrupt`` as their step N + 1 starts (Ctrl-C reaching them, the others not);
``--write-delay S`` makes the main rank take S seconds more to write a checkpoint; a ``TrainingError`` ends the
process as ``echat`` does: one line on stderr, exit status 1.

``--fsdp`` runs the trainer under FSDP2 as ``configs/accelerate/fsdp.yaml`` sets it up (started with that file):
accelerate runs FSDP on accelerator devices only and on the CPU quietly falls back to DDP over gloo
(``MULTI_CPU``), so this worker turns the process state to FSDP with the plugin the launch config's environment
describes before the trainer prepares anything (:func:`cpu_fsdp_accelerator`); torch's ``fully_shard`` itself
runs on the CPU over gloo. ``--until N`` stops after N steps of the ``--steps`` recipe (a resumable checkpoint),
``--resume`` continues from the run's latest checkpoint, ``--eval-every`` sets the evaluation interval.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from echat.data.pipeline import load_split
from echat.train.recipes import stage
from echat.train.run import _model
from echat.train.trainer import Trainer, TrainingError, release_process_group


def weights_hash(trainer: Trainer) -> str:
    """SHA-256 over every parameter and buffer of the trainer's model, by name, as ``get_state_dict`` gives them
    (every rank calls it; under FSDP only the main rank's is complete)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.acc.get_state_dict(trainer.model).items()):
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


def interrupt_at(trainer: Trainer, ranks: list[int], step: int) -> None:
    """On the ranks ``ranks`` only, make ``trainer`` raise ``KeyboardInterrupt`` when a micro-batch starts after
    ``step`` optimizer steps."""
    if trainer.acc.process_index not in ranks:
        return
    train_step = trainer._train_step

    def interrupted(batch):
        if trainer.state.step == step:
            raise KeyboardInterrupt
        return train_step(batch)

    trainer._train_step = interrupted


def slow_writes(trainer: Trainer, seconds: float) -> None:
    """Make every checkpoint write of ``trainer``'s main rank take ``seconds`` longer (a big model, a slow disk)."""
    if not seconds or not trainer.acc.is_main_process:
        return
    write = trainer._write_checkpoint

    def slow():
        time.sleep(seconds)
        return write()

    trainer._write_checkpoint = slow


def rank_report(trainer: Trainer, consumed: list[dict], initial_hash: str) -> dict:
    """What this rank did: its place in the run, the batches it consumed, its weights before and after."""
    acc = trainer.acc
    return {"rank": acc.process_index, "world": acc.num_processes, "backend": acc.state.backend,
            "distributed_type": str(acc.distributed_type), "steps": trainer.state.step, "batches": consumed,
            "parameter_type": type(next(trainer.model.parameters())).__name__,  # DTensor: FSDP2 sharded it
            "initial_hash": initial_hash, "final_hash": weights_hash(trainer)}


def cpu_fsdp_accelerator(accum_steps: int) -> Accelerator:
    """An accelerator running FSDP2 on the CPU with the plugin of the launch config's ``FSDP_*`` environment
    (see the module's docstring); otherwise as the trainer makes its own."""
    plugin = FullyShardedDataParallelPlugin()
    acc = Accelerator(gradient_accumulation_steps=accum_steps, mixed_precision="no", cpu=True,
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    assert acc.distributed_type == DistributedType.MULTI_CPU, acc.distributed_type  # the fall-back, turned here
    PartialState().distributed_type = acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin
    return acc


def main() -> None:
    """Train ``--steps`` steps of ``--stage`` on ``--corpus`` and write this rank's report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", default="empathy")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--interrupt-ranks", type=int, nargs="*", default=[], help="the ranks that get Ctrl-C")
    parser.add_argument("--interrupt-step", type=int, default=0)
    parser.add_argument("--write-delay", type=float, default=0.0)
    # FSDP2 on the CPU (launched with fsdp.yaml; a test-only state switch, cpu_fsdp_accelerator). After its report
    # the worker (FSDP or DDP) leaves with os._exit, because the interpreter's teardown after a run on gloo aborted
    # a rank now and then (FSDP2: one launch in six; DDP: once in a whole test run; "terminate called without an
    # active exception", after the reports and checkpoints were written; destroying the process group first did
    # not prevent it)
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 on the CPU (launched with fsdp.yaml)")
    parser.add_argument("--until", type=int, default=None, help="stop after this many steps of the --steps recipe")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--eval-every", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = _model("smoke", args.corpus, None)
    samples = load_split(args.corpus, "train", model.config)
    recipe = stage("smoke", args.stage, max_steps=args.steps)
    acc = cpu_fsdp_accelerator(model.config.train.accum_steps) if args.fsdp else None
    trainer = Trainer(model, recipe, samples, args.out / "run", dev=load_split(args.corpus, "dev", model.config),
                      eval_every=args.eval_every, save_every=2, progress=False, accelerator=acc)
    consumed, initial = [], weights_hash(trainer)
    record_batches(trainer, consumed)
    interrupt_at(trainer, args.interrupt_ranks, args.interrupt_step)
    slow_writes(trainer, args.write_delay)
    try:
        if args.resume:
            trainer.resume()
        trainer.fit(until=args.until)
        report = rank_report(trainer, consumed, initial)
        (args.out / f"rank_{report['rank']}.json").write_text(json.dumps(report, indent=1))
    except TrainingError as err:
        print(f"echat: error: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        release_process_group()
    sys.stdout.flush()  # leave without the interpreter's teardown (see --fsdp below)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
