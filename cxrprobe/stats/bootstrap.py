"""Paired bootstrap of AUROC and confusion counts: one segment-sum product per label and chunk.

A resample is a vector of counts over rows (how often each row was drawn, see
:mod:`cxrprobe.stats.resample`); every statistic and both models of a comparison see the *same*
counts, so the comparison is paired.

AUROC of a weighted sample without re-sorting. Each label's annotated rows are sorted once. For
a positive row, let lo / hi be the number of negatives scoring below / not above it; with C(k)
the weight of the k lowest negatives, the positive's "negatives below plus half the ties" is
(C(lo) + C(hi)) / 2, so U = sum over positives of w (C(lo) + C(hi)) / 2, ties exact. Only the
negative weight at the distinct lo / hi positions is needed, so the negatives are cut into
*segments* at those positions and the positives with the same (lo, hi) are merged: the sorted
rows become S segments (at most about twice the number of alternations between the classes),
whose sums in every resample are one sparse product (:class:`~cxrprobe.stats.engine.SegmentMap`).
A cumulative sum over the negative segments and two lookups per positive segment then give U.
Cutting at a fixed threshold as well gives the confusion counts of the same resamples for free.
Sums of counts are exact integers and U is accumulated in float64 (exact below 2**53), so the
CPU and CUDA agree to the rounding of the final division.

Resamples are processed in chunks of c: memory is O(n·L) for the plans plus O(c·n) for a
chunk's counts, never B·n·L.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrprobe.devices import resolve_device as resolve_device
from cxrprobe.progress import ProgressFactory, start_bar
from cxrprobe.stats.auroc import annotated_in_order, as_table, score_order
from cxrprobe.stats.engine import (
    Backend,
    Counts,
    MapFn,
    SegmentMap,
    default_chunk,
    make_backend,
    worker_pool,
)
from cxrprobe.stats.resample import Resampler as Resampler
from cxrprobe.stats.resample import make_resampler as make_resampler

Statistic = Callable[[Counts, MapFn], Any]


@dataclass(frozen=True)
class RankPlan:
    """One label's segments: ``n_neg`` negative segments then the positive ones, the lookups
    ``lo`` / ``hi`` (per positive segment, into the zero-padded cumulative negative sums; ``hi``
    None without ties) and, with a threshold, where scores >= it start (``pos_from``: first
    positive segment, ``neg_from``: index into the padded negative sums)."""

    segments: SegmentMap
    n_neg: int
    lo: np.ndarray
    hi: np.ndarray | None
    pos_from: int | None
    neg_from: int | None


def rank_plan(
    target: np.ndarray,
    score: np.ndarray,
    threshold: float = np.nan,
    order: np.ndarray | None = None,
) -> RankPlan:
    """The segments of one label (see the module docstring); ``order`` as from ``score_order``."""
    rows = annotated_in_order(target, order, score)
    positive = target[rows] == 1
    neg_rows, pos_rows = rows[~positive], rows[positive]
    neg_scores, pos_scores = score[neg_rows], score[pos_rows]
    lo = np.searchsorted(neg_scores, pos_scores, side="left")
    hi = np.searchsorted(neg_scores, pos_scores, side="right")
    cuts = [lo, hi, [0, neg_rows.size]]  # negative segments end where some positive looks
    starts = np.zeros(pos_rows.size, dtype=bool)  # a positive segment: same (lo, hi)
    starts[:1] = True
    starts[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    has_threshold = not np.isnan(threshold)
    if has_threshold:  # segments also end at the threshold
        neg_threshold = int(np.searchsorted(neg_scores, threshold, side="left"))
        pos_threshold = int(np.searchsorted(pos_scores, threshold, side="left"))
        cuts.append([neg_threshold])
        starts[pos_threshold : pos_threshold + 1] = True
    neg_bounds = np.unique(np.concatenate(cuts))  # [0] when there are no negatives
    pos_starts = np.flatnonzero(starts)
    pos_bounds = neg_rows.size + np.r_[pos_starts, pos_rows.size]
    bounds = np.r_[neg_bounds, pos_bounds[1:]].astype(np.int64)
    segments = SegmentMap(np.r_[neg_rows, pos_rows], bounds, target.size)
    index_lo = np.searchsorted(neg_bounds, lo[pos_starts])
    index_hi = np.searchsorted(neg_bounds, hi[pos_starts])
    return RankPlan(
        segments,
        neg_bounds.size - 1,
        index_lo,
        None if np.array_equal(index_lo, index_hi) else index_hi,
        int(np.searchsorted(pos_starts, pos_threshold)) if has_threshold else None,
        int(np.searchsorted(neg_bounds, neg_threshold)) if has_threshold else None,
    )


class RankStatistic:
    """AUROC of every label and, given thresholds, the confusion counts at them, on a chunk of
    resamples: a dict with ``"auc"`` (c, L) float64, NaN where a resample has one class only,
    and ``"conf"`` (c, 4, L) of TP, FP, FN, TN (zeros where a label has no threshold).

    ``order`` is :func:`~cxrprobe.stats.auroc.score_order` of ``scores`` when already known.
    """

    def __init__(
        self,
        targets: np.ndarray,
        scores: np.ndarray,
        thresholds: np.ndarray | None = None,
        *,
        order: np.ndarray | None = None,
    ) -> None:
        t, s = as_table(targets, scores)
        order = score_order(s) if order is None else order
        chosen = np.full(t.shape[1], np.nan) if thresholds is None else np.asarray(thresholds)
        self.n_labels = t.shape[1]
        self._plans = [
            rank_plan(t[:, col], s[:, col], float(chosen[col]), order[:, col])
            for col in range(self.n_labels)
        ]
        self._index: dict[Any, list] = {}

    def _indices(self, backend: Backend) -> list:
        key = (backend.name, str(backend.device))
        if key not in self._index:
            self._index[key] = [
                (
                    backend.asarray(p.lo),
                    None if p.hi is None else backend.asarray(p.hi),
                )
                for p in self._plans
            ]
        return self._index[key]

    def __call__(self, counts: Counts, map_fn: MapFn = map) -> dict[str, Any]:
        indices = self._indices(counts.backend)
        columns = list(
            map_fn(lambda k: self._column(counts, self._plans[k], indices[k]), range(self.n_labels))
        )
        ops = counts.ops
        return {
            "auc": ops.stack([c[0] for c in columns], 1),
            "conf": ops.stack([c[1] for c in columns], 2),
        }

    @staticmethod
    def _column(counts: Counts, plan: RankPlan, index: tuple) -> tuple:
        ops = counts.ops
        table = ops.counts_table(counts.segment_sums(plan.segments))  # (c, 1 + S) int64
        cum = ops.cumsum(table[:, : plan.n_neg + 1], 1)  # negative weight below each cut
        pos = table[:, plan.n_neg + 1 :]
        lo, hi = index
        below = ops.take(cum, lo, 1)
        twice = below + (below if hi is None else ops.take(cum, hi, 1))
        u2 = ops.f64(ops.sum(pos * twice, 1))  # exact: at most n**2 / 2
        n_pos, n_neg = ops.f64(ops.sum(pos, 1)), ops.f64(cum[:, -1])
        defined = (n_pos > 0) & (n_neg > 0)
        auc = ops.where(defined, u2 / ops.where(defined, 2 * n_pos * n_neg, 1.0), float("nan"))
        if plan.pos_from is None:
            conf = ops.stack([0 * n_pos] * 4, 1)
        else:
            tp = ops.f64(ops.sum(pos[:, plan.pos_from :], 1))
            fp = n_neg - ops.f64(cum[:, plan.neg_from])
            conf = ops.stack([tp, fp, n_pos - tp, n_neg - fp], 1)
        return auc, conf


class AurocStatistic(RankStatistic):
    """AUROC of every label on a chunk of resamples: (c, L) float64, NaN where a resample has
    one class only for that label."""

    def __init__(self, targets: np.ndarray, scores: np.ndarray, *, order=None) -> None:
        super().__init__(targets, scores, order=order)

    def __call__(self, counts: Counts, map_fn: MapFn = map) -> Any:
        return super().__call__(counts, map_fn)["auc"]


def run_bootstrap(
    resampler: Resampler,
    statistics: Mapping[str, Statistic],
    *,
    device: str = "auto",
    chunk_size: int | None = None,
    progress: ProgressFactory | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """Evaluate every statistic on the same resample counts, chunk by chunk.

    Parameters
    ----------
    resampler : Resampler
    statistics : mapping of name to callable
        Each maps :class:`~cxrprobe.stats.engine.Counts` of c resamples and a ``map``-like
        function (to spread independent work over CPU threads) to a (c, ...) array, or to a
        dict of such arrays.
    device : {"auto", "cpu", "cuda", "cuda:N"}
    chunk_size : int, optional
        Resamples per chunk; default from :func:`~cxrprobe.stats.engine.default_chunk`.
    progress : callable, optional
        ``progress(total, desc)`` makes a bar counting resamples (see :mod:`cxrprobe.progress`).
    backend : {"numpy", "torch"}, optional
        Default: numpy on the CPU, torch on CUDA; "torch" on the CPU runs the CUDA code path.

    Returns
    -------
    dict of name to ndarray of shape (B, ...) (or to a dict of them)

    Examples
    --------
    >>> r = make_resampler(4, n_resamples=2, seed=0)
    >>> out = run_bootstrap(r, {"auc": AurocStatistic([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])},
    ...                     device="cpu")
    >>> out["auc"].shape
    (2, 1)
    """
    engine = make_backend(device, backend)
    chunk = chunk_size or default_chunk(
        resampler.n_rows, "cpu" if engine.name == "numpy" else "cuda"
    )
    starts = list(range(0, resampler.n_resamples, chunk))
    parts: dict[str, list] = {name: [] for name in statistics}
    bar = start_bar(progress, resampler.n_resamples, "bootstrap")
    try:
        with worker_pool(engine) as (map_fn, pool):

            def counts_of(k: int):
                stop = min(starts[k] + chunk, resampler.n_resamples)
                make = engine.counts
                return (
                    pool.submit(make, resampler, starts[k], stop)
                    if pool
                    else make(resampler, starts[k], stop)
                )

            upcoming = counts_of(0)
            for k in range(len(starts)):
                counts = upcoming.result() if pool else upcoming
                if k + 1 < len(starts):
                    upcoming = counts_of(k + 1)  # drawn while this chunk is evaluated
                for name, statistic in statistics.items():
                    parts[name].append(statistic(counts, map_fn))
                bar.update(counts.n_resamples)
    finally:
        bar.close()
    return {name: _concat(engine, p) for name, p in parts.items()}


def _concat(engine: Backend, parts: list) -> Any:
    if isinstance(parts[0], dict):
        return {key: _concat(engine, [p[key] for p in parts]) for key in parts[0]}
    return engine.to_numpy(engine.ops.concat(parts, 0))


def evaluate_on_counts(
    statistic: Statistic, counts: np.ndarray, device: str = "cpu", backend: str | None = None
) -> Any:
    """A statistic on given row counts (c, n) — e.g. ones for the full data — as numpy."""
    engine = make_backend(device, backend)
    data = np.ascontiguousarray(np.asarray(counts, dtype=np.float64).T)
    out = statistic(Counts(engine.asarray(data), engine))
    if isinstance(out, dict):
        return {key: engine.to_numpy(value) for key, value in out.items()}
    return engine.to_numpy(out)


def weighted_auroc(
    targets: np.ndarray, scores: np.ndarray, counts: np.ndarray, device: str = "cpu"
) -> np.ndarray:
    """AUROC per label of each weighted sample: counts (c, n) → (c, L).

    Equal to ``roc_auc_score`` on the rows repeated by their counts.

    Examples
    --------
    >>> weighted_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], np.array([[1, 1, 1, 1], [2, 0, 1, 1]]))
    array([[0.75],
           [1.  ]])
    """
    return evaluate_on_counts(AurocStatistic(targets, scores), counts, device)
