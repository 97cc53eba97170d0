"""Stage evaluation: the label/think/reply-emotion metrics on hand-made examples (exact numbers), the
reply-emotion classifier on a smoke corpus, ``evaluate()`` with a random smoke model, and ``echat eval``."""

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from echat.eval.metrics import (
    ReplyEmotionClassifier,
    confusion_matrix,
    dialogue_replies,
    label_accuracy,
    parse_tags,
    pick_label,
    plot_confusion,
    reply_emotion_prediction,
    split_asr_output,
    think_field_accuracy,
    think_parse_rate,
)
from echat.prompts import Cues, format_reply, parse_tag_think

CUES = Cues(transcript="i lost my keys", age="<CHILD>", gender="<FEMALE>", emotion="<SAD>", event="<CRY>")
TAG_THINK = format_reply("<COMFORTING>Oh no, we will find them.", "tag", "mini", cues=CUES)
LANGUAGE_THINK = "<think>A sad child is crying about her keys.<think end>Oh no, we will find them."
REFS = {"transcript": "I lost my keys.", "age": "<CHILD>", "gender": "<FEMALE>", "emotion": "<SAD>", "event": "<CRY>",
        "reply_emotion": "<COMFORTING>"}


# ----------------------------------------------------------------------------------------------
# Metrics on hand-made examples
# ----------------------------------------------------------------------------------------------


def test_label_accuracy_counts_missing_predictions_as_wrong():
    assert label_accuracy(["<A>", "<B>", "<A>", "<C>"], ["<A>", "<C>", None, "<C>"]) == 0.5
    with pytest.raises(ValueError):
        label_accuracy(["<A>"], [])
    with pytest.raises(ValueError):
        label_accuracy([], [])


def test_confusion_matrix_rows_are_references_and_unknown_labels_are_dropped():
    refs = ["<A>", "<A>", "<B>", "<B>", "<B>", "<X>"]
    hyps = ["<A>", "<B>", "<B>", "<NONE>", "<B>", "<A>"]
    assert confusion_matrix(refs, hyps, ["<A>", "<B>"]).tolist() == [[1, 1], [0, 2]]
    matrix = confusion_matrix(refs, hyps, ["<A>", "<B>", "<NONE>"])
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 0]]
    assert matrix.dtype == np.int64
    with pytest.raises(ValueError):
        confusion_matrix(refs, hyps, ["<A>", "<A>"])


def test_plot_confusion_writes_a_png(tmp_path):
    figure = plot_confusion([[3, 1], [0, 2]], ["<MALE>", "<FEMALE>"], "gender", tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    assert figure.axes[0].get_title() == "gender"
    with pytest.raises(ValueError):
        plot_confusion([[1, 2, 3]], ["<A>"], "bad")


def test_tags_of_understanding_outputs():
    assert parse_tags("i finally finished the report<SAD><ADULT>") == ["<SAD>", "<ADULT>"]
    assert split_asr_output("i finally finished the report<SAD><ADULT>") == (
        "i finally finished the report", ["<SAD>", "<ADULT>"])
    assert split_asr_output("<HAPPY> hello  there") == ("hello there", ["<HAPPY>"])
    assert split_asr_output("no tags") == ("no tags", [])
    assert pick_label(["<SAD>", "<ADULT>", "<MALE>"], "age") == "<ADULT>"
    assert pick_label(["<SAD>", "<ADULT>", "<MALE>"], "gender") == "<MALE>"
    assert pick_label(["<YOUTH>"], "age") == "<ADULT>"  # reference alias
    assert pick_label(["<anger>"], "emotion") == "<ANGRY>"
    assert pick_label(["<COUGH>"], "event") == "<COUGH>"
    assert pick_label(["<SAD>"], "age") is None


def test_think_parse_rate_tag_and_language():
    outputs = [TAG_THINK, LANGUAGE_THINK, "<think>user said:i lost my keys", "Oh no, we will find them."]
    assert think_parse_rate(outputs, "tag") == 0.25
    assert think_parse_rate(outputs, "language") == 0.5
    assert think_parse_rate([SimpleNamespace(raw_text=TAG_THINK)], "tag") == 1.0
    with pytest.raises(ValueError):
        think_parse_rate([])


def test_think_field_accuracy_per_field():
    good = parse_tag_think(TAG_THINK[len("<think>"):TAG_THINK.index("<think end>")], "mini")
    assert good["age"] == "<CHILD>"
    wrong_age = {**good, "age": "<&&>", "transcript": "I LOST my keys!"}
    refs = [REFS, REFS, {**REFS, "event": None}, REFS]
    scores = think_field_accuracy([good, wrong_age, good, {}], refs)
    assert scores == {"transcript": 0.75, "age": 0.5, "gender": 0.75, "emotion": 0.75, "event": 2 / 3,
                      "reply_emotion": 0.75}
    assert think_field_accuracy([good], [{"age": "<CHILD>"}])["gender"] is None


def test_reply_emotion_prediction_tag_first_then_classifier():
    classifier = ReplyEmotionClassifier().fit(["we will find them", "what a wonderful day"],
                                              ["<COMFORTING>", "<HAPPY>"])
    assert reply_emotion_prediction(TAG_THINK, "mini", classifier) == ("<COMFORTING>", "tag")
    no_leading_tag = TAG_THINK.replace("<think end><COMFORTING>", "<think end>")
    assert reply_emotion_prediction(no_leading_tag, "mini", classifier) == ("<COMFORTING>", "tag")
    assert reply_emotion_prediction("<HAPPY>Oh no.", "mini", classifier) == ("<HAPPY>", "tag")
    assert reply_emotion_prediction(LANGUAGE_THINK, "mini", classifier) == ("<COMFORTING>", "classifier")
    assert reply_emotion_prediction("What a wonderful day!", "mini", classifier) == ("<HAPPY>", "classifier")
    assert reply_emotion_prediction("What a wonderful day!", "mini", None) == (None, "none")
    assert reply_emotion_prediction("<think>never closed", "mini", classifier) == (None, "none")
    assert reply_emotion_prediction("", "mini", classifier) == (None, "none")


def test_classifier_is_multinomial_naive_bayes():
    classifier = ReplyEmotionClassifier(alpha=1.0).fit(
        ["I am so sorry", "Wonderful news!", "So sorry to hear"], ["<COMFORTING>", "<HAPPY>", "<COMFORTING>"])
    # vocabulary of 8 words; COMFORTING has 8 word tokens, HAPPY 2; "unknown" is ignored
    scores = classifier.scores("wonderful unknown")
    assert scores["<COMFORTING>"] == pytest.approx(math.log(2 / 3) + math.log(1 / 16))
    assert scores["<HAPPY>"] == pytest.approx(math.log(1 / 3) + math.log(2 / 10))
    assert classifier.predict(["wonderful", "sorry"]) == ["<HAPPY>", "<COMFORTING>"]
    assert classifier.predict("") == ["<COMFORTING>"]  # the prior decides
    with pytest.raises(ValueError):
        ReplyEmotionClassifier().predict("hello")


# ----------------------------------------------------------------------------------------------
# On a smoke corpus
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(smoke_corpus):
    """The session's smoke corpus (tests/conftest.py), built once for every test module."""
    return smoke_corpus


@pytest.fixture(scope="module")
def model(corpus):
    import torch

    from echat.models.echat import EChat
    from echat.text_tokenizer import load_tokenizer

    torch.manual_seed(0)
    return EChat.from_preset("smoke", tokenizer=load_tokenizer(corpus / "text_tokenizer"))


@pytest.fixture(scope="module")
def report(model, corpus):
    from echat.eval.stage_eval import evaluate

    return evaluate(model, corpus, limit=2, think="tag", progress=False, batch_size=4)


def _figures(report: dict) -> dict:
    """A report without its wall times and batch size."""
    if isinstance(report, dict):
        return {key: _figures(value) for key, value in report.items() if key not in ("seconds", "batch_size")}
    return report


def test_the_figures_do_not_depend_on_the_batch_size(model, corpus, report):
    """Batched generation (4 requests at a time) gives the figures of one request at a time."""
    from echat.eval.stage_eval import evaluate

    one_by_one = evaluate(model, corpus, limit=2, think="tag", progress=False, batch_size=1)
    assert (one_by_one["batch_size"], report["batch_size"]) == (1, 4)
    assert _figures(one_by_one) == _figures(report)
    with pytest.raises(ValueError, match="batch size must be at least 1, got 0"):
        evaluate(model, corpus, limit=2, progress=False, batch_size=0)


def test_classifier_on_ground_truth_replies(corpus):
    from echat.data.schema import read_manifest

    classifier = ReplyEmotionClassifier.from_corpus(corpus)
    train_texts, train_labels = dialogue_replies(read_manifest(corpus / "train.jsonl"))
    texts, labels = dialogue_replies(read_manifest(corpus / "test.jsonl"))
    assert classifier.n_train == len(train_texts) >= 20
    assert all(not text.startswith("<") for text in texts)
    assert label_accuracy(train_labels, classifier.predict(train_texts)) >= 0.95
    assert label_accuracy(labels, classifier.predict(texts)) >= 0.75  # 26 training replies only


def _in_unit(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_evaluate_reports_every_stage_per_subset(report):
    assert set(report["subsets"]) == {"seen", "unseen"}
    assert report["reply_emotion_classifier"]["test_accuracy"] >= 0.75
    for stages in report["subsets"].values():
        understanding, generation, empathy = stages["understanding"], stages["generation"], stages["empathy"]
        assert understanding["items"] == 2
        assert understanding["asr"]["cer"] >= 0.0 and understanding["asr"]["wer"] >= 0.0
        assert set(understanding["labels"]) == {"age", "gender", "emotion", "event"}
        for scores in understanding["labels"].values():
            assert _in_unit(scores["accuracy"])
            matrix = np.array(scores["confusion"])
            assert matrix.shape == (len(scores["labels"]),) * 2 and matrix.sum() == 2
        assert generation["skipped"] is None and 1 <= generation["items"] <= 2
        assert generation["wer_model"] >= 0.0 and generation["wer_ground_truth"] >= 0.0
        assert isinstance(generation["within_2x"], bool)
        assert empathy["items"] == 2 and _in_unit(empathy["think_parse_rate"])
        assert all(_in_unit(v) for v in empathy["think_field_accuracy"].values())
        assert _in_unit(empathy["reply_emotion_accuracy"])
        assert sum(empathy["reply_emotion_sources"].values()) == 2
    assert json.loads(json.dumps(report)) == report


def test_render_and_save_report(report, tmp_path):
    from echat.eval.report import render, save_report

    text = render(report)
    for needle in ("seen", "unseen", "ASR CER", "WER ground truth", "think parse rate", "reply-emotion accuracy"):
        assert needle in text
    written = save_report(report, tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == report
    assert len(written) == 1 + 2 * 5  # eval.json + (4 labels + reply emotion) per subset
    assert all(p.stat().st_size > 0 for p in written)


def test_a_perfect_model_scores_one(model, corpus, monkeypatch):
    """The stages wired to an oracle that answers every call with the ground truth score 1.0."""
    import echat.eval.stage_eval as stage_eval
    from echat.data.schema import read_manifest
    from echat.eval.stage_eval import (
        StageContext,
        dialogue_records,
        group_subsets,
        run_empathy,
        run_understanding,
        user_clips,
    )

    records = group_subsets(read_manifest(corpus / "test.jsonl"))["seen"]
    clips, dialogues = user_clips(records)[:2], dialogue_records(records)[:2]
    answers = [answer for r in clips for answer in (r.extra["q_txt"].upper() + ".", r.extra["age"] + r.extra["gender"],
                                                    r.extra["q_emotion"], r.extra["caption"])]
    answers += [format_reply(r.txt, "tag", "mini", cues=Cues.from_extra(r.extra)) for r in dialogues]
    queue = iter(answers)
    monkeypatch.setattr(stage_eval, "generate_batch",
                        lambda model, requests, **kw: [SimpleNamespace(raw_text=next(queue)) for _ in requests])
    context = StageContext(model, "tag", None, ReplyEmotionClassifier.from_corpus(corpus), None, "no", "cpu", False,
                           batch_size=3)  # the answers come back in order across batches
    understanding = run_understanding(context, clips, "understanding")
    assert understanding["asr"] == {"cer": 0.0, "wer": 0.0}
    assert {field: s["accuracy"] for field, s in understanding["labels"].items()} == dict.fromkeys(
        ("age", "gender", "emotion", "event"), 1.0)
    empathy = run_empathy(context, dialogues, "empathy")
    assert empathy["think_parse_rate"] == 1.0 and empathy["reply_emotion_accuracy"] == 1.0
    assert set(empathy["think_field_accuracy"].values()) == {1.0}
    assert empathy["reply_emotion_sources"] == {"tag": 2}
    assert next(queue, None) is None


def test_generation_is_skipped_without_a_speech_tokenizer(model, corpus, tmp_path):
    from echat.eval.stage_eval import evaluate

    for name in ("train.jsonl", "test.jsonl", "wav", "text_tokenizer"):
        (tmp_path / name).symlink_to(corpus / name)
    report = evaluate(model, tmp_path, stages=["generation"], limit=1, progress=False)
    for stages in report["subsets"].values():
        assert stages["generation"]["wer_model"] is None
        assert "speech tokenizer" in stages["generation"]["skipped"]


class _Voice:
    """A token2wav whose wave is one sample per token, with the fingerprint the round-trip cache is keyed by."""

    def __init__(self, name: str = "a"):
        self.name, self.spoken = name, 0

    def fingerprint(self) -> str:
        return self.name

    def __call__(self, tokens):
        self.spoken += 1
        return np.zeros(len(tokens), dtype=np.float32)


def test_the_ground_truths_round_trip_is_transcribed_once_per_corpus_and_voice(tmp_path, monkeypatch):
    from echat.eval import stage_eval

    heard = []
    monkeypatch.setattr(stage_eval, "transcribe", lambda waves, **_: heard.append(len(waves)) or
                        [f"{len(w)} tokens" for w in waves])
    records = [SimpleNamespace(key="a"), SimpleNamespace(key="b")]
    voice = _Voice()
    ctx = SimpleNamespace(token2wav=voice, cache=tmp_path / "cache", device="cpu", progress=False)
    assert stage_eval.truth_round_trip(ctx, records, [[1, 2], [3]]) == ["2 tokens", "1 tokens"]
    assert stage_eval.truth_round_trip(ctx, records[::-1], [[3], [1, 2]]) == ["1 tokens", "2 tokens"]
    assert heard == [2] and voice.spoken == 2  # the second call read both from tts-truth-a.json
    assert stage_eval.truth_round_trip(ctx, records, [[1, 2], [3, 4, 5]]) == ["2 tokens", "3 tokens"]
    assert heard == [2, 1]  # the tokens of b changed: b alone is spoken and heard again
    ctx.token2wav = _Voice("b")  # another codebook: another file
    stage_eval.truth_round_trip(ctx, records, [[1, 2], [3, 4, 5]])
    assert heard == [2, 1, 2] and sorted(p.name for p in ctx.cache.iterdir()) == ["tts-truth-a.json",
                                                                                  "tts-truth-b.json"]
    (ctx.cache / "tts-truth-b.json").write_text("{not json", encoding="utf-8")  # a damaged cache is redone
    assert stage_eval.truth_round_trip(ctx, records, [[1, 2], [3, 4, 5]]) == ["2 tokens", "3 tokens"]
    assert heard == [2, 1, 2, 2]
    assert json.loads((ctx.cache / "tts-truth-b.json").read_text())["a"]["text"] == "2 tokens"
    ctx.token2wav = lambda tokens: np.zeros(len(tokens), dtype=np.float32)  # no fingerprint: nothing kept
    stage_eval.truth_round_trip(ctx, records, [[1, 2], [3, 4, 5]])
    stage_eval.truth_round_trip(ctx, records, [[1, 2], [3, 4, 5]])
    assert heard == [2, 1, 2, 2, 2, 2]


def test_resolve_checkpoint_order(tmp_path):
    from echat.models.checkpoint import resolve_checkpoint

    def checkpoint(folder, mtime):
        folder.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            (folder / name).write_text("{}")
            os.utime(folder / name, (mtime, mtime))
        return folder

    run = tmp_path / "run"
    old, new = checkpoint(run / "1_a" / "final", 1_000), checkpoint(run / "2_b" / "ckpt" / "step_1", 2_000)
    checkpoint(run / ".tmp" / "hidden", 3_000)
    assert resolve_checkpoint(old) == old
    assert resolve_checkpoint(run) == new
    (run / "latest").write_text("1_a/final\n")
    assert resolve_checkpoint(run) == old
    final = checkpoint(run / "final", 0)
    assert resolve_checkpoint(run) == final
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "empty")


def test_cli_eval_writes_eval_json(model, corpus, tmp_path, capsys):
    from echat.cli import main

    run = tmp_path / "run"
    model.save(run / "ckpt" / "step_000010")
    argv = ["eval", "--run", str(run), "--data", str(corpus), "--limit", "1", "--think", "language",
            "--stages", "empathy", "--batch-size", "3"]
    assert main(argv) == 0
    saved = json.loads((run / "eval" / "eval.json").read_text())
    assert saved["batch_size"] == 3
    assert saved["checkpoint"] == str(run / "ckpt" / "step_000010")
    assert saved["think"] == "language" and saved["stages"] == ["empathy"]
    assert _in_unit(saved["subsets"]["unseen"]["empathy"]["think_parse_rate"])
    assert saved["subsets"]["seen"]["empathy"]["think_field_accuracy"] is None
    assert "reply-emotion accuracy" in capsys.readouterr().out


def test_cli_eval_missing_folders_fail_in_one_line(corpus, tmp_path, capsys):
    from echat.cli import main

    assert main(["eval", "--run", str(tmp_path / "nope"), "--data", str(corpus)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("echat: error: ") and "nope" in err and err.count("\n") == 1
    (tmp_path / "ckpt").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "ckpt" / name).write_text("{}")
    assert main(["eval", "--run", str(tmp_path / "ckpt"), "--data", str(tmp_path / "no_corpus")]) == 1
    err = capsys.readouterr().err
    assert "no_corpus" in err and err.count("\n") == 1
