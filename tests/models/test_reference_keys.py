"""Reference key map: the full osum-echat layout against the golden TSV, and smoke round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers  # noqa: E402
from torch import nn

from echat.config import EChatConfig, preset
from echat.models.adapter import Adapter
from echat.models.encoder import SpeechEncoder
from echat.models.reference_keys import (
    expected_reference_keys,
    from_reference_state_dict,
    layout_lines,
    reference_state_dict,
)

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "osum_echat_state_dict.tsv"


class Pieces(nn.Module):
    """Stand-in for the EChat model: the attribute names the key map expects."""

    def __init__(self, cfg: EChatConfig) -> None:
        super().__init__()
        llm = cfg.llm
        self.encoder = SpeechEncoder(cfg.encoder)
        self.adapter = Adapter(cfg.adapter, cfg.encoder.d_model, llm.hidden_size)
        self.llm = transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(
                hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
                num_hidden_layers=llm.n_layers, num_attention_heads=llm.n_heads,
                num_key_value_heads=llm.n_kv_heads, vocab_size=llm.vocab_size, rope_theta=llm.rope_theta,
                rms_norm_eps=llm.rms_norm_eps, max_position_embeddings=llm.max_position_embeddings,
                tie_word_embeddings=llm.tie_word_embeddings,
            )
        )
        self.speech_embedding = nn.Embedding(cfg.speech.embedding_size, llm.hidden_size)
        self.speech_head = nn.Linear(llm.hidden_size, cfg.speech.head_size)


def _persistent_buffers(module: nn.Module, state: dict) -> set[str]:
    return {name for name, _ in module.named_buffers() if name in state}


def _golden_lines() -> list[str]:
    return GOLDEN.read_text(encoding="utf-8").splitlines()


def test_osum_echat_layout_matches_the_released_checkpoint():
    cfg = preset("osum-echat")
    with torch.device("meta"):
        model = Pieces(cfg)
    state = model.state_dict()
    ref = reference_state_dict(state, cfg)
    lines = layout_lines(ref, _persistent_buffers(model, state))
    golden = _golden_lines()
    assert len(golden) == 888
    assert len(lines) == len(golden)
    for ours, expected in zip(lines, golden, strict=True):
        assert ours == expected
    assert ref["ln_speech.weight"].is_meta


def test_expected_keys_match_the_golden_layout():
    golden_keys = [line.split("\t")[0] for line in _golden_lines()]
    assert expected_reference_keys(preset("osum-echat")) == golden_keys


def _smoke_model() -> tuple[EChatConfig, Pieces]:
    cfg = preset("smoke")
    torch.manual_seed(0)
    return cfg, Pieces(cfg)


def test_smoke_round_trip_gives_back_every_tensor():
    cfg, model = _smoke_model()
    state = model.state_dict()
    ref = reference_state_dict(state, cfg)
    assert torch.equal(ref["ln_speech.weight"], torch.ones(cfg.encoder.d_model))
    assert torch.equal(ref["ln_speech.bias"], torch.zeros(cfg.encoder.d_model))
    assert ref["embed_tokens.weight"] is state["llm.model.embed_tokens.weight"]
    back, problems = from_reference_state_dict(ref, cfg)
    assert not problems
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key
    fresh = Pieces(cfg)
    fresh.load_state_dict(back, strict=True)


def test_aliases_stand_in_for_missing_main_keys():
    cfg, model = _smoke_model()
    ref = reference_state_dict(model.state_dict(), cfg)
    del ref["llama_model.model.embed_tokens.weight"], ref["llama_model.lm_head.weight"]
    back, problems = from_reference_state_dict(ref, cfg)
    assert not problems
    assert torch.equal(back["llm.model.embed_tokens.weight"], model.llm.model.embed_tokens.weight)
    assert torch.equal(back["llm.lm_head.weight"], model.llm.model.embed_tokens.weight)


def test_disagreeing_aliases_raise():
    cfg, model = _smoke_model()
    ref = reference_state_dict(model.state_dict(), cfg)
    ref["embed_tokens.weight"] = ref["embed_tokens.weight"] + 1.0
    with pytest.raises(ValueError, match="embed_tokens.weight"):
        from_reference_state_dict(ref, cfg)


def test_untied_head_that_differs_from_a_tied_embedding_raises():
    cfg, model = _smoke_model()
    ref = reference_state_dict(model.state_dict(), cfg)
    ref["llama_model.lm_head.weight"] = ref["llama_model.lm_head.weight"] * 2.0
    ref["lm_head.weight"] = ref["llama_model.lm_head.weight"]
    with pytest.raises(ValueError, match="ties"):
        from_reference_state_dict(ref, cfg)


def test_unexpected_and_missing_keys_are_reported():
    cfg, model = _smoke_model()
    ref = reference_state_dict(model.state_dict(), cfg)
    del ref["speech_head.bias"], ref["ln_speech.weight"]
    ref["speech_transformer.encoders.9.norm1.weight"] = torch.zeros(1)
    ref["something_else"] = torch.zeros(1)
    back, problems = from_reference_state_dict(ref, cfg)
    assert problems.missing == ["speech_head.bias"]
    assert problems.unexpected == ["speech_transformer.encoders.9.norm1.weight", "something_else"]
    assert "adapter.transformer.encoders.9.norm1.weight" not in back


def test_unmapped_keys_are_rejected_on_export():
    cfg, model = _smoke_model()
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra.weight"):
        reference_state_dict(state, cfg)
