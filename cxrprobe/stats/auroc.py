"""Exact AUROC per label (ties count ½, as scikit-learn), with undefined labels explained.

AUROC is the Mann-Whitney statistic U / (P·N) computed from mid-ranks, which equals
``sklearn.metrics.roc_auc_score`` for any ties. Rows whose target is NaN (not annotated) are left
out label by label. A label with only one class among its annotated rows has no AUROC: it is NaN
with a reason, and it is left out of the mean, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def as_table(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets and scores as float64 (n, L) tables; 1-D inputs become one column."""
    t = np.asarray(targets, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if t.ndim != 2 or t.shape != s.shape:
        raise ValueError(
            f"targets {np.shape(targets)} and scores {np.shape(scores)} must have "
            "the same (n,) or (n, L) shape"
        )
    return t, s


def score_order(scores: np.ndarray) -> np.ndarray:
    """Stable ascending order of each score column, (n, L) int64 (1-D input: one column).

    Sorting dominates the set-up of a comparison, so each model's columns are sorted once and
    every statistic (AUROC, DeLong, thresholds, calibration bins, resampling plans, each
    subgroup) takes its rows from this order with :func:`annotated_in_order`.

    Examples
    --------
    >>> score_order(np.array([[0.3, 1.0], [0.1, 1.0], [0.2, 0.0]])).T.tolist()
    [[1, 2, 0], [2, 0, 1]]
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    out = np.empty(s.shape[::-1], dtype=np.int64)  # transposed: each column contiguous
    for col, values in enumerate(np.ascontiguousarray(s.T)):
        order = np.argsort(values)  # quicksort (~5x faster than a stable sort), then
        ordered = values[order]  # ties put back in row order
        tied = ordered[1:] == ordered[:-1]
        if tied.any():
            group = np.r_[0, np.cumsum(~tied)]
            order = np.sort(group * values.size + order) % values.size
        out[col] = order
    return out.T


def annotated_in_order(
    target: np.ndarray, order: np.ndarray | None, score: np.ndarray
) -> np.ndarray:
    """Rows of one label with a target (not NaN), ascending by score, ties in row order.

    ``order`` is that label's column of :func:`score_order` (computed here when None).
    """
    if order is None:
        order = np.argsort(score, kind="stable")
    return order[~np.isnan(target[order])]


def midranks(values: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of ``values`` (n,), tied values sharing the mean of their ranks.

    ``order`` may give an ascending order of ``values`` already known (ties in any order).

    Examples
    --------
    >>> midranks(np.array([0.3, 0.1, 0.3, 0.2])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    if order is None:
        order = np.argsort(values)  # ties share one rank, so stability is not needed
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


@dataclass
class AurocReport:
    """AUROC per label with the counts behind it and why any label is undefined.

    ``values`` (L,) is NaN where ``defined`` is False; ``reasons[l]`` is None or a sentence.
    """

    values: np.ndarray
    defined: np.ndarray
    reasons: list[str | None]
    n_positive: np.ndarray
    n_negative: np.ndarray

    @property
    def mean(self) -> float:
        """Mean AUROC over the defined labels (NaN when none is defined)."""
        return float(np.mean(self.values[self.defined])) if self.defined.any() else float("nan")


def undefined_reason(n_pos: int, n_neg: int) -> str | None:
    """Why a label with these class counts has no AUROC; None when it has one."""
    if n_pos and n_neg:
        return None
    if not n_pos and not n_neg:
        return "no annotated rows"
    missing = "positive" if not n_pos else "negative"
    return f"only one class: no {missing} rows among {n_pos + n_neg} annotated"


def auroc_report(
    targets: np.ndarray, scores: np.ndarray, *, order: np.ndarray | None = None
) -> AurocReport:
    """AUROC of each label column with per-label counts and reasons for undefined labels.

    Parameters
    ----------
    targets : ndarray of shape (n, L) or (n,)
        1 = positive, 0 = negative, NaN = not annotated (row left out for that label).
    scores : ndarray of the same shape
        Higher means more likely positive; any monotone scale (probabilities or logits).
    order : ndarray of shape (n, L), optional
        :func:`score_order` of ``scores``, when already computed.

    Returns
    -------
    AurocReport
        ``values`` of shape (L,), NaN for labels with a single class.

    Examples
    --------
    >>> r = auroc_report(np.array([[1, 1], [0, 1], [1, np.nan]]),
    ...                  np.array([[0.8, 0.1], [0.2, 0.4], [0.8, 0.9]]))
    >>> r.values.tolist(), r.reasons[1]
    ([1.0, nan], 'only one class: no negative rows among 2 annotated')
    """
    t, s = as_table(targets, scores)
    n_labels = t.shape[1]
    values = np.full(n_labels, np.nan)
    n_pos = np.zeros(n_labels, dtype=np.int64)
    n_neg = np.zeros(n_labels, dtype=np.int64)
    reasons: list[str | None] = []
    for col in range(n_labels):
        annotated = ~np.isnan(t[:, col])
        positive = t[annotated, col] == 1
        n_pos[col], n_neg[col] = positive.sum(), (~positive).sum()
        reasons.append(undefined_reason(int(n_pos[col]), int(n_neg[col])))
        if reasons[-1] is None:
            rows = annotated_in_order(
                t[:, col], None if order is None else order[:, col], s[:, col]
            )
            ranks = midranks(s[rows, col], np.arange(rows.size))
            u = ranks[t[rows, col] == 1].sum() - n_pos[col] * (n_pos[col] + 1) / 2.0
            values[col] = u / (float(n_pos[col]) * float(n_neg[col]))
    return AurocReport(values, np.array([r is None for r in reasons]), reasons, n_pos, n_neg)


def auroc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray | float:
    """AUROC per label, equal to ``roc_auc_score`` (ties ½); NaN where a label has one class.

    Parameters
    ----------
    targets : ndarray of shape (n, L) or (n,)
        1, 0, or NaN for not annotated.
    scores : ndarray of the same shape

    Returns
    -------
    ndarray of shape (L,), or a float for 1-D input

    Examples
    --------
    >>> float(auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])))
    0.75
    """
    values = auroc_report(targets, scores).values
    return float(values[0]) if np.ndim(targets) == 1 else values


def mean_auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean AUROC over the labels where it is defined (NaN if none is).

    Examples
    --------
    >>> mean_auroc(np.array([[1, 1], [0, 1]]), np.array([[0.9, 0.2], [0.1, 0.3]]))
    1.0
    """
    return auroc_report(targets, scores).mean
