"""Running stages and whole recipes: the functions behind ``echat train``.

A stage trains on an EChat-mini corpus folder (train.jsonl, dev.jsonl, its tokenizers) or on a manifest in
the reference's formats (a raw list, a shard list, combine lists or a data-list yaml: :mod:`echat.data.sources`).
A fresh model trained from a manifest:
- speaks the reference's CosyVoice-300M-25Hz speech tokens (4096 codes, ``extra.speech_token`` in 0..4095,
  reference §6.1) whatever the preset, since that is what such data carries; with ``init`` the checkpoint's
  codebook stays, and a token past it stops the run naming its ``file:line: key: extra.speech_token``;
- reads text with the tokenizer in ``tokenizer`` (a folder: an EChat-mini corpus's ``text_tokenizer/``, a
  checkpoint, a Qwen2.5 folder), else the preset's: Qwen2.5 for ``osum-echat``, and for the mini-world
  presets a mini BPE trained on the prompts and the manifest's own text (Chinese and English alike: it is
  byte-level), which every checkpoint of the run keeps;
- is watched on ``dev`` (another manifest) when one is given, else on nothing.
``init`` is a checkpoint or run folder of ours, or a file in the released layout (``tag_think_final.pt``,
``language_think_final.pt``, or :func:`echat.models.checkpoint.save_reference_checkpoint`'s export), read with
the preset's config (with the reference's speech space for a manifest) and, since such a file holds no
tokenizer, the tokenizer a fresh model of that preset would get (``tokenizer`` included).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from echat.config import EChatConfig, ThinkMode
from echat.config import preset as preset_config
from echat.data.pipeline import Sample, check_corpus, load_split
from echat.data.sources import read_samples, sample_texts
from echat.data.speech_tokens import SPEECH_TOKENIZER_DIR
from echat.eval.whisper_ct2 import whisper_base_encoder_state
from echat.models.checkpoint import CHECKPOINTS, FINAL, LATEST, read_checkpoint, resolve_checkpoint
from echat.models.echat import EChat
from echat.models.encoder import EncoderCache, load_whisper_encoder
from echat.models.lora import add_lora, uses_lora
from echat.prompts import prompt_texts
from echat.text_tokenizer import build_mini_tokenizer, load_text_tokenizer, load_tokenizer
from echat.train.recipes import RecordPool, StageRecipe, recipe
from echat.train.trainer import Trainer, TrainingError

RECIPE_PRESET = {"smoke": "smoke", "mini": "mini"}
REFERENCE_SPEECH = "osum-echat"  # the preset whose speech space (CosyVoice-300M-25Hz, 4096 codes) manifests speak


@dataclass
class StageInputs:
    """What one stage trains: the model, its training and dev samples, the corpus folder (None for a manifest)."""

    model: EChat
    train: list[Sample]
    dev: list[Sample] | None
    corpus: Path | None = None


@dataclass(frozen=True)
class ManifestOptions:
    """How a manifest is read: ``dev`` manifest, ``tokenizer`` folder, ``base_dir`` of relative audio paths."""

    dev: str | Path | None = None
    tokenizer: str | Path | None = None
    base_dir: str | Path | None = None


def is_reference_file(init: str | Path | None) -> bool:
    """``init`` names a file in the released layout (a ``.pt`` state dict), not a checkpoint folder of ours."""
    return init is not None and Path(init).is_file()


def _checkpoint_model(init: str | Path, preset: str) -> EChat:
    model = EChat.from_checkpoint(resolve_checkpoint(init))
    if model.config.name != preset:
        raise TrainingError(f"{init} holds a {model.config.name} model, not {preset}")
    return model


def _model(preset: str, corpus: Path, init: str | Path | None, seed: int | None = None):
    if is_reference_file(init):
        model = EChat.from_reference_checkpoint(init, load_tokenizer(corpus / "text_tokenizer"),
                                                config=preset_config(preset))
    elif init:
        model = _checkpoint_model(init, preset)
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


def _corpus_inputs(corpus: Path, preset: str, init, seed: int | None, default_task: str | None,
                   manifest: ManifestOptions) -> StageInputs:
    """A stage's model and samples from an EChat-mini corpus folder (its train and dev splits)."""
    if manifest != ManifestOptions():
        raise TrainingError(f"{corpus} is a corpus folder: --dev, --tokenizer and --base are for a manifest")
    model = _model(preset, corpus, init, seed)
    train, dev = (load_split(corpus, split, model.config, default_task) for split in ("train", "dev"))
    return StageInputs(model, train, dev, corpus)


def _manifest_config(preset: str, init, seed: int | None) -> EChatConfig:
    """The config a stage trained from a manifest runs with: the ``init`` checkpoint's, else the preset's
    with the reference's speech space (that of a released-layout ``init`` file too)."""
    if init and not is_reference_file(init):
        config = read_checkpoint(resolve_checkpoint(init))[0]
        if config.name != preset:
            raise TrainingError(f"{init} holds a {config.name} model, not {preset}")
    else:
        config = preset_config(preset)
        config.speech = preset_config(REFERENCE_SPEECH).speech
    if seed is not None:
        config.train.seed = seed
    return config


def _manifest_tokenizer(config: EChatConfig, train: list[Sample], folder: str | Path | None):
    """The text tokenizer of a fresh model: ``folder``'s, Qwen2.5, or a mini BPE trained on ``train``'s text."""
    if folder is not None:
        tokenizer = load_tokenizer(folder)
        if len(tokenizer) > config.llm.vocab_size:
            raise TrainingError(f"--tokenizer {folder}: {len(tokenizer)} tokens, more than the {config.name} "
                                f"LLM's {config.llm.vocab_size} embedding rows")
        return tokenizer
    if config.text.tokenizer == "qwen2.5":
        return load_text_tokenizer(config)
    texts = prompt_texts(config.text.prompt_set) + sample_texts(train)
    return build_mini_tokenizer(texts, vocab_size=config.text.bpe_vocab_size)


def _manifest_inputs(manifest: Path, preset: str, init, seed: int | None, default_task: str | None,
                     options: ManifestOptions) -> StageInputs:
    """A stage's model and samples from a manifest (and an optional dev manifest)."""
    if init and options.tokenizer is not None and not is_reference_file(init):
        raise TrainingError("--tokenizer is for a fresh model: --init keeps its checkpoint's tokenizer")
    config = _manifest_config(preset, init, seed)
    read = dict(config=config, default_task=default_task, base_dir=options.base_dir, seed=config.train.seed)
    train = read_samples(manifest, **read)
    dev = read_samples(options.dev, **read) if options.dev is not None else None
    print(f"training data: {len(train)} samples ({len({id(s.record) for s in train})} records) from {manifest}"
          + (f"; dev: {len(dev)} samples from {options.dev}" if dev is not None else "; no dev data"))
    if is_reference_file(init):
        tokenizer = _manifest_tokenizer(config, train, options.tokenizer)
        model = EChat.from_reference_checkpoint(init, tokenizer, config=config)
    elif init:
        model = _checkpoint_model(init, preset)
        model.config.train.seed = config.train.seed
    else:
        torch.manual_seed(config.train.seed)  # the fresh weights follow the training seed
        model = EChat.from_preset(config, tokenizer=_manifest_tokenizer(config, train, options.tokenizer))
        init_encoder(model)
    return StageInputs(model, train, dev)


def _check_families(stage: StageRecipe, samples: list[Sample], data: Path) -> None:
    """One line, before any step, when a phase of ``stage`` finds none of its task families in the data."""
    pool = RecordPool.from_records([sample.record for sample in samples]).by_family
    present = sorted(name for name, records in pool.items() if records)
    for phase in stage.phases:
        wanted = [name for name, _ in phase.mix]
        if not set(wanted) & set(present):
            raise TrainingError(f"{data}: stage {stage.name} trains on {', '.join(wanted)}, but the data has only "
                                f"{', '.join(present) or 'no records'}")


def train_stage(stage: StageRecipe, data: str | Path, out: str | Path, preset: str, init=None,
                resume: bool = False, progress: bool = True, seed: int | None = None,
                default_task: str | None = None, manifest: ManifestOptions = ManifestOptions(),
                **trainer_args) -> Path:
    """Train one stage into ``out``; returns the folder of its final checkpoint (``out/final``).
    ``data``: a corpus folder, or a manifest read as ``manifest`` says (see the module's docstring).
    ``seed`` replaces the training seed of the preset (or of the ``init`` checkpoint); ``default_task``
    is the task of records without one (else such records stop the run, each named)."""
    out, data = Path(out), Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: no such data folder or manifest (build a corpus with "
                                f"`echat data mini --out {data}`)")
    if data.is_dir():
        inputs = _corpus_inputs(check_corpus(data), preset, init, seed, default_task, manifest)
    else:
        inputs = _manifest_inputs(data, preset, init, seed, default_task, manifest)
    _check_families(stage, inputs.train, data)
    model = inputs.model
    if stage.lora and not uses_lora(model):
        add_lora(model)
    frozen = not dict(stage.module_lr).get("encoder")
    cache = EncoderCache.beside(inputs.corpus, model.encoder) if frozen and inputs.corpus else None
    trainer = Trainer(model, stage, inputs.train, out, dev=inputs.dev, progress=progress, encoder_cache=cache,
                      **trainer_args)
    if resume:
        trainer.resume()
    try:
        trainer.fit()
    finally:
        if cache is not None and trainer.acc.is_main_process:
            cache.save()
    trainer.acc.wait_for_everyone()
    trainer.save_model(out / FINAL)  # every rank: under FSDP the weights are gathered from all of them
    if trainer.acc.is_main_process and inputs.corpus is not None:
        keep_speech_tokenizer(inputs.corpus, out / FINAL)
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
