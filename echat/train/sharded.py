"""Checkpoint state of a run whose model or optimizer ``accelerate`` shards over its ranks: FSDP2
(``configs/accelerate/fsdp.yaml``) and DeepSpeed ZeRO-2 (``configs/accelerate/zero2.yaml``).

Design choices:
- A checkpoint stays echat's folder whatever the launch config: one full, unsharded ``model.safetensors`` that
  :meth:`~echat.models.echat.EChat.from_checkpoint` loads, and ``trainer_state.pt``. Plain and DDP runs do not
  come here (every rank holds everything; the main rank writes it as before, byte for byte).
- The weights are gathered by ``Accelerator.get_state_dict`` on every rank (under FSDP it is a collective that
  every rank must join; the main rank gets the whole dict, in fp32 on the CPU, the others an empty one).
- FSDP: the optimizer's state is gathered by torch's ``get_optimizer_state_dict`` (full, on the main rank's
  CPU), keyed by parameter name instead of position (``OPTIMIZER_BY_NAME``); resuming reads weights and state on
  the main rank alone and broadcasts them (``set_model_state_dict`` / ``set_optimizer_state_dict`` with
  ``broadcast_from_rank0``), so no other rank holds a full copy. A by-name state also loads into an unsharded
  run (one process or DDP) through the same torch calls.
- Evaluation calls the model's parts directly (generation) after a forward of the whole model (dev loss);
  FSDP2 keeps the root unit's parameters (everything but the decoder layers) gathered after the root's forward,
  so those calls see whole weights (the FSDP test's evaluations run).
- DeepSpeed ZeRO-1/2: the weights are whole on every rank (the main rank writes them; bf16, the dtype DeepSpeed
  trains the module in), the optimizer's fp32 master weights and moments are partitioned. Each rank's
  partition is written by DeepSpeed's own ``engine.save_checkpoint`` into ``deepspeed/`` of the checkpoint
  (beside it only the trainable weights, not a second full copy) and read back by ``engine.load_checkpoint``,
  on the same number of ranks (``OPTIMIZER_DEEPSPEED``). Written from DeepSpeed's and accelerate's APIs; not
  run here (DeepSpeed needs CUDA).
- FSDP1 and ZeRO-3 are refused when the trainer starts, with one line: nothing here was checked against them.
  So is FSDP2 for a model with a 0-d parameter (``fully_shard`` refuses scalars): the bridge heads' and a
  token-mix adapter's ``log_scale`` (mini-world stages); the released model's stages have none. Making them
  1-D would change every checkpoint that holds one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

FSDP, DEEPSPEED = "fsdp", "deepspeed"
OPTIMIZER_BY_NAME = "by_name"  # trainer_state.pt's "optimizer_layout": the full state keyed by parameter name
OPTIMIZER_DEEPSPEED = "deepspeed"  # the state is in the checkpoint's deepspeed/ folder, one file per rank
DEEPSPEED_DIR, DEEPSPEED_TAG = "deepspeed", "zero"


def sharding(acc: Accelerator) -> str | None:
    """``FSDP``, ``DEEPSPEED``, or None when every rank holds the whole model and optimizer state; FSDP1 and
    ZeRO-3 are one clear ``ValueError``."""
    if acc.distributed_type == DistributedType.FSDP:
        if not acc.is_fsdp2:
            raise ValueError("echat's checkpoints under FSDP need FSDP2 (fsdp_version: 2, as in "
                             "configs/accelerate/fsdp.yaml); this run uses FSDP1")
        return FSDP
    if acc.distributed_type == DistributedType.DEEPSPEED:
        stage = acc.state.deepspeed_plugin.zero_stage
        if stage not in (0, 1, 2):
            raise ValueError(f"echat's checkpoints under DeepSpeed support ZeRO stages 1 and 2 (as in "
                             f"configs/accelerate/zero2.yaml); this run uses ZeRO stage {stage}")
        return DEEPSPEED
    return None


def check_shardable(acc: Accelerator, model: nn.Module) -> None:
    """Before ``prepare``: under FSDP, a model with 0-d parameters is one ``ValueError`` naming them."""
    if acc.distributed_type != DistributedType.FSDP:
        return
    scalars = [name for name, param in model.named_parameters() if param.dim() == 0]
    if scalars:
        raise ValueError(f"FSDP2 cannot shard 0-d parameters ({', '.join(scalars)}; torch's fully_shard refuses "
                         "scalars): train this model and stage with configs/accelerate/ddp.yaml or zero2.yaml")


def gather_weights(acc: Accelerator, model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of the prepared ``model`` on the main rank, empty elsewhere. Every rank must call it
    (under FSDP it is a collective; under ZeRO-2 the other ranks skip the copy)."""
    if sharding(acc) == DEEPSPEED and not acc.is_main_process:
        return {}
    weights = acc.get_state_dict(model)
    return weights if acc.is_main_process else {}


def gather_optimizer(acc: Accelerator, model: nn.Module, optimizer) -> dict | None:
    """Under FSDP the optimizer's full state, keyed by parameter name, on the main rank (every rank must call
    it); under DeepSpeed None (:func:`save_deepspeed` writes it)."""
    if sharding(acc) != FSDP:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=options)


def load_fsdp_weights(acc: Accelerator, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Under FSDP, load a full state dict into the prepared ``model``: ``weights`` is read on the main rank only
    (the others pass an empty dict) and broadcast to the shards. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, weights if acc.is_main_process else {}, options=options)


def load_optimizer_by_name(acc: Accelerator, model: nn.Module, optimizer, state: dict | None) -> None:
    """Load a full by-name optimizer state (:func:`gather_optimizer`'s) into ``optimizer`` of the prepared
    ``model``: under FSDP read on the main rank and broadcast, in an unsharded run loaded as it is."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if sharding(acc) == FSDP:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        state = state if acc.is_main_process else {}
    else:
        model, options = acc.unwrap_model(model), StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, _torch_optimizer(optimizer), state, options=options)


def save_deepspeed(engine, folder: Path) -> None:
    """Every rank: DeepSpeed's checkpoint of ``engine`` (its optimizer partition per rank, the trainable weights
    once) into ``folder``."""
    engine.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, client_state={}, save_latest=False,
                           exclude_frozen_parameters=True)


def load_deepspeed(engine, folder: Path) -> None:
    """Every rank: restore ``engine``'s optimizer partitions (and the trainable weights) from
    :func:`save_deepspeed`'s ``folder``; the learning-rate schedule is echat's own, in ``trainer_state.pt``."""
    loaded, _ = engine.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_module_strict=False,
                                       load_optimizer_states=True, load_lr_scheduler_states=False)
    if loaded is None:
        raise FileNotFoundError(f"{folder}: DeepSpeed found no checkpoint tagged {DEEPSPEED_TAG!r} to resume from")


def _torch_optimizer(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)
