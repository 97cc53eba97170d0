"""SpeechEncoder: key layout, lengths, padding invariance and Whisper weight loading."""

from __future__ import annotations

import math

import pytest
import torch

from echat.config import EncoderConfig, preset
from echat.models.encoder import (
    EncoderCache,
    SpeechEncoder,
    load_whisper_encoder,
    whisper_sinusoids,
    whisper_to_encoder_state_dict,
)

TINY = EncoderConfig(
    n_mels=80, d_model=32, n_layers=2, n_heads=2, ffn_dim=64, max_positions=1500, dropout=0.0
)


def _encoder(cfg: EncoderConfig = TINY, seed: int = 0) -> SpeechEncoder:
    torch.manual_seed(seed)
    return SpeechEncoder(cfg).eval()


def test_state_dict_keys_follow_the_reference_layout():
    keys = list(_encoder().state_dict())
    assert keys[:7] == [
        "embed.conv.0.weight", "embed.conv.0.bias", "embed.conv.2.weight", "embed.conv.2.bias",
        "embed.pos_enc.pe", "after_norm.weight", "after_norm.bias",
    ]
    layer = [k.removeprefix("encoders.0.") for k in keys if k.startswith("encoders.0.")]
    assert layer == [
        "self_attn.linear_q.weight", "self_attn.linear_q.bias", "self_attn.linear_k.weight",
        "self_attn.linear_v.weight", "self_attn.linear_v.bias",
        "self_attn.linear_out.weight", "self_attn.linear_out.bias",
        "feed_forward.w_1.weight", "feed_forward.w_1.bias",
        "feed_forward.w_2.weight", "feed_forward.w_2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
    ]
    assert len(keys) == 7 + 2 * len(layer)


def test_positional_buffer_is_whisper_sinusoids():
    pe = _encoder().embed.pos_enc.pe  # (1, 1500, 32)
    assert pe.shape == (1, 1500, 32)
    half = 16
    positions = torch.arange(1500, dtype=torch.float64)[:, None]
    timescales = torch.exp(-math.log(10_000) / (half - 1) * torch.arange(half, dtype=torch.float64))
    angles = positions * timescales  # (1500, 16)
    expected = torch.cat([angles.sin(), angles.cos()], dim=1).float()
    assert torch.allclose(pe[0], expected, atol=1e-4)


def test_output_shapes_and_lengths():
    encoder = _encoder()
    feats = torch.randn(3, 37, 80)
    out, lengths = encoder(feats, torch.tensor([37, 20, 1]))
    assert out.shape == (3, 19, 32)
    assert lengths.tolist() == [19, 10, 1]
    assert torch.all(out[1, 10:] == 0) and torch.all(out[2, 1:] == 0)


def test_padding_does_not_change_valid_frames():
    encoder = _encoder()
    torch.manual_seed(1)
    short = torch.randn(1, 21, 80)
    alone, alone_len = encoder(short, torch.tensor([21]))
    batch = torch.randn(2, 40, 80) * 3.0  # the padding after frame 21 is noise, not zeros
    batch[0, :21] = short[0]
    padded, padded_len = encoder(batch, torch.tensor([21, 40]))
    assert padded_len[0] == alone_len[0] == 11
    assert torch.allclose(padded[0, :11], alone[0], atol=1e-5)


def test_too_long_input_is_rejected():
    cfg = EncoderConfig(
        n_mels=80, d_model=32, n_layers=1, n_heads=2, ffn_dim=64, max_positions=8, dropout=0.0
    )
    encoder = _encoder(cfg)
    encoder(torch.randn(1, 16, 80), torch.tensor([16]))
    with pytest.raises(ValueError, match="max_positions=8"):
        encoder(torch.randn(1, 17, 80), torch.tensor([17]))


def test_bad_lengths_are_rejected():
    encoder = _encoder()
    with pytest.raises(ValueError, match="length"):
        encoder(torch.randn(2, 10, 80), torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="length"):
        encoder(torch.randn(2, 10, 80), torch.tensor([10]))


def test_smoke_preset_runs_and_trains():
    cfg = preset("smoke").encoder
    encoder = SpeechEncoder(cfg).train()
    out, _ = encoder(torch.randn(2, 30, cfg.n_mels), torch.tensor([30, 12]))
    out.sum().backward()
    assert encoder.encoders[0].self_attn.linear_q.weight.grad is not None


def _hf_whisper_encoder():
    import transformers
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    hf_cfg = transformers.WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=80,
        max_source_positions=50, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=3, vocab_size=100,
    )
    torch.manual_seed(0)
    return WhisperEncoder(hf_cfg).eval()


def test_transformers_whisper_encoder_matches():
    hf = _hf_whisper_encoder()
    with torch.no_grad():  # random LayerNorm affines make the comparison stricter than ones/zeros
        for name, param in hf.named_parameters():
            if "layer_norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    ours = _encoder(seed=1)
    load_whisper_encoder(ours, hf.state_dict())
    feats = torch.randn(1, 100, 80)
    with torch.no_grad():
        expected = hf(feats.transpose(1, 2)).last_hidden_state  # HF wants (B, 80, 2 * max_source_positions)
        got, lengths = ours(feats, torch.tensor([100]))
    assert lengths.tolist() == [50]
    assert got.shape == expected.shape == (1, 50, 32)
    assert torch.allclose(got, expected, atol=1e-4)


def _as_openai_whisper(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder keys spelled the openai-whisper way (to exercise the other layout)."""
    renames = [
        ("embed.conv.0", "conv1"), ("embed.conv.2", "conv2"), ("after_norm", "ln_post"),
        ("encoders.", "blocks."), ("self_attn.linear_q", "attn.query"), ("self_attn.linear_k", "attn.key"),
        ("self_attn.linear_v", "attn.value"), ("self_attn.linear_out", "attn.out"), ("norm1", "attn_ln"),
        ("feed_forward.w_1", "mlp.0"), ("feed_forward.w_2", "mlp.2"), ("norm2", "mlp_ln"),
    ]
    out = {}
    for key, tensor in ours.items():
        if key == "embed.pos_enc.pe":
            out["encoder.positional_embedding"] = tensor[0, :1500].half()
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out["encoder." + key] = tensor
    out["decoder.token_embedding.weight"] = torch.zeros(3, 32)
    return out


def test_openai_whisper_layout_round_trips():
    source = _encoder(seed=3).state_dict()
    mapped = whisper_to_encoder_state_dict(_as_openai_whisper(source))
    assert set(mapped) == set(source) - {"embed.pos_enc.pe"}
    target = _encoder(seed=4)
    load_whisper_encoder(target, _as_openai_whisper(source))
    for key, tensor in target.state_dict().items():
        assert torch.equal(tensor, source[key]), key


def test_whisper_model_prefixes_are_accepted():
    hf_state = _hf_whisper_encoder().state_dict()
    bare = whisper_to_encoder_state_dict(hf_state)
    for prefix in ("encoder.", "model.encoder."):
        full = {prefix + k: v for k, v in hf_state.items()}
        full[prefix.replace("encoder", "decoder") + "layers.0.fc1.weight"] = torch.zeros(1)
        mapped = whisper_to_encoder_state_dict(full)
        assert mapped.keys() == bare.keys()


def test_learned_positions_are_rejected():
    hf_state = dict(_hf_whisper_encoder().state_dict())
    hf_state["embed_positions.weight"] = hf_state["embed_positions.weight"] + 0.01
    with pytest.raises(ValueError, match="positional table"):
        whisper_to_encoder_state_dict(hf_state)


def test_load_reports_every_problem_at_once():
    hf_state = dict(_hf_whisper_encoder().state_dict())
    del hf_state["layers.1.fc2.bias"]
    hf_state["layers.0.self_attn.k_proj.bias"] = torch.zeros(32)
    hf_state["conv1.weight"] = torch.zeros(32, 80, 5)
    with pytest.raises(ValueError) as err:
        load_whisper_encoder(_encoder(), hf_state)
    message = str(err.value)
    assert "missing: encoders.1.feed_forward.w_2.bias" in message
    assert "unexpected: encoders.0.self_attn.linear_k.bias" in message
    assert "embed.conv.0.weight (32, 80, 5) vs (32, 80, 3)" in message


def test_unknown_whisper_keys_are_rejected():
    with pytest.raises(ValueError, match="layers.0.extra.weight"):
        whisper_to_encoder_state_dict({"layers.0.extra.weight": torch.zeros(1)})


def test_sinusoid_formula_matches_transformers():
    import transformers
    reference = transformers.models.whisper.modeling_whisper.sinusoids(1500, 64)
    assert torch.allclose(whisper_sinusoids(1500, 64), reference, atol=1e-6)


def test_encoder_cache_keeps_frames_across_processes(tmp_path):
    """A cache beside a corpus folder gives the encoder's own frames, is reused from disk without running
    the encoder, and is never read by an encoder with other weights."""
    encoder = _encoder()
    feats, lengths = torch.randn(2, 30, 80), torch.tensor([30, 17])
    expected = encoder(feats, lengths)
    cache = EncoderCache.beside(tmp_path, encoder)
    first = cache(encoder, feats, lengths)
    assert torch.allclose(first.hidden, expected.hidden, atol=1e-6) and first.lengths.tolist() == [15, 9]
    assert cache.save() is not None and cache.save() is None  # nothing new the second time

    reopened = EncoderCache.beside(tmp_path, encoder)
    assert len(reopened.frames) == 2

    class Refuses(torch.nn.Module):
        """The same weights, but running it is an error: the frames must come from the file."""

        after_norm = encoder.after_norm

        def forward(self, *args):
            raise AssertionError("the cached clips were encoded again")

    again = reopened(Refuses(), feats, lengths)
    assert torch.equal(again.hidden, first.hidden)
    other = _encoder(seed=1)
    assert EncoderCache.beside(tmp_path, other).path != reopened.path
    assert EncoderCache.beside(tmp_path, other).frames == {}
