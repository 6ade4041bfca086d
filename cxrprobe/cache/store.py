"""Row stores: Zarr v3 groups indexed by manifest row, written shard by shard, resumable.

Both caches (preprocessed images, embeddings) are row stores. A row is a manifest row; rows are
grouped into shards of ``shard_rows``; each shard is written whole, in one call per array, by one
worker (process or rank), then a done record is written for it. A killed run leaves shards without
a record, and the next run redoes exactly those. Rows never written read back as the fill value
with no error in Zarr, so :meth:`RowStore.finalize` refuses to mark a store complete while any
shard lacks its record (see ``ecosystem-facts.md``).

Layout of a store directory::

    zarr.json               group attributes under "cxrprobe": kind, identity, provenance, ...
    ids, split, patient_id  per-row strings copied from the manifest
    labels                  (n, L) float32: 1, 0, -1 uncertain, NaN not annotated; "findings"
    failed                  (n,) bool, written by finalize
    <data arrays>           e.g. images (n, S, S) uint8 or cls (n, D) float16
    _progress/shard-*.json  done records: one per finished shard, with that shard's failures
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.errors import (
    DataFormatError,
    IncompleteStoreError,
    InputFileError,
    StoreMismatchError,
)
from cxrprobe.provenance import atomic_write_json, now_utc, to_jsonable

FORMAT_VERSION = 1
_ATTR = "cxrprobe"
_PROGRESS = "_progress"


@dataclass(frozen=True)
class ArraySpec:
    """A per-row data array: shape ``(n_rows, *tail)``, chunked by ``chunk_rows`` rows."""

    name: str
    tail: tuple[int, ...]
    dtype: str
    fill_value: float | int
    chunk_rows: int = 1


@dataclass(frozen=True)
class RowMetadata:
    """The manifest columns every store carries, one entry per row."""

    ids: np.ndarray
    split: np.ndarray
    patient_id: np.ndarray
    labels: np.ndarray
    findings: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("split", "patient_id", "labels"):
            if len(getattr(self, name)) != n:
                raise DataFormatError(
                    f"row metadata: {name} has {len(getattr(self, name))} rows, ids has {n}"
                )
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.findings):
            raise DataFormatError(
                f"row metadata: labels shape {self.labels.shape} does not match {len(self.findings)} findings"
            )

    @classmethod
    def from_manifest(cls, df: Any, findings: Sequence[str] | None = None) -> RowMetadata:
        """Take ids, split, patient ids and label columns from a manifest DataFrame."""
        from cxrprobe.data.manifest import finding_columns, label_matrix

        names = tuple(findings) if findings is not None else tuple(finding_columns(df))
        return cls(
            ids=_strings(df["image_id"]),
            split=_strings(df["split"]),
            patient_id=_strings(df["patient_id"]),
            labels=label_matrix(df, list(names), keep_uncertain=True).astype(np.float32),
            findings=names,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> RowMetadata:
        """The first ``n`` rows."""
        return RowMetadata(
            self.ids[:n], self.split[:n], self.patient_id[:n], self.labels[:n], self.findings
        )

    def first_difference(self, other: RowMetadata) -> str | None:
        """Describe the first row/column where two metadata tables differ, or None if equal."""
        if self.findings != other.findings:
            return f"findings differ ({list(self.findings)} vs {list(other.findings)})"
        if len(self) != len(other):
            return f"row counts differ ({len(self)} vs {len(other)})"
        for name in ("ids", "split", "patient_id"):
            mine, theirs = getattr(self, name), getattr(other, name)
            bad = np.flatnonzero(mine != theirs)
            if bad.size:
                row = int(bad[0])
                return f"row {row}: {name} {mine[row]!r} vs {theirs[row]!r}"
        same = (self.labels == other.labels) | (np.isnan(self.labels) & np.isnan(other.labels))
        bad_rows = np.flatnonzero(~same.all(axis=1))
        if bad_rows.size:
            row = int(bad_rows[0])
            return f"row {row} ({self.ids[row]}): labels differ"
        return None


def _strings(values: Iterable[Any]) -> np.ndarray:
    """Strings as a numpy unicode array; missing values become ''."""
    return np.array(
        ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values],
        dtype=str,
    )


class RowStore:
    """A Zarr v3 group of per-row arrays, written in whole shards with done records."""

    def __init__(self, path: str | os.PathLike, group: Any) -> None:
        self.path = Path(path)
        self.group = group
        self._attrs = dict(group.attrs[_ATTR])

    # ----------------------------------------------------------------- creation and opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        kind: str,
        metadata: RowMetadata,
        arrays: Sequence[ArraySpec],
        shard_rows: int,
        identity: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
    ) -> RowStore:
        """Create an empty store (replacing anything at ``path``)."""
        import zarr

        if shard_rows < 1:
            raise DataFormatError(f"shard_rows must be >= 1, got {shard_rows}")
        path = Path(path)
        if path.exists():
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w")
        group.attrs[_ATTR] = to_jsonable(
            {
                "kind": kind,
                "format_version": FORMAT_VERSION,
                "shard_rows": int(shard_rows),
                "arrays": [spec.__dict__ for spec in arrays],
                "identity": dict(identity),
                "provenance": dict(provenance or {}),
                "findings": list(metadata.findings),
                "created": now_utc(),
                "complete": False,
            }
        )
        store = cls(path, group)
        store._write_metadata(metadata)
        for spec in arrays:
            store._create_data_array(spec, len(metadata))
        (path / _PROGRESS).mkdir(exist_ok=True)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", kind: str | None = None) -> RowStore:
        """Open an existing store; ``kind`` checks it holds what the caller expects."""
        import zarr

        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise InputFileError(f"{path}: not a cxrprobe store (no zarr.json); check the path")
        group = zarr.open_group(str(path), mode=mode)
        if _ATTR not in group.attrs:
            raise DataFormatError(
                f"{path}: a Zarr group but not a cxrprobe store (no '{_ATTR}' attributes)"
            )
        store = cls(path, group)
        if kind is not None and store.kind != kind:
            raise DataFormatError(f"{path}: holds {store.kind!r}, expected a {kind!r} store")
        return store

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike,
        *,
        kind: str,
        metadata: RowMetadata,
        arrays: Sequence[ArraySpec],
        shard_rows: int,
        identity: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> RowStore:
        """Resume a store made with the same identity, append new manifest rows, or create one.

        Refuses (``StoreMismatchError``) a store made with a different identity (model, weights,
        size, ...) or whose rows differ from the manifest's first rows, unless ``overwrite``.
        """
        path = Path(path)
        if overwrite or not path.exists():
            return cls.create(
                path,
                kind=kind,
                metadata=metadata,
                arrays=arrays,
                shard_rows=shard_rows,
                identity=identity,
                provenance=provenance,
            )
        store = cls.open(path, mode="r+", kind=kind)
        store._check_identity(identity)
        store._check_rows(metadata)
        if len(metadata) > store.n_rows:
            store._append(metadata)
        return store

    def _check_identity(self, identity: Mapping[str, Any]) -> None:
        stored = self._attrs["identity"]
        wanted = to_jsonable(dict(identity))
        diffs = [
            f"{key}: store has {stored.get(key)!r}, this run has {wanted.get(key)!r}"
            for key in sorted(set(stored) | set(wanted))
            if stored.get(key) != wanted.get(key)
        ]
        if diffs:
            raise StoreMismatchError(
                f"{self.path} was made with different settings ({'; '.join(diffs)}); "
                "use another output path or pass --overwrite to rebuild it"
            )

    def _check_rows(self, metadata: RowMetadata) -> None:
        if len(metadata) < self.n_rows:
            raise StoreMismatchError(
                f"{self.path} has {self.n_rows} rows but the manifest has {len(metadata)}; "
                "use the manifest the store was built from, another output path, or --overwrite"
            )
        diff = self.metadata().first_difference(metadata.head(self.n_rows))
        if diff is not None:
            raise StoreMismatchError(
                f"{self.path} was built from a different manifest ({diff}); only appending rows at "
                "the end is supported: use another output path or --overwrite"
            )

    def _append(self, metadata: RowMetadata) -> None:
        """Grow every array to the new row count; the old partial last shard is redone."""
        old_n = self.n_rows
        last = self.n_shards - 1
        if old_n % self.shard_rows:
            self._done_record_path(last).unlink(missing_ok=True)
        for spec in self.array_specs:
            self.group[spec.name].resize((len(metadata), *spec.tail))
        self._write_metadata(metadata)
        self._set_attrs(complete=False)

    # ---------------------------------------------------------------------- metadata arrays
    def _write_metadata(self, metadata: RowMetadata) -> None:
        n = max(len(metadata), 1)
        chunk = min(n, 65536)
        for name in ("ids", "split", "patient_id"):
            values = getattr(metadata, name)
            arr = self.group.create_array(
                name, shape=(len(values),), chunks=(chunk,), dtype=str, overwrite=True
            )
            if len(values):
                arr[:] = values
        labels = self.group.create_array(
            "labels",
            shape=metadata.labels.shape,
            chunks=(chunk, max(metadata.labels.shape[1], 1)),
            dtype="float32",
            fill_value=np.nan,
            overwrite=True,
        )
        if len(metadata):
            labels[:] = metadata.labels
        labels.attrs["findings"] = list(metadata.findings)

    def _create_data_array(self, spec: ArraySpec, n_rows: int) -> None:
        chunk_rows = max(1, min(spec.chunk_rows, self.shard_rows))
        shard_rows = self.shard_rows - self.shard_rows % chunk_rows
        self.group.create_array(
            spec.name,
            shape=(n_rows, *spec.tail),
            chunks=(chunk_rows, *spec.tail),
            shards=(shard_rows, *spec.tail),
            dtype=spec.dtype,
            fill_value=spec.fill_value,
        )

    def metadata(self) -> RowMetadata:
        """The per-row manifest columns stored with the data."""
        return RowMetadata(
            ids=self.strings("ids"),
            split=self.strings("split"),
            patient_id=self.strings("patient_id"),
            labels=np.asarray(self.group["labels"][:], dtype=np.float32),
            findings=tuple(self._attrs["findings"]),
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
            ArraySpec(s["name"], tuple(s["tail"]), s["dtype"], s["fill_value"], s["chunk_rows"])
            for s in self._attrs["arrays"]
        ]

    @property
    def is_complete(self) -> bool:
        return bool(self._attrs.get("complete"))

    def array(self, name: str) -> Any:
        """The Zarr array ``name`` (data or metadata)."""
        return self.group[name]

    def shard_slice(self, shard: int) -> slice:
        """The rows shard ``shard`` covers."""
        start = shard * self.shard_rows
        return slice(start, min(start + self.shard_rows, self.n_rows))

    # ------------------------------------------------------------------------------ writing
    def _done_record_path(self, shard: int) -> Path:
        return self.path / _PROGRESS / f"shard-{shard:06d}.json"

    def done_shards(self) -> set[int]:
        """Shards whose done record exists."""
        folder = self.path / _PROGRESS
        if not folder.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in folder.glob("shard-*.json")}

    def pending_shards(self) -> list[int]:
        """Shards still to write, in order."""
        done = self.done_shards()
        return [s for s in range(self.n_shards) if s not in done]

    def write_shard(
        self, shard: int, data: Mapping[str, np.ndarray], failures: Mapping[int, str]
    ) -> None:
        """Write one whole shard of every data array, then its done record.

        ``failures`` maps absolute row index → reason for rows that could not be computed; their
        data rows must hold the array's fill value (they are masked by ``failed``, never used).
        """
        rows = self.shard_slice(shard)
        expected = {spec.name for spec in self.array_specs}
        if set(data) != expected:
            raise DataFormatError(
                f"shard {shard}: got arrays {sorted(data)}, store has {sorted(expected)}"
            )
        for name, values in data.items():
            if len(values) != rows.stop - rows.start:
                raise DataFormatError(
                    f"shard {shard}: {name} has {len(values)} rows, shard has {rows.stop - rows.start}"
                )
            self.group[name][rows] = values
        bad = [int(r) for r in failures if not rows.start <= int(r) < rows.stop]
        if bad:
            raise DataFormatError(
                f"shard {shard}: failure rows {bad[:3]} lie outside rows {rows.start}-{rows.stop - 1}"
            )
        atomic_write_json(
            self._done_record_path(shard),
            {
                "shard": shard,
                "rows": [rows.start, rows.stop],
                "failures": {str(k): v for k, v in failures.items()},
            },
        )

    def failures(self) -> dict[int, str]:
        """Failed rows → reason, from the done records."""
        found: dict[int, str] = {}
        for shard in sorted(self.done_shards()):
            record = json.loads(self._done_record_path(shard).read_text())
            found.update({int(k): v for k, v in record["failures"].items()})
        return found

    def finalize(self, extra_attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Check every shard is done, write the ``failed`` mask and mark the store complete."""
        pending = self.pending_shards()
        if pending:
            raise IncompleteStoreError(
                f"{self.path}: {len(pending)} of {self.n_shards} shards were never written "
                f"(first: {pending[0]}); run the same command again to finish them"
            )
        failures = self.failures()
        failed = np.zeros(self.n_rows, dtype=bool)
        failed[list(failures)] = True
        arr = self.group.create_array(
            "failed",
            shape=(self.n_rows,),
            chunks=(max(1, min(self.n_rows, 1 << 20)),),
            dtype=bool,
            overwrite=True,
        )
        if self.n_rows:
            arr[:] = failed
        ids = self.strings("ids")
        summary = {
            "rows": self.n_rows,
            "failures": [
                {"row": r, "image_id": str(ids[r]), "reason": failures[r]} for r in sorted(failures)
            ],
            "finalized": now_utc(),
        }
        self._set_attrs(complete=True, **summary, **(extra_attrs or {}))
        return summary

    def failed_mask(self) -> np.ndarray:
        """(n,) bool: rows that could not be computed (from ``failed``, or the done records)."""
        if "failed" in self.group and self.group["failed"].shape[0] == self.n_rows:
            return np.asarray(self.group["failed"][:], dtype=bool)
        failed = np.zeros(self.n_rows, dtype=bool)
        failed[list(self.failures())] = True
        return failed

    def require_complete(self) -> None:
        """Raise ``IncompleteStoreError`` unless :meth:`finalize` succeeded."""
        if not self.is_complete:
            raise IncompleteStoreError(
                f"{self.path} is incomplete ({len(self.pending_shards())} shards missing); "
                "run the command that made it again to finish it"
            )

    def _set_attrs(self, **values: Any) -> None:
        self._attrs.update(to_jsonable(values))
        self.group.attrs[_ATTR] = self._attrs
