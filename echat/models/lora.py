"""LoRA adapters on the LLM (peft): the reference's r 64, alpha 32, dropout 0.1 on q, k, v, o, gate
and down projections, read from ``config.llm.lora``."""

from __future__ import annotations


def add_lora(model) -> None:
    """Wrap ``model.llm`` with peft LoRA using ``config.llm.lora``; marks the config as LoRA-enabled."""
    from peft import LoraConfig, get_peft_model  # heavy: imported only when LoRA is used

    lora = model.config.llm.lora
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    model.llm = get_peft_model(model.llm, peft_config)
    model.config.llm.lora.enabled = True


def uses_lora(model) -> bool:
    """Whether ``model.llm`` is wrapped by peft."""
    return hasattr(model.llm, "peft_config")
