"""Sensitivity, specificity, accuracy and F1 at a Youden-optimal threshold chosen once.

The threshold of each label is chosen once, on validation predictions when given, else on the
full evaluated set, and then held fixed: the bootstrap re-counts the confusion matrix of every
resample at that threshold. Re-choosing it inside each resample (as the study's code does)
fits the threshold to each resample and flatters the metrics.
"""

from __future__ import annotations

import numpy as np

from cxrprobe.stats.auroc import annotated_in_order, as_table
from cxrprobe.stats.bootstrap import RankStatistic
from cxrprobe.stats.intervals import mean_over_labels, percentile_interval

METRICS = ("sensitivity", "specificity", "accuracy", "f1")


def youden_thresholds(
    targets: np.ndarray, scores: np.ndarray, *, order: np.ndarray | None = None
) -> tuple[np.ndarray, list]:
    """Per-label threshold maximising Youden's J = sensitivity + specificity - 1.

    A row is predicted positive when its score is >= the threshold. The candidates are the
    distinct scores and, above them all, "nothing positive" (the next float after the highest
    score). J is compared exactly, as the integer TP·N − FP·P (P, N: positive and negative
    rows), so among equally good thresholds the highest is taken whatever the float rounding.
    Labels with one class only get NaN and a reason.

    Parameters
    ----------
    targets, scores : ndarray of shape (n, L) or (n,)
        Targets 1 / 0 / NaN (not annotated, ignored).
    order : ndarray of shape (n, L), optional
        ``score_order(scores)`` when already computed.

    Returns
    -------
    thresholds : ndarray of shape (L,)
    reasons : list of str or None

    Examples
    --------
    >>> thr, _ = youden_thresholds(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.4, 0.8]))
    >>> float(thr[0])
    0.4
    """
    t, s = as_table(targets, scores)
    thresholds = np.full(t.shape[1], np.nan)
    reasons: list[str | None] = []
    for col in range(t.shape[1]):
        rows = annotated_in_order(t[:, col], None if order is None else order[:, col], s[:, col])
        y = t[rows, col]
        if y.size == 0 or y.min() == y.max():
            reasons.append("only one class among the rows the threshold is chosen on")
            continue
        thresholds[col] = _youden(y[::-1] == 1, s[rows[::-1], col])
        reasons.append(None)
    return thresholds, reasons


def _youden(hit: np.ndarray, ordered: np.ndarray) -> float:
    """The highest threshold maximising TP·N − FP·P (integers) over one label's rows, given
    with descending ``ordered`` scores and their positive flags ``hit``."""
    hit = hit.astype(np.int64)
    last = np.r_[ordered[1:] != ordered[:-1], True]  # end of each group of tied scores
    tp, fp = np.cumsum(hit)[last], np.cumsum(1 - hit)[last]
    n_pos, n_neg = int(hit.sum()), int(hit.size - hit.sum())
    j = np.r_[0, tp * n_neg - fp * n_pos]  # first entry: nothing predicted positive
    best = int(np.argmax(j))  # first maximum = highest threshold, candidates run downwards
    return float(np.nextafter(ordered[0], np.inf)) if best == 0 else float(ordered[last][best - 1])


class ConfusionStatistic(RankStatistic):
    """Weighted confusion counts at fixed thresholds for a chunk of resamples.

    Calling it with :class:`~cxrprobe.stats.engine.Counts` of c resamples returns a (c, 4, L)
    float64 array of TP, FP, FN, TN: sums of integer counts over the label's rows at or above
    (and below) the threshold, read off the same segment sums as the AUROC (see
    :class:`~cxrprobe.stats.bootstrap.RankStatistic`), so exact. Labels without a threshold
    count nothing, and their metrics come out NaN.
    """

    def __call__(self, counts, map_fn=map):
        return super().__call__(counts, map_fn)["conf"]


def confusion_counts(targets: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """TP, FP, FN, TN per label on the full data at fixed thresholds: shape (4, L); all zero for
    a label without a threshold (NaN), as in :class:`ConfusionStatistic`.

    Examples
    --------
    >>> confusion_counts(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.8]),
    ...                  np.array([0.4]))[:, 0].tolist()
    [2.0, 1.0, 0.0, 1.0]
    """
    t, s = as_table(targets, scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    predicted = s >= np.where(np.isnan(thresholds), np.inf, thresholds)
    positive, negative = t == 1, t == 0
    cells = [
        positive & predicted,
        negative & predicted,
        positive & ~predicted,
        negative & ~predicted,
    ]
    counts = np.stack([c.sum(axis=0) for c in cells]).astype(np.float64)
    return np.where(np.isnan(thresholds), 0.0, counts)


def threshold_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, accuracy and F1 from confusion counts (..., 4, L).

    Returns a dict of arrays of shape (..., L); NaN where a denominator is zero (for example
    sensitivity of a resample without positives).

    Examples
    --------
    >>> m = threshold_metrics(np.array([[2.0], [1.0], [0.0], [1.0]]))
    >>> {k: round(float(v[0]), 3) for k, v in m.items()}
    {'sensitivity': 1.0, 'specificity': 0.5, 'accuracy': 0.75, 'f1': 0.8}
    """
    tp, fp, fn, tn = (confusion[..., i, :] for i in range(4))

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def threshold_summary(
    labels: list[str],
    targets: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    reasons: list,
    confusion_samples: np.ndarray,
    alpha: float = 0.05,
    family: np.ndarray | None = None,
) -> dict:
    """Metrics at fixed thresholds per label and averaged over labels, with percentile CIs.

    Parameters
    ----------
    labels : list of L names
    targets, scores : ndarray of shape (n, L)
        The evaluated rows.
    thresholds : ndarray of shape (L,)
        Chosen once (NaN: no threshold; ``reasons`` says why).
    confusion_samples : ndarray of shape (B, 4, L)
        Resampled confusion counts from :class:`ConfusionStatistic` on the bootstrap counts.
    family : ndarray of shape (L,) bool, optional
        Labels that may enter the mean (default: all); those without a threshold never do.

    Returns
    -------
    dict with ``labels`` (one dict per label: threshold, each metric and its CI) and ``mean``
    (each metric averaged over the family labels with a threshold, per resample for the CI).

    Examples
    --------
    >>> t, s = np.array([[0], [0], [1], [1]]), np.array([[0.1], [0.6], [0.4], [0.8]])
    >>> boot = np.stack([confusion_counts(t, s, np.array([0.4]))] * 3)
    >>> out = threshold_summary(["x"], t, s, np.array([0.4]), [None], boot)
    >>> out["labels"][0]["f1"], out["labels"][0]["f1_ci"]
    (0.8, [0.8, 0.8])
    """
    observed = threshold_metrics(confusion_counts(targets, scores, thresholds))
    boot = threshold_metrics(confusion_samples)
    usable = ~np.isnan(thresholds) & (True if family is None else np.asarray(family, bool))
    rows = [
        {"label": label, "threshold": float(thresholds[col]), "reason": reasons[col]}
        for col, label in enumerate(labels)
    ]
    mean: dict = {}
    for metric in METRICS:
        values = observed[metric][usable]
        average = float(np.mean(values[~np.isnan(values)])) if np.any(~np.isnan(values)) else np.nan
        lo, hi = percentile_interval(mean_over_labels(boot[metric], usable)[:, None], alpha)
        mean[metric], mean[f"{metric}_ci"] = average, [float(lo[0]), float(hi[0])]
        lo, hi = percentile_interval(boot[metric], alpha)
        for col, row in enumerate(rows):
            row[metric] = float(observed[metric][col])
            row[f"{metric}_ci"] = [float(lo[col]), float(hi[col])]
    rule = "Youden J; predicted positive when score >= threshold; fixed in every resample"
    return {"rule": rule, "labels": rows, "mean": mean}
