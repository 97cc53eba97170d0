"""Adapter: key layout, causal downsampling, padding invariance and the 12.5 Hz length arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from echat.config import AdapterConfig, preset
from echat.models.adapter import Adapter, wenet_sinusoids
from echat.models.encoder import SpeechEncoder

TINY = AdapterConfig(d_model=32, n_layers=2, n_heads=2, ffn_dim=48, max_positions=400, dropout=0.0)


def _adapter(cfg: AdapterConfig = TINY, input_dim: int = 24, output_dim: int = 40, seed: int = 0) -> Adapter:
    torch.manual_seed(seed)
    return Adapter(cfg, input_dim, output_dim).eval()


def test_state_dict_keys():
    keys = list(_adapter().state_dict())
    assert keys[:6] == [
        "downsample.conv.1.weight", "downsample.conv.1.bias", "downsample.conv.4.weight",
        "downsample.conv.4.bias", "downsample.conv.7.weight", "downsample.conv.7.bias",
    ]
    assert keys[6:13] == [
        "transformer.embed.out.0.weight", "transformer.embed.out.0.bias", "transformer.embed.out.1.weight",
        "transformer.embed.out.1.bias", "transformer.embed.pos_enc.pe",
        "transformer.after_norm.weight", "transformer.after_norm.bias",
    ]
    attention = [k for k in keys if k.startswith("transformer.encoders.0.self_attn.")]
    assert len(attention) == 8  # q, k, v and out all carry a bias
    assert keys[-2:] == ["proj.weight", "proj.bias"]


def test_shapes_and_strides():
    adapter = _adapter()
    assert adapter.downsample.conv[1].weight.shape == (32, 24, 3)
    assert [adapter.downsample.conv[i].stride[0] for i in (1, 4, 7)] == [1, 2, 2]
    out, lengths, *_ = adapter(torch.randn(2, 50, 24), torch.tensor([50, 13]))
    assert out.shape == (2, 13, 40)
    assert lengths.tolist() == [13, 4]
    assert torch.all(out[1, 4:] == 0)


def test_positional_buffer_is_wenet_sinusoids():
    pe = _adapter().transformer.embed.pos_enc.pe  # (1, 400, 32)
    assert pe.shape == (1, 400, 32)
    position = torch.arange(400, dtype=torch.float64)[:, None]
    div_term = torch.exp(torch.arange(0, 32, 2, dtype=torch.float64) * -(math.log(10_000.0) / 32))
    assert torch.allclose(pe[0, :, 0::2], (position * div_term).sin().float(), atol=1e-5)
    assert torch.allclose(pe[0, :, 1::2], (position * div_term).cos().float(), atol=1e-5)
    assert torch.equal(wenet_sinusoids(400, 32), pe[0])


def test_causal_downsampler_ignores_right_padding():
    adapter = _adapter()
    torch.manual_seed(1)
    short = torch.randn(1, 23, 24)
    alone, alone_len, *_ = adapter(short, torch.tensor([23]))
    batch = torch.randn(2, 61, 24) * 5.0  # noisy padding after frame 23
    batch[0, :23] = short[0]
    padded, padded_len, *_ = adapter(batch, torch.tensor([23, 61]))
    assert alone_len.tolist() == [6] and padded_len.tolist() == [6, 16]
    assert torch.allclose(padded[0, :6], alone[0], atol=1e-5)


def test_lengths_agree_with_config_after_the_encoder():
    cfg = preset("smoke")
    torch.manual_seed(0)
    encoder = SpeechEncoder(cfg.encoder).eval()
    adapter = Adapter(cfg.adapter, cfg.encoder.d_model, cfg.llm.hidden_size).eval()
    assert cfg.adapter.downsample_rate == 4
    mel_lengths = [1, 2, 7, 8, 9, 31, 64, 97]
    feats = torch.randn(len(mel_lengths), max(mel_lengths), cfg.encoder.n_mels)
    with torch.no_grad():
        hidden, enc_lengths = encoder(feats, torch.tensor(mel_lengths))
        out, lengths, *_ = adapter(hidden, enc_lengths)
    assert lengths.tolist() == [cfg.llm_positions(n) for n in mel_lengths]
    assert out.shape == (len(mel_lengths), cfg.llm_positions(max(mel_lengths)), cfg.llm.hidden_size)


def test_reference_rate_is_12_5_hz():
    cfg = preset("osum-echat")
    assert cfg.llm_positions(1000) == 125 and cfg.llm_positions(3000) == 375
    adapter = _adapter()
    assert adapter.output_lengths(torch.tensor([500, 1500])).tolist() == [125, 375]


def test_too_long_input_is_rejected():
    cfg = AdapterConfig(d_model=32, n_layers=1, n_heads=2, ffn_dim=48, max_positions=5, dropout=0.0)
    adapter = _adapter(cfg)
    adapter(torch.randn(1, 20, 24), torch.tensor([20]))
    with pytest.raises(ValueError, match="max_positions=5"):
        adapter(torch.randn(1, 21, 24), torch.tensor([21]))


def test_wrong_width_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, T, 24\)"):
        _adapter()(torch.randn(1, 8, 25), torch.tensor([8]))


def test_gradients_reach_every_parameter():
    adapter = _adapter().train()
    out = adapter(torch.randn(2, 30, 24), torch.tensor([30, 9])).embeddings
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in adapter.parameters())


def test_output_rms_scales_every_valid_frame_without_new_weights():
    import dataclasses

    plain, scaled = _adapter(), _adapter(dataclasses.replace(TINY, output_rms=0.05))
    assert list(scaled.state_dict()) == list(plain.state_dict())
    x, lengths = torch.randn(2, 30, 24), torch.tensor([30, 17])
    out = scaled(x, lengths)
    reference = plain(x, lengths)
    valid = torch.arange(out.embeddings.shape[1])[None] < out.lengths[:, None]
    rms = out.embeddings[valid].pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.05), atol=1e-6)
    direction = torch.nn.functional.cosine_similarity(out.embeddings[valid], reference.embeddings[valid], dim=-1)
    assert torch.allclose(direction, torch.ones_like(direction), atol=1e-5)
    assert not out.embeddings[~valid].any()


def test_pack_tokens_collapses_the_greedy_path_to_the_front():
    from echat.models.adapter import pack_tokens

    frames = torch.arange(1.0, 8.0)[None, :, None].repeat(2, 1, 2)  # (2, 7, 2): frame t holds t + 1
    blank = 9
    ids = torch.tensor([[9, 3, 3, 9, 3, 5, 9], [4, 9, 9, 9, 9, 9, 9]])  # row 1 has 3 valid frames
    packed = pack_tokens(frames, ids, torch.tensor([7, 3]), blank)
    assert packed[0, :, 0].tolist() == [2.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0]  # 3, 3 merged; 3 after a blank kept
    assert packed[1, :, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_a_token_pack_adapter_reads_the_blank_as_nothing_and_keeps_gradients():
    import dataclasses

    adapter = _adapter(dataclasses.replace(TINY, output="token_pack")).train()
    table = torch.randn(12, 40, requires_grad=True)  # (V, output_dim): the LLM's token embeddings
    out = adapter(torch.randn(2, 30, 24), torch.tensor([30, 9]), table)
    assert out.token_logits.shape == (2, 8, 13)
    kept = (out.embeddings.abs().sum(-1) > 0).sum(1)  # non-zero frames per clip
    ids = out.token_logits.argmax(-1)
    for row, length in enumerate(out.lengths.tolist()):
        path = [i for t, i in enumerate(ids[row, :length].tolist()) if i != 12 and (t == 0 or i != ids[row, t - 1])]
        assert int(kept[row]) == len(path)
    out.embeddings.sum().backward()
    assert adapter.proj.weight.grad is not None and table.grad is not None


def test_a_hard_pack_gives_the_llm_the_chosen_rows_and_the_softmax_its_gradient():
    import dataclasses

    from echat.models.adapter import ctc_path
    from echat.tokens import CUE_FIELDS, LABEL_SETS

    cfg = dataclasses.replace(TINY, output="token_pack", cue_frames=True, hard_pack=True)
    adapter = _adapter(cfg).train()
    table = torch.randn(40, 40)  # (V, output_dim); the blank is id 40
    cue_ids = {name: torch.arange(len(LABEL_SETS[name])) + 20 for name in CUE_FIELDS}
    out = adapter(torch.randn(1, 60, 24), torch.tensor([60]), table, cue_ids)
    length = int(out.lengths[0])
    path = ctc_path(out.token_logits.argmax(-1)[0, :length].tolist(), blank=40)
    words = min(len(path), length - len(CUE_FIELDS))  # the pack: the spoken tokens, then one frame per field
    chosen = [table[i] for i in path[:words]]
    chosen += [table[cue_ids[name][int(out.cue_logits[name][0].argmax())]] for name in CUE_FIELDS]
    assert torch.allclose(out.embeddings[0, :len(chosen)], torch.stack(chosen), atol=1e-5)
    out.embeddings.sum().backward()
    assert adapter.proj.weight.grad.abs().sum() > 0 and adapter.cue_trunk[0].weight.grad.abs().sum() > 0


def test_arrange_pack_lays_the_blocks_out_in_each_clips_layout():
    from echat.models.adapter import arrange_pack
    from echat.tokens import END_BLOCK, WORDS_BLOCK, pack_layout

    words = torch.zeros(4, 10, 1)  # (B, T, H): words 1, 2, 3 packed at the front of every clip
    words[:, :3, 0] = torch.tensor([1.0, 2.0, 3.0])
    singles = torch.tensor([6.0, 7.0, 8.0, 9.0])[None, :, None].repeat(4, 1, 1)  # (B, F=4, H): field i -> 6 + i
    layouts = torch.tensor([[WORDS_BLOCK, 0, 1, 2, 3], [1, WORDS_BLOCK, 0, 2, 3], [0, 1, 2, 3, WORDS_BLOCK],
                            [WORDS_BLOCK, 3, 2, 1, 0]])
    frames, counts = arrange_pack(words, torch.tensor([3, 3, 3, 3]), singles, layouts, torch.tensor([10, 10, 10, 6]))
    assert frames[0, :, 0].tolist() == [1, 2, 3, 6, 7, 8, 9, 0, 0, 0]  # the transcript, then the cues
    assert frames[1, :, 0].tolist() == [7, 1, 2, 3, 6, 8, 9, 0, 0, 0]  # field 1 leads, the rest after the words
    assert frames[2, :, 0].tolist() == [6, 7, 8, 9, 1, 2, 3, 0, 0, 0]
    assert frames[3, :, 0].tolist() == [1, 2, 9, 8, 7, 6, 0, 0, 0, 0]  # 6 frames: every cue, the words that fit
    assert counts.tolist() == [7, 7, 7, 6]

    with_end = torch.cat([singles, torch.full((4, 1, 1), 5.0)], dim=1)  # the end frame (5) after the fields
    layouts = torch.tensor([pack_layout("<AGE> <GENDER>", end_frame=True), pack_layout("<TRANSCRIBE>", end_frame=True),
                            pack_layout("<TRANSCRIBE> <EMOTION>", end_frame=True),
                            (WORDS_BLOCK, 0, 1, 2, 3, END_BLOCK)])
    frames, counts = arrange_pack(words, torch.tensor([3, 3, 3, 3]), with_end, layouts, torch.tensor([10] * 4))
    assert frames[0, :, 0].tolist() == [7, 6, 5, 1, 2, 3, 8, 9, 0, 0]  # age, gender, end: what the answer copies
    assert frames[1, :, 0].tolist() == [1, 2, 3, 5, 6, 7, 8, 9, 0, 0]  # the transcript, then the end
    assert frames[2, :, 0].tolist() == [1, 2, 3, 8, 5, 6, 7, 9, 0, 0]  # the transcript, emotion, then the end
    assert frames[3, :, 0].tolist() == [1, 2, 3, 6, 7, 8, 9, 5, 0, 0]
    assert counts.tolist() == [8] * 4


def test_cue_frames_follow_the_spoken_tokens_and_mix_each_fields_label_tags():
    import dataclasses

    from echat.tokens import CUE_FIELDS, LABEL_SETS

    cfg = dataclasses.replace(TINY, output="token_pack", cue_frames=True)
    adapter = _adapter(cfg).train()
    table = torch.randn(40, 40, requires_grad=True)  # (V, output_dim)
    cue_ids = {}
    for name in CUE_FIELDS:  # distinct token ids per label tag, after the "words" 0..9
        cue_ids[name] = torch.arange(len(LABEL_SETS[name])) + 10 + sum(len(ids) for ids in cue_ids.values())
    out = adapter(torch.randn(2, 60, 24), torch.tensor([60, 40]), table, cue_ids)
    assert set(out.cue_logits) == set(CUE_FIELDS)
    assert all(out.cue_logits[name].shape == (2, len(LABEL_SETS[name])) for name in CUE_FIELDS)
    ids = out.token_logits.argmax(-1)
    for row, length in enumerate(out.lengths.tolist()):
        spoken = len([i for t, i in enumerate(ids[row, :length].tolist())
                      if i != 40 and (t == 0 or i != ids[row, t - 1])])
        start = min(spoken, length - len(CUE_FIELDS))
        for offset, name in enumerate(CUE_FIELDS):
            expected = out.cue_logits[name][row].softmax(-1) @ table[cue_ids[name]]
            assert torch.allclose(out.embeddings[row, start + offset], expected, atol=1e-5)
    sum(logits.sum() for logits in out.cue_logits.values()).backward()
    assert adapter.cues["gender"].weight.grad is not None and adapter.cue_trunk[0].weight.grad is not None


def test_the_end_frame_is_the_end_tokens_row_where_the_layout_puts_it_and_the_cues_read_the_log_mel():
    import dataclasses

    from echat.models.adapter import mel_statistics
    from echat.tokens import CUE_FIELDS, LABEL_SETS, pack_layout

    cfg = dataclasses.replace(TINY, output="token_pack", cue_frames=True, hard_pack=True, end_frame=True,
                              cue_mel_stats=True)
    torch.manual_seed(0)
    adapter = Adapter(cfg, 24, 40, n_mels=6).eval()
    table = torch.randn(40, 40)  # (V, output_dim): token 39 is the end token
    cue_ids, first = {}, 10
    for name in CUE_FIELDS:
        cue_ids[name] = torch.arange(len(LABEL_SETS[name])) + first
        first += len(LABEL_SETS[name])
    x, lengths = torch.randn(2, 60, 24), torch.tensor([60, 60])
    mel = torch.randn(2, 30, 6)
    stats = mel_statistics(mel, torch.tensor([30, 20]))  # (B, 2 n_mels)
    assert torch.allclose(stats[1], torch.cat([mel[1, :20].mean(0), mel[1, :20].std(0, unbiased=False)]), atol=1e-5)
    layouts = torch.tensor([pack_layout("<AGE> <GENDER>", end_frame=True)] * 2)  # age, gender, end, ...
    out = adapter(x, lengths, table, cue_ids, layouts, end_id=39, mel_stats=stats)
    age, gender = (int(out.cue_logits[name][0].argmax()) for name in ("age", "gender"))
    assert torch.equal(out.embeddings[0, 0], table[cue_ids["age"][age]])  # the asked tags, then the end
    assert torch.equal(out.embeddings[0, 1], table[cue_ids["gender"][gender]])
    assert torch.equal(out.embeddings[0, 2], table[39])
    moved = adapter(x, lengths, table, cue_ids, layouts, end_id=39, mel_stats=stats + 3.0)
    assert not torch.equal(moved.cue_logits["emotion"], out.cue_logits["emotion"])  # the log-mel is read
    with pytest.raises(ValueError, match="end token"):
        adapter(x, lengths, table, cue_ids, layouts, mel_stats=stats)
    with pytest.raises(ValueError, match="log-mel statistics"):
        adapter(x, lengths, table, cue_ids, layouts, end_id=39)


def test_cue_frames_need_the_token_pack_output():
    import dataclasses

    with pytest.raises(ValueError, match="token_pack"):
        _adapter(dataclasses.replace(TINY, output="token_mix", cue_frames=True))


def test_bigram_frames_carry_the_rotated_frame_before_them():
    import dataclasses

    cfg = dataclasses.replace(TINY, output="token_pack", bigram_frames=True)
    adapter, again = _adapter(cfg), _adapter(cfg, seed=5)
    assert torch.equal(adapter.previous_map, again.previous_map)  # fixed: the same in every model
    assert torch.allclose(adapter.previous_map @ adapter.previous_map.T, torch.eye(40), atol=1e-5)
    assert "previous_map" not in adapter.state_dict()
    frames = torch.zeros(2, 5, 40)
    frames[0, :3] = torch.randn(3, 40)
    frames[1, :1] = torch.randn(1, 40)
    out = adapter.add_previous(frames, torch.tensor([3, 1]))
    rotate = adapter.previous_map.T
    start = adapter.first_previous * frames[0, 0].pow(2).mean().sqrt()
    assert torch.allclose(out[0, 0], frames[0, 0] + start @ rotate, atol=1e-6)
    assert torch.allclose(out[0, 2], frames[0, 2] + frames[0, 1] @ rotate, atol=1e-6)
    assert not out[0, 3:].any() and not out[1, 1:].any()  # frames after the tokens stay zero


def _cue_ids() -> dict[str, torch.Tensor]:
    """field -> distinct token ids (labels,) of its label tags, after the "words" 0..9."""
    from echat.tokens import CUE_FIELDS, LABEL_SETS

    out, first = {}, 10
    for name in CUE_FIELDS:
        out[name] = torch.arange(len(LABEL_SETS[name])) + first
        first += len(LABEL_SETS[name])
    return out


def test_pack_layouts_lay_the_cue_frames_out_per_clip():
    import dataclasses

    from echat.tokens import CUE_FIELDS, WORDS_BLOCK

    cfg = dataclasses.replace(TINY, output="token_pack", cue_frames=True)
    adapter = _adapter(cfg).eval()
    table, cue_ids = torch.randn(40, 40), _cue_ids()
    x, lengths = torch.randn(2, 60, 24), torch.tensor([60, 60])
    plain = adapter(x, lengths, table, cue_ids)
    layouts = torch.tensor([[WORDS_BLOCK, 0, 1, 2, 3], [3, WORDS_BLOCK, 2, 0, 1]])
    laid = adapter(x, lengths, table, cue_ids, layouts)
    assert torch.equal(laid.embeddings[0], plain.embeddings[0])  # the default layout: nothing moves
    ids = plain.token_logits.argmax(-1)[1, :int(plain.lengths[1])].tolist()
    spoken = len([i for t, i in enumerate(ids) if i != 40 and (t == 0 or i != ids[t - 1])])
    words = min(spoken, int(plain.lengths[1]) - len(CUE_FIELDS))
    cues = plain.embeddings[1, words:words + 4]  # CUE_FIELDS order
    assert torch.allclose(laid.embeddings[1, 0], cues[3])  # the event frame leads
    assert torch.allclose(laid.embeddings[1, 1:1 + words], plain.embeddings[1, :words])
    assert torch.allclose(laid.embeddings[1, 1 + words:4 + words], cues[[2, 0, 1]])


def test_align_end_moves_the_tokens_to_the_end_of_each_clip():
    from echat.models.adapter import align_end

    frames = torch.zeros(2, 6, 1)
    frames[0, :3, 0] = torch.tensor([1.0, 2.0, 3.0])
    frames[1, :2, 0] = torch.tensor([4.0, 5.0])
    moved = align_end(frames, counts=torch.tensor([3, 2]), lengths=torch.tensor([6, 4]))
    assert moved[0, :, 0].tolist() == [0, 0, 0, 1, 2, 3]
    assert moved[1, :, 0].tolist() == [0, 0, 4, 5, 0, 0]  # within the clip's 4 valid frames


def test_an_end_aligned_pack_ends_every_clip_with_its_last_cue_frame():
    import dataclasses


    start = dataclasses.replace(TINY, output="token_pack", cue_frames=True, bigram_frames=True)
    end = dataclasses.replace(start, pack_align="end")
    table, cue_ids = torch.randn(40, 40), _cue_ids()
    x, lengths = torch.randn(2, 60, 24), torch.tensor([60, 44])
    front, back = (_adapter(c).eval()(x, lengths, table, cue_ids) for c in (start, end))
    for row, length in enumerate(front.lengths.tolist()):
        kept = front.embeddings[row, :length].abs().sum(-1) > 0
        count = int(kept.sum())
        assert kept[:count].all()  # packed to the front ...
        assert torch.allclose(back.embeddings[row, length - count:length], front.embeddings[row, :count])
        assert not back.embeddings[row, :length - count].any()  # ... or to the end of the clip
