"""Checkpoints: our format (safetensors + config + tokenizer) and the released reference ``.pt`` files.

Design choices:
- Our checkpoint is a folder: ``model.safetensors`` (tied tensors stored once), ``config.json`` (the
  full :class:`~echat.config.EChatConfig`) and the tokenizer files. It is written to a temporary
  folder and renamed into place, so an interrupted save never leaves a half-written checkpoint.
- Reference files are read with ``torch.load(weights_only=True)`` (no pickle code runs) and
  memory-mapped; the model is built on the meta device and the loaded tensors are assigned, so a
  3.5 B checkpoint is never held twice. Every key and every shape is checked before anything loads.
- ``reference_layout`` renders the released key layout of a preset from a meta-device model.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from echat.config import EChatConfig, preset
from echat.models.echat import EChat
from echat.models.reference_keys import from_reference_state_dict, layout_lines, reference_state_dict

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FINAL, LATEST = "final", "latest"  # run-folder names written by echat train


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and the reason in one message."""


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on GPU (the released dtype), fp32 on CPU (bf16 is ~17x slower on CPUs without AMX)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def default_tokenizer(config: EChatConfig):
    """Qwen2.5 for the full world; for the mini world a BPE trained on the built-in prompt texts
    (a real corpus-trained tokenizer comes with a trained checkpoint)."""
    from echat.text_tokenizer import build_mini_tokenizer, load_text_tokenizer

    if config.text.tokenizer == "qwen2.5":
        return load_text_tokenizer(config)
    from echat.prompts import prompt_texts

    return build_mini_tokenizer(prompt_texts("mini"), vocab_size=config.text.bpe_vocab_size)


def model_from_preset(name: str | EChatConfig, device="cpu", tokenizer=None) -> EChat:
    """A randomly initialised model of a preset (or config), with a tokenizer, on ``device``."""
    config = preset(name) if isinstance(name, str) else name
    model = EChat(config, tokenizer if tokenizer is not None else default_tokenizer(config))
    if config.llm.lora.enabled:
        from echat.train.stages import add_lora

        add_lora(model)
    return model.to(device=device, dtype=default_dtype(device))


def save_checkpoint(model: EChat, folder: str | os.PathLike) -> Path:
    """Write ``folder`` atomically (temporary sibling folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_model(model, str(tmp / WEIGHTS))
        model.config.save(tmp / CONFIG)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(folder: str | os.PathLike, device="cpu") -> EChat:
    """Load a folder written by :func:`save_checkpoint`."""
    from echat.text_tokenizer import has_tokenizer_files, load_tokenizer

    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: not an echat checkpoint (no {name})")
    config = EChatConfig.load(folder / CONFIG)
    tokenizer = load_tokenizer(folder) if has_tokenizer_files(folder) else None
    model = EChat(config, tokenizer)
    if config.llm.lora.enabled:
        from echat.train.stages import add_lora

        add_lora(model)
    try:
        missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
    except Exception as err:  # safetensors raises several types for corrupt or mismatched files
        raise CheckpointError(f"{folder / WEIGHTS}: {str(err).splitlines()[0]}") from None
    if missing or unexpected:
        raise CheckpointError(f"{folder / WEIGHTS}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return model.to(device=device, dtype=default_dtype(device))


def is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds an echat checkpoint (config.json and model.safetensors)."""
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder to evaluate, given a checkpoint folder or a run folder.

    In this order: ``path`` itself when it is a checkpoint; ``path/final`` (the checkpoint
    ``echat train`` writes at the end of a stage); the folder a ``latest`` pointer names (a text file,
    in the run folder or one level below it such as ``ckpt/latest``, holding a folder name relative
    to the pointer's folder); else the checkpoint below ``path`` (any depth, hidden folders skipped)
    whose model.safetensors was written last, e.g. the last trained stage of a recipe folder.
    FileNotFoundError (one line) when there is none.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run or checkpoint folder")
    for candidate in (path, path / FINAL):
        if is_checkpoint(candidate):
            return candidate
    for pointer in (path / LATEST, *sorted(path.glob(f"*/{LATEST}"))):
        if pointer.is_file():
            target = pointer.parent / pointer.read_text(encoding="utf-8").strip()
            if not is_checkpoint(target):
                raise FileNotFoundError(f"{pointer} points to {target}, which is not a checkpoint folder")
            return target
    found = [w.parent for w in path.rglob(WEIGHTS)
             if is_checkpoint(w.parent) and not any(p.startswith(".") for p in w.relative_to(path).parts)]
    if not found:
        raise FileNotFoundError(f"{path}: no checkpoint (a folder with {CONFIG} and {WEIGHTS}) in this run folder")
    return max(found, key=lambda folder: (folder / WEIGHTS).stat().st_mtime)


# ----------------------------------------------------------------------------------------------
# The reference (released) format
# ----------------------------------------------------------------------------------------------


def read_reference_file(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The state dict of a released ``.pt`` (or DeepSpeed ``mp_rank_00_model_states.pt``), safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused to unpickle non-tensor content ({str(err).splitlines()[0]})") from None
    except Exception as err:  # torch raises many types (RuntimeError, EOFError, KeyError...) on junk bytes
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another format): "
                              f"{str(err).splitlines()[0]}") from None
    if isinstance(state, Mapping) and isinstance(state.get("module"), Mapping):
        state = state["module"]  # DeepSpeed's model-states file
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _check_shapes(model: EChat, ours: Mapping[str, torch.Tensor], path) -> None:
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model wants {tuple(expected[k].shape)})"
             for k, v in ours.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensor(s) of the wrong shape, e.g. {'; '.join(wrong[:3])}")


def _materialise_fixed_buffers(model: EChat, device) -> None:
    """Rotary frequencies and the adapter's bigram rotation are non-persistent buffers: rebuild them after
    a meta-device build."""
    llm = model.causal_lm.model
    with torch.device(device):
        llm.rotary_emb = type(llm.rotary_emb)(config=llm.config)
    model.adapter.build_fixed_buffers(device)


def load_reference_checkpoint(path, tokenizer=None, device="cpu", config: EChatConfig | None = None) -> EChat:
    """An :class:`EChat` with the weights of a released OSUM-EChat checkpoint (or our export of one)."""
    config = config or preset("osum-echat")
    state = read_reference_file(path)
    try:
        ours, problems = from_reference_state_dict(state, config)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if problems:
        raise CheckpointError(
            f"{path}: does not match the {config.name} layout: {len(problems.missing)} missing key(s) "
            f"{problems.missing[:3]}, {len(problems.unexpected)} unexpected key(s) {problems.unexpected[:3]}")
    with torch.device("meta"):
        model = EChat(config, tokenizer if tokenizer is not None else default_tokenizer(config))
    _check_shapes(model, ours, path)
    model.load_state_dict(ours, strict=False, assign=True)
    model.causal_lm.tie_weights()
    _materialise_fixed_buffers(model, "cpu")
    return model.to(device=device, dtype=default_dtype(device))


def save_reference_checkpoint(model: EChat, path: str | os.PathLike, dtype=torch.bfloat16) -> Path:
    """Export in the released layout (888 keys for osum-echat), tensors cast to ``dtype``."""
    cast: dict[int, torch.Tensor] = {}

    def convert(t: torch.Tensor) -> torch.Tensor:  # keep aliases sharing one storage
        return cast.setdefault(id(t), t.detach().to("cpu", dtype).contiguous())

    state = {k: convert(v) for k, v in reference_state_dict(model.state_dict(), model.config).items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def reference_layout(name: str | EChatConfig = "osum-echat") -> list[str]:
    """The released checkpoint layout of a preset: ``key<TAB>shape<TAB>bfloat16|buffer`` lines."""
    config = preset(name) if isinstance(name, str) else name
    with torch.device("meta"):
        model = EChat(config)
    state = model.state_dict()
    buffers = {n for n, _ in model.named_buffers() if n in state}
    return layout_lines(reference_state_dict(state, config), buffers)
