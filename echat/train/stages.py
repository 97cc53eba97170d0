"""Which parameters train: :func:`set_trainable` is the one place that sets ``requires_grad`` (the
trainer calls it with the modules its recipe gives a learning rate, :func:`apply_stage` with the paper's
default set of a stage).

The paper's stages (the reference encodes them only as ``fire_module`` switches, its released config
trains everything; echat's mini recipe departs where ``echat.train.recipes`` says why):
- ``understanding``: encoder + adapter; the LLM and the speech embedding/head are frozen.
- ``generation``: adapter + LLM (all of it, or only LoRA weights when LoRA is on, :mod:`echat.models.lora`) + speech
  embedding/head; the encoder only when asked (``train_encoder=True``).
- ``empathy``: everything, minus the modules named in ``freeze``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from echat.models.lora import uses_lora

STAGES = ("understanding", "generation", "empathy")
MODULES = ("encoder", "adapter", "llm", "speech_embedding", "speech_head")


def trainable_modules(stage: str, train_encoder: bool = False, freeze: Iterable[str] = ()) -> set[str]:
    """Top-level module names trained in ``stage``."""
    if stage == "understanding":
        return {"encoder", "adapter"}
    if stage == "generation":
        return {"adapter", "llm", "speech_embedding", "speech_head"} | ({"encoder"} if train_encoder else set())
    if stage == "empathy":
        unknown = set(freeze) - set(MODULES)
        if unknown:
            raise ValueError(f"cannot freeze unknown module(s) {sorted(unknown)}; modules are {MODULES}")
        return set(MODULES) - set(freeze)
    raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")


def set_trainable(model, modules: Iterable[str]) -> dict[str, list[nn.Parameter]]:
    """Train the parameters of ``modules`` and freeze every other one; returns the trainable parameters
    per module (modules with none left out). With LoRA on the LLM, only its LoRA weights train."""
    chosen, trainable = set(modules), {}
    for name in MODULES:
        module: nn.Module = getattr(model, name)
        lora_only = name == "llm" and uses_lora(model)
        for pname, param in module.named_parameters():
            param.requires_grad = name in chosen and (not lora_only or "lora_" in pname)
            if param.requires_grad:
                trainable.setdefault(name, []).append(param)
    return trainable


def apply_stage(model, stage: str, train_encoder: bool = False, freeze: Iterable[str] = ()) -> dict[str, int]:
    """Set ``requires_grad`` for ``stage`` and return the trainable parameter count per module."""
    set_trainable(model, trainable_modules(stage, train_encoder, freeze))
    return trainable_counts(model)


def trainable_counts(model) -> dict[str, int]:
    """Trainable parameters per top-level module (tied tensors counted once)."""
    counts = {}
    for name in MODULES:
        seen = {id(p): p for p in getattr(model, name).parameters() if p.requires_grad}
        counts[name] = sum(p.numel() for p in seen.values())
    return counts
