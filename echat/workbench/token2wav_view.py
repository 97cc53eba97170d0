"""Notebook 08's helpers: which CosyVoice token2wav to show (the released folder, else a random smoke model, said
so), which ids to give it, and the figures of its inside (the flow's Euler steps, HiFT's f0 and NSF source).

Design choices:
- Never download: the released folder is used when ``flow.pt`` and ``hift.pt`` are there
  (``$ECHAT_HOME/OSUM-EChat/CosyVoice-300M-25Hz``, where ``echat download cosyvoice`` unpacks it, or a folder
  given); otherwise :meth:`CosyVoiceToken2Wav.random` at smoke size, and the note printed says the audio is
  not speech.
- Ids: EChat-mini's speech tokens are the mini codebook's, not CosyVoice's. With the released folder the reply's
  own audio is tokenised by ``speech_tokenizer_v1.onnx`` (the CosyVoice ids OSUM-EChat would speak); the random
  model takes the mini ids folded into its small vocabulary (meaningless either way: its weights are random).
- Figures are matplotlib, drawn here and returned, so the notebook cells stay a few lines.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from echat.audio import COSYVOICE_HOP_SAMPLES, COSYVOICE_RATE
from echat.hub import COSYVOICE_DIR, release_dir
from echat.token2wav.cosyvoice import FLOW_FILE, HIFT_FILE, CosyVoiceToken2Wav, Synthesis
from echat.token2wav.flow import cosine_time_schedule
from echat.token2wav.hift import HiFTConfig

FRAME_SECONDS = COSYVOICE_HOP_SAMPLES / COSYVOICE_RATE  # 11.6 ms per CosyVoice mel frame
SOURCE_ZOOM_SECONDS = 0.03  # the NSF source drawn over its first 30 ms of voicing
MEL_CMAP = "magma"
VOICED_HZ = HiFTConfig().voiced_threshold_hz  # HiFT's source has sines only above this f0
GLIDE_HZ = (120.0, 220.0)  # a rising pitch for :func:`glide_source`


def cosyvoice_folder(folder: str | Path = "") -> Path:
    """``folder``, or the released model's place under ``$ECHAT_HOME`` when empty."""
    return Path(folder) if str(folder) else release_dir() / COSYVOICE_DIR


def load_cosyvoice(folder: str | Path = "", seed: int = 0) -> tuple[CosyVoiceToken2Wav, str]:
    """The released token2wav when ``folder`` holds it, else a random smoke-size one; with a note saying which."""
    where = cosyvoice_folder(folder)
    if (where / FLOW_FILE).is_file() and (where / HIFT_FILE).is_file():
        return CosyVoiceToken2Wav.from_dir(where, seed=seed), f"CosyVoice-300M-25Hz from {where} (released weights)"
    note = (f"RANDOM WEIGHTS, smoke size: no {FLOW_FILE} / {HIFT_FILE} in {where}. The CosyVoice audio below is "
            "what an untrained flow and HiFT make (noise, not speech); the shapes, steps and signals are the real "
            "code's. `echat download cosyvoice` and `echat download prompt` fetch the released files (3.8 GB).")
    return CosyVoiceToken2Wav.random("smoke", seed=seed), note


def cosyvoice_ids(t2w: CosyVoiceToken2Wav, wave_16k: np.ndarray, mini_ids: np.ndarray) -> tuple[np.ndarray, str]:
    """Ids for ``t2w`` to speak a reply: its CosyVoice tokens when the tokenizer is loaded, else the mini ids
    folded into the random model's vocabulary. Returns ``(ids (T,), how they were made)``."""
    if t2w.prompt_encoder is not None:
        ids = t2w.prompt_encoder.speech_tokens(wave_16k)[0].numpy()
        return ids, f"{len(ids)} CosyVoice ids from speech_tokenizer_v1.onnx over the reply's audio"
    folded = np.asarray(mini_ids) % t2w.vocab_size
    return folded, f"{len(folded)} mini ids folded into the random model's {t2w.vocab_size} codes"


def mel_image(ax, mel: np.ndarray, seconds_per_frame: float, title: str, limits: tuple[float, float] | None = None):
    """Draw a mel ``(bins, frames)`` on ``ax`` against time in seconds."""
    low, high = limits or (float(mel.min()), float(mel.max()))
    ax.imshow(mel, origin="lower", aspect="auto", cmap=MEL_CMAP, vmin=low, vmax=high,
              extent=[0, mel.shape[1] * seconds_per_frame, 0, mel.shape[0]])
    ax.set(title=title, xlabel="time (s)")


def flow_steps_figure(synthesis: Synthesis, columns: int = 5):
    """The mel after each Euler step of the flow, at the step's time t (cosine schedule: small steps first)."""
    steps = synthesis.steps
    times = cosine_time_schedule(len(steps))[1:].tolist()
    rows = -(-len(steps) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.2 * rows), sharex=True, sharey=True,
                             squeeze=False)
    limits = (float(steps[-1].min()), float(steps[-1].max()))
    for index, ax in enumerate(axes.flat):
        if index >= len(steps):
            ax.axis("off")
            continue
        mel_image(ax, steps[index], FRAME_SECONDS, f"step {index + 1}: t = {times[index]:.3f}", limits)
    fig.tight_layout()
    return fig


def pitch_and_source_figure(synthesis: Synthesis):
    """HiFT's f0 per mel frame, the NSF source it drives (all of it, and 30 ms where voicing starts), the wave."""
    f0, source = synthesis.f0, synthesis.source
    voiced = np.flatnonzero(f0 > VOICED_HZ)
    start = int(voiced[0]) * COSYVOICE_HOP_SAMPLES if voiced.size else 0
    zoom = slice(start, start + int(SOURCE_ZOOM_SECONDS * COSYVOICE_RATE))
    where = "from the first voiced frame" if voiced.size else "(no frame voiced: noise only)"
    fig, (pitch, whole, close) = plt.subplots(1, 3, figsize=(15, 3))
    pitch.plot(np.arange(len(f0)) * FRAME_SECONDS, f0)
    pitch.set(title="predicted f0", xlabel="time (s)", ylabel="Hz")
    samples = np.arange(len(source)) / COSYVOICE_RATE
    whole.plot(samples, source, linewidth=0.3, label="source")
    whole.plot(samples, synthesis.wave, linewidth=0.3, alpha=0.7, label="wave")
    whole.set(title="NSF source and output wave", xlabel="time (s)")
    whole.legend(loc="upper right")
    close.plot(samples[zoom] * 1000, source[zoom])
    close.set(title=f"source, {SOURCE_ZOOM_SECONDS * 1000:.0f} ms {where}", xlabel="time (ms)")
    fig.tight_layout()
    return fig


def two_vocoders_figure(mini_mel: np.ndarray, cosy_mel: np.ndarray, mini_frame_seconds: float):
    """The mel each path vocodes: the mini codebook's log-mel ``(T, 80)`` and the flow's mel ``(80, M)``."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 3))
    mel_image(left, mini_mel.T, mini_frame_seconds, "mini: codebook centroids (16 kHz log-mel) → Griffin-Lim")
    mel_image(right, cosy_mel, FRAME_SECONDS, "CosyVoice: flow mel (22.05 kHz, natural log) → HiFT")
    left.set_ylabel("mel bin")
    fig.tight_layout()
    return fig



def glide_source(t2w: CosyVoiceToken2Wav, seconds: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """HiFT's NSF source for a pitch gliding from 120 to 220 Hz (a voiced contour whatever the weights):
    ``(f0 (M,) Hz, source (M * 256,))``."""
    frames = max(1, round(seconds / FRAME_SECONDS))
    f0 = torch.linspace(*GLIDE_HZ, frames, device=t2w.device)[None]  # (1, M)
    with torch.inference_mode():
        source = t2w.hift.source(f0, torch.Generator(t2w.device).manual_seed(seed))  # (1, M * 256)
    return f0[0].cpu().numpy(), source[0].cpu().numpy()
