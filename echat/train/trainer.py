"""One trainer for every stage, on Hugging Face ``accelerate`` (CPU, one GPU, or many via ``accelerate launch``).

Design choices:
- ``accelerate`` does devices, DDP/FSDP/DeepSpeed, gradient accumulation and mixed precision (bf16 on
  GPU, fp32 on CPU); there is no home-made distributed code. Every rank builds the same epoch of
  batches (deterministic for seed and epoch) and takes every ``world``-th one, so ranks see disjoint data.
- AdamW with the reference's betas (0.9, 0.99), eps 1e-6, weight decay 0.01; per-module learning-rate
  scales from the recipe (0 = frozen); warm-up then inverse-sqrt (reference), cosine or constant.
- Checkpoints (``ckpt/step_NNNNNN/``: the model in echat's format + ``trainer_state.pt`` with optimizer,
  scheduler, step, data position and RNG states) are written to a temporary folder and renamed, so a
  killed run never leaves a broken one; the last ``keep`` are kept; ``latest`` names the newest. Under FSDP2 or
  DeepSpeed ZeRO-2 every rank joins in gathering the weights (and, under FSDP, the optimizer's state) and the
  folder is the same one full checkpoint (:mod:`echat.train.sharded`).
- A fresh run seeds every RNG from ``train.seed`` (per rank); resuming restores the data position and
  every RNG, so N steps straight equal N/2 + resume + N/2. A run of several processes (or on a GPU) also keeps
  each rank's own RNG states (``rank_rng``: Python, numpy, torch and CUDA), which that rank gets back when it
  resumes on as many ranks; a one-process CPU run's files are as they were.
- A recipe with ``bridge`` wraps the model in :class:`~echat.train.bridge.BridgedModel` (auxiliary CTC
  and cue losses); the bridge heads train alongside and live in ``trainer_state.pt``, never in the model.
- A non-finite loss stops the run naming the step and batch keys; Ctrl-C saves a resumable checkpoint.
  In a multi-process run the ranks first meet at a bounded barrier (:mod:`echat.train.ranks`): when Ctrl-C
  reached only some of them, the others never come, and the interrupted rank stops after the bound with
  one line naming itself, the step and the checkpoint kept, instead of hanging.
- Metrics go to ``metrics.jsonl`` (per step: wall-clock time, loss per task, lr, bridge losses; per
  evaluation: dev loss and a few greedy decodes) and ``loss.png``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import gather_object, set_seed
from safetensors.torch import load_model
from torch import nn
from tqdm.auto import tqdm

from echat.config import GenerationOptions
from echat.data.pipeline import DataPipeline, Sample
from echat.eval.hearing import distinct_clips, first_token_accuracy
from echat.eval.probe import probe
from echat.models.checkpoint import (
    CHECKPOINTS,
    LATEST,
    latest_checkpoint,
    load_tensors,
    read_full_weights,
    save_checkpoint,
)
from echat.models.encoder import EncoderCache
from echat.models.generate import generate
from echat.train.bridge import (
    DRILL,
    BridgedModel,
    bridge_targets,
    corpus_words,
    drilled_think,
    random_cues,
    random_words,
    shuffled_words,
    spread_tag_rows,
    tagged_words,
)
from echat.train.plots import plot_hearing_history, plot_history
from echat.train.ranks import BARRIER_TIMEOUT_ENV, RankBarrier, barrier_timeout
from echat.train.recipes import RecordPool, StageRecipe, family, mix_records
from echat.train.sharded import (
    DEEPSPEED,
    DEEPSPEED_DIR,
    FSDP,
    OPTIMIZER_BY_NAME,
    OPTIMIZER_DEEPSPEED,
    check_shardable,
    gather_optimizer,
    gather_weights,
    load_deepspeed,
    load_fsdp_weights,
    load_optimizer_by_name,
    save_deepspeed,
    sharding,
)
from echat.train.stages import set_trainable

# The dev loss reads the first this-many dev records of each task family of the stage: on EChat-mini all of them
# (400 in stage 0) made each of stage 0's evaluations 12 s of its 222 s (docs/hearing.md §19, E111). An
# evaluation changes no weight either way (it draws from a forked random stream).
DEV_LOSS_RECORDS = 32


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, no usable data, a checkpoint of another preset)."""


def lr_lambda(recipe: StageRecipe):
    """Multiplier of the base lr at an optimizer step: linear warm-up, then the recipe's schedule."""
    warmup, total = max(1, recipe.warmup_steps), max(1, recipe.max_steps)

    def factor(step: int) -> float:
        step += 1
        if step <= warmup:
            return step / warmup
        if recipe.scheduler == "inverse_sqrt":
            return math.sqrt(warmup / step)
        if recipe.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
        return 1.0

    return factor


def build_optimizer(model, recipe: StageRecipe, config, extra: nn.Module | None = None) -> torch.optim.Optimizer:
    """AdamW over the modules the recipe trains, each at ``lr x scale``; other parameters are frozen.
    ``extra`` (the bridge heads) trains at the base lr."""
    scales = dict(recipe.module_lr)
    trainable = set_trainable(model, [name for name, scale in scales.items() if scale > 0])
    groups = [{"params": params, "lr": recipe.lr * scales[name], "name": name} for name, params in trainable.items()]
    if extra is not None:
        groups.append({"params": list(extra.parameters()), "lr": recipe.lr, "name": "bridge"})
    if not groups:
        raise TrainingError(f"stage {recipe.name} trains nothing")
    train = config.train
    return torch.optim.AdamW(groups, betas=train.betas, eps=train.eps, weight_decay=train.weight_decay)


@dataclass
class TrainState:
    """Where a run is: optimizer steps done, and the data position (epoch, batches consumed)."""

    step: int = 0
    epoch: int = 0
    phase: int = 0  # the recipe phase whose mix the current epoch draws from
    batch_in_epoch: int = 0
    history: list[dict] = field(default_factory=list)


THINK_FAMILIES = ("s2t_think", "s2s_think")  # the families a think drill is drawn from


class Trainer:
    """Runs one :class:`StageRecipe` on a model and a list of training samples."""

    def __init__(self, model, recipe: StageRecipe, samples: list[Sample], out: str | Path,
                 dev: list[Sample] | None = None, eval_every: int | None = None, save_every: int = 200, keep: int = 2,
                 accelerator: Accelerator | None = None, progress: bool = True,
                 encoder_cache: EncoderCache | None = None, barrier_timeout_s: float | None = None):
        self.model, self.recipe, self.out = model, recipe, Path(out)
        self.config = model.config
        if recipe.teaches_think:
            self.config.think = recipe.think  # stored in every checkpoint: generate's default think mode
        self.pool = RecordPool.from_records([s.record for s in samples])
        self.audio = {s.record.key: s for s in [*samples, *(dev or [])]}
        self.words = corpus_words([s.record for s in samples])  # what random-word dictation draws from
        self.dev_pool = RecordPool.from_records([s.record for s in dev or []])
        self.eval_every = recipe.eval_every if eval_every is None else eval_every  # None: the recipe's
        self.save_every, self.keep = save_every, keep
        self.progress = progress
        cuda = torch.cuda.is_available()
        # find_unused_parameters: under DDP a batch may leave a trained module unused (no speech_head for
        # text replies, no encoder/adapter for text-only input), which plain DDP rejects on the next step
        self.acc = accelerator or Accelerator(gradient_accumulation_steps=self.config.train.accum_steps,
                                              mixed_precision="bf16" if cuda else "no", cpu=not cuda,
                                              kwargs_handlers=[DistributedDataParallelKwargs(
                                                  find_unused_parameters=True)])
        self.interrupt_barrier = RankBarrier(barrier_timeout(barrier_timeout_s), self.acc.num_processes)
        self.tokenizer = model.tokenizer
        if not dict(recipe.module_lr).get("encoder"):  # a frozen encoder: each clip is encoded once
            model.encoder_cache = encoder_cache or EncoderCache()
        self.hearing_clips = distinct_clips(dev or [])[:16]  # stages 0-1 log whether the LLM copies / hears them
        if recipe.bridge or recipe.dictation or recipe.think_drills:
            model = self.model = BridgedModel(model, recipe.bridge, recipe.token_ctc, recipe.dictation)
        try:
            check_shardable(self.acc, model)
        except ValueError as err:
            raise TrainingError(str(err)) from None
        self.optimizer = build_optimizer(self.bare_model(model), recipe, self.config,
                                         model.heads if recipe.bridge else None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(recipe))
        self.model, self.optimizer, self.scheduler = self.acc.prepare(self.model, self.optimizer, self.scheduler)
        try:
            self.sharding = sharding(self.acc)  # None, FSDP or DEEPSPEED: how checkpoints gather their state
        except ValueError as err:
            raise TrainingError(str(err)) from None
        self.state = TrainState()
        self.started_phases: set[int] = set()  # phases whose set-up ran (_start_phase)
        self.pipeline = DataPipeline(self.config, self.tokenizer, think=recipe.think, train=True,
                                     text_lm=recipe.name == "text")

    # -- data ------------------------------------------------------------------------------------
    def _samples(self, records) -> list[Sample]:
        out = []
        for r in records:
            base = self.audio.get(r.key) or self.audio.get(r.key.removesuffix("_text"))
            out.append(Sample(r, base.audio if r.wav else None, base.history_audio if r.wav else []))
        return out

    def _drill(self, record, rng: random.Random):
        """``record`` as drawn for a dictation epoch: with the recipe's odds a drill whose words are random
        corpus words (:func:`~echat.train.bridge.random_words`) or its own words shuffled
        (:func:`~echat.train.bridge.shuffled_words`), with the odds of ``random_tags`` its cue labels
        drawn at random (:func:`~echat.train.bridge.random_cues`) and with the odds of ``tagged_dictation``
        random tags written into an ASR transcript (:func:`~echat.train.bridge.tagged_words`), and with the odds
        of ``think_drills`` a think record's spoken words shuffled (:func:`~echat.train.bridge.drilled_think`),
        registered with the record's audio so that batches and bridge targets find it by its key; otherwise the
        record itself."""
        drill = record
        draw = rng.random() if record.wav else 1.0
        if draw < self.recipe.random_dictation:
            drill = random_words(record, rng, self.words)
        elif draw < self.recipe.random_dictation + self.recipe.shuffled_dictation:
            drill = shuffled_words(record, rng)
        if record.wav and self.recipe.random_tags and rng.random() < self.recipe.random_tags:
            drill = random_cues(drill, rng)
        if record.wav and self.recipe.tagged_dictation and rng.random() < self.recipe.tagged_dictation:
            drill = tagged_words(drill, rng)
        if (self.recipe.think_drills and family(record) in THINK_FAMILIES
                and rng.random() < self.recipe.think_drills):
            drill = drilled_think(drill, rng)
        if drill is record:
            return record
        base = self.audio[record.key]
        self.audio[drill.key] = Sample(drill, base.audio, base.history_audio)
        return drill

    def epoch_batches(self, epoch: int, phase_index: int):
        """This rank's batches of ``epoch`` (same on every rank, then split: disjoint across ranks)."""
        phase = self.recipe.phases[phase_index]
        rng = random.Random(self.config.train.seed * 7919 + epoch)
        records = mix_records(self.pool.by_family, phase, self.recipe.epoch_size, rng)
        if (self.recipe.shuffled_dictation or self.recipe.random_dictation or self.recipe.random_tags
                or self.recipe.tagged_dictation or self.recipe.think_drills):
            records = [self._drill(r, rng) for r in records]
        batches = list(self.pipeline.batches(self._samples(records), epoch, phase.batch_scale))
        world, rank = self.acc.num_processes, self.acc.process_index
        usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
        return batches[:usable][rank::world] if world > 1 else batches

    def _stream(self):
        """Batches from the saved data position onwards, epoch after epoch."""
        while True:
            batches = self.epoch_batches(self.state.epoch, self.state.phase)
            if not batches:
                raise TrainingError(f"stage {self.recipe.name}: no usable training batches")
            for index in range(self.state.batch_in_epoch, len(batches)):
                if self.recipe.phase_at(self.state.step)[0] != self.state.phase:
                    break  # a new phase starts a new epoch with its own mix
                self.state.batch_in_epoch = index + 1
                yield batches[index]
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self.state.phase = self.recipe.phase_at(self.state.step)[0]

    # -- training --------------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> TrainState:
        """Train to the recipe's length, or to step ``until`` (then save a resumable checkpoint)."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.state.step == 0:  # a fresh run does not depend on RNG drawn before it (resume restores it)
            set_seed(self.config.train.seed, device_specific=True)
        if self.acc.is_main_process:
            print(self.recipe.describe())
        bar = tqdm(total=self.recipe.max_steps, initial=self.state.step, desc=self.recipe.name,
                   disable=not (self.progress and self.acc.is_main_process))
        stream = self._stream()
        try:
            while self.state.step < min(self.recipe.max_steps, until or self.recipe.max_steps):
                self._start_phase()
                record = self._train_step(next(stream))
                if record is None:
                    continue
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", task=record["task"])
                self._after_step()
        except KeyboardInterrupt:
            self._save_interrupted()
            raise
        finally:
            bar.close()
            self.bare_model().encoder_cache = None  # its frames are only valid while this stage runs
        self.save()
        self.plot()
        return self.state

    def _start_phase(self) -> None:
        """A phase's set-up, once, before its first step (``Phase.spread_tags``); a run resumed later in the
        phase does not repeat it."""
        index, phase = self.recipe.phase_at(self.state.step)
        if index in self.started_phases:
            return
        self.started_phases.add(index)
        if phase.spread_tags and self.state.step == self.recipe.phase_start(index):
            if not spread_tag_rows(self.bare_model(), seed=self.config.train.seed) and self.acc.is_main_process:
                print(f"stage {self.recipe.name}: the tokenizer splits the cue tags; their rows are not spread")

    def _train_step(self, batch) -> dict | None:
        """One micro-batch; returns the logged record when an optimizer step happened."""
        model = self.model
        model.train()
        with self.acc.accumulate(model):
            out = model(batch.to(self.acc.device), *self._aux_targets(batch))
            if not torch.isfinite(out.loss):
                raise TrainingError(f"non-finite loss {float(out.loss)} at step {self.state.step}, "
                                    f"batch {batch.kind.value}: {', '.join(batch.keys[:5])}")
            self.acc.backward(out.loss)
            if self.acc.sync_gradients:
                self.acc.clip_grad_norm_(model.parameters(), self.config.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        if not self.acc.sync_gradients:
            return None
        self.state.step += 1
        record = {"step": self.state.step, "time_s": round(time.time(), 2), "loss": out.loss.item(),
                  "task": batch.kind.value, "lr": self.scheduler.get_last_lr()[0], "rows": len(batch.keys),
                  **{f"aux_{k}": round(v.item(), 4) for k, v in out.aux.items()}}
        self._log(record)
        return record

    def _aux_targets(self, batch) -> tuple:
        """The bridge targets of ``batch`` as extra forward arguments (none without a bridge, dictation or a
        drilled row)."""
        if not (self.recipe.bridge or self.recipe.dictation or any(k.endswith(DRILL) for k in batch.keys)):
            return ()  # without drilled rows a drills-only stage reads the audio as any stage does
        if not batch.feats.shape[0]:  # text-only rows (stage 0's language modelling): nothing to bridge
            return None, False
        targets = bridge_targets([self.audio[k].record for k in batch.keys], self.tokenizer, batch.pack_layouts)
        bridge_only = self.recipe.phases[self.state.phase].bridge_only
        return targets.to(self.acc.device) if targets is not None else None, bridge_only

    def bare_model(self, model=None) -> nn.Module:
        """The EChat model below accelerate's and the bridge's wrappers."""
        model = self.acc.unwrap_model(model if model is not None else self.model)
        return model.echat if isinstance(model, BridgedModel) else model

    def _after_step(self) -> None:
        step = self.state.step
        if self.dev_pool.by_family and self.eval_every and step % self.eval_every == 0:
            with torch.random.fork_rng(devices=[]):  # the evaluation draws nothing from the training's stream
                self.evaluate()
        if self.save_every and step % self.save_every == 0 and step < self.recipe.max_steps:
            self.save()

    def _log(self, record: dict) -> None:
        self.state.history.append(record)
        if self.acc.is_main_process:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, decodes: int = 2) -> dict:
        """Dev loss per task family of this stage, and a few greedy decodes (printed and logged)."""
        families = sorted({f for p in self.recipe.phases for f, _ in p.mix})
        dev = self._samples([r for f in families for r in self.dev_pool.by_family.get(f, [])[:DEV_LOSS_RECORDS]])
        model = self.bare_model().eval()
        pipe = DataPipeline(self.config, model.tokenizer, think=self.recipe.think, train=False,
                            text_lm=self.recipe.name == "text")
        losses: dict[str, list[float]] = {}
        for batch in pipe.batches(dev):
            losses.setdefault(batch.kind.value, []).append(float(model(batch.to(self.acc.device)).loss))
        record = {"step": self.state.step, "dev_loss": {k: float(np.mean(v)) for k, v in losses.items()},
                  "dev_records": len(dev)}
        options = GenerationOptions(do_sample=False, max_new_tokens=48, max_speech_tokens=100)
        shown = []
        for sample in dev[:decodes]:
            result = generate(model, sample.audio, None if sample.record.wav else sample.record.extra.get(
                "question", sample.record.txt), sample.record.task, self.recipe.think, options)
            shown.append({"key": sample.record.key, "ref": sample.record.txt[:120], "hyp": result.raw_text[:120],
                          "speech_tokens": len(result.speech_tokens)})
        record["decodes"] = shown
        if self.hearing_clips and (self.recipe.name == "understanding" or self.recipe.dictation):
            record.update(self._hearing(model))
        self._log(record)
        if self.acc.is_main_process and self.progress:
            tqdm.write(f"[{self.recipe.name} step {self.state.step}] dev loss {record['dev_loss']}")
            for d in shown:
                tqdm.write(f"  {d['key']}: {d['hyp']!r} (ref {d['ref']!r})")
            if "hearing_first_token" in record:
                tqdm.write(f"  hearing: first answer token {record['hearing_first_token']:.3f}"
                           + (f", encoder probe CER {record['probe_cer']:.3f}" if "probe_cer" in record else ""))
            if "dictation_first_token" in record:
                tqdm.write(f"  dictation: first answer token {record['dictation_first_token']:.3f}")
        return record

    def _hearing(self, model) -> dict:
        """Hearing figures on fixed dev clips: in stage 0, whether the LLM copies dictation (teacher-forced
        first answer token of ASR); in stage 1, the same read from the audio through the LLM path and, with
        bridge heads, the encoder's character-CTC probe CER."""
        if self.recipe.dictation:
            return {"dictation_first_token": first_token_accuracy(model, self.hearing_clips, dictated=True)}
        out = {"hearing_first_token": first_token_accuracy(model, self.hearing_clips)}
        if self.recipe.bridge:
            heads = self.acc.unwrap_model(self.model).heads
            heads.eval()
            out["probe_cer"] = probe(model, heads, self.hearing_clips)["char_cer"]
            heads.train()
        return out

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self) -> Path:
        """Write ``ckpt/step_NNNNNN`` atomically once every rank is here (see :meth:`_write_checkpoint`)."""
        self.acc.wait_for_everyone()
        return self._write_checkpoint()

    def _save_interrupted(self) -> None:
        """Ctrl-C: a resumable checkpoint of this step once every rank reached the bounded barrier; the other
        ranks wait (within the bound) until the main one has written it, as a launcher stops every rank as
        soon as one exits. When a rank does not come, a :class:`TrainingError` names this rank, the step and
        the checkpoint kept."""
        if not self.interrupt_barrier.wait():
            raise TrainingError(self._alone_message()) from None
        path = self._write_checkpoint()
        self.interrupt_barrier.wait()
        if self.acc.is_main_process:
            print(f"interrupted at step {self.state.step}: resumable checkpoint in {path}")

    def _alone_message(self) -> str:
        """The one line of a rank whose interrupt the other ranks did not join."""
        try:
            kept = f"the last complete checkpoint is kept: {latest_checkpoint(self.out)}"
        except FileNotFoundError:
            kept = f"there is no earlier checkpoint in {self.out}"
        return (f"rank {self.acc.process_index} of {self.acc.num_processes} interrupted at step {self.state.step}: "
                f"the other ranks did not reach the checkpoint barrier within "
                f"{self.interrupt_barrier.timeout_s:g} s ({BARRIER_TIMEOUT_ENV}), so no checkpoint of this step "
                f"was written; {kept}; run the same command with --resume to continue from it")

    def _write_checkpoint(self) -> Path:
        """Write ``ckpt/step_NNNNNN`` to a hidden temporary folder and rename it, then point ``latest`` at it and
        keep the last ``keep``; a failure or a second Ctrl-C while writing removes the temporary folder, so the
        previous checkpoint stays the latest and loadable. The main rank writes; every rank calls this (under
        FSDP and DeepSpeed every rank has a part in the checkpoint)."""
        final = self.out / CHECKPOINTS / f"step_{self.state.step:06d}"
        tmp = final.with_name(f".{final.name}.tmp")
        gathered = self._gathered_state()
        rank_rng = gather_object([_rng_states()]) if self.acc.num_processes > 1 or torch.cuda.is_available() else None
        if self.acc.is_main_process:
            self._write_files(tmp, final, gathered, rank_rng)
        if self.sharding == DEEPSPEED:  # each rank's optimizer partition, once the main rank made the folder
            self.acc.wait_for_everyone()
            save_deepspeed(self.model, tmp / DEEPSPEED_DIR)
            self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return final
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer = self.out / CHECKPOINTS / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        pointer.replace(self.out / CHECKPOINTS / LATEST)
        for old in sorted((self.out / CHECKPOINTS).glob("step_*"))[: -self.keep]:
            shutil.rmtree(old)
        return final

    def _gathered_state(self) -> dict | None:
        """Under FSDP or DeepSpeed (every rank calls this): the full weights of the EChat model and of the bridge
        heads and, under FSDP, the optimizer's full state, complete on the main rank; None in other runs."""
        if self.sharding is None:
            return None
        weights = gather_weights(self.acc, self.model)
        optimizer = gather_optimizer(self.acc, self.model, self.optimizer)
        if not isinstance(self.acc.unwrap_model(self.model), BridgedModel):
            return {"model": weights, "bridge": {}, "optimizer": optimizer}
        parts = {"echat.": {}, "heads.": {}}
        for name, tensor in weights.items():
            prefix = name[: name.index(".") + 1]
            parts[prefix][name.removeprefix(prefix)] = tensor
        return {"model": parts["echat."], "bridge": parts["heads."], "optimizer": optimizer}

    def _write_files(self, tmp: Path, final: Path, gathered: dict | None, rank_rng: list | None) -> None:
        """The main rank's files of a checkpoint, into ``tmp``: the model in echat's format and
        ``trainer_state.pt`` (from ``gathered`` when the run shards its state; ``rank_rng``: every rank's RNG
        states, in rank order, or None in a one-process CPU run)."""
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if gathered is None:
                save_checkpoint(self.bare_model(), tmp)
                state = self._trainer_state(self.optimizer.state_dict())
            else:
                save_checkpoint(self.bare_model(), tmp, weights=gathered["model"])
                state = self._trainer_state(gathered["optimizer"])
                state["bridge"] = gathered["bridge"]  # all heads of a BridgedModel: a sharded load wants every key
                state["optimizer_layout"] = OPTIMIZER_BY_NAME if self.sharding == FSDP else OPTIMIZER_DEEPSPEED
            if rank_rng is not None:
                state["rank_rng"] = rank_rng
            torch.save(state, tmp / "trainer_state.pt")
        except OSError as err:  # e.g. a full disk: the previous checkpoint stays as it was
            shutil.rmtree(tmp, ignore_errors=True)
            raise TrainingError(f"could not save {final} ({err}); the previous checkpoint is intact") from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def save_model(self, folder: Path) -> None:
        """Write the EChat model as a checkpoint folder (a stage's ``final``); every rank calls this, the main
        rank writes."""
        gathered = self._gathered_state()
        if self.acc.is_main_process:
            save_checkpoint(self.bare_model(), folder, weights=gathered and gathered["model"])

    def _trainer_state(self, optimizer: dict | None) -> dict:
        """Everything but the model that a resumed run needs; ``optimizer``: the optimizer's state."""
        return {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                "step": self.state.step, "epoch": self.state.epoch, "phase": self.state.phase,
                "batch_in_epoch": self.state.batch_in_epoch, "recipe": self.recipe.name,
                "preset": self.config.name, "python_rng": random.getstate(), "numpy_rng": _numpy_rng(),
                "torch_rng": torch.get_rng_state(), "history": self.state.history,
                **({"bridge": self.acc.unwrap_model(self.model).heads.state_dict()} if self.recipe.bridge else {})}

    def resume(self, checkpoint: str | Path | None = None) -> None:
        """Continue from ``checkpoint`` (default: this run's ``latest``): weights, optimizer, scheduler,
        data position and RNG states. Every rank calls this."""
        path = Path(checkpoint) if checkpoint else latest_checkpoint(self.out)
        state = load_tensors(path / "trainer_state.pt")
        if state["preset"] != self.config.name or state["recipe"] != self.recipe.name:
            raise TrainingError(f"{path} was written by stage {state['recipe']} of preset {state['preset']}, "
                                f"not stage {self.recipe.name} of {self.config.name}")
        self._resume_weights(path, state)
        self._resume_optimizer(path, state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = TrainState(state["step"], state["epoch"], state["phase"], state["batch_in_epoch"],
                                state["history"])
        if self.acc.is_main_process:  # the steps logged after the checkpoint are run again: log them once
            lines = "".join(json.dumps(record) + "\n" for record in self.state.history)
            (self.out / "metrics.jsonl").write_text(lines, encoding="utf-8")
        _set_rng_states({"python": state["python_rng"], "numpy": state["numpy_rng"], "torch": state["torch_rng"]})
        if len(state.get("rank_rng", ())) == self.acc.num_processes:  # each rank's own streams go on
            _set_rng_states(state["rank_rng"][self.acc.process_index])

    def _resume_weights(self, path: Path, state: dict) -> None:
        """The model and bridge-head weights of checkpoint ``path`` into this run's (sharded or not) model."""
        if self.sharding != FSDP:
            load_model(self.bare_model(), str(path / "model.safetensors"))
            if self.recipe.bridge:
                self.acc.unwrap_model(self.model).heads.load_state_dict(state["bridge"])
            return
        weights = read_full_weights(self.bare_model(), path) if self.acc.is_main_process else {}
        if isinstance(self.acc.unwrap_model(self.model), BridgedModel) and self.acc.is_main_process:
            weights = {**{f"echat.{k}": v for k, v in weights.items()},
                       **{f"heads.{k}": v for k, v in state.get("bridge", {}).items()}}
        load_fsdp_weights(self.acc, self.model, weights)

    def _resume_optimizer(self, path: Path, state: dict) -> None:
        """The optimizer state of checkpoint ``path``, in the layout it was written in (see
        :mod:`echat.train.sharded`); a layout this run cannot read is one :class:`TrainingError`."""
        layout = state.get("optimizer_layout")
        if layout == OPTIMIZER_DEEPSPEED and self.sharding == DEEPSPEED:
            load_deepspeed(self.model, path / DEEPSPEED_DIR)
        elif layout == OPTIMIZER_BY_NAME and self.sharding != DEEPSPEED:
            load_optimizer_by_name(self.acc, self.model, self.optimizer, state["optimizer"])
        elif layout is None and self.sharding is None:
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            written = {None: "a run without sharding (one process or DDP)", OPTIMIZER_BY_NAME: "an FSDP run",
                       OPTIMIZER_DEEPSPEED: "a DeepSpeed run"}[layout]
            raise TrainingError(f"{path} was written by {written}; this run ({self.sharding or 'unsharded'}) cannot "
                                f"read its optimizer state: resume it with the launch config that wrote it, or "
                                f"start a new run from its weights with --init {path}")

    def plot(self) -> None:
        """``loss.png``: training loss per task and dev loss over steps."""
        if not self.acc.is_main_process:
            return
        plot_history(self.state.history, self.out / "loss.png", title=f"stage {self.recipe.name}")
        if any("hearing_first_token" in r or "dictation_first_token" in r for r in self.state.history):
            plot_hearing_history(self.state.history, self.out / "hearing.png")


def _rng_states() -> dict:
    """This process's RNG states: Python, numpy, torch and, on a GPU, CUDA (loadable with ``weights_only``)."""
    states = {"python": random.getstate(), "numpy": _numpy_rng(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(states: dict) -> None:
    """Restore :func:`_rng_states`'s states in this process."""
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def release_process_group() -> None:
    """Tear torch.distributed's process group down, if this process joined one, before the process ends (what
    ``Accelerator.end_training`` does, without its trackers): ``echat train`` under ``accelerate launch``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _numpy_rng() -> tuple:
    """numpy's global RNG state with its key array as a tensor (loadable with ``weights_only=True``)."""
    name, keys, *rest = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), *rest)
