"""Auxiliary losses that teach the adapter to speak the LLM's language (mini world, training only).

Why: the real system bridges a pre-trained Whisper encoder and a 3 B instruction-tuned LLM; the mini
world starts both from a few minutes of training, and the LLM path alone learns to ignore the audio
(it recites fluent corpus sentences; see ``../shared/reference/mini_world_feasibility.md``). Two
direct signals on the adapter output close that gap:

- **token CTC through the LLM's own embedding table**: each adapter frame is scored against every
  text-token embedding (plus one learned blank vector), and CTC aligns those scores with the
  transcript's tokens. The frames learn to *look like* the words spoken, in the space the LLM reads;
- **pooled cue classifiers**: the mean of a clip's frames predicts its gender, age, emotion and
  sound event through small linear heads, so the cues are present (linearly) in what the LLM sees.

The heads live in :class:`BridgeHeads`, outside :class:`~echat.models.echat.EChat`: checkpoints and the
reference key layout stay exactly those of the model; the trainer keeps the heads' weights in its own
state. :class:`BridgedModel` wraps both so that one forward (and one DDP wrapper) covers them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echat.data.schema import Record
from echat.tokens import IGNORE_INDEX, LABEL_SETS, canonical_label

# Cue field -> the key of ``Record.extra`` that holds its label.
CUE_FIELDS = {"gender": "gender", "age": "age", "emotion": "q_emotion", "event": "caption"}


@dataclass
class BridgeTargets:
    """Per clip of a batch: transcript token ids (concatenated) with their lengths (N,), and one class
    index per cue field (N,), ``IGNORE_INDEX`` where unknown."""

    tokens: Tensor
    token_lengths: Tensor
    cues: dict[str, Tensor]

    def to(self, device) -> BridgeTargets:
        return BridgeTargets(self.tokens.to(device), self.token_lengths.to(device),
                             {k: v.to(device) for k, v in self.cues.items()})


def bridge_targets(records: list[Record], tokenizer) -> BridgeTargets | None:
    """Targets for a batch whose rows each hold one clip spoken from ``extra.q_txt``; None otherwise."""
    if not records or any(not r.wav or r.history or not r.extra.get("q_txt") for r in records):
        return None
    ids = [tokenizer(r.extra["q_txt"], add_special_tokens=False)["input_ids"] for r in records]
    cues = {name: torch.tensor([_class_index(name, r.extra.get(key)) for r in records])
            for name, key in CUE_FIELDS.items()}
    return BridgeTargets(torch.tensor([i for row in ids for i in row], dtype=torch.long),
                         torch.tensor([len(row) for row in ids], dtype=torch.long), cues)


def _class_index(name: str, value) -> int:
    labels = LABEL_SETS[name]
    tag = canonical_label(name, value) if value else ""
    return labels.index(tag) if tag in labels else IGNORE_INDEX


class BridgeHeads(nn.Module):
    """The CTC blank vector, a learned CTC temperature and one linear cue classifier per field."""

    def __init__(self, hidden: int):
        super().__init__()
        self.blank = nn.Parameter(torch.zeros(hidden))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.cues = nn.ModuleDict({name: nn.Linear(hidden, len(LABEL_SETS[name])) for name in CUE_FIELDS})

    def ctc_loss(self, frames: Tensor, lengths: Tensor, token_table: Tensor, targets: BridgeTargets) -> Tensor:
        """frames (N, T, H) with lengths (N,), token_table (V, H) -> mean CTC loss per target token."""
        table = torch.cat([token_table, self.blank[None]], dim=0)  # (V + 1, H); blank is class V
        logits = frames @ table.T * self.log_scale.exp() / frames.shape[-1] ** 0.5  # (N, T, V + 1)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, N, V + 1)
        return F.ctc_loss(log_probs, targets.tokens, lengths, targets.token_lengths, blank=token_table.shape[0],
                          zero_infinity=True)

    def cue_losses(self, frames: Tensor, lengths: Tensor, targets: BridgeTargets) -> dict[str, Tensor]:
        """Cross-entropy of each cue classifier on the clips' mean frame (N, H)."""
        valid = (torch.arange(frames.shape[1], device=frames.device)[None] < lengths[:, None]).unsqueeze(-1)
        pooled = (frames * valid).sum(1) / lengths.clamp(min=1)[:, None]  # (N, H)
        out = {}
        for name, head in self.cues.items():
            labels = targets.cues.get(name)
            if labels is not None and bool((labels != IGNORE_INDEX).any()):
                out[name] = F.cross_entropy(head(pooled).float(), labels, ignore_index=IGNORE_INDEX)
        return out


class BridgedModel(nn.Module):
    """EChat plus its bridge heads; ``forward(batch, targets)`` adds ``weight`` x the auxiliary losses."""

    def __init__(self, echat: nn.Module, weight: float):
        super().__init__()
        self.echat = echat
        self.heads = BridgeHeads(echat.config.llm.hidden_size)
        self.weight = weight

    @property
    def config(self):
        return self.echat.config

    def forward(self, batch, targets: BridgeTargets | None = None):
        """The EChat output, its ``loss`` raised by the auxiliary terms; those go to ``out.aux``."""
        out = self.echat(batch)
        if targets is None or out.audio is None:
            return out
        frames, lengths = out.audio.embeddings, out.audio.lengths
        table = self.echat.llm.get_input_embeddings().weight.detach()  # the adapter moves, not the LLM
        out.aux = {"ctc": self.heads.ctc_loss(frames, lengths, table, targets),
                   **self.heads.cue_losses(frames, lengths, targets)}
        out.loss = out.loss + self.weight * sum(out.aux.values())
        return out
