"""The preprocessed image cache: uint8 (S, S) images per manifest row in a sharded Zarr v3 store.

Decoding full-resolution radiographs is the slow part of every later stage, so it is done once:
:func:`build_image_cache` decodes and preprocesses every manifest row in worker processes, each
owning whole shards of a :class:`~cxrprobe.cache.store.RowStore` and writing each shard in one
call. A killed run is resumed by running it again (only shards without a done record are redone).
Rows that could not be read are recorded as failures (their pixels stay 0 and are masked by
``failed``), never used as images. :func:`open_images` reads a finished cache.

The output location is checked before any work, and the builder holds the store's
:class:`~cxrprobe.outputs.WriterLock` until it is finished. Workers
(:mod:`cxrprobe.cache.workers`) die with the builder (a SIGKILLed builder leaves nothing
running) and ignore Ctrl-C, which the builder answers by stopping them at once; finished shards
are kept either way.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.cache.layout import write_run_files
from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore
from cxrprobe.cache.workers import Tick, pool_tick, run_pool
from cxrprobe.data.decode import image_paths
from cxrprobe.data.manifest import (
    label_policies,
    manifest_hash,
    normalize_manifest,
    read_manifest,
    validate_manifest,
)
from cxrprobe.data.preprocess import (
    PREPROCESS_VERSION,
    PreprocessConfig,
    load_preprocessed,
    preset_config,
)
from cxrprobe.errors import DataFormatError, DecodeError, InputFileError
from cxrprobe.outputs import WriterLock, check_output_location
from cxrprobe.progress import ProgressFactory, start_bar
from cxrprobe.provenance import versions

KIND = "images"
ARRAY = "images"
SHARD_BYTES = 32 * 2**20  # default shard ≈ 32 MB of uncompressed pixels
SHARD_DELAY_ENV = "CXRPROBE_TEST_SHARD_DELAY_S"  # test hook: seconds to sleep before each shard
RECORDED_ERRORS = (InputFileError, DecodeError, DataFormatError)  # per-image failures, recorded
DENSE_READ = 4  # read a shard's row range whole when at least 1 in DENSE_READ of its rows is wanted


def default_shard_rows(size: int, n_rows: int = 0, workers: int = 1) -> int:
    """Rows per shard: about ``SHARD_BYTES`` of pixels, but enough shards to keep ``workers`` busy."""
    rows = max(1, SHARD_BYTES // (size * size))
    if n_rows and workers > 1:
        rows = min(rows, max(1, math.ceil(n_rows / workers)))
    return rows


def cache_identity(cfg: PreprocessConfig) -> dict[str, Any]:
    """What decides the stored pixels; a store made with other values is refused on resume."""
    return {
        "size": int(cfg.size),
        "preprocess": cfg.to_dict(),
        "preprocess_version": PREPROCESS_VERSION,
    }


# ----------------------------------------------------------------------------------- building
@dataclass(frozen=True)
class _ShardTask:
    store: str
    shard: int
    start: int
    paths: tuple[str, ...]
    config: dict[str, Any]


def build_image_cache(
    manifest: Any,
    root: str | os.PathLike | None,
    out: str | os.PathLike,
    cfg: PreprocessConfig,
    workers: int | None = os.cpu_count(),
    shard_rows: int | None = None,
    overwrite: bool = False,
    progress: ProgressFactory | None = None,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Decode and preprocess every manifest row into the image cache at ``out``; resumable.

    ``manifest`` is a DataFrame or a Parquet/CSV path; relative ``path`` entries are joined to
    ``root``. ``workers`` processes each compute whole shards (1: in this process).
    ``progress(total, desc)`` makes the bar (see :mod:`cxrprobe.progress`); it counts the images
    this run computes. ``record`` (the command's options beyond these, e.g. the preset): write
    ``failures.json`` and the ``cxrprobe preprocess`` run record beside the store
    (:func:`~cxrprobe.cache.layout.write_run_files`); None writes neither.

    Returns a summary: ``out``, ``rows``, ``images`` (rows with pixels), ``failures`` (list of
    ``{row, image_id, path, reason}``), ``computed`` (rows processed by this run), ``shards``,
    ``shards_resumed`` (already done before), ``seconds``, ``images_per_s``, ``workers``,
    ``shard_rows``.
    """
    check_output_location(out, "folder")
    source = None if hasattr(manifest, "columns") else str(manifest)
    df = _manifest_frame(manifest)
    paths = image_paths(df, root)
    workers = max(1, int(workers or 1))
    with WriterLock(out):
        summary = _build(
            df, source, paths, root, out, cfg, workers, shard_rows, overwrite, progress
        )
        if record is not None:
            options = {
                "manifest": None if source is None else Path(source),
                "root": None if root is None else Path(root),
                "out": Path(out),
                **record,
                "preprocess": cfg.to_dict(),
                "workers": workers,
                "shard_rows": summary["shard_rows"],
                "overwrite": overwrite,
            }
            write_run_files(out, "cxrprobe preprocess", options, summary)
    return summary


def build_cache(params: Mapping[str, Any], progress: ProgressFactory | None) -> dict[str, Any]:
    """Build the image cache of parsed ``cxrprobe preprocess`` options (the command and a study's
    step both run this): the preset with the settings given; returns the summary."""
    settings = {k: params[k] for k in ("size", "aspect", "equalize", "minmax", "resample")}
    return build_image_cache(
        params["manifest"],
        params["root"],
        params["out"],
        preset_config(params["preset"], **settings),
        workers=params["workers"],
        shard_rows=params["shard_rows"],
        overwrite=params["overwrite"],
        progress=progress,
        record={"preset": params["preset"]},
    )


def _build(
    df: Any,
    source: str | None,
    paths: Sequence[str],
    root: str | os.PathLike | None,
    out: str | os.PathLike,
    cfg: PreprocessConfig,
    workers: int,
    shard_rows: int | None,
    overwrite: bool,
    progress: ProgressFactory | None,
) -> dict[str, Any]:
    """Open (or create) the store and fill its pending shards; the caller holds its lock."""
    store = RowStore.open_or_create(
        out,
        kind=KIND,
        metadata=RowMetadata.from_manifest(df),
        arrays=[ArraySpec(ARRAY, (cfg.size, cfg.size), "uint8", 0, chunk_rows=1)],
        shard_rows=shard_rows or default_shard_rows(cfg.size, len(df), workers),
        identity=cache_identity(cfg),
        provenance={
            "manifest": source,
            "manifest_hash": manifest_hash(df),
            "label_policies": label_policies(df),
            "root": None if root is None else str(root),
            "config": cfg.to_dict(),
            "versions": versions(extra=("pillow", "pydicom")),
        },
        overwrite=overwrite,
    )
    pending = store.pending_shards()
    tasks = [_task(store, s, paths, cfg) for s in pending]
    computed = sum(len(t.paths) for t in tasks)
    bar = start_bar(progress, computed, "preprocess")
    started = time.perf_counter()
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                _run_shard(task, bar.update)
        else:
            run_pool(_run_shard, tasks, workers, bar.update, tasks[0].store)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    rate = computed / seconds if seconds > 0 else 0.0
    summary = store.finalize(
        {"last_run": {"computed": computed, "seconds": seconds, "workers": workers}}
    )
    failures = [{**f, "path": paths[f["row"]]} for f in summary["failures"]]
    return {
        "out": str(store.path),
        "rows": store.n_rows,
        "images": store.n_rows - len(failures),
        "failures": failures,
        "computed": computed,
        "shards": store.n_shards,
        "shards_resumed": store.n_shards - len(pending),
        "seconds": seconds,
        "images_per_s": rate,
        "workers": workers,
        "shard_rows": store.shard_rows,
    }


def _manifest_frame(manifest: Any) -> Any:
    """A validated, normalised manifest from a DataFrame or a Parquet/CSV path."""
    if not hasattr(manifest, "columns"):
        return read_manifest(manifest)
    validate_manifest(manifest, "manifest DataFrame")
    return normalize_manifest(manifest)


def _task(store: RowStore, shard: int, paths: Sequence[str], cfg: PreprocessConfig) -> _ShardTask:
    rows = store.shard_slice(shard)
    return _ShardTask(str(store.path), shard, rows.start, tuple(paths[rows]), cfg.to_dict())


def _run_shard(task: _ShardTask, tick: Tick | None = None) -> tuple[int, dict[int, str]]:
    """Compute one shard in memory and write it in one call; per-image errors become failures."""
    delay = float(os.environ.get(SHARD_DELAY_ENV) or 0)
    if delay:
        time.sleep(delay)
    if tick is None:
        tick = pool_tick()
    cfg = PreprocessConfig.from_dict(task.config)
    images = np.zeros((len(task.paths), cfg.size, cfg.size), dtype=np.uint8)
    failures: dict[int, str] = {}
    for k, path in enumerate(task.paths):
        try:
            images[k] = load_preprocessed(path, cfg)
        except RECORDED_ERRORS as exc:
            failures[task.start + k] = str(exc)
        if tick is not None:
            tick(1)
    RowStore.open(task.store, mode="r+", kind=KIND).write_shard(
        task.shard, {ARRAY: images}, failures
    )
    return task.shard, failures


# ------------------------------------------------------------------------------------ reading
class ImageCache:
    """A finished image cache: ids, metadata, failure mask and fast batched reads."""

    def __init__(self, store: RowStore) -> None:
        self.store = store
        self._images = store.array(ARRAY)

    @property
    def path(self) -> Path:
        return self.store.path

    @cached_property
    def ids(self) -> np.ndarray:
        return self.store.strings("ids")

    @property
    def size(self) -> int:
        return int(self.store.identity["size"])

    @property
    def config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.store.identity["preprocess"])

    @property
    def provenance(self) -> dict[str, Any]:
        return self.store.provenance

    @cached_property
    def failed(self) -> np.ndarray:
        """(n,) bool: rows whose image could not be read (their pixels are not data)."""
        return self.store.failed_mask()

    @cached_property
    def failures(self) -> dict[int, str]:
        """Failed row → reason."""
        return self.store.failures()

    def metadata(self) -> RowMetadata:
        return self.store.metadata()

    def to_xarray(self) -> Any:
        """The cache as a lazily read ``xarray.Dataset``: ``images`` (row, y, x) uint8 with the
        row metadata, as :meth:`RowStore.to_xarray <cxrprobe.cache.store.RowStore.to_xarray>`."""
        return self.store.to_xarray()

    def __len__(self) -> int:
        return self.store.n_rows

    def read(self, rows: slice | Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (k, S, S) images of ``rows`` (a slice or row indices, any order, repeats allowed).

        A step-1 slice is read as one contiguous selection (whole shards); indices are sorted,
        de-duplicated and grouped by shard (a range read for dense groups, row reads for sparse
        ones), then put back in the asked order.
        Failed rows read as zeros: check :attr:`failed`.
        """
        n = len(self)
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            if step == 1:
                return np.asarray(self._images[start:stop])
            rows = np.arange(start, stop, step)
        index = np.asarray(rows, dtype=np.int64).reshape(-1)
        if index.size == 0:
            return np.zeros((0, self.size, self.size), dtype=np.uint8)
        if index.min() < 0 or index.max() >= n:
            bad = index[(index < 0) | (index >= n)][0]
            raise IndexError(f"{self.path}: row {bad} out of range (the cache has {n} rows)")
        unique, inverse = np.unique(index, return_inverse=True)
        shards = unique // self.store.shard_rows
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]])
        block = np.concatenate([self._read_sorted(part) for part in np.split(unique, starts[1:])])
        return (
            block if unique.size == index.size and np.array_equal(unique, index) else block[inverse]
        )

    def _read_sorted(self, rows: np.ndarray) -> np.ndarray:
        """Sorted unique rows of one shard: one range read when dense, else one read per row.

        (Zarr's orthogonal selection decodes every touched shard whole, which made sparse random
        batches slower than reading everything, so it is not used.)
        """
        first, last = int(rows[0]), int(rows[-1])
        if rows.size * DENSE_READ >= last - first + 1:
            return np.asarray(self._images[first : last + 1])[rows - first]
        return np.stack([np.asarray(self._images[int(row)]) for row in rows])


def open_images(path: str | os.PathLike) -> ImageCache:
    """Open a finished image cache (refuses an unfinished one: rerun ``cxrprobe preprocess``)."""
    store = RowStore.open(path, kind=KIND)
    store.require_complete()
    return ImageCache(store)
