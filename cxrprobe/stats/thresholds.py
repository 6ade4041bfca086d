"""Sensitivity, specificity, accuracy and F1 at a Youden-optimal threshold chosen once.

The threshold of each label is chosen once, on validation predictions when given, else on the
full evaluated set, and then held fixed: the bootstrap re-counts the confusion matrix of every
resample at that threshold. Re-choosing it inside each resample (as the study's code does)
fits the threshold to each resample and flatters the metrics.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_curve

from cxrprobe.stats.auroc import as_table

METRICS = ("sensitivity", "specificity", "accuracy", "f1")


def youden_thresholds(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, list]:
    """Per-label threshold maximising Youden's J = sensitivity + specificity - 1.

    A row is predicted positive when its score is >= the threshold. Among equally good
    thresholds the highest is taken. Labels with one class only get NaN and a reason.

    Parameters
    ----------
    targets, scores : ndarray of shape (n, L) or (n,)
        Targets 1 / 0 / NaN (not annotated, ignored).

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
        rows = ~np.isnan(t[:, col])
        y = t[rows, col]
        if y.size == 0 or y.min() == y.max():
            reasons.append("only one class among the rows the threshold is chosen on")
            continue
        fpr, tpr, cuts = roc_curve(y, s[rows, col], drop_intermediate=False)
        best = cuts[int(np.argmax(tpr - fpr))]
        thresholds[col] = best if np.isfinite(best) else np.nextafter(s[rows, col].max(), np.inf)
        reasons.append(None)
    return thresholds, reasons


class ConfusionStatistic:
    """Weighted confusion counts at fixed thresholds for a chunk of resamples.

    Calling it with :class:`~cxrprobe.stats.bootstrap.Weights` of c resamples returns a
    (c, 4, L) float64 tensor of TP, FP, FN, TN. Each is a sum of integer counts over a fixed set of
    rows (TP over predicted-positive positives, FP over predicted-positive negatives, FN and TN
    by difference from the class totals), so it is exact and costs one gather per set. Labels
    without a threshold count nothing, and their metrics come out NaN.
    """

    def __init__(self, targets: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> None:
        t, s = as_table(targets, scores)
        self.n_labels = t.shape[1]
        self._rows: list[tuple | None] = []
        for col in range(self.n_labels):
            if np.isnan(thresholds[col]):
                self._rows.append(None)
                continue
            predicted = s[:, col] >= thresholds[col]
            positive, negative = t[:, col] == 1, t[:, col] == 0
            sets = (positive & predicted, negative & predicted, positive, ~(positive | negative))
            self._rows.append(tuple(np.flatnonzero(rows) for rows in sets))
        self._cache: dict[torch.device, list] = {}

    def __call__(self, weights, map_fn=map) -> torch.Tensor:
        device = weights.device
        if device not in self._cache:
            self._cache[device] = [
                None if rows is None else tuple(torch.as_tensor(r, device=device) for r in rows)
                for rows in self._rows
            ]
        total = weights.data.sum(dim=weights.row_dim)
        cells = map_fn(lambda rows: self._cells(weights, rows, total), self._cache[device])
        return torch.stack(list(cells), dim=2)

    @staticmethod
    def _cells(weights, rows: tuple | None, total: torch.Tensor) -> torch.Tensor:
        if rows is None:
            return torch.zeros((weights.n_resamples, 4), dtype=torch.float64, device=total.device)
        tp, fp, pos, unannotated = (weights.rows(r).sum(dim=weights.row_dim) for r in rows)
        neg = total - pos - unannotated
        return torch.stack([tp, fp, pos - tp, neg - fp], dim=1).to(torch.float64)


def confusion_counts(targets: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """TP, FP, FN, TN per label on the full data at fixed thresholds: shape (4, L).

    Examples
    --------
    >>> confusion_counts(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.8]),
    ...                  np.array([0.4]))[:, 0].tolist()
    [2.0, 1.0, 0.0, 1.0]
    """
    from cxrprobe.stats.bootstrap import Weights

    ones = torch.ones((1, np.shape(targets)[0]), dtype=torch.int64)
    return ConfusionStatistic(targets, scores, thresholds)(Weights.from_counts(ones, torch.int64))[
        0
    ].numpy()


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

    Returns
    -------
    dict with ``labels`` (one dict per label: threshold, each metric and its CI) and ``mean``
    (each metric averaged over labels with a threshold, per resample for the CI).

    Examples
    --------
    >>> t, s = np.array([[0], [0], [1], [1]]), np.array([[0.1], [0.6], [0.4], [0.8]])
    >>> boot = np.stack([confusion_counts(t, s, np.array([0.4]))] * 3)
    >>> out = threshold_summary(["x"], t, s, np.array([0.4]), [None], boot)
    >>> out["labels"][0]["f1"], out["labels"][0]["f1_ci"]
    (0.8, [0.8, 0.8])
    """
    from cxrprobe.stats.bootstrap import mean_over_labels, percentile_interval

    observed = threshold_metrics(confusion_counts(targets, scores, thresholds))
    boot = threshold_metrics(confusion_samples)
    usable = ~np.isnan(thresholds)
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
