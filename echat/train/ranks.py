"""A bounded barrier between the ranks of a multi-process run, for the checkpoint an interrupt writes.

Ctrl-C (or a signal sent to one process) can reach some ranks while the others are inside a training
step's all-reduce: those never reach the interrupted rank's checkpoint barrier, and ``accelerate``'s
``wait_for_everyone`` (``torch.distributed.barrier``) would wait for the process group's timeout, 30
minutes by default. ``torch.distributed.monitored_barrier`` takes its own timeout but runs only on gloo, so
every multi-process run opens a side gloo group over all its ranks when its trainer starts (on NCCL runs
too): its barrier never mixes with the training's collectives, and a rank that does not come, or has left,
makes it fail within the bound instead of hanging.

The bound is ``ECHAT_BARRIER_TIMEOUT_S`` seconds (default 120), or the trainer's ``barrier_timeout_s``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

BARRIER_TIMEOUT_ENV = "ECHAT_BARRIER_TIMEOUT_S"
DEFAULT_BARRIER_TIMEOUT_S = 120.0


def barrier_timeout(value: float | None = None) -> float:
    """``value`` if given, else ``ECHAT_BARRIER_TIMEOUT_S``, else 120; a bound that is not a positive
    number is one clear ``ValueError`` naming where it came from."""
    source = "barrier_timeout_s" if value is not None else BARRIER_TIMEOUT_ENV
    text = value if value is not None else os.environ.get(BARRIER_TIMEOUT_ENV, DEFAULT_BARRIER_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{source}: {text!r} is not a positive number of seconds")
    return seconds


class RankBarrier:
    """The side gloo group of a multi-process run and a barrier on it that gives up after ``timeout_s``.
    Made on every rank at the same point (opening a group is collective); in a single process it is a
    no-op that always passes.

    The group itself times out after ``timeout_s``: rank 0 waits in ``monitored_barrier`` for the timeout
    given there, but the other ranks wait for rank 0's answer as long as the group's timeout. So the ranks
    first meet at a plain barrier (torch's default timeout: one rank may come much later, having written a
    big checkpoint), then open the group together."""

    def __init__(self, timeout_s: float, world: int):
        self.timeout_s = timeout_s
        self.group = None
        if world > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()
            self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))

    def wait(self) -> bool:
        """True when every rank reached this barrier within the bound; False when one did not or has left
        the run (torch's error, a timeout or a closed connection, is not raised: the caller says what it
        means for the run)."""
        if self.group is None:
            return True
        try:
            dist.monitored_barrier(self.group, timeout=timedelta(seconds=self.timeout_s))
        except RuntimeError:
            return False
        return True
