"""Shard tars: raw -> shard -> raw round trips, layout, and damaged shards."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from echat.data.schema import Record, read_manifest, write_manifest
from echat.data.shards import (
    SHARD_LIST,
    ShardError,
    encode_wav,
    iter_shard_records,
    iter_shards,
    read_shard_list,
    read_wave,
    shards_to_raw,
    write_shards,
)
from echat.tokens import TRANSCRIBE

from . import SAMPLE_RATE_HZ, tone, write_tone

PCM_STEP = 1 / 32767
S2S = "<S2TCHAT> <TEXT2TOKEN>"


@pytest.fixture
def raw(tmp_path) -> Path:
    """A raw manifest covering every layout feature, with real audio files next to it."""
    folder = tmp_path / "raw"
    write_tone(folder / "wav" / "asr.wav", 0.5, subtype="FLOAT")  # float: re-encoding quantises
    write_tone(folder / "wav" / "s2s.wav", 1.0, f0=180.0)
    write_tone(folder / "wav" / "stereo22k.wav", 0.4, rate=22_050, channels=2)
    write_tone(folder / "wav" / "turn1.wav", 0.3, f0=300.0)
    write_tone(folder / "wav" / "turn2.wav", 0.3, f0=330.0)
    objs = [
        {"key": "asr_1", "task": TRANSCRIBE, "wav": "wav/asr.wav", "txt": "hello there", "extra": {"age": "<ADULT>"}},
        {"key": "s2s.v1.x", "wav": "wav/s2s.wav", "txt": "我很好", "task": S2S, "start": 0.1, "end": 0.9,
         "extra": {"speech_token": [1, 4095, 7], "duration": 1.0, "q_emotion": "<SAD>"},
         "tar_path_key": "sex_000000298", "nested": {"a": [1, None]}},
        {"key": "t2t", "txt": "reply", "task": "<TEXT2TEXT>", "extra": {"question": "how?"}},
        {"key": "resampled", "task": TRANSCRIBE, "wav": str(folder / "wav" / "stereo22k.wav"),
         "txt": "abs path, 22 kHz"},
        {"key": "multi", "wav": "wav/s2s.wav", "txt": "third", "task": S2S, "extra": {"speech_token": [5]},
         "wav_1": "wav/turn1.wav", "txt_1": "first", "wav_2": "wav/turn2.wav", "txt_2": "second"},
    ]
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objs), encoding="utf-8")
    return path


def fields(record: Record) -> tuple:
    """Everything a round trip must keep (audio paths change by design)."""
    history_txt = [turn["txt"] for turn in record.history]
    return (record.key, record.txt, record.task, record.extra, history_txt, record.start, record.end,
            record.others, record.wav is None)


def test_raw_shard_raw_round_trip(raw, tmp_path):
    records = read_manifest(raw)
    list_path = write_shards(records, tmp_path / "shards")
    back_path = shards_to_raw(list_path, tmp_path / "back")
    back = read_manifest(back_path)
    assert [fields(r) for r in back] == [fields(r) for r in records]
    for before, after in zip(records, back):
        if before.wav is None:
            continue
        original = read_wave(before.audio_path())
        restored, rate = sf.read(after.audio_path(), dtype="float32")
        assert rate == SAMPLE_RATE_HZ and restored.ndim == 1
        np.testing.assert_allclose(restored, original, atol=PCM_STEP, rtol=0)
        for turn_before, turn_after in zip(before.history_paths(), after.history_paths()):
            np.testing.assert_allclose(sf.read(turn_after, dtype="float32")[0], read_wave(turn_before),
                                       atol=PCM_STEP, rtol=0)
    assert (tmp_path / "back" / "wav" / "s2s.v1.x.wav").is_file()
    assert back[2].wav is None and not (tmp_path / "back" / "wav" / "t2t.wav").exists()


def test_iter_shards_gives_members_and_float_audio(raw, tmp_path):
    records = read_manifest(raw)
    list_path = write_shards(records, tmp_path / "shards", prefix="train")
    samples = list(iter_shards(list_path))
    assert [s.record for s in samples] == [
        Record(**{**vars(r), "wav": None if r.wav is None else f"{r.key}.wav",
                  "history": [{"wav": f"{r.key}.wav_{n}", "txt": t["txt"]} for n, t in enumerate(r.history, 1)]})
        for r in records
    ]
    first = samples[0]
    assert first.record.source == str(tmp_path / "shards" / "train_000000000.tar") and first.record.line == 1
    assert first.audio.dtype == np.float32 and first.audio.shape == (8000,)
    np.testing.assert_allclose(first.audio, tone(0.5), atol=PCM_STEP, rtol=0)
    assert samples[2].audio is None and samples[2].history_audio == []
    assert samples[3].audio.shape == (round(0.4 * SAMPLE_RATE_HZ),)  # 22.05 kHz stereo -> 16 kHz mono
    assert [a.shape for a in samples[4].history_audio] == [(4800,), (4800,)]


def test_reference_member_layout(raw, tmp_path):
    list_path = write_shards(read_manifest(raw), tmp_path / "shards")
    with tarfile.open(read_shard_list(list_path)[0]) as tar:
        names = tar.getnames()
        extra = json.loads(tar.extractfile("s2s.v1.x.extra").read())
        duration = tar.extractfile("s2s.v1.x.duration").read()
        wav = sf.info(io.BytesIO(tar.extractfile("asr_1.wav").read()))
    assert names[:4] == ["asr_1.txt", "asr_1.task", "asr_1.extra", "asr_1.wav"]
    assert "duration" not in extra and json.loads(duration) == 1.0
    assert (wav.samplerate, wav.channels, wav.subtype) == (16_000, 1, "PCM_16")
    assert "t2t.wav" not in names and "multi.wav_2" in names and "multi.txt_2" in names


def test_per_shard_splits_and_lists(raw, tmp_path):
    list_path = write_shards(read_manifest(raw), tmp_path / "out", per_shard=2)
    assert list_path == tmp_path / "out" / SHARD_LIST
    names = [f"shards_{i:09d}.tar" for i in range(3)]
    assert list_path.read_text().splitlines() == names
    assert read_shard_list(list_path) == [tmp_path / "out" / name for name in names]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names + [SHARD_LIST])
    keys = [record.key for record, _ in iter_shard_records(list_path)]
    assert keys == ["asr_1", "s2s.v1.x", "t2t", "resampled", "multi"]


def test_write_rejects_duplicate_and_unusable_keys(tmp_path):
    text_only = Record(key="a", txt="x", task="<TEXT2TEXT>")
    with pytest.raises(ShardError, match="duplicate key"):
        write_shards([text_only, text_only], tmp_path)
    with pytest.raises(ValueError, match="cannot be used in a shard"):
        write_shards([Record(key="a/b", task="<TEXT2TEXT>")], tmp_path)


def test_write_names_missing_audio(tmp_path):
    record = Record(key="gone", wav="gone.wav", source=str(tmp_path / "m.jsonl"), line=4)
    with pytest.raises(ShardError, match=r"m\.jsonl:4: gone: audio not found: gone\.wav \(tried .*gone\.wav, "
                                         r".*gone\.wav\)"):
        write_shards([record], tmp_path / "shards")
    assert not list((tmp_path / "shards").glob("*.tar*"))


def test_truncated_tar_is_a_clear_error(raw, tmp_path):
    list_path = write_shards(read_manifest(raw), tmp_path / "shards")
    tar = read_shard_list(list_path)[0]
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError, match=r"shards_000000000\.tar:\d+: -: unreadable or truncated tar"):
        list(iter_shards(list_path))
    problems = []
    samples = list(iter_shards(list_path, problems))
    assert len(problems) == 1 and str(tar) in str(problems[0])
    assert 0 < len(samples) < 5 and samples[0].record.key == "asr_1"


def test_missing_list_and_missing_tar(tmp_path):
    with pytest.raises(ShardError, match="shard list not found"):
        list(iter_shards(tmp_path / "none.txt"))
    list_path = tmp_path / "list.txt"
    list_path.write_text("\ngone.tar\n")
    with pytest.raises(ShardError, match=r"list\.txt:2: -: shard tar not found: .*gone\.tar"):
        list(iter_shards(list_path))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (path.parent / SHARD_LIST).write_text(f"-|{path.name}\n")
    return path.parent / SHARD_LIST


def test_corrupt_member_is_collected_not_a_crash(tmp_path):
    good = encode_wav(tone(0.2))
    list_path = write_tar(tmp_path / "x.tar", [
        ("bad.txt", b"t"), ("bad.wav", b"RIFF garbage"), ("bad.task", b"<TRANSCRIBE>"),
        ("ok.txt", b"t"), ("ok.task", b"<TRANSCRIBE>"), ("ok.wav", good),
        ("odd.extra", b"{oops"), ("noext", b"?"),
    ])
    problems = []
    samples = list(iter_shards(list_path, problems))
    assert [s.record.key for s in samples] == ["ok"]
    messages = [str(p) for p in problems]
    assert messages[0].startswith(f"{tmp_path / 'x.tar'}:1: bad: corrupt audio member bad.wav")
    assert messages[1].startswith(f"{tmp_path / 'x.tar'}:7: odd: member .extra is not valid JSON")
    assert messages[2] == f"{tmp_path / 'x.tar'}:8: -: member 'noext' has no extension"
    with pytest.raises(ShardError, match="corrupt audio member bad.wav"):
        list(iter_shards(list_path))


def test_reads_reference_style_members(tmp_path):
    list_path = write_tar(tmp_path / "ref.tar", [
        ("k1.txt", "你好".encode()), ("k1.wav", encode_wav(tone(0.1))),
        ("k1.task", b"<Speech2TEXTandTOKEN>"), ("k1.lang", b"zh"), ("k1.duration", b"0.1"),
        ("k1.extra", json.dumps({"speech_token": [1, 2]}).encode()), ("k2.wav", encode_wav(tone(0.1))),
    ])
    problems = []
    first, = (s.record for s in iter_shards(list_path, problems))
    assert (first.task, first.txt, first.others) == (S2S, "你好", {"lang": "zh"})
    assert first.extra == {"speech_token": [1, 2], "duration": 0.1}
    assert [str(p) for p in problems] == [f"{tmp_path / 'ref.tar'}:7: k2: task: missing (give --default-task TASK "
                                          "to read such records as TASK)"]
    _, second = (s.record for s in iter_shards(list_path, default_task=TRANSCRIBE))
    assert (second.key, second.txt, second.task) == ("k2", "", TRANSCRIBE)


def test_encode_wav_quantises_and_clips():
    wave = np.array([0.0, 0.5, -0.5, 1.5, -1.5, 1 / 32768], dtype=np.float32)
    decoded, rate = sf.read(io.BytesIO(encode_wav(wave)), dtype="float32")
    assert rate == 16_000
    np.testing.assert_allclose(decoded, [0.0, 0.5, -0.5, 32767 / 32768, -1.0, 1 / 32768], atol=1e-7)


def test_shards_to_raw_keeps_text_only_records(tmp_path):
    records = [Record(key="q", txt="a", task="<TEXT2TEXT>", extra={"question": "q?"}, others={"n": 1})]
    back = read_manifest(shards_to_raw(write_shards(records, tmp_path / "s"), tmp_path / "r"))
    assert back == records
    assert write_manifest(back, tmp_path / "again.jsonl").read_text() == (tmp_path / "r" / "data.jsonl").read_text()


def _special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_links_devices_and_names_leaving_the_folder_are_refused_by_name(tmp_path):
    """A shard is read into memory, never extracted by name, but such a member means a damaged or hostile
    file; each is one problem naming it, and the valid samples around it are still read."""
    tar_path = tmp_path / "x.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, payload in [("ok.txt", b"t"), ("ok.task", b"<TRANSCRIBE>"), ("ok.wav", encode_wav(tone(0.1))),
                              ("../evil.txt", b"x"), ("/etc/evil.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        tar.addfile(_special("link.wav", tarfile.SYMTYPE, "/etc/passwd"))
        tar.addfile(_special("hard.wav", tarfile.LNKTYPE, "ok.wav"))
        tar.addfile(_special("dev.wav", tarfile.CHRTYPE))
        tar.addfile(_special("folder", tarfile.DIRTYPE))
    (tmp_path / SHARD_LIST).write_text("x.tar\n")
    problems = []
    assert [s.record.key for s in iter_shards(tmp_path / SHARD_LIST, problems)] == ["ok"]
    assert [str(p) for p in problems] == [
        f"{tar_path}:4: -: member '../evil.txt' has an absolute name or a '..' in it: refused",
        f"{tar_path}:5: -: member '/etc/evil.txt' has an absolute name or a '..' in it: refused",
        f"{tar_path}:6: -: member 'link.wav' is a link: refused",
        f"{tar_path}:7: -: member 'hard.wav' is a link: refused",
        f"{tar_path}:8: -: member 'dev.wav' is not a regular file: refused",
    ]
