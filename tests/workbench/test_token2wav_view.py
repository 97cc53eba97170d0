"""Notebook 08's helpers: the random stand-in is announced, ids fit the model, the figures draw every step."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from echat.token2wav import CosyVoiceToken2Wav
from echat.workbench import token2wav_view as view


@pytest.fixture(scope="module")
def smoke():
    return CosyVoiceToken2Wav.random("smoke", seed=0)


def test_without_the_released_folder_a_random_model_is_used_and_said(tmp_path, monkeypatch):
    monkeypatch.setenv("ECHAT_HOME", str(tmp_path))
    assert view.cosyvoice_folder("") == tmp_path / "OSUM-EChat" / "CosyVoice-300M-25Hz"
    t2w, note = view.load_cosyvoice("")
    assert note.startswith("RANDOM WEIGHTS") and str(tmp_path) in note
    assert t2w.vocab_size == 64  # smoke size


def test_mini_ids_are_folded_into_the_random_vocabulary(smoke):
    ids, how = view.cosyvoice_ids(smoke, np.zeros(16000, dtype=np.float32), np.array([3, 64, 200]))
    assert ids.tolist() == [3, 0, 8] and "folded" in how


def test_figures_show_every_step_and_the_source(smoke):
    synthesis = smoke.synthesize(np.arange(12))
    steps = view.flow_steps_figure(synthesis, columns=4)
    assert sum(ax.axison for ax in steps.axes) == len(synthesis.steps) == 10
    assert len(view.pitch_and_source_figure(synthesis).axes) == 3
    plt.close("all")


def test_glide_source_is_voiced_at_the_glide_pitch(smoke):
    f0, source = view.glide_source(smoke, seconds=0.5)
    assert f0[0] == pytest.approx(120) and f0[-1] == pytest.approx(220)
    assert source.shape == (len(f0) * 256,)
    spectrum = np.abs(np.fft.rfft(source[:4096] - source[:4096].mean()))
    peak_hz = np.argmax(spectrum[1:]) * 22050 / 4096
    assert 100 < peak_hz < 700  # a harmonic of the first ~0.19 s's 120-160 Hz, not noise
