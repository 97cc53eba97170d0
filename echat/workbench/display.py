"""What the notebooks show: :class:`Rendered` carries a plain-text and an HTML form of the same view
(notebooks show the HTML, ``print`` shows the text); :func:`table`, :func:`preset_table`,
:func:`module_table`, :func:`layout_view`, :func:`example_strip`, :func:`category_counts`,
:func:`batch_table` and :func:`audio_grid` build them; :func:`parameter_counts` counts a model's
parameters; :func:`speech_token_plot` and :func:`confusion_grid` draw figures for the training-stage
notebooks. matplotlib and IPython are imported inside the functions that draw or play.
"""

from __future__ import annotations

import ast
import html
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echat.audio import SAMPLE_RATE_HZ, num_frames
from echat.config import preset
from echat.data.speech_tokens import TOKEN_RATE_HZ
from echat.eval.metrics import plot_confusion
from echat.eval.report import confusion_tables
from echat.tokens import IGNORE_INDEX, Stream

PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Rendered:
    """One view in two forms: notebooks display ``html``; ``print`` and ``repr`` give ``text``."""

    text: str
    html: str

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text


def table(header: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "") -> Rendered:
    """A table as aligned text columns and as an HTML table (no pandas needed)."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    def cell(tag: str, content: str) -> str:
        return f"<{tag} style='text-align:left;padding:2px 10px'>{html.escape(content)}</{tag}>"

    text = "\n".join([*([caption] if caption else []), line(header), line(["-" * w for w in widths]),
                      *map(line, rows)])
    body = "".join("<tr>" + "".join(cell("td", c) for c in r) + "</tr>" for r in rows)
    head = "<tr>" + "".join(cell("th", str(h)) for h in header) + "</tr>"
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return Rendered(text, f"<table>{cap}{head}{body}</table>")


def preset_table(names: Sequence[str] = ("smoke", "mini", "osum-echat")) -> Rendered:
    """The presets side by side: component sizes read from each config."""
    configs = [preset(n) for n in names]
    rows = [
        ("world", lambda c: c.world),
        ("encoder d_model × layers", lambda c: f"{c.encoder.d_model} × {c.encoder.n_layers}"),
        ("encoder heads / ffn", lambda c: f"{c.encoder.n_heads} / {c.encoder.ffn_dim}"),
        ("adapter d_model × layers", lambda c: f"{c.adapter.d_model} × {c.adapter.n_layers}"),
        ("adapter downsampling", lambda c: f"×{c.adapter.downsample_rate} (strides "
                                           f"{'·'.join(map(str, c.adapter.conv_strides))})"),
        ("LLM hidden × layers", lambda c: f"{c.llm.hidden_size} × {c.llm.n_layers}"),
        ("LLM heads (kv) / ffn",
         lambda c: f"{c.llm.n_heads} ({c.llm.n_kv_heads}) / {c.llm.intermediate_size}"),
        ("LLM weights", lambda c: c.llm.pretrained or "trained here"),
        ("text vocab rows", lambda c: f"{c.llm.vocab_size:,}"),
        ("text tokenizer", lambda c: c.text.tokenizer),
        ("prompt set", lambda c: c.text.prompt_set),
        ("speech codebook", lambda c: f"{c.speech.codebook_size:,} ({c.speech.tokenizer})"),
        ("speech ids: boundary, BOS, EOS", lambda c: f"{c.speech.boundary_id}, {c.speech.audio_bos_id}, "
                                                     f"{c.speech.audio_eos_id}"),
        ("max clip length", lambda c: f"{c.audio.max_seconds:g} s"),
    ]
    return table(["", *names], [[label, *(get(c) for c in configs)] for label, get in rows])


def module_table(package_dir: Path = PACKAGE_DIR) -> Rendered:
    """Every module of the package with the first line of its docstring (read, not imported)."""
    rows = []
    for path in sorted(package_dir.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except SyntaxError:
            doc = "(being written)"
        name = ".".join(path.relative_to(package_dir.parent).with_suffix("").parts).removesuffix(".__init__")
        rows.append([name, doc.strip().splitlines()[0] if doc.strip() else ""])
    return table(["module", "what it holds"], rows)


def raw_record(line: str, max_list: int = 10) -> str:
    """One manifest line as readable text: a field per line, ``extra`` spread out, long lists cut."""

    def short(value: object) -> str:
        if isinstance(value, list) and len(value) > max_list:
            return json.dumps(value[:max_list])[:-1] + f", … ({len(value)} in all)]"
        return json.dumps(value, ensure_ascii=False)

    lines = []
    for name, value in json.loads(line).items():
        if name == "extra" and isinstance(value, dict):
            lines += ["extra:", *(f"  {k}: {short(v)}" for k, v in value.items())]
        else:
            lines.append(f"{name}: {short(value)}")
    return "\n".join(lines)


# --- layouts and what the loss sees ------------------------------------------------------------

STYLES = {  # category -> (background colour, legend)
    "prompt": ("#e8e8e8", "prompt text (no loss)"),
    "audio": ("#cfe2ff", "audio: encoder frames after the adapter"),
    "speech_in": ("#e2d9f3", "speech ids in the input (audio BOS/EOS, history speech)"),
    "text_target": ("#b7ebc0", "text target (loss)"),
    "speech_target": ("#ffd8a8", "speech target (loss)"),
    "excluded": ("#f8c0c0", "&& of <&&>: inside the target, excluded from the loss"),
}
_MARKS = {"text_target": ("⟦", "⟧"), "speech_target": ("⟦", "⟧"), "audio": ("", ""),
          "speech_in": ("", ""), "prompt": ("", ""), "excluded": ("{", "}")}


def _span(text: str, category: str, title: str = "") -> str:
    colour = STYLES[category][0]
    weight = "bold" if category.endswith("target") else "normal"
    tip = f" title='{html.escape(title)}'" if title else ""
    return (f"<span style='background:{colour};font-weight:{weight};border-radius:3px;padding:0 2px;"
            f"margin:1px'{tip}>{html.escape(text)}</span>")


def _legend(categories: Iterable[str]) -> str:
    return " ".join(_span(STYLES[c][1], c) for c in STYLES if c in set(categories))


def _pre(inner: str) -> str:
    return f"<div style='font-family:monospace;white-space:pre-wrap;line-height:1.7'>{inner}</div>"


def _speech_text(tokens: Sequence[int], boundary: int, limit: int = 12) -> str:
    shown = ["B" if t == boundary else f"s{t}" for t in tokens[:limit]]
    more = f" … ({len(tokens)} ids)" if len(tokens) > limit else ""
    return "[SPEECH " + " ".join(shown) + more + "]"


def layout_view(segments, positions: Sequence[int] = (), boundary: int | None = None) -> Rendered:
    """A task layout (list of :class:`~echat.prompts.Segment`) as a marked string.

    Audio segments read ``[AUDIO clip k ×n positions]`` (``positions[k]`` LLM positions, when given,
    plus the audio BOS/EOS); speech reads ``[SPEECH B s1 s2 … B]`` (``B`` = ``boundary``); loss-bearing
    parts are bold and coloured in HTML, and wrapped in ``⟦ ⟧`` in text.
    """
    pieces = []
    for seg in segments:
        if seg.kind == "text":
            piece = seg.text.replace("\n", "⏎\n")
        elif seg.kind == "audio":
            n = f" ×{positions[seg.clip]} positions" if seg.clip < len(positions) else ""
            piece = f"[AUDIO clip {seg.clip}{n}]"
        else:
            piece = _speech_text(seg.tokens, boundary if boundary is not None else -1)
        category = ("speech_target" if seg.kind == "speech" else "text_target") if seg.loss else (
            "audio" if seg.kind == "audio" else "speech_in" if seg.kind == "speech" else "prompt")
        pieces.append((piece, category))
    text = "".join(_MARKS[c][0] + p + _MARKS[c][1] for p, c in pieces)
    body = "".join(_span(p, c) for p, c in pieces)
    return Rendered(text, _pre(body) + _legend(c for _, c in pieces))


def clip_positions(sample, config) -> list[int]:
    """LLM positions of each clip of a :class:`~echat.data.pipeline.Sample` (history first, then current)."""
    clips = [*sample.history_audio, *([sample.audio] if sample.audio is not None else [])]
    return [config.llm_positions(num_frames(len(wave))) for wave in clips]


def position_categories(example, special) -> list[str]:
    """What each position of an encoded :class:`~echat.data.pipeline.Example` is for the loss (see STYLES)."""
    out = []
    for token, stream, label in zip(example.ids.tolist(), example.stream.tolist(), example.labels.tolist()):
        if stream == Stream.AUDIO:
            out.append("audio")
        elif label != IGNORE_INDEX:
            out.append("speech_target" if stream == Stream.SPEECH else "text_target")
        elif stream == Stream.SPEECH:
            out.append("speech_in")
        else:
            out.append("excluded" if token == special.unknown else "prompt")
    return out


def example_strip(example, tokenizer, special) -> Rendered:
    """Every position of an encoded example as a coloured strip: token pieces, audio runs, speech ids.

    Runs of audio positions are collapsed to one ``AUDIO ×n`` block; hovering a token shows its id,
    stream and label. In the text form tokens are separated by spaces and a space inside one reads ``·``.
    """
    categories = position_categories(example, special)
    ids, labels, streams = example.ids.tolist(), example.labels.tolist(), example.stream.tolist()
    spans, words, i = [], [], 0
    while i < len(ids):
        if categories[i] == "audio":
            j = i
            while j < len(ids) and categories[j] == "audio":
                j += 1
            piece, title, i = f"AUDIO ×{j - i}", f"positions {i}..{j - 1}", j
            category = "audio"
        else:
            piece = _piece(ids[i], streams[i], tokenizer, special)
            title = f"pos {i}: id {ids[i]}, stream {streams[i]}, label {labels[i]}"
            category, i = categories[i], i + 1
        spans.append(_span(piece, category, title))
        words.append(_MARKS[category][0] + piece.replace(" ", "·") + _MARKS[category][1])
    return Rendered(" ".join(words), _pre("".join(spans)) + _legend(categories))


def _piece(token: int, stream: int, tokenizer, special) -> str:
    """Readable form of one id: decoded text piece, or a speech id name."""
    if stream == Stream.SPEECH:
        names = {special.speech_boundary: "B", special.audio_bos: "<bos>", special.audio_eos: "<eos>"}
        return names.get(token, f"s{token}")
    return tokenizer.decode([token]).replace("\n", "⏎")


def category_counts(example, special) -> Rendered:
    """How many positions of an example fall in each category (prompt, audio, targets, ...)."""
    categories = position_categories(example, special)
    rows = [[c, categories.count(c), STYLES[c][1]] for c in STYLES if c in categories]
    return table(["category", "positions", "meaning"], rows + [["total", len(categories), ""]])


def batch_table(batches, kind_of: dict | None = None) -> Rendered:
    """One row per :class:`~echat.data.pipeline.Batch`: output type, rows, keys, tensor shapes, targets.

    With ``kind_of`` (record key -> output type) the last column checks that every row of a batch
    has the batch's output type.
    """
    rows = []
    for b in batches:
        same = "?" if kind_of is None else "yes" if all(kind_of[k] == b.kind for k in b.keys) else "NO"
        rows.append([b.kind.value, len(b.keys), ", ".join(b.keys), tuple(b.ids.shape), tuple(b.labels.shape),
                     tuple(b.feats.shape), int((b.labels != IGNORE_INDEX).sum()), same])
    header = ["output type", "rows", "keys", "ids", "labels", "feats", "loss positions", "all rows this type"]
    return table(header, rows)


# --- model anatomy -----------------------------------------------------------------------------


# the mini adapter's cue classifiers, token-pack blank and mixing scale
ADAPTER_REST = "adapter: cue classifiers and token pack"


def parameter_counts(model) -> dict[str, int]:
    """Parameters of each part of an :class:`~echat.models.echat.EChat`, every tensor counted once.

    Works on a meta-device model (shapes only). A tensor shared by two parts (the tied LLM head is the
    text embedding) counts in the first part only, so the tied head reads 0 and the values add up to
    the model's total. The adapter's parameters outside its three listed modules (the mini adapter's cue
    classifiers and token pack) are :data:`ADAPTER_REST`; any others ``other``.
    """
    llm = model.causal_lm
    parts = {
        "encoder": model.encoder,
        "adapter: downsampler": model.adapter.downsample,
        "adapter: transformer": model.adapter.transformer,
        "adapter: projection": model.adapter.proj,
        "LLM: text embedding": llm.get_input_embeddings(),
        "LLM: decoder layers": llm.model.layers,
        "LLM: final norm": llm.model.norm,
        "LLM: text head": llm.lm_head,
        "speech embedding": model.speech_embedding,
        "speech head": model.speech_head,
    }
    seen: set[int] = set()
    counts = {}
    rest = {ADAPTER_REST: model.adapter, "other": model}  # what the listed parts leave, when anything
    for name, module in [*parts.items(), *rest.items()]:
        fresh = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        counts[name] = sum(p.numel() for p in fresh)
    for name in rest:
        if not counts[name]:
            del counts[name]
    return counts


# --- audio -------------------------------------------------------------------------------------


def audio_grid(clips: Sequence[tuple[str, str, object]], columns: int = 3, rate: int = SAMPLE_RATE_HZ) -> Rendered:
    """Audio players in a compact HTML grid, one cell per ``(title, note, clip)``.

    ``clip`` is a file path (embedded as it is) or a float wave in [-1, 1] at ``rate`` Hz, embedded
    *without* peak normalisation, so that loudness (a cue in EChat-mini) stays audible. An empty wave
    (e.g. a model that produced no speech tokens) gets "(no audio)" instead of a player. The text form
    lists the titles and notes.
    """
    from IPython.display import Audio

    cells, lines = [], []
    for title, note, clip in clips:
        if isinstance(clip, str | Path):
            player = Audio(filename=str(clip)).src_attr()
        elif np.asarray(clip).size:
            player = Audio(np.clip(np.asarray(clip, dtype=np.float32), -1, 1), rate=rate, normalize=False).src_attr()
        else:
            player, note = None, f"{note} (no audio)".strip()
        audio = (f"<audio controls preload='none' style='width:100%;height:32px' src='{player}'></audio>"
                 if player else "")
        cells.append("<div style='border:1px solid #ddd;border-radius:4px;padding:4px 6px'>"
                     f"<b>{html.escape(title)}</b><div style='font-size:85%;color:#555'>{html.escape(note)}</div>"
                     f"{audio}</div>")
        lines.append(f"{title}: {note}" if note else title)
    style = f"display:grid;grid-template-columns:repeat({columns},minmax(0,1fr));gap:6px"
    return Rendered("\n".join(lines), f"<div style='{style}'>{''.join(cells)}</div>")


# --- training stages ---------------------------------------------------------------------------


def speech_token_plot(rows: Sequence[tuple[str, Sequence[int]]], codebook_size: int, rate_hz: float = TOKEN_RATE_HZ):
    """Speech-token sequences one above the other: code id over time (``rate_hz`` tokens per second).

    ``rows``: (title, token ids) pairs; ids at or above ``codebook_size`` (boundary / stop) are left out.
    Returns a matplotlib ``Figure`` (no pyplot state is touched).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 1.6 * max(1, len(rows)) + 0.4), layout="constrained")
    axes = fig.subplots(max(1, len(rows)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, tokens) in zip(axes, rows):
        ids = np.array([t for t in tokens if 0 <= t < codebook_size])  # (L,)
        ax.step(np.arange(len(ids)) / rate_hz, ids, where="post", lw=0.8)
        ax.set(ylim=(-1, codebook_size), ylabel="code")
        ax.set_title(f"{title}: {len(ids)} tokens, {len(ids) / rate_hz:.1f} s, {len(set(ids.tolist()))} distinct",
                     fontsize=9, loc="left")
    axes[-1].set_xlabel("time (s)")
    return fig



def confusion_grid(report: dict, columns: int = 4, panel: float = 4.2):
    """Every confusion matrix of a ``stage_eval`` report in one figure: a row per subset, a panel per
    field (rows = reference, columns = prediction, colour = share of the row). Returns a ``Figure``."""
    from matplotlib.figure import Figure

    tables = confusion_tables(report)
    per_subset = max(1, max((sum(t[0] == s for t in tables) for s in report["subsets"]), default=1))
    columns = min(columns, per_subset)
    rows = max(1, -(-len(tables) // columns))
    fig = Figure(figsize=(panel * columns, panel * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax, (subset, name, scores) in zip(axes, tables):
        plot_confusion(scores["confusion"], scores["labels"], f"{name}, {subset}: accuracy {scores['accuracy']:.2f}",
                       ax=ax)
    for ax in axes[len(tables):]:
        ax.set_visible(False)
    return fig
