"""Raw manifest records: validation, reading, writing, and property-based round trips."""

import json
import pickle
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echat.data.schema import (
    CORE_FIELDS,
    HISTORY_FIELD,
    AudioNotFoundError,
    ManifestError,
    Problem,
    Record,
    dump_json,
    parse_record,
    read_manifest,
    read_manifest_report,
    write_manifest,
)
from echat.tokens import CHAT_TASKS, TRANSCRIBE, OutputType, output_type

S2S = "<S2TCHAT> <TEXT2TOKEN>"
ASR = {"key": "k", "task": TRANSCRIBE, "wav": "a.wav", "txt": ""}  # a valid record, to spoil one field of


def parse(obj, codebook_size=None, default_task=None):
    return parse_record(obj, source="m.jsonl", line=7, codebook_size=codebook_size, default_task=default_task)


def only_problem(obj, codebook_size=None) -> Problem:
    with pytest.raises(ManifestError) as caught:
        parse(obj, codebook_size)
    assert len(caught.value.problems) == 1
    return caught.value.problems[0]


def test_minimal_record_defaults():
    record = parse({"key": "u1", "task": TRANSCRIBE, "wav": "wav/u1.wav", "txt": "hello"})
    assert record.task == TRANSCRIBE
    assert record.output_type is OutputType.TEXT
    assert (record.extra, record.history, record.others) == ({}, [], {})
    assert (record.start, record.end) == (None, None)
    assert (record.source, record.line) == ("m.jsonl", 7)


def test_reference_layout_fields():
    obj = {
        "key": "1023390_bed51684_1", "txt": "你好", "wav": "./wav/random.wav",
        "extra": json.dumps({"age": "<ADULT>", "speech_token": [3, 4082]}),
        "tar_path_key": "sex_000000298", "task": "<Speech2TEXTandTOKEN>",
        "wav_2": "b.wav", "txt_2": "second", "wav_1": "a.wav", "txt_1": "first", "start": 0, "end": 1.5,
    }
    record = parse(obj)
    assert record.task == S2S
    assert record.extra == {"age": "<ADULT>", "speech_token": [3, 4082]}
    assert record.history == [{"wav": "a.wav", "txt": "first"}, {"wav": "b.wav", "txt": "second"}]
    assert record.others == {"tar_path_key": "sex_000000298"}
    assert (record.start, record.end) == (0, 1.5)
    layout = record.to_json_dict()
    assert list(layout)[:5] == ["key", "wav", "txt", "task", "extra"]
    assert parse(layout) == record


@pytest.mark.parametrize("task", ["<TEXT2TEXT>", "<TEXT2TOKEN>", "TEXT2TOKEN"])
def test_text_input_tasks_may_omit_wav(task):
    obj = {"key": "t", "txt": "hi", "task": task, "extra": {"speech_token": [1, 2]}}
    record = parse(obj)
    assert record.wav is None
    assert "wav" not in record.to_json_dict()
    assert parse({**obj, "wav": ""}).wav is None


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ([1, 2], "record: expected a JSON object, got an array"),
        ({"wav": "a.wav", "txt": ""}, "key: missing"),
        ({"key": "  ", "task": TRANSCRIBE, "wav": "a.wav", "txt": ""}, "key: empty"),
        ({"key": 3, "task": TRANSCRIBE, "wav": "a.wav", "txt": ""}, "key: expected a string"),
        ({"key": "k", "task": TRANSCRIBE, "wav": "a.wav"}, "txt: missing"),
        ({"key": "k", "wav": "a.wav", "txt": None}, "txt: expected a string, got null"),
        ({"key": "k", "wav": "a.wav", "txt": "", "task": "<NOPE>"}, "task: unknown task '<NOPE>'"),
        ({"key": "k", "wav": "a.wav", "txt": "", "task": 5}, "task: expected a string"),
        ({**ASR, "extra": "{not json"}, "extra: string is not valid JSON"),
        ({**ASR, "extra": [1]}, "extra: expected an object"),
        ({"key": "k", "txt": "", "task": "<S2TCHAT>"}, "wav: missing (required: task <S2TCHAT>"),
        ({"key": "k", "task": TRANSCRIBE, "wav": 1, "txt": ""}, "wav: expected a non-empty path string"),
        ({"key": "k", "wav": "a.wav", "txt": ""}, "task: missing (give --default-task"),
        ({"key": "k", "wav": "a.wav", "txt": "", "task": " "}, "task: missing"),
        ({"key": "k", "wav": "a.wav", "txt": "", "task": S2S}, "extra.speech_token: missing"),
        ({"key": "k", "wav": "a.wav", "txt": "", "task": S2S, "extra": {"speech_token": []}},
         "extra.speech_token: empty"),
        ({**ASR, "extra": {"speech_token": [1, 2.0]}},
         "extra.speech_token: speech token 2.0 at index 1 is not an integer"),
        ({**ASR, "extra": {"speech_token": [1, -2]}},
         "extra.speech_token: speech token -2 is negative at index 1"),
        ({**ASR, "extra": {"speech_token_1": "1 2"}},
         "extra.speech_token_1: expected a list of integers"),
        ({**ASR, "start": 1.0}, "end: start and end must be given together"),
        ({**ASR, "start": 2, "end": 2}, "start: need 0 <= start < end"),
        ({**ASR, "start": -1, "end": 2}, "start: need 0 <= start < end"),
        ({**ASR, "start": True, "end": 2}, "start: expected a finite number"),
        ({**ASR, "start": 0, "end": float("nan")}, "end: expected a finite"),
        ({**ASR, "wav_1": "h.wav"}, "txt_1: missing (history turn 1"),
        ({**ASR, "wav_2": "h.wav", "txt_2": "x"}, "wav_1: missing"),
        ({**ASR, "wav_1": 3, "txt_1": "x"}, "wav_1: expected a non-empty"),
    ],
)
def test_one_problem_naming_the_field(obj, field):
    problem = only_problem(obj)
    assert field in problem.message
    assert (problem.file, problem.line) == ("m.jsonl", 7)
    assert str(problem).startswith("m.jsonl:7: ")


def test_speech_token_range_message():
    obj = {"key": "k", "wav": "a.wav", "txt": "", "task": S2S, "extra": {"speech_token": [1, 2, 3, 5000]}}
    problem = only_problem(obj, codebook_size=4096)
    assert str(problem) == (
        "m.jsonl:7: k: extra.speech_token: speech token 5000 out of range [0, 4096) at index 3"
    )
    assert parse(obj).extra["speech_token"][3] == 5000  # no codebook size: only non-negative ints


def test_problem_and_error_format():
    assert str(Problem("a.jsonl", 3, "", "bad")) == "a.jsonl:3: -: bad"
    error = ManifestError([Problem("a.jsonl", 3, "k", "x"), Problem("a.jsonl", 9, "-", "y")])
    assert str(error) == "a.jsonl:3: k: x\na.jsonl:9: -: y"
    assert isinstance(error, ValueError)
    assert pickle.loads(pickle.dumps(error)).problems == error.problems


def test_a_missing_task_is_read_as_the_default_task_only_when_one_is_given():
    record = parse({"key": "k", "wav": "a.wav", "txt": ""}, default_task="<S2TCHAT>")
    assert record.task == "<S2TCHAT>"
    assert parse({"key": "k", "task": "<AGE>", "wav": "a.wav", "txt": ""}, default_task="<S2TCHAT>").task == "<AGE>"


def test_audio_is_looked_up_in_the_working_directory_then_the_manifest_folder(tmp_path, monkeypatch):
    """The reference opens relative paths from the working directory; echat's corpora write them relative
    to the manifest. Both are tried in that order; an explicit base is the only place looked at."""
    obj = {"key": "k", "task": TRANSCRIBE, "wav": "wav/k.wav", "txt": "", "wav_1": "/abs/h.wav", "txt_1": ""}
    record = parse_record(obj, source=tmp_path / "sub" / "m.jsonl", line=1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AudioNotFoundError) as missing:
        record.audio_path()
    assert str(missing.value) == (f"audio not found: wav/k.wav (tried {tmp_path / 'wav' / 'k.wav'}, "
                                  f"{tmp_path / 'sub' / 'wav' / 'k.wav'})")
    (tmp_path / "sub" / "wav").mkdir(parents=True)
    (tmp_path / "sub" / "wav" / "k.wav").write_bytes(b"RIFF")
    assert record.audio_path() == tmp_path / "sub" / "wav" / "k.wav"
    (tmp_path / "wav").mkdir()
    (tmp_path / "wav" / "k.wav").write_bytes(b"RIFF")
    assert record.audio_path() == tmp_path / "wav" / "k.wav"
    assert record.audio_path(tmp_path / "elsewhere") == tmp_path / "elsewhere" / "wav" / "k.wav"
    with pytest.raises(AudioNotFoundError, match="/abs/h.wav"):
        record.history_paths()
    with pytest.raises(ValueError, match="has no wav"):
        Record(key="t", task="<TEXT2TEXT>").audio_path()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    return path


def test_read_reports_every_problem_and_keeps_valid_lines(tmp_path):
    good = [json.dumps({"key": f"u{i}", "task": TRANSCRIBE, "wav": f"u{i}.wav", "txt": str(i)}) for i in range(3)]
    path = write_lines(tmp_path / "m.jsonl", [good[0], '{"key": "b1", "txt": ', "", good[1], "[]", "  ", good[2],
                                              "null"])
    records, problems = read_manifest_report(path)
    assert [r.key for r in records] == ["u0", "u1", "u2"]
    assert [r.line for r in records] == [1, 4, 7]
    assert [(p.line, p.key) for p in problems] == [(2, "b1"), (5, "-"), (8, "-")]
    assert problems[0].message.startswith("malformed JSON: ")
    assert problems[2].message == "record: expected a JSON object, got null"  # a null line is no blank line
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert str(caught.value).splitlines() == [str(p) for p in problems]
    assert read_manifest(path, strict=False) == records


def test_read_handles_bom_crlf_and_bad_utf8(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"key": "a", "task": "<TRANSCRIBE>", "wav": "a.wav", "txt": "x"}\r\n\xff\xfe\n'
                     b'{"key": "b", "task": "<TRANSCRIBE>", "wav": "b.wav", "txt": "y"}')
    records, problems = read_manifest_report(path)
    assert [r.key for r in records] == ["a", "b"]
    assert len(problems) == 1 and problems[0].line == 2 and "UTF-8" in problems[0].message


def test_missing_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(ManifestError, match=r"nope\.jsonl:0: -: manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_write_is_deterministic_utf8_and_survives_lone_surrogates(tmp_path):
    record = parse({"key": "k", "task": TRANSCRIBE, "wav": "a.wav", "txt": "天气\ud800", "zz": 1, "aa": 2})
    path = write_manifest([record, record], tmp_path / "out" / "m.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == lines[1]
    assert list(json.loads(lines[0])) == ["key", "wav", "txt", "task", "extra", "zz", "aa"]
    assert read_manifest(path) == [record, record]
    assert "天气" in dump_json({"t": "天气"})


# ----------------------------------------------------------------------------------------------
# Property-based
# ----------------------------------------------------------------------------------------------

TASKS = sorted(CHAT_TASKS) + [TRANSCRIBE, "<TRANSCRIBE> <AGE>", "<AGE> <GENDER>", "<CAPTION>",
                              "<TRANSCRIBE> <S2TCHAT>", "<EMOTION>"]
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
path_text = text.filter(lambda s: s.strip() != "")
scalar = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | text
json_value = st.recursive(
    scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8
)
plain_name = text.filter(lambda s: not s.startswith("speech_token"))
other_name = text.filter(lambda s: s not in CORE_FIELDS and not HISTORY_FIELD.fullmatch(s))


@st.composite
def record_dicts(draw) -> dict:
    """Valid raw record dicts, in the canonical layout a write gives back."""
    task = draw(st.sampled_from(TASKS))
    kind = output_type(task)
    obj = {"key": draw(path_text)}
    if kind.speech_in or draw(st.booleans()):
        obj["wav"] = draw(path_text)
    obj.update(txt=draw(text), task=task)
    extra = draw(st.dictionaries(plain_name, json_value, max_size=4))
    if kind.speech_out or draw(st.booleans()):
        extra["speech_token"] = draw(st.lists(st.integers(0, 4095), min_size=1, max_size=16))
    obj["extra"] = extra
    if draw(st.booleans()):
        start = draw(st.floats(0, 1e4))
        obj.update(start=start, end=start + draw(st.floats(1e-3, 1e3)))
    for number in range(1, draw(st.integers(0, 2)) + 1):
        obj.update({f"wav_{number}": draw(path_text), f"txt_{number}": draw(text)})
    obj.update(draw(st.dictionaries(other_name, json_value, max_size=3)))
    return obj


PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.lists(record_dicts(), min_size=1, max_size=5))
def test_valid_records_round_trip_unchanged(objs):
    with tempfile.TemporaryDirectory() as folder:
        first = Path(folder) / "a.jsonl"
        write_lines(first, [json.dumps(obj, ensure_ascii=False) for obj in objs])
        records = read_manifest(first, codebook_size=4096)
        assert [record.to_json_dict() for record in records] == objs
        again = read_manifest(write_manifest(records, Path(folder) / "b.jsonl"), codebook_size=4096)
    assert again == records
    assert [record.to_json_dict() for record in again] == objs


junk_text = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\n\ufeff"))
junk_bytes = st.binary(max_size=40).filter(lambda b: b"\n" not in b)


@PROPERTY
@given(st.lists(st.tuples(st.booleans(), record_dicts(), junk_text, junk_bytes, st.booleans()), max_size=8))
def test_junk_lines_become_problems_and_never_drop_valid_lines(rows):
    lines, valid, junk_lines, text_junk = [], [], set(), set()
    for number, (is_valid, obj, junk, raw, use_bytes) in enumerate(rows, 1):
        if is_valid:
            lines.append(json.dumps(obj).encode("utf-8"))
            valid.append(obj)
            continue
        junk_lines.add(number)
        lines.append(raw if use_bytes else junk.encode("utf-8"))
        if not use_bytes and junk.strip():
            text_junk.add(number)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.jsonl"
        path.write_bytes(b"\n".join(lines))
        records, problems = read_manifest_report(path)
    assert [record.to_json_dict() for record in records] == valid
    assert text_junk <= {problem.line for problem in problems} <= junk_lines
