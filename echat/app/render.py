"""What the app shows, as HTML strings and PNG bytes (no widgets here): the think block with its fields
highlighted, the streamed reply, an audio player, the timings, the input's waveform and log-mel.

Everything is a pure function of its arguments, so the view stays thin and the tests read plain strings.
"""

from __future__ import annotations

import html
import io
import textwrap

import numpy as np

from echat.audio import FRAME_RATE_HZ, SAMPLE_RATE_HZ, log_mel
from echat.prompts import parse_tag_think
from echat.tokens import THINK_CLOSE, THINK_OPEN

FIELD_COLOURS = {"transcript": "#e3f2fd", "age": "#fff3e0", "gender": "#f3e5f5", "emotion": "#ffebee",
                 "event": "#e8f5e9", "reply_emotion": "#fffde7"}
PNG_DPI = 80
TITLE_CHARS = 110  # a clip picture's title is shortened to this many characters (it spans the figure)


def split_streamed(raw: str) -> tuple[str | None, str]:
    """A text phase streamed so far -> (think body so far or None, reply so far): the think opens with
    ``<think>`` and lasts until ``<think end>``; before the marker is complete nothing is a reply."""
    if not raw.startswith(THINK_OPEN):
        return (None, "") if THINK_OPEN.startswith(raw) and raw else (None, raw)
    body, closed, reply = raw[len(THINK_OPEN):].partition(THINK_CLOSE)
    return (body, reply) if closed else (body, "")


def think_html(body: str | None, prompt_set: str = "mini") -> str:
    """The think block; a tag think's fields (:func:`echat.prompts.parse_tag_think`) highlighted by field."""
    if body is None:
        return "<i>no think</i>"
    fields = parse_tag_think(body, prompt_set)
    text = html.escape(body)
    for name, value in fields.items():
        if value:
            mark = f"<mark title='{name}' style='background:{FIELD_COLOURS.get(name, '#eee')}'>"
            text = text.replace(html.escape(value), f"{mark}{html.escape(value)}</mark>", 1)
    return f"<div><b>think</b> ({'tag' if fields else 'free text'})<br>{text}</div>"


def reply_html(reply: str) -> str:
    return f"<div><b>reply</b><br>{html.escape(reply)}</div>"


def audio_html(wave: np.ndarray | None, rate: int = SAMPLE_RATE_HZ) -> str:
    """An ``<audio controls src="data:audio/wav;base64,...">`` player of ``wave`` (N,) (or a note)."""
    from IPython.display import Audio

    if wave is None or np.asarray(wave).size == 0:
        return "<i>no reply audio</i>"
    src = Audio(np.clip(np.asarray(wave, dtype=np.float32), -1, 1), rate=rate, normalize=False).src_attr()
    return f"<audio controls src='{src}'></audio> <span>{wave.shape[0] / rate:.2f} s</span>"


def timings_html(timings: dict[str, float | None]) -> str:
    """One line of the run's timings; a missing one reads "-"."""
    cells = [f"{name}: {'-' if value is None else f'{value:.3f}'}" for name, value in timings.items()]
    return "<small>" + " · ".join(cells) + "</small>"


def error_html(message: str) -> str:
    """One line in red (the first line of ``message``)."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    return f"<span style='color:#b00020'>{html.escape(line)}</span>" if line else ""


def png_bytes(fig) -> bytes:
    """A matplotlib Figure as PNG bytes (for an ipywidgets Image)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


def clip_figure(wave: np.ndarray, title: str = ""):
    """The input's waveform above its log-mel (the model's own front end), on one time axis in seconds."""
    from matplotlib.figure import Figure

    feats = log_mel(wave).numpy()  # (T, n_mels) at FRAME_RATE_HZ
    fig = Figure(figsize=(10, 2.8), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(np.arange(wave.shape[0]) / SAMPLE_RATE_HZ, wave, linewidth=0.5)
    top.set(ylabel="wave")
    top.set_title(textwrap.shorten(title, TITLE_CHARS, placeholder=" …"), fontsize=9)
    extent = (0, feats.shape[0] / FRAME_RATE_HZ, 0, feats.shape[1])
    bottom.imshow(feats.T, origin="lower", aspect="auto", cmap="magma", extent=extent)
    bottom.set(xlabel="time (s)", ylabel="mel bin")
    return fig
