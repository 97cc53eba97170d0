"""EChat-mini's voices: a clip is a function of its recipe, cues change the sound, noise sits at its SNR."""

import numpy as np

from echat.data.mini.voices import ClipRecipe, Speaker, add_noise, render_clip, user_voice

ADULT = Speaker("<FEMALE>", "<ADULT>", "f1")


def _recipe(**changes) -> ClipRecipe:
    fields = dict(text="I finally finished the report.", speaker=ADULT, emotion="<NEUTRAL>", event="<OTHER>",
                  event_position="after", zone="train", snr_db=None, seed=3)
    return ClipRecipe(**{**fields, **changes})


def test_a_clip_is_a_function_of_its_recipe():
    first, again = render_clip(_recipe()), render_clip(_recipe())
    assert first.dtype == np.float32 and np.array_equal(first, again) and np.abs(first).max() < 1
    assert _recipe().to_json()["speaker"] == {"gender": "<FEMALE>", "age": "<ADULT>", "variant": "f1"}


def test_an_event_adds_its_sound_and_an_emotion_changes_the_voice():
    plain = render_clip(_recipe())
    assert len(render_clip(_recipe(event="<COUGH>"))) > len(plain)
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    assert user_voice(ADULT, "<ANGRY>", rng()).volume > user_voice(ADULT, "<SAD>", rng()).volume
    assert user_voice(Speaker("<MALE>", "<ADULT>", "m1"), "<NEUTRAL>", rng()).pitch < user_voice(
        ADULT, "<NEUTRAL>", rng()).pitch


def test_noise_is_mixed_at_the_asked_signal_to_noise_ratio():
    clip = np.sin(np.linspace(0, 400 * np.pi, 16_000)).astype(np.float32)
    noisy = add_noise(clip, 10.0, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(clip ** 2) / np.mean((noisy - clip) ** 2))
    assert abs(snr - 10.0) < 0.01
