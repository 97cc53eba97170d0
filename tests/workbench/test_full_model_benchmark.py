"""benchmarks/full_model.py: one line and exit 0 without a GPU; with --allow-cpu the smoke shape end to end, every
figure in its JSON (a 22.05 kHz stand-in for the CosyVoice token2wav, whose contract the script codes against)."""

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would measure it")


class StandInCosyVoice:
    """22.05 kHz, 882 samples (40 ms) per token; made as the contract says (random or from a folder)."""

    sample_rate = 22_050
    made = []

    @classmethod
    def random(cls, size, device="cpu"):
        cls.made.append(("random", size, device))
        return cls()

    @classmethod
    def from_dir(cls, folder, device, dtype):
        cls.made.append(("from_dir", folder, device))
        return cls()

    def __call__(self, tokens, **kw):
        return np.zeros(len(tokens) * 882, dtype=np.float32)


@pytest.fixture
def benchmark(monkeypatch):
    monkeypatch.setitem(sys.modules, "echat.token2wav.cosyvoice",
                        types.SimpleNamespace(CosyVoiceToken2Wav=StandInCosyVoice))
    spec = importlib.util.spec_from_file_location("full_model", ROOT / "benchmarks" / "full_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    StandInCosyVoice.made.clear()
    return module


@no_cuda
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(benchmark, capsys):
    assert benchmark.main([]) == 0
    out = capsys.readouterr().out.strip()
    assert out.splitlines() == [out] and "needs a CUDA GPU" in out and not StandInCosyVoice.made


@no_cuda
def test_allow_cpu_runs_the_smoke_shape_end_to_end(benchmark, tmp_path):
    out = tmp_path / "full.json"
    assert benchmark.main(["--allow-cpu", "--text-tokens", "8", "--speech-tokens", "30", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert StandInCosyVoice.made == [("random", "smoke", "cpu")]
    assert report["weights"].startswith("random weights of the exact smoke shape")
    assert report["device"].startswith("cpu")
    turn, speech = report["s2s_think_turn"], report["speech_phase"]
    assert turn["text_tokens"] <= 8 and 0 < turn["first_text_token_s"] <= turn["wall_s"]
    assert speech["speech_tokens"] == 30 and speech["audio_s"] == pytest.approx(30 * 0.04)
    assert 0 < speech["first_speech_chunk_s"] <= speech["first_audio_s"] <= speech["wall_s"]
    assert speech["token2wav_rtf"] == pytest.approx(speech["token2wav_s"] / speech["audio_s"])
    assert report["model_load_s"] > 0 and report["peak_gpu_memory_calls_gb"] is None


def test_checkpoint_without_cosyvoice_is_refused(benchmark):
    with pytest.raises(SystemExit, match="give both --checkpoint and --cosyvoice"):
        benchmark.main(["--checkpoint", "tag_think_final.pt"])
