"""Are the labels in the audio? Simple acoustic statistics per clip, per-label tables, a nearest-centroid
check and a plot — computed with librosa, no training.

Features per clip (voiced = frames whose RMS is above 30 % of the clip's maximum):
median F0 (Hz, YIN), F0 spread (p90/p10 ratio), loudness (mean RMS in dB of the voiced frames),
voiced time per word (s, a speaking-rate proxy), spectral centroid (Hz, voiced frames), the share of
frames that are voiced, and the clip duration (s).
"""

from __future__ import annotations

from collections import defaultdict

import librosa
import numpy as np

FEATURES = ("f0_median_hz", "f0_spread", "loudness_db", "seconds_per_word", "centroid_hz", "voiced_share",
            "duration_s")
SAMPLE_RATE_HZ = 16_000
FRAME, HOP = 1024, 256


def clip_features(wave: np.ndarray, n_words: int) -> np.ndarray:
    """The FEATURES of one 16 kHz clip. Returns (7,)."""
    f0 = librosa.yin(wave, fmin=60, fmax=600, sr=SAMPLE_RATE_HZ, frame_length=FRAME, hop_length=HOP)
    rms = librosa.feature.rms(y=wave, frame_length=FRAME, hop_length=HOP)[0]
    centroid = librosa.feature.spectral_centroid(y=wave, sr=SAMPLE_RATE_HZ, n_fft=FRAME, hop_length=HOP)[0]
    n = min(len(f0), len(rms), len(centroid))
    voiced = rms[:n] > 0.3 * rms.max()
    f0v = f0[:n][voiced]
    p10, p50, p90 = np.percentile(f0v, [10, 50, 90])
    return np.array([
        p50, p90 / p10, 20 * np.log10(rms[:n][voiced].mean() + 1e-9),
        voiced.sum() * HOP / SAMPLE_RATE_HZ / max(n_words, 1), centroid[:n][voiced].mean(), voiced.mean(),
        len(wave) / SAMPLE_RATE_HZ,
    ])


LOG_SCALED = ("f0_median_hz", "f0_spread", "centroid_hz")  # heard on a log scale (pitch, brightness)


def nearest_centroid_accuracy(features: np.ndarray, labels: list[str]) -> float:
    """Leave-one-out nearest-centroid accuracy on z-scored features (pitch-like ones in log). features: (N, F)."""
    features = features.copy()
    for name in LOG_SCALED:
        features[:, FEATURES.index(name)] = np.log(features[:, FEATURES.index(name)])
    z = (features - features.mean(0)) / (features.std(0) + 1e-9)
    labels = np.asarray(labels)
    classes = sorted(set(labels))
    correct = 0
    for i in range(len(z)):
        keep = np.arange(len(z)) != i
        centroids = [z[keep & (labels == c)].mean(0) if (keep & (labels == c)).any() else np.full(z.shape[1], np.inf)
                     for c in classes]
        guess = classes[int(np.argmin([np.linalg.norm(z[i] - c) for c in centroids]))]
        correct += guess == labels[i]
    return correct / len(z)


def per_label_means(features: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    """{label: {feature: mean}}."""
    groups = defaultdict(list)
    for row, label in zip(features, labels):
        groups[label].append(row)
    return {label: dict(zip(FEATURES, np.mean(rows, 0).round(3).tolist())) for label, rows in sorted(groups.items())}


def plot_cues(features: np.ndarray, labels: dict[str, list[str]], path) -> None:
    """Box plots of the telling feature for each label family: F0 by gender and age, rate and
    loudness and F0 spread by emotion, duration by sound event. Saved as a PNG."""
    from matplotlib.figure import Figure  # a standalone figure: the caller's plotting backend is untouched

    panels = [("gender", "f0_median_hz"), ("age", "f0_median_hz"), ("age", "centroid_hz"),
              ("emotion", "seconds_per_word"), ("emotion", "loudness_db"), ("emotion", "f0_spread"),
              ("event", "duration_s"), ("event", "voiced_share")]
    fig = Figure(figsize=(16, 7))
    axes = fig.subplots(2, 4)
    for ax, (family, feature) in zip(axes.flat, panels):
        classes = sorted(set(labels[family]))
        column = features[:, FEATURES.index(feature)]
        ax.boxplot([column[np.asarray(labels[family]) == c] for c in classes], showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), [c.strip("<>").lower()[:8] for c in classes], rotation=40)
        ax.set_title(f"{feature} by {family}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
