"""The full world's token2wav: CosyVoice-300M-25Hz (flow + HiFT) behind the :class:`Token2Wav` protocol.

``CosyVoiceToken2Wav(tokens)``: 25 Hz speech ids -> flow mel ``(1, 80, M)``, ``M = int(T / 25 * 22050 / 256)`` ->
HiFT -> float32 wave ``(M * 256,)`` at 22,050 Hz (T tokens last ``T * 882`` samples, give or take one 256-sample hop).

Design choices:
- Only ``flow.pt`` and ``hift.pt`` are loaded, as OSUM-EChat runs them (``osum_echat_reference.md`` §3); the
  CosyVoice text LM (``llm.pt``) is never opened. Each module is built on the meta device (no memory) and the
  file's tensors are assigned to it (``load_state_dict(strict=True, assign=True)``), read with
  ``torch.load(weights_only=True, map_location=device)``: one copy of the weights, on the device. ``hift.pt``'s
  legacy ``weight_g`` / ``weight_v`` names load through :class:`HiFTVocoder`'s weight-norm hook; HiFT's STFT
  window (not in the file) is made on the device afterwards.
- ``dtype``: the flow may run in bfloat16 or float16 on CUDA (its tensors are cast one by one as they are
  assigned); on the CPU only float32. HiFT always stays float32: its F0 phase, STFT and iSTFT need it, and it is
  20 M parameters (80 MB).
- The prompt voice (:mod:`echat.token2wav.cosyvoice_prompt`) is made once: ``from_dir`` takes ``prompt_wav``,
  else ``prompt.wav`` in the folder or beside it (where ``echat download prompt`` puts the reference's default
  voice, next to the unpacked ``CosyVoice-300M-25Hz/``). A call's ``prompt=`` (a :class:`Prompt`) or ``speaker=``
  (an x-vector, no prompt speech) overrides it, so the ONNX files are needed only to encode a wave.
- Ids at or above the flow's vocabulary (4096 at full size: the boundary and the audio BOS/EOS) are skipped;
  a negative id is a ValueError. Each call draws its noise (flow) and source phases (HiFT) from a generator
  seeded with ``seed``: the same tokens give the same wave.
- Streaming (:meth:`CosyVoiceToken2Wav.stream`). The flow is not causal (full attention over the tokens), so
  each run re-reads every token so far; the chunk rule (:class:`StreamOptions`): a run starts once
  ``chunk_tokens`` new speech ids have come (25: one second of speech) and once more at the end. A run that is
  not the last holds back its last ``lookahead_frames`` mel frames (their right context is still coming);
  HiFT vocodes the newly released frames plus ``context_frames`` before them, and the first ``fade_frames``
  of those overlap the previous run's held-back tail, which is cross-faded linearly into the new wave. The
  chunks add up to exactly the one-shot length, ``mel_frames(T) * 256`` samples. Unlike one-shot synthesis,
  each run draws fresh flow noise and HiFT source phases and the early runs see fewer tokens, so the samples
  differ from ``__call__``'s (where a single run covers everything, they are equal).
- :meth:`CosyVoiceToken2Wav.random` builds the same classes with random weights and a random x-vector (no
  files): ``"smoke"`` for tests, ``"full"`` (on ``"meta"``: shapes only, no memory) for layouts and benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import nn

from echat.audio import COSYVOICE_RATE, load_audio
from echat.token2wav.cosyvoice_prompt import (
    Prompt,
    PromptEncoder,
    missing_file_error,
)
from echat.token2wav.flow import CosyVoiceFlow, FlowConfig
from echat.token2wav.hift import HiFTConfig, HiFTVocoder

FLOW_FILE = "flow.pt"
HIFT_FILE = "hift.pt"
PROMPT_FILE = "prompt.wav"  # the reference's default voice (the hub's prompt.wav)
__all__ = ["CosyVoiceToken2Wav", "StreamOptions", "Synthesis", "check_dtype", "default_prompt_wav", "load_weights"]

CONFIGS = {"smoke": (FlowConfig.smoke, HiFTConfig.smoke), "full": (FlowConfig.full, HiFTConfig.full)}
CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class StreamOptions:
    """The chunk rule of :meth:`CosyVoiceToken2Wav.stream` (frames are 256-sample mel frames, 11.6 ms)."""

    chunk_tokens: int = 25  # new speech ids that start a run (25 = 1 s of speech)
    lookahead_frames: int = 10  # last frames of a run held back while tokens are still coming (~3 tokens)
    context_frames: int = 4  # frames before the new ones that HiFT reads again (left context and the fade)
    fade_frames: int = 2  # cross-fade between runs: 512 samples, 23 ms

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1 or self.lookahead_frames < 0 or self.fade_frames < 0:
            raise ValueError(f"StreamOptions: chunk_tokens must be >= 1 and the frame counts >= 0, got {self}")
        if self.context_frames < self.fade_frames:
            raise ValueError(f"StreamOptions: context_frames ({self.context_frames}) must cover fade_frames "
                             f"({self.fade_frames})")


def check_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """The flow's dtype: float32 unless asked; bfloat16/float16 only on CUDA (ValueError otherwise)."""
    dtype = dtype or torch.float32
    allowed = CUDA_DTYPES if device.type == "cuda" else (torch.float32,)
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype} is not supported on {device.type}: use one of {allowed}")
    return dtype


def load_weights(module: nn.Module, path: Path, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """Assign ``path``'s state dict (strict) to ``module`` built on the meta device; floats cast to ``dtype``."""
    state = torch.load(path, map_location=device, weights_only=True)
    if dtype is not None:
        for key in list(state):  # one tensor at a time: never a whole second copy
            if state[key].is_floating_point():
                state[key] = state[key].to(dtype)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def configs(name: str) -> tuple[FlowConfig, HiFTConfig]:
    """The flow and HiFT sizes of ``"full"`` (the released model) or ``"smoke"``."""
    if name not in CONFIGS:
        raise ValueError(f"config must be one of {sorted(CONFIGS)}, got {name!r}")
    return tuple(make() for make in CONFIGS[name])


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers still on the meta device."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, tensor in tensors if tensor.is_meta]


def default_prompt_wav(folder: Path) -> Path | None:
    """``prompt.wav`` in the CosyVoice folder, else beside it (``echat download``'s layout); None if neither."""
    found = [path for path in (folder / PROMPT_FILE, folder.parent / PROMPT_FILE) if path.is_file()]
    return found[0] if found else None


def fade_in(tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Cross-fade the held-back ``tail`` (F,) into the first F samples of ``head`` (N >= F,): a linear ramp."""
    ramp = (np.arange(len(tail), dtype=np.float32) + 0.5) / max(len(tail), 1)
    mixed = head.copy()
    mixed[: len(tail)] = tail * (1 - ramp) + head[: len(tail)] * ramp
    return mixed


@dataclass
class Synthesis:
    """One token2wav run taken apart (:meth:`CosyVoiceToken2Wav.synthesize`), on the CPU."""

    steps: list[np.ndarray]  # mel (80, M) after each Euler step of the flow; the last is the mel HiFT reads
    f0: np.ndarray  # (M,) Hz, HiFT's predicted pitch per mel frame
    source: np.ndarray  # (M * 256,) the NSF excitation made from f0
    wave: np.ndarray  # (M * 256,) float32 at 22,050 Hz

    @property
    def mel(self) -> np.ndarray:
        """The flow's output mel ``(80, M)``."""
        return self.steps[-1]


class CosyVoiceToken2Wav:
    """Token2Wav of the released model: ``t2w(tokens)`` -> float32 wave ``(N,)`` at 22,050 Hz."""

    sample_rate: int = COSYVOICE_RATE

    def __init__(self, flow: CosyVoiceFlow, hift: HiFTVocoder, prompt: Prompt | None = None,
                 prompt_encoder: PromptEncoder | None = None, seed: int = 0, missing_prompt: str = "") -> None:
        self.flow = flow.eval()
        self.hift = hift.eval()
        self.device = next(flow.parameters()).device
        self.prompt = prompt.to(self.device) if prompt is not None else None
        self.prompt_encoder = prompt_encoder
        self.seed = seed
        self.missing_prompt = missing_prompt  # why there is no default voice, for the error message

    @classmethod
    def from_dir(cls, folder: str | PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 prompt_wav: str | PathLike | None = None, seed: int = 0, config: str = "full") -> CosyVoiceToken2Wav:
        """Load an unpacked ``CosyVoice-300M-25Hz`` folder (``flow.pt``, ``hift.pt``, the two ONNX files).

        The default voice is ``prompt_wav``, else ``prompt.wav`` in or beside ``folder``; without one, calls need
        ``prompt=`` or ``speaker=``. A missing file raises :class:`CosyVoiceFileError` naming it and the folder.
        ``config``: ``"full"`` (the released files) or ``"smoke"`` (files of the tiny variant, for tests).
        """
        folder, device = Path(folder), torch.device(device)
        flow_dtype = check_dtype(device, dtype)
        for name in (FLOW_FILE, HIFT_FILE):
            if not (folder / name).is_file():
                raise missing_file_error(name, folder)
        flow_config, hift_config = configs(config)
        with torch.device("meta"):
            flow, hift = CosyVoiceFlow(flow_config), HiFTVocoder(hift_config)
        load_weights(flow, folder / FLOW_FILE, device, flow_dtype)
        load_weights(hift, folder / HIFT_FILE, device)
        hift.stft_window = torch.hann_window(hift.config.istft_n_fft, device=device)  # not in hift.pt
        if meta_tensors(flow) or meta_tensors(hift):
            raise RuntimeError(f"not loaded from {folder}: {(meta_tensors(flow) + meta_tensors(hift))[:5]}")
        wav = Path(prompt_wav) if prompt_wav is not None else default_prompt_wav(folder)
        if wav is None:
            return cls(flow, hift, seed=seed, missing_prompt=f"no {PROMPT_FILE} in or beside {folder} "
                       "(`echat download prompt` fetches the reference's)")
        encoder = PromptEncoder.from_dir(folder, device)
        prompt = encoder.prompt_from_wav(load_audio(wav, sample_rate=COSYVOICE_RATE), COSYVOICE_RATE)
        return cls(flow, hift, prompt, encoder, seed=seed)

    @classmethod
    def random(cls, config: str = "smoke", device: str | torch.device = "cpu", seed: int = 0) -> CosyVoiceToken2Wav:
        """The same model with random weights (torch seed ``seed``) and a random x-vector as its voice, no files.

        ``config``: ``"smoke"`` (tiny, for tests) or ``"full"`` (the released shapes; on ``"meta"``: no memory).
        """
        flow_config, hift_config = configs(config)
        torch.manual_seed(seed)
        with torch.device(device):
            flow, hift = CosyVoiceFlow(flow_config), HiFTVocoder(hift_config)
            speaker = torch.randn(1, flow_config.speaker_dim)
        return cls(flow, hift, Prompt.speaker_only(speaker), seed=seed)

    @property
    def vocab_size(self) -> int:
        """Speech ids the flow knows (4096 at full size); higher ids are skipped."""
        return self.flow.config.vocab_size

    def speech_ids(self, tokens: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """The ids that are speech: int64 ``(L',)``; ids >= :attr:`vocab_size` dropped, negative ones refused."""
        ids = np.asarray(torch.as_tensor(tokens).detach().cpu(), dtype=np.int64).reshape(-1)
        if ids.size and ids.min() < 0:
            raise ValueError(f"speech token ids must be non-negative, got {int(ids.min())}")
        return ids[ids < self.vocab_size]

    def prompt_from_wav(self, wave: np.ndarray, rate: int) -> Prompt:
        """A voice for ``prompt=``: mono wave ``(N,)`` at ``rate`` Hz -> :class:`Prompt` (needs the ONNX files)."""
        if self.prompt_encoder is None:
            raise ValueError("this CosyVoiceToken2Wav has no prompt encoder: load it with from_dir(...) from a folder "
                             "with speech_tokenizer_v1.onnx and campplus.onnx, or pass speaker= / prompt=")
        return self.prompt_encoder.prompt_from_wav(wave, rate)

    def voice(self, prompt: Prompt | None = None, speaker: torch.Tensor | None = None) -> Prompt:
        """The prompt a call uses: ``prompt``, else an x-vector ``speaker`` alone, else the default voice."""
        if prompt is not None and speaker is not None:
            raise ValueError("pass prompt= or speaker=, not both")
        if speaker is not None:
            prompt = Prompt.speaker_only(torch.as_tensor(speaker))
        prompt = self.prompt if prompt is None else prompt
        if prompt is None:
            raise ValueError(f"no prompt voice: pass prompt= (prompt_from_wav) or speaker= (a (1, 192) x-vector); "
                             f"{self.missing_prompt}")
        return prompt.to(self.device)

    def generator(self) -> torch.Generator | None:
        """A fresh generator seeded with :attr:`seed` on the model's device (None on meta, which has none)."""
        return None if self.device.type == "meta" else torch.Generator(self.device).manual_seed(self.seed)

    def mel(self, ids: np.ndarray, prompt: Prompt, generator: torch.Generator | None = None) -> torch.Tensor:
        """Speech ids ``(T,)`` (all < vocab_size, T >= 1) -> flow mel ``(1, 80, mel_frames(T))`` float32."""
        tokens = torch.as_tensor(ids, dtype=torch.long, device=self.device)[None]  # (1, T)
        mel = self.flow.inference(tokens, prompt.tokens, prompt.mel, prompt.speaker, generator=generator)
        return mel.float()

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> np.ndarray:
        """Mel ``(1, 80, M)`` -> float32 wave ``(M * 256,)`` on the CPU."""
        return self.hift(mel, generator)[0].cpu().numpy().astype(np.float32)

    def __call__(self, tokens: Sequence[int] | np.ndarray | torch.Tensor, *, prompt: Prompt | None = None,
                 speaker: torch.Tensor | None = None, **kw) -> np.ndarray:
        """Tokens ``(L,)`` -> float32 wave ``(mel_frames(L') * 256,)`` at 22,050 Hz for the L' speech ids.

        Keywords meant for other token2wavs (e.g. the mini one's ``n_iter``) are accepted and ignored.
        """
        ids = self.speech_ids(tokens)
        if ids.size == 0:
            return np.zeros(0, dtype=np.float32)
        return self.synthesize(ids, prompt=prompt, speaker=speaker).wave

    @torch.inference_mode()
    def synthesize(self, tokens: Sequence[int] | np.ndarray | torch.Tensor, *, prompt: Prompt | None = None,
                   speaker: torch.Tensor | None = None) -> Synthesis:
        """What ``__call__`` makes, with the flow's Euler steps, HiFT's f0 and its source (at least one speech id)."""
        if self.device.type == "meta":
            raise ValueError("a CosyVoiceToken2Wav on the meta device holds shapes only; use .mel(...) for shapes")
        ids = self.speech_ids(tokens)
        if ids.size == 0:
            raise ValueError("synthesize needs at least one speech id below the vocabulary size")
        voice, generator = self.voice(prompt, speaker), self.generator()
        tokens = torch.as_tensor(ids, dtype=torch.long, device=self.device)[None]  # (1, T)
        steps = [mel.float() for mel in self.flow.trajectory(tokens, voice.tokens, voice.mel, voice.speaker,
                                                              generator=generator)]  # n_steps x (1, 80, M)
        out = self.hift.inference(steps[-1], generator)
        return Synthesis([step[0].cpu().numpy() for step in steps], out.f0[0].cpu().numpy(),
                         out.source[0].cpu().numpy(), out.wave[0].cpu().numpy().astype(np.float32))

    def stream(self, token_chunks: Iterable[Sequence[int]], *, prompt: Prompt | None = None,
               speaker: torch.Tensor | None = None, options: StreamOptions | None = None) -> Iterator[np.ndarray]:
        """Token chunks as they come -> wave chunks (float32, 22,050 Hz), the first before the tokens end.

        The chunks concatenate to ``mel_frames(T) * 256`` samples for the T speech ids (the one-shot length);
        the chunk rule is :class:`StreamOptions`'s (module docstring).
        """
        streamer = self.streamer(prompt=prompt, speaker=speaker, options=options)
        for chunk in token_chunks:
            if (piece := streamer.push(chunk)).size:
                yield piece
        if (piece := streamer.finish()).size:
            yield piece

    def streamer(self, *, prompt: Prompt | None = None, speaker: torch.Tensor | None = None,
                 options: StreamOptions | None = None) -> CosyVoiceStreamer:
        """The push form of :meth:`stream`, for a caller that makes the tokens itself
        (:func:`echat.models.generate.stream`): ``push(chunk)`` then ``finish()``, each returning the samples
        now certain (possibly none)."""
        return CosyVoiceStreamer(self, self.voice(prompt, speaker), options or StreamOptions())


class CosyVoiceStreamer:
    """Chunked vocoding of one reply (:meth:`CosyVoiceToken2Wav.streamer`): the ids so far, the frames already
    vocoded, and the held-back tail of samples that the next run cross-fades into."""

    def __init__(self, model: CosyVoiceToken2Wav, voice: Prompt, options: StreamOptions) -> None:
        self.model, self.voice, self.options = model, voice, options
        self.ids: list[int] = []
        self.pending = 0  # ids pushed since the last run
        self.done_frames = 0  # mel frames whose samples were made (the last fade of them held back in tail)
        self.tail = np.zeros(0, dtype=np.float32)

    def push(self, chunk: Sequence[int]) -> np.ndarray:
        """Add speech tokens ``(n,)`` (ids at or above the vocabulary are dropped); once
        ``options.chunk_tokens`` new ids have come, the samples now certain, else none."""
        new = self.model.speech_ids(chunk)
        self.ids.extend(new.tolist())
        self.pending += new.size
        if self.pending < self.options.chunk_tokens:
            return np.zeros(0, dtype=np.float32)
        self.pending = 0
        return self.run(final=False)

    def finish(self) -> np.ndarray:
        """The rest of the reply's samples (none when no speech id came)."""
        return self.run(final=True) if self.ids else np.zeros(0, dtype=np.float32)

    def run(self, final: bool) -> np.ndarray:
        """Flow over all ids so far, HiFT over the new frames (+ context) -> the samples now certain."""
        opts, hop = self.options, self.model.hift.config.hop_samples
        generator = self.model.generator()
        mel = self.model.mel(np.asarray(self.ids), self.voice, generator)  # (1, 80, M)
        ready = mel.shape[2] if final else mel.shape[2] - opts.lookahead_frames
        if ready <= self.done_frames:  # nothing new; the last run still owes its held-back tail
            flushed, self.tail = (self.tail, self.tail[:0]) if final else (self.tail[:0], self.tail)
            return flushed
        start = max(0, self.done_frames - opts.context_frames)
        wave = self.model.vocode(mel[:, :, start:ready], generator)  # samples [start * hop, ready * hop)
        new = fade_in(self.tail, wave[(self.done_frames - start) * hop - len(self.tail) :])
        self.done_frames = ready
        keep = 0 if final else min(opts.fade_frames * hop, len(new))
        self.tail = new[len(new) - keep :]
        return new[: len(new) - keep]

