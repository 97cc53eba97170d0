"""The CosyVoice-300M-25Hz flow (``flow.pt``): 25 Hz speech tokens + prompt -> 80-bin mel at 22,050 Hz / hop 256.

Design choices (numbers from ``shared/reference/cosyvoice_300m_25hz_hparams.md`` §2, keys from
``cosyvoice_300m_25hz.tsv``; code facts read, never copied, from ``ASLP-lab/OSUM@f2bcfac``:
``OSUM-EChat/tts/cosyvoice/flow/{flow,flow_matching,length_regulator}.py``, the CosyVoice copy OSUM-EChat runs):
- :class:`CosyVoiceFlow` registers ``input_embedding`` (4096×512), ``spk_embed_affine_layer`` (192→80),
  ``encoder`` (:mod:`echat.token2wav.flow_encoder`), ``encoder_proj`` (512→80), ``decoder.estimator``
  (:mod:`echat.token2wav.flow_estimator`) and ``length_regulator`` in that order: its ``state_dict()`` is the TSV's
  ``flow.*`` rows without the prefix, key for key, in order (104,874,752 parameters at full size).
- Inference (``flow.py::MaskedDiffWithXvec.inference``): the speaker x-vector is L2-normalised, then projected to
  80; prompt and target tokens are embedded and encoded together, projected to 80, and the length regulator
  stretches the prompt part to the prompt mel's frame count and the target part to
  ``mel_frames(T) = int(T / 25 * 22050 / 256)`` frames. The prompt mel fills the first frames of ``cond``
  (zeros after); the result drops the prompt frames, so it is exactly ``mel_frames(T)`` long.
- Length regulator (``length_regulator.py::InterpolateRegulator.inference``): linear interpolation
  (``F.interpolate``, align_corners False), prompt and target separately; a target of more than 40 tokens is
  split into its first 20, middle and last 20 tokens, the ends stretched to ``mel_frames(20)`` = 68 frames each
  and the middle to the rest, so the ends keep a fixed frame rate. Then 4 × (Conv1d k3, GroupNorm(1), Mish)
  and a 1×1 Conv1d (keys ``model.{0,1,3,4,6,7,9,10,12}``).
- Sampler (``flow_matching.py::ConditionalCFM``): noise ``randn · temperature`` (1.0) over prompt + target frames,
  times ``t_k = 1 - cos(k/n · π/2)`` for k = 0…n (cosine schedule, n = 10), Euler steps
  ``x += (t_{k+1} - t_k) · v``. Classifier-free guidance runs the conditional and the unconditional input as one
  batch of 2 (unconditional: mu, speaker and cond all zero; same x, mask and t) and combines them as
  ``v = (1 + 0.7) · v_cond - 0.7 · v_uncond``.
- ``sigma_min`` (1e-6) only enters training: :func:`conditional_path` gives the point on the straight path
  ``y = (1 - (1 - σ) t) z + t x1`` and its velocity ``u = x1 - (1 - σ) z`` (``ConditionalCFM.compute_loss``).
  The training loss itself, the streaming flow cache and the fp16 switch of the reference are not built here.
- Batch 1 only (the reference asserts it). Bad input (ids outside the vocabulary, a prompt mel that is not
  (1, Tm, 80), a speaker that is not (1, 192), prompt tokens without prompt mel or the other way round) raises
  one ValueError naming the argument; the reference clamps negative ids to 0 silently instead. On the meta device
  (shapes only) id values are not checked: there are none.
- :meth:`CosyVoiceFlow.trajectory` yields the mel after each Euler step (notebook 08 draws them);
  :meth:`CosyVoiceFlow.inference` is its last step.
- Parity, measured once outside this repository (the reference is not vendored, so this is not a test): with the
  same smoke-size weights and noise, :meth:`CosyVoiceFlow.inference` matched the reference code at OSUM@f2bcfac to
  1.6e-6 (max abs; outputs up to 4.5) for 3, 7, 45 and 60 tokens, with and without a prompt; the encoder and the
  estimator also matched on padded batches of 2.
- The mel timing (22,050 Hz, hop 256) and the 25 Hz token rate are module constants, not config fields: the
  released weights fix them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from echat.token2wav.flow_encoder import FlowEncoder
from echat.token2wav.flow_estimator import ConditionalEstimator

__all__ = [
    "CosyVoiceFlow", "FlowConfig", "conditional_path", "cosine_time_schedule", "guided_velocity", "mel_frames",
]

TOKEN_RATE_HZ = 25  # CosyVoice-300M-25Hz speech tokens per second (the recipe's input_frame_rate)
MEL_SAMPLE_RATE_HZ = 22_050  # the wave the mel describes
MEL_HOP_SAMPLES = 256  # samples per mel frame: 86.13 frames/s, 3.445 per token
SPLIT_ABOVE_TOKENS = 40  # a longer target is interpolated as head / middle / tail
EDGE_TOKENS = 20  # head and tail length, in tokens


def mel_frames(n_tokens: int) -> int:
    """Mel frames the flow makes for ``n_tokens`` 25 Hz tokens: ``int(n / 25 * 22050 / 256)``, in floats as upstream."""
    return int(n_tokens / TOKEN_RATE_HZ * MEL_SAMPLE_RATE_HZ / MEL_HOP_SAMPLES)


@dataclass(frozen=True)
class FlowConfig:
    """Sizes of the flow; :meth:`full` is the released model, :meth:`smoke` the same code paths in miniature."""

    vocab_size: int = 4096  # speech token ids 0 … 4095
    token_dim: int = 512  # embedding and encoder width
    mel_bins: int = 80
    speaker_dim: int = 192  # CAM++ x-vector
    encoder_heads: int = 8
    encoder_ffn: int = 2048
    encoder_blocks: int = 6
    encoder_dropout: float = 0.1
    regulator_convs: int = 4  # len(sampling_ratios)
    decoder_channels: tuple[int, ...] = (256, 256)
    decoder_heads: int = 8
    decoder_head_dim: int = 64
    decoder_blocks: int = 4  # transformer blocks per U-Net level
    decoder_mid_blocks: int = 12
    n_steps: int = 10  # Euler steps
    cfg_rate: float = 0.7  # inference classifier-free guidance
    temperature: float = 1.0  # noise scale
    sigma_min: float = 1e-6  # training path only

    @classmethod
    def full(cls) -> FlowConfig:
        """CosyVoice-300M-25Hz (hparams note §2)."""
        return cls()

    @classmethod
    def smoke(cls) -> FlowConfig:
        """Tiny: every module kind once or twice; mel and speaker sizes kept so inputs look the same."""
        return cls(vocab_size=64, token_dim=32, encoder_heads=2, encoder_ffn=64, encoder_blocks=2,
                   regulator_convs=2, decoder_channels=(32, 32), decoder_heads=2, decoder_head_dim=16,
                   decoder_blocks=1, decoder_mid_blocks=2)


def cosine_time_schedule(n_steps: int, device=None, dtype=torch.float32) -> Tensor:
    """Flow times ``(n_steps + 1,)`` from 0 to 1: ``1 - cos(linspace(0, 1) · π/2)``, dense near t = 0."""
    return 1 - torch.cos(torch.linspace(0, 1, n_steps + 1, device=device, dtype=dtype) * (math.pi / 2))


def guided_velocity(conditional: Tensor, unconditional: Tensor, cfg_rate: float) -> Tensor:
    """Classifier-free guidance: ``(1 + r) · v_cond - r · v_uncond`` (any shape)."""
    return (1.0 + cfg_rate) * conditional - cfg_rate * unconditional


def conditional_path(x1: Tensor, noise: Tensor, t: Tensor, sigma_min: float) -> tuple[Tensor, Tensor]:
    """Training pair at time ``t`` (broadcasts): point ``(1 - (1 - σ) t) z + t x1``, velocity ``x1 - (1 - σ) z``."""
    return (1 - (1 - sigma_min) * t) * noise + t * x1, x1 - (1 - sigma_min) * noise


class InterpolateRegulator(nn.Module):
    """Token-rate features ``(1, T, C)`` -> mel-rate features ``(1, M, C)``: interpolation, then a conv stack."""

    def __init__(self, channels: int, n_convs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_convs):
            layers += [nn.Conv1d(channels, channels, 3, padding=1), nn.GroupNorm(1, channels), nn.Mish()]
        self.model = nn.Sequential(*layers, nn.Conv1d(channels, channels, 1))

    @staticmethod
    def stretch(h: Tensor, frames: int) -> Tensor:
        """``(1, T, C)`` -> ``(1, C, frames)`` by linear interpolation."""
        return F.interpolate(h.transpose(1, 2), size=frames, mode="linear")

    def target_frames(self, h: Tensor, frames: int) -> Tensor:
        """Target tokens ``(1, T, C)`` -> ``(1, C, frames)``; over 40 tokens the 20-token ends get 68 frames each."""
        if h.shape[1] <= SPLIT_ABOVE_TOKENS:
            return self.stretch(h, frames)
        edge = mel_frames(EDGE_TOKENS)
        head, middle, tail = h[:, :EDGE_TOKENS], h[:, EDGE_TOKENS:-EDGE_TOKENS], h[:, -EDGE_TOKENS:]
        parts = [self.stretch(head, edge), self.stretch(middle, frames - 2 * edge), self.stretch(tail, edge)]
        return torch.cat(parts, dim=2)

    def inference(self, prompt: Tensor, target: Tensor, prompt_frames: int, frames: int) -> Tensor:
        """Prompt ``(1, Tp, C)`` and target ``(1, T, C)`` -> ``(1, prompt_frames + frames, C)``."""
        h = self.target_frames(target, frames)
        if prompt.shape[1] > 0:
            h = torch.cat([self.stretch(prompt, prompt_frames), h], dim=2)
        return self.model(h).transpose(1, 2)


class ConditionalFlowMatching(nn.Module):
    """The ``decoder``: an Euler ODE solver with classifier-free guidance around the U-Net ``estimator``."""

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        bins = config.mel_bins
        self.estimator = ConditionalEstimator(
            4 * bins, bins, config.decoder_channels, config.decoder_heads, config.decoder_head_dim,
            config.decoder_blocks, config.decoder_mid_blocks,
        )

    def velocity(self, x: Tensor, t: Tensor, mu: Tensor, spks: Tensor, cond: Tensor, cfg_rate: float) -> Tensor:
        """Guided velocity at ``x`` (1, 80, M), scalar time ``t``: conditional and unconditional in one batch of 2."""
        mask = torch.ones_like(x[:, :1])  # (1, 1, M)
        both = self.estimator(
            torch.cat([x, x]), torch.cat([mask, mask]), torch.cat([mu, torch.zeros_like(mu)]), t.expand(2),
            torch.cat([spks, torch.zeros_like(spks)]), torch.cat([cond, torch.zeros_like(cond)]),
        )  # (2, 80, M)
        return guided_velocity(both[:1], both[1:], cfg_rate)

    def trajectory(self, mu: Tensor, spks: Tensor, cond: Tensor, n_steps: int, cfg_rate: float,
                   temperature: float = 1.0, generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """``mu`` (1, 80, M), ``spks`` (1, 80), ``cond`` (1, 80, M) -> ``x`` (1, 80, M) after each Euler step."""
        noise_device = generator.device if generator is not None else mu.device  # a CPU generator serves a GPU run
        x = torch.randn(mu.shape, generator=generator, device=noise_device).to(mu) * temperature
        times = cosine_time_schedule(n_steps, device=mu.device, dtype=mu.dtype)
        for start, end in zip(times[:-1], times[1:]):
            x = x + (end - start) * self.velocity(x, start, mu, spks, cond, cfg_rate)
            yield x

    def forward(self, mu: Tensor, spks: Tensor, cond: Tensor, n_steps: int, cfg_rate: float,
                temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """``mu`` (1, 80, M), ``spks`` (1, 80), ``cond`` (1, 80, M) -> mel ``(1, 80, M)`` after ``n_steps`` steps."""
        *_, x = self.trajectory(mu, spks, cond, n_steps, cfg_rate, temperature, generator)
        return x


class CosyVoiceFlow(nn.Module):
    """Speech tokens + prompt (tokens, mel, speaker) -> mel ``(1, 80, mel_frames(T))`` of the target alone."""

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FlowConfig.full()
        self.input_embedding = nn.Embedding(config.vocab_size, config.token_dim)
        self.spk_embed_affine_layer = nn.Linear(config.speaker_dim, config.mel_bins)
        self.encoder = FlowEncoder(config.token_dim, config.encoder_heads, config.encoder_ffn, config.encoder_blocks,
                                   config.encoder_dropout)
        self.encoder_proj = nn.Linear(config.token_dim, config.mel_bins)
        self.decoder = ConditionalFlowMatching(config)
        self.length_regulator = InterpolateRegulator(config.mel_bins, config.regulator_convs)

    def check_inputs(self, tokens: Tensor, prompt_tokens: Tensor, prompt_mel: Tensor, speaker: Tensor) -> None:
        """Raise one ValueError naming the first argument that is not what :meth:`inference` takes."""
        cfg = self.config
        for name, ids, least in (("tokens", tokens, 1), ("prompt_tokens", prompt_tokens, 0)):
            if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < least or ids.is_floating_point():
                raise ValueError(f"{name} must be integer ids of shape (1, T) with T >= {least}, got "
                                 f"{tuple(ids.shape)} {ids.dtype}")
            if ids.numel() and not ids.is_meta and (int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size):
                raise ValueError(f"{name} must lie in [0, {cfg.vocab_size}), got ids from {int(ids.min())} to "
                                 f"{int(ids.max())}")
        if prompt_mel.dim() != 3 or prompt_mel.shape[0] != 1 or prompt_mel.shape[2] != cfg.mel_bins:
            raise ValueError(f"prompt_mel must have shape (1, frames, {cfg.mel_bins}), got {tuple(prompt_mel.shape)}")
        if (prompt_tokens.shape[1] == 0) != (prompt_mel.shape[1] == 0):
            raise ValueError(f"prompt_tokens ({prompt_tokens.shape[1]}) and prompt_mel ({prompt_mel.shape[1]} frames) "
                             "must both be empty or both be given")
        if tuple(speaker.shape) != (1, cfg.speaker_dim):
            raise ValueError(f"speaker must have shape (1, {cfg.speaker_dim}), got {tuple(speaker.shape)}")

    def conditions(self, tokens: Tensor, prompt_tokens: Tensor, prompt_mel: Tensor, speaker: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """-> ``mu`` (1, 80, Mp + M), speaker vector (1, 80), ``cond`` (1, 80, Mp + M) with the prompt mel first."""
        spks = self.spk_embed_affine_layer(F.normalize(speaker, dim=1))  # (1, 80)
        h = self.encoder_proj(self.encoder(self.input_embedding(torch.cat([prompt_tokens, tokens], dim=1))))
        prompt_frames, frames = prompt_mel.shape[1], mel_frames(tokens.shape[1])
        n_prompt = prompt_tokens.shape[1]
        mu = self.length_regulator.inference(h[:, :n_prompt], h[:, n_prompt:], prompt_frames, frames)  # (1, Mp+M, 80)
        cond = torch.zeros_like(mu)
        cond[:, :prompt_frames] = prompt_mel
        return mu.transpose(1, 2), spks, cond.transpose(1, 2)

    @torch.inference_mode()
    def inference(self, tokens: Tensor, prompt_tokens: Tensor, prompt_mel: Tensor, speaker: Tensor,
                  n_steps: int | None = None, cfg_rate: float | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
        """``tokens`` (1, T), ``prompt_tokens`` (1, Tp), ``prompt_mel`` (1, Tm, 80), ``speaker`` (1, 192)
        -> mel ``(1, 80, mel_frames(T))``; ``n_steps`` / ``cfg_rate`` default to the config's (10 / 0.7)."""
        *_, mel = self.trajectory(tokens, prompt_tokens, prompt_mel, speaker, n_steps, cfg_rate, generator)
        return mel

    @torch.inference_mode()
    def trajectory(self, tokens: Tensor, prompt_tokens: Tensor, prompt_mel: Tensor, speaker: Tensor,
                   n_steps: int | None = None, cfg_rate: float | None = None,
                   generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """:meth:`inference` step by step: yields the target mel ``(1, 80, mel_frames(T))`` after each Euler step
        (the last one is :meth:`inference`'s result)."""
        self.check_inputs(tokens, prompt_tokens, prompt_mel, speaker)
        n_steps = self.config.n_steps if n_steps is None else n_steps
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1, got {n_steps}")
        weight = self.encoder_proj.weight
        mu, spks, cond = self.conditions(tokens, prompt_tokens, prompt_mel.to(weight), speaker.to(weight))
        cfg_rate = self.config.cfg_rate if cfg_rate is None else cfg_rate
        for mel in self.decoder.trajectory(mu, spks, cond, n_steps, cfg_rate, self.config.temperature, generator):
            yield mel[:, :, prompt_mel.shape[1]:]
