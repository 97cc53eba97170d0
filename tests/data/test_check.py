"""``echat data check``: every bad record is one located problem line; good data gives counts and rc 0."""

import ast
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from echat.data.check import check_manifest, is_shard_list, run_check
from echat.data.schema import read_manifest
from echat.data.shards import write_shards
from echat.tokens import TRANSCRIBE

from . import write_tone

S2S = "<S2TCHAT> <TEXT2TOKEN>"
DATA_MODULES = ("check", "mixes", "schema", "shards")


def write_jsonl(path: Path, lines: list) -> Path:
    """Write ``lines`` (dicts are JSON-encoded, strings written as they are), one per line."""
    text = "".join((json.dumps(line, ensure_ascii=False) if isinstance(line, dict) else line) + "\n"
                   for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def good(tmp_path) -> Path:
    """A valid manifest: ASR with labels, S2S, a text-only T2T record, a 2-turn dialogue."""
    write_tone(tmp_path / "wav" / "a.wav", 1.0)
    write_tone(tmp_path / "wav" / "b.wav", 2.0, rate=22_050)
    return write_jsonl(tmp_path / "good.jsonl", [
        {"key": "a", "wav": "wav/a.wav", "txt": "hi <HAPPY>", "task": "<TRANSCRIBE> <EMOTION>",
         "extra": {"age": "<ADULT>", "gender": "<FEMALE>"}},
        {"key": "b", "wav": "wav/b.wav", "txt": "ok", "task": S2S,
         "extra": {"speech_token": [1, 2, 3], "q_emotion": "<SAD>", "caption": "<LAUGH>"}},
        {"key": "c", "txt": "r", "task": "<TEXT2TEXT>", "extra": {"question": "q"}},
        {"key": "d", "task": TRANSCRIBE, "wav": "wav/b.wav", "txt": "x", "start": 0.5, "end": 1.5,
         "extra": {"age": "<ADULT>"}, "wav_1": "wav/a.wav", "txt_1": "before"},
    ])


def test_valid_manifest_counts_tasks_labels_and_hours(good):
    report = check_manifest(good, codebook_size=4096)
    assert report.ok and report.kind == "raw" and report.records == 4
    assert report.tasks == {"<TRANSCRIBE> <EMOTION>": 1, S2S: 1, "<TEXT2TEXT>": 1, "<TRANSCRIBE>": 1}
    assert report.labels["age"] == {"<ADULT>": 2}
    assert report.labels["q_emotion"] == {"<SAD>": 1} and report.labels["caption"] == {"<LAUGH>": 1}
    assert report.labels["txt tag"] == {"<HAPPY>": 1}
    assert report.seconds == pytest.approx(1.0 + 2.0 + 1.0)  # d uses its 1 s segment only
    out = io.StringIO()
    assert run_check(good, codebook_size=4096, out=out) == 0
    text = out.getvalue()
    assert "audio: 0.0011 h (4.0 s)" in text and "result: OK" in text
    assert any(line.split() == ["<TRANSCRIBE>", "1"] for line in text.splitlines())
    assert any(line.split() == ["<ADULT>", "2"] for line in text.splitlines())


def test_every_bad_record_is_one_located_problem(tmp_path):
    write_tone(tmp_path / "ok.wav", 0.5)
    write_tone(tmp_path / "short.wav", 100 / 16_000)
    write_tone(tmp_path / "long.wav", 1.5)
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"key": "fine", "task": TRANSCRIBE, "wav": "ok.wav", "txt": "x"},
        '{"key": "broken", "wav": ',
        {"key": "nowav", "txt": "x", "task": S2S, "extra": {"speech_token": [1]}},
        {"key": "unknown", "wav": "ok.wav", "txt": "x", "task": "<DANCE>"},
        {"key": "tokens", "wav": "ok.wav", "txt": "x", "task": S2S, "extra": {"speech_token": [1, 5000]}},
        {"key": "missing", "task": TRANSCRIBE, "wav": "gone.wav", "txt": "x"},
        {"key": "short", "task": TRANSCRIBE, "wav": "short.wav", "txt": "x"},
        {"key": "long", "task": TRANSCRIBE, "wav": "long.wav", "txt": "x"},
        {"wav": "ok.wav", "txt": "no key"},
        {"key": "fine", "task": TRANSCRIBE, "wav": "ok.wav", "txt": "again"},
    ])
    out = io.StringIO()
    assert run_check(path, codebook_size=4096, max_seconds=1.0, out=out) == 1
    expected = {
        2: "broken: malformed JSON", 3: "nowav: wav: missing", 4: "unknown: task: unknown task '<DANCE>'",
        5: "tokens: extra.speech_token: speech token 5000 out of range [0, 4096) at index 1",
        6: "missing: audio not found: gone.wav (tried", 7: "short: audio too short", 8: "long: audio too long",
        9: "-: key: missing", 10: "fine: duplicate key (first at",
    }
    problem_lines = [line for line in out.getvalue().splitlines() if line.startswith(f"{path}:")]
    assert len(problem_lines) == len(expected)
    for line, (number, message) in zip(problem_lines, sorted(expected.items())):
        assert line.startswith(f"{path}:{number}: {message}")
    assert "has 100 samples at 16000 Hz < min_samples=400" in problem_lines[5]
    assert "1.50 s > max_seconds=1.0 s" in problem_lines[6]
    assert out.getvalue().rstrip().endswith("result: FAILED (9 problem(s))")


def test_check_audio_off_skips_audio(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"key": "k", "task": TRANSCRIBE, "wav": "gone.wav", "txt": ""}])
    report = check_manifest(path, check_audio=False)
    assert report.ok and report.seconds is None and "audio: not checked" in report.render()
    assert not check_manifest(path).ok


def test_segment_past_the_end_and_bad_history_audio(tmp_path):
    write_tone(tmp_path / "a.wav", 0.5)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"key": "seg", "task": TRANSCRIBE, "wav": "a.wav", "txt": "", "start": 0.2, "end": 0.9},
        {"key": "hist", "task": TRANSCRIBE, "wav": "a.wav", "txt": "", "wav_1": "junk.wav", "txt_1": "t"},
    ])
    messages = [str(p) for p in check_manifest(path).problems]
    assert len(messages) == 2
    assert messages[0].startswith(f"{path}:1: seg: segment end 0.9 s is past the end of")
    assert messages[1].startswith(f"{path}:2: hist: unreadable audio {tmp_path / 'junk.wav'}")


def test_missing_manifest_fails_cleanly(tmp_path):
    out = io.StringIO()
    assert run_check(tmp_path / "none.jsonl", out=out) == 1
    assert f"{tmp_path / 'none.jsonl'}:0: -: manifest not found" in out.getvalue()


def test_shard_list_is_checked_like_a_manifest(good, tmp_path):
    list_path = write_shards(read_manifest(good), tmp_path / "shards", per_shard=3)
    assert is_shard_list(list_path) and not is_shard_list(good)
    report = check_manifest(list_path, codebook_size=4096)
    assert report.ok and report.kind == "shards" and report.records == 4
    assert report.seconds == pytest.approx(4.0, abs=1e-3)
    strict = check_manifest(list_path, codebook_size=2, max_seconds=0.9)
    tars = [tmp_path / "shards" / f"shards_00000000{i}.tar" for i in range(2)]
    assert [(p.file, p.line, p.key) for p in strict.problems] == [
        (str(tars[0]), 1, "a"), (str(tars[0]), 5, "b"), (str(tars[1]), 1, "d"), (str(tars[1]), 1, "d"),
    ]
    messages = [p.message for p in strict.problems]
    assert messages[0] == "audio too long: member a.wav is 1.00 s > max_seconds=0.9 s"
    assert messages[1] == "extra.speech_token: speech token 2 out of range [0, 2) at index 1"
    assert {messages[2], messages[3]} == {"audio too long: member d.wav is 1.00 s > max_seconds=0.9 s",
                                          "audio too long: member d.wav_1 is 1.00 s > max_seconds=0.9 s"}


def test_shard_list_with_missing_tar(tmp_path):
    list_path = tmp_path / "shards_list.txt"
    list_path.write_text("gone.tar\n")
    assert run_check(list_path, out=io.StringIO()) == 1
    assert "shard tar not found" in check_manifest(list_path).render()


def test_check_does_not_import_torch():
    code = ("import sys, echat; before = set(sys.modules); import echat.data.check; "
            "new = set(sys.modules) - before; "
            "bad = sorted(m for m in new if m.split('.')[0] in ('torch', 'transformers', 'librosa')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_data_modules_import_no_heavy_libraries_at_top_level():
    folder = Path(__file__).resolve().parents[2] / "echat" / "data"
    for name in DATA_MODULES:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        modules = [alias.name for node in top if isinstance(node, ast.Import) for alias in node.names]
        modules += [node.module for node in top if isinstance(node, ast.ImportFrom) and node.module]
        assert not [m for m in modules if m.split(".")[0] in ("torch", "transformers", "librosa")
                    or m == "echat.audio"], name


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_manifest_fails_with_no_records(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    out = io.StringIO()
    assert run_check(path, out=out) == 1
    assert f"{path}:0: -: no records" in out.getvalue()


def test_records_without_a_task_are_each_named_and_counted_unless_a_default_is_given(tmp_path):
    write_tone(tmp_path / "a.wav", 0.5)
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"key": "a", "wav": "a.wav", "txt": "x"},
        {"key": "b", "task": TRANSCRIBE, "wav": "a.wav", "txt": "y"},
        {"key": "c", "tas_tag": "<S2TCHAT>", "wav": "a.wav", "txt": "z"},  # the reference sample's misspelling
    ])
    report = check_manifest(path)
    assert [str(p) for p in report.problems] == [
        f"{path}:{line}: {key}: task: missing (give --default-task TASK to read such records as TASK)"
        for line, key in ((1, "a"), (3, "c"))]
    assert report.records == 1
    assert re.search(r"^task: missing +2$", report.render(), flags=re.M)
    relaxed = check_manifest(path, default_task="<S2TCHAT>")
    assert relaxed.ok and relaxed.tasks == {"<S2TCHAT>": 2, TRANSCRIBE: 1}


def test_relative_audio_is_found_from_the_working_directory_as_the_reference_runs(tmp_path, monkeypatch):
    """The reference's sample list names ``./common_utils/fake_data/raw/wav/random.wav`` and runs from its
    repository's root: the path is relative to the working directory, not to the list's folder."""
    root = tmp_path / "OSUM-EChat"
    write_tone(root / "common_utils" / "fake_data" / "raw" / "wav" / "random.wav", 1.0)
    manifest = write_jsonl(root / "common_utils" / "fake_data" / "raw" / "data.list", [
        {"key": f"k{i}", "task": TRANSCRIBE, "wav": "./common_utils/fake_data/raw/wav/random.wav", "txt": "x"}
        for i in range(3)])
    monkeypatch.chdir(root)
    assert check_manifest(manifest).ok
    elsewhere = check_manifest(manifest, base_dir=tmp_path)
    assert len(elsewhere.problems) == 3
    assert elsewhere.problems[0].message == (
        f"audio file not found: {tmp_path / 'common_utils/fake_data/raw/wav/random.wav'}")
    monkeypatch.chdir(tmp_path)
    missing = check_manifest(manifest).problems[0].message
    assert missing.startswith("audio not found: ./common_utils/fake_data/raw/wav/random.wav (tried ")
    assert str(tmp_path / "common_utils") in missing
    assert str(root / "common_utils/fake_data/raw/common_utils") in missing


def test_cli_data_check_takes_a_default_task_and_a_base(tmp_path):
    write_tone(tmp_path / "audio" / "a.wav", 0.5)
    path = write_jsonl(tmp_path / "lists" / "m.jsonl", [{"key": "a", "wav": "a.wav", "txt": "x"}])
    run = lambda *extra: subprocess.run([sys.executable, "-m", "echat", "data", "check", str(path), *extra],  # noqa: E731
                                        capture_output=True, text=True, timeout=120)
    refused = run()
    assert refused.returncode == 1 and "a: task: missing" in refused.stdout
    accepted = run("--default-task", "<TRANSCRIBE>", "--base", str(tmp_path / "audio"))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "result: OK" in accepted.stdout
