"""``echat tokens extract``: reply audio -> ``extra.speech_token`` through a tiny ONNX graph with the real
tokenizer's inputs (one id per 4 Whisper frames: 25 per second); fields kept, other lines copied as read,
every bad record named and left out, and ``echat data check`` passes on the output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from echat.audio import load_audio
from echat.cli import main
from echat.data.check import check_manifest
from echat.data.reply_tokens import CODEBOOK_SIZE, MAX_REPLY_SECONDS, extract_reply_tokens
from echat.token2wav.cosyvoice_prompt import MAX_PROMPT_SECONDS, CosyVoiceFileError, CosyVoiceSpeechTokenizer
from tests.token2wav.test_cosyvoice import tokenizer_graph

from . import write_tone
from .test_check import write_jsonl

S2S_THINK = "<S2TCHAT> <TEXT2TOKEN> <THINK>"
TOKEN_RATE = 25  # CosyVoice-300M-25Hz ids per second


@pytest.fixture(scope="module")
def cosyvoice(tmp_path_factory) -> Path:
    """A CosyVoice folder holding only the tokenizer (all extraction needs), over the real 4096 codes."""
    folder = tmp_path_factory.mktemp("cosyvoice")
    onnx.save(tokenizer_graph(CODEBOOK_SIZE), folder / "speech_tokenizer_v1.onnx")
    return folder


@pytest.fixture(scope="module")
def tokenizer(cosyvoice) -> CosyVoiceSpeechTokenizer:
    return CosyVoiceSpeechTokenizer.from_dir(cosyvoice)


def s2s(key: str, reply: str | None, **extra) -> dict:
    """An S2S think record as the reference writes it (§6.1), its reply audio in ``extra.a_wav_path``."""
    fields = {"age": "<ADULT>", "think_str": "calm", **({"a_wav_path": reply} if reply else {}), **extra}
    return {"key": key, "txt": "Sure.", "wav": "wav/user.wav", "extra": fields, "tar_path_key": "sex_1",
            "task": S2S_THINK}


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Reply audio at 22.05 kHz (2.0 s), 16 kHz (1.2 s), a user clip, and a manifest of every kind of line."""
    write_tone(tmp_path / "wav" / "user.wav", 0.8)
    write_tone(tmp_path / "wav" / "reply.wav", 2.0, rate=22_050, f0=180.0)
    write_tone(tmp_path / "wav" / "tts.wav", 1.2, channels=2)
    return write_jsonl(tmp_path / "in.jsonl", [
        s2s("chat", "wav/reply.wav"),
        {"key": "asr", "wav": "wav/user.wav", "txt": "hello", "task": "<TRANSCRIBE>",
         "extra": {"a_wav_path": "wav/reply.wav"}},
        {"key": "tts", "wav": "wav/tts.wav", "txt": "Hi there.", "task": "<TEXT2TOKEN>"},
        s2s("done", None, speech_token=[7, 8, 9]),
        '{"key":"spaced",  "wav":"wav/user.wav","txt":"é","task":"<TRANSCRIBE>"}',
    ])


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_reply_audio_gets_25_ids_per_second_in_the_codebook(corpus, tokenizer, tmp_path):
    report = extract_reply_tokens(corpus, tmp_path / "out.jsonl", tokenizer, progress=False)
    assert report.ok and (report.tokenised, report.copied) == (2, 3)
    out = {json.loads(line)["key"]: json.loads(line) for line in lines(tmp_path / "out.jsonl")}
    chat, tts = out["chat"]["extra"]["speech_token"], out["tts"]["extra"]["speech_token"]
    assert (len(chat), len(tts)) == (2.0 * TOKEN_RATE, 1.2 * TOKEN_RATE)
    assert all(type(t) is int and 0 <= t < CODEBOOK_SIZE for t in chat + tts)
    assert chat == tokenizer(load_audio(tmp_path / "wav" / "reply.wav"))[0].tolist()  # 16 kHz, as upstream reads
    assert report.tokens == 80 and report.seconds == pytest.approx(3.2)


def test_every_other_field_is_kept_and_other_lines_are_copied_as_read(corpus, tokenizer, tmp_path):
    extract_reply_tokens(corpus, tmp_path / "out.jsonl", tokenizer, progress=False)
    before, after = lines(corpus), lines(tmp_path / "out.jsonl")
    for old, new in zip(before, after, strict=True):
        old_obj, new_obj = json.loads(old), json.loads(new)
        if old_obj["key"] in ("chat", "tts"):
            tokens = new_obj["extra"].pop("speech_token")
            added = [] if "extra" in old_obj else ["extra"]  # a record without extra gets one, at the end
            assert tokens and list(new_obj) == list(old_obj) + added  # same fields, same order
            assert new_obj == {**old_obj, "extra": old_obj.get("extra", {})}
        else:
            assert new == old  # text tasks, a record that has its tokens: byte for byte


def test_data_check_refuses_the_input_and_passes_the_output(corpus, tokenizer, tmp_path):
    assert not check_manifest(corpus, codebook_size=CODEBOOK_SIZE).ok  # the S2S and TTS records lack tokens
    extract_reply_tokens(corpus, tmp_path / "out.jsonl", tokenizer, progress=False)
    report = check_manifest(tmp_path / "out.jsonl", codebook_size=CODEBOOK_SIZE)
    assert report.ok, report.render()
    assert report.records == 5


def test_bad_records_are_each_named_and_left_out_and_the_good_ones_written(tmp_path, tokenizer):
    write_tone(tmp_path / "reply.wav", 1.0)
    write_tone(tmp_path / "long.wav", 30.5)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not audio at all")
    manifest = write_jsonl(tmp_path / "in.jsonl", [
        s2s("missing", "gone.wav"), s2s("broken", "broken.wav"), s2s("long", "long.wav"),
        '{"key": "cut", "txt": ', s2s("good", "reply.wav"), {**s2s("odd", "reply.wav"), "task": "<SING>"},
        s2s("path", None, a_wav_path=3), {**s2s("extra", None), "extra": "{not json"},
    ])
    report = extract_reply_tokens(manifest, tmp_path / "out.jsonl", tokenizer, progress=False)
    shown = [str(problem) for problem in report.problems]
    source = str(manifest)
    assert shown[0].startswith(f"{source}:1: missing: extra.a_wav_path: audio not found: gone.wav (tried ")
    assert shown[1].startswith(f"{source}:2: broken: extra.a_wav_path: {tmp_path / 'broken.wav'}: unreadable")
    assert shown[2] == (f"{source}:3: long: extra.a_wav_path: long.wav is 30.50 s long; the speech tokenizer takes "
                        "at most 30 s")
    assert shown[3].startswith(f"{source}:4: cut: malformed JSON")
    assert shown[4].startswith(f"{source}:6: odd: task: ")
    assert shown[5] == f"{source}:7: path: extra.a_wav_path: expected an audio path string, got an integer 3"
    assert shown[6].startswith(f"{source}:8: extra: extra: string is not valid JSON (")
    assert len(shown) == 7 and not report.ok and MAX_REPLY_SECONDS == MAX_PROMPT_SECONDS  # the one limit
    assert [json.loads(line)["key"] for line in lines(tmp_path / "out.jsonl")] == ["good"]
    assert report.render().endswith("result: FAILED (7 record(s) left out)")


def test_a_speech_record_without_reply_audio_is_copied_and_counted(tmp_path, tokenizer):
    manifest = write_jsonl(tmp_path / "in.jsonl", [s2s("bare", None), s2s("done", None, speech_token=[1])])
    report = extract_reply_tokens(manifest, tmp_path / "out.jsonl", tokenizer, progress=False)
    assert report.ok and report.copied == 2 and report.without_audio == 1
    assert lines(tmp_path / "out.jsonl") == lines(manifest)
    assert "speech-output records with no reply audio and no speech_token: 1" in report.render()


def test_the_reply_field_can_be_named_and_a_segment_of_the_own_wav_is_cut(tmp_path, tokenizer):
    write_tone(tmp_path / "user.wav", 1.6)
    write_tone(tmp_path / "reply.wav", 0.4)
    manifest = write_jsonl(tmp_path / "in.jsonl", [
        {**s2s("own", "reply.wav"), "wav": "user.wav", "start": 0.2, "end": 1.0},
        {**s2s("all", "reply.wav"), "wav": "user.wav"},
    ])
    extract_reply_tokens(manifest, tmp_path / "a.jsonl", tokenizer, reply_field="wav", progress=False)
    counts = [len(json.loads(line)["extra"]["speech_token"]) for line in lines(tmp_path / "a.jsonl")]
    assert counts == [0.8 * TOKEN_RATE, 1.6 * TOKEN_RATE]
    extract_reply_tokens(manifest, tmp_path / "b.jsonl", tokenizer, reply_field="extra.a_wav_path", progress=False)
    counts = [len(json.loads(line)["extra"]["speech_token"]) for line in lines(tmp_path / "b.jsonl")]
    assert counts == [0.4 * TOKEN_RATE] * 2


def test_ids_outside_the_codebook_or_none_at_all_are_problems(tmp_path):
    write_tone(tmp_path / "reply.wav", 0.5)
    manifest = write_jsonl(tmp_path / "in.jsonl", [s2s("a", "reply.wav")])
    report = extract_reply_tokens(manifest, tmp_path / "out.jsonl", lambda wave: np.array([3, 4096]),
                                  progress=False)
    assert str(report.problems[0]).endswith("extra.speech_token: the tokenizer's output is not in the codebook "
                                            "(tokens of extra.a_wav_path: speech token 4096 out of range [0, 4096) "
                                            "at index 1)")
    report = extract_reply_tokens(manifest, tmp_path / "out.jsonl", lambda wave: [], progress=False)
    assert "extra.a_wav_path: reply.wav gave no speech tokens" in str(report.problems[0])
    assert lines(tmp_path / "out.jsonl") == []


def test_a_shard_list_a_missing_manifest_and_writing_over_the_input_are_refused(tmp_path, tokenizer):
    shards = tmp_path / "shards_list.txt"
    shards.write_text("shards_000000000.tar\n")
    with pytest.raises(ValueError, match="shard or combine list; tokens extract reads a raw JSON-lines manifest"):
        extract_reply_tokens(shards, tmp_path / "out.jsonl", tokenizer)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        extract_reply_tokens(tmp_path / "nope.jsonl", tmp_path / "out.jsonl", tokenizer)
    manifest = write_jsonl(tmp_path / "in.jsonl", [s2s("a", None)])
    with pytest.raises(ValueError, match="is the input manifest"):
        extract_reply_tokens(manifest, manifest, tokenizer)
    assert lines(manifest) == [json.dumps(s2s("a", None))]
    with pytest.raises(ValueError, match="--reply-audio-field 'extra.': give `wav` or an extra key"):
        extract_reply_tokens(manifest, tmp_path / "out.jsonl", tokenizer, reply_field="extra.")


def test_a_missing_tokenizer_file_is_named(tmp_path):
    with pytest.raises(CosyVoiceFileError, match=f"speech_tokenizer_v1.onnx not found in {tmp_path}"):
        CosyVoiceSpeechTokenizer.from_dir(tmp_path)


def test_the_command_writes_the_output_and_exits_1_on_a_bad_record(corpus, cosyvoice, tmp_path, capsys):
    out = tmp_path / "new" / "out.jsonl"
    assert main(["tokens", "extract", "--data", str(corpus), "--cosyvoice", str(cosyvoice), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "records: 2 tokenised (3.2 s of reply audio, 80 tokens, 25.0 tokens/s), 3 copied as read" in printed
    assert printed.rstrip().endswith("result: OK") and len(lines(out)) == 5
    bad = write_jsonl(tmp_path / "bad.jsonl", [s2s("x", "nowhere.wav")])
    argv = ["tokens", "extract", "--data", str(bad), "--cosyvoice", str(cosyvoice), "--out", str(out)]
    assert main(argv) == 1
    assert f"{bad}:1: x: extra.a_wav_path: audio not found: nowhere.wav" in capsys.readouterr().out
    assert main([*argv[:4], "--cosyvoice", str(tmp_path / "none"), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (f"echat: error: --cosyvoice {tmp_path / 'none'}: no such folder "
                                               "(the unpacked CosyVoice-300M-25Hz)")
