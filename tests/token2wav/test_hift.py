"""HiFT vocoder: the released key layout (full size, meta device), strict loading of legacy weight-norm keys,
the wave it makes (smoke size), its f0 and NSF source, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from echat.token2wav.hift import HiFTConfig, HiFTVocoder, hift_keys, legacy_state_dict

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cosyvoice_300m_25hz.tsv"
HIFT_PREFIX = "hift."
HIFT_KEYS = 227
HIFT_PARAMETERS = 20_460_591
SAMPLES_PER_FRAME = 256
RATE_HZ = 22_050
MEL_FRAMES = 9


def _golden_hift_lines() -> list[str]:
    return [line for line in GOLDEN.read_text(encoding="utf-8").splitlines() if line.startswith(HIFT_PREFIX)]


def _layout_lines(model: HiFTVocoder) -> list[str]:
    """``hift.KEY<TAB>d0,d1,...<TAB>float32`` per state-dict entry, in the released naming and order."""
    shapes = [tuple(value.shape) for value in model.state_dict().values()]
    return [f"{HIFT_PREFIX}{key}\t{','.join(map(str, shape))}\tfloat32" for key, shape in zip(hift_keys(model), shapes)]


@pytest.fixture(scope="module")
def full_meta() -> HiFTVocoder:
    with torch.device("meta"):
        return HiFTVocoder(HiFTConfig.full())


def test_full_hift_matches_the_released_layout_key_for_key(full_meta):
    golden = _golden_hift_lines()
    assert len(golden) == HIFT_KEYS
    assert _layout_lines(full_meta) == golden
    assert sum(value.numel() for value in full_meta.state_dict().values()) == HIFT_PARAMETERS


def _random_legacy_state(config: HiFTConfig, seed: int) -> dict[str, torch.Tensor]:
    """A state dict in the released naming (weight_g / weight_v) with random values, for ``config``."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [value.shape for value in HiFTVocoder(config).state_dict().values()]
    keys = hift_keys(HiFTVocoder(config))
    return {key: 0.3 * torch.randn(shape, generator=generator) for key, shape in zip(keys, shapes)}


@pytest.fixture(scope="module")
def smoke_state() -> dict[str, torch.Tensor]:
    return _random_legacy_state(HiFTConfig.smoke(), seed=0)


@pytest.fixture(scope="module")
def smoke_model(smoke_state) -> HiFTVocoder:
    model = HiFTVocoder(HiFTConfig.smoke()).eval()
    model.load_state_dict(smoke_state, strict=True)
    return model


def test_legacy_weight_norm_keys_load_strictly_as_g_times_unit_v(smoke_model, smoke_state):
    assert any(key.endswith(".weight_g") for key in smoke_state)
    g, v = smoke_state["conv_pre.weight_g"], smoke_state["conv_pre.weight_v"]  # (C, 1, 1), (C, 80, 7)
    expected = g * v / v.norm(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(smoke_model.conv_pre.weight, expected)
    for key, value in legacy_state_dict(smoke_model).items():
        torch.testing.assert_close(value, smoke_state[key])


def test_a_missing_or_foreign_key_is_refused(smoke_state):
    partial = {key: value for key, value in smoke_state.items() if key != "ups.0.weight_g"}
    with pytest.raises(RuntimeError, match="ups.0"):
        HiFTVocoder(HiFTConfig.smoke()).load_state_dict(partial, strict=True)


def test_forward_gives_256_samples_per_frame_clamped_and_finite(smoke_model):
    mel = torch.randn(1, 80, MEL_FRAMES, generator=torch.Generator().manual_seed(1)) - 4.0
    with torch.no_grad():
        wave = smoke_model(mel, generator=torch.Generator().manual_seed(0))
    assert wave.shape == (1, MEL_FRAMES * SAMPLES_PER_FRAME)
    assert wave.dtype == torch.float32
    assert torch.isfinite(wave).all()
    assert wave.abs().max() <= 0.99


def test_huge_magnitudes_are_clipped_then_the_wave_is_clamped(smoke_model):
    model = HiFTVocoder(HiFTConfig.smoke())
    model.load_state_dict(smoke_model.state_dict())
    with torch.no_grad():
        model.conv_post.bias[: model.config.n_bins] += 200.0  # exp(200) overflows float32 without the clip
        wave = model(torch.randn(1, 80, MEL_FRAMES, generator=torch.Generator().manual_seed(1)))
    assert torch.isfinite(wave).all()
    assert wave.abs().max().item() == pytest.approx(0.99)


def test_the_wave_is_deterministic_given_a_generator_and_batches_like_single_items(smoke_model):
    mels = torch.randn(2, 80, MEL_FRAMES, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = smoke_model.inference(mels, generator=torch.Generator().manual_seed(5))
        again = smoke_model.inference(mels, generator=torch.Generator().manual_seed(5))
        other = smoke_model.inference(mels, generator=torch.Generator().manual_seed(6))
        alone = smoke_model.decode(mels[1:], first.source[1:])
    torch.testing.assert_close(first.wave, again.wave, rtol=0, atol=0)
    assert not torch.equal(first.source, other.source)
    assert first.f0.shape == (2, MEL_FRAMES) and first.source.shape == (2, MEL_FRAMES * SAMPLES_PER_FRAME)
    torch.testing.assert_close(alone, first.wave[1:])


def test_f0_is_non_negative_even_where_the_classifier_is_negative(smoke_model):
    model = HiFTVocoder(HiFTConfig.smoke())
    model.load_state_dict(smoke_model.state_dict())
    with torch.no_grad():
        model.f0_predictor.classifier.bias.fill_(-50.0)  # pushes the raw output below zero
        f0 = model.f0(torch.randn(2, 80, MEL_FRAMES, generator=torch.Generator().manual_seed(3)))
    assert f0.shape == (2, MEL_FRAMES)
    assert (f0 >= 0).all() and (f0 > 0).any()


def _peak_hz(wave: torch.Tensor) -> float:
    """Frequency (Hz) of the largest non-DC bin of a wave ``(N,)`` at 22.05 kHz."""
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.numel(), dtype=wave.dtype)).abs()
    spectrum[0] = 0.0
    return float(spectrum.argmax()) * RATE_HZ / wave.numel()


@pytest.mark.parametrize("harmonic", [1, 3])
def test_the_source_of_a_constant_f0_sounds_at_f0_times_the_harmonic(harmonic):
    model = HiFTVocoder(HiFTConfig.smoke())
    frames, f0_hz = 86, 220.0  # about 1 s: bins 1 / 0.9986 s apart
    with torch.no_grad():
        model.m_source.l_linear.weight.zero_()
        model.m_source.l_linear.weight[0, harmonic - 1] = 1.0  # the mix passes one sine only
        model.m_source.l_linear.bias.zero_()
        source = model.source(torch.full((1, frames), f0_hz), torch.Generator().manual_seed(0))[0]
    assert source.shape == (frames * SAMPLES_PER_FRAME,)
    assert _peak_hz(source) == pytest.approx(harmonic * f0_hz, abs=1.5)


def test_unvoiced_frames_give_noise_only():
    model = HiFTVocoder(HiFTConfig.smoke())
    config = model.config
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        unvoiced = model.m_source.sines(torch.full((1, 20_000), config.voiced_threshold_hz), generator)
        voiced = model.m_source.sines(torch.full((1, 20_000), 200.0), generator)
    assert unvoiced.std().item() == pytest.approx(config.sine_amp / 3, rel=0.05)
    assert voiced.std().item() == pytest.approx(config.sine_amp / 2**0.5, rel=0.05)  # sines of amplitude 0.1


def test_a_mel_with_the_wrong_channels_is_one_clear_error(smoke_model):
    with pytest.raises(ValueError, match=r"mel \(B, 80, M\).*\(1, 40, 9\)"):
        smoke_model(torch.zeros(1, 40, MEL_FRAMES))
    with pytest.raises(ValueError, match=r"mel \(B, 80, M\)"):
        smoke_model.f0(torch.zeros(80, MEL_FRAMES))
    with pytest.raises(ValueError, match=r"source \(1, 2304\)"):
        smoke_model.decode(torch.zeros(1, 80, MEL_FRAMES), torch.zeros(1, 2300))
    with pytest.raises(ValueError, match=r"f0 \(B, M\)"):
        smoke_model.source(torch.zeros(1, 1, MEL_FRAMES))


def test_a_config_whose_lists_disagree_is_refused():
    with pytest.raises(ValueError, match="source_resblock"):
        HiFTConfig(source_resblock_kernel_sizes=(7,))
    with pytest.raises(ValueError, match="upsample_kernel_sizes"):
        HiFTConfig(upsample_kernel_sizes=(16,))
