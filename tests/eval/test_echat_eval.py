"""EChat-eval: the summary on hand-made rows (known means, intervals, seeds, failures), the table, the manifest
reader's errors, run_benchmark on a smoke corpus (rows, audio, failures, resuming) and ``echat eval --benchmark``."""

import json
import shutil
from pathlib import Path

import pytest

from echat.data.schema import ManifestError
from echat.eval.echat_eval import (
    ROW_FIELDS,
    ManifestItemsError,
    manifest_items,
    plot_summary,
    render_table,
    summarise,
)
from echat.eval.judge import CATEGORIES, RubricJudge

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "fixtures"


def _row(system, key, category, score, **extra):
    return {"system": system, "key": key, "category": category, "score": score,
            "error": None if score is not None else "generation: RuntimeError: boom", **extra}


ROWS = [_row("A", "e1", "emotion", 5), _row("A", "e2", "emotion", 3), _row("A", "e3", "emotion", None),
        _row("A", "v1", "event", 4), _row("A", "m1", "multi", None),
        _row("B", "e1", "emotion", 1), _row("B", "e2", "emotion", 2)]


# ----------------------------------------------------------------------------------------------
# Summary and table on hand-made rows
# ----------------------------------------------------------------------------------------------


def test_summarise_known_means_intervals_and_failures():
    summary = summarise(ROWS, boot=500, seed=3)
    assert list(summary["systems"]) == ["A", "B"] and summary["categories"] == list(CATEGORIES)
    emotion = summary["systems"]["A"]["emotion"]
    assert emotion["mean"] == pytest.approx(80.0) and (emotion["n"], emotion["failures"]) == (2, 1)
    assert 60.0 <= emotion["low"] < emotion["mean"] < emotion["high"] <= 100.0
    assert summary["systems"]["A"]["event"] == {"mean": 80.0, "low": 80.0, "high": 80.0, "n": 1, "failures": 0}
    assert summary["systems"]["A"]["multi"] == {"mean": None, "low": None, "high": None, "n": 0, "failures": 1}
    assert summary["systems"]["A"]["age"] is None and summary["systems"]["B"]["gender"] is None
    assert summary["systems"]["B"]["emotion"]["mean"] == pytest.approx(30.0)
    assert summary["failures"] == {"A": [{"key": "e3", "category": "emotion", "error": ROWS[2]["error"]},
                                         {"key": "m1", "category": "multi", "error": ROWS[4]["error"]}], "B": []}
    assert (summary["boot"], summary["seed"]) == (500, 3)
    assert json.loads(json.dumps(summary)) == summary
    assert summarise(ROWS[::-1], ["A", "B"], boot=500, seed=3)["systems"] == summary["systems"]  # any row order
    assert list(summarise(ROWS, ["B"])["systems"]) == ["B"]


def test_summarise_resamples_within_each_seed_and_pools():
    """Seed 0 scores 5 on both items, seed 1 scores 1: resampled within each seed every mean is 60; pooled as
    one set of items the interval is wide."""
    rows = [_row("A", f"e{i}", "emotion", 5 if seed == 0 else 1, seed=seed) for seed in (0, 1) for i in range(2)]
    cell = summarise(rows)["systems"]["A"]["emotion"]
    assert (cell["mean"], cell["low"], cell["high"], cell["n"]) == (60.0, 60.0, 60.0, 4)
    pooled = summarise([{k: v for k, v in row.items() if k != "seed"} for row in rows])["systems"]["A"]["emotion"]
    assert pooled["mean"] == 60.0 and pooled["low"] < 60.0 < pooled["high"]


def test_render_table_layout_and_plot(tmp_path):
    cells = dict.fromkeys(CATEGORIES)
    cells["emotion"] = {"mean": 58.0, "low": 52.14, "high": 63.86, "n": 9, "failures": 0}
    cells["event"] = {"mean": None, "low": None, "high": None, "n": 0, "failures": 2}
    summary = {"categories": list(CATEGORIES), "systems": {"tag": cells, "none": dict.fromkeys(CATEGORIES)}}
    assert render_table(summary).splitlines() == [
        "| system | emotion | age | gender | event | multi |",
        "|---|---|---|---|---|---|",
        "| tag | 58.0 [52.1, 63.9] | – | – | – | – |",
        "| none | – | – | – | – | – |",
    ]
    assert plot_summary(summarise(ROWS), tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------
# A user's manifest
# ----------------------------------------------------------------------------------------------


def _line(key, **fields):
    return json.dumps({"key": key, "wav": "clip.wav", "transcript": "i lost my keys", "reply": "We will find them.",
                       **fields})


def test_manifest_items_names_every_bad_line_and_keeps_the_valid_ones(tmp_path):
    shutil.copy(FIXTURES / "wav" / "asr_0001.wav", tmp_path / "clip.wav")
    manifest = tmp_path / "items.jsonl"
    lines = [_line("good", age="child", emotion="<SAD>", event="<CRY>", reply="<COMFORTING>Oh no, we will find them."),
             "{not json", _line("no_reply", reply=""), _line("bad_emotion", emotion="<GRUMPY>"), "",
             _line("good"), _line("missing_wav", wav="nowhere.wav"), _line("bad_category", category="mood"),
             _line("chosen", category="gender", reply_emotion="<中立>")]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ManifestItemsError) as caught:
        manifest_items(manifest)
    problems = str(caught.value).splitlines()
    assert [p.split(": ")[0] for p in problems] == [f"{manifest}:{n}" for n in (2, 3, 4, 6, 7, 8)]
    for problem, field in zip(problems[1:], ("reply", "emotion", "key", "wav", "category")):
        assert f": {field}: " in problem
    assert "duplicate of line 1" in problems[3]
    good, chosen = caught.value.items
    assert good.judge_item.cues == {"age": "<CHILD>", "emotion": "<SAD>", "event": "<CRY>"}
    assert (good.judge_item.reference_reply, good.judge_item.reference_emotion) == (
        "Oh no, we will find them.", "<COMFORTING>")
    assert good.wav == tmp_path / "clip.wav" and good.judge_item.category in CATEGORIES
    assert (chosen.judge_item.category, chosen.judge_item.reference_emotion) == ("gender", "<NEUTRAL>")
    manifest.write_text(lines[0] + "\n", encoding="utf-8")
    assert [item.key for item in manifest_items(manifest)] == ["good"]
    with pytest.raises(ManifestError, match="cannot read"):
        manifest_items(tmp_path / "absent.jsonl")


# ----------------------------------------------------------------------------------------------
# On a smoke corpus
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(smoke_corpus):
    """A random smoke model that speaks: left alone it writes 256 newlines and never reaches its speech, so
    ``<|im_end|>`` is made its greedy first choice (the newline's output row, tripled): an empty reply, then
    speech tokens up to the cap."""
    import torch

    from echat.models.echat import EChat
    from echat.text_tokenizer import load_tokenizer

    torch.manual_seed(0)
    speaking = EChat.from_preset("smoke", tokenizer=load_tokenizer(smoke_corpus / "text_tokenizer")).eval()
    weights = speaking.causal_lm.lm_head.weight
    newline = speaking.tokenizer.encode("\n")[0]
    with torch.no_grad():
        weights[speaking.tokenizer.convert_tokens_to_ids("<|im_end|>")] = 3 * weights[newline]
    return speaking


@pytest.fixture(scope="module")
def token2wav(smoke_corpus):
    from echat.data.speech_tokens import SPEECH_TOKENIZER_DIR
    from echat.token2wav.mini import MiniToken2Wav

    return MiniToken2Wav.from_folder(smoke_corpus / SPEECH_TOKENIZER_DIR, n_iter=4)  # few Griffin-Lim rounds: fast


class _FailingJudge(RubricJudge):
    """The rubric, except that it raises on one key; it keeps what it was asked to judge."""

    def __init__(self, failing_key=None):
        super().__init__()
        self.failing_key, self.asked = failing_key, []

    def judge(self, item, reply, reply_emotion):
        self.asked.append((reply, reply_emotion))
        if item.key == self.failing_key:
            raise ConnectionError("judge server went away")
        return super().judge(item, reply, reply_emotion)


def test_corpus_items_one_per_dialogue_clip_and_subset(smoke_corpus):
    from echat.eval.echat_eval import corpus_items

    items = corpus_items(smoke_corpus, limit=1)
    assert [item.key.split("_")[1] for item in items] == ["seen", "unseen"]
    assert len(corpus_items(smoke_corpus)) == len({item.wav for item in corpus_items(smoke_corpus)}) >= 4
    for item in items:
        judged = item.judge_item
        assert item.wav.is_file() and judged.category in CATEGORIES and judged.transcript
        assert not judged.reference_reply.startswith("<") and judged.reference_emotion.startswith("<")
        assert set(judged.cues) == {"age", "gender", "emotion", "event"}
    with pytest.raises(ValueError, match="limit"):
        corpus_items(smoke_corpus, limit=0)


def test_run_benchmark_writes_rows_and_audio_and_resumes(model, token2wav, smoke_corpus, tmp_path):
    from dataclasses import replace

    from echat.eval.echat_eval import corpus_items, read_rows, run_benchmark, write_summary

    good = corpus_items(smoke_corpus, limit=1)
    broken = replace(good[0], judge_item=replace(good[0].judge_item, key="broken"), wav=tmp_path / "gone.wav")
    items, judge = [*good, broken], _FailingJudge(good[1].key)
    path = run_benchmark(model, items, judge, tmp_path, "tag", "tag", token2wav, progress=False, batch_size=2)
    rows = read_rows(path)
    assert [row["key"] for row in rows] == [item.key for item in items]
    assert all(list(row) == list(ROW_FIELDS) and row["system"] == "tag" for row in rows)
    spoken, failed_judge, failed_audio = rows
    assert spoken["score"] in range(1, 6) and spoken["error"] is None and spoken["judge"] == "rubric-v1"
    assert spoken["speech_tokens"] > 0 and spoken["seconds"] > 0 and spoken["reply_emotion_source"] == "none"
    assert (tmp_path / spoken["audio"]).is_file() and spoken["audio"] == f"audio/tag/{spoken['key']}.wav"
    assert failed_judge["score"] is None and failed_judge["error"].startswith("judge: ConnectionError")
    assert (tmp_path / failed_judge["audio"]).is_file()
    assert failed_audio["score"] is None and failed_audio["error"].startswith("audio: ")
    first, summary = path.read_bytes(), write_summary(tmp_path)
    assert summary["failures"]["tag"] == [{"key": good[1].key, "category": good[1].judge_item.category,
                                           "error": failed_judge["error"]},
                                          {"key": "broken", "category": broken.judge_item.category,
                                           "error": failed_audio["error"]}]
    run_benchmark(model, items, RubricJudge(), tmp_path, "tag", "tag", token2wav, progress=False)
    assert path.read_bytes() == first and write_summary(tmp_path) == summary
    with pytest.raises(ValueError, match="repeated: broken"):
        run_benchmark(model, [broken, broken], RubricJudge(), tmp_path, "tag", "tag", progress=False)


def test_the_judged_text_and_one_failing_generation(model, smoke_corpus, tmp_path, monkeypatch):
    """The judge reads the reply without its think and leading tag; a batch that fails is decoded again one
    item at a time, and only the item that fails alone becomes an error row."""
    import echat.eval.echat_eval as echat_eval
    from echat.eval.echat_eval import corpus_items, read_rows, run_benchmark
    from echat.models.generate import Timings, make_result
    from echat.prompts import Cues, format_reply

    items = corpus_items(smoke_corpus, limit=1)
    failing_length = len(echat_eval.load_audio(items[1].wav))
    raw = format_reply("<COMFORTING>We will find them.", "tag", "mini", cues=Cues(transcript="i lost my keys"))
    ids = model.tokenizer.encode(raw)

    def fake_generate_batch(model, requests, token2wav=None):
        if any(len(request.audio) == failing_length for request in requests):
            raise RuntimeError("out of memory")
        return [make_result(model, request.task, None, ids, [1, 2], Timings()) for request in requests]

    judge = _FailingJudge()
    monkeypatch.setattr(echat_eval, "generate_batch", fake_generate_batch)
    ok, failed = read_rows(run_benchmark(model, items, judge, tmp_path, "fake", "tag", progress=False))
    assert judge.asked == [("We will find them.", "<COMFORTING>")]
    assert (ok["reply"], ok["reply_emotion"], ok["reply_emotion_source"]) == ("We will find them.", "<COMFORTING>",
                                                                             "tag")
    assert ok["think"].startswith("user said:i lost my keys,") and ok["speech_tokens"] == 2 and ok["audio"] is None
    assert failed["score"] is None and failed["error"] == "generation: RuntimeError: out of memory"


def test_cli_benchmark_on_a_corpus_and_on_a_jsonl(model, smoke_corpus, tmp_path, capsys):
    from echat.cli import main

    run = tmp_path / "tag_run"
    model.save(run / "final")
    assert main(["eval", "--benchmark", "--run", str(run), "--data", str(smoke_corpus), "--limit", "1",
                 "--batch-size", "2"]) == 0
    out = run / "eval_benchmark"
    assert all((out / name).stat().st_size > 0 for name in ("items.jsonl", "summary.json", "table.md", "summary.png"))
    printed = capsys.readouterr().out
    assert "| system | emotion | age | gender | event | multi |" in printed and "| tag_run |" in printed
    assert list(json.loads((out / "summary.json").read_text())["systems"]) == ["tag_run"]
    assert len(list((out / "audio" / "tag_run").glob("*.wav"))) == 2

    manifest = tmp_path / "mine.jsonl"
    wav = str(next((smoke_corpus / "wav" / "user").glob("*.wav")))
    manifest.write_text(json.dumps({"key": "k1", "wav": wav, "transcript": "hello", "reply": "Hi there."}) + "\n"
                        + json.dumps({"key": "k2", "wav": wav}) + "\n", encoding="utf-8")
    assert main(["eval", "--benchmark", "--run", str(run), "--data", str(manifest), "--out", str(tmp_path / "mine"),
                 "--system", "mine", "--think", "none"]) == 0
    printed = capsys.readouterr().out
    assert "the reply emotion is the output's tag only" in printed and f"skipped {manifest}:2: k2: " in printed
    rows = [json.loads(line) for line in (tmp_path / "mine" / "items.jsonl").read_text().splitlines()]
    assert [(row["system"], row["key"], row["audio"]) for row in rows] == [("mine", "k1", None)]
