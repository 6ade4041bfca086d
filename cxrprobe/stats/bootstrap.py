"""Paired bootstrap of AUROC: seeded multinomial resample counts, O(n) per resample and label.

A resample is a vector of counts over rows (how often each row was drawn); every statistic and
both models of a comparison see the *same* counts, so the comparison is paired. The draws come
from one seeded numpy stream on the CPU (see :class:`Resampler`), which numpy generates
identically in any chunking: a resample does not depend on the chunk size or the device, and
CUDA and CPU get identical counts.

AUROC of a weighted sample without re-sorting: each label is sorted once. Call the larger class
of a label the reference class and the other the query class. For a query row q, let lo_q / hi_q
be the number of reference rows scoring below / not above it (found once with a binary search).
With C the cumulative reference weight in sorted order (C[0] = 0), a query row's weighted
"reference below plus half the ties" is (C[lo_q] + C[hi_q]) / 2, so the Mann-Whitney numerator is
a cumulative sum and two gathers: O(n) per resample and label, ties exact. Counts and their
cumulative sums are exact integers (int32 while the largest possible sum fits, else int64;
32-bit halves the memory traffic) and the Mann-Whitney sums are accumulated in float64, exact
below 2**53: CPU and CUDA agree to the rounding of the final division.
Resamples are processed in chunks of ``c``: peak memory is O(n·L + c·n), never B·n·L.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr, ndtri

from cxrprobe.devices import resolve_device
from cxrprobe.errors import ConfigError
from cxrprobe.progress import ProgressFactory, start_bar
from cxrprobe.stats.auroc import as_table

MapFn = Callable[..., Iterable]
Statistic = Callable[["Weights", MapFn], torch.Tensor]
_CHUNK_BYTES = {"cpu": 4 << 20, "cuda": 256 << 20}


@dataclass(frozen=True)
class Resampler:
    """Seeded bootstrap resamples of ``n_rows`` rows, or of the units (patients) they belong to.

    ``unit_of_row`` (n,) maps each row to its unit; None resamples rows themselves. Resample b
    draws ``n_units`` units with replacement: row b of the stream
    ``numpy.random.default_rng(seed).integers(0, n_units, (B, n_units), dtype=int32)``, which
    numpy generates identically whatever the chunking, so results never depend on chunk size or
    device.
    """

    n_rows: int
    n_resamples: int
    seed: int = 0
    unit_of_row: np.ndarray | None = None

    @property
    def scheme(self) -> str:
        return "rows" if self.unit_of_row is None else "patients"

    @property
    def n_units(self) -> int:
        return self.n_rows if self.unit_of_row is None else int(self.unit_of_row.max()) + 1

    def draw_chunks(self, chunk: int) -> Iterator[np.ndarray]:
        """Consecutive blocks of draws, each (c, n_units) int32, c = ``chunk`` but the last."""
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.n_resamples, chunk):
            width = min(chunk, self.n_resamples - start)
            yield rng.integers(0, self.n_units, (width, self.n_units), dtype=np.int32)

    def draws(self, start: int, stop: int) -> np.ndarray:
        """Draws of resamples ``start:stop`` (regenerating the stream from its start)."""
        return np.concatenate(list(self.draw_chunks(64)))[start:stop]

    def counts(self, start: int, stop: int) -> np.ndarray:
        """Row counts of resamples ``start:stop``, shape (stop - start, n_rows).

        Examples
        --------
        >>> r = make_resampler(5, n_resamples=3, seed=1)
        >>> r.counts(0, 3).sum(axis=1).tolist()
        [5, 5, 5]
        """
        weights = row_weights(self, self.draws(start, stop), torch.device("cpu"))
        return weights.data.T.numpy().astype(np.int64)

    def indices(self, b: int) -> np.ndarray:
        """Row indices of resample ``b`` (each row as often as drawn), for slow references."""
        if self.unit_of_row is None:
            return self.draws(b, b + 1)[0].astype(np.int64)
        return np.repeat(np.arange(self.n_rows), self.counts(b, b + 1)[0].astype(np.int64))

    def describe(self) -> dict:
        return {
            "scheme": self.scheme,
            "resamples": self.n_resamples,
            "seed": self.seed,
            "units": self.n_units,
            "rows": self.n_rows,
            "rng": "numpy.random.default_rng(seed).integers(0, units, (resamples, units), "
            "dtype=int32); row counts = draw counts of each row's unit",
        }


def count_dtype(resampler: Resampler) -> torch.dtype:
    """int32 when no resample can weigh 2**31 rows or more (so cumulative sums fit), else int64."""
    if resampler.unit_of_row is None:
        largest = resampler.n_rows
    else:
        largest = resampler.n_units * int(np.bincount(resampler.unit_of_row).max())
    return torch.int32 if largest < 2**31 else torch.int64


@dataclass(frozen=True)
class Weights:
    """Integer row counts of a chunk of c resamples, rows along ``row_dim``.

    Rows are the leading axis on CPU ((n, c): gathering a row copies c contiguous counts and
    cumulative sums vectorise across resamples) and the trailing axis on CUDA ((c, n): the scan
    runs along contiguous memory, which CUDA's cumsum needs to be fast).
    """

    data: torch.Tensor
    row_dim: int

    @property
    def n_resamples(self) -> int:
        return self.data.shape[1 - self.row_dim]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The counts of rows ``index`` (same layout)."""
        return self.data.index_select(self.row_dim, index)

    def along_rows(self, vector: torch.Tensor) -> torch.Tensor:
        """A per-row vector shaped to broadcast against ``rows(...)``."""
        return vector.view(-1, 1) if self.row_dim == 0 else vector.view(1, -1)

    @classmethod
    def from_counts(cls, counts: torch.Tensor, dtype: torch.dtype) -> Weights:
        """From counts (c, n), in the layout that suits their device."""
        if counts.device.type == "cpu":
            return cls(counts.T.to(dtype).contiguous(), 0)
        return cls(counts.to(dtype).contiguous(), 1)


def row_weights(resampler: Resampler, draws: np.ndarray, device: torch.device) -> Weights:
    """Counts of each row in each resample of ``draws`` (c, n_units)."""
    width, units = draws.shape
    if device.type == "cpu":
        flat = (draws + np.arange(width, dtype=np.int64)[:, None] * units).ravel()
        unit_counts = torch.from_numpy(np.bincount(flat, minlength=width * units))
    else:
        d = torch.from_numpy(draws).to(device, torch.int64)
        flat = (d + torch.arange(width, device=device)[:, None] * units).ravel()
        unit_counts = torch.bincount(flat, minlength=width * units)
    unit_counts = unit_counts.view(width, units)
    if resampler.unit_of_row is not None:
        unit_counts = unit_counts[:, torch.as_tensor(resampler.unit_of_row, device=device)]
    return Weights.from_counts(unit_counts, count_dtype(resampler))


def make_resampler(
    n_rows: int, n_resamples: int = 1000, seed: int = 0, clusters: Sequence[str] | None = None
) -> Resampler:
    """Resample rows, or whole clusters (patients) when ``clusters`` (n,) names each row's."""
    if n_resamples < 1:
        raise ConfigError(f"--resamples must be at least 1 (got {n_resamples})")
    if seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer (got {seed})")
    units = None
    if clusters is not None:
        _, units = np.unique(np.asarray(clusters), return_inverse=True)
    return Resampler(n_rows, n_resamples, seed, units)


class AurocStatistic:
    """AUROC of every label of one model on a chunk of weighted resamples.

    Calling it with :class:`Weights` of c resamples returns a (c, L) float64 tensor, NaN where a
    resample has one class only for that label. Sorting and binary searches happen once, here.
    """

    def __init__(self, targets: np.ndarray, scores: np.ndarray) -> None:
        t, s = as_table(targets, scores)
        self.n_labels = t.shape[1]
        self._plans = [self._plan(t[:, col], s[:, col]) for col in range(self.n_labels)]
        self._cache: dict[torch.device, list] = {}

    @staticmethod
    def _plan(t: np.ndarray, s: np.ndarray) -> dict | None:
        pos, neg = np.flatnonzero(t == 1), np.flatnonzero(t == 0)
        if pos.size == 0 or neg.size == 0:
            return None
        flip = pos.size > neg.size
        ref, query = (pos, neg) if flip else (neg, pos)
        ref = ref[np.argsort(s[ref])]
        plan = {"ref": ref, "query": query, "flip": flip, "bounds": []}
        lo = np.searchsorted(s[ref], s[query], side="left")
        hi = np.searchsorted(s[ref], s[query], side="right")
        # reference weight below a query row = inclusive cumulative sum at position bound - 1
        for bound in [lo] if np.array_equal(lo, hi) else [lo, hi]:
            plan["bounds"].append((np.maximum(bound - 1, 0), (bound > 0).astype(np.float64)))
        return plan

    def _on(self, device: torch.device) -> list:
        if device not in self._cache:

            def move(plan: dict) -> dict:
                return {
                    "ref": torch.as_tensor(plan["ref"], device=device),
                    "query": torch.as_tensor(plan["query"], device=device),
                    "flip": plan["flip"],
                    "bounds": [
                        tuple(torch.as_tensor(a, device=device) for a in bound)
                        for bound in plan["bounds"]
                    ],
                }

            self._cache[device] = [None if p is None else move(p) for p in self._plans]
        return self._cache[device]

    def __call__(self, weights: Weights, map_fn: MapFn = map) -> torch.Tensor:
        columns = map_fn(lambda plan: self._column(weights, plan), self._on(weights.device))
        return torch.stack(list(columns), dim=1)

    @staticmethod
    def _column(weights: Weights, plan: dict | None) -> torch.Tensor:
        if plan is None:
            return torch.full(
                (weights.n_resamples,), float("nan"), dtype=torch.float64, device=weights.device
            )
        dim = weights.row_dim
        cum = weights.rows(plan["ref"]).cumsum_(dim)
        twice = 0
        for index, keep in plan["bounds"]:
            found = cum.index_select(dim, index).to(torch.float64) * weights.along_rows(keep)
            twice = twice + (found if len(plan["bounds"]) == 2 else 2 * found)
        w_query = weights.rows(plan["query"]).to(torch.float64)
        u2 = (w_query * twice).sum(dim=dim)
        n_ref, n_query = cum.select(dim, -1).to(torch.float64), w_query.sum(dim=dim)
        u = n_ref * n_query - u2 / 2 if plan["flip"] else u2 / 2
        return torch.where((n_ref > 0) & (n_query > 0), u / (n_ref * n_query), float("nan"))


def default_chunk(n_rows: int, device: torch.device) -> int:
    """Resamples per chunk: a few MB of counts on CPU (cache-friendly), ~256 MB on CUDA."""
    return max(1, _CHUNK_BYTES.get(device.type, 4 << 20) // (8 * max(n_rows, 1)))


@contextlib.contextmanager
def _parallel_map(device: torch.device) -> Iterator[MapFn]:
    """On CPU: one torch thread per worker, labels spread over a thread pool (torch releases the
    GIL). Small per-label ops scale badly with intra-op threads, worst on a shared machine."""
    workers = torch.get_num_threads()
    if device.type != "cpu" or workers < 2:
        yield map
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            yield pool.map
    finally:
        torch.set_num_threads(workers)


def run_bootstrap(
    resampler: Resampler,
    statistics: Mapping[str, Statistic],
    *,
    device: str = "auto",
    chunk_size: int | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate every statistic on the same resample counts, chunk by chunk.

    Parameters
    ----------
    resampler : Resampler
    statistics : mapping of name to callable
        Each maps :class:`Weights` on ``device`` and a ``map``-like function (to spread
        independent work over CPU workers) to a (c, ...) tensor.
    device : {"auto", "cpu", "cuda", "cuda:N"}
    chunk_size : int, optional
        Resamples per chunk; default from :func:`default_chunk`.
    progress : callable, optional
        ``progress(total, desc)`` makes a bar counting resamples (see :mod:`cxrprobe.progress`).

    Returns
    -------
    dict of name to ndarray of shape (B, ...)

    Examples
    --------
    >>> r = make_resampler(4, n_resamples=2, seed=0)
    >>> out = run_bootstrap(r, {"auc": AurocStatistic([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])},
    ...                     device="cpu")
    >>> out["auc"].shape
    (2, 1)
    """
    dev = resolve_device(device)
    chunk = chunk_size or default_chunk(resampler.n_rows, dev)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in statistics}
    bar = start_bar(progress, resampler.n_resamples, "bootstrap")
    try:
        with _parallel_map(dev) as map_fn:
            for draws in resampler.draw_chunks(chunk):
                weights = row_weights(resampler, draws, dev)
                for name, statistic in statistics.items():
                    parts[name].append(statistic(weights, map_fn))
                bar.update(draws.shape[0])
    finally:
        bar.close()
    return {name: torch.cat(p).cpu().numpy() for name, p in parts.items()}


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
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.int64, device=resolve_device(device))
    return AurocStatistic(targets, scores)(Weights.from_counts(counts, torch.int64)).cpu().numpy()


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


def paired_p_values(deltas: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap p-values of differences: the study's one-sided share, and a two-sided variant.

    The study's p: the share of resamples in which the model that is better on the full data does
    *not* win, i.e. ``sign(observed) * delta <= 0`` (ties count as not winning); 1 when the
    observed difference is exactly 0. Two-sided: ``min(1, 2 * min(P(delta <= 0), P(delta >= 0)))``.
    Resamples where the difference is undefined (NaN) are left out of both shares.

    Parameters
    ----------
    deltas : ndarray of shape (B, k)
    observed : ndarray of shape (k,)

    Returns
    -------
    (p_study, p_two_sided), each of shape (k,)

    Examples
    --------
    >>> p, p2 = paired_p_values(np.array([[0.1], [0.2], [-0.1], [0.3]]), np.array([0.15]))
    >>> float(p[0]), float(p2[0])
    (0.25, 0.5)
    """
    defined = ~np.isnan(deltas)
    n = defined.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        not_above = np.where(defined, deltas <= 0, False).sum(axis=0) / n
        not_below = np.where(defined, deltas >= 0, False).sum(axis=0) / n
    study = np.where(observed > 0, not_above, not_below)
    study = np.where(observed == 0, 1.0, study)
    two_sided = np.minimum(1.0, 2 * np.minimum(not_above, not_below))
    invalid = (n == 0) | np.isnan(observed)
    return np.where(invalid, np.nan, study), np.where(invalid, np.nan, two_sided)
