"""Benjamini-Hochberg false discovery rate control across a family of p-values.

The family is every label compared in one report: adjusting one p-value at a time (a family of
one) changes nothing, which is the mistake this module exists to avoid.
"""

from __future__ import annotations

import numpy as np


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values) of one family; NaN entries are not in the family.

    With the m defined p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
    min over k >= i of min(1, m · p_(k) / k). A hypothesis is rejected at FDR level q when its
    adjusted p-value is <= q. Equals ``scipy.stats.false_discovery_control(p, method="bh")``.

    Parameters
    ----------
    p_values : ndarray of shape (k,)
        NaN for hypotheses that were not tested (left NaN, and not counted in m).

    Returns
    -------
    ndarray of shape (k,)

    Examples
    --------
    >>> np.round(benjamini_hochberg(np.array([0.01, 0.04, 0.03, np.nan, 0.5])), 4).tolist()
    [0.04, 0.0533, 0.0533, nan, 0.5]
    """
    p = np.asarray(p_values, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if tested.size == 0:
        return out
    order = tested[np.argsort(p[tested], kind="mergesort")]
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out
