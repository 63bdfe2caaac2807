"""Open-set threshold rules on synthetic scores."""

import numpy as np
import pytest

from amfp_train.calibrate import (balanced_threshold, choose_threshold, keep_threshold,
                                  open_set_rates)


def test_keep_rule_keeps_the_asked_fraction():
    known = np.linspace(0.3, 1.0, 200)
    t = keep_threshold(known, 0.99)
    r = open_set_rates(known, [], t)
    assert r["false_reject_rate"] <= 0.01
    assert (known < t).sum() == 2  # the highest threshold that does it
    assert keep_threshold([], 0.99) == 0.0


def test_balanced_rule_separates_separable_scores():
    known = np.random.default_rng(0).uniform(0.7, 1.0, 300)
    unknown = np.random.default_rng(1).uniform(0.2, 0.6, 100)
    t = balanced_threshold(known, unknown, max_false_reject=0.05)
    r = open_set_rates(known, unknown, t)
    assert 0.6 <= t <= 0.7
    assert r["false_reject_rate"] == 0.0 and r["unknown_detection_rate"] == 1.0


def test_balanced_rule_caps_false_rejects():
    rng = np.random.default_rng(2)
    known = rng.uniform(0.3, 1.0, 1000)
    unknown = rng.uniform(0.3, 0.8, 1000)  # overlapping: the best balance rejects many known parts
    free = balanced_threshold(known, unknown, max_false_reject=1.0)
    capped = balanced_threshold(known, unknown, max_false_reject=0.05)
    assert open_set_rates(known, unknown, free)["false_reject_rate"] > 0.2
    assert open_set_rates(known, unknown, capped)["false_reject_rate"] <= 0.05
    assert capped < free


def test_rule_choice_and_fallback():
    known = [0.9, 0.95, 1.0]
    assert choose_threshold(known, [], "balanced")[1] == "keep"
    assert choose_threshold(known, [0.4], "balanced")[1] == "balanced"
    assert choose_threshold(known, [0.4], "keep")[1] == "keep"
    with pytest.raises(ValueError):
        choose_threshold(known, [], "nope")


def test_rates():
    r = open_set_rates([0.5, 0.9], [0.3, 0.8], 0.6)
    assert r["false_reject_rate"] == 0.5 and r["unknown_detection_rate"] == 0.5
    assert r["known_parts"] == 2 and r["unknown_parts"] == 2
