"""The app's logic, without a browser: run a task on a clip with chosen settings, streamed; A/B; multi-turn chat.

Design choices:
- Every run goes through the model's own :func:`echat.models.generate.stream` (its text pieces, speech chunks
  and audio chunks reach an ``on_event`` callback as they come); nothing here decodes.
- Tasks are offered by the names a teacher uses (ASR, ASR+P, S2T, S2S, S2T/S2S with think, TTS, T2T) and map
  to the reference's task tags; the think tasks take the think mode (:func:`echat.tokens.task_for`).
- Decoding: the task's reference defaults (:func:`echat.prompts.default_options`), greedy, or sampling with a
  temperature and top-p; always seeded when a seed is given, so a run repeats.
- Multi-turn chat keeps its history in :class:`echat.models.generate.Conversation` (the training layout: reply
  text without think, speech codes); each turn can be run again from the history it had.
- Timings: time to the first text and speech token and tokens/s from the result; the real-time factor is the
  whole call's wall time (token2wav included) over the reply audio's duration.
- Full world: a model from a released ``.pt`` (:func:`echat.workbench.chat.load_chat_model`, also what Load does
  with a ``.pt`` path) speaks through the app's ``token2wav`` (the CosyVoice one), which voices every model that
  has no voice of its own; a mini checkpoint keeps its mini voice.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from echat.app.attention import AttentionMap, audio_attention
from echat.app.inputs import AppError, Clip
from echat.audio import SAMPLE_RATE_HZ
from echat.config import GenerationOptions, ThinkMode
from echat.eval.hearing import ASRP_TASK
from echat.models.generate import Conversation, GenerationResult, StreamEvent
from echat.prompts import default_options
from echat.tokens import S2TCHAT, TEXT2TEXT, TEXT2TOKEN, TRANSCRIBE, OutputType, output_type, task_for
from echat.workbench.chat import load_chat_model

FIXED_TASKS = {"ASR": TRANSCRIBE, "ASR+P": ASRP_TASK, "S2T": S2TCHAT, "S2S": task_for(True, ThinkMode.NONE),
               "TTS": TEXT2TOKEN, "T2T": TEXT2TEXT}
THINK_TASKS = {"S2T think": False, "S2S think": True}  # name -> speaks its reply
TASK_NAMES = ("ASR", "ASR+P", "S2T", "S2S", "S2T think", "S2S think", "TTS", "T2T")
DECODINGS = ("task default", "greedy", "sample")
TEXT_IN = (OutputType.TEXT, OutputType.T2T, OutputType.TTS)  # tasks that read the text box (an instruction,
# the question, the words to speak); the spoken chat tasks read only the clip
CHAT_KINDS = (OutputType.S2T_CHAT, OutputType.S2T_THINK, OutputType.S2S, OutputType.S2S_THINK)
EventCallback = Callable[[StreamEvent], None]


def task_tag(name: str, think: ThinkMode | str) -> str:
    """The task tag of a task name, e.g. ("S2S think", "tag") -> ``<S2TCHAT> <TEXT2TOKEN> <THINK>``."""
    if name in THINK_TASKS:
        if ThinkMode(think) is ThinkMode.NONE:
            raise AppError(f"{name} needs a think mode: choose tag or language")
        return task_for(THINK_TASKS[name], ThinkMode(think))
    if name not in FIXED_TASKS:
        raise AppError(f"unknown task {name!r}; one of {', '.join(TASK_NAMES)}")
    return FIXED_TASKS[name]


@dataclass(frozen=True)
class Settings:
    """One run's choices: task name, think mode, decoding and its limits."""

    task: str = "S2S think"
    think: str = "tag"
    decoding: str = "task default"  # one of DECODINGS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = 0
    max_new_tokens: int = 256  # text tokens
    max_speech_tokens: int = 750  # 30 s at 25 Hz

    def options(self, kind: OutputType) -> GenerationOptions:
        """The GenerationOptions of these settings for an output type."""
        if self.decoding not in DECODINGS:
            raise AppError(f"unknown decoding {self.decoding!r}; one of {', '.join(DECODINGS)}")
        base = default_options(kind)
        if self.decoding == "greedy":
            base = replace(base, do_sample=False)
        elif self.decoding == "sample":
            base = replace(base, do_sample=True, top_k=0, temperature=self.temperature, top_p=self.top_p)
        return replace(base, seed=self.seed, max_new_tokens=self.max_new_tokens,
                       max_speech_tokens=self.max_speech_tokens)


@dataclass
class RunResult:
    """One run: what was asked (clip, text, settings, task, history) and what came back."""

    settings: Settings
    task: str
    result: GenerationResult
    wall_s: float
    clip: Clip | None = None
    text: str = ""
    history: tuple = ()
    notes: list[str] = field(default_factory=list)  # warnings raised during the run, one line each
    sample_rate: int = SAMPLE_RATE_HZ  # of result.audio
    model: object = None  # the model that answered (the attention is read from it)

    @property
    def audio_s(self) -> float:
        audio = self.result.audio
        return 0.0 if audio is None else audio.shape[0] / self.sample_rate

    def timings(self) -> dict[str, float | None]:
        """First text / speech token (s), tokens per second, and the real-time factor (None: no audio)."""
        t = self.result.timings
        return {"first text token (s)": t.first_text_s, "first speech token (s)": t.first_speech_s,
                "tokens/s": t.tokens_per_s, "real-time factor": self.wall_s / self.audio_s if self.audio_s else None}


def check_inputs(kind: OutputType, clip: Clip | None, text: str) -> None:
    """One-line errors for a task whose input is missing."""
    if kind.speech_in and clip is None:
        raise AppError("this task listens: pick a sample, upload a file or record one first")
    if kind in (OutputType.TTS, OutputType.T2T) and not text.strip():
        raise AppError("this task reads text: type what to say (TTS) or ask (T2T)")


class Controller:
    """The app's state: the model (and an optional second one for A/B), and the chat's history."""

    def __init__(self, model, max_turns: int = 5, token2wav=None):
        self.token2wav = token2wav  # the voice of models without one of their own (CosyVoice for released ones)
        self.model = self.voiced(model)
        self.chat = Conversation(self.model, max_turns=max_turns)
        self.chat_runs: list[RunResult] = []  # one per turn, for replay

    def voiced(self, model):
        """``model``, speaking through the app's token2wav when it has no token2wav of its own."""
        if model is not None and self.token2wav is not None and getattr(model, "token2wav", None) is None:
            model.token2wav = self.token2wav
        return model

    def load(self, path: str):
        """The model of a run folder, checkpoint or released ``.pt`` (:func:`echat.workbench.chat.load_chat_model`,
        on the current model's device), in eval mode and voiced (:meth:`voiced`)."""
        device = str(self.model.device) if self.model is not None else None
        try:
            return self.voiced(load_chat_model(path, device))
        except (OSError, ValueError) as err:
            line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise AppError(f"cannot load a model: {line if path in line else f'{path}: {line}'}") from err

    def use(self, model) -> None:
        """Make ``model`` the app's model (voiced, :meth:`voiced`); the chat starts again with it."""
        self.model = self.voiced(model)
        self.chat = Conversation(self.model, max_turns=self.chat.max_turns)
        self.chat_runs.clear()

    def run(self, clip: Clip | None, text: str, settings: Settings, on_event: EventCallback | None = None,
            history: tuple = (), model=None, interrupt: threading.Event | None = None) -> RunResult:
        """Run ``settings.task`` on ``clip`` (and/or ``text``) with ``history``, streaming every event to
        ``on_event``; ``model`` replaces the app's model for this run (A/B)."""
        model = model or self.model
        if model is None:
            raise AppError("no model: type a run folder or checkpoint and press Load")
        task = task_tag(settings.task, settings.think)
        kind = output_type(task)
        check_inputs(kind, clip, text)
        think = settings.think if kind.thinks else None
        asked = text.strip() or None if kind in TEXT_IN else None
        start, done = time.perf_counter(), None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for event in model.stream(audio=clip.wave if kind.speech_in else None, text=asked,
                                      task=task, think=think, options=settings.options(kind), history=history,
                                      interrupt=interrupt):
                done = event.result if event.kind == "done" else done
                if on_event is not None:
                    on_event(event)
        rate = getattr(getattr(model, "token2wav", None), "sample_rate", SAMPLE_RATE_HZ)
        return RunResult(settings, task, done, time.perf_counter() - start, clip if kind.speech_in else None,
                         asked or "", history, [str(w.message).splitlines()[0] for w in caught], rate, model)

    def compare(self, clip: Clip | None, text: str, a: Settings, b: Settings, model_b=None,
                on_event: Callable[[str, StreamEvent], None] | None = None) -> tuple[RunResult, RunResult]:
        """The same input through two settings (and, with ``model_b``, a second model for B), A first."""
        def side(name: str) -> EventCallback | None:
            return None if on_event is None else (lambda event: on_event(name, event))

        return self.run(clip, text, a, side("A")), self.run(clip, text, b, side("B"), model=model_b)

    def say(self, clip: Clip | None, settings: Settings, on_event: EventCallback | None = None,
            interrupt: threading.Event | None = None) -> RunResult:
        """One chat turn: reply to ``clip`` given the history, then remember the turn."""
        if output_type(task_tag(settings.task, settings.think)) not in CHAT_KINDS:
            raise AppError("a chat turn needs a spoken chat task: S2T or S2S, with or without think")
        run = self.run(clip, "", settings, on_event, self.chat.history(), interrupt=interrupt)
        self.chat.remember(clip.wave, run.result)
        self.chat_runs.append(run)
        return run

    def replay(self, index: int, settings: Settings | None = None, on_event: EventCallback | None = None) -> RunResult:
        """Turn ``index`` (from 0) run again from the history it had (and its settings unless others are
        given); the chat's history does not change."""
        if not 0 <= index < len(self.chat_runs):
            raise AppError(f"no turn {index + 1}: the chat has {len(self.chat_runs)} turn(s)")
        before = self.chat_runs[index]
        return self.run(before.clip, "", settings or before.settings, on_event, before.history)

    def reset(self) -> None:
        """Forget the chat's history."""
        self.chat.reset()
        self.chat_runs.clear()

    def attention(self, run: RunResult) -> AttentionMap:
        """Where ``run``'s answer tokens looked in its clip (:func:`echat.app.attention.audio_attention`)."""
        if run.clip is None:
            raise AppError(f"{run.settings.task} has no input audio to attend to")
        if not run.result.text_ids:
            raise AppError("the reply has no text tokens to inspect")
        think = run.settings.think if output_type(run.task).thinks else "none"
        return audio_attention(run.model or self.model, run.clip.wave, run.result.text_ids, run.task,
                               run.text.strip() or None, think, run.history)
