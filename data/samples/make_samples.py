"""Regenerate the shipped sample clip ``hello.wav``: one EChat-mini user clip for README's Python example.

Run from the repository root: ``.venv/bin/python data/samples/make_samples.py [OUT_DIR]`` (default OUT_DIR:
this folder). The clip is rendered exactly as ``echat data mini`` renders a user clip (:mod:`echat.data.mini.voices`):
an adult woman, sad, sighing before she speaks, in the training speakers' prosody range.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from echat.data.mini.voices import SAMPLE_RATE_HZ, ClipRecipe, Speaker, render_clip

SEED = 7
HELLO = ClipRecipe(text="Hello. I finally finished the report.", speaker=Speaker("<FEMALE>", "<ADULT>", "f3"),
                   emotion="<SAD>", event="<SIGH>", event_position="before", zone="train", snr_db=None, seed=SEED)


def main(out: Path) -> Path:
    """Write ``out/hello.wav`` (16 kHz mono, 16-bit) and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "hello.wav"
    sf.write(path, np.asarray(render_clip(HELLO), dtype=np.float32), SAMPLE_RATE_HZ, subtype="PCM_16")
    return path


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent))
