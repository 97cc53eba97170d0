"""HiFT, the vocoder of CosyVoice-300M-25Hz: 80-bin 22.05 kHz log-mel -> waveform (NSF source + iSTFT head).

Data flow (``HiFTVocoder.inference``), for a mel ``(B, 80, M)``:
1. ``f0_predictor`` (5 weight-normed Conv1d(k3) + ELU, Linear, ``abs``) -> f0 ``(B, M)`` Hz per mel frame.
2. f0 repeated 256 times (nearest upsampling) -> per-sample f0; ``m_source`` makes the neural-source-filter
   excitation: sines at f0 and its 8 overtones (amplitude 0.1, random start phase but for the fundamental),
   zero where f0 <= 10 Hz, plus Gaussian noise (std 0.003 where voiced, 0.1 / 3 where not), mixed by
   Linear(9 -> 1) and tanh -> source ``(B, M * 256)``.
3. STFT of the source (n_fft 16, hop 4, periodic Hann) as [real || imag] ``(B, 18, 64 M + 1)``.
4. ``conv_pre``; per upsampling stage: leaky ReLU 0.1, ConvTranspose1d (x8, kernel 16), a reflection pad of
   one frame on the left before the last stage's fusion, plus the source STFT brought to that rate by
   ``source_downs[i]`` and ``source_resblocks[i]``, then the mean of the stage's 3 ResBlocks (kernels 3/7/11).
5. Leaky ReLU 0.01, ``conv_post`` -> 18 channels: magnitude ``exp(.)`` clipped at 100 (9 bins) and phase
   ``sin(.)`` (9 bins); ``torch.istft`` (n_fft 16, hop 4, window 16) -> wave ``(B, M * 256)``, clamped to 0.99.

Design choices:
- Weight norm through ``torch.nn.utils.parametrizations.weight_norm``, the maintained API (the legacy
  ``torch.nn.utils.weight_norm`` is deprecated). Its parameters are held as
  ``X.parametrizations.weight.original0`` (g) and ``.original1`` (v), and its load hook renames the legacy keys
  ``X.weight_g`` / ``X.weight_v`` of the released ``hift.pt`` on load, so ``load_state_dict(hift_pt)`` is
  strict without a key map. :func:`hift_keys` gives the legacy names in ``state_dict`` order and
  :func:`legacy_state_dict` a state dict in the released naming (to save a file the reference loads).
- Module and attribute names (``m_source.l_linear``, ``convs1``/``convs2``/``activations1``/``activations2``,
  ``condnet.{0,2,4,6,8}``) and their registration order are those of the released file's keys
  (``../shared/reference/cosyvoice_300m_25hz.tsv``): the key test compares them line by line.
- The STFT window is a non-persistent buffer: it follows ``.to(device)`` and is not in the state dict (the
  released file has none).
- The source is deterministic given a ``torch.Generator`` (start phases and noise are drawn from it); the
  phase is accumulated in float64 (``cumsum`` of f0 / rate over up to minutes of samples) before the
  ``% 1``: the same formula as upstream's float32 one, without its rounding drift on long replies.
- Everything that counts samples is a config value; :meth:`HiFTConfig.smoke` is the same architecture with
  few channels and smaller kernels, still 256 samples per mel frame.

Facts and where they come from (read only; no code copied):
- Architecture, order of operations, ``SineGen``/``SourceModuleHnNSF`` formulas, source_downs
  (Conv1d(18, C, 2u, u, padding u // 2), 1x1 where u = 1), ResBlock padding ``(k * d - d) // 2``, the
  ReflectionPad1d((1, 0)), magnitude clip 1e2, ``sin`` of the phase, window
  ``scipy.signal.get_window("hann", 16, fftbins=True)`` (periodic): ``FunAudioLLM/CosyVoice@076829a``
  ``cosyvoice/hifigan/generator.py``; ``ConvRNNF0Predictor``: the same commit, ``cosyvoice/hifigan/f0_predictor.py``.
- Snake ``x + 1 / (alpha + 1e-9) * sin(alpha x)^2`` with alpha per channel, initialised to 1:
  ``FunAudioLLM/CosyVoice@84d648d`` ``cosyvoice/transformer/activation.py``.
- Hyper-parameters of the 25 Hz model and the legacy weight-norm naming of ``hift.pt``:
  ``../shared/reference/cosyvoice_300m_25hz_hparams.md`` section 4 (``examples/libritts/cosyvoice/conf/
  cosyvoice.yaml`` at ``FunAudioLLM/CosyVoice@ace7c47``; the OSUM-EChat copy at ``ASLP-lab/OSUM@f2bcfac``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from echat.audio import COSYVOICE_N_MELS, COSYVOICE_RATE

SNAKE_EPS = 1e-9  # keeps 1 / alpha finite
LEAKY_SLOPE_POST = 0.01  # F.leaky_relu's default, before conv_post
MAGNITUDE_CLIP = 100.0  # exp(log magnitude) clipped before the iSTFT
F0_CONV_LAYERS = 5  # the predictor's weight-normed Conv1d(k3) + ELU pairs
F0_KERNEL = 3
PRE_POST_KERNEL = 7  # conv_pre and conv_post
# parametrizations.weight_norm's names -> the legacy weight_norm's names that hift.pt stores
_LEGACY_SUFFIXES = {
    ".parametrizations.weight.original0": ".weight_g",  # magnitude g (C_out, 1, 1); (C_in, 1, 1) for ConvTranspose
    ".parametrizations.weight.original1": ".weight_v",  # direction v, the conv weight's shape
}


@dataclass(frozen=True)
class HiFTConfig:
    """HiFT hyper-parameters; the defaults are CosyVoice-300M-25Hz's (``full()``)."""

    in_channels: int = COSYVOICE_N_MELS
    base_channels: int = 512
    f0_cond_channels: int = 512
    nb_harmonics: int = 8  # overtones above f0: the source has nb_harmonics + 1 sines
    sample_rate: int = COSYVOICE_RATE
    sine_amp: float = 0.1
    noise_std: float = 0.003  # voiced noise; unvoiced noise has std sine_amp / 3
    voiced_threshold_hz: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99

    def __post_init__(self) -> None:
        stages = len(self.upsample_rates)
        problems = []
        if len(self.upsample_kernel_sizes) != stages:
            problems.append(f"upsample_kernel_sizes has {len(self.upsample_kernel_sizes)} entries for {stages} stages")
        if len(self.source_resblock_kernel_sizes) != stages or len(self.source_resblock_dilations) != stages:
            problems.append(f"source_resblock_kernel_sizes/dilations need one entry per upsampling stage ({stages})")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilations):
            problems.append("resblock_kernel_sizes and resblock_dilations differ in length")
        if self.base_channels % 2**stages:
            problems.append(f"base_channels {self.base_channels} is not divisible by 2**{stages}")
        if problems:
            raise ValueError("HiFTConfig: " + "; ".join(problems))

    @classmethod
    def full(cls) -> HiFTConfig:
        """CosyVoice-300M-25Hz's vocoder (20,460,591 parameters)."""
        return cls()

    @classmethod
    def smoke(cls) -> HiFTConfig:
        """The same architecture, tiny: 32 channels, 2 ResBlocks per stage, still 256 samples per frame."""
        return cls(
            base_channels=32, f0_cond_channels=32, resblock_kernel_sizes=(3, 5), resblock_dilations=((1, 3), (1, 3)),
            source_resblock_kernel_sizes=(3, 5), source_resblock_dilations=((1, 3), (1, 3)),
        )

    @property
    def hop_samples(self) -> int:
        """Wave samples per mel frame: the upsampling rates times the iSTFT hop (256)."""
        return math.prod(self.upsample_rates) * self.istft_hop

    @property
    def n_bins(self) -> int:
        """One-sided iSTFT bins (9 for n_fft 16)."""
        return self.istft_n_fft // 2 + 1


@dataclass
class HiFTOutput:
    """What :meth:`HiFTVocoder.inference` computes: the wave and its intermediate signals."""

    wave: torch.Tensor  # (B, M * hop) float32 in [-audio_limit, audio_limit] at sample_rate Hz
    f0: torch.Tensor  # (B, M) Hz per mel frame
    source: torch.Tensor  # (B, M * hop) the NSF excitation


class Snake(nn.Module):
    """Snake activation ``x + sin(alpha x)^2 / alpha`` with one learnt alpha per channel. ``(B, C, T)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]  # (1, C, 1)
        return x + torch.sin(alpha * x).square() / (alpha + SNAKE_EPS)


def _normed_conv(in_ch: int, out_ch: int, kernel: int, dilation: int = 1) -> nn.Module:
    """A weight-normed, length-preserving Conv1d (odd ``kernel``)."""
    return weight_norm(nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, padding=(kernel * dilation - dilation) // 2))


class ResBlock(nn.Module):
    """HiFi-GAN residual block with Snake: per dilation d, ``x += conv2(snake(conv1_d(snake(x))))``. ``(B, C, T)``."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_normed_conv(channels, channels, kernel, d) for d in dilations)
        self.convs2 = nn.ModuleList(_normed_conv(channels, channels, kernel) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2, act1, act2 in zip(self.convs1, self.convs2, self.activations1, self.activations2):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class F0Predictor(nn.Module):
    """CosyVoice's ``ConvRNNF0Predictor``: mel ``(B, 80, M)`` -> f0 ``(B, M)`` Hz, non-negative (``abs``)."""

    def __init__(self, in_channels: int, cond_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(F0_CONV_LAYERS):
            layers += [_normed_conv(in_channels if index == 0 else cond_channels, cond_channels, F0_KERNEL), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        hidden = self.condnet(mel).transpose(1, 2)  # (B, M, C)
        return self.classifier(hidden).squeeze(-1).abs()  # (B, M)


class SourceModule(nn.Module):
    """Neural-source-filter excitation: per-sample f0 ``(B, N)`` Hz -> source ``(B, N)`` in (-1, 1)."""

    def __init__(self, config: HiFTConfig) -> None:
        super().__init__()
        self.config = config
        self.l_linear = nn.Linear(config.nb_harmonics + 1, 1)  # mixes f0 and its overtones

    def sines(self, f0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Harmonic sines of f0 ``(B, N)`` -> ``(B, N, H + 1)``: zero where unvoiced, plus Gaussian noise."""
        cfg = self.config
        harmonics = torch.arange(1, cfg.nb_harmonics + 2, device=f0.device, dtype=torch.float64)  # (H + 1,)
        cycles = torch.cumsum(f0.double()[..., None] * harmonics / cfg.sample_rate, dim=1) % 1.0  # (B, N, H + 1)
        start = torch.rand(f0.shape[0], 1, harmonics.numel(), generator=generator, device=f0.device)
        start = (2 * start - 1) * math.pi  # uniform in [-pi, pi); the fundamental starts at phase 0
        start[..., 0] = 0.0
        sines = cfg.sine_amp * torch.sin(2 * math.pi * cycles.float() + start)
        voiced = (f0 > cfg.voiced_threshold_hz).float()[..., None]  # (B, N, 1)
        noise_std = voiced * cfg.noise_std + (1 - voiced) * cfg.sine_amp / 3
        noise = noise_std * torch.randn(sines.shape, generator=generator, device=f0.device)
        return sines * voiced + noise

    def forward(self, f0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.tanh(self.l_linear(self.sines(f0, generator))).squeeze(-1)  # (B, N)


class HiFTVocoder(nn.Module):
    """CosyVoice's ``HiFTGenerator`` (inference path): mel ``(B, 80, M)`` -> wave ``(B, M * 256)`` at 22.05 kHz."""

    def __init__(self, config: HiFTConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or HiFTConfig.full()
        stages = len(cfg.upsample_rates)
        widths = [cfg.base_channels // 2**index for index in range(stages + 1)]  # 512, 256, 128
        self.m_source = SourceModule(cfg)
        self.conv_pre = _normed_conv(cfg.in_channels, cfg.base_channels, PRE_POST_KERNEL)
        self.ups = nn.ModuleList(
            weight_norm(nn.ConvTranspose1d(widths[i], widths[i + 1], kernel, rate, padding=(kernel - rate) // 2))
            for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))
        )
        self.source_downs = nn.ModuleList(self._source_down(i, widths[i + 1]) for i in range(stages))
        source_blocks = zip(cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilations)
        self.source_resblocks = nn.ModuleList(
            ResBlock(widths[i + 1], kernel, dilations) for i, (kernel, dilations) in enumerate(source_blocks)
        )
        self.resblocks = nn.ModuleList(
            ResBlock(widths[i + 1], kernel, dilations)
            for i in range(stages)
            for kernel, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations)
        )
        self.conv_post = _normed_conv(widths[-1], 2 * cfg.n_bins, PRE_POST_KERNEL)
        self.register_buffer("stft_window", torch.hann_window(cfg.istft_n_fft), persistent=False)  # periodic
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels)

    def _source_down(self, stage: int, channels: int) -> nn.Conv1d:
        """Brings the source STFT (iSTFT frame rate) to stage ``stage``'s rate: strided by the rates still to come."""
        stride = math.prod(self.config.upsample_rates[stage + 1 :])
        if stride == 1:
            return nn.Conv1d(2 * self.config.n_bins, channels, 1)
        return nn.Conv1d(2 * self.config.n_bins, channels, 2 * stride, stride, padding=stride // 2)

    def _check_mel(self, mel: torch.Tensor) -> None:
        channels = self.config.in_channels
        if mel.ndim != 3 or mel.shape[1] != channels or mel.shape[2] < 1:
            raise ValueError(f"HiFT expects a mel (B, {channels}, M) with M >= 1 frames, got shape {tuple(mel.shape)}")

    def f0(self, mel: torch.Tensor) -> torch.Tensor:
        """Predicted f0 ``(B, M)`` in Hz for a mel ``(B, 80, M)``."""
        self._check_mel(mel)
        return self.f0_predictor(mel)

    def source(self, f0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The NSF excitation ``(B, M * 256)`` of a frame-rate f0 ``(B, M)`` Hz (repeated 256 times per frame).

        ``generator`` (on f0's device) draws the start phases and the noise; None uses torch's global one.
        """
        if f0.ndim != 2:
            raise ValueError(f"HiFT source expects f0 (B, M) in Hz, got shape {tuple(f0.shape)}")
        return self.m_source(f0.repeat_interleave(self.config.hop_samples, dim=1), generator)

    def _source_stft(self, source: torch.Tensor) -> torch.Tensor:
        """Source ``(B, N)`` -> [real || imag] of its STFT ``(B, 2 * bins, N / hop + 1)``."""
        cfg = self.config
        spec = torch.stft(source, cfg.istft_n_fft, cfg.istft_hop, cfg.istft_n_fft, window=self.stft_window,
                          return_complex=True)  # (B, bins, frames)
        return torch.cat([spec.real, spec.imag], dim=1)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Mel ``(B, 80, M)`` and source ``(B, M * 256)`` -> wave ``(B, M * 256)`` in [-0.99, 0.99]."""
        cfg = self.config
        self._check_mel(mel)
        expected = (mel.shape[0], mel.shape[2] * cfg.hop_samples)
        if tuple(source.shape) != expected:
            raise ValueError(f"HiFT decode expects a source {expected} for a mel {tuple(mel.shape)}, "
                             f"got {tuple(source.shape)}")
        source_spec = self._source_stft(source)  # (B, 18, 64 M + 1)
        x = self.conv_pre(mel)  # (B, 512, M)
        n_kernels = len(cfg.resblock_kernel_sizes)
        for stage, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))  # (B, C / 2, T * rate)
            if stage == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")  # one more frame: the iSTFT's T / hop + 1
            x = x + self.source_resblocks[stage](self.source_downs[stage](source_spec))
            blocks = self.resblocks[stage * n_kernels : (stage + 1) * n_kernels]
            x = sum(block(x) for block in blocks) / n_kernels  # the stage's ResBlocks averaged
        x = self.conv_post(F.leaky_relu(x, LEAKY_SLOPE_POST))  # (B, 18, 64 M + 1)
        magnitude = torch.exp(x[:, : cfg.n_bins]).clamp(max=MAGNITUDE_CLIP)
        phase = torch.sin(x[:, cfg.n_bins :])
        wave = torch.istft(torch.polar(magnitude, phase), cfg.istft_n_fft, cfg.istft_hop, cfg.istft_n_fft,
                           window=self.stft_window)  # (B, M * 256)
        return wave.clamp(-cfg.audio_limit, cfg.audio_limit)

    def inference(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> HiFTOutput:
        """Mel ``(B, 80, M)`` -> :class:`HiFTOutput` (wave, f0, source); deterministic given ``generator``."""
        f0 = self.f0(mel)  # (B, M)
        source = self.source(f0, generator)  # (B, M * 256)
        return HiFTOutput(wave=self.decode(mel, source), f0=f0, source=source)

    def forward(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mel ``(B, 80, M)`` -> wave ``(B, M * 256)`` float32 at 22.05 kHz in [-0.99, 0.99]."""
        return self.inference(mel, generator).wave


def hift_keys(module: nn.Module) -> list[str]:
    """``module.state_dict()``'s keys in the released naming (``X.weight_g`` / ``X.weight_v``), same order."""
    return [_legacy_name(key) for key in module.state_dict()]


def _legacy_name(key: str) -> str:
    for suffix, legacy in _LEGACY_SUFFIXES.items():
        if key.endswith(suffix):
            return key.removesuffix(suffix) + legacy
    return key


def legacy_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` under the released names (what CosyVoice's ``hift.pt`` holds)."""
    return {_legacy_name(key): value for key, value in module.state_dict().items()}
