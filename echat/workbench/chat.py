"""One chat turn with any checkpoint: load it with its voice, answer a clip with the reference's settings, write
the reply. What ``echat chat``, notebook 12, the app's full-world mode and ``benchmarks/full_model.py`` share.

Design choices:
- One loader for both worlds (:func:`load_chat_model`): an echat checkpoint or run folder goes through
  :func:`echat.eval.stage_eval.load_model` (which attaches the mini token2wav its corpus left in the checkpoint);
  a released ``.pt`` (``tag_think_final.pt``, ``language_think_final.pt``) through
  :meth:`~echat.models.echat.EChat.from_reference_checkpoint`: memory-mapped, bf16 straight onto the GPU, the
  unused ``ln_speech`` skipped. ``preset`` names the layout of a ``.pt`` (osum-echat; smoke for tests).
- The token2wav is passed in, never built here: the CosyVoice one (:mod:`echat.token2wav.cosyvoice`) is built by
  the caller, so this module needs nothing of it but the :class:`~echat.token2wav.base.Token2Wav` protocol.
- A released checkpoint stores no think mode; its file name says it (``tag_think`` / ``language_think``), and
  :func:`think_of_file` writes that into the loaded model's ``config.think``, so generate() and the app default
  to it as for our own checkpoints.
- A file of more than :data:`CPU_LIMIT_BYTES` on a machine without CUDA is refused before anything is read:
  3.5 B parameters need ~14 GB of RAM in fp32 on the CPU and answer at a few tokens a second.
- Task names a person types (``s2s``, ``s2t``, ``asr``, ``tts``, ...) map to the reference's task tags
  (:data:`TASK_NAMES`); ``s2s`` and ``s2t`` take their think variant from the think mode; a tag string such as
  ``"<TRANSCRIBE> <AGE>"`` passes through. Decoding and prompts are the reference's per task
  (:func:`echat.prompts.default_options`, :func:`echat.models.generate.build_prompt`), with the reference's bugs
  fixed as :mod:`echat.prompts` documents.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from echat.audio import SAMPLE_RATE_HZ, load_audio
from echat.config import ThinkMode, preset
from echat.eval.hearing import ASRP_TASK
from echat.eval.stage_eval import load_model
from echat.hub import COSYVOICE_DIR, RELEASED, release_dir
from echat.models.echat import EChat
from echat.models.generate import GenerationResult
from echat.prompts import default_options
from echat.text_tokenizer import load_tokenizer, qwen_tokenizer
from echat.tokens import TEXT2TEXT, TEXT2TOKEN, TRANSCRIBE, output_type, task_for

CPU_LIMIT_BYTES = 2 << 30  # a .pt larger than 2 GiB is the full model: it needs a GPU
COSYVOICE_WEIGHTS = ("flow.pt", "hift.pt")
PROMPT_WAV = "prompt.wav"  # the reference's default voice, in or beside the CosyVoice folder
THINK_CHATS = {"s2s": True, "s2t": False}  # name -> speaks its reply; the think mode picks the variant
TASK_NAMES = {
    "asr": TRANSCRIBE, "asr+p": ASRP_TASK, "emotion": "<EMOTION>", "age": "<AGE>", "gender": "<GENDER>",
    "event": "<CAPTION>", "style": "<STYLE>", "tts": TEXT2TOKEN, "t2t": TEXT2TEXT,
}
CHAT_TASK_CHOICES = (*THINK_CHATS, *TASK_NAMES)


@dataclass
class ChatTurn:
    """One answered turn: the task tag it ran, the result, and the reply audio's rate (None: no audio)."""

    task: str
    result: GenerationResult
    sample_rate: int | None

    def lines(self) -> list[str]:
        """What a person reads: the think (if any), the reply text, the speech tokens' count and timings."""
        r, t = self.result, self.result.timings
        out = [f"task: {self.task}"]
        if r.think is not None:
            out.append(f"think: {r.think}")
        out.append(f"reply: {r.text}")
        if r.speech_tokens:
            seconds = "" if r.audio is None else f", {r.audio.shape[0] / self.sample_rate:.2f} s of audio"
            out.append(f"speech tokens: {len(r.speech_tokens)}{seconds}")
        first = t.first_text_s if t.first_text_s is not None else t.first_speech_s
        out.append(f"timings: first token {first or 0.0:.2f} s, {t.tokens_per_s:.1f} tokens/s, total {t.total_s:.2f} s")
        return out


def released_files(checkpoint: str | Path = "", cosyvoice: str | Path = "") -> tuple[Path, Path]:
    """The released checkpoint and CosyVoice folder: the ones given, else ``echat download``'s places
    (``$ECHAT_HOME/OSUM-EChat/tag_think_final.pt`` and ``.../CosyVoice-300M-25Hz``)."""
    release = release_dir()
    return Path(checkpoint or release / RELEASED["tag"].filename), Path(cosyvoice or release / COSYVOICE_DIR)


def full_world_missing(checkpoint: Path, cosyvoice: Path, preset_name: str = "osum-echat") -> str:
    """Why the released model cannot talk here, in one line ('' when it can): the preset is not the released one,
    no CUDA GPU, or files that are missing (each named; the voice ``prompt.wav`` may lie in or beside ``cosyvoice``)."""
    if preset_name != "osum-echat":
        return f"PRESET is {preset_name!r}: the released checkpoints load with PRESET = 'osum-echat'"
    if not torch.cuda.is_available():
        return "no CUDA GPU here: the 3.5 B model needs one (about 8 GB of GPU memory in bf16)"
    missing = [p for p in (checkpoint, *(cosyvoice / name for name in COSYVOICE_WEIGHTS)) if not p.is_file()]
    if not any(p.is_file() for p in (cosyvoice / PROMPT_WAV, cosyvoice.parent / PROMPT_WAV)):
        missing.append(cosyvoice.parent / PROMPT_WAV)
    if missing:
        return f"missing {', '.join(map(str, missing))}: `echat download tag prompt cosyvoice` fetches them"
    return ""


def resolve_device(device: str | None = None) -> str:
    """``device``, else ``cuda`` when a GPU is there, else ``cpu``."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def think_of_file(path: str | Path) -> ThinkMode:
    """The think mode a released checkpoint's name says (``tag_think_final.pt`` -> tag); none if it says none."""
    name = Path(path).name
    for mode in (ThinkMode.TAG, ThinkMode.LANGUAGE):
        if f"{mode.value}_think" in name:
            return mode
    return ThinkMode.NONE


def check_fits(path: Path, device: str) -> None:
    """ValueError when a full-size ``.pt`` would load on the CPU."""
    size = path.stat().st_size
    if torch.device(device).type == "cpu" and size > CPU_LIMIT_BYTES:
        raise ValueError(f"{path}: a {size / 1e9:.1f} GB checkpoint needs a CUDA GPU (about 8 GB of GPU memory in "
                         f"bf16), and this run has none (device {device}; on the CPU it would take ~14 GB of RAM)")


def chat_tokenizer(config, source: str | None):
    """The text tokenizer of a ``.pt``: Qwen2.5 (a local folder, a hub id, else the offline build) for the
    full world; a folder's tokenizer (``source``, required) for a mini-layout export."""
    if config.text.tokenizer == "qwen2.5":
        return qwen_tokenizer(source)
    if not source:
        raise ValueError(f"a {config.name}-layout checkpoint needs its text tokenizer: pass --tokenizer DIR")
    return load_tokenizer(source)


def load_chat_model(checkpoint: str | Path, device: str | None = None, tokenizer: str | None = None,
                    preset_name: str = "osum-echat", token2wav=None) -> EChat:
    """The model of ``checkpoint`` in eval mode on ``device`` (default :func:`resolve_device`), speaking through
    ``token2wav`` when given (else the mini one a checkpoint folder keeps, or none).

    ``checkpoint``: an echat checkpoint or run folder, or a released-layout ``.pt`` whose layout is
    ``preset_name`` and whose text tokenizer comes from ``tokenizer`` (:func:`chat_tokenizer`).
    """
    path, device = Path(checkpoint), resolve_device(device)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run or checkpoint folder, nor .pt file")
    if path.is_dir():
        model = load_model(path, device)
    else:
        check_fits(path, device)
        config = preset(preset_name)
        model = EChat.from_reference_checkpoint(path, chat_tokenizer(config, tokenizer), device, config)
        model.config.think = think_of_file(path)
    if token2wav is not None:
        model.token2wav = token2wav
    return model.eval()


def chat_task(name: str, think: ThinkMode | str) -> str:
    """The task tag of a task name (:data:`TASK_NAMES`, ``s2s``/``s2t`` with ``think``) or of a tag string."""
    key = name.strip().lower()
    if key in THINK_CHATS:
        return task_for(THINK_CHATS[key], ThinkMode(think))
    if key in TASK_NAMES:
        return TASK_NAMES[key]
    output_type(name)  # an UnknownTaskError (ValueError) names a tag string that is no task
    return name


def chat_once(model: EChat, wav: str | Path | np.ndarray | None = None, text: str | None = None, task: str = "s2s",
              think: ThinkMode | str | None = None, seed: int | None = None, max_new_tokens: int | None = None,
              max_speech_tokens: int | None = None) -> ChatTurn:
    """One turn: ``wav`` (a 16 kHz file or wave) and/or ``text`` through ``task`` with the reference's decoding
    for that task (``seed`` and the two limits replace its values when given); ``think`` defaults to the model's."""
    think = ThinkMode(think) if think is not None else ThinkMode(model.config.think)
    tag = chat_task(task, think)
    kind = output_type(tag)
    if kind.speech_in and wav is None:
        raise ValueError(f"task {task} listens: pass a wav file (--wav)")
    if not kind.speech_in and not text:
        raise ValueError(f"task {task} reads text: pass it (--text)")
    wave = load_audio(wav) if isinstance(wav, (str, Path)) and kind.speech_in else wav
    limits = {"seed": seed, "max_new_tokens": max_new_tokens, "max_speech_tokens": max_speech_tokens}
    options = dataclasses.replace(default_options(kind), **{k: v for k, v in limits.items() if v is not None})
    result = model.generate(audio=wave if kind.speech_in else None, text=text, task=tag,
                            think=think if kind.thinks else None, options=options)
    vocoder = getattr(model, "token2wav", None)
    return ChatTurn(tag, result, getattr(vocoder, "sample_rate", SAMPLE_RATE_HZ) if result.audio is not None else None)


def write_reply(turn: ChatTurn, path: str | Path) -> Path | None:
    """Write the reply audio as a 16-bit wav at its token2wav's rate; None when the turn has no audio."""
    if turn.result.audio is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(turn.result.audio, -1.0, 1.0), turn.sample_rate, subtype="PCM_16")
    return path
