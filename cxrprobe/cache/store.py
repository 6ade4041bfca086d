"""Row stores: Zarr v3 groups indexed by manifest row, written shard by shard, resumable.

Both caches (preprocessed images, embeddings) are row stores. A row is a manifest row; rows are
grouped into shards of ``shard_rows``; each shard is written whole, in one call per array, by one
worker (process or rank), then a done record is written for it. A killed run leaves shards without
a record, and the next run redoes exactly those. Rows never written read back as the fill value
with no error in Zarr, so :meth:`RowStore.finalize` refuses to mark a store complete while any
shard lacks its record (see ``ecosystem-facts.md``).

Kills never leave a store that cannot be resumed: a store is built in a hidden sibling folder and
renamed into place (:func:`cxrprobe.outputs.build_beside`); an append first marks the store
incomplete and records the rows it keeps, so an interrupted append is redone by the next run; the
complete flag is the last thing :meth:`RowStore.finalize` writes, and a store whose rows are not
all done is never reported complete. Write faults (full disk, read-only) become one-line
``OutputError`` messages. Writers hold the store's :class:`~cxrprobe.outputs.WriterLock`.

A store folder is a plain Zarr v3 group whose arrays :mod:`cxrprobe.cache.arrays` describes. A
finished store's metadata is consolidated into its ``zarr.json`` (xarray's default read);
writers open stores without it, and every attribute write drops it, so it never goes stale.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cxrprobe.cache.arrays import (
    ROW_COORDS,
    consolidate,
    create_data_array,
    write_failed,
    write_metadata,
    write_strings,
)
from cxrprobe.cache.layout import (
    DIMENSIONS,
    StoreFiles,
    move_inner_bookkeeping,
    strict_json,
    upgrade_arrays,
    write_rows_table,
)
from cxrprobe.cache.reader import ATTR, ArraySpec, StoreReader
from cxrprobe.cache.rows import RowMetadata
from cxrprobe.errors import (
    DataFormatError,
    IncompleteStoreError,
    InputFileError,
    StoreMismatchError,
)
from cxrprobe.outputs import WriterLock, build_beside, check_replaceable, output_errors
from cxrprobe.provenance import atomic_write_json, now_utc, to_jsonable

__all__ = ["ArraySpec", "RowMetadata", "RowStore", "upgrade_store"]

T = TypeVar("T")
FORMAT_VERSION = 2  # 2: dimension names, strict JSON attributes, bookkeeping beside the store
_RESUME = "; then run the same command again: finished shards are kept"
KIND_NAMES = {  # what each store kind is, for messages
    "images": "an image cache (from `cxrprobe preprocess`)",
    "embeddings": "an embedding store (from `cxrprobe extract`)",
}


def _writes(method: Callable[..., T]) -> Callable[..., T]:
    """A store-writing method whose write faults (full disk, read-only) become ``OutputError``."""

    @functools.wraps(method)
    def wrapper(self: RowStore, *args: Any, **kwargs: Any) -> T:
        with output_errors(self.path, _RESUME):
            return method(self, *args, **kwargs)

    return wrapper


class RowStore(StoreReader):
    """A Zarr v3 group of per-row arrays, written in whole shards with done records."""

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
        """Create an empty store, replacing a store of the same ``kind`` at ``path``.

        Anything else at ``path`` (a folder of other files, a store of another kind, a file) is
        refused with ``OutputError``. The store is built beside ``path`` and renamed into place,
        so a kill leaves either no store or a whole one.
        """
        import zarr

        if shard_rows < 1:
            raise DataFormatError(f"shard_rows must be >= 1, got {shard_rows}")
        path = Path(path)
        check_replaceable(path, kind)
        with output_errors(path, _RESUME), build_beside(path) as building:
            group = zarr.open_group(str(building), mode="w")
            group.attrs[ATTR] = _attr_json(
                {
                    "kind": kind,
                    "format_version": FORMAT_VERSION,
                    "store_id": uuid.uuid4().hex[:16],
                    "shard_rows": int(shard_rows),
                    "arrays": [spec.__dict__ for spec in arrays],
                    "identity": dict(identity),
                    "provenance": dict(provenance or {}),
                    "findings": list(metadata.findings),
                    "created": now_utc(),
                    "complete": False,
                }
            )
            store = cls(building, group)
            write_metadata(store.group, metadata)
            for spec in arrays:
                store._create_data_array(spec, len(metadata))
            StoreFiles(path).remove()  # the replaced store's bookkeeping goes before it does
        return cls._open(path, "r+", kind)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", kind: str | None = None) -> RowStore:
        """Open an existing store; ``kind`` checks it holds what the caller expects.

        A store whose creation or last append was interrupted is refused with
        ``IncompleteStoreError`` saying so (the command that made it redoes that step).
        """
        store = cls._open(path, mode, kind)
        problem = store.interrupted()
        if problem:
            raise IncompleteStoreError(
                f"{store.path}: {problem}; run the command that made it again to redo that step"
            )
        return store

    @classmethod
    def _open(cls, path: str | os.PathLike, mode: str, kind: str | None) -> RowStore:
        import zarr

        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise InputFileError(f"{path}: not a cxrprobe store (no zarr.json); check the path")
        group = zarr.open_group(str(path), mode=mode, use_consolidated=False)
        if ATTR not in group.attrs:
            raise DataFormatError(
                f"{path}: a Zarr group but not a cxrprobe store (no '{ATTR}' attributes)"
            )
        store = cls(path, group)
        if kind is not None and store.kind != kind:
            found = KIND_NAMES.get(store.kind, f"a cxrprobe {store.kind!r} store")
            wanted = KIND_NAMES.get(kind, f"a cxrprobe {kind!r} store")
            raise DataFormatError(f"{path} is {found}, but this takes {wanted}")
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
        size, ...) or whose rows differ from the manifest's first rows, unless ``overwrite``
        (which replaces only a store of the same ``kind``). A store whose creation was
        interrupted is created again; an interrupted append is redone.
        """
        path = Path(path)
        fresh = overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir()))
        store = None if fresh else cls._open(path, "r+", kind)
        if store is not None and store._attrs.get("appending"):
            store._check_identity(identity)
            store._bring_up_to_date()
            store._redo_append(metadata)
            return store
        if store is None or store.interrupted():
            return cls.create(
                path,
                kind=kind,
                metadata=metadata,
                arrays=arrays,
                shard_rows=shard_rows,
                identity=identity,
                provenance=provenance,
            )
        store._check_identity(identity)
        store._check_rows(metadata)
        store._bring_up_to_date()
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
                f"{self.path} was built from a different manifest (store vs manifest, {diff}); "
                "only appending rows at the end is supported: use another output path or "
                "--overwrite"
            )

    @_writes
    def _append(self, metadata: RowMetadata) -> None:
        """Grow every array to the new row count; the old partial last shard is redone.

        First the store is marked incomplete, with the rows it keeps and their digest, in one
        attribute write; a kill after that leaves a store the next run finishes appending to.
        """
        old_n = self.n_rows
        self._set_attrs(
            complete=False,
            appending={
                "from": old_n,
                "to": len(metadata),
                "rows_sha256": metadata.head(old_n).digest(),
            },
        )
        self._grow(metadata)

    @_writes
    def _redo_append(self, metadata: RowMetadata) -> None:
        """Finish an interrupted append, if ``metadata`` starts with the rows the store kept."""
        kept = int(self._attrs["appending"]["from"])
        if (
            len(metadata) < kept
            or metadata.head(kept).digest() != self._attrs["appending"]["rows_sha256"]
        ):
            raise StoreMismatchError(
                f"{self.path}: an append to it was interrupted and this manifest does not start "
                f"with its first {kept} rows; use the manifest of that run, another output path "
                "or --overwrite"
            )
        self._grow(metadata)

    def _grow(self, metadata: RowMetadata) -> None:
        kept = int(self._attrs["appending"]["from"])
        if kept % self.shard_rows:
            self._done_record_path(kept // self.shard_rows).unlink(missing_ok=True)
        for spec in self.array_specs:
            self.group[spec.name].resize((len(metadata), *spec.tail))
        write_metadata(self.group, metadata)
        self._attrs.pop("appending")
        self._set_attrs()

    def _create_data_array(self, spec: ArraySpec, n_rows: int) -> None:
        """One empty data array at the store's shard size (the last step of :meth:`create`)."""
        create_data_array(self.group, spec, n_rows, self.shard_rows)

    # ------------------------------------------------------------------------------ writing
    @_writes
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
        self._write_done_record(shard, failures)

    def _write_done_record(self, shard: int, failures: Mapping[int, str]) -> None:
        rows = self.shard_slice(shard)
        atomic_write_json(
            self._done_record_path(shard),
            {
                "shard": shard,
                "rows": [rows.start, rows.stop],
                "failures": {str(k): v for k, v in failures.items()},
            },
        )

    @_writes
    def finalize(self, extra_attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Check every shard is done, write the ``failed`` mask, then mark the store complete
        (the last write: a kill before it leaves the store incomplete)."""
        pending = self.pending_shards()
        if pending:
            raise IncompleteStoreError(
                f"{self.path}: {len(pending)} of {self.n_shards} shards were never written "
                f"(first: {pending[0]}); run the same command again to finish them"
            )
        failures = self.failures()
        if self._attrs.get("complete"):  # finalized before: not complete while the mask changes
            self._set_attrs(complete=False)
        failed = np.zeros(self.n_rows, dtype=bool)
        failed[list(failures)] = True
        write_failed(self.group, failed)
        metadata = self.metadata()
        write_rows_table(self.files.rows, metadata, failed)
        summary = {
            "rows": self.n_rows,
            "failures": [
                {"row": r, "image_id": str(metadata.ids[r]), "reason": failures[r]}
                for r in sorted(failures)
            ],
            "finalized": now_utc(),
        }
        self._set_attrs(complete=True, **summary, **(extra_attrs or {}))
        consolidate(self.path)
        return summary

    # -------------------------------------------------------------------- format-1 stores
    @_writes
    def _bring_up_to_date(self) -> None:
        """Make a store that a writer opened current: a format-1 store gets dimension names,
        strict-JSON attributes and a ``store_id``; bookkeeping inside the hierarchy moves beside
        it; a finalized store copied without its bookkeeping gets its done records back (from
        its attributes), so appending to it redoes only new rows."""
        if self.format_version < 2:
            dims = {**DIMENSIONS, **{s.name: s.dimension_names for s in self.array_specs}}
            upgrade_arrays(self.path, dims, ROW_COORDS)
            if "finding" not in self.group:
                write_strings(self.group, "finding", np.array(self._attrs["findings"], dtype=str))
            self._set_attrs(format_version=FORMAT_VERSION, store_id=uuid.uuid4().hex[:16])
        move_inner_bookkeeping(self.path, self.files, self.files.progress(self._attrs["store_id"]))
        if not self._progress_dir().is_dir() and self._finalized() and not self.interrupted():
            failures = self.failures()
            for shard in range(self.n_shards):
                rows = self.shard_slice(shard)
                mine = {r: v for r, v in failures.items() if rows.start <= r < rows.stop}
                self._write_done_record(shard, mine)

    def _set_attrs(self, **values: Any) -> None:
        """Update the cxrprobe attributes (rewriting ``zarr.json``, which also drops its
        consolidated metadata until :meth:`finalize` writes it again)."""
        self._attrs = _attr_json({**self._attrs, **values})
        self.group.attrs[ATTR] = self._attrs


def _attr_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute values as strict JSON (non-finite numbers spelled as the Zarr spec does)."""
    return strict_json(to_jsonable(dict(values)))


def upgrade_store(path: str | os.PathLike) -> RowStore:
    """Bring a store made by an older cxrprobe up to date (dimension names, strict JSON,
    bookkeeping beside it, ``rows.parquet``) under its writer lock; nothing is recomputed."""
    with WriterLock(path), output_errors(path):
        store = RowStore.open(path, mode="r+")
        store._bring_up_to_date()
        if store.is_complete:
            store.finalize()
    return RowStore.open(path)
