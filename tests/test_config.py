"""Config dataclasses and presets: sizes of the released model, JSON round trips, clear errors."""

import dataclasses

import pytest

from echat.config import PRESETS, EChatConfig, GenerationOptions, ThinkMode, preset
from echat.tokens import MINI_LABEL_TAGS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name, tmp_path):
    config = preset(name)
    assert EChatConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "config.json")
    assert EChatConfig.load(tmp_path / "config.json") == config


def test_osum_echat_preset_has_the_released_shapes():
    c = preset("osum-echat")
    assert (c.encoder.n_layers, c.encoder.d_model, c.encoder.n_heads, c.encoder.ffn_dim) == (24, 1024, 16, 4096)
    assert (c.adapter.n_layers, c.adapter.n_heads, c.adapter.ffn_dim, c.adapter.downsample_rate) == (4, 4, 2560, 4)
    assert (c.llm.hidden_size, c.llm.n_layers, c.llm.vocab_size, c.llm.n_kv_heads) == (2048, 36, 151_936, 2)
    assert (c.speech.boundary_id, c.speech.audio_bos_id, c.speech.audio_eos_id) == (4096, 4097, 4098)
    assert (c.speech.head_size, c.speech.embedding_size) == (4097, 4099)
    assert c.llm.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")


@pytest.mark.parametrize("frames, positions", [(1000, 125), (3000, 375), (16, 2), (1, 1)])
def test_llm_positions_follow_the_reference_frame_rates(frames, positions):
    assert preset("osum-echat").llm_positions(frames) == positions


def test_mini_tokenizer_fits_the_mini_llm_vocab():
    for name in ("smoke", "mini"):
        c = preset(name)
        most_entries = c.text.bpe_vocab_size + 1 + len(MINI_LABEL_TAGS)  # BPE, `&&`, the label tags
        assert most_entries <= c.llm.vocab_size


def test_presets_are_independent_copies():
    a, b = preset("mini"), preset("mini")
    a.train.lr = 123.0
    assert b.train.lr != 123.0


def test_unknown_preset_and_unknown_keys_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'big'.*mini"):
        preset("big")
    data = preset("smoke").to_dict()
    data["encoder"]["depth"] = 3
    with pytest.raises(ValueError, match=r"config\.encoder: unknown key\(s\) \['depth'\]"):
        EChatConfig.from_dict(data)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid echat config"):
        EChatConfig.load(tmp_path / "bad.json")


def test_generation_options_are_frozen():
    options = GenerationOptions(top_k=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.top_k = 3


def test_the_think_mode_is_typed_and_stored_in_the_config(tmp_path):
    config = preset("smoke")
    assert config.think is ThinkMode.NONE
    config.think = ThinkMode.TAG
    config.save(tmp_path / "config.json")
    assert '"think": "tag"' in (tmp_path / "config.json").read_text()
    assert EChatConfig.load(tmp_path / "config.json").think is ThinkMode.TAG
    (tmp_path / "bad.json").write_text((tmp_path / "config.json").read_text().replace('"tag"', '"loud"'))
    with pytest.raises(ValueError, match="not a valid echat config"):
        EChatConfig.load(tmp_path / "bad.json")
    assert ThinkMode("language") is ThinkMode.LANGUAGE and f"{ThinkMode.LANGUAGE}" == "language"
