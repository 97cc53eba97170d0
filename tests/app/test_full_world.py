"""The app's full-world mode: a model without a voice of its own speaks through the app's token2wav (the CosyVoice
one for a released checkpoint, here a 22.05 kHz stand-in), and Load reads released .pt files too."""

import numpy as np
import pytest

import echat.app
from echat.app.controller import Controller, Settings
from echat.app.inputs import AppError, Clip
from echat.models.checkpoint import save_reference_checkpoint

from .conftest import SPEECH_CODES


class Voice22k:
    """A token2wav at CosyVoice's rate: 882 samples (40 ms) per token."""

    sample_rate = 22_050

    def __call__(self, tokens, **kw):
        return np.full(len(tokens) * 882, 0.1, dtype=np.float32)


def test_the_app_voices_a_model_without_a_voice_at_22khz(scripted, hello):
    scripted.token2wav = None  # as EChat.from_reference_checkpoint returns it
    voice = Voice22k()
    app = echat.app.show(model=scripted, token2wav=voice, display=False)
    assert app.controller.model.token2wav is voice
    run = app.controller.run(Clip(hello, "sample", "x"), "", Settings(decoding="greedy"))
    assert run.sample_rate == 22_050 and run.result.audio.shape == (SPEECH_CODES * 882,)
    assert run.audio_s == pytest.approx(SPEECH_CODES * 0.04)


def test_a_model_with_its_own_voice_keeps_it(scripted):
    own = scripted.token2wav
    assert Controller(scripted, token2wav=Voice22k()).model.token2wav is own


def test_load_reads_a_released_pt_and_names_it_when_its_layout_is_not_the_released_one(scripted, tmp_path):
    path = save_reference_checkpoint(scripted, tmp_path / "tag_think_final.pt")  # smoke layout, not osum-echat
    with pytest.raises(AppError, match=r"tag_think_final\.pt: does not match the osum-echat layout"):
        Controller(None, token2wav=Voice22k()).load(str(path))
