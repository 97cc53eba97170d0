"""The ipywidgets view over :class:`echat.app.controller.Controller`: input, controls, streamed output, attention,
A/B and multi-turn chat, in one widget tree.

Design choices:
- Thin: every decision is the controller's; this file builds widgets, reads them into :class:`Settings` and
  writes results back through :mod:`echat.app.render`.
- Long actions (run, A/B, chat turn, loading a model) run in one worker thread, so the kernel stays free, the
  status line counts the tokens as they stream and Stop interrupts the generation
  (``stream(..., interrupt=event)``); one action at a time. Any error in an action is one line in the
  ``echat-error`` box, never a traceback.
- Pictures are PNG bytes in ``Image`` widgets (no Output widget), which a worker thread may update.
- The DOM hooks (``add_class``) are the contract the browser tests use: ``echat-sample``, ``echat-run``,
  ``echat-source``, ``echat-input-info``, ``echat-think``, ``echat-reply``, ``echat-reply-audio``,
  ``echat-error``, ``echat-attention`` (and the recorder's own ``echat-record``).
- ``sections`` picks the parts a notebook shows (e.g. 05: input, output, attention; 07: input, compare).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import ipywidgets as w

from echat.app.attention import attention_figure
from echat.app.controller import DECODINGS, TASK_NAMES, Controller, RunResult, Settings
from echat.app.inputs import (
    FILTER_FIELDS,
    AppError,
    Clip,
    filter_samples,
    filter_values,
    recorded_clip,
    sample_clip,
    upload_clip,
)
from echat.app.recorder import Recorder
from echat.app.render import (
    audio_html,
    clip_figure,
    error_html,
    png_bytes,
    reply_html,
    split_streamed,
    think_html,
    timings_html,
)
from echat.config import ThinkMode

SECTIONS = ("input", "controls", "output", "attention", "compare", "chat")
SOURCES = ("sample", "upload", "microphone")
THINK_MODES = tuple(mode.value for mode in ThinkMode)


def hooked(widget: w.DOMWidget, css_class: str) -> w.DOMWidget:
    """``widget`` with the DOM class the browser tests find it by."""
    widget.add_class(css_class)
    return widget


class RunPanel:
    """Think, reply, reply audio and timings of one run, updated as it streams."""

    def __init__(self, hooks: bool = True):
        def box(css: str) -> w.HTML:
            return hooked(w.HTML(), css) if hooks else w.HTML()

        self.think, self.reply, self.audio = box("echat-think"), box("echat-reply"), box("echat-reply-audio")
        self.timings, self.raw = w.HTML(), ""
        self.widget = w.VBox([self.think, self.reply, self.audio, self.timings])

    def clear(self) -> None:
        self.raw = ""
        for part in (self.think, self.reply, self.audio, self.timings):
            part.value = ""

    def push(self, piece: str) -> None:
        """One streamed text piece."""
        self.raw += piece
        body, reply = split_streamed(self.raw)
        self.think.value = think_html(body) if body is not None else ""
        self.reply.value = reply_html(reply)

    def show(self, run: RunResult, prompt_set: str) -> None:
        """The finished run (its parsed think and reply, its audio, timings and warnings)."""
        result = run.result
        self.think.value = think_html(result.think, prompt_set)
        self.reply.value = reply_html(result.text or result.raw_text)
        self.audio.value = audio_html(result.audio, run.sample_rate)
        notes = "".join(f"<br><small>note: {n}</small>" for n in run.notes)
        stopped = "<br><small>stopped before its end</small>" if result.interrupted else ""
        self.timings.value = timings_html(run.timings()) + notes + stopped


class App:
    """The app's widget tree (``widget``) over a controller; ``samples`` are the corpus's test clips."""

    def __init__(self, controller: Controller, samples=(), settings: Settings | None = None, model_b=None,
                 think_b: str = "language", sections=SECTIONS):
        settings = settings or Settings()
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise AppError(f"unknown app sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
        self.controller, self.samples, self.model_b = controller, list(samples), model_b
        self.path_b_loaded = ""  # the path model_b was loaded from in the app (empty: given, or none)
        self.clips: dict[str, Clip | None] = dict.fromkeys(SOURCES)
        self.last: RunResult | None = None
        self.attention_map = None
        self.worker: threading.Thread | None = None
        self.interrupt = threading.Event()
        self.error, self.status = hooked(w.HTML(), "echat-error"), w.HTML()
        self._build_input()
        self._build_controls(settings, think_b)
        self._build_output()
        self._build_compare()
        self._build_chat()
        parts = {"input": self.input_box, "controls": self.controls_box, "output": self.output_box,
                 "attention": self.attention_box, "compare": self.compare_box, "chat": self.chat_box}
        self.widget = w.VBox([parts[s] for s in sections] + [self.status, self.error])
        if self.samples:
            self._pick_sample()

    # -- building ------------------------------------------------------------------------------
    def _build_input(self) -> None:
        self.source = hooked(w.ToggleButtons(options=SOURCES, description="input"), "echat-source")
        choices = filter_values(self.samples)
        self.filters = {name: w.Dropdown(options=choices[name], description=name, layout=w.Layout(width="190px"))
                        for name in FILTER_FIELDS}
        self.sample = hooked(w.Dropdown(description="sample", layout=w.Layout(width="640px")), "echat-sample")
        self._refill_samples()
        self.upload = w.FileUpload(accept=",".join((".wav", ".flac", ".ogg")), multiple=False)
        self.recorder = Recorder()
        self.text = w.Textarea(placeholder="TTS: words to speak · T2T: a question · ASR tasks: an instruction "
                                           "(optional)", layout=w.Layout(width="640px"))
        self.info, self.picture = hooked(w.HTML(), "echat-input-info"), w.Image(format="png")
        self.input_audio = w.HTML()
        for dropdown in self.filters.values():
            dropdown.observe(lambda _: self._refill_samples(), "value")
        self.sample.observe(lambda _: self._guard(self._pick_sample), "value")
        self.upload.observe(lambda _: self._guard(self._uploaded), "value")
        self.recorder.on_recorded(lambda wave: self._guard(lambda: self._recorded(wave)))
        self.source.observe(lambda _: self._show_input(), "value")
        self.input_box = w.VBox([self.source, w.HBox(list(self.filters.values())), self.sample,
                                 w.HBox([self.upload, self.recorder]), self.text, self.info, self.input_audio,
                                 self.picture])

    def _build_controls(self, settings: Settings, think_b: str) -> None:
        self.task = w.Dropdown(options=TASK_NAMES, value=settings.task, description="task")
        self.think_mode = w.ToggleButtons(options=THINK_MODES, value=settings.think, description="think")
        self.decoding = w.Dropdown(options=DECODINGS, value=settings.decoding, description="decoding")
        self.temperature = w.FloatSlider(value=settings.temperature, min=0.1, max=2.0, step=0.05,
                                         description="temperature")
        self.top_p = w.FloatSlider(value=settings.top_p, min=0.05, max=1.0, step=0.05, description="top-p")
        self.seed = w.IntText(value=settings.seed if settings.seed is not None else 0, description="seed")
        self.max_text = w.IntText(value=settings.max_new_tokens, description="text tokens")
        self.max_speech = w.IntText(value=settings.max_speech_tokens, description="speech tokens")
        self.run_path = w.Text(placeholder="run folder or checkpoint", description="model",
                               layout=w.Layout(width="520px"))
        self.load_button = w.Button(description="Load")
        self.load_button.on_click(lambda _: self._start(self._load))
        self.think_b = w.ToggleButtons(options=THINK_MODES, value=think_b, description="B think")
        self.controls_box = w.VBox([w.HBox([self.task, self.decoding]), self.think_mode,
                                    w.HBox([self.temperature, self.top_p, self.seed]),
                                    w.HBox([self.max_text, self.max_speech]),
                                    w.HBox([self.run_path, self.load_button])])

    def _build_output(self) -> None:
        self.run_button = hooked(w.Button(description="Run", button_style="primary"), "echat-run")
        self.stop_button = w.Button(description="Stop")
        self.run_button.on_click(lambda _: self._start(self.run_now))
        self.stop_button.on_click(lambda _: self.interrupt.set())
        self.panel = RunPanel()
        self.output_box = w.VBox([w.HBox([self.run_button, self.stop_button]), self.panel.widget])
        self.layer = w.Dropdown(description="layer", options=[("mean of layers", None)])
        self.layer.observe(lambda _: self._guard(self._draw_attention), "value")
        self.attention = hooked(w.Image(format="png"), "echat-attention")
        self.attention_note = w.HTML()
        self.attention_box = w.VBox([w.HTML("<b>Did it listen?</b> attention of each answer token onto the audio"),
                                     self.layer, self.attention_note, self.attention])

    def _build_compare(self) -> None:
        self.compare_button = w.Button(description="Compare A | B")
        self.compare_button.on_click(lambda _: self._start(self.compare_now))
        self.path_b = w.Text(placeholder="B's run folder or checkpoint (empty: the same model)", description="B model",
                             layout=w.Layout(width="520px"))
        self.sides = {"A": RunPanel(hooks=False), "B": RunPanel(hooks=False)}
        self.compare_box = w.VBox([w.HBox([self.compare_button, self.think_b]), self.path_b,
                                   w.HBox([w.VBox([w.HTML(f"<b>{name}</b>"), side.widget],
                                                  layout=w.Layout(width="50%")) for name, side in self.sides.items()])])

    def _build_chat(self) -> None:
        self.say_button, self.reset_button = w.Button(description="Say (next turn)"), w.Button(description="Reset")
        self.say_button.on_click(lambda _: self._start(self.say_now))
        self.reset_button.on_click(lambda _: self._guard(self.reset_chat))
        self.history = w.VBox()
        self.chat_box = w.VBox([w.HTML("<b>Chat</b> (history in the training layout)"),
                                w.HBox([self.say_button, self.reset_button]), self.history])

    # -- reading the widgets -------------------------------------------------------------------
    def settings(self, think: str | None = None) -> Settings:
        """The controls as :class:`Settings` (``think`` overrides the think mode, for B)."""
        return Settings(task=self.task.value, think=think or self.think_mode.value, decoding=self.decoding.value,
                        temperature=self.temperature.value, top_p=self.top_p.value, seed=self.seed.value,
                        max_new_tokens=self.max_text.value, max_speech_tokens=self.max_speech.value)

    def clip(self) -> Clip | None:
        """The clip of the chosen source (None if that source has none yet)."""
        return self.clips[self.source.value]

    # -- inputs --------------------------------------------------------------------------------
    def _refill_samples(self) -> None:
        wanted = {name: box.value for name, box in self.filters.items()}
        kept = {r.key for r in filter_samples(self.samples, **wanted)}
        options = [(f"{r.key} · {r.extra.get('q_txt', '')}"[:90], i) for i, r in enumerate(self.samples)
                   if r.key in kept]
        self.sample.options = options
        self.sample.value = options[0][1] if options else None  # the first clip that matches

    def _pick_sample(self) -> None:
        if self.sample.value is None:
            return
        self.clips["sample"] = sample_clip(self.samples[self.sample.value])
        self.source.value = "sample"
        self._show_input()

    def _uploaded(self) -> None:
        if not self.upload.value:
            return
        file = self.upload.value[0]
        self.clips["upload"] = upload_clip(file["name"], file["content"])
        self.source.value = "upload"
        self._show_input()

    def _recorded(self, wave) -> None:
        self.clips["microphone"] = recorded_clip(wave)
        self.source.value = "microphone"
        self._show_input()

    def _show_input(self) -> None:
        clip = self.clip()
        if clip is None:
            self.info.value = f"<i>no {self.source.value} clip yet</i>"
            self.input_audio.value, self.picture.value = "", b""
            return
        self.info.value = clip.summary()
        self.input_audio.value = audio_html(clip.wave)
        self.picture.value = png_bytes(clip_figure(clip.wave, clip.summary()))

    # -- actions -------------------------------------------------------------------------------
    def _guard(self, action: Callable[[], None]) -> None:
        """Run ``action``; an error becomes one line in the error box."""
        self.error.value = ""
        try:
            action()
        except Exception as err:  # every error is shown in the app as one line, never a traceback
            self.error.value = error_html(str(err) if isinstance(err, AppError) else f"{type(err).__name__}: {err}")
            self.status.value = ""

    def _start(self, action: Callable[[], None]) -> None:
        """Run ``action`` in the worker thread (one at a time)."""
        if self.busy:
            self.error.value = error_html("busy: wait for the current action to finish, or press Stop")
            return
        self.interrupt = threading.Event()
        self.worker = threading.Thread(target=self._guard, args=(action,), daemon=True)
        self.worker.start()

    @property
    def busy(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the worker's action is over (for tests and notebooks)."""
        if self.worker is not None:
            self.worker.join(timeout)

    def _streamer(self, panel: RunPanel, label: str = ""):
        counts = {"text": 0, "speech": 0}

        def on_event(event) -> None:
            if event.kind == "text":
                panel.push(event.text)
            if event.kind in counts:
                counts[event.kind] += 1 if event.kind == "text" else len(event.tokens)
                self.status.value = f"{label}generating… {counts['text']} text pieces, {counts['speech']} speech codes"
        return on_event

    def _model_b(self):
        path = self.path_b.value.strip()
        if path and self.path_b_loaded != path:
            self.status.value = f"loading B from {path}…"
            self.model_b, self.path_b_loaded = self.controller.load(path), path
        return self.model_b

    def run_now(self) -> None:
        """Run the chosen task on the chosen input; show it streaming, then its audio, timings and attention."""
        self.panel.clear()
        run = self.controller.run(self.clip(), self.text.value, self.settings(), self._streamer(self.panel),
                                  interrupt=self.interrupt)
        self._finish(run, self.panel)

    def _finish(self, run: RunResult, panel: RunPanel) -> None:
        self.last = run
        panel.show(run, run.model.config.text.prompt_set)
        self.status.value = f"done in {run.wall_s:.2f} s"
        self._inspect(run)

    def _inspect(self, run: RunResult) -> None:
        self.attention_map, self.attention.value = None, b""
        if run.clip is None or not run.result.text_ids:
            self.attention_note.value = "<i>no attention picture: this run has no input audio or no text answer</i>"
            return
        self.status.value += " · reading the attention…"
        self.attention_map = self.controller.attention(run)
        layers = self.attention_map.weights.shape[0]
        self.layer.options = [("mean of layers", None), *((f"layer {i}", i) for i in range(layers))]
        self._draw_attention()
        self.status.value = f"done in {run.wall_s:.2f} s"

    def _draw_attention(self) -> None:
        if self.attention_map is None:
            return
        amap = self.attention_map
        fig = attention_figure(amap, self.layer.value)
        self.attention.value = png_bytes(fig)
        self.attention_note.value = (f"<small>{len(amap.tokens)} answer tokens × {amap.weights.shape[2]} audio "
                                     "positions; one column = 80 ms of log-mel</small>")

    def compare_now(self) -> None:
        """A: the controls; B: the same with B's think mode (and B's model, if one is given)."""
        for side in self.sides.values():
            side.clear()
        model_b = self._model_b()
        streams = {name: self._streamer(side, f"{name}: ") for name, side in self.sides.items()}
        runs = self.controller.compare(self.clip(), self.text.value, self.settings(),
                                       self.settings(think=self.think_b.value), model_b=model_b,
                                       on_event=lambda name, event: streams[name](event))
        for name, run in zip(self.sides, runs):
            self.sides[name].show(run, run.model.config.text.prompt_set)
        self.status.value = f"A {runs[0].wall_s:.2f} s · B {runs[1].wall_s:.2f} s"

    def say_now(self) -> None:
        """One chat turn on the chosen input, added to the history below."""
        self.panel.clear()
        run = self.controller.say(self.clip(), self.settings(), self._streamer(self.panel), self.interrupt)
        self._finish(run, self.panel)
        self._add_turn(len(self.controller.chat_runs) - 1, run)

    def _add_turn(self, index: int, run: RunResult) -> None:
        again = w.Button(description=f"run turn {index + 1} again", layout=w.Layout(width="180px"))
        again.on_click(lambda _: self._start(lambda: self.replay_now(index)))
        said = run.clip.summary() if run.clip is not None else ""
        row = w.HTML(f"<b>turn {index + 1}</b> · {said}<br>{reply_html(run.result.text)}"
                     f"{audio_html(run.result.audio, run.sample_rate)}")
        self.history.children = (*self.history.children, w.HBox([again, row]))

    def replay_now(self, index: int) -> None:
        """Turn ``index`` run again from its own history, shown in the main output."""
        self.panel.clear()
        run = self.controller.replay(index, self.settings(), self._streamer(self.panel, f"turn {index + 1}: "))
        self._finish(run, self.panel)

    def reset_chat(self) -> None:
        self.controller.reset()
        self.history.children = ()
        self.status.value = "chat history cleared"

    def _load(self) -> None:
        path = self.run_path.value.strip()
        if not path:
            raise AppError("type a run folder or checkpoint path first")
        self.status.value = f"loading {path}…"
        self.controller.use(self.controller.load(path))
        self.history.children = ()
        self.status.value = f"loaded {path}"

    def __repr__(self) -> str:
        model = getattr(self.controller.model, "config", None)
        return f"<echat app: {model.name if model else 'no'} model, {len(self.samples)} samples>"
