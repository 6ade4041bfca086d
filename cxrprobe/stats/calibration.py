"""Calibration of probability scores: Brier score and expected calibration error (ECE).

Per label, over the rows annotated for it (m rows, targets y in {0, 1}, probabilities p):

- Brier = mean over rows of (p - y)^2.
- ECE with K equal-mass bins: the m rows, sorted by score (stable, so tied scores keep row
  order), are cut into min(K, m) consecutive bins of floor(m/K) or ceil(m/K) rows
  (``numpy.array_split``); ECE = sum over bins of (n_k / m) * |mean y - mean p| in the bin.

Bins are fixed once on the full evaluated rows, like thresholds; a bootstrap resample with row
counts w then gives Brier = sum w (p - y)^2 / sum w and ECE = sum_k |sum_{i in k} w_i (y_i - p_i)|
/ sum w: the same row sets, re-weighted. Calibration needs probabilities; logit scores are not
squashed into them here.

Intervals (:func:`calibration_interval`): Brier, a mean of squared residuals, gets percentile
intervals. Binned ECE is biased upward (the absolute value turns every bin's sampling noise into
error: a perfectly calibrated model scores above 0), and resampling adds that bias again, so
ECE's percentile interval sits above the estimate and can exclude it. ECE gets instead the basic
bootstrap interval and the bias-corrected estimate 2 * ECE - mean of the resampled ECEs, both
clipped at 0; differences of ECE the same without clipping (the bias depends on how well each
model is calibrated, so it need not cancel in B - A).
"""

from __future__ import annotations

import numpy as np

from cxrprobe.stats.auroc import annotated_in_order, as_table, score_order
from cxrprobe.stats.engine import SegmentMap
from cxrprobe.stats.intervals import basic_interval, bias_corrected, percentile_interval

DEFAULT_BINS = 10
CALIBRATION_METRICS = ("brier", "ece")
INTERVALS = {  # as the report records them
    "brier": "percentile",
    "ece": "basic bootstrap (2 * ECE - percentile limits), clipped at 0 except for differences; "
    "with ece_bias_corrected = 2 * ECE - mean of the resampled ECEs",
}


def calibration_interval(
    metric: str,
    samples: np.ndarray,
    estimate: np.ndarray,
    alpha: float,
    floor: float | None = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """CI limits (lo, hi) of ``metric`` per column of ``samples`` (B, k) with ``estimate`` (k,),
    and the bias-corrected estimate (ECE) or None (Brier); ``floor`` None for differences.

    Examples
    --------
    Resampled ECEs all above the estimate 0.10: the interval and the corrected value lie below.

    >>> lo, hi, fixed = calibration_interval(
    ...     "ece", 0.12 + np.arange(101.0)[:, None] / 1000, np.array([0.1]), 0.1)
    >>> [round(float(v[0]), 3) for v in (lo, hi, fixed)]
    [0.0, 0.075, 0.03]
    """
    if metric == "brier":
        return (*percentile_interval(samples, alpha), None)
    lo, hi = basic_interval(samples, estimate, alpha, floor)
    return lo, hi, bias_corrected(samples, estimate, floor)


def equal_mass_bins(
    scores: np.ndarray, n_bins: int = DEFAULT_BINS, order: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices of each equal-mass bin of ``scores`` (n,), lowest scores first.

    ``order`` is the stable ascending order of ``scores`` when already known.

    Examples
    --------
    >>> [b.tolist() for b in equal_mass_bins(np.array([0.9, 0.1, 0.5, 0.3, 0.7]), 2)]
    [[1, 3, 2], [4, 0]]
    """
    if order is None:
        order = np.argsort(scores, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, order.size)) if b.size]


def label_bins(
    targets: np.ndarray, scores: np.ndarray, n_bins: int, order: np.ndarray | None = None
) -> list[list[np.ndarray]]:
    """Per label, its equal-mass bins as row indices of the (n, L) table (no bins when no row
    is annotated); ``order`` is ``score_order(scores)`` when already known."""
    t, s = as_table(targets, scores)
    order = score_order(s) if order is None else order
    out = []
    for col in range(t.shape[1]):
        rows = annotated_in_order(t[:, col], order[:, col], s[:, col])
        out.append(equal_mass_bins(s[rows, col], n_bins, rows) if rows.size else [])
    return out


def brier_score(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Brier score per label over its annotated rows: shape (L,), NaN where none is annotated.

    Examples
    --------
    >>> brier_score(np.array([1, 0, np.nan]), np.array([0.8, 0.4, 0.9])).round(3).tolist()
    [0.1]
    """
    t, s = as_table(targets, scores)
    annotated = ~np.isnan(t)
    squared = np.where(annotated, (s - np.where(annotated, t, 0)) ** 2, 0).sum(axis=0)
    count = annotated.sum(axis=0)
    return np.where(count > 0, squared / np.maximum(count, 1), np.nan)


def expected_calibration_error(
    targets: np.ndarray,
    scores: np.ndarray,
    n_bins: int = DEFAULT_BINS,
    *,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """ECE per label with equal-mass bins: shape (L,), NaN where no row is annotated.

    Examples
    --------
    Bins {0.1, 0.3} and {0.6, 0.9}: (2 * |0.5 - 0.2| + 2 * |0.5 - 0.75|) / 4 = 0.275.

    >>> expected_calibration_error(np.array([0, 1, 0, 1]), np.array([0.1, 0.3, 0.6, 0.9]), 2)
    array([0.275])
    """
    t, s = as_table(targets, scores)
    out = np.full(t.shape[1], np.nan)
    for col, bins in enumerate(label_bins(t, s, n_bins, order)):
        if bins:
            y, p = t[:, col], s[:, col]
            total = sum(b.size for b in bins)
            out[col] = sum(b.size * abs(y[b].mean() - p[b].mean()) for b in bins) / total
    return out


def reliability_table(
    labels: list[str],
    targets: np.ndarray,
    scores: np.ndarray,
    n_bins: int = DEFAULT_BINS,
    *,
    order: np.ndarray | None = None,
) -> list[dict]:
    """Per label, the equal-mass bins' mean score, observed positive rate and row count."""
    t, s = as_table(targets, scores)
    return [
        {
            "label": label,
            "bins": [
                {
                    "mean_score": float(s[b, col].mean()),
                    "observed": float(t[b, col].mean()),
                    "n": int(b.size),
                }
                for b in bins
            ],
        }
        for col, (label, bins) in enumerate(
            zip(labels, label_bins(t, s, n_bins, order), strict=True)
        )
    ]


class CalibrationStatistic:
    """Brier score and ECE of every label on a chunk of weighted resamples.

    Calling it with :class:`~cxrprobe.stats.engine.Counts` of c resamples returns a (c, 2, L)
    float64 array (Brier, ECE), NaN where a resample holds no annotated row of a label. The bins
    are fixed here, on the full data; each resample re-weights the same rows: one dense matrix
    product gives every label's weighted sum of squared residuals and total weight, and one
    segment-sum product per label every bin's weighted residual sum.
    """

    def __init__(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        n_bins: int = DEFAULT_BINS,
        *,
        order: np.ndarray | None = None,
    ) -> None:
        t, s = as_table(targets, scores)
        self.n_labels = t.shape[1]
        annotated = ~np.isnan(t)
        residual = np.where(annotated, t - s, 0.0)
        self._moments = np.ascontiguousarray(np.hstack([residual**2, annotated.astype(float)]))
        self._bins = []
        for col, bins in enumerate(label_bins(t, s, n_bins, order)):
            rows = np.concatenate([np.sort(b) for b in bins]) if bins else np.zeros(0, int)
            bounds = np.cumsum([0] + [b.size for b in bins])
            self._bins.append(SegmentMap(rows, bounds, t.shape[0], residual[rows, col]))

    def __call__(self, counts, map_fn=map):
        ops = counts.ops
        counts.as_f64()  # converted once, here, before the threads use it

        def task(k: int):  # the moments' product runs beside the labels' bins
            if k < 0:
                return counts.weighted_sums(self._moments)  # (c, 2L): squared residuals, totals
            return ops.sum(abs(counts.segment_sums(self._bins[k])), 0)

        moments, *ece = map_fn(task, range(-1, self.n_labels))
        squared, total = moments[:, : self.n_labels], moments[:, self.n_labels :]
        safe = ops.where(total > 0, total, 1.0)
        out = ops.stack([squared / safe, ops.stack(ece, 1) / safe], 1)
        return ops.where(total[:, None, :] > 0, out, float("nan"))
