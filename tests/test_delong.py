"""DeLong's test against an independent computation from the Mann-Whitney pairwise kernel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from cxrprobe.stats.delong import delong_test, structural_components


def _kernel_components(y: np.ndarray, s: np.ndarray):
    """V10, V01 and AUC straight from psi(x, y) over all positive-negative pairs (O(m n))."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    return psi.mean(axis=1), psi.mean(axis=0), psi.mean()


def _reference(y, a, b, alpha=0.05):
    v10a, v01a, auc_a = _kernel_components(y, a)
    v10b, v01b, auc_b = _kernel_components(y, b)
    m, n = len(v10a), len(v01a)
    s10 = np.cov(np.stack([v10a, v10b]))
    s01 = np.cov(np.stack([v01a, v01b]))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (auc_b - auc_a) / np.sqrt(var)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(var)
    return dict(
        auc_a=auc_a,
        auc_b=auc_b,
        var_a=cov[0, 0],
        var_b=cov[1, 1],
        cov=cov[0, 1],
        z=z,
        p=2 * norm.sf(abs(z)),
        ci_low=auc_b - auc_a - half,
        ci_high=auc_b - auc_a + half,
    )


def _data(seed, n=60, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    a = rng.normal(size=n) + y
    b = 0.6 * a + rng.normal(size=n) + 0.5 * y  # correlated with a
    if ties:
        a, b = np.round(a), np.round(b)
    return y, a, b


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_structural_components_equal_the_pairwise_kernel(seed, ties):
    y, a, _ = _data(seed, ties=ties)
    auc, v10, v01 = structural_components(y, a[None, :])
    ref10, ref01, ref_auc = _kernel_components(y, a)
    np.testing.assert_allclose(v10[0], ref10, atol=1e-12)
    np.testing.assert_allclose(v01[0], ref01, atol=1e-12)
    assert auc[0] == pytest.approx(ref_auc, abs=1e-12) == roc_auc_score(y, a)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_delong_test_equals_independent_computation(seed, ties):
    y, a, b = _data(seed, ties=ties)
    result = delong_test(y, a, b, alpha=0.1)
    expected = _reference(y, a, b, alpha=0.1)
    for key, value in expected.items():
        assert getattr(result, key)[0] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert result.reasons == [None]


def test_labels_are_independent_and_unannotated_rows_left_out():
    y, a, b = _data(5, n=80)
    targets = np.column_stack([y, y])
    targets[::3, 1] = np.nan
    result = delong_test(targets, np.column_stack([a, a]), np.column_stack([b, b]))
    keep = ~np.isnan(targets[:, 1])
    expected = _reference(y[keep], a[keep], b[keep])
    assert result.p[1] == pytest.approx(expected["p"], rel=1e-9)
    assert result.p[0] == pytest.approx(_reference(y, a, b)["p"], rel=1e-9)


def test_identical_models_give_p_one_and_too_few_rows_are_explained():
    y, a, _ = _data(1)
    same = delong_test(y, a, a.copy())
    assert same.delta[0] == 0 and same.p[0] == 1.0
    tiny = delong_test(np.array([1, 0, 0, 0.0]), np.arange(4.0), np.arange(4.0)[::-1])
    assert np.isnan(tiny.p[0]) and "at least 2 positive" in tiny.reasons[0]


def test_clearly_better_model_is_significant():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.5).astype(float)
    weak, strong = rng.normal(size=400) + 0.3 * y, rng.normal(size=400) + 2.0 * y
    result = delong_test(y, weak, strong)
    assert result.delta[0] > 0 and result.p[0] < 1e-6 and result.ci_low[0] > 0


def test_zero_variance_with_a_difference_is_infinite_z_and_p_zero_with_a_note():
    # A separates perfectly (every component 1 or 0), B is constant (every component 1/2):
    # both have zero variance, delta = 0.5 - 1 = -0.5; pROC's roc.test gives Z = -Inf, p = 0.
    y = np.array([1, 1, 1, 0, 0, 0], dtype=float)
    perfect, constant = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), np.full(6, 0.5)
    result = delong_test(y, perfect, constant)
    assert result.delta[0] == -0.5 and result.z[0] == -np.inf and result.p[0] == 0.0
    assert result.reasons == [None] and "variance of the difference is 0" in result.notes[0]
    assert result.ci_low[0] == result.ci_high[0] == -0.5
    assert delong_test(y, perfect, perfect.copy()).notes == [None]
