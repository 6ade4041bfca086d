"""Benjamini-Hochberg across the family of labels: by hand and against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from cxrprobe.stats.multiple import benjamini_hochberg


def test_hand_computed_case():
    # m = 5 sorted: 0.005 (k=1), 0.01 (2), 0.03 (3), 0.04 (4), 0.2 (5)
    # m p / k: 0.025, 0.025, 0.05, 0.05, 0.2 -> running minimum from the top keeps them
    p = np.array([0.04, 0.005, 0.2, 0.03, 0.01])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.05, 0.025, 0.2, 0.05, 0.025])


def test_step_up_minimum_and_cap_at_one():
    # sorted 0.02 (k=1), 0.021 (2), 0.9 (3): 3p/k = 0.06, 0.0315, 0.9 -> first lowered to 0.0315
    np.testing.assert_allclose(
        benjamini_hochberg(np.array([0.9, 0.02, 0.021])), [0.9, 0.0315, 0.0315]
    )
    assert benjamini_hochberg(np.array([1.0, 0.99]))[0] == 1.0


def test_nan_entries_are_not_in_the_family():
    out = benjamini_hochberg(np.array([0.01, np.nan, 0.04]))
    np.testing.assert_allclose(out, [0.02, np.nan, 0.04])  # m = 2, not 3
    assert np.isnan(benjamini_hochberg(np.array([np.nan, np.nan]))).all()


@pytest.mark.parametrize("seed", range(5))
def test_equals_scipy_false_discovery_control(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=15), rng.uniform(0, 0.01, size=5)])
    p[3] = p[4]  # a tie
    np.testing.assert_allclose(
        benjamini_hochberg(p), false_discovery_control(p, method="bh"), rtol=1e-12
    )


def test_family_of_one_changes_nothing_and_bad_p_is_refused():
    assert benjamini_hochberg(np.array([0.03]))[0] == 0.03
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg(np.array([0.5, 1.2]))
