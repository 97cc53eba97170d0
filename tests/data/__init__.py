"""Tests of ``echat.data``, with the synthetic audio helpers its modules share."""

from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE_HZ = 16_000


def tone(seconds: float, rate: int = SAMPLE_RATE_HZ, f0: float = 220.0) -> np.ndarray:
    """A short harmonic tone (3 partials, smooth fade in/out), float32 ``(N,)`` in [-0.6, 0.6]."""
    t = np.arange(round(seconds * rate)) / rate
    wave = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in (1, 2, 3))
    fade = np.minimum(1.0, np.minimum(t, t.size / rate - t) / 0.01)
    return (wave * fade).astype(np.float32)


def write_tone(path: Path, seconds: float = 0.5, *, rate: int = SAMPLE_RATE_HZ, channels: int = 1,
               subtype: str = "PCM_16", f0: float = 220.0) -> Path:
    """Write :func:`tone` to ``path`` (``channels`` identical channels); returns the path."""
    wave = tone(seconds, rate, f0)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate, subtype=subtype)
    return path
