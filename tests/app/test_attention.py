"""The attention picture: shapes, row sums, the audio positions' log-mel spans, on a plain and a packing adapter."""

import numpy as np
import pytest
import torch

from echat.app.attention import BLANK, attention_figure, audio_attention, mel_frames_per_position, position_sources
from echat.app.controller import Controller, Settings
from echat.app.inputs import Clip
from echat.audio import log_mel
from echat.models.adapter import spoken_tokens
from echat.models.echat import EChat
from echat.sequence import clip_pack_layouts
from echat.tokens import CUE_FIELDS, output_type

ASRP = Settings(task="ASR+P", decoding="greedy", max_new_tokens=12)


def test_attention_has_one_row_per_answer_token_and_rows_sum_to_at_most_one(scripted, hello):
    run = Controller(scripted).run(Clip(hello, "sample", "x"), "", Settings(task="S2S think", decoding="greedy"))
    amap = Controller(scripted).attention(run)
    positions = scripted.config.llm_positions(log_mel(hello).shape[0])
    assert amap.weights.shape == (scripted.config.llm.n_layers, len(run.result.text_ids), positions)
    sums = amap.weights.sum(-1)
    assert (sums <= 1 + 1e-5).all() and (sums > 0).all()
    assert len(amap.tokens) == len(run.result.text_ids) and amap.feats.shape == tuple(log_mel(hello).shape)
    assert scripted.causal_lm.config._attn_implementation == "sdpa"  # switched back after the pass


def test_rows_are_the_positions_that_predicted_each_token(scripted, hello):
    """Row j of the mean over layers equals the eager attention read at the position before token j."""
    ids = scripted.scripted_ids[:5]
    amap = audio_attention(scripted, hello, ids, "<S2TCHAT> <TEXT2TOKEN> <THINK>", think="tag")
    first = audio_attention(scripted, hello, ids[:1], "<S2TCHAT> <TEXT2TOKEN> <THINK>", think="tag")
    np.testing.assert_allclose(amap.weights[:, :1], first.weights, atol=1e-6)  # causal: later tokens change nothing
    assert not np.allclose(amap.weights[:, 0], amap.weights[:, 4])


def test_a_plain_adapter_maps_position_i_to_its_80_ms(scripted, hello):
    amap = audio_attention(scripted, hello, scripted.scripted_ids[:3], "<TRANSCRIBE>")
    per = mel_frames_per_position(scripted.config)
    assert per == 8 and all(b == "" for b in amap.blocks)
    assert amap.spans[0].tolist() == [0, 8] and amap.spans[5].tolist() == [40, 48]
    assert amap.spans[-1][1] == amap.feats.shape[0]  # the last position ends with the clip
    timed = amap.over_time(0)
    assert timed.shape == (3, amap.feats.shape[0]) and np.allclose(timed[:, 40], amap.weights[0][:, 5])


@pytest.fixture(scope="module")
def packing():
    """The mini preset's token-pack adapter (cue frames, end frame, end-aligned), random weights."""
    torch.manual_seed(0)
    return EChat.from_preset("mini").eval()


def test_a_token_pack_maps_tokens_to_their_frames_and_names_the_cue_and_end_frames(packing, hello):
    feats = log_mel(hello)
    layout = clip_pack_layouts(packing.config, "<TRANSCRIBE> <EMOTION> <AGE> <GENDER>",
                               output_type("<TRANSCRIBE>"), 1)[0]
    sources = position_sources(packing, feats, layout)
    clip = packing.encode_clips(feats[None], torch.tensor([feats.shape[0]]), torch.tensor([layout]))
    ids = clip.token_logits.argmax(-1)
    emitted = spoken_tokens(ids, clip.lengths, clip.token_logits.shape[-1] - 1)[0].nonzero()[:, 0]
    timed = sources[sources > 0] - 1
    assert timed.tolist() == emitted[:len(timed)].tolist()  # the emitting frames, in time order
    named = [int(-c) - 1 for c in sources[sources < 0]]
    assert sorted(named) == list(range(len(CUE_FIELDS) + 1))  # each cue field and the end, once


def test_the_picture_draws_over_the_log_mel(packing, hello):
    run = Controller(packing).run(Clip(hello, "sample", "x"), "", ASRP)
    amap = Controller(packing).attention(run)
    assert {"gender", "age", "emotion", "event", "end"} <= set(amap.blocks)
    assert set(amap.blocks) <= {"", BLANK, "gender", "age", "emotion", "event", "end"}
    assert (amap.weights.sum(-1) <= 1 + 1e-5).all()
    fig = attention_figure(amap, layer=1)
    assert len(fig.axes) == 4  # log-mel, heat over time, named positions, colour bar
    side = [t.get_text() for t in fig.axes[2].get_xticklabels()]
    blanks = amap.blocks.count(BLANK)
    assert side == [b for b in amap.blocks if b and b != BLANK] + ([f"{BLANK} x{blanks}"] if blanks else [])
