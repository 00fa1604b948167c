"""Train/serve skew: expectations from the training inputs, violations per input, drift of a sample."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tasks.shipped.skew import drift, expectations, violations

DIGITS = load_digits().images.astype(np.float32)  # raw 0..16, as the service receives them
EXPECTED = expectations(DIGITS[:1400], "images", "v1")


def test_expectations_hold_the_training_range_of_each_statistic_and_the_data_version():
    stats = EXPECTED["statistics"]
    assert set(stats) == {"pixel_min", "pixel_max", "pixel_mean", "pixel_std"} and EXPECTED["data_version"] == "v1"
    means = DIGITS[:1400].reshape(1400, -1).mean(1)
    assert stats["pixel_mean"]["min"] == pytest.approx(means.min()) and stats["pixel_mean"]["max"] == pytest.approx(means.max())


def test_training_like_inputs_break_nothing_and_odd_ones_are_counted_per_check():
    assert violations(DIGITS[:1400], "images", EXPECTED) == {}  # by construction: the training inputs themselves
    odd = np.stack([np.zeros((8, 8)), np.full((8, 8), 16.0)]).astype(np.float32)  # blank, and all ink
    found = violations(odd, "images", EXPECTED)
    assert found["constant_image"] == 2 and found["pixel_mean"] == 2 and found["pixel_std"] == 2


def test_a_sample_like_the_training_data_has_not_drifted_and_a_brighter_one_has():
    held_out = DIGITS[1400:]
    calm = drift(held_out, "images", EXPECTED, max_shift=0.25)
    assert not calm["drifted"] and calm["score"] < 0.25 and calm["samples"] == len(held_out)
    brighter = np.clip(held_out * 1.6, 0, 16)  # a scanner with another gain
    moved = drift(brighter, "images", EXPECTED, max_shift=0.25)
    assert moved["drifted"] and moved["worst"] in ("pixel_mean", "pixel_std") and moved["score"] > 0.25


def test_tables_are_checked_feature_by_feature():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 3))
    expected = expectations(train, "table", "t1")
    assert set(expected["statistics"]) == {"feature_0", "feature_1", "feature_2"}
    shifted = rng.normal(size=(300, 3)) + np.array([0.0, 0.0, 1.0])
    report = drift(shifted, "table", expected, max_shift=0.25)
    assert report["drifted"] and report["worst"] == "feature_2"
    assert violations(np.array([[0.0, 0.0, 99.0]]), "table", expected) == {"feature_2": 1}
