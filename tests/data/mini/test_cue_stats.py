"""Cue statistics of EChat-mini clips: seven numbers per clip, and a nearest-centroid reading of labels."""

import numpy as np

from echat.data.mini.cue_stats import FEATURES, clip_features, nearest_centroid_accuracy, per_label_means
from echat.data.mini.voices import ClipRecipe, Speaker, render_clip


def test_clip_features_tell_a_low_voice_from_a_high_one():
    def features(gender: str, variant: str) -> np.ndarray:
        recipe = ClipRecipe("My sister is coming to visit tomorrow.", Speaker(gender, "<ADULT>", variant),
                            "<NEUTRAL>", "<OTHER>", "after", "train", None, 0)
        return clip_features(render_clip(recipe), 7)

    low, high = features("<MALE>", "m1"), features("<FEMALE>", "f1")
    assert low.shape == (len(FEATURES),) and np.isfinite(low).all()
    f0 = FEATURES.index("f0_median_hz")
    assert low[f0] < high[f0]


def test_separable_labels_are_read_and_means_are_per_label():
    rng = np.random.default_rng(0)
    labels = ["a", "b"] * 20
    features = rng.normal(1.0, 0.1, (40, len(FEATURES))) + np.array([[0.0] if x == "a" else [5.0] for x in labels])
    assert nearest_centroid_accuracy(features, labels) == 1.0
    means = per_label_means(features, labels)
    assert set(means) == {"a", "b"} and means["b"][FEATURES[0]] > means["a"][FEATURES[0]] + 4
