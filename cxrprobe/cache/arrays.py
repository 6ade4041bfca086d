"""A row store's Zarr arrays: what each holds, its chunks and shards, and its dimension names.

A store folder is a plain Zarr v3 group (done records, ``rows.parquet`` and run records sit
beside it: :mod:`cxrprobe.cache.layout`)::

    zarr.json               group attributes under "cxrprobe": kind, identity, provenance, ...
    ids, split, patient_id  (row,) strings copied from the manifest
    finding                 (finding,) the finding names
    labels                  (row, finding) float32: 1, 0, -1 uncertain, NaN not annotated
    failed                  (row,) bool, written by finalize
    <data arrays>           e.g. images (row, y, x) uint8 or cls (row, feature) float16

Every array names its dimensions and the per-row ones name ``ids split patient_id`` as their
coordinates, so ``xarray.open_zarr`` reads a Dataset indexed by row. A finished store's metadata
is consolidated into its ``zarr.json`` (:func:`consolidate`), xarray's default read.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from cxrprobe.cache.layout import DIMENSIONS
from cxrprobe.cache.reader import ArraySpec
from cxrprobe.cache.rows import RowMetadata

ROW_COORDS = "ids split patient_id"  # the coordinates of every per-row array


def write_metadata(group: Any, metadata: RowMetadata) -> None:
    """Write the per-row manifest columns (``ids``, ``split``, ``patient_id``, ``labels``, the
    optional subgroups) and the ``finding`` names into ``group``, replacing any there."""
    for name in ("ids", "split", "patient_id"):
        write_strings(group, name, getattr(metadata, name))
    write_strings(group, "finding", np.array(metadata.findings, dtype=str))
    labels = group.create_array(
        "labels",
        shape=metadata.labels.shape,
        chunks=(max(1, min(len(metadata), 65536)), max(metadata.labels.shape[1], 1)),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=DIMENSIONS["labels"],
        attributes={"findings": list(metadata.findings), "coordinates": ROW_COORDS},
        overwrite=True,
    )
    if len(metadata):
        labels[:] = metadata.labels
    for name, values in metadata.subgroups.items():  # optional: sex, age, view
        column = group.create_array(
            name,
            shape=(len(values),),
            chunks=(max(1, min(len(values), 65536)),),
            dtype=str if values.dtype.kind == "U" else values.dtype,
            fill_value=np.nan if values.dtype.kind == "f" else None,
            dimension_names=("row",),
            overwrite=True,
        )
        if len(values):
            column[:] = values


def write_strings(group: Any, name: str, values: np.ndarray) -> None:
    """A 1-D string array (``ids``, ``split``, ``patient_id``, ``finding``)."""
    arr = group.create_array(
        name,
        shape=(len(values),),
        chunks=(max(1, min(len(values), 65536)),),
        dtype=str,
        dimension_names=DIMENSIONS[name],
        overwrite=True,
    )
    if len(values):
        arr[:] = values


def create_data_array(group: Any, spec: ArraySpec, n_rows: int, shard_rows: int) -> None:
    """An empty data array of ``n_rows`` rows, in chunks of ``spec.chunk_rows`` rows (at most a
    shard) and shards of ``shard_rows`` rows (rounded down to whole chunks)."""
    chunk_rows = max(1, min(spec.chunk_rows, shard_rows))
    rows_per_shard = shard_rows - shard_rows % chunk_rows
    group.create_array(
        spec.name,
        shape=(n_rows, *spec.tail),
        chunks=(chunk_rows, *spec.tail),
        shards=(rows_per_shard, *spec.tail),
        dtype=spec.dtype,
        fill_value=spec.fill_value,
        dimension_names=spec.dimension_names,
        attributes={"coordinates": ROW_COORDS},
    )


def write_failed(group: Any, failed: np.ndarray) -> None:
    """The ``failed`` mask, (row,) bool: rows whose data could not be computed."""
    n_rows = len(failed)
    arr = group.create_array(
        "failed",
        shape=(n_rows,),
        chunks=(max(1, min(n_rows, 1 << 20)),),
        dtype=bool,
        dimension_names=DIMENSIONS["failed"],
        attributes={"coordinates": ROW_COORDS},
        overwrite=True,
    )
    if n_rows:
        arr[:] = failed


def consolidate(path: str | os.PathLike) -> None:
    """Copy every array's metadata into the group's ``zarr.json``, so xarray's default read
    needs no listing (zarr-python warns that v3 consolidation is its own extension; other
    readers ignore it: ``must_understand`` is false)."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(str(path))
