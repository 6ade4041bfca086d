"""How a store sits on disk: a plain Zarr v3 hierarchy, and cxrprobe's bookkeeping beside it.

A store ``emb.zarr`` holds only Zarr: every array names its dimensions (``row``, ``feature``,
``finding``, ``y``, ``x``, ...) and every attribute is strict JSON, so xarray, zarr-python,
JavaScript and other readers open it as it is (``docs/embeddings.md`` lists the readers tried).
What cxrprobe needs besides the data lives in the folder ``emb.zarr.cxrprobe`` next to it::

    progress-<store id>/shard-*.json  done records: one per finished shard, with its failures
    rows.parquet                      one row per store row: row, image_id, patient_id, split,
                                      failed, then one float32 column per finding (null = not
                                      annotated), for tools that cannot read Zarr strings
    failures.json                     the failures of the last run (:func:`write_run_files`)
    run.json                          the command's settings, result and versions (the same)

The writer lock ``emb.zarr.lock`` sits beside both. Done records are filed under the store's
``store_id`` attribute, so records left beside a store that another was copied over are never
taken for its own. Stores made before this layout (format 1) keep their bookkeeping inside
(``_progress/``, ``run.json``, ``failures.json``) and have no dimension names: they are read as
they are, and brought up to date when a writer opens them (:func:`upgrade_arrays`,
:func:`move_inner_bookkeeping`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.provenance import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    write_run_record,
)

SUFFIX = ".cxrprobe"
INNER_PROGRESS = "_progress"  # format 1: done records inside the store
INNER_FILES = ("run.json", "failures.json")  # format 1: written into the store by the CLI
ROW_COLUMNS = ("row", "image_id", "patient_id", "split", "failed")  # rows.parquet, then findings
DIMENSIONS = {  # the dimension names of the arrays cxrprobe writes
    "ids": ("row",),
    "split": ("row",),
    "patient_id": ("row",),
    "finding": ("finding",),
    "labels": ("row", "finding"),
    "failed": ("row",),
    "images": ("row", "y", "x"),
    "cls": ("row", "feature"),
    "mean": ("row", "feature"),
    "layers": ("row", "layer", "feature"),
}
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


@dataclass(frozen=True)
class StoreFiles:
    """The files cxrprobe keeps beside the store at ``store``."""

    store: Path

    @property
    def folder(self) -> Path:
        """``STORE.cxrprobe``: the bookkeeping folder."""
        return self.store.with_name(self.store.name + SUFFIX)

    @property
    def rows(self) -> Path:
        """``rows.parquet``: ids, patients, splits, labels and failures, one row per store row."""
        return self.folder / "rows.parquet"

    @property
    def failures(self) -> Path:
        return self.folder / "failures.json"

    @property
    def run(self) -> Path:
        return self.folder / "run.json"

    def progress(self, store_id: str) -> Path:
        """The done records of the store whose ``store_id`` attribute this is."""
        return self.folder / f"progress-{store_id}"

    def remove(self) -> None:
        """Remove the bookkeeping cxrprobe wrote (a replaced store's); other files are kept."""
        if not self.folder.is_dir():
            return
        for entry in self.folder.iterdir():
            if entry.is_dir() and entry.name.startswith("progress-"):
                shutil.rmtree(entry)
            elif entry.name in ("rows.parquet", *INNER_FILES):
                entry.unlink()
        if not any(self.folder.iterdir()):
            self.folder.rmdir()


def is_zarr_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Zarr v3 hierarchy (a folder with ``zarr.json``)."""
    return (Path(path) / "zarr.json").is_file()


def write_run_files(
    store: str | os.PathLike, command: str, record: dict[str, Any], summary: dict[str, Any]
) -> Path:
    """Write a finished run's files beside ``store``: ``failures.json`` (the summary's failures)
    and the run record (``record``, the command's resolved options, with the summary as its
    result, failures counted). The library writes them, so a study step and its single command
    leave the same files. Returns the failures file."""
    files = StoreFiles(Path(store))
    failures = summary["failures"]
    result = {**{k: v for k, v in summary.items() if k != "failures"}, "failures": len(failures)}
    written = atomic_write_json(files.failures, failures)
    write_run_record(files.run, command, {**record, "result": result})
    return written


# ----------------------------------------------------------------------- strict JSON attributes
def strict_json(value: Any) -> Any:
    """``value`` with non-finite floats spelled ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (as the
    Zarr v3 spec writes fill values), so attributes are JSON that every parser accepts."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else _NON_FINITE[value]
    return value


def json_number(value: float | int | str) -> float | int:
    """A number written by :func:`strict_json` (or a plain one) back as a Python number."""
    return float(value) if isinstance(value, str) else value


# ----------------------------------------------------------------------------------- rows table
def _row_dtype(n: int) -> type:
    """int32 row numbers (read as plain numbers in R and JavaScript), int64 past 2**31 rows."""
    return np.int32 if n < 2**31 else np.int64


def write_rows_table(path: Path, metadata: Any, failed: np.ndarray) -> Path:
    """Write ``rows.parquet`` (see the module docs) atomically from row metadata and the mask."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "row": pa.array(np.arange(len(metadata), dtype=_row_dtype(len(metadata)))),
        "image_id": pa.array(metadata.ids.tolist(), pa.string()),
        "patient_id": pa.array(metadata.patient_id.tolist(), pa.string()),
        "split": pa.array(metadata.split.tolist(), pa.string()),
        "failed": pa.array(np.asarray(failed, dtype=bool)),
    }
    for j, name in enumerate(metadata.findings):
        columns[name] = pa.array(metadata.labels[:, j].astype(np.float32), from_pandas=True)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


# ------------------------------------------------------------------------ format-1 stores
def upgrade_arrays(store: Path, dims: dict[str, tuple[str, ...]], row_coords: str) -> None:
    """Give a format-1 store's arrays their dimension names and per-row coordinates, rewriting
    each array's ``zarr.json`` atomically (only metadata changes; idempotent)."""
    for name, names in dims.items():
        meta_path = store / name / "zarr.json"
        if not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        meta["dimension_names"] = list(names)
        if names[0] == "row" and name not in row_coords.split():
            meta.setdefault("attributes", {})["coordinates"] = row_coords
        meta["attributes"] = strict_json(meta.get("attributes", {}))
        atomic_write_text(meta_path, json.dumps(meta, indent=2, allow_nan=False))


def move_inner_bookkeeping(store: Path, files: StoreFiles, progress: Path) -> None:
    """Move a format-1 store's done records and CLI files out of its Zarr hierarchy.

    The done-record folder moves in one rename (or record by record into an existing folder),
    so a kill leaves each record in one of the two places, both of which are read.
    """
    inner = store / INNER_PROGRESS
    if inner.is_dir():
        progress.parent.mkdir(parents=True, exist_ok=True)
        if not progress.exists():
            os.rename(inner, progress)
        else:
            for record in inner.glob("shard-*.json"):
                os.replace(record, progress / record.name)
            shutil.rmtree(inner)
    for name in INNER_FILES:
        old = store / name
        if old.is_file():
            files.folder.mkdir(parents=True, exist_ok=True)
            if (files.folder / name).exists():
                old.unlink()  # a newer one is already beside the store
            else:
                os.replace(old, files.folder / name)
