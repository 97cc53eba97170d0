"""`echat chat` and its loader end to end: a mini checkpoint folder (its own mini voice), a smoke-size export in the
released .pt layout (with a stand-in CosyVoice token2wav at 22.05 kHz), and the one-line errors."""

import ast
import importlib
import importlib.util
import inspect
import re
import shlex
import sys
import types

import numpy as np
import pytest
import soundfile as sf
import torch

import echat.app
from echat.cli import build_parser, main
from echat.config import ThinkMode, preset
from echat.data.speech_tokens import SPEECH_TOKENIZER_DIR
from echat.models.checkpoint import save_reference_checkpoint
from echat.models.echat import EChat
from echat.tokens import TEXT2TOKEN, TRANSCRIBE
from echat.workbench.chat import (
    CPU_LIMIT_BYTES,
    chat_once,
    chat_task,
    full_world_missing,
    load_chat_model,
    released_files,
    think_of_file,
)
from tests.conftest import FIXTURES, ROOT

CLIP = FIXTURES / "wav" / "asrp_0002.wav"
SHORT = ["--device", "cpu", "--seed", "0", "--max-new-tokens", "12", "--max-speech-tokens", "20"]


@pytest.fixture(scope="module")
def smoke_echat(mini_tok):
    torch.manual_seed(0)
    return EChat(preset("smoke"), mini_tok).eval()


@pytest.fixture(scope="module")
def mini_checkpoint(smoke_echat, tokenizer, tmp_path_factory):
    """An echat checkpoint folder that keeps its speech tokenizer, as a trained mini stage does."""
    folder = tmp_path_factory.mktemp("ckpt") / "final"
    smoke_echat.save(folder)
    tokenizer.save(folder / SPEECH_TOKENIZER_DIR)
    return folder


@pytest.fixture(scope="module")
def reference_pt(smoke_echat, tmp_path_factory):
    """A smoke-size model exported in the released layout under the released name, and its text tokenizer."""
    folder = tmp_path_factory.mktemp("released")
    smoke_echat.tokenizer.save_pretrained(folder / "tokenizer")
    return save_reference_checkpoint(smoke_echat, folder / "tag_think_final.pt"), folder / "tokenizer"


class StandInCosyVoice:
    """A 22.05 kHz token2wav with the CosyVoice contract's constructor: 882 samples (40 ms) per token."""

    sample_rate = 22_050

    def __init__(self, folder, device, dtype):
        self.folder, self.device, self.dtype = folder, device, dtype

    @classmethod
    def from_dir(cls, folder, device="cpu", dtype=torch.float32):
        return cls(folder, device, dtype)

    def __call__(self, tokens, **kw):
        return np.full(len(tokens) * 882, 0.1, dtype=np.float32)


def test_task_names_map_to_the_reference_tags():
    assert chat_task("s2s", "tag") == "<S2TCHAT> <TEXT2TOKEN> <THINK>"
    assert chat_task("s2s", "none") == "<S2TCHAT> <TEXT2TOKEN>"
    assert chat_task("S2T", "language") == "<S2TCHAT> <THINKER>"
    assert chat_task("asr", "tag") == TRANSCRIBE and chat_task("tts", "none") == TEXT2TOKEN
    assert chat_task("<TRANSCRIBE> <AGE>", "none") == "<TRANSCRIBE> <AGE>"
    with pytest.raises(ValueError, match="unknown task"):
        chat_task("<SING>", "none")


def test_a_released_file_name_says_its_think_mode():
    assert think_of_file("x/tag_think_final.pt") is ThinkMode.TAG
    assert think_of_file("language_think_final.pt") is ThinkMode.LANGUAGE
    assert think_of_file("epoch_3.pt") is ThinkMode.NONE


def test_chat_on_a_mini_checkpoint_prints_think_and_reply(mini_checkpoint, capsys):
    assert main(["chat", "--checkpoint", str(mini_checkpoint), "--wav", str(CLIP), "--think", "tag", *SHORT]) == 0
    out = capsys.readouterr().out
    assert "task: <S2TCHAT> <TEXT2TOKEN> <THINK>" in out and "\nreply: " in out and "timings: first token" in out


def test_chat_speaks_through_the_checkpoints_mini_voice(mini_checkpoint, tmp_path, capsys):
    reply = tmp_path / "reply.wav"
    argv = ["chat", "--checkpoint", str(mini_checkpoint), "--task", "tts", "--text", "hello", "--out", str(reply)]
    assert main([*argv, *SHORT]) == 0
    wave, rate = sf.read(reply)
    n_tokens = int(capsys.readouterr().out.split("speech tokens: ")[1].split(",")[0])
    assert rate == 16_000 and wave.shape == (n_tokens * 640,) and 0 < n_tokens <= 20  # 40 ms per token


def test_a_released_layout_file_loads_with_its_think_and_speaks_at_22khz(reference_pt, tmp_path, capsys,
                                                                          monkeypatch):
    path, tokenizer = reference_pt
    monkeypatch.setitem(sys.modules, "echat.token2wav.cosyvoice",
                        types.SimpleNamespace(CosyVoiceToken2Wav=StandInCosyVoice))
    cosyvoice = tmp_path / "CosyVoice-300M-25Hz"
    cosyvoice.mkdir()
    reply = tmp_path / "out" / "reply.wav"
    argv = ["chat", "--checkpoint", str(path), "--preset", "smoke", "--tokenizer", str(tokenizer), "--cosyvoice",
            str(cosyvoice), "--wav", str(CLIP), "--task", "tts", "--text", "hi", "--out", str(reply)]
    assert main([*argv, *SHORT]) == 0
    wave, rate = sf.read(reply)
    n_tokens = int(capsys.readouterr().out.split("speech tokens: ")[1].split(",")[0])
    assert rate == 22_050 and wave.shape == (n_tokens * 882,)


def test_the_loader_takes_the_think_mode_from_the_file_name(reference_pt):
    path, tokenizer = reference_pt
    model = load_chat_model(path, "cpu", str(tokenizer), "smoke")
    assert model.config.think is ThinkMode.TAG and not model.training and model.token2wav is None
    turn = chat_once(model, CLIP, task="s2t", seed=0, max_new_tokens=5)
    assert turn.task == "<S2TCHAT> <THINKER>" and turn.sample_rate is None and len(turn.result.text_ids) <= 5


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "missing.pt", "--wav", "in.wav"], "missing.pt: no such run or checkpoint folder, nor .pt file"),
    (["--checkpoint", "CKPT", "--wav", "nowhere.wav"], "nowhere.wav: file not found"),
    (["--checkpoint", "CKPT", "--task", "t2t"], "task t2t reads text: pass it (--text)"),
    (["--checkpoint", "CKPT", "--task", "s2s"], "task s2s listens: pass a wav file (--wav)"),
    (["--checkpoint", "CKPT", "--cosyvoice", "no_dir", "--wav", "in.wav"], "--cosyvoice no_dir: no such folder"),
])
def test_a_bad_chat_is_one_line_naming_what_is_wrong(argv, message, mini_checkpoint, capsys):
    argv = [str(mini_checkpoint) if word == "CKPT" else word for word in argv]
    assert main(["chat", *argv, "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and message in err


def test_a_full_size_checkpoint_on_the_cpu_is_refused_before_reading(tmp_path, capsys):
    big = tmp_path / "tag_think_final.pt"
    with open(big, "wb") as f:
        f.truncate(CPU_LIMIT_BYTES + 1)  # sparse: no disk used, never read
    assert main(["chat", "--checkpoint", str(big), "--wav", str(CLIP), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"{big}: a 2.1 GB checkpoint needs a CUDA GPU" in err


def test_the_full_world_says_in_one_line_why_it_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHAT_HOME", str(tmp_path))
    checkpoint, cosyvoice = released_files()
    assert checkpoint == tmp_path / "OSUM-EChat" / "tag_think_final.pt" and cosyvoice.name == "CosyVoice-300M-25Hz"
    assert "PRESET is 'smoke'" in full_world_missing(checkpoint, cosyvoice, "smoke")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert full_world_missing(checkpoint, cosyvoice).startswith("no CUDA GPU here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cosyvoice.mkdir(parents=True)
    (cosyvoice / "flow.pt").write_bytes(b"x")
    why = full_world_missing(checkpoint, cosyvoice)
    assert str(checkpoint) in why and str(cosyvoice / "hift.pt") in why and "flow.pt" not in why
    assert str(cosyvoice.parent / "prompt.wav") in why
    checkpoint.write_bytes(b"x")
    (cosyvoice / "hift.pt").write_bytes(b"x")
    (cosyvoice.parent / "prompt.wav").write_bytes(b"x")  # beside the folder, where echat download puts it
    assert full_world_missing(checkpoint, cosyvoice) == ""


def _full_world_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split("## Full world on a GPU\n", 1)[1].split("\n## ", 1)[0]


def test_readmes_full_world_commands_parse():
    """The section's `sh` lines need a GPU and the files: each `echat chat` and `echat tokens` line parses with
    echat's parser and each benchmark line with the benchmark's, the variables the block sets filled in."""
    block = re.search(r"```sh\n(.*?)```", _full_world_section(), re.S).group(1)
    values, parsed = {}, []
    for words in (shlex.split(line, comments=True) for line in block.splitlines()):
        if len(words) == 1 and "=" in words[0]:
            values.update([words[0].split("=", 1)])
            continue
        words = [values.get(w[1:], w) if w.startswith("$") else w for w in words]
        if words[:2] == ["echat", "chat"]:
            assert build_parser().parse_args(words[1:]).func.__name__ == "cmd_chat"
            parsed.append("chat")
        elif words[:2] == ["echat", "tokens"]:
            assert build_parser().parse_args(words[1:]).func.__name__ == "cmd_tokens_extract"
            parsed.append("tokens")
        elif words[0] == ".venv/bin/python":
            spec = importlib.util.spec_from_file_location("full_model", ROOT / words[1])
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert module.parse(words[2:]).out is not None
            parsed.append("benchmark")
    assert parsed.count("chat") >= 2 and parsed.count("benchmark") == 2 and parsed.count("tokens") == 1


def test_readmes_full_world_python_names_what_exists():
    code = re.search(r"```python\n(.*?)```", _full_world_section(), re.S).group(1)
    for node in ast.walk(ast.parse(code)):
        # the CosyVoice module arrives with its own part of issue 14: its names are checked once it exists
        if isinstance(node, ast.ImportFrom) and importlib.util.find_spec(node.module) is not None:
            module = importlib.import_module(node.module)
            assert all(hasattr(module, alias.name) for alias in node.names), node.module
    assert "token2wav" in inspect.signature(echat.app.show).parameters
