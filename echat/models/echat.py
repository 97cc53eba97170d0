"""The EChat model: speech encoder -> adapter -> Qwen2 LLM with a text head and a speech head.

Design choices:
- The LLM is transformers' ``Qwen2ForCausalLM`` (optionally LoRA-wrapped by peft), fp32 on CPU and
  bf16 on GPU; we only ever pass it ``inputs_embeds``.
- One flat, right-padded input sequence per row (see :mod:`echat.data.pipeline`): each position is
  embedded by the text table, the speech table, or filled with an adapter frame, by its ``stream``.
- The loss is one cross-entropy over the combined text+speech classes for speech-output tasks (as in
  the reference) and over the text head only for text-output tasks. Logits are computed only at the
  positions that have a target, from the last hidden state only — never all hidden states, never the
  full text logits twice. ``speech_loss_weight`` scales the speech terms (1.0 = the reference).
- Attribute names (``encoder``, ``adapter``, ``llm``, ``speech_embedding``, ``speech_head``) are the
  contract with :mod:`echat.models.reference_keys` (import/export of the released checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from echat.config import EChatConfig, LLMConfig, ThinkMode, preset
from echat.models.adapter import TOKEN_OUTPUTS, Adapter, AdapterOutput, mel_statistics
from echat.models.batch_generate import generate_batch
from echat.models.checkpoint import (
    check_shapes,
    default_tokenizer,
    load_weights,
    materialise_fixed_buffers,
    place_model,
    read_checkpoint,
    reference_weights,
    save_checkpoint,
)
from echat.models.encoder import EncoderOutput, SpeechEncoder
from echat.models.generate import generate, stream
from echat.models.lora import add_lora
from echat.models.reference_keys import layout_lines, reference_state_dict
from echat.models.speech import speech_embedding, speech_head
from echat.tokens import CUE_FIELDS, IGNORE_INDEX, IM_END, LABEL_SETS, Stream


def qwen2_config(cfg: LLMConfig) -> Qwen2Config:
    """transformers config of the LLM shape (no pretrained weights involved)."""
    return Qwen2Config(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="sdpa",
    )


@dataclass
class EChatOutput:
    """Training forward result: mean loss over all targets, and its text/speech parts (sums / counts)."""

    loss: Tensor
    text_loss: Tensor
    speech_loss: Tensor
    n_text: int
    n_speech: int
    text_correct: int
    speech_correct: int
    audio: AdapterOutput | None = None  # the clips' adapter frames, for auxiliary training losses
    aux: dict[str, Tensor] = field(default_factory=dict)  # auxiliary losses added by a training wrapper


class EChat(nn.Module):
    """OSUM-EChat: ``forward(batch)`` for training, ``generate(...)`` for inference."""

    def __init__(self, config: EChatConfig, tokenizer=None):
        super().__init__()
        # Subnormal floats are flushed to zero (CPU): one generate on the mini preset with random weights took
        # 178 s in subnormal arithmetic, and ran at 485 tokens/s with them flushed (issue 12). Every training,
        # evaluation and chat builds an EChat first; the setting is the process's (torch has no per-model one).
        torch.set_flush_denormal(True)
        self.config = config
        hidden = config.llm.hidden_size
        self.encoder = SpeechEncoder(config.encoder)
        self.adapter = Adapter(config.adapter, config.encoder.d_model, hidden, config.encoder.n_mels)
        self.llm = Qwen2ForCausalLM(qwen2_config(config.llm))
        self.speech_embedding = speech_embedding(config.speech, hidden)
        self.speech_head = speech_head(config.speech, hidden)
        self.tokenizer = tokenizer
        self.encoder_cache = None  # an EncoderCache while a trainer keeps the encoder frozen
        self.token2wav = None  # a Token2Wav (echat.token2wav) that generate() uses to fill result.audio

    # -- construction and files (the file formats are in echat.models.checkpoint) -----------------
    @classmethod
    def from_preset(cls, name: str | EChatConfig, device: str | torch.device = "cpu", tokenizer=None) -> EChat:
        """A randomly initialised model of a preset (or config), with a tokenizer, on ``device``."""
        config = preset(name) if isinstance(name, str) else name
        model = cls(config, tokenizer if tokenizer is not None else default_tokenizer(config))
        if config.llm.lora.enabled:
            add_lora(model)
        return place_model(model, device)

    @classmethod
    def from_checkpoint(cls, path, device: str | torch.device = "cpu") -> EChat:
        """The model of a checkpoint folder written by :meth:`save`."""
        config, tokenizer = read_checkpoint(path)
        model = cls(config, tokenizer)
        if config.llm.lora.enabled:
            add_lora(model)
        load_weights(model, path)
        return place_model(model, device)

    @classmethod
    def from_reference_checkpoint(cls, path, tokenizer=None, device: str | torch.device = "cpu",
                                  config: EChatConfig | None = None, dtype: torch.dtype | None = None) -> EChat:
        """The weights of a released OSUM-EChat ``.pt`` (or our export of one), built on the meta device and
        assigned, so that a 3.5 B checkpoint is never held twice: the file is memory-mapped, its bf16 tensors go
        straight to ``device`` in ``dtype`` (default bf16 on a GPU, fp32 on the CPU; no float32 copy on the way),
        and the unused ``ln_speech`` is never loaded."""
        config = config or preset("osum-echat")
        ours = reference_weights(path, config)
        with torch.device("meta"):
            model = cls(config, tokenizer if tokenizer is not None else default_tokenizer(config))
        check_shapes(model, ours, path)
        model.load_state_dict(ours, strict=False, assign=True)
        model.causal_lm.tie_weights()
        materialise_fixed_buffers(model, "cpu")
        return place_model(model, device, dtype)

    def save(self, folder) -> None:
        """Write a checkpoint folder (weights, config, tokenizer), atomically."""
        save_checkpoint(self, folder)

    # -- properties ------------------------------------------------------------------------------
    @property
    def causal_lm(self) -> Qwen2ForCausalLM:
        """The bare ``Qwen2ForCausalLM`` (below a peft wrapper, if any)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def device(self) -> torch.device:
        return self.speech_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.speech_head.weight.dtype

    # -- embedding -------------------------------------------------------------------------------
    def encode_clips(self, feats: Tensor, lengths: Tensor, pack_layouts: Tensor | None = None) -> AdapterOutput:
        """Log-mel clips (N, T, n_mels) with lengths (N,) -> adapter frames (N, T'', hidden), padded,
        with their valid lengths (N,); ``pack_layouts``: see :meth:`adapt`."""
        return self.adapt(self.run_encoder(feats, lengths), pack_layouts, feats, lengths)

    def adapt(self, enc: EncoderOutput, pack_layouts: Tensor | None = None, feats: Tensor | None = None,
              feat_lengths: Tensor | None = None) -> AdapterOutput:
        """Encoder frames -> the adapter frames the LLM reads (a token-mix adapter mixes the LLM's own
        input embeddings); ``pack_layouts`` (N, blocks): each clip's token-pack layout
        (Batch.pack_layouts); ``feats`` (N, T, n_mels) with ``feat_lengths`` (N,): the clips' log-mel, which
        an adapter with ``cue_mel_stats`` also reads."""
        table = self.llm.get_input_embeddings().weight if self.adapter.output in TOKEN_OUTPUTS else None
        cue_ids = self.cue_token_ids() if self.config.adapter.cue_frames else None
        end_id = self.tokenizer.convert_tokens_to_ids(IM_END) if self.config.adapter.end_frame else None
        stats = None
        if self.config.adapter.cue_mel_stats and feats is not None:
            stats = mel_statistics(feats.to(self.dtype), feat_lengths)
        return self.adapter(enc.hidden, enc.lengths, table, cue_ids, pack_layouts, end_id, stats)

    def cue_token_ids(self) -> dict[str, Tensor]:
        """field -> the token ids (labels,) of its label tags (LABEL_SETS order), each tag one token of the
        text tokenizer, as the mini tokenizer makes them; an adapter with cue frames mixes their embeddings."""
        if self.tokenizer is None:
            raise ValueError("an adapter with cue frames needs the model's text tokenizer")
        cached = self.__dict__.get("_cue_ids")
        if cached and cached[0] is self.tokenizer and cached[1] == self.device:
            return cached[2]
        out = {}
        for name in CUE_FIELDS:
            ids = [self.tokenizer(tag, add_special_tokens=False)["input_ids"] for tag in LABEL_SETS[name]]
            split = [tag for tag, row in zip(LABEL_SETS[name], ids, strict=True) if len(row) != 1]
            if split:
                raise ValueError(f"cue frames need every label tag as one token; this tokenizer splits {split}")
            out[name] = torch.tensor([row[0] for row in ids], device=self.device)
        self.__dict__["_cue_ids"] = (self.tokenizer, self.device, out)
        return out

    def run_encoder(self, feats: Tensor, lengths: Tensor) -> EncoderOutput:
        """Encoder frames (N, T', D) of log-mel clips (N, T, n_mels), through the cache when one is set."""
        feats = feats.to(self.dtype)
        if self.encoder_cache is not None:
            return self.encoder_cache(self.encoder, feats, lengths)
        return self.encoder(feats, lengths)

    def encode_audio(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """The valid adapter frames of all clips, concatenated in order: (sum of valid frames, hidden)."""
        return _valid_frames(self.encode_clips(feats, lengths))

    def embed(self, ids: Tensor, stream: Tensor, feats: Tensor | None = None,
              feat_lengths: Tensor | None = None, clips: AdapterOutput | None = None) -> Tensor:
        """Input embeddings (B, L, H) for ids/stream (B, L); AUDIO positions take the clips' frames
        in row-major order (row 0's clips first). ``clips`` passes already encoded clips."""
        is_text = stream == Stream.TEXT
        text = self.llm.get_input_embeddings()(torch.where(is_text, ids, 0))
        speech = self.speech_embedding(torch.where(stream == Stream.SPEECH, ids, 0))
        embeds = torch.where(is_text.unsqueeze(-1), text, speech)
        is_audio = stream == Stream.AUDIO
        n_audio = int(is_audio.sum())
        if n_audio == 0:
            return embeds
        frames = _valid_frames(clips if clips is not None else self.encode_clips(feats, feat_lengths))
        if frames.shape[0] != n_audio:
            raise ValueError(f"{n_audio} audio positions in the sequence but the clips give {frames.shape[0]} "
                             "adapter frames: the layout and the adapter's frame rate disagree")
        return embeds.masked_scatter(is_audio.unsqueeze(-1), frames.to(embeds.dtype))

    # -- training forward ------------------------------------------------------------------------
    def forward(self, batch, clips: AdapterOutput | None = None) -> EChatOutput:
        """Loss of a :class:`~echat.data.pipeline.Batch` (ids/stream/labels/attention_mask: (B, L));
        ``clips`` passes the batch's clips already encoded."""
        if clips is None and batch.feats.shape[0]:
            clips = self.encode_clips(batch.feats, batch.feat_lengths, batch.pack_layouts)
        h, targets, _ = self._target_states(batch, clips)
        out = self._loss(h, targets, speech_out=batch.kind.speech_out)
        out.audio = clips
        return out

    def _target_states(self, batch, clips: AdapterOutput | None) -> tuple[Tensor, Tensor, Tensor]:
        """Last hidden states at the positions that have a target: (N, H), their targets (N,) and the
        row each belongs to (N,), in row-major order."""
        embeds = self.embed(batch.ids, batch.stream, clips=clips)
        hidden = self.causal_lm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                      use_cache=False).last_hidden_state  # (B, L, H)
        targets = batch.labels[:, 1:]  # the token at t+1 is predicted from position t
        has_target = targets != IGNORE_INDEX
        rows = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)
        return hidden[:, :-1][has_target], targets[has_target], rows[has_target]

    @torch.no_grad()
    def teacher_forced(self, batch, clips: AdapterOutput | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Greedy predictions under teacher forcing at every target position of ``batch``:
        (predicted (N,), target (N,), row (N,)), in the combined text+speech class space. ``clips``
        replaces what the batch's audio would give."""
        if clips is None and batch.feats.shape[0]:
            clips = self.encode_clips(batch.feats, batch.feat_lengths, batch.pack_layouts)
        h, targets, rows = self._target_states(batch, clips)
        logits = self.causal_lm.lm_head(h)  # (N, V_text)
        if batch.kind.speech_out:
            logits = torch.cat([logits, self.speech_head(h)], dim=-1)  # (N, V_text + V_speech)
        return logits.argmax(-1), targets, rows

    def _loss(self, h: Tensor, targets: Tensor, speech_out: bool) -> EChatOutput:
        """Cross-entropy over text (+ speech) classes. h: (N, H), targets: (N,) in the combined space."""
        logits = self.causal_lm.lm_head(h)  # (N, V_text)
        if speech_out:
            logits = torch.cat([logits, self.speech_head(h)], dim=-1)  # (N, V_text + V_speech)
        per_token = F.cross_entropy(logits.float(), targets, reduction="none")
        is_speech = targets >= self.config.llm.vocab_size
        weight = torch.where(is_speech, self.config.train.speech_loss_weight, 1.0)
        n = max(int(targets.numel()), 1)
        correct = logits.argmax(-1) == targets
        return EChatOutput(
            loss=(per_token * weight).sum() / n,
            text_loss=per_token[~is_speech].sum() / max(int((~is_speech).sum()), 1),
            speech_loss=per_token[is_speech].sum() / max(int(is_speech.sum()), 1),
            n_text=int((~is_speech).sum()), n_speech=int(is_speech.sum()),
            text_correct=int(correct[~is_speech].sum()), speech_correct=int(correct[is_speech].sum()),
        )

    # -- inference -------------------------------------------------------------------------------
    def generate(self, audio=None, text: str | None = None, task: str | None = None,
                 think: ThinkMode | str | None = None, options=None, **kwargs):
        """One call for every task; see :func:`echat.models.generate.generate`."""
        return generate(self, audio=audio, text=text, task=task, think=think, options=options, **kwargs)

    def stream(self, audio=None, text: str | None = None, task: str | None = None,
               think: ThinkMode | str | None = None, options=None, **kwargs):
        """Iterator of text pieces and speech-token chunks; see :func:`echat.models.generate.stream`."""
        return stream(self, audio=audio, text=text, task=task, think=think, options=options, **kwargs)

    def generate_batch(self, requests, options=None, **kwargs):
        """Many requests, one LLM forward per step; see :func:`echat.models.batch_generate.generate_batch`."""
        return generate_batch(self, requests, options=options, **kwargs)


def _valid_frames(clips: AdapterOutput) -> Tensor:
    """(N, T'', H) padded frames -> (sum of valid frames, H), clip after clip."""
    valid = torch.arange(clips.embeddings.shape[1], device=clips.embeddings.device)[None] < clips.lengths[:, None]
    return clips.embeddings[valid]


def reference_layout(name: str | EChatConfig = "osum-echat") -> list[str]:
    """The released checkpoint layout of a preset, from a model built on the meta device (no memory):
    ``key<TAB>shape<TAB>bfloat16|buffer`` lines."""
    config = preset(name) if isinstance(name, str) else name
    with torch.device("meta"):
        model = EChat(config)
    state = model.state_dict()
    buffers = {n for n, _ in model.named_buffers() if n in state}
    return layout_lines(reference_state_dict(state, config), buffers)
