"""The auxiliary bridge heads: the encoder's character CTC and pooled cue classifiers, and the blank
vector and temperature of the adapter's CTC over the LLM's token table (mini world, training signal and
probe; their targets and losses are assembled in :mod:`echat.train.bridge`).

Design choices:
- The heads are not part of :class:`~echat.models.echat.EChat`: checkpoints and the reference key layout
  stay exactly those of the model; a trainer keeps the heads' weights in its own state
  (``trainer_state.pt``, key ``bridge``), from which :func:`load_heads` reads them back.
- Each loss takes plain tensors (frames, lengths, targets), so the heads know nothing of records.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echat.models.adapter import ctc_path
from echat.models.checkpoint import load_tensors
from echat.models.encoder import mean_frame
from echat.tokens import CUE_FIELDS, IGNORE_INDEX, LABEL_SETS

# Characters of the encoder's CTC head (the CTC blank is one more class, after these).
CHARS = " 'abcdefghijklmnopqrstuvwxyz"


class BridgeHeads(nn.Module):
    """The encoder's character CTC and cue heads, and the adapter's CTC blank vector and temperature."""

    def __init__(self, encoder_dim: int, hidden: int):
        super().__init__()
        self.chars = nn.Linear(encoder_dim, len(CHARS) + 1)
        self.cues = nn.ModuleDict({name: nn.Linear(encoder_dim, len(LABEL_SETS[name])) for name in CUE_FIELDS})
        self.blank = nn.Parameter(torch.zeros(hidden))
        self.log_scale = nn.Parameter(torch.zeros(()))

    def char_ctc_loss(self, frames: Tensor, lengths: Tensor, chars: Tensor, char_lengths: Tensor) -> Tensor:
        """Encoder frames (N, T, D) with lengths (N,), target characters (indices into :data:`CHARS`,
        concatenated) with their lengths (N,) -> mean CTC loss per target character."""
        log_probs = self.chars(frames).float().log_softmax(-1).transpose(0, 1)  # (T, N, C + 1)
        return F.ctc_loss(log_probs, chars, lengths, char_lengths, blank=len(CHARS), zero_infinity=True)

    def ctc_loss(self, frames: Tensor, lengths: Tensor, token_table: Tensor, tokens: Tensor,
                 token_lengths: Tensor) -> Tensor:
        """Adapter frames (N, T, H) with lengths (N,), token_table (V, H), target tokens (concatenated)
        with their lengths (N,) -> mean CTC loss per target token."""
        table = torch.cat([token_table, self.blank[None]], dim=0)  # (V + 1, H); blank is class V
        logits = frames @ table.T * self.log_scale.exp() / frames.shape[-1] ** 0.5  # (N, T, V + 1)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, N, V + 1)
        return F.ctc_loss(log_probs, tokens, lengths, token_lengths, blank=token_table.shape[0], zero_infinity=True)

    def cue_losses(self, frames: Tensor, lengths: Tensor, cues: dict[str, Tensor]) -> dict[str, Tensor]:
        """Cross-entropy of each cue classifier on the clips' mean encoder frame (N, D) against ``cues``
        (field -> (N,) class indices, ``IGNORE_INDEX`` where unknown); fields with no known label are left out."""
        pooled = mean_frame(frames, lengths)  # (N, D)
        out = {}
        for name, head in self.cues.items():
            labels = cues.get(name)
            if labels is not None and bool((labels != IGNORE_INDEX).any()):
                out[name] = F.cross_entropy(head(pooled).float(), labels, ignore_index=IGNORE_INDEX)
        return out

    def transcripts(self, frames: Tensor, lengths: Tensor) -> list[str]:
        """Greedy character-CTC transcripts of encoder frames (N, T, D) with lengths (N,)."""
        ids = self.chars(frames).argmax(-1)  # (N, T)
        return ["".join(CHARS[i] for i in ctc_path(row[:n].tolist(), blank=len(CHARS)))
                for row, n in zip(ids, lengths, strict=True)]


def load_heads(checkpoint: str | Path, config) -> BridgeHeads:
    """The bridge heads saved in a trainer checkpoint (``ckpt/step_N/trainer_state.pt``)."""
    state = load_tensors(Path(checkpoint) / "trainer_state.pt")
    if "bridge" not in state:
        raise ValueError(f"{checkpoint}: this checkpoint's stage trained no bridge heads")
    heads = BridgeHeads(config.encoder.d_model, config.llm.hidden_size)
    heads.load_state_dict(state["bridge"])
    return heads.eval()
