"""DeLong's test for two correlated AUROCs, with the fast O(n log n) algorithm of Sun & Xu (2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of AUROCs measured on the same
rows from the structural components of the Mann-Whitney statistic: for a positive row i,
V10_i = mean over negatives j of psi(x_i, y_j); for a negative row j, V01_j = mean over positives
i of psi(x_i, y_j), with psi = 1 if x > y, 1/2 if equal, 0 otherwise. Sun & Xu obtain them from
mid-ranks instead of the m x n kernel: V10_i = (Z_i - X_i) / n, V01_j = 1 - (Z_j - Y_j) / m, with
Z, X, Y the mid-ranks among all, positive and negative rows. Z_i - X_i is the number of negatives
below x_i plus half those tied with it, so here one sort per model and label gives all of them:
per group of tied scores, the count of each class in and below the group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from cxrprobe.stats.auroc import annotated_in_order, as_table


def structural_components(
    targets: np.ndarray, scores: np.ndarray, orders: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs and DeLong structural components of k models on one label.

    Parameters
    ----------
    targets : ndarray of shape (n,)
        1 / 0 (rows with NaN must be removed by the caller).
    scores : ndarray of shape (k, n)
        One row per model.
    orders : ndarray of shape (k, n), optional
        An ascending order of each model's scores, when already known.

    Returns
    -------
    auc : ndarray of shape (k,)
    v10 : ndarray of shape (k, m)
        Per positive row: share of negatives it outranks (ties ½).
    v01 : ndarray of shape (k, n_neg)
        Per negative row: share of positives that outrank it (ties ½).

    Examples
    --------
    >>> auc, v10, v01 = structural_components(np.array([1, 1, 0, 0]),
    ...                                       np.array([[0.9, 0.4, 0.4, 0.1]]))
    >>> auc.tolist(), v10.tolist(), v01.tolist()
    ([0.875], [[1.0, 0.75]], [[0.75, 1.0]])
    """
    positive = np.asarray(targets) == 1
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(positive.sum()), int((~positive).sum())
    v10 = np.empty((scores.shape[0], m))
    v01 = np.empty((scores.shape[0], n))
    for k, row in enumerate(scores):
        order = None if orders is None else orders[k]
        group, pos_below, pos_in, neg_below, neg_in = _tie_groups(row, positive, order)
        v10[k] = (neg_below + 0.5 * neg_in)[group[positive]] / n
        v01[k] = (m - pos_below - 0.5 * pos_in)[group[~positive]] / m
    return v10.mean(axis=1), v10, v01


def _tie_groups(
    values: np.ndarray, positive: np.ndarray, order: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """Group of tied values of each row, and per group the positives and negatives below / in it."""
    if order is None:
        order = np.argsort(values)
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    cum_pos = np.r_[0, np.cumsum(positive[order])]
    pos_below = cum_pos[starts]
    pos_in = cum_pos[ends] - pos_below
    group = np.empty(values.size, dtype=np.int64)
    group[order] = np.repeat(np.arange(starts.size), ends - starts)
    return group, pos_below, pos_in, starts - pos_below, (ends - starts) - pos_in


@dataclass
class DelongResult:
    """Per-label DeLong comparison of model B against model A (all arrays of shape (L,)).

    ``delta`` = AUROC_B - AUROC_A; ``var_a``, ``var_b``, ``cov`` are the DeLong (co)variances;
    ``p`` is two-sided; ``ci_low``/``ci_high`` bound ``delta``; ``reasons`` explain NaNs and
    ``notes`` flag degenerate but defined results (zero variance).
    """

    auc_a: np.ndarray
    auc_b: np.ndarray
    var_a: np.ndarray
    var_b: np.ndarray
    cov: np.ndarray
    delta: np.ndarray
    z: np.ndarray
    p: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    reasons: list[str | None]
    notes: list[str | None]


_ZERO_VARIANCE = (
    "the DeLong variance of the difference is 0 while delta != 0 (both models' structural "
    "components are constant, e.g. a perfect or a constant score): z = {z}, p = 0, as pROC "
    "reports; the normal approximation is degenerate here, so read the bootstrap p instead"
)


def _covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    return np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]


def _subset_order(target: np.ndarray, order: np.ndarray | None) -> np.ndarray | None:
    """Positions, among the annotated rows of a label, in ascending score order (from a
    :func:`~cxrprobe.stats.auroc.score_order` column of all rows)."""
    if order is None:
        return None
    annotated = ~np.isnan(target)
    position = np.cumsum(annotated) - 1
    return position[annotated_in_order(target, order, target)]


def delong_test(
    targets: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    alpha: float = 0.05,
    *,
    orders: tuple[np.ndarray, np.ndarray] | None = None,
) -> DelongResult:
    """DeLong's test of AUROC_B - AUROC_A per label, with a (1 - alpha) CI for the difference.

    Parameters
    ----------
    targets : ndarray of shape (n, L) or (n,)
        1, 0 or NaN (not annotated; left out for that label).
    scores_a, scores_b : ndarray of the same shape
        The two models' scores on the same rows.
    alpha : float
        CI level is 1 - alpha.
    orders : pair of ndarray of shape (n, L), optional
        ``score_order`` of each model's scores, when already computed.

    Returns
    -------
    DelongResult
        p = 2 * (1 - Phi(|z|)), z = delta / sqrt(var_a + var_b - 2 cov). Labels with fewer than
        two positives or negatives are NaN with a reason; identical rankings give delta = 0 with
        zero variance, reported as p = 1; delta != 0 with zero variance gives z = +-inf and
        p = 0 (as pROC's ``roc.test``) with a note saying so.

    Examples
    --------
    >>> t = np.array([1, 1, 1, 0, 0, 0])
    >>> r = delong_test(t, np.array([.9, .8, .3, .4, .2, .1]), np.array([.9, .8, .7, .4, .2, .1]))
    >>> round(float(r.delta[0]), 4), round(float(r.p[0]), 4)
    (0.1111, 0.4795)
    """
    t, a = as_table(targets, scores_a)
    _, b = as_table(targets, scores_b)
    size = t.shape[1]
    out = {
        key: np.full(size, np.nan)
        for key in (
            "auc_a",
            "auc_b",
            "var_a",
            "var_b",
            "cov",
            "delta",
            "z",
            "p",
            "ci_low",
            "ci_high",
        )
    }
    reasons: list[str | None] = []
    notes: list[str | None] = [None] * size
    z_crit = NormalDist().inv_cdf(1 - alpha / 2)
    for col in range(size):
        rows = ~np.isnan(t[:, col])
        y = t[rows, col]
        m, n = int((y == 1).sum()), int((y == 0).sum())
        if min(m, n) < 2:
            reasons.append(
                f"DeLong needs at least 2 positive and 2 negative rows (has {m} and {n})"
            )
            continue
        reasons.append(None)
        sub = None
        if orders is not None:
            sub = np.stack([_subset_order(t[:, col], o[:, col]) for o in orders])
        auc, v10, v01 = structural_components(y, np.stack([a[rows, col], b[rows, col]]), sub)
        cov = _covariance(v10, v01)
        var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
        delta = auc[1] - auc[0]
        se = np.sqrt(max(var, 0.0))
        if se > 0:
            z = delta / se
            p = math.erfc(abs(z) / math.sqrt(2))  # 2 * Phi(-|z|)
        elif delta == 0:
            z, p = 0.0, 1.0
        else:
            z, p = np.copysign(np.inf, delta), 0.0
            notes[col] = _ZERO_VARIANCE.format(z="+inf" if delta > 0 else "-inf")
        values = dict(
            auc_a=auc[0],
            auc_b=auc[1],
            var_a=cov[0, 0],
            var_b=cov[1, 1],
            cov=cov[0, 1],
            delta=delta,
            z=z,
            p=p,
            ci_low=delta - z_crit * se,
            ci_high=delta + z_crit * se,
        )
        for key, value in values.items():
            out[key][col] = value
    return DelongResult(**out, reasons=reasons, notes=notes)


def jackknife_auroc(
    targets: np.ndarray, scores: np.ndarray, *, order: np.ndarray | None = None
) -> np.ndarray:
    """Leave-one-row-out AUROC of every label, in O(n log n) from the structural components.

    Leaving out positive i gives (U - n·V10_i) / ((m - 1)·n); leaving out negative j gives
    (U - m·V01_j) / (m·(n - 1)). Rows not annotated for a label keep the full-data AUROC.
    Used for the acceleration of BCa intervals.

    Parameters
    ----------
    targets, scores : ndarray of shape (n, L) or (n,)
    order : ndarray of shape (n, L), optional
        ``score_order(scores)`` when already computed.

    Returns
    -------
    ndarray of shape (n, L); NaN where the label is undefined without that row.

    Examples
    --------
    >>> jackknife_auroc(np.array([1, 1, 0, 0]), np.array([0.9, 0.3, 0.4, 0.1]))[:, 0].tolist()
    [0.5, 1.0, 1.0, 0.5]
    """
    t, s = as_table(targets, scores)
    out = np.full(t.shape, np.nan)
    for col in range(t.shape[1]):
        rows = np.flatnonzero(~np.isnan(t[:, col]))
        y = t[rows, col]
        pos, neg = rows[y == 1], rows[y == 0]
        m, n = pos.size, neg.size
        if m == 0 or n == 0:
            continue
        sub = None if order is None else _subset_order(t[:, col], order[:, col])[None, :]
        auc, v10, v01 = structural_components(y, s[rows, col][None, :], sub)
        u = auc[0] * m * n
        out[:, col] = auc[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[pos, col] = (u - n * v10[0]) / ((m - 1) * n) if m > 1 else np.nan
            out[neg, col] = (u - m * v01[0]) / (m * (n - 1)) if n > 1 else np.nan
    return out
