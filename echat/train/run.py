"""Running stages and whole recipes on a corpus folder: the functions behind ``echat train``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from echat.config import ThinkMode
from echat.data.pipeline import check_corpus, load_split
from echat.data.speech_tokens import SPEECH_TOKENIZER_DIR
from echat.eval.whisper_ct2 import whisper_base_encoder_state
from echat.models.checkpoint import CHECKPOINTS, FINAL, LATEST, resolve_checkpoint
from echat.models.echat import EChat
from echat.models.encoder import EncoderCache, load_whisper_encoder
from echat.models.lora import add_lora, uses_lora
from echat.text_tokenizer import load_tokenizer
from echat.train.recipes import StageRecipe, recipe
from echat.train.trainer import Trainer, TrainingError

RECIPE_PRESET = {"smoke": "smoke", "mini": "mini"}


def _model(preset: str, corpus: Path, init: str | Path | None, seed: int | None = None):
    if init:
        model = EChat.from_checkpoint(resolve_checkpoint(init))
        if model.config.name != preset:
            raise TrainingError(f"{init} holds a {model.config.name} model, not {preset}")
    else:
        if seed is not None:
            torch.manual_seed(seed)  # the fresh weights follow the training seed
        model = EChat.from_preset(preset, tokenizer=load_tokenizer(corpus / "text_tokenizer"))
        init_encoder(model)
    if seed is not None:
        model.config.train.seed = seed
    info = json.loads((corpus / "corpus.json").read_text()) if (corpus / "corpus.json").exists() else {}
    size = info.get("codebook_size", model.config.speech.codebook_size)
    if size != model.config.speech.codebook_size:
        raise TrainingError(f"{corpus} has {size} speech codes but preset {preset} expects "
                            f"{model.config.speech.codebook_size}")
    return model


def init_encoder(model) -> None:
    """Load the pre-trained weights a fresh model's encoder starts from (``config.encoder.init``)."""
    source = model.config.encoder.init
    if not source:
        return
    if source != "whisper-base":
        raise TrainingError(f"unknown encoder.init {source!r}; choose '' or 'whisper-base'")
    load_whisper_encoder(model.encoder, whisper_base_encoder_state())


def train_stage(stage: StageRecipe, corpus: str | Path, out: str | Path, preset: str, init=None,
                resume: bool = False, progress: bool = True, seed: int | None = None,
                default_task: str | None = None, **trainer_args) -> Path:
    """Train one stage into ``out``; returns the folder of its final checkpoint (``out/final``).
    ``seed`` replaces the training seed of the preset (or of the ``init`` checkpoint); ``default_task``
    is the task of records without one (else such records stop the run, each named)."""
    corpus, out = check_corpus(corpus), Path(out)
    model = _model(preset, corpus, init, seed)
    if stage.lora and not uses_lora(model):
        add_lora(model)
    cache = None if dict(stage.module_lr).get("encoder") else EncoderCache.beside(corpus, model.encoder)
    train, dev = (load_split(corpus, split, model.config, default_task) for split in ("train", "dev"))
    trainer = Trainer(model, stage, train, out, dev=dev, progress=progress, encoder_cache=cache, **trainer_args)
    if resume:
        trainer.resume()
    try:
        trainer.fit()
    finally:
        if cache is not None and trainer.acc.is_main_process:
            cache.save()
    trainer.acc.wait_for_everyone()
    if trainer.acc.is_main_process:
        trainer.bare_model().save(out / FINAL)
        keep_speech_tokenizer(corpus, out / FINAL)
    return out / FINAL


def keep_speech_tokenizer(corpus: Path, checkpoint: Path) -> None:
    """Copy the corpus's mini speech tokenizer into a final checkpoint, so that the checkpoint speaks
    (:meth:`echat.token2wav.mini.MiniToken2Wav.beside`) without its corpus."""
    source = corpus / SPEECH_TOKENIZER_DIR
    if source.is_dir():
        shutil.copytree(source, checkpoint / SPEECH_TOKENIZER_DIR, dirs_exist_ok=True)


def run_recipe(name: str, corpus: str | Path, out: str | Path, think: ThinkMode | str = ThinkMode.TAG,
               progress: bool = True, seed: int | None = None, resume: bool = False, **trainer_args) -> list[Path]:
    """Stages 0 -> 3 in order, each starting from the previous stage's final checkpoint.
    A stage whose ``final`` checkpoint already exists is not trained again; with ``resume`` an unfinished
    stage continues from its latest checkpoint (exactly, see :meth:`Trainer.resume`)."""
    check_corpus(corpus)
    out, finals, init = Path(out), [], None
    for index, stage in enumerate(recipe(name, think)):
        folder = out / f"{index}_{stage.name}"
        if not (folder / FINAL / "model.safetensors").exists():
            started = resume and (folder / CHECKPOINTS / LATEST).exists()
            train_stage(stage, corpus, folder, RECIPE_PRESET[name], init=init, progress=progress, seed=seed,
                        resume=started, **trainer_args)
        init = folder / FINAL
        finals.append(init)
    return finals
