"""Exact AUROC against scikit-learn (random and heavily tied scores), undefined labels, doctests."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from cxrprobe.stats.auroc import auroc, auroc_report, mean_auroc, midranks

STATS_MODULES = [
    "auroc",
    "bootstrap",
    "calibration",
    "delong",
    "groups",
    "intervals",
    "multiple",
    "predictions",
    "thresholds",
    "verdict",
]


def _sklearn_per_label(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = []
    for col in range(targets.shape[1]):
        rows = ~np.isnan(targets[:, col])
        y = targets[rows, col]
        out.append(roc_auc_score(y, scores[rows, col]) if 0 < y.sum() < y.size else np.nan)
    return np.array(out)


def _data(seed: int, n: int = 500, labels: int = 6, tie_levels: int | None = None):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, labels)) < rng.uniform(0.02, 0.9, labels)).astype(float)
    targets[rng.random((n, labels)) < 0.15] = np.nan
    scores = rng.normal(size=(n, labels)) + np.nan_to_num(targets) * rng.uniform(0, 2, labels)
    if tie_levels is not None:
        scores = np.floor(scores * tie_levels / 4)
    return targets, scores


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tie_levels", [None, 2, 10])
def test_auroc_equals_sklearn(seed, tie_levels):
    targets, scores = _data(seed, tie_levels=tie_levels)
    expected = _sklearn_per_label(targets, scores)
    np.testing.assert_allclose(auroc(targets, scores), expected, rtol=0, atol=1e-12)


def test_all_tied_scores_give_one_half():
    targets = np.array([1, 0, 1, 0, 0.0])
    assert auroc(targets, np.full(5, 0.3)) == 0.5 == roc_auc_score(targets, np.full(5, 0.3))


def test_one_dimensional_input_gives_a_float():
    targets, scores = np.array([0, 1, 1, 0, 1.0]), np.array([0.2, 0.9, 0.4, 0.4, 0.1])
    value = auroc(targets, scores)
    assert isinstance(value, float)
    assert value == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)


def test_undefined_labels_are_nan_with_reason_and_left_out_of_mean():
    rng = np.random.default_rng(3)
    targets = (rng.random((50, 4)) < 0.4).astype(float)
    targets[:, 1] = 1.0  # only positives
    targets[:, 2] = np.nan  # nothing annotated
    targets[:, 3] = np.where(rng.random(50) < 0.5, np.nan, 0.0)  # only negatives
    scores = rng.random((50, 4))
    report = auroc_report(targets, scores)
    assert report.defined.tolist() == [True, False, False, False]
    assert np.isnan(report.values[1:]).all()
    assert report.reasons[0] is None
    assert "no negative rows among 50 annotated" in report.reasons[1]
    assert report.reasons[2] == "no annotated rows"
    assert "no positive rows" in report.reasons[3]
    assert report.n_positive[1] == 50 and report.n_negative[3] == (targets[:, 3] == 0).sum()
    expected = roc_auc_score(targets[:, 0], scores[:, 0])
    assert mean_auroc(targets, scores) == pytest.approx(expected, abs=1e-12)


def test_mean_is_nan_when_no_label_is_defined():
    assert np.isnan(mean_auroc(np.ones((3, 2)), np.random.default_rng(0).random((3, 2))))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same"):
        auroc(np.zeros((4, 2)), np.zeros((4, 3)))


@pytest.mark.parametrize("seed", range(3))
def test_midranks_equal_scipy_average_ranks(seed):
    values = np.random.default_rng(seed).integers(0, 7, 200).astype(float)
    np.testing.assert_array_equal(midranks(values), rankdata(values, method="average"))


@pytest.mark.parametrize("name", STATS_MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"cxrprobe.stats.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
