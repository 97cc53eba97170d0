"""Checkpoints: our format (safetensors + config + tokenizer) and the released reference ``.pt`` files.

Design choices:
- Our checkpoint is a folder: ``model.safetensors`` (tied tensors stored once), ``config.json`` (the
  full :class:`~echat.config.EChatConfig`) and the tokenizer files. It is written to a temporary
  folder and renamed into place, so an interrupted save never leaves a half-written checkpoint.
- Reference files are read with ``torch.load(weights_only=True)`` (no pickle code runs) and
  memory-mapped; the model is built on the meta device and the loaded tensors are assigned, so a
  3.5 B checkpoint is never held twice. Every key and every shape is checked before anything loads.
- A model whose own state dict holds shards (FSDP) is saved from the full state dict its trainer gathered
  (``weights``): the tensors of tied parameters are made one again, so the file is the one the whole model
  writes; :func:`read_full_weights` gives such a model's full state dict back, tied names filled in.
- This module reads and writes files only; :class:`~echat.models.echat.EChat` builds the model
  (``from_preset``, ``from_checkpoint``, ``from_reference_checkpoint``) with these helpers.
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
from safetensors.torch import load_file, load_model, save_model

from echat.config import EChatConfig
from echat.models.reference_keys import from_reference_state_dict, reference_state_dict
from echat.prompts import prompt_texts
from echat.text_tokenizer import build_mini_tokenizer, has_tokenizer_files, load_text_tokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FINAL, LATEST = "final", "latest"  # run-folder names written by echat train
CHECKPOINTS = "ckpt"  # a run's step checkpoints: ckpt/step_N (model + trainer_state.pt), ckpt/latest


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and the reason in one message."""


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on GPU (the released dtype), fp32 on CPU (bf16 is ~17x slower on CPUs without AMX)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def default_tokenizer(config: EChatConfig):
    """Qwen2.5 for the full world; for the mini world a BPE trained on the built-in prompt texts
    (a real corpus-trained tokenizer comes with a trained checkpoint)."""
    if config.text.tokenizer == "qwen2.5":
        return load_text_tokenizer(config)
    return build_mini_tokenizer(prompt_texts("mini"), vocab_size=config.text.bpe_vocab_size)


def tied_names(model: torch.nn.Module) -> list[list[str]]:
    """The groups of parameter names that share one parameter (a tied LLM head and its embedding)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _retied(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` with every name of each tied group of ``model`` pointing at the group's one tensor."""
    out = dict(weights)
    for names in tied_names(model):
        present = [name for name in names if name in out]
        for name in names if present else []:
            out[name] = out[present[0]]
    return out


class _FullWeights:
    """What :func:`safetensors.torch.save_model` reads from a model (``state_dict()``), for a full state dict
    gathered apart from the model: each tied group's names point at one tensor again, so that tensor is stored
    once under the same name as from the model itself. A tensor that is a view into a larger buffer (gathered
    shards) is copied out first: safetensors stores only tensors that cover their whole storage."""

    def __init__(self, model: torch.nn.Module, weights: Mapping[str, torch.Tensor]):
        self.weights = _retied(model, {name: _own_storage(tensor) for name, tensor in weights.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.weights)


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, or a copy of it when it is a view into a larger storage."""
    whole = tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole else tensor.clone()


def save_checkpoint(model, folder: str | os.PathLike, weights: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``folder`` atomically (temporary sibling folder, then rename). ``weights``: the model's full
    state dict when the model's own holds shards (see the module's docstring)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_model(model if weights is None else _FullWeights(model, weights), str(tmp / WEIGHTS))
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


def read_full_weights(model: torch.nn.Module, folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``folder/model.safetensors`` as the full state dict of ``model``: every name of a tied group present
    (the file stores the group's tensor once)."""
    return _retied(model, load_file(Path(folder) / WEIGHTS))


def read_checkpoint(folder: str | os.PathLike) -> tuple[EChatConfig, object]:
    """The config and tokenizer (None when the folder has no tokenizer files) of a folder written by
    :func:`save_checkpoint`; :class:`CheckpointError` when it is not one."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: not an echat checkpoint (no {name})")
    config = EChatConfig.load(folder / CONFIG)
    return config, load_tokenizer(folder) if has_tokenizer_files(folder) else None


def load_weights(model, folder: str | os.PathLike) -> None:
    """Load ``folder/model.safetensors`` into ``model``, every key present on both sides."""
    path = Path(folder) / WEIGHTS
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as err:  # safetensors raises several types for corrupt or mismatched files
        raise CheckpointError(f"{path}: {str(err).splitlines()[0]}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


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


def latest_trainer_checkpoint(run: str | Path) -> Path:
    """The newest checkpoint of a run that holds a trainer state (``run/ckpt/step_N``, or ``run`` itself)."""
    run = Path(run)
    if (run / "trainer_state.pt").exists():
        return run
    for folder in (run, run.parent):  # a run folder, or its final/ checkpoint
        if (folder / CHECKPOINTS / LATEST).exists():
            return latest_checkpoint(folder)
    raise FileNotFoundError(f"{run}: no trainer checkpoint (no {CHECKPOINTS}/{LATEST} with trainer_state.pt)")


def latest_checkpoint(run: str | Path) -> Path:
    """The newest checkpoint of a run folder (or the folder itself if it is a checkpoint)."""
    run = Path(run)
    if (run / "model.safetensors").exists():
        return run
    pointer = run / CHECKPOINTS / LATEST
    if not pointer.exists():
        raise FileNotFoundError(f"{run}: no checkpoint (no {CHECKPOINTS}/{LATEST})")
    return run / CHECKPOINTS / pointer.read_text().strip()


# ----------------------------------------------------------------------------------------------
# The reference (released) format
# ----------------------------------------------------------------------------------------------


def load_tensors(path: str | os.PathLike, **load_args):
    """``torch.load`` of tensors and plain containers only (``weights_only``; no pickled code runs).
    A damaged file, another format, or one holding other pickled objects is one :class:`CheckpointError`
    naming the file; torch's own message (whose first line advises turning ``weights_only`` off) is not
    passed on."""
    try:
        return torch.load(path, weights_only=True, **load_args)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not a tensor file echat can read (damaged, another format, or pickled "
                              "objects other than tensors, which echat never runs)") from None
    except Exception as err:  # torch raises many types (RuntimeError, EOFError, KeyError...) on junk bytes
        raise CheckpointError(f"{path}: not a readable PyTorch file (truncated or another format: "
                              f"{type(err).__name__})") from None


def read_reference_file(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The state dict of a released ``.pt`` (or DeepSpeed ``mp_rank_00_model_states.pt``), safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    state = load_tensors(path, map_location="cpu", mmap=zipfile.is_zipfile(path))
    if isinstance(state, Mapping) and isinstance(state.get("module"), Mapping):
        state = state["module"]  # DeepSpeed's model-states file
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def reference_weights(path: str | os.PathLike, config: EChatConfig) -> dict[str, torch.Tensor]:
    """The tensors of a released checkpoint under our key names, every key checked against ``config``'s layout."""
    state = read_reference_file(path)
    try:
        ours, problems = from_reference_state_dict(state, config)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if problems:
        raise CheckpointError(
            f"{path}: does not match the {config.name} layout: {len(problems.missing)} missing key(s) "
            f"{problems.missing[:3]}, {len(problems.unexpected)} unexpected key(s) {problems.unexpected[:3]}")
    return ours


def check_shapes(model, ours: Mapping[str, torch.Tensor], path) -> None:
    """:class:`CheckpointError` naming the first tensors of ``ours`` whose shape differs from ``model``'s."""
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model wants {tuple(expected[k].shape)})"
             for k, v in ours.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: {len(wrong)} tensor(s) of the wrong shape, e.g. {'; '.join(wrong[:3])}")


def materialise_fixed_buffers(model, device) -> None:
    """Rotary frequencies and the adapter's bigram rotation are non-persistent buffers: rebuild them after
    a meta-device build."""
    rebuild_rotary(model, device)
    model.adapter.build_fixed_buffers(device)


def rebuild_rotary(model, device) -> None:
    """The LLM's rotary frequencies, built afresh in float32 on ``device``: ``Module.to(bfloat16)`` casts every
    floating buffer, and bf16 frequencies (3 significant digits) turn position 1000 by up to ~1 rad off."""
    llm = model.causal_lm.model
    with torch.device(device):
        llm.rotary_emb = type(llm.rotary_emb)(config=llm.config)


def place_model(model, device: str | torch.device, dtype: torch.dtype | None = None):
    """``model`` moved to ``device`` in ``dtype`` (default :func:`default_dtype`), its rotary frequencies kept
    float32. A tensor already on ``device`` in ``dtype`` is kept as it is, not copied."""
    model = model.to(device=device, dtype=dtype or default_dtype(device))
    rebuild_rotary(model, device)
    return model


def save_reference_checkpoint(model, path: str | os.PathLike, dtype=torch.bfloat16) -> Path:
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
