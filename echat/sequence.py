"""From a prompt layout, its audio clips and its targets to the flat sequence the model reads.

One encoder serves training batches (:class:`echat.data.pipeline.SampleEncoder`) and ``generate``
alike, so a prompt at inference is laid out token for token as in training.

Design choices:
- A layout (:func:`echat.prompts.build_layout`) becomes ONE flat sequence: ``ids`` (L,) with a
  ``stream`` code per position saying which table embeds it (text / speech / encoder frame), and
  ``labels`` (L,) in the combined text+speech class space (speech id ``s`` -> ``text_vocab + s``),
  ``-100`` outside the loss. An audio segment takes ``config.llm_positions(frames)`` positions
  between the audio BOS/EOS speech ids; the model fills them with the clip's adapter frames.
- The ``&&`` piece of ``<&&>`` (an unknown label) is never a target.
"""

from __future__ import annotations

import torch

from echat.config import EChatConfig
from echat.prompts import Segment
from echat.tokens import IGNORE_INDEX, OutputType, SpecialIds, Stream, pack_layout, plain_pack_layout


class SequenceEncoder:
    """Layout segments + clip features -> ``ids``, ``stream`` and ``labels`` for one model
    (config + tokenizer). ``text_lm``: every text position of a clip-less sequence is a target."""

    def __init__(self, config: EChatConfig, tokenizer, text_lm: bool = False):
        self.config = config
        # stage 0: every text position of a text-only sample is a target (plain language modelling of the
        # corpus text); a sample with audio keeps its answer as the only target, which the LLM must learn to
        # read from the audio (whole-text targets there drowned the only-P answers: docs/hearing.md E68)
        self.text_lm = text_lm
        self.tokenizer = tokenizer
        self.ids = SpecialIds.build(config, tokenizer)
        self._cache: dict[str, list[int]] = {}

    def sequence(self, segments: list[Segment], feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Flat ``ids``, ``stream`` and ``labels`` (each (L,)) of a layout; ``feats`` are its clips,
        each (T_i, n_mels)."""
        ids, stream, labels = [], [], []
        for seg in segments:
            seg_ids, seg_stream = self._segment(seg, feats)
            ids += seg_ids
            stream += seg_stream
            labels += self._labels(seg, seg_ids, whole_text=self.text_lm and not feats)
        return tuple(torch.tensor(xs, dtype=torch.long) for xs in (ids, stream, labels))

    def _segment(self, seg: Segment, feats: list[torch.Tensor]) -> tuple[list[int], list[int]]:
        if seg.kind == "text":
            ids = self.text_ids(seg.text)
            return ids, [Stream.TEXT] * len(ids)
        if seg.kind == "speech":
            return list(seg.tokens), [Stream.SPEECH] * len(seg.tokens)
        n = self.config.llm_positions(feats[seg.clip].shape[0])
        ids = [self.ids.audio_bos] + [0] * n + [self.ids.audio_eos]
        return ids, [Stream.SPEECH] + [Stream.AUDIO] * n + [Stream.SPEECH]

    def _labels(self, seg: Segment, ids: list[int], whole_text: bool) -> list[int]:
        if not seg.loss and not (whole_text and seg.kind == "text"):
            return [IGNORE_INDEX] * len(ids)
        if seg.kind == "speech":
            return [self.ids.text_vocab + s for s in ids]
        return [IGNORE_INDEX if i == self.ids.unknown else i for i in ids]

    def text_ids(self, text: str) -> list[int]:
        """Token ids of a text segment (cached: system prompts and headers repeat)."""
        if text not in self._cache:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[text] = ids
        return list(self._cache[text])


def clip_pack_layouts(config: EChatConfig, task: str, kind: OutputType, clips: int) -> list[tuple[int, ...]]:
    """The token-pack layout of each of ``clips`` clips of a ``task`` sample (the current clip last): the
    answer's order with ``AdapterConfig.task_ordered_cues`` (:func:`echat.tokens.pack_layout`), otherwise,
    and for history clips, the transcript then the cue frames in CUE_FIELDS order; each with the answer's
    end frame under ``AdapterConfig.end_frame``."""
    if not clips:
        return []
    end = config.adapter.end_frame
    plain = plain_pack_layout(end)
    current = pack_layout(task, kind.thinks, end) if config.adapter.task_ordered_cues else plain
    return [plain] * (clips - 1) + [current]
