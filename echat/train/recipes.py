"""Stage recipes as config values: which records, in which mix, which modules train, for how long.

The understanding-driven recipe of the paper, plus a stage 0 for the mini world:
- ``text`` (mini only): *dictation* — the understanding tasks answered from the transcript's and cue
  tags' own token embeddings packed into the audio positions in the answer's layout
  (:func:`echat.train.bridge.packed_dictation_clips`, :func:`echat.tokens.pack_layout`; with the mini
  adapter's bigram frames, each carrying the one before it), optionally a share with the words shuffled or
  replaced by random corpus words — so that the LLM learns to repeat what it is shown, as a real
  instruction-tuned LLM can. Random tags are written into half the ASR transcripts (``tagged_dictation``)
  so that tags are copied as words are, and the tag tasks' labels are drawn at random (``random_tags``) so
  that only reading predicts them (docs/hearing.md E65-E70); ASR alone first, then with ASR+P, only-P and
  language modelling of the corpus text (loss on the whole ChatML text of text-only records);
- ``understanding``: ASR + ASR+P + only-P; the adapter trains, the encoder (Whisper base in the mini
  world) and the LLM stay frozen, as in the paper. In the mini world it is one bridge-only phase: the
  adapter's token CTC over the transcript and its cue classifiers, no LLM forward, so that the adapter
  spells what the LLM learned to copy (0.15 s a step with the encoder's frames cached; a phase through
  the frozen LLM after it raised the dev loss from 0.81 to 1.70, docs/hearing.md §13). Figures and what
  was tried: docs/hearing.md;
- ``generation``: TTS first (phase 1), then S2S dialogue with T2T mixed in (phase 2), both rehearsing the
  understanding tasks (:func:`rehearsal`); in the mini world the adapter stays as stage 1 left it;
- ``empathy``: S2T/S2S with the dual think; in the mini world the LLM and the speech embedding and head.

The ``osum-echat`` recipe fine-tunes the released model (``--preset osum-echat``, e.g. ``--init
tag_think_final.pt``) in the last three stages with the reference's optimiser settings and the paper's trainable
sets, and none of the mini world's devices (:func:`_reference_stages`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from echat.config import ThinkMode, TrainConfig
from echat.data.schema import Record
from echat.tokens import OutputType, is_only_p
from echat.train.stages import MODULES, trainable_modules


def family(record: Record) -> str:
    """The task family of a record (the unit of a data mix)."""
    kind = record.output_type
    if kind is OutputType.TEXT:
        return "asr" if record.task == "<TRANSCRIBE>" else "only_p" if is_only_p(record.task) else "asrp"
    return {OutputType.TTS: "tts", OutputType.S2T_CHAT: "s2t", OutputType.S2T_THINK: "s2t_think",
            OutputType.S2S: "s2s", OutputType.S2S_THINK: "s2s_think", OutputType.S2S_HISTORY: "s2s_history",
            OutputType.T2T: "t2t"}.get(kind, "other")


@dataclass(frozen=True)
class Phase:
    """A run of ``steps`` optimizer steps over a weighted mix of task families."""

    mix: tuple[tuple[str, float], ...]
    steps: int
    bridge_only: bool = False  # train on the bridge losses alone (no LLM forward): the acoustic warm-up
    batch_scale: float = 1.0  # multiplies the batch limits (frames and tokens) of the train config
    # at the phase's first step, set the LLM's cue-tag rows apart inside the word rows' span
    # (echat.train.bridge.spread_tag_rows): the tags become readable once copying has formed on words
    spread_tags: bool = False


@dataclass(frozen=True)
class StageRecipe:
    """One training stage. ``module_lr`` scales the learning rate per top-level module (0 = frozen)."""

    name: str
    phases: tuple[Phase, ...]
    module_lr: tuple[tuple[str, float], ...]
    lr: float = 1e-3
    warmup_steps: int = 50
    scheduler: str = "constant"
    think: ThinkMode = ThinkMode.NONE
    lora: bool = False
    bridge: float = 0.0  # weight of the auxiliary CTC + cue losses (echat.train.bridge); 0 = off
    token_ctc: bool = True  # with the bridge: also the adapter's token CTC through the LLM's embeddings
    dictation: bool = False  # clips are read as dictation_clips (spelled tokens), not through the encoder
    # with dictation: the share of transcripts whose words are shuffled, so that only copying the prefix
    # (not recalling a memorised sentence) predicts the answer (echat.train.bridge.shuffled_words)
    shuffled_dictation: float = 0.0
    # with dictation: the share of transcripts replaced by random corpus words (echat.train.bridge.random_words)
    random_dictation: float = 0.0
    # with dictation: the share of records asking for cue tags whose labels are drawn at random
    # (echat.train.bridge.random_cues), so that only reading the tag frames predicts the tags
    random_tags: float = 0.0
    # with dictation: the share of ASR records with random cue tags written into their transcript
    # (echat.train.bridge.tagged_words), so that the LLM copies tags as it copies words
    tagged_dictation: float = 0.0
    # the share of think records (s2t_think, s2s_think) drawn as drills: their spoken words shuffled and read
    # from exact token frames instead of the audio (echat.train.bridge.drilled_think)
    think_drills: float = 0.0
    epoch_size: int = 512  # records drawn per epoch (then batched)
    # steps between the dev evaluations that watch the stage (dev loss, two greedy decodes and in stages 0-1
    # the hearing figures); they change no weight and no random draw, only the time; 0 = none
    eval_every: int = 250

    @property
    def max_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def teaches_think(self) -> bool:
        """Whether a phase trains the think tasks (``s2t_think``, ``s2s_think``), so that the stage's
        checkpoints answer in its think mode."""
        return any(family.endswith("_think") for phase in self.phases for family, _ in phase.mix)

    def phase_start(self, index: int) -> int:
        """The step at which phase ``index`` begins."""
        return sum(p.steps for p in self.phases[:index])

    def phase_at(self, step: int) -> tuple[int, Phase]:
        for index, phase in enumerate(self.phases):
            if step < phase.steps:
                return index, phase
            step -= phase.steps
        return len(self.phases) - 1, self.phases[-1]

    def describe(self) -> str:
        lines = [f"stage {self.name}: {self.max_steps} steps, lr {self.lr:g} ({self.scheduler}, warm-up "
                 f"{self.warmup_steps}), think {self.think}, trainable x lr: "
                 + ", ".join(f"{m} {s:g}" for m, s in self.module_lr)
                 + (f"; bridge losses x {self.bridge:g}" if self.bridge else "")]
        for i, phase in enumerate(self.phases):
            total = sum(w for _, w in phase.mix)
            notes = (", bridge losses only" if phase.bridge_only else "") + (
                f", batches x {phase.batch_scale:g}" if phase.batch_scale != 1.0 else "") + (
                ", tag rows spread at its start" if phase.spread_tags else "")
            lines.append(f"  phase {i + 1} ({phase.steps} steps{notes}): "
                         + ", ".join(f"{f} {w / total:.0%}" for f, w in phase.mix))
        return "\n".join(lines)


def _lr(**scales: float) -> tuple[tuple[str, float], ...]:
    return tuple((m, scales.get(m, 0.0)) for m in MODULES)


# Steps between the dev evaluations of each stage: twice per stage, four times in stage 1 (its hearing curve).
# Why: every 250 steps they took 94 s of a whole mini run's 20 min 21 s (32 s in stage 0, 32 s in stage 1, 13 s
# in stage 2, 17 s in stage 3: docs/hearing.md §17). Steps, not scaled by the recipe: the smoke recipe's
# stages are too short to be evaluated on the way, as before.
_EVAL_EVERY = {"text": 650, "understanding": 500, "generation": 375, "empathy": 700}


def _stages(scale: float, think: ThinkMode) -> tuple[StageRecipe, ...]:
    """The four stages; ``scale`` multiplies every phase length (smoke: tiny, mini: minutes)."""
    steps = lambda n: max(2, round(n * scale))  # noqa: E731
    return tuple(dataclasses.replace(s, epoch_size=max(32, round(512 * min(1.0, 10 * scale))),
                                     eval_every=_EVAL_EVERY[s.name])
                 for s in _full_stages(steps, think))


UNDERSTANDING_MIX = (("asr", 2.0), ("asrp", 2.0), ("only_p", 1.0))
# Stage 0 opens with ASR dictation alone: copying the transcript is the skill stage 1 relies on, and it
# appears abruptly (docs/hearing.md: without bigram frames it appeared in 2 of 7 runs of 500-1,000 steps;
# with them in 5 of 5, at 400-700 steps on corpus seed 0 but only by step 1,000 on corpus seed 1, E22-E29).
# Then the tags and the corpus text join, for 500 steps: at 200 the copy of a sentence with a dropped word
# looped and one seed read <CRY> as <SCREAM> (E85: exact-frame ASR CER 0.006 / 0.000 / 0.003 against
# 0.011 / 0.090 / 0.046, <CRY> 11 of 11 against 0 of 11).
DICTATION_MIX = (("text_lm", 1.0), ("asr", 2.0), ("asrp", 1.0), ("only_p", 1.0))


def rehearsal(weight: float) -> tuple[tuple[str, float], ...]:
    """Stage 1's mix of the understanding tasks at total ``weight``, beside a speech-output phase's tasks.
    Why: trained on speech output alone (stage 2), the LLM forgot them: after stage 2 ASR CER 1.35 / 1.41
    and not one cue tag (0.00); with a third of phase 1 and a quarter of phase 2 age, gender, event
    0.93-1.00, emotion 0.90 / 0.73, ASR CER 0.65 / 0.36 (docs/hearing.md §15, seed 0, seen / unseen)."""
    total = sum(w for _, w in UNDERSTANDING_MIX)
    return tuple((fam, weight * w / total) for fam, w in UNDERSTANDING_MIX)


# Stages 2 and 3 train the LLM and the speech embedding and head; the adapter keeps what stage 1 taught it.
# Why: its cue classifiers have no loss of their own after stage 1, and trained through the LLM alone they
# lost what they heard (seed 1, emotion 0.90 / 0.88 after stage 1, 0.73 / 0.68 after stage 2), and the LLM
# copies them (docs/hearing.md §16, E95). The paper's generation stage trains the adapter too
# (:mod:`echat.train.stages`).
_SPEECH_AND_LLM = _lr(llm=1.0, speech_embedding=1.0, speech_head=1.0)


def _full_stages(steps, think: ThinkMode) -> tuple[StageRecipe, ...]:
    return (
        StageRecipe("text", (Phase((("asr", 1.0),), steps(800)), Phase(DICTATION_MIX, steps(500))),
                    _lr(llm=1.0), lr=2e-3, dictation=True, random_tags=1.0, tagged_dictation=0.5),
        # The learning rate falls to zero over stage 1 (cosine): at a constant rate the adapter ended with
        # ASR CER 0.116 / 0.129 and emotion 0.825 / 0.800 on seed 0, with the cosine 0.077 / 0.226 and 0.950 /
        # 0.825 (docs/hearing.md §16, E96).
        StageRecipe("understanding", (Phase(UNDERSTANDING_MIX, steps(2000), bridge_only=True, batch_scale=2.0),),
                    _lr(adapter=1.0), lr=3e-3, bridge=1.0, scheduler="cosine"),
        StageRecipe("generation", (Phase((("tts", 2.0), *rehearsal(1.0)), steps(450)),
                                   Phase((("s2s", 2.0), ("s2t", 1.0), ("tts", 1.0), ("t2t", 0.5),
                                          ("s2s_history", 0.3), *rehearsal(1.5)), steps(300))),
                    _SPEECH_AND_LLM, lr=1e-3),
        # Stage 3 at 1,400 steps: every 200-300 more has helped the think and the reply emotion on both seeds
        # (docs/hearing.md §15-§18, E90, E93, E100, E110); at 900 with the adapter kept the think parsed on
        # 0.83-0.93 and the reply emotion was 0.78-0.88, at 1,200 0.90-0.98 and 0.83-0.93, at 1,400
        # 0.90-1.00 and 0.85-0.98 (E110, from the same stage-2 checkpoints). Its learning rate was measured
        # both ways on seed 0: at 1e-3 the think parsed on 0.18-0.30, with the rate falling to zero (cosine) on
        # 0.75-0.80 (E97, E98). A fifth of its think records are drills (think_drills): the spoken words shuffled
        # and read from exact frames, so that the think's format does not hang on a memorised sentence. From the
        # same stage-2 checkpoints, one thread: think parse 1.000 / 0.925 -> 1.000 / 1.000 (seed 0) and 0.975 /
        # 0.900 -> 0.975 / 0.975 (seed 1), every unseen field up 7.5-12.5 points; at 0.4 worse on both (E119).
        # On two threads (seed 1's whole run) the parse 0.925 / 0.925 -> 0.950 / 0.950 and the fields moved up
        # to 7.5 points either way (E122); on all 160 dialogues that run's think emotion fell 7.5 / 11.8 (E124).
        # Drills only with the tag think: a language think quotes the sentence as said (``think_str``), not the
        # shuffled words, and without a think there is no transcript to drill.
        StageRecipe("empathy", (Phase((("s2s_think", 2.0), ("s2t_think", 2.0), ("s2s", 0.5), ("asrp", 0.5)),
                                      steps(1400)),),
                    _SPEECH_AND_LLM,
                    lr=5e-4, think=think, think_drills=0.2 if think is ThinkMode.TAG else 0.0),
    )


REFERENCE_RECIPE = "osum-echat"
REFERENCE_STAGE_STEPS = 10_000  # optimizer steps per stage unless --max-steps: the reference runs one epoch of its data


def _reference_stages(think: ThinkMode) -> tuple[StageRecipe, ...]:
    """The released model's fine-tuning: the reference's optimiser (``TrainConfig``'s defaults, from its
    conf/ct_config.yaml: lr 1e-6, 2,000 warm-up steps, then inverse square root as WeNet's warmuplr) and the
    paper's trainable set per stage (:func:`echat.train.stages.trainable_modules`); no bridge, dictation or
    drills. The generation and empathy mixes are the mini recipe's, rehearsal included."""
    reference = TrainConfig()

    def made(name: str, mix: tuple[tuple[str, float], ...], **more) -> StageRecipe:
        scales = _lr(**dict.fromkeys(trainable_modules(name), 1.0))
        return StageRecipe(name, (Phase(mix, REFERENCE_STAGE_STEPS),), scales, lr=reference.lr,
                           warmup_steps=reference.warmup_steps, scheduler=reference.scheduler, **more)

    return (made("understanding", UNDERSTANDING_MIX),
            made("generation", (("tts", 1.0), ("s2s", 2.0), ("s2t", 1.0), ("t2t", 0.5), ("s2s_history", 0.3),
                                *rehearsal(1.5))),
            made("empathy", (("s2s_think", 2.0), ("s2t_think", 2.0), ("s2s", 0.5), ("asrp", 0.5)), think=think))


RECIPES = {"smoke": 0.01, "mini": 1.0}
STAGE_RECIPE = {"smoke": "smoke", "mini": "mini", "osum-echat": REFERENCE_RECIPE}  # preset -> its stages' recipe
STAGE_NAMES = ("text", "understanding", "generation", "empathy")


def recipe(name: str, think: ThinkMode | str = ThinkMode.TAG) -> tuple[StageRecipe, ...]:
    """The stages of recipe ``name`` (``smoke``: seconds, for tests; ``mini``: the CPU world; ``osum-echat``:
    fine-tuning the released model, its last three stages)."""
    if name == REFERENCE_RECIPE:
        return _reference_stages(ThinkMode(think))
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return _stages(RECIPES[name], ThinkMode(think))


def stage(recipe_name: str, stage_name: str, think: ThinkMode | str = ThinkMode.TAG,
          max_steps: int | None = None) -> StageRecipe:
    """One stage of a recipe, optionally cut to ``max_steps`` (phases shortened in proportion)."""
    found = {s.name: s for s in recipe(recipe_name, think)}
    if stage_name not in found:
        raise ValueError(f"unknown stage {stage_name!r}; choose one of {STAGE_NAMES}")
    chosen = found[stage_name]
    if max_steps is None:
        return chosen
    lengths = _cut([p.steps for p in chosen.phases], max_steps)
    phases = tuple(dataclasses.replace(p, steps=n) for p, n in zip(chosen.phases, lengths, strict=True) if n)
    return dataclasses.replace(chosen, phases=phases)


def _cut(steps: list[int], total: int) -> list[int]:
    """Phase lengths in proportion to ``steps`` that add up to exactly ``total`` (largest remainders
    first); every phase keeps a step while there are enough steps to go round."""
    shares = [total * n / sum(steps) for n in steps]
    out = [int(share) for share in shares]
    for i in sorted(range(len(out)), key=lambda i: out[i] - shares[i])[:total - sum(out)]:
        out[i] += 1
    while total >= len(out) and 0 in out:  # give an empty phase a step of the longest one
        out[out.index(max(out))] -= 1
        out[out.index(0)] += 1
    return out


def text_lm_records(records: list[Record]) -> list[Record]:
    """Stage-0 text: every T2T pair and every dialogue turn as a (question -> reply) text record."""
    out = [r for r in records if family(r) == "t2t"]
    for r in records:
        if family(r) in ("s2t", "s2t_think", "s2s", "s2s_think") and r.extra.get("q_txt"):
            extra = {**r.extra, "question": r.extra["q_txt"]}
            out.append(dataclasses.replace(r, key=f"{r.key}_text", wav=None, task="<TEXT2TEXT>", extra=extra))
    return out


def mix_records(by_family: dict[str, list[Record]], phase: Phase, count: int, rng: random.Random) -> list[Record]:
    """``count`` records drawn (with replacement) from the families of ``phase`` by their weights."""
    present = [(f, w) for f, w in phase.mix if by_family.get(f)]
    if not present:
        raise ValueError(f"no records for any family of {[f for f, _ in phase.mix]}")
    total = sum(w for _, w in present)
    chosen = []
    for fam, weight in present:
        pool = by_family[fam]
        chosen += [pool[rng.randrange(len(pool))] for _ in range(max(1, round(count * weight / total)))]
    rng.shuffle(chosen)
    return chosen


@dataclass
class RecordPool:
    """Training records grouped by family (stage 0's text records under ``text_lm``)."""

    by_family: dict[str, list[Record]] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: list[Record]) -> RecordPool:
        pool = cls()
        for r in records:
            pool.by_family.setdefault(family(r), []).append(r)
        pool.by_family["text_lm"] = text_lm_records(records)
        return pool
