"""Stage freezing, asserted by counting trainable parameters per module."""

import pytest

from echat.models.echat import EChat
from echat.models.lora import add_lora
from echat.train.stages import apply_stage, trainable_counts


def _total(model, name):
    return sum(p.numel() for p in {id(p): p for p in getattr(model, name).parameters()}.values())


@pytest.fixture
def model():
    return EChat.from_preset("smoke")


def test_understanding_trains_encoder_and_adapter_only(model):
    counts = apply_stage(model, "understanding")
    assert counts["encoder"] == _total(model, "encoder") > 0
    assert counts["adapter"] == _total(model, "adapter") > 0
    assert counts["llm"] == counts["speech_embedding"] == counts["speech_head"] == 0


def test_generation_trains_adapter_llm_and_speech_io_and_optionally_the_encoder(model):
    counts = apply_stage(model, "generation")
    assert counts["encoder"] == 0
    for name in ("adapter", "llm", "speech_embedding", "speech_head"):
        assert counts[name] == _total(model, name) > 0
    assert apply_stage(model, "generation", train_encoder=True)["encoder"] == _total(model, "encoder")


def test_generation_with_lora_trains_only_the_lora_weights_of_the_llm(model):
    full_llm = _total(model, "llm")
    add_lora(model)
    counts = apply_stage(model, "generation")
    lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    assert counts["llm"] == lora > 0
    assert _total(model, "llm") == full_llm + lora


def test_empathy_trains_everything_but_what_is_frozen(model):
    counts = apply_stage(model, "empathy", freeze=["encoder"])
    assert counts["encoder"] == 0 and all(counts[n] > 0 for n in ("adapter", "llm", "speech_head"))
    assert trainable_counts(model) == counts


def test_unknown_stage_or_module_is_a_clear_error(model):
    with pytest.raises(ValueError, match="unknown stage"):
        apply_stage(model, "pretraining")
    with pytest.raises(ValueError, match="unknown module"):
        apply_stage(model, "empathy", freeze=["decoder"])

