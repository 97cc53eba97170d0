"""The CosyVoice-300M-25Hz flow: golden keys at full size (meta device), smoke inference, sampler maths, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from echat.token2wav.flow import (
    CosyVoiceFlow,
    FlowConfig,
    InterpolateRegulator,
    conditional_path,
    cosine_time_schedule,
    guided_velocity,
    mel_frames,
)
from echat.token2wav.flow_encoder import relative_positions, relative_shift

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cosyvoice_300m_25hz.tsv"
FULL_PARAMETERS = 104_874_752  # hparams note §"How the listing was produced"
SMOKE = FlowConfig.smoke()


@pytest.fixture(scope="module")
def smoke_flow() -> CosyVoiceFlow:
    torch.manual_seed(0)
    return CosyVoiceFlow(SMOKE).eval()


def inputs(n_tokens: int, n_prompt: int = 5, prompt_frames: int = 17, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    return dict(tokens=torch.randint(0, SMOKE.vocab_size, (1, n_tokens), generator=rng),
                prompt_tokens=torch.randint(0, SMOKE.vocab_size, (1, n_prompt), generator=rng),
                prompt_mel=torch.randn(1, prompt_frames, 80, generator=rng), speaker=torch.randn(1, 192, generator=rng))


def test_full_size_state_dict_is_the_golden_flow_layout():
    golden = [line.split("\t")[:2] for line in GOLDEN.read_text().splitlines() if line.startswith("flow.")]
    with torch.device("meta"):
        flow = CosyVoiceFlow(FlowConfig.full())
    ours = [[key, ",".join(map(str, value.shape))] for key, value in flow.state_dict().items()]
    assert len(golden) == 1185
    assert ours == [[key.removeprefix("flow."), shape] for key, shape in golden]
    assert sum(p.numel() for p in flow.parameters()) == FULL_PARAMETERS


def test_mel_frames_is_the_reference_truncation():
    assert [mel_frames(n) for n in (1, 20, 25, 50, 100)] == [3, 68, 86, 172, 344]


@pytest.mark.parametrize("n_tokens", [7, 45])  # 45 > 40: head / middle / tail interpolation
def test_saved_smoke_weights_load_strictly_and_give_the_target_mel(smoke_flow, tmp_path, n_tokens):
    path = tmp_path / "flow.pt"
    torch.save(smoke_flow.state_dict(), path)
    loaded = CosyVoiceFlow(SMOKE).eval()
    loaded.load_state_dict(torch.load(path, weights_only=True), strict=True)
    mel = loaded.inference(**inputs(n_tokens), generator=torch.Generator().manual_seed(3))
    assert mel.shape == (1, 80, mel_frames(n_tokens))
    assert torch.isfinite(mel).all()
    again = smoke_flow.inference(**inputs(n_tokens), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(mel, again)


def test_no_prompt_gives_the_target_alone(smoke_flow):
    mel = smoke_flow.inference(**inputs(12, n_prompt=0, prompt_frames=0), n_steps=2)
    assert mel.shape == (1, 80, mel_frames(12))


def test_speaker_vector_is_normalised_before_projection(smoke_flow):
    given = inputs(8)
    louder = {**given, "speaker": 5 * given["speaker"]}
    first = smoke_flow.inference(**given, n_steps=2, generator=torch.Generator().manual_seed(1))
    second = smoke_flow.inference(**louder, n_steps=2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, second)


def test_cosine_schedule():
    times = cosine_time_schedule(10)
    expected = torch.tensor([1 - math.cos(k / 10 * math.pi / 2) for k in range(11)])
    torch.testing.assert_close(times, expected)
    steps = times.diff()
    assert times[0] == 0 and abs(float(times[-1]) - 1) < 1e-6 and (steps.diff() > 0).all()  # small steps first


def test_guidance_combination():
    conditional, unconditional = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    combined = guided_velocity(conditional, unconditional, 0.7)
    torch.testing.assert_close(combined, 1.7 * conditional - 0.7 * unconditional)


class RecordingEstimator(torch.nn.Module):
    """Velocity 1 for the conditional row, 3 for the unconditional one; keeps every call's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, x, mask, mu, t, spks, cond):
        self.calls.append(dict(x=x.clone(), mask=mask, mu=mu, t=t.clone(), spks=spks, cond=cond))
        return torch.stack([torch.ones_like(x[0]), 3 * torch.ones_like(x[0])])


def test_sampler_steps_guidance_and_unconditional_half(monkeypatch):
    torch.manual_seed(0)
    flow = CosyVoiceFlow(SMOKE).eval()
    recorder = RecordingEstimator()
    monkeypatch.setattr(flow.decoder, "estimator", recorder)
    given = inputs(10, prompt_frames=6)
    mel = flow.inference(**given, n_steps=4, generator=torch.Generator().manual_seed(7))
    frames = 6 + mel_frames(10)
    noise = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(7))  # temperature 1.0
    torch.testing.assert_close(mel, noise[:, :, 6:] + (1.7 * 1 - 0.7 * 3))  # the 4 steps' dt sum to 1
    torch.testing.assert_close(torch.stack([c["t"][0] for c in recorder.calls]), cosine_time_schedule(4)[:-1])
    first = recorder.calls[0]
    torch.testing.assert_close(first["x"][0], first["x"][1])
    assert first["mu"][1].abs().sum() == 0 and first["spks"][1].abs().sum() == 0 and first["cond"][1].abs().sum() == 0
    torch.testing.assert_close(first["cond"][0, :, :6], given["prompt_mel"][0].T)
    assert first["cond"][0, :, 6:].abs().sum() == 0 and first["mu"][0].abs().sum() > 0


def test_long_targets_keep_20_token_ends_at_68_frames():
    target = torch.cat([torch.full((1, 20, 1), 1.0), torch.zeros(1, 10, 1), torch.full((1, 20, 1), 2.0)], dim=1)
    stretched = InterpolateRegulator(1, 0).target_frames(target, mel_frames(50))  # (1, 1, 172)
    assert stretched.shape == (1, 1, 172)
    assert (stretched[0, 0, :68] == 1).all() and (stretched[0, 0, 68:104] == 0).all()
    assert (stretched[0, 0, 104:] == 2).all()


def test_conditional_path_ends_and_velocity():
    x1, noise, sigma = torch.randn(3, 80, 5), torch.randn(3, 80, 5), 1e-6
    start, velocity = conditional_path(x1, noise, torch.tensor(0.0), sigma)
    end, _ = conditional_path(x1, noise, torch.tensor(1.0), sigma)
    torch.testing.assert_close(start, noise)
    torch.testing.assert_close(end, x1 + sigma * noise)
    torch.testing.assert_close(velocity, end - start)


def test_relative_shift_puts_position_i_minus_j_at_query_i_key_j():
    length = 4
    positions = torch.arange(length - 1, -length, -1).float()  # relative position of each column
    scores = (100 * torch.arange(length).float()[:, None] + positions[None]).expand(1, 2, length, 2 * length - 1)
    shifted = relative_shift(scores)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None]
    torch.testing.assert_close(shifted[0, 1], (100 * i + (i - j)).float())


def test_relative_positions_table():
    table = relative_positions(3, 8)[0]  # rows: positions 2, 1, 0, -1, -2
    torch.testing.assert_close(table[2], torch.tensor([0.0, 1.0] * 4))
    torch.testing.assert_close(table[0, 0], torch.tensor(math.sin(2.0)))
    torch.testing.assert_close(table[4, 0], torch.tensor(math.sin(-2.0)))


def test_encoder_output_ignores_padding(smoke_flow):
    x = torch.randn(2, 9, SMOKE.token_dim)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    with torch.no_grad():
        padded = smoke_flow.encoder(x, mask)
        alone = smoke_flow.encoder(x[1:, :5])
    torch.testing.assert_close(padded[1, :5], alone[0])


def test_estimator_output_is_zero_on_padded_frames(smoke_flow):
    x, mu, cond = torch.randn(2, 80, 11), torch.randn(2, 80, 11), torch.randn(2, 80, 11)
    mask = torch.ones(2, 1, 11)
    mask[1, :, 7:] = 0
    with torch.no_grad():
        velocity = smoke_flow.decoder.estimator(x, mask, mu, torch.rand(2), torch.randn(2, 80), cond)
    assert velocity[1, :, 7:].abs().sum() == 0 and velocity[1, :, :7].abs().sum() > 0
    assert velocity[0, :, 7:].abs().sum() > 0


@pytest.mark.parametrize(("change", "message"), [
    (dict(tokens=torch.tensor([[1, SMOKE.vocab_size]])), r"tokens must lie in \[0, 64\)"),
    (dict(tokens=torch.tensor([[-1, 2]])), r"tokens must lie in \[0, 64\)"),
    (dict(tokens=torch.zeros(1, 0, dtype=torch.long)), r"tokens must be integer ids of shape \(1, T\) with T >= 1"),
    (dict(tokens=torch.zeros(1, 3)), "tokens must be integer ids"),
    (dict(prompt_tokens=torch.tensor([[70]])), r"prompt_tokens must lie in \[0, 64\)"),
    (dict(prompt_mel=torch.zeros(1, 17, 100)), r"prompt_mel must have shape \(1, frames, 80\), got \(1, 17, 100\)"),
    (dict(prompt_mel=torch.zeros(1, 0, 80)), "prompt_tokens .5. and prompt_mel .0 frames. must both be empty"),
    (dict(speaker=torch.zeros(1, 80)), r"speaker must have shape \(1, 192\), got \(1, 80\)"),
])
def test_bad_input_is_one_clear_value_error(smoke_flow, change, message):
    with pytest.raises(ValueError, match=message):
        smoke_flow.inference(**{**inputs(6), **change}, n_steps=1)


def test_zero_steps_is_refused(smoke_flow):
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        smoke_flow.inference(**inputs(6), n_steps=0)


def test_trajectory_yields_every_euler_step_and_ends_at_the_inference_mel(smoke_flow):
    steps = list(smoke_flow.trajectory(**inputs(9), n_steps=3, generator=torch.Generator().manual_seed(2)))
    assert len(steps) == 3 and all(step.shape == (1, 80, mel_frames(9)) for step in steps)
    final = smoke_flow.inference(**inputs(9), n_steps=3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(steps[-1], final)
    assert not torch.allclose(steps[0], steps[-1])
