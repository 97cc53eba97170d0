"""echat: a research workbench for OSUM-EChat, the empathetic end-to-end spoken chatbot.

Public API: :class:`EChat` (``echat.EChat.from_preset("mini")``, ``.from_checkpoint(path)``,
``.from_reference_checkpoint(pt)``), the presets (:func:`preset`, :data:`PRESETS`), :class:`EChatConfig`,
:class:`GenerationOptions`, and the submodules (``echat.audio``, ``echat.prompts``, ...), which are
imported on first use so that ``import echat`` stays light (no torch until something needs it).
"""

import importlib

from echat.config import PRESETS, EChatConfig, GenerationOptions, preset

__all__ = ["PRESETS", "EChat", "EChatConfig", "GenerationOptions", "preset"]
__version__ = "0.1.0"

_SUBMODULES = {
    "audio", "cli", "config", "data", "eval", "models", "prompts", "sequence", "text_tokenizer", "token2wav",
    "tokens", "train", "workbench",
}


def __getattr__(name: str):
    if name == "EChat":
        return importlib.import_module("echat.models.echat").EChat
    if name in _SUBMODULES:
        return importlib.import_module(f"echat.{name}")
    raise AttributeError(f"module 'echat' has no attribute {name!r}")
