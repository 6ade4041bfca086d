"""From bootstrap replicates to answers: means over labels, intervals and paired p-values.

Everything here works on plain numpy arrays of replicates (resamples along axis 0), so it is
the same for AUROC, threshold metrics and calibration, on CPU- or CUDA-made samples.

Bootstrap p-values that decide anything are two-sided and use the (k + 1) / (B + 1) rule
(Davison & Hinkley 1997, eq. 4.11), so no p-value is ever 0 and none is smaller than
2 / (B + 1): with B resamples a difference cannot be declared significant at alpha unless
2 / (B + 1) <= alpha (B >= 39 for alpha = 0.05). The study's own p-value (one-sided, a plain
share) is kept beside it to reproduce the paper, never to decide.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np


def mean_over_labels(samples: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Per-resample mean over the ``family`` labels (L,) bool that are defined in that resample.

    Labels undefined on the full data are not in the family; a family label whose resample has
    one class only is skipped in that resample (the same for both models, since definedness
    depends on targets and counts only). NaN where no family label is defined.

    Examples
    --------
    >>> mean_over_labels(np.array([[0.8, np.nan, 0.6], [0.7, 0.9, 0.5]]),
    ...                  np.array([True, True, False])).tolist()
    [0.8, 0.8]
    """
    chosen = samples[:, family]
    defined = ~np.isnan(chosen)
    total = np.where(defined, chosen, 0.0).sum(axis=1)
    count = defined.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI over resamples (axis 0) ignoring NaN: (lo, hi), each of shape samples[0].

    A column without any defined resample (a label undefined on the data) gives NaN quietly.

    Examples
    --------
    >>> lo, hi = percentile_interval(np.arange(101.0)[:, None], alpha=0.1)
    >>> float(lo[0]), float(hi[0])
    (5.0, 95.0)
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(samples, [50 * alpha, 100 - 50 * alpha], axis=0)
    return lo, hi


def basic_interval(
    samples: np.ndarray, estimate: np.ndarray, alpha: float = 0.05, floor: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Basic bootstrap CI (Davison & Hinkley 1997, sec. 5.2): (2 * estimate - q_hi,
    2 * estimate - q_lo) with q the percentile limits of ``samples`` (B, k); both limits raised
    to ``floor`` when given.

    Where resampling shifts a statistic away from its estimate as far as the estimate lies from
    the true value (a bias), this interval is centred where the percentile one is not; it
    contains the estimate exactly when the percentile interval does.

    Examples
    --------
    >>> samples = 0.1 + np.arange(101.0)[:, None] / 1000  # 0.100 ... 0.200
    >>> lo, hi = basic_interval(samples, np.array([0.1]), alpha=0.1)  # percentile [0.105, 0.195]
    >>> round(float(lo[0]), 3), round(float(hi[0]), 3)
    (0.005, 0.095)
    >>> [float(v[0]) for v in basic_interval(samples, np.array([0.05]), 0.1, floor=0.0)]
    [0.0, 0.0]
    """
    q_lo, q_hi = percentile_interval(samples, alpha)
    lo, hi = 2 * estimate - q_hi, 2 * estimate - q_lo
    if floor is not None:
        lo, hi = np.maximum(lo, floor), np.maximum(hi, floor)
    return lo, hi


def bias_corrected(
    samples: np.ndarray, estimate: np.ndarray, floor: float | None = None
) -> np.ndarray:
    """Bootstrap bias-corrected estimate 2 * estimate - mean of ``samples`` (B, k) per column
    (NaN resamples left out), raised to ``floor`` when given.

    Examples
    --------
    >>> bias_corrected(np.array([[0.3], [0.5], [np.nan]]), np.array([0.3])).round(3).tolist()
    [0.2]
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        corrected = 2 * estimate - np.nanmean(samples, axis=0)
    return corrected if floor is None else np.maximum(corrected, floor)


def bca_interval(
    samples: np.ndarray, estimate: np.ndarray, jackknife: np.ndarray, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected and accelerated CI (Efron 1987), column by column.

    Parameters
    ----------
    samples : ndarray of shape (B, k)
        Bootstrap replicates (NaN ignored).
    estimate : ndarray of shape (k,)
        The statistic on the full data.
    jackknife : ndarray of shape (J, k)
        Leave-one-unit-out values of the statistic (gives the acceleration).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> lo, hi = bca_interval(rng.normal(0, 1, (4000, 1)), np.zeros(1),
    ...                       rng.normal(0, 1, (50, 1)) * 0.0)
    >>> bool(-2.2 < lo[0] < -1.7 and 1.7 < hi[0] < 2.2)
    True
    """
    from scipy.special import ndtr, ndtri  # only here: scipy.special is slow to import

    lo = np.full(samples.shape[1], np.nan)
    hi = np.full(samples.shape[1], np.nan)
    z = ndtri([alpha / 2, 1 - alpha / 2])
    for k in range(samples.shape[1]):
        col = samples[:, k][~np.isnan(samples[:, k])]
        if col.size == 0 or np.isnan(estimate[k]):
            continue
        share = (np.sum(col < estimate[k]) + 0.5 * np.sum(col == estimate[k])) / col.size
        z0 = ndtri(np.clip(share, 0.5 / col.size, 1 - 0.5 / col.size))
        jk = jackknife[:, k][~np.isnan(jackknife[:, k])]
        d = jk.mean() - jk if jk.size else np.zeros(1)
        spread = np.sum(d**2)
        accel = np.sum(d**3) / (6 * spread**1.5) if spread > 0 else 0.0
        level = ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z)))
        lo[k], hi[k] = np.percentile(col, 100 * level)
    return lo, hi


class PairedPValues(NamedTuple):
    """Bootstrap p-values of paired differences, each of shape (k,)."""

    two_sided: np.ndarray
    study_one_sided: np.ndarray


def paired_p_values(deltas: np.ndarray, observed: np.ndarray) -> PairedPValues:
    """Two-sided bootstrap p-values of differences, and the study's one-sided share.

    With B' resamples in which the difference is defined (NaN ones are left out), k_le of them
    with ``delta <= 0`` and k_ge with ``delta >= 0``:

    - ``two_sided`` = min(1, 2 * (min(k_le, k_ge) + 1) / (B' + 1)): the decision p-value. Its
      smallest possible value is 2 / (B' + 1) (see :func:`smallest_p`).
    - ``study_one_sided`` = the study's definition: the share of resamples in which the model
      that is better on the full data does *not* win, i.e. ``sign(observed) * delta <= 0``
      (ties count as not winning); 1 when the observed difference is exactly 0. It is one-sided
      in the observed direction and rejects about twice as often as its nominal level under the
      null; it is reported to reproduce the paper, never used to decide.

    Parameters
    ----------
    deltas : ndarray of shape (B, k)
    observed : ndarray of shape (k,)

    Examples
    --------
    >>> p = paired_p_values(np.array([[0.1], [0.2], [-0.1], [0.3]]), np.array([0.15]))
    >>> float(p.two_sided[0]), float(p.study_one_sided[0])
    (0.8, 0.25)
    """
    defined = ~np.isnan(deltas)
    n = defined.sum(axis=0)
    not_above = np.where(defined, deltas <= 0, False).sum(axis=0)
    not_below = np.where(defined, deltas >= 0, False).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        study = np.where(observed > 0, not_above, not_below) / n
        two_sided = np.minimum(1.0, 2 * (np.minimum(not_above, not_below) + 1) / (n + 1))
    study = np.where(observed == 0, 1.0, study)
    invalid = (n == 0) | np.isnan(observed)
    return PairedPValues(np.where(invalid, np.nan, two_sided), np.where(invalid, np.nan, study))


def smallest_p(resamples: int) -> float:
    """The smallest two-sided bootstrap p-value B resamples can give: 2 / (B + 1).

    Examples
    --------
    >>> smallest_p(39)
    0.05
    """
    return 2 / (resamples + 1)
