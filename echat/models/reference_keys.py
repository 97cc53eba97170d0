"""Key map between echat's state dict and the released OSUM-EChat checkpoint (``LLMASR_Model``).

Design choices:
- The map is a prefix table. Below each prefix our modules already use the reference's names, so a
  key only changes in its leading component(s): ``adapter.transformer.`` ↔ ``speech_transformer.``,
  ``llm.`` ↔ ``llama_model.``, ``adapter.downsample.`` ↔ ``down_sample_2.``, ``adapter.proj.`` ↔
  ``speech_llama_proj.``, ``speech_embedding.`` ↔ ``speech_token_emded.`` (the reference's typo);
  ``encoder.`` and ``speech_head.`` are unchanged. A token-mix adapter (mini world only) adds
  ``speech_mix_blank`` and ``speech_mix_log_scale`` after them, and its cue frames ``speech_cue_trunk.`` and
  ``speech_cue_heads.``.
- Export reproduces the reference's key order (its module registration order): encoder, ln_speech,
  speech_transformer, llama_model, down_sample_2, speech_llama_proj, the aliases ``embed_tokens``
  and ``lm_head``, speech_token_emded, speech_head. Within a prefix our own order is kept, which our
  modules make equal to the reference's.
- The reference's ``ln_speech`` LayerNorm is never used in its forward pass: export writes ones and
  zeros, import drops it.
- The reference stores two module aliases of the LLM's embedding and head. Export repeats the tensors;
  import takes whichever copy exists and requires equal values when both do.
- Import needs no model: it returns our keys plus the reference keys it did not expect and those it
  expected but did not find; the expected layout follows from the config. Shape checks are the caller's.
- LoRA-wrapped LLM keys are not mapped yet.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from echat.config import EChatConfig, LLMConfig
from echat.models.adapter import Adapter
from echat.models.encoder import SpeechEncoder

__all__ = [
    "KeyProblems",
    "expected_reference_keys",
    "from_reference_state_dict",
    "layout_lines",
    "reference_key",
    "reference_state_dict",
]

# (our prefix, reference prefix), in the reference's order.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("encoder.", "encoder."),
    ("adapter.transformer.", "speech_transformer."),
    ("llm.", "llama_model."),
    ("adapter.downsample.", "down_sample_2."),
    ("adapter.proj.", "speech_llama_proj."),
    ("speech_embedding.", "speech_token_emded."),
    ("speech_head.", "speech_head."),
    # The mini world's token-mix adapter output (AdapterConfig.output): not in the released model.
    ("adapter.blank", "speech_mix_blank"),
    ("adapter.log_scale", "speech_mix_log_scale"),
    ("adapter.cue_trunk.", "speech_cue_trunk."),  # its cue frames' classifiers (AdapterConfig.cue_frames)
    ("adapter.cues.", "speech_cue_heads."),
)
# Reference alias key → the reference key it duplicates.
ALIASES: dict[str, str] = {
    "embed_tokens.weight": "llama_model.model.embed_tokens.weight",
    "lm_head.weight": "llama_model.lm_head.weight",
}
LN_SPEECH_KEYS = ("ln_speech.weight", "ln_speech.bias")
_EMBED_KEY = "llama_model.model.embed_tokens.weight"
_HEAD_KEY = "llama_model.lm_head.weight"


@dataclass
class KeyProblems:
    """What :func:`from_reference_state_dict` could not place."""

    unexpected: list[str] = field(default_factory=list)  # reference keys outside the expected layout
    missing: list[str] = field(default_factory=list)  # expected reference keys that were absent

    def __bool__(self) -> bool:
        return bool(self.unexpected or self.missing)


def reference_key(key: str) -> str:
    """The reference name of one of our keys; keys under no known prefix come back unchanged."""
    for ours, ref in PREFIXES:
        if key.startswith(ours):
            return ref + key[len(ours):]
    return key


def _our_key(ref_key: str) -> str | None:
    for ours, ref in PREFIXES:
        if ref_key.startswith(ref):
            return ours + ref_key[len(ref):]
    return None


def reference_state_dict(
    our_state_dict: Mapping[str, Tensor], config: EChatConfig
) -> OrderedDict[str, Tensor]:
    """Our model's state dict under the reference's keys and in the reference's order.

    Tensors are shared, not copied; ``ln_speech`` is added as ones/zeros of the encoder width with
    the encoder's dtype and device. A tied LLM head absent from ``our_state_dict`` is filled from
    the embedding. Raises ValueError on keys with no reference counterpart.
    """
    unmapped = [key for key in our_state_dict if not any(key.startswith(ours) for ours, _ in PREFIXES)]
    if unmapped:
        raise ValueError(f"no reference name for: {', '.join(unmapped)}")
    out: OrderedDict[str, Tensor] = OrderedDict()
    for ours, ref in PREFIXES:
        for key, tensor in our_state_dict.items():
            if key.startswith(ours):
                out[ref + key[len(ours):]] = tensor
        if ours == "encoder.":
            out.update(_ln_speech(our_state_dict, config.encoder.d_model))
        elif ours == "llm." and _HEAD_KEY not in out and config.llm.tie_word_embeddings and _EMBED_KEY in out:
            out[_HEAD_KEY] = out[_EMBED_KEY]
        elif ours == "adapter.proj.":
            out.update(_aliases(out))
    return out


def _ln_speech(our_state_dict: Mapping[str, Tensor], width: int) -> dict[str, Tensor]:
    """The reference's unused LayerNorm, as initialised: weight ones, bias zeros."""
    like = next((t for k, t in our_state_dict.items() if k.startswith("encoder.")), None)
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device("cpu")
    return {
        "ln_speech.weight": torch.ones(width, dtype=dtype, device=device),
        "ln_speech.bias": torch.zeros(width, dtype=dtype, device=device),
    }


def _aliases(out: Mapping[str, Tensor]) -> dict[str, Tensor]:
    absent = [main for main in ALIASES.values() if main not in out]
    if absent:
        raise ValueError(f"cannot write the reference aliases, the LLM lacks: {', '.join(absent)}")
    return {alias: out[main] for alias, main in ALIASES.items()}


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:
        return True
    return torch.equal(a.detach().cpu(), b.detach().cpu())


def _resolve_aliases(ref: Mapping[str, Tensor], config: EChatConfig) -> dict[str, Tensor]:
    """The LLM embedding and head from their main keys or aliases, checked for agreement."""
    found: dict[str, Tensor] = {}
    for alias, main in ALIASES.items():
        copies = [ref[k] for k in (main, alias) if k in ref]
        if len(copies) == 2 and not _same(*copies):
            raise ValueError(f"reference keys {main} and its alias {alias} hold different tensors")
        if copies:
            found[main] = copies[0]
    if config.llm.tie_word_embeddings:
        if _HEAD_KEY not in found and _EMBED_KEY in found:
            found[_HEAD_KEY] = found[_EMBED_KEY]
        elif _HEAD_KEY in found and _EMBED_KEY in found and not _same(found[_HEAD_KEY], found[_EMBED_KEY]):
            raise ValueError(
                f"config ties the LLM head to its embedding, but {_HEAD_KEY} differs from {_EMBED_KEY}"
            )
    return found


def from_reference_state_dict(
    ref: Mapping[str, Tensor], config: EChatConfig
) -> tuple[dict[str, Tensor], KeyProblems]:
    """Reference keys → our keys, plus the reference keys that were unexpected or missing.

    ``ln_speech.*`` is dropped; ``embed_tokens.weight``/``lm_head.weight`` may stand in for their
    main keys (and must agree with them when both are given). Unexpected keys are left out of the
    result. Raises ValueError when an alias and its main key disagree.
    """
    expected = [k for k in expected_reference_keys(config) if k not in ALIASES and k not in LN_SPEECH_KEYS]
    expected_set = set(expected)
    resolved = _resolve_aliases(ref, config)
    ours: dict[str, Tensor] = {}
    problems = KeyProblems()
    for key, tensor in ref.items():
        if key in LN_SPEECH_KEYS or key in ALIASES:
            continue
        if key not in expected_set:
            problems.unexpected.append(key)
            continue
        ours[_our_key(key)] = resolved.get(key, tensor)
    for key, tensor in resolved.items():
        ours.setdefault(_our_key(key), tensor)
    problems.missing = [key for key in expected if _our_key(key) not in ours]
    return ours, problems


def _qwen2_keys(llm: LLMConfig) -> list[str]:
    """Qwen2ForCausalLM keys in registration order (biased q/k/v, bias-free o_proj and MLP)."""
    keys = ["model.embed_tokens.weight"]
    for i in range(llm.n_layers):
        attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        keys += [attn + name for name in ("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")]
        keys += [attn + name for name in ("v_proj.weight", "v_proj.bias", "o_proj.weight")]
        keys += [mlp + name for name in ("gate_proj.weight", "up_proj.weight", "down_proj.weight")]
        norms = ("input_layernorm", "post_attention_layernorm")
        keys += [f"model.layers.{i}.{norm}.weight" for norm in norms]
    return keys + ["model.norm.weight", "lm_head.weight"]


def expected_reference_keys(config: EChatConfig) -> list[str]:
    """Every key of a reference checkpoint for ``config``, in the reference's order.

    Encoder and adapter keys come from our modules built on the meta device; the LLM keys are those
    of transformers' Qwen2ForCausalLM with the head listed even when tied.
    """
    with torch.device("meta"):
        encoder = SpeechEncoder(config.encoder)
        adapter = Adapter(config.adapter, config.encoder.d_model, config.llm.hidden_size, config.encoder.n_mels)
    ours = [f"encoder.{k}" for k in encoder.state_dict()]
    ours += [f"adapter.{k}" for k in adapter.state_dict()]
    ours += [f"llm.{k}" for k in _qwen2_keys(config.llm)]
    ours += ["speech_embedding.weight", "speech_head.weight", "speech_head.bias"]
    placeholder = torch.empty(0, device="meta")
    return list(reference_state_dict(dict.fromkeys(ours, placeholder), config))


def layout_lines(ref_state: Mapping[str, Tensor], persistent_buffers: set[str]) -> list[str]:
    """``key<TAB>shape<TAB>kind`` per entry; kind is ``buffer`` or the released dtype ``bfloat16``.

    ``persistent_buffers`` may use our names or the reference's; ours are translated.
    """
    buffers = {reference_key(name) for name in persistent_buffers}
    lines = []
    for key, tensor in ref_state.items():
        shape = ",".join(str(size) for size in tensor.shape)
        lines.append(f"{key}\t{shape}\t{'buffer' if key in buffers else 'bfloat16'}")
    return lines
