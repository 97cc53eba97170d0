"""echat: a research workbench for OSUM-EChat, the empathetic end-to-end spoken chatbot.

Public API: the presets (:func:`preset`, :data:`PRESETS`), :class:`EChatConfig`,
:class:`GenerationOptions`, and the submodules (``echat.audio``, ``echat.prompts``, ...), which are
imported on first use so that ``import echat`` stays light (no torch until something needs it).
"""

import importlib

from echat.config import PRESETS, EChatConfig, GenerationOptions, preset

__all__ = ["PRESETS", "EChatConfig", "GenerationOptions", "preset"]
__version__ = "0.1.0"

_SUBMODULES = {
    "audio", "cli", "config", "data", "eval", "models", "notebooks", "prompts", "text_tokenizer", "token2wav",
    "tokens", "train",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"echat.{name}")
    raise AttributeError(f"module 'echat' has no attribute {name!r}")
