"""Pip-only speech synthesis with eSpeak NG, called through its C API with ctypes.

The ``espeakng-loader`` wheel ships ``libespeak-ng.so`` and its ``espeak-ng-data`` folder, so no
system package is needed. :func:`synthesize` turns text into a float32 mono wave at 16 kHz (or any
rate), with a :class:`Voice` choosing the language, the voice variant and the prosody.

Design choices:
- Deterministic: the same text and voice always give the same samples. Two things stand in the way:
  ``espeak_Initialize`` seeds the breath-noise generator (used by voices such as ``+f3``) from the
  clock, so it is reseeded with RANDOM_SEED; and the wave generator keeps static state across calls
  (pitch-flutter phase, gain control, echo buffer) that ``espeak_Terminate``/``espeak_Initialize``
  do not reset, so every call loads a fresh instance of the library, synthesises, and unloads it
  again (about 10 ms of overhead). Another user of the same library file in the process would keep it
  loaded and break this guarantee; echat has none.
- The library is process-global and not thread-safe: one lock serialises every call.
- Synchronous output mode: the library hands int16 chunks to a Python callback; nothing is played.
- Initialisation uses ``espeakINITIALIZE_DONT_EXIT``, so a broken data folder raises instead of
  ending the process.
- Resampling from the native 22.05 kHz uses librosa's soxr backend (the same as :mod:`echat.audio`).
"""

from __future__ import annotations

import _ctypes
import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import librosa
import numpy as np

from echat.audio import RESAMPLE_TYPE, SAMPLE_RATE_HZ

NATIVE_RATE_HZ = 22_050  # what espeak_Initialize reports for every eSpeak NG voice
RANDOM_SEED = 1  # breath-noise seed (eSpeak NG would otherwise seed it from the clock)
INT16_FULL_SCALE = 32_768.0
RATE_LIMITS_WPM = (80, 450)  # eSpeak NG's espeakRATE_MINIMUM .. espeakRATE_MAXIMUM
PITCH_LIMITS = (0, 100)
RANGE_LIMITS = (0, 100)
VOLUME_LIMITS = (0, 200)
WORD_GAP_LIMITS_10MS = (0, 1_000)  # up to 10 s between words
TRACT_SCALE_LIMITS = (0.5, 2.0)

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 0x1
_SSML = 0x10
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_CONTINUE = 0  # callback return value: keep synthesising

_LOCK = threading.Lock()
_PCM = bytearray()  # int16 little-endian samples of the call in progress (guarded by _LOCK)
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.c_void_p)


@_CALLBACK_TYPE
def _collect(wav, n_samples, events):
    """Synth callback: append ``n_samples`` int16 samples to :data:`_PCM` (``wav`` is NULL at the end)."""
    if n_samples > 0 and wav:
        _PCM.extend(ctypes.string_at(wav, n_samples * ctypes.sizeof(ctypes.c_short)))
    return _CONTINUE


@dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice and its prosody.

    name: language voice, optionally ``+variant`` (e.g. ``"en-us+f3"``; see :func:`list_voices`,
    :func:`list_variants`). rate_wpm: words per minute (80..450). pitch, pitch_range: 0..100
    (50 = the voice's own). volume: 0..200 (100 = normal). word_gap_10ms: extra pause between
    words, in units of 10 ms. tract_scale: plays the wave back this many times faster, which
    scales F0 and every formant together (a shorter vocal tract: > 1 sounds like a child, < 1 like
    a larger speaker); eSpeak NG is asked for ``rate_wpm / tract_scale`` so the speaking rate
    stays ``rate_wpm``.
    """

    name: str = "en-us"
    rate_wpm: int = 165
    pitch: int = 50
    pitch_range: int = 50
    volume: int = 100
    word_gap_10ms: int = 0
    tract_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_range("rate_wpm", self.rate_wpm, RATE_LIMITS_WPM)
        _check_range("pitch", self.pitch, PITCH_LIMITS)
        _check_range("pitch_range", self.pitch_range, RANGE_LIMITS)
        _check_range("volume", self.volume, VOLUME_LIMITS)
        _check_range("word_gap_10ms", self.word_gap_10ms, WORD_GAP_LIMITS_10MS)
        _check_range("tract_scale", self.tract_scale, TRACT_SCALE_LIMITS)
        _check_range("rate_wpm / tract_scale", self.espeak_rate_wpm, RATE_LIMITS_WPM)
        if not self.name or not self.name.strip():
            raise ValueError("voice name is empty")

    @property
    def espeak_rate_wpm(self) -> int:
        """The rate eSpeak NG synthesises at, before the tract-scale speed-up (words/min)."""
        return round(self.rate_wpm / self.tract_scale)

    @property
    def language(self) -> str:
        return self.name.split("+", 1)[0]

    @property
    def variant(self) -> str | None:
        return self.name.split("+", 1)[1] if "+" in self.name else None


def _check_range(field: str, value: float, limits: tuple[float, float]) -> None:
    low, high = limits
    if not low <= value <= high:
        raise ValueError(f"Voice.{field}={value} is outside [{low}, {high}]")


# ----------------------------------------------------------------------------------------------
# Locating and loading the library
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _locate() -> tuple[str, str]:
    """(library file, espeak-ng-data folder) from the espeakng-loader wheel; RuntimeError if missing."""
    try:
        import espeakng_loader
    except ImportError as err:
        raise RuntimeError("eSpeak NG is unavailable: tried `import espeakng_loader` "
                           "(pip install espeakng-loader)") from err
    library = espeakng_loader.get_library_path()
    try:
        data = espeakng_loader.get_data_path()
    except RuntimeError as err:
        raise RuntimeError(f"eSpeak NG data is unavailable: tried espeakng_loader.get_data_path() ({err})") from err
    if not Path(library).is_file():
        raise RuntimeError(f"eSpeak NG is unavailable: tried {library} (espeakng_loader.get_library_path())")
    return library, data


def _open_library(path: str) -> ctypes.CDLL:
    """Load a private instance of the library with the prototypes of the calls used here."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as err:
        raise RuntimeError(f"eSpeak NG could not be loaded: tried {path} ({err})") from err
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK_TYPE]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                 ctypes.c_void_p]
    return lib


def _close_library(lib: ctypes.CDLL) -> None:
    """Terminate and unload ``lib``, so that the next load starts from the library's initial state."""
    lib.espeak_Terminate()
    unload = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary
    unload(lib._handle)


@contextmanager
def _fresh_engine() -> Iterator[ctypes.CDLL]:
    """A freshly loaded and initialised library, unloaded on exit. Call with :data:`_LOCK` held."""
    library, data = _locate()
    lib = _open_library(library)
    try:
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INITIALIZE_DONT_EXIT)
        if rate != NATIVE_RATE_HZ:
            raise RuntimeError(f"eSpeak NG failed to initialise from {data} (espeak_Initialize "
                               f"returned {rate}, expected {NATIVE_RATE_HZ} Hz)")
        lib.espeak_ng_SetRandSeed(RANDOM_SEED)
        lib.espeak_SetSynthCallback(_collect)
        yield lib
    finally:
        _close_library(lib)


# ----------------------------------------------------------------------------------------------
# Voices
# ----------------------------------------------------------------------------------------------


def list_voices() -> list[str]:
    """Language voice names of the bundled data (e.g. ``"en-us"``), sorted; add ``+variant`` to vary."""
    lang_dir = Path(_locate()[1]) / "lang"
    return sorted({p.name.lower() for p in lang_dir.rglob("*") if p.is_file()})


def list_variants() -> list[str]:
    """Voice variant names of the bundled data (e.g. ``"f3"``, ``"m3"``), sorted."""
    variant_dir = Path(_locate()[1]) / "voices" / "!v"
    return sorted(p.name for p in variant_dir.iterdir() if p.is_file())


def _apply_voice(lib: ctypes.CDLL, voice: Voice) -> None:
    """Select ``voice`` and set its prosody; ValueError for an unknown voice or variant."""
    if voice.variant is not None and voice.variant not in list_variants():
        raise ValueError(f"unknown eSpeak NG voice variant {voice.variant!r} in {voice.name!r}")
    if lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
        raise ValueError(f"unknown eSpeak NG voice {voice.name!r} (see list_voices())")
    for param, value in ((_PARAM_RATE, voice.espeak_rate_wpm), (_PARAM_VOLUME, voice.volume),
                         (_PARAM_PITCH, voice.pitch), (_PARAM_RANGE, voice.pitch_range),
                         (_PARAM_WORDGAP, voice.word_gap_10ms)):
        if lib.espeak_SetParameter(param, value, 0) != _EE_OK:
            raise RuntimeError(f"eSpeak NG rejected parameter {param}={value}")


# ----------------------------------------------------------------------------------------------
# Synthesis
# ----------------------------------------------------------------------------------------------


def _speak(lib: ctypes.CDLL, text: str, ssml: bool) -> np.ndarray:
    """Synthesise ``text`` with the voice already set; int16 samples (N,) at NATIVE_RATE_HZ."""
    encoded = text.encode("utf-8")
    flags = _CHARS_UTF8 | (_SSML if ssml else 0)
    _PCM.clear()
    status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, flags, None, None)
    if status != _EE_OK or lib.espeak_Synchronize() != _EE_OK:
        raise RuntimeError(f"eSpeak NG failed to synthesise {text[:40]!r} (status {status})")
    samples = np.frombuffer(bytes(_PCM), dtype="<i2").copy()
    _PCM.clear()
    return samples


def synthesize_native(text: str, voice: Voice = Voice(), *, ssml: bool = False) -> np.ndarray:
    """Raw eSpeak NG output: int16 mono samples (N,) at NATIVE_RATE_HZ, before ``voice.tract_scale``
    is applied (at ``voice.espeak_rate_wpm``). See :func:`synthesize`."""
    if not text or not text.strip():
        raise ValueError("cannot synthesise empty text")
    with _LOCK, _fresh_engine() as lib:
        _apply_voice(lib, voice)
        return _speak(lib, text, ssml)


def synthesize(text: str, voice: Voice = Voice(), sample_rate: int | None = SAMPLE_RATE_HZ, *,
               ssml: bool = False) -> np.ndarray:
    """Speak ``text`` with ``voice``: float32 mono wave (N,) in [-1, 1] at ``sample_rate`` Hz.

    ``sample_rate=None`` keeps eSpeak NG's native NATIVE_RATE_HZ. ``ssml=True`` interprets SSML
    markup (``<prosody>``, ``<break time="300ms"/>``, ...). Deterministic. ValueError for empty text
    or an unknown voice; RuntimeError if the library cannot be loaded (naming what was tried).
    """
    wave = synthesize_native(text, voice, ssml=ssml).astype(np.float32) / INT16_FULL_SCALE
    played_at_hz = NATIVE_RATE_HZ * voice.tract_scale  # > native: faster, higher F0 and formants
    target_hz = NATIVE_RATE_HZ if sample_rate is None else sample_rate
    if played_at_hz != target_hz and wave.size:
        wave = librosa.resample(wave, orig_sr=played_at_hz, target_sr=target_hz, res_type=RESAMPLE_TYPE)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)
