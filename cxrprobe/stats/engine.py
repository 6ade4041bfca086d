"""Where resampled statistics are computed: numpy/scipy on the CPU, torch on CUDA.

Every bootstrap statistic here is a *segment sum* of the resample counts followed by a little
arithmetic on the sums: a :class:`SegmentMap` says which rows (with which values) add up into
each segment, i.e. it is a sparse (segments x rows) matrix, and applying it to a chunk of counts
(rows x c resamples) is one sparse-dense product. The CPU backend does that with scipy (and
imports neither torch nor scikit-learn, so a CPU ``compare`` starts fast); the torch backend
with ``torch.sparse`` on CUDA (it also runs on the CPU, which is how the tests check it).
Both receive bit-identical counts from :mod:`cxrprobe.stats.resample`, and the arithmetic after
the sums is written once against the few array operations of :class:`Ops`.

Counts are float32 while every possible sum of counts stays below 2**24 (exact integers in any
summation order, half the memory traffic of float64), else float64.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrprobe.devices import check_device_name, resolve_device
from cxrprobe.stats.resample import Resampler, draws_torch

MapFn = Callable[..., Iterable]
EXACT_FLOAT32 = 2**24
# Resamples per chunk: ~24 MB of counts on the CPU (the products stream through them and add
# into segment sums that stay in cache), ~512 MB to keep a GPU busy.
_CHUNK_BYTES = {"cpu": 24 << 20, "cuda": 512 << 20}
_CHUNK_LIMITS = {"cpu": (16, 512), "cuda": (1, 4096)}


@dataclass(frozen=True)
class SegmentMap:
    """A sparse linear map from row counts to segment sums.

    Segment ``s`` is ``sum(values[j] * counts[rows[j]] for j in bounds[s]:bounds[s+1])``;
    ``values`` None means all ones (sums of counts: exact in float32). ``n_rows`` is the number
    of rows of the counts it applies to.
    """

    rows: np.ndarray
    bounds: np.ndarray
    n_rows: int
    values: np.ndarray | None = None

    @property
    def n_segments(self) -> int:
        return len(self.bounds) - 1


class Ops:
    """The array operations the statistics use after the segment sums (numpy flavour)."""

    @staticmethod
    def counts_table(sums):
        """Segment sums (S, c) of counts as an exact (c, S + 1) int64 table, column 0 zero (so a
        cumulative sum over it starts at 0); resamples first, so sums along segments are
        contiguous (integer cumulative sums there are ~10x faster than float ones)."""
        out = np.zeros((sums.shape[1], sums.shape[0] + 1), dtype=np.int64)
        out[:, 1:] = sums.T
        return out

    @staticmethod
    def cumsum(x, axis: int):
        return np.cumsum(x, axis=axis)

    @staticmethod
    def take(x, index, axis: int):
        return np.take(x, index, axis=axis)

    @staticmethod
    def sum(x, axis: int):
        return x.sum(axis=axis)

    @staticmethod
    def f64(x):
        return x.astype(np.float64, copy=False)

    @staticmethod
    def where(cond, a, b):
        return np.where(cond, a, b)

    @staticmethod
    def stack(arrays, axis: int):
        return np.stack(arrays, axis=axis)

    @staticmethod
    def concat(arrays, axis: int):
        return np.concatenate(arrays, axis=axis)


class TorchOps(Ops):
    """The same operations for torch tensors."""

    @staticmethod
    def counts_table(sums):
        import torch

        table = sums.T.to(torch.int64)
        zero = torch.zeros((table.shape[0], 1), dtype=torch.int64, device=table.device)
        return torch.cat([zero, table], dim=1)

    @staticmethod
    def cumsum(x, axis: int):
        return x.cumsum(dim=axis)

    @staticmethod
    def take(x, index, axis: int):
        return x.index_select(axis, index)

    @staticmethod
    def sum(x, axis: int):
        return x.sum(dim=axis)

    @staticmethod
    def f64(x):
        import torch

        return x.to(torch.float64)

    @staticmethod
    def where(cond, a, b):
        import torch

        return torch.where(cond, a, b)

    @staticmethod
    def stack(arrays, axis: int):
        import torch

        return torch.stack(list(arrays), dim=axis)

    @staticmethod
    def concat(arrays, axis: int):
        import torch

        return torch.cat(list(arrays), dim=axis)


@dataclass
class Counts:
    """Row counts of a chunk of c resamples, rows first: ``data`` (n, c) on its backend.

    :meth:`as_f64` converts once per chunk, for the statistics with float64 values.
    """

    data: Any
    backend: Backend
    _f64: Any = field(default=None, repr=False)

    @property
    def n_resamples(self) -> int:
        return int(self.data.shape[1])

    @property
    def ops(self) -> type[Ops]:
        return self.backend.ops

    def as_f64(self):
        if self._f64 is None:
            self._f64 = self.backend.ops.f64(self.data)
        return self._f64

    def segment_sums(self, segments: SegmentMap):
        """(S, c) sums of every segment in every resample (see :class:`SegmentMap`)."""
        return self.backend.segment_sums(segments, self)

    def weighted_sums(self, matrix: np.ndarray):
        """(c, k) float64 sums of the columns of a dense (n, k) ``matrix`` weighted by the counts
        (one matrix product for many statistics at once)."""
        return self.backend.weighted_sums(matrix, self)


class Backend:
    """numpy/scipy on the CPU: counts, segment sums and conversions."""

    name = "numpy"
    ops: type[Ops] = Ops

    def __init__(self) -> None:
        self.device = "cpu"
        self._maps: dict[Any, Any] = {}  # per SegmentMap / dense matrix and dtype

    def asarray(self, values: np.ndarray):
        return np.asarray(values)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def counts(self, resampler: Resampler, start: int, stop: int) -> Counts:
        unit_counts = resampler.counts(start, stop)
        dtype = np.float32 if resampler.largest_total < EXACT_FLOAT32 else np.float64
        data = np.empty(unit_counts.shape[::-1], dtype=dtype)
        data[...] = unit_counts.T
        return Counts(data, self)

    def _matrix(self, segments: SegmentMap, dtype) -> Any:
        key = (id(segments), np.dtype(dtype).name)
        if key not in self._maps:
            from scipy.sparse import csr_matrix

            values = np.ones(len(segments.rows)) if segments.values is None else segments.values
            matrix = csr_matrix(
                (values.astype(dtype), segments.rows, segments.bounds),
                shape=(segments.n_segments, segments.n_rows),
            ).tocsc()  # the product then reads the counts row after row (streaming) and adds
            # each into its segment: 1.5-4x faster than gathering rows in segment order
            self._maps[key] = (segments, matrix)  # keep ``segments`` alive: ids stay unique
        return self._maps[key][1]

    def segment_sums(self, segments: SegmentMap, counts: Counts):
        data = counts.data if segments.values is None else counts.as_f64()
        if segments.n_segments == 0:
            return np.zeros((0, data.shape[1]), dtype=data.dtype)
        return self._matrix(segments, data.dtype) @ data

    def weighted_sums(self, matrix: np.ndarray, counts: Counts):
        return counts.as_f64().T @ matrix


class TorchBackend(Backend):
    """torch on ``device`` (CUDA in use; the CPU for tests): draws generated on the device."""

    name = "torch"
    ops = TorchOps

    def __init__(self, device) -> None:
        super().__init__()
        self.device = device

    def asarray(self, values: np.ndarray):
        import torch

        return torch.as_tensor(np.asarray(values), device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        return x.cpu().numpy()

    def counts(self, resampler: Resampler, start: int, stop: int) -> Counts:
        import torch

        draws = draws_torch(resampler.seed, start, stop, resampler.n_units, self.device)
        width, units = draws.shape
        draws += torch.arange(width, device=self.device)[:, None] * units
        unit_counts = torch.bincount(draws.view(-1), minlength=width * units).view(width, units)
        if resampler.unit_of_row is not None:
            unit_counts = unit_counts[:, self.asarray(resampler.unit_of_row)]
        exact = resampler.largest_total < EXACT_FLOAT32
        dtype = torch.float32 if exact else torch.float64
        return Counts(unit_counts.T.to(dtype).contiguous(), self)

    def _matrix(self, segments: SegmentMap, dtype) -> Any:
        key = (id(segments), dtype)
        if key not in self._maps:
            import torch

            values = np.ones(len(segments.rows)) if segments.values is None else segments.values
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                matrix = torch.sparse_csr_tensor(
                    self.asarray(segments.bounds.astype(np.int64)),
                    self.asarray(segments.rows.astype(np.int64)),
                    torch.as_tensor(values, dtype=dtype, device=self.device),
                    size=(segments.n_segments, segments.n_rows),
                    check_invariants=False,
                )
            self._maps[key] = (segments, matrix)
        return self._maps[key][1]

    def weighted_sums(self, matrix: np.ndarray, counts: Counts):
        key = ("dense", id(matrix))
        if key not in self._maps:
            self._maps[key] = (matrix, self.asarray(matrix))
        return counts.as_f64().T @ self._maps[key][1]

    def segment_sums(self, segments: SegmentMap, counts: Counts):
        import torch

        data = counts.data if segments.values is None else counts.as_f64()
        if segments.n_segments == 0:
            return torch.zeros((0, data.shape[1]), dtype=data.dtype, device=self.device)
        return self._matrix(segments, data.dtype) @ data


def make_backend(device: str = "auto", backend: str | None = None) -> Backend:
    """The CPU backend for ``cpu``, the torch backend for CUDA; ``backend="torch"`` forces torch
    (on the CPU too: the tests run the CUDA code path that way), ``"numpy"`` the CPU."""
    check_device_name(device)
    if backend not in (None, "numpy", "torch"):
        raise ValueError(f"backend {backend!r} must be 'numpy' or 'torch'")
    if backend == "numpy":
        if device not in ("cpu", "auto"):
            raise ValueError(f"the numpy backend runs on the CPU, not on {device}")
        return Backend()
    if backend is None and (device == "cpu" or (device == "auto" and not _may_have_cuda())):
        return Backend()
    resolved = resolve_device(device)
    if resolved.type == "cpu" and backend is None:
        return Backend()
    return TorchBackend(resolved)


def _may_have_cuda() -> bool:
    """False when no GPU driver is visible, so ``--device auto`` need not import torch to know."""
    return any(
        os.path.exists(path)
        for path in (
            "/dev/nvidiactl",
            "/dev/nvidia0",
            "/proc/driver/nvidia",
            "/dev/dxg",
            "/dev/kfd",
        )
    )


def default_chunk(n_rows: int, device_type: str) -> int:
    """Resamples per chunk: ~24 MB of float32 counts on the CPU, ~512 MB on CUDA."""
    low, high = _CHUNK_LIMITS.get(device_type, _CHUNK_LIMITS["cpu"])
    size = _CHUNK_BYTES.get(device_type, _CHUNK_BYTES["cpu"]) // (4 * max(n_rows, 1))
    return int(min(high, max(low, size)))


@contextlib.contextmanager
def worker_pool(backend: Backend) -> Iterator[tuple[MapFn, ThreadPoolExecutor | None]]:
    """A ``map`` spreading independent per-label work over CPU threads (numpy and scipy release
    the GIL), and the pool for prefetching the next chunk's counts; plain ``map`` elsewhere."""
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if backend.name != "numpy" or (workers or 1) < 2:
        yield map, None
        return
    with ThreadPoolExecutor(workers) as pool, _one_blas_thread():
        yield pool.map, pool


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS single-threaded while our own threads run: its spinning threads competing with
    them made a matrix product 100x slower on a loaded 2-core machine."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
