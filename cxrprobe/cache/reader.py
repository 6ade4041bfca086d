"""The read half of a row store: its arrays, row metadata, done records and completeness.

:class:`StoreReader` is what every reader needs (``open_embeddings``, ``open_images``,
``cxrprobe info``); :class:`~cxrprobe.cache.store.RowStore` adds creating, resuming, appending
and writing shards. A store is finished when its complete flag (written last) is set, its rows
are the rows it was finalized with, no append is half done and every shard has a done record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.cache.layout import DIMENSIONS, INNER_PROGRESS, StoreFiles, json_number
from cxrprobe.cache.rows import NUMERIC_SUBGROUPS, SUBGROUP_FIELDS, RowMetadata
from cxrprobe.errors import (
    DataFormatError,
    IncompleteStoreError,
    MissingDependencyError,
)

ATTR = "cxrprobe"  # the group attribute holding everything cxrprobe records
ROW_ARRAYS = ("ids", "split", "patient_id", "labels")


@dataclass(frozen=True)
class ArraySpec:
    """A per-row data array: shape ``(n_rows, *tail)``, chunked by ``chunk_rows`` rows."""

    name: str
    tail: tuple[int, ...]
    dtype: str
    fill_value: float | int
    chunk_rows: int = 1

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """``row`` and the tail's names (:data:`~cxrprobe.cache.layout.DIMENSIONS`, else
        ``NAME_1``, ``NAME_2``, ...)."""
        known = DIMENSIONS.get(self.name)
        if known is not None and len(known) == 1 + len(self.tail):
            return known
        return ("row", *(f"{self.name}_{k + 1}" for k in range(len(self.tail))))


class StoreReader:
    """A Zarr v3 group of per-row arrays with its done records: what readers need."""

    def __init__(self, path: str | os.PathLike, group: Any) -> None:
        self.path = Path(path)
        self.group = group
        self._attrs = dict(group.attrs[ATTR])

    def interrupted(self) -> str | None:
        """Why the store cannot be used as it is: a half-made creation (arrays missing) or an
        interrupted append; None for a usable (possibly unfinished) store."""
        appending = self._attrs.get("appending")
        if appending:
            return (
                f"half-made {self.kind} store: appending rows {appending['from']}-"
                f"{appending['to'] - 1} was interrupted"
            )
        names = [*ROW_ARRAYS, *(spec["name"] for spec in self._attrs.get("arrays", []))]
        missing = [n for n in names if not (self.path / n / "zarr.json").is_file()]
        if missing:
            return (
                f"half-made {self.kind} store: its creation was interrupted "
                f"(no {', '.join(missing)} array)"
            )
        return None

    # ---------------------------------------------------------------------- metadata arrays
    def metadata(self) -> RowMetadata:
        """The per-row manifest columns stored with the data."""
        return RowMetadata(
            ids=self.strings("ids"),
            split=self.strings("split"),
            patient_id=self.strings("patient_id"),
            labels=np.asarray(self.group["labels"][:], dtype=np.float32),
            findings=tuple(self._attrs["findings"]),
            subgroups={  # optional: stores made before them, or from data without them, have none
                name: self.strings(name) if name not in NUMERIC_SUBGROUPS else self.group[name][:]
                for name in SUBGROUP_FIELDS
                if (self.path / name / "zarr.json").is_file()
            },
        )

    def strings(self, name: str) -> np.ndarray:
        """A per-row string array (``ids``, ``split``, ``patient_id``) as a numpy unicode array."""
        return np.array(self.group[name][:].tolist(), dtype=str)

    # --------------------------------------------------------------------------- properties
    @property
    def kind(self) -> str:
        return self._attrs["kind"]

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's cxrprobe attributes (identity, provenance, findings, ...)."""
        return dict(self._attrs)

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._attrs["identity"])

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self._attrs["provenance"])

    @property
    def shard_rows(self) -> int:
        return int(self._attrs["shard_rows"])

    @property
    def n_rows(self) -> int:
        return int(self.group["ids"].shape[0])

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)

    @property
    def array_specs(self) -> list[ArraySpec]:
        return [
            ArraySpec(
                s["name"],
                tuple(s["tail"]),
                s["dtype"],
                json_number(s["fill_value"]),
                s["chunk_rows"],
            )
            for s in self._attrs["arrays"]
        ]

    @property
    def files(self) -> StoreFiles:
        """The bookkeeping beside the store (done records, ``rows.parquet``, run record)."""
        return StoreFiles(self.path)

    @property
    def format_version(self) -> int:
        """1: made before dimension names and bookkeeping beside the store; 2: current."""
        return int(self._attrs.get("format_version", 1))

    def array(self, name: str) -> Any:
        """The Zarr array ``name`` (data or metadata)."""
        return self.group[name]

    def shard_slice(self, shard: int) -> slice:
        """The rows shard ``shard`` covers."""
        start = shard * self.shard_rows
        return slice(start, min(start + self.shard_rows, self.n_rows))

    def to_xarray(self) -> Any:
        """The store as a lazily read ``xarray.Dataset``, as ``xarray.open_zarr`` gives it: one
        variable per array, ``ids``, ``split``, ``patient_id`` and ``finding`` as coordinates."""
        try:
            import xarray
        except ImportError as exc:
            raise MissingDependencyError("to_xarray needs xarray: pip install xarray") from exc
        if self.format_version < 2:
            raise DataFormatError(
                f"{self.path}: made by an older cxrprobe, without dimension names; bring it up to "
                f"date with cxrprobe.cache.store.upgrade_store({str(self.path)!r}) (nothing is "
                "recomputed)"
            )
        return xarray.open_zarr(self.path, consolidated=False)

    # --------------------------------------------------------------- done records, completeness
    def _progress_dir(self) -> Path:
        """Where the done records are: beside the store; inside it for a format-1 store (or
        one whose records are being moved out)."""
        inner = self.path / INNER_PROGRESS
        store_id = self._attrs.get("store_id")
        return inner if store_id is None or inner.is_dir() else self.files.progress(store_id)

    def _done_record_path(self, shard: int) -> Path:
        return self._progress_dir() / f"shard-{shard:06d}.json"

    def _finalized(self) -> bool:
        """The attributes say every row was done (the complete flag is written last)."""
        return bool(self._attrs.get("complete")) and self._attrs.get("rows") == self.n_rows

    def done_shards(self) -> set[int]:
        """Shards whose done record exists; every shard of a finalized store whose bookkeeping
        was not copied with it (its attributes hold the failures)."""
        folder = self._progress_dir()
        if not folder.is_dir():
            return set(range(self.n_shards)) if self._finalized() else set()
        return {int(p.stem.split("-")[1]) for p in folder.glob("shard-*.json")}

    def pending_shards(self) -> list[int]:
        """Shards still to write, in order."""
        done = self.done_shards()
        return [s for s in range(self.n_shards) if s not in done]

    def failures(self) -> dict[int, str]:
        """Failed rows → reason, from the done records (a finalized store copied without its
        bookkeeping: from its attributes)."""
        if not self._progress_dir().is_dir():
            failures = self._attrs.get("failures", []) if self._finalized() else []
            return {int(f["row"]): str(f["reason"]) for f in failures}
        found: dict[int, str] = {}
        for shard in sorted(self.done_shards()):
            record = json.loads(self._done_record_path(shard).read_text())
            found.update({int(k): v for k, v in record["failures"].items()})
        return found

    def failed_mask(self) -> np.ndarray:
        """(n,) bool: rows that could not be computed (from ``failed``, or the done records)."""
        if "failed" in self.group and self.group["failed"].shape[0] == self.n_rows:
            return np.asarray(self.group["failed"][:], dtype=bool)
        failed = np.zeros(self.n_rows, dtype=bool)
        failed[list(self.failures())] = True
        return failed

    @property
    def is_complete(self) -> bool:
        """Finalized, and still every row done: not after an append or a lost done record."""
        return self._finalized() and not self.interrupted() and not self.pending_shards()

    def require_complete(self) -> None:
        """Raise ``IncompleteStoreError`` unless :meth:`finalize` succeeded."""
        if not self.is_complete:
            raise IncompleteStoreError(
                f"{self.path} is incomplete ({len(self.pending_shards())} shards missing); "
                "run the command that made it again to finish it"
            )
