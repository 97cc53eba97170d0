"""EChat-mini: an offline empathetic speech-dialogue corpus with real synthesized audio.

Design choices:
- Each user *clip* is one sentence (:mod:`echat.data.mini.text`) said by one synthetic speaker with
  one emotion and one optional sound event (:mod:`echat.data.mini.voices`); the assistant's reply —
  its words and its reply emotion — is a function of the sentence *and* the cues, and is spoken by one
  fixed assistant voice. Every clip yields understanding records (ASR, ASR+P, only-P), one dialogue
  record (S2T / S2T think / S2S / S2S think) and, for some, TTS; T2T pairs and two-turn dialogues
  complete the task set. Every record carries all cue labels in ``extra`` so any task can be evaluated.
- Splits: ``train``, ``dev``, and ``test`` in two parts reported separately —
  ``seen``: training sentences said with cue combinations that sentence never had in training and
  with prosody jitter from a range training never uses; ``unseen``: sentences never in training.
- The mini speech tokenizer is fitted on the training replies (the voice TTS must produce) and saved
  with the corpus; every speech-output record stores its reply tokens in ``extra.speech_token``.
- Deterministic for a seed: every clip has its own derived seed, files are written in a fixed order
  (rendering runs in worker processes, results are taken in order).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from echat.config import preset
from echat.data.mini.report import write_reports
from echat.data.mini.text import (
    T2T_PAIRS,
    Sentence,
    all_sentences,
    reply_text,
    split_sentences,
    think_paragraph,
)
from echat.data.mini.voices import ClipRecipe, Speaker, render_clip, render_reply
from echat.data.schema import Record, write_manifest
from echat.data.speech_tokens import SPEECH_TOKENIZER_DIR, MiniSpeechTokenizer
from echat.prompts import prompt_texts
from echat.text_tokenizer import build_mini_tokenizer, save_tokenizer
from echat.tokens import AGES, GENDERS, NO_EVENT, SOUND_EVENTS

EMOTIONS = ("<NEUTRAL>", "<HAPPY>", "<SAD>", "<ANGRY>", "<FEAR>", "<SURPRISE>")
EVENTS = SOUND_EVENTS  # <OTHER> = no event
NO_EVENT_PROB = 0.4
NOISE_PROB, NOISE_SNR_DB = 0.2, (15.0, 30.0)
UNDERSTANDING_TASKS = (
    "<TRANSCRIBE> <EMOTION>", "<TRANSCRIBE> <AGE>", "<TRANSCRIBE> <GENDER>", "<TRANSCRIBE> <CAPTION>",
    "<TRANSCRIBE> <EMOTION> <AGE> <GENDER>", "<TRANSCRIBE> <CAPTION> <AGE> <GENDER>",
)
ONLY_P_TASKS = ("<EMOTION>", "<AGE>", "<GENDER>", "<CAPTION>", "<AGE> <GENDER>")
CHAT_TASKS = ("<S2TCHAT>", "<S2TCHAT> <THINKER>", "<S2TCHAT> <TEXT2TOKEN>", "<S2TCHAT> <TEXT2TOKEN> <THINK>")
TAG_OF = {"<EMOTION>": "q_emotion", "<AGE>": "age", "<GENDER>": "gender", "<CAPTION>": "caption"}
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class CorpusSize:
    """User clips per split, two-turn dialogues (train, test) and TTS share of the clips."""

    train: int
    dev: int
    test_seen: int
    test_unseen: int
    dialogues: tuple[int, int]
    tts_fraction: float = 0.5


SIZES = {
    "smoke": CorpusSize(train=24, dev=4, test_seen=4, test_unseen=4, dialogues=(2, 1)),
    "mini": CorpusSize(train=1600, dev=120, test_seen=160, test_unseen=160, dialogues=(80, 20)),
    "full": CorpusSize(train=6400, dev=400, test_seen=500, test_unseen=500, dialogues=(300, 60)),
}


@dataclass(frozen=True)
class Clip:
    """One user utterance to render, with its split, reply and think text."""

    clip_id: str
    split: str
    subset: str  # "" | "seen" | "unseen" (test parts)
    sentence: Sentence
    recipe: ClipRecipe
    reply_emotion: str
    reply: str
    think: str


# ----------------------------------------------------------------------------------------------
# Planning: which clips, with which cues
# ----------------------------------------------------------------------------------------------


def _draw_event(rng: random.Random) -> str:
    return NO_EVENT if rng.random() < NO_EVENT_PROB else rng.choice([e for e in EVENTS if e != NO_EVENT])


def _draw_cues(rng: random.Random) -> tuple[str, str, str, str]:
    return rng.choice(GENDERS), rng.choice(AGES), rng.choice(EMOTIONS), _draw_event(rng)


def _balanced_cues(count: int, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """Cue combinations cycling through every gender x age x emotion in shuffled rounds, so even a
    small split is balanced."""
    combos = [(g, a, e) for g in GENDERS for a in AGES for e in EMOTIONS]
    out = []
    while len(out) < count:
        rng.shuffle(combos)
        out += [(*combo, _draw_event(rng)) for combo in combos]
    return out[:count]


def _clip(clip_id, split, subset, sentence, cues, zone, rng: random.Random) -> Clip:
    gender, age, emotion, event = cues
    seed = rng.randrange(MAX_SEED)
    np_rng = np.random.default_rng(seed)
    speaker = Speaker.draw(gender, age, np_rng)
    snr = round(rng.uniform(*NOISE_SNR_DB), 1) if rng.random() < NOISE_PROB else None
    recipe = ClipRecipe(sentence.text, speaker, emotion, event, rng.choice(("before", "after")), zone, snr, seed)
    tag, reply = reply_text(sentence, age, emotion, event, rng)
    think = think_paragraph(sentence, age, gender, emotion, event, tag, rng)
    return Clip(clip_id, split, subset, sentence, recipe, tag, reply, think)


def plan_clips(size: CorpusSize, seed: int) -> list[Clip]:
    """Every clip of the corpus, deterministic for ``seed``."""
    rng = random.Random(seed)
    seen, unseen = split_sentences(all_sentences(), 0.15, rng)
    clips, used = [], {}
    for split, count in (("train", size.train), ("dev", size.dev)):
        for i, cues in enumerate(_balanced_cues(count, rng)):
            sentence = rng.choice(seen)
            if split == "train":
                used.setdefault(sentence.text, set()).add(cues)
            clips.append(_clip(f"{split}_{i:05d}", split, "", sentence, cues, "train", rng))
    trained = sorted(used)
    for i in range(size.test_seen):
        text = trained[rng.randrange(len(trained))]
        sentence = next(s for s in seen if s.text == text)
        cues = _draw_cues(rng)
        while cues in used[text]:
            cues = _draw_cues(rng)
        clips.append(_clip(f"test_seen_{i:05d}", "test", "seen", sentence, cues, "test", rng))
    for i, cues in enumerate(_balanced_cues(size.test_unseen, rng)):
        sentence = unseen[rng.randrange(len(unseen))]
        clips.append(_clip(f"test_unseen_{i:05d}", "test", "unseen", sentence, cues, "train", rng))
    return clips


def plan_dialogues(clips: list[Clip], size: CorpusSize, seed: int) -> list[tuple[Clip, Clip]]:
    """Two-turn dialogues: a second clip by the same speaker follows a first one."""
    rng = random.Random(seed + 1)
    pairs = []
    for split, count in (("train", size.dialogues[0]), ("test", size.dialogues[1])):
        pool = [c for c in clips if c.split == split and (split == "train" or c.subset == "unseen")]
        for i, first in enumerate(rng.sample(pool, min(count, len(pool)))):
            second = rng.choice([c for c in pool if c is not first])
            cues = (first.recipe.speaker.gender, first.recipe.speaker.age, second.recipe.emotion,
                    second.recipe.event)
            follow = _clip(f"{split}_dialogue_{i:05d}", split, second.subset, second.sentence, cues,
                           second.recipe.zone, rng)
            follow = _same_speaker(follow, first)
            pairs.append((first, follow))
    return pairs


def _same_speaker(clip: Clip, as_in: Clip) -> Clip:
    return dataclasses.replace(clip, recipe=dataclasses.replace(clip.recipe, speaker=as_in.recipe.speaker))


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _render(clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    return render_clip(clip.recipe), render_reply(clip.reply, clip.reply_emotion)


def render_all(clips: list[Clip], workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(user wave, reply wave) per clip, in order; ``workers`` processes (eSpeak is ~200x real time)."""
    bar = dict(total=len(clips), desc="synthesising", unit="clip")
    if workers <= 1:
        return [_render(c) for c in tqdm(clips, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(_render, clips, chunksize=16), **bar))


def _write_wav(path: Path, wave: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, 16_000, subtype="PCM_16")


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


def _labels(clip: Clip) -> dict:
    r = clip.recipe
    return {"q_txt": clip.sentence.transcript, "age": r.speaker.age, "gender": r.speaker.gender,
            "q_emotion": r.emotion, "caption": r.event}


def _tags(task: str, labels: dict) -> str:
    return "".join(labels[TAG_OF[t]] for t in task.split(" ") if t in TAG_OF)


def clip_records(clip: Clip, tokens: list[int], index: int, rng: random.Random,
                 tts_fraction: float) -> list[Record]:
    """ASR, one ASR+P, one only-P and one dialogue record of a clip (+ TTS for a share of clips)."""
    labels = _labels(clip)
    extra = {**labels, "reply_emotion": clip.reply_emotion, "think_str": clip.think, "subset": clip.subset,
             "reply_wav": f"wav/reply/{clip.clip_id}.wav", "recipe": clip.recipe.to_json()}
    wav = f"wav/user/{clip.clip_id}.wav"
    asrp, only_p = UNDERSTANDING_TASKS[index % 6], ONLY_P_TASKS[index % 5]
    chat = CHAT_TASKS[(index // 6) % 4]
    records = [
        Record(f"{clip.clip_id}_asr", wav, clip.sentence.transcript, "<TRANSCRIBE>", dict(extra)),
        Record(f"{clip.clip_id}_asrp", wav, clip.sentence.transcript + _tags(asrp, labels), asrp, dict(extra)),
        Record(f"{clip.clip_id}_onlyp", wav, _tags(only_p, labels), only_p, dict(extra)),
        Record(f"{clip.clip_id}_chat", wav, clip.reply_emotion + clip.reply, chat,
               {**extra, **({"speech_token": tokens} if "<TEXT2TOKEN>" in chat else {})}),
    ]
    if rng.random() < tts_fraction:
        records.append(Record(f"{clip.clip_id}_tts", None, clip.reply, "<TEXT2TOKEN>",
                              {"reply_emotion": clip.reply_emotion, "speech_token": tokens,
                               "reply_wav": extra["reply_wav"], "subset": clip.subset}))
    return records


def dialogue_record(first: Clip, follow: Clip, tokens: dict[str, list[int]]) -> Record:
    """A two-turn S2S record in the reference raw layout (wav_1/txt_1 + extra.speech_token_1)."""
    extra = {**_labels(follow), "reply_emotion": follow.reply_emotion, "think_str": follow.think,
             "subset": follow.subset, "speech_token": tokens[follow.clip_id],
             "reply_wav": f"wav/reply/{follow.clip_id}.wav",
             "speech_token_1": tokens[first.clip_id], "recipe": follow.recipe.to_json()}
    history = [{"wav": f"wav/user/{first.clip_id}.wav", "txt": first.reply}]
    return Record(f"{follow.clip_id}_history", f"wav/user/{follow.clip_id}.wav",
                  follow.reply_emotion + follow.reply, "<S2TCHAT> <TEXT2TOKEN> <HISTORY>", extra, history=history)


def t2t_records(clips: list[Clip], rng: random.Random) -> list[Record]:
    """Text questions with text answers: general QA pairs, and sentences with the cue-free reply."""
    records = [Record(f"t2t_qa_{i:03d}", None, answer, "<TEXT2TEXT>", {"question": question})
               for i, (question, answer) in enumerate(T2T_PAIRS)]
    for clip in rng.sample(clips, min(len(clips), 4 * len(T2T_PAIRS))):
        tag, reply = reply_text(clip.sentence, "<ADULT>", "<NEUTRAL>", NO_EVENT, rng)
        records.append(Record(f"t2t_{clip.clip_id}", None, reply, "<TEXT2TEXT>",
                              {"question": clip.sentence.text, "reply_emotion": tag}))
    return records


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------


def check_arguments(size: str, out: str | os.PathLike, seed: int) -> Path:
    """One clear error for a bad size, seed or output folder."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed} out of range [0, {MAX_SEED}]")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "corpus.json").exists():
        raise ValueError(f"{out} exists and is not an EChat-mini corpus; give an empty or new folder")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ValueError(f"cannot write to {out} ({probe} is not a writable folder)")
    return out


def build_corpus(out: str | os.PathLike, size: str = "mini", seed: int = 0, workers: int | None = None,
                 codebook_size: int | None = None) -> dict:
    """Write EChat-mini to ``out``: train/dev/test jsonl, wav/, speech and text tokenizers, reports.

    Returns the summary written to ``corpus.json``.
    """
    out = check_arguments(size, out, seed)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = SIZES[size]
    codebook_size = codebook_size or (64 if size == "smoke" else 512)
    clips = plan_clips(spec, seed)
    dialogues = plan_dialogues(clips, spec, seed)
    every = clips + [follow for _, follow in dialogues]
    waves = dict(zip((c.clip_id for c in every), render_all(every, workers or min(2, os.cpu_count() or 1))))
    for clip_id, (user, reply) in waves.items():
        _write_wav(out / "wav" / "user" / f"{clip_id}.wav", user)
        _write_wav(out / "wav" / "reply" / f"{clip_id}.wav", reply)
    train_replies = [waves[c.clip_id][1] for c in clips if c.split == "train"]
    speech_tok = MiniSpeechTokenizer().fit(train_replies, codebook_size=codebook_size, seed=seed)
    speech_tok.save(out / SPEECH_TOKENIZER_DIR)
    tokens = {clip_id: speech_tok.encode(_read(out / "wav" / "reply" / f"{clip_id}.wav")).tolist()
              for clip_id in tqdm(waves, desc="speech tokens", unit="clip")}
    splits = _write_splits(out, clips, dialogues, tokens, spec, seed)
    _write_text_tokenizer(out, splits["train"])
    write_reports(out, splits, {c.clip_id: waves[c.clip_id][0] for c in clips}, clips)
    return _summarise(out, size, seed, splits, codebook_size)


def _read(path: Path) -> np.ndarray:
    """Audio exactly as written (16-bit), so tokens are computed from the files users will read."""
    return sf.read(path, dtype="float32")[0]


def _write_splits(out: Path, clips, dialogues, tokens, spec: CorpusSize, seed: int) -> dict[str, list[Record]]:
    rng = random.Random(seed + 2)
    splits: dict[str, list[Record]] = {"train": [], "dev": [], "test": []}
    for index, clip in enumerate(clips):
        splits[clip.split] += clip_records(clip, tokens[clip.clip_id], index, rng, spec.tts_fraction)
    for first, follow in dialogues:
        splits[follow.split].append(dialogue_record(first, follow, tokens))
    splits["train"] += t2t_records([c for c in clips if c.split == "train"], rng)
    for name, records in splits.items():
        write_manifest(records, out / f"{name}.jsonl")
    return splits


def _write_text_tokenizer(out: Path, train: list[Record]) -> None:
    """The mini BPE, trained on the prompts and every training text (transcripts, replies, thinks)."""
    texts = prompt_texts("mini") + [r.txt for r in train]
    texts += [str(r.extra.get(k, "")) for r in train for k in ("think_str", "question")]
    save_tokenizer(build_mini_tokenizer(texts, vocab_size=preset("mini").text.bpe_vocab_size), out / "text_tokenizer")


def _summarise(out: Path, size: str, seed: int, splits, codebook_size: int) -> dict:
    files = [p for p in out.rglob("*") if p.is_file()]
    summary = {
        "name": "EChat-mini", "version": 1, "size": size, "seed": seed, "codebook_size": codebook_size,
        "records": {name: len(records) for name, records in splits.items()},
        "user_clips": len(list((out / "wav" / "user").glob("*.wav"))),
        "bytes": sum(p.stat().st_size for p in files),
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def build_corpus_if_absent(folder: str | Path, size: str, seed: int = 0) -> Path:
    """``folder`` holding EChat-mini of ``size``, built there (``echat data mini``) when absent.

    A corpus of another size there is an error (one line): a mini run must not train on a smoke corpus.
    """
    folder = Path(folder)
    info = folder / "corpus.json"
    if info.is_file():
        found = json.loads(info.read_text(encoding="utf-8")).get("size")
        if found != size:
            raise ValueError(f"{folder} holds a {found} EChat-mini corpus, not {size}: use another run folder")
        return folder
    print(f"building EChat-mini ({size}, seed {seed}) in {folder}: once", flush=True)
    start = time.perf_counter()
    build_corpus(folder, size=size, seed=seed)
    print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    return folder
