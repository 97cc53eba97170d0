"""EChat-mini: files, schema validity, determinism, split rules, and labels that are in the audio."""

import hashlib
import json
import random
import subprocess
import sys

import pytest

from echat.data.check import check_manifest
from echat.data.mini.corpus import SIZES, build_corpus, check_arguments, plan_clips
from echat.data.mini.text import all_sentences, reply_text
from echat.data.schema import read_manifest


@pytest.fixture
def corpus(smoke_corpus):
    return smoke_corpus


def _hashes(folder):
    """sha256 of every file the build wrote (not the encoder frames that training keeps in ``cache/``)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] != "cache"}


def test_smoke_corpus_has_every_split_task_and_tokenizer(corpus):
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "corpus.json", "stats.md", "stats.json",
                 "cue_stats.json", "cue_stats.png", "speech_tokenizer", "text_tokenizer"):
        assert (corpus / name).exists(), name
    tasks = {r.task for r in read_manifest(corpus / "train.jsonl")}
    for task in ("<TRANSCRIBE>", "<S2TCHAT>", "<S2TCHAT> <THINKER>", "<S2TCHAT> <TEXT2TOKEN>",
                 "<S2TCHAT> <TEXT2TOKEN> <THINK>", "<TEXT2TOKEN>", "<TEXT2TEXT>", "<S2TCHAT> <TEXT2TOKEN> <HISTORY>"):
        assert task in tasks, task
    assert any(t.startswith("<TRANSCRIBE> <") for t in tasks) and "<AGE> <GENDER>" in tasks
    summary = json.loads((corpus / "corpus.json").read_text())
    assert 80 <= sum(summary["records"].values()) <= 200


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_every_split_passes_the_schema_and_audio_checks(corpus, split):
    report = check_manifest(corpus / f"{split}.jsonl", codebook_size=64, max_seconds=30)
    assert report.ok, report.render()


def test_the_same_seed_reproduces_identical_files(corpus, tmp_path):
    again = tmp_path / "again"
    build_corpus(again, size="smoke", seed=7)
    assert _hashes(again) == _hashes(corpus)


def test_test_parts_follow_the_split_rules(corpus):
    train = read_manifest(corpus / "train.jsonl")
    test = read_manifest(corpus / "test.jsonl")
    trained = {}
    for r in train:
        if r.wav and "q_txt" in r.extra:
            trained.setdefault(r.extra["q_txt"], set()).add(
                tuple(r.extra[k] for k in ("gender", "age", "q_emotion", "caption")))
    for r in test:
        if not r.wav or r.extra.get("subset") not in ("seen", "unseen") or r.history:
            continue
        cues = tuple(r.extra[k] for k in ("gender", "age", "q_emotion", "caption"))
        if r.extra["subset"] == "seen":
            assert r.extra["q_txt"] in trained and cues not in trained[r.extra["q_txt"]]
            assert r.extra["recipe"]["zone"] == "test"
        else:
            assert r.extra["q_txt"] not in trained


def test_labels_are_recoverable_from_simple_acoustic_statistics(corpus):
    cues = json.loads((corpus / "cue_stats.json").read_text())
    acc, chance = cues["nearest_centroid_accuracy"], cues["chance"]
    # 36 clips, no training: gender is well above chance (children's voices overlap, as in life),
    # age and emotion far above it.
    assert acc["gender"] >= 0.75
    assert acc["age"] >= 1.5 * chance["age"]
    assert acc["emotion"] >= 2 * chance["emotion"]


def test_the_same_sentence_gets_a_different_reply_for_a_different_cue():
    sentence = all_sentences()[0]
    happy = reply_text(sentence, "<ADULT>", "<HAPPY>", "<OTHER>", random.Random(0))
    sad = reply_text(sentence, "<ADULT>", "<SAD>", "<OTHER>", random.Random(0))
    crying = reply_text(sentence, "<ADULT>", "<HAPPY>", "<CRY>", random.Random(0))
    assert happy[0] == "<HAPPY>" and sad[0] == "<COMFORTING>" and crying[0] == "<COMFORTING>"
    assert len({happy[1], sad[1], crying[1]}) == 3


def test_mini_size_plans_a_few_thousand_records_with_repeated_sentences():
    clips = plan_clips(SIZES["mini"], seed=0)
    train = [c for c in clips if c.split == "train"]
    assert len(clips) * 4 >= 2000
    repeated = {c.sentence.text for c in train if sum(d.sentence.text == c.sentence.text for d in train) > 1}
    assert repeated and len({c.sentence.text for c in train}) > 500


@pytest.mark.parametrize("args, message", [
    (["--size", "huge"], "unknown size 'huge'"),
    (["--seed", "-1"], "seed -1 out of range"),
])
def test_bad_arguments_are_one_clear_error(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "echat", "data", "mini", "--out", str(tmp_path / "x"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_folder_that_is_not_a_corpus_or_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an EChat-mini corpus"):
        check_arguments("smoke", tmp_path, 0)
    with pytest.raises(ValueError, match="cannot write"):
        check_arguments("smoke", tmp_path / "notes.txt" / "corpus", 0)
