"""EChat-mini's voices: how each gender, age, emotion and sound event is put into the audio.

Design choices (the recipe is also tabled in ``data/README.md``):
- Cues are orthogonal: gender picks the eSpeak variant family and a pitch band; age scales the
  vocal tract (child), or slows and flattens the voice with the grandpa/grandma variants (old)
  *inside* that band; emotion moves rate, pitch, range, volume and pauses relative to the speaker.
- Every prosody value gets a small random jitter; the test split's "new prosody settings" draw the
  jitter from a range training never uses (``jitter_zone``).
- Sound events are synthetic stand-ins — eSpeak vocal bursts (laugh, cry, scream, sneeze, "ahem")
  and shaped, filtered noise (cough, sigh, sneeze burst, throat rumble) — placed before or after the
  sentence. Optional background noise is mixed at a given SNR.
- Everything is a function of the arguments and a seeded ``numpy`` generator: deterministic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfilt

from echat.data.mini.espeak import Voice, synthesize

SAMPLE_RATE_HZ = 16_000
GAP_S = 0.12  # silence between an event and the sentence
PEAK = 0.9  # event sounds and replies are peak-normalised to this level
LOUDEST_VOLUME = 185  # the angriest eSpeak volume: its speech peaks at PEAK, quieter emotions lower

MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
OLD_VARIANTS = {"<MALE>": "grandpa", "<FEMALE>": "grandma"}
BASE_PITCH = {"<MALE>": 38, "<FEMALE>": 58}  # eSpeak pitch 0-100: ~95 Hz male, ~190 Hz female
CHILD_TRACT = 1.38  # vocal-tract scale for children: F0 and formants up by 38 %

# Emotion prosody relative to the speaker: (rate factor, pitch offset, pitch range, volume, word gap x10 ms)
EMOTION_PROSODY = {
    "<NEUTRAL>": (1.00, 0, 45, 100, 0),
    "<HAPPY>": (1.12, 10, 90, 125, 0),
    "<SAD>": (0.74, -10, 8, 70, 3),
    "<ANGRY>": (1.25, 2, 65, 185, 0),
    "<FEAR>": (1.38, 14, 18, 90, 1),
    "<SURPRISE>": (0.95, 16, 100, 135, 0),
}
TREMOLO_HZ = {"<FEAR>": 7.0}  # a trembling voice: amplitude modulation
AGE_PROSODY = {"<CHILD>": (1.05, 8, 1.0), "<ADULT>": (1.0, 0, 1.0), "<OLD>": (0.8, -4, 0.6)}  # rate, pitch, range x

# The assistant's fixed voice; prosody follows the reply emotion.
ASSISTANT_VARIANT = "f4"
REPLY_PROSODY = {
    "<NEUTRAL>": (1.0, 0, 45, 100), "<HAPPY>": (1.1, 6, 80, 115), "<DELIGHTED>": (1.12, 8, 90, 120),
    "<COMFORTING>": (0.85, -4, 25, 80), "<SORRY>": (0.9, -6, 20, 85), "<SURPRISED>": (1.0, 10, 100, 120),
    "<AFRAID>": (1.2, 10, 30, 100), "<SAD>": (0.8, -8, 10, 75), "<ANGRY>": (1.2, 0, 60, 150),
    "<DISGUSTED>": (0.9, -4, 40, 100), "<TEARFUL>": (0.8, 4, 60, 80),
}


@dataclass(frozen=True)
class Speaker:
    """One synthetic user: gender, age and the eSpeak variant that voices them."""

    gender: str
    age: str
    variant: str

    @classmethod
    def draw(cls, gender: str, age: str, rng: np.random.Generator) -> Speaker:
        if age == "<OLD>":
            return cls(gender, age, OLD_VARIANTS[gender])
        pool = MALE_VARIANTS if gender == "<MALE>" else FEMALE_VARIANTS
        return cls(gender, age, str(rng.choice(pool)))


def _jitter(rng: np.random.Generator, zone: str) -> float:
    """A value in [-1, 1]: training draws |u| >= 0.35, the test's new settings draw |u| < 0.35."""
    u = rng.uniform(0.35, 1.0) if zone == "train" else rng.uniform(0.0, 0.35)
    return float(u if rng.random() < 0.5 else -u)


def user_voice(speaker: Speaker, emotion: str, rng: np.random.Generator, zone: str = "train") -> Voice:
    """The eSpeak voice of ``speaker`` saying something with ``emotion``."""
    rate, pitch, span, volume, gap = EMOTION_PROSODY[emotion]
    age_rate, age_pitch, age_span = AGE_PROSODY[speaker.age]
    base_rate = 160 * (1 + 0.08 * _jitter(rng, zone))
    return Voice(
        name=f"en-us+{speaker.variant}",
        rate_wpm=round(base_rate * rate * age_rate),
        pitch=int(np.clip(BASE_PITCH[speaker.gender] + pitch + age_pitch + round(4 * _jitter(rng, zone)), 0, 100)),
        pitch_range=int(np.clip(span * age_span + round(6 * _jitter(rng, zone)), 0, 100)),
        volume=int(np.clip(volume + round(8 * _jitter(rng, zone)), 0, 200)),
        word_gap_10ms=gap,
        tract_scale=CHILD_TRACT if speaker.age == "<CHILD>" else 1.0,
    )


def assistant_voice(reply_emotion: str) -> Voice:
    """The one assistant voice, with the prosody of the reply emotion."""
    rate, pitch, span, volume = REPLY_PROSODY[reply_emotion]
    return Voice(name=f"en-us+{ASSISTANT_VARIANT}", rate_wpm=round(170 * rate), pitch=55 + pitch,
                 pitch_range=span, volume=volume)


# ----------------------------------------------------------------------------------------------
# Sound events
# ----------------------------------------------------------------------------------------------


def _band_noise(seconds: float, low_hz: float, high_hz: float, rng: np.random.Generator) -> np.ndarray:
    sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=SAMPLE_RATE_HZ, output="sos")
    return sosfilt(sos, rng.standard_normal(int(seconds * SAMPLE_RATE_HZ))).astype(np.float32)


def _burst(seconds: float, attack_s: float, decay_s: float) -> np.ndarray:
    """An envelope: linear attack, exponential decay. (n,)"""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    return np.minimum(t / attack_s, 1.0) * np.exp(-np.maximum(t - attack_s, 0) / decay_s)


def _normalise(x: np.ndarray, peak: float = PEAK) -> np.ndarray:
    top = float(np.abs(x).max())
    return (x * (peak / top)).astype(np.float32) if top > 0 else x.astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE_HZ), dtype=np.float32)


def _vocal(text: str, speaker: Speaker, rng: np.random.Generator, rate_wpm: int, **prosody) -> np.ndarray:
    """A vocal burst in the speaker's own voice (a child's is sped up with the tract, so its eSpeak
    rate is raised by the same factor to stay inside eSpeak's limits)."""
    tract = CHILD_TRACT if speaker.age == "<CHILD>" else 1.0
    voice = Voice(name=f"en-us+{speaker.variant}", tract_scale=tract, rate_wpm=round(rate_wpm * tract), **prosody)
    return _normalise(synthesize(text, voice))


def _cough(speaker, rng):
    one = lambda: _band_noise(0.18, 250, 2500, rng) * _burst(0.18, 0.006, 0.05)  # noqa: E731
    return _normalise(np.concatenate([one(), _silence(0.12), one()]))


def _sigh(speaker, rng):
    n = _band_noise(0.8, 150, 1500, rng)
    return _normalise(n * np.hanning(len(n)).astype(np.float32), 0.35)


def _sneeze(speaker, rng):
    ah = _vocal("ah", speaker, rng, rate_wpm=120, pitch=80, pitch_range=80)
    choo = _band_noise(0.22, 2000, 7000, rng) * _burst(0.22, 0.004, 0.07)
    return _normalise(np.concatenate([ah, _silence(0.05), _normalise(choo)]))


def _throat(speaker, rng):
    rumble = _band_noise(0.14, 80, 700, rng) * _burst(0.14, 0.01, 0.06)
    ahem = _vocal("ahem", speaker, rng, rate_wpm=140, pitch=25, pitch_range=10)
    return _normalise(np.concatenate([_normalise(rumble), _silence(0.06), _normalise(rumble), ahem]))


def _laugh(speaker, rng):
    return _vocal("ha ha ha ha", speaker, rng, rate_wpm=320, pitch=80, pitch_range=90, volume=130)


def _cry(speaker, rng):
    wail = _vocal("waah waah", speaker, rng, rate_wpm=90, pitch=85, pitch_range=100, volume=110)
    return _normalise(wail * _tremolo(len(wail), 6.0, 0.5))


def _scream(speaker, rng):
    scream = _vocal("aaaaah", speaker, rng, rate_wpm=80, pitch=100, pitch_range=20, volume=200)
    return _normalise(np.clip(scream * 1.8, -PEAK, PEAK))


EVENT_SOUNDS = {"<COUGH>": _cough, "<SIGH>": _sigh, "<SNEEZE>": _sneeze, "<THROAT_CLEARING>": _throat,
                "<LAUGH>": _laugh, "<CRY>": _cry, "<SCREAM>": _scream}


def _tremolo(n: int, rate_hz: float, depth: float) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE_HZ
    return (1.0 - depth * 0.5 * (1 + np.sin(2 * np.pi * rate_hz * t))).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# One user clip
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipRecipe:
    """Everything that decides one user clip (stored in the record's ``extra.recipe``)."""

    text: str
    speaker: Speaker
    emotion: str
    event: str  # "<OTHER>" = none
    event_position: str  # "before" | "after"
    zone: str  # "train" | "test": the jitter range of the prosody
    snr_db: float | None
    seed: int

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["speaker"] = dataclasses.asdict(self.speaker)
        return data


def render_clip(recipe: ClipRecipe) -> np.ndarray:
    """The 16 kHz float32 waveform of a recipe (speech peak set by its volume, event and noise mixed in)."""
    rng = np.random.default_rng(recipe.seed)
    voice = user_voice(recipe.speaker, recipe.emotion, rng, recipe.zone)
    # Peak level follows the eSpeak volume, so loudness stays a cue (a plain normalisation erases it).
    speech = _normalise(synthesize(recipe.text, voice), PEAK * min(voice.volume / LOUDEST_VOLUME, 1.0))
    if recipe.emotion in TREMOLO_HZ:
        speech = speech * _tremolo(len(speech), TREMOLO_HZ[recipe.emotion], 0.35)
    if recipe.event in EVENT_SOUNDS:
        event = EVENT_SOUNDS[recipe.event](recipe.speaker, rng) * 0.7
        parts = [event, _silence(GAP_S), speech] if recipe.event_position == "before" else \
            [speech, _silence(GAP_S), event]
        speech = np.concatenate(parts)
    clip = np.concatenate([_silence(0.1), speech, _silence(0.1)])
    if recipe.snr_db is not None:
        clip = add_noise(clip, recipe.snr_db, rng)
    return np.clip(clip, -0.99, 0.99).astype(np.float32)


def add_noise(clip: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Mix pink-ish background noise at ``snr_db`` relative to the clip's power."""
    white = rng.standard_normal(len(clip))
    pink = sosfilt(butter(1, 1000, btype="lowpass", fs=SAMPLE_RATE_HZ, output="sos"), white)
    signal_power = float(np.mean(clip ** 2))
    noise_power = float(np.mean(pink ** 2)) or 1.0
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (clip + scale * pink).astype(np.float32)


def render_reply(text: str, reply_emotion: str) -> np.ndarray:
    """The assistant's spoken reply (16 kHz float32)."""
    return _normalise(synthesize(text, assistant_voice(reply_emotion)))
