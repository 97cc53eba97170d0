"""The bridge heads: a CTC that rewards frames shaped like the spoken tokens, cue heads that learn, greedy
character transcripts, and heads read back from a trainer checkpoint."""

import pytest
import torch

from echat.config import preset
from echat.models.heads import CHARS, BridgeHeads, load_heads


def test_ctc_prefers_frames_that_look_like_the_spoken_tokens():
    torch.manual_seed(0)
    table = torch.randn(20, 16)  # (V, H) a text embedding table
    heads = BridgeHeads(8, 16)
    heads.blank.data = -table.mean(0)
    with torch.no_grad():
        heads.log_scale.fill_(2.0)
    spoken = torch.tensor([3, 7, 7, 12])
    aligned = table[torch.tensor([3, 3, 7, 0, 7, 12, 12])]  # (T, H): repeats and a separator frame
    aligned[3] = heads.blank.data
    lengths = torch.tensor([7])
    good = heads.ctc_loss(aligned[None], lengths, table, spoken, torch.tensor([4]))
    shuffled = heads.ctc_loss(aligned[torch.randperm(7)][None], lengths, table, spoken, torch.tensor([4]))
    assert float(good) < float(shuffled)


def test_cue_heads_learn_a_separable_cue():
    torch.manual_seed(0)
    heads = BridgeHeads(8, 4)
    labels = torch.tensor([0, 1] * 8)
    frames = torch.randn(16, 5, 8) + 2.0 * labels[:, None, None]  # (N, T, H): the cue shifts every frame
    optimizer = torch.optim.Adam(heads.parameters(), lr=0.05)
    first = None
    for _ in range(50):
        loss = heads.cue_losses(frames, torch.full((16,), 5), {"gender": labels})["gender"]
        first = first if first is not None else float(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.2 * first


def test_transcripts_collapse_repeats_and_drop_blanks():
    heads = BridgeHeads(len(CHARS) + 1, 4)
    with torch.no_grad():
        heads.chars.weight.copy_(torch.eye(len(CHARS) + 1))
        heads.chars.bias.zero_()
    blank = len(CHARS)
    path = [CHARS.index("o"), CHARS.index("o"), blank, CHARS.index("o"), CHARS.index("k"), blank]
    frames = torch.nn.functional.one_hot(torch.tensor([path]), len(CHARS) + 1).float()  # (1, T, C + 1)
    assert heads.transcripts(frames, torch.tensor([6])) == ["ook"]
    assert heads.transcripts(frames, torch.tensor([2])) == ["o"]


def test_load_heads_refuses_a_checkpoint_without_them(tmp_path):
    torch.save({"step": 1}, tmp_path / "trainer_state.pt")
    with pytest.raises(ValueError, match="trained no bridge heads"):
        load_heads(tmp_path, preset("smoke"))
