"""Export an embedding store to HDF5 or NumPy ``.npz`` for tools that do not read Zarr.

Both formats hold the same things (``docs/embeddings.md``):

``features/cls``, ``features/mean``, ``features/layers``  float32 (failed rows NaN)
``ids``, ``split``, ``patient_id``                         strings (HDF5: variable-length UTF-8)
``sex``, ``view``; ``age``                                 where the store has them (subgroup
                                                           fields for ``--by``): strings, '' unknown;
                                                           float32, NaN unknown
``labels``                                                 (n, L): 1 positive, 0 negative, -1
                                                           uncertain, not annotated as NaN (npz,
                                                           float32) or ``LABEL_MISSING`` (HDF5,
                                                           int8; float32 with NaN if a label is
                                                           not -1/0/1)
``failed``                                                 (n,) bool
``findings``, ``provenance``, ``identity``                 HDF5 attributes (JSON) / npz entries

HDF5 is written uncompressed, in blocks of rows (flat memory), to a temporary file renamed into
place. ``.npz`` keys use ``cls``/``mean``/``layers`` without the ``features/`` prefix. Each export
gets its run record ``<out>.run.json`` beside it (the command, its config, versions, time).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.cache.embeddings import Embeddings, open_embeddings
from cxrprobe.cache.rows import NUMERIC_SUBGROUPS
from cxrprobe.provenance import to_jsonable, write_run_record

LABEL_MISSING = -128  # int8 code of "not annotated" in HDF5 labels
_BLOCK_ROWS = 65536


def _as_embeddings(store: Embeddings | str | os.PathLike) -> Embeddings:
    return store if isinstance(store, Embeddings) else open_embeddings(store)


def _json(value: Any) -> str:
    return json.dumps(to_jsonable(value), sort_keys=True)


def _write_record(emb: Embeddings, out: Path, kind: str, record: Mapping[str, Any] | None) -> None:
    """``<out>.run.json``: ``record`` (the command's config), by default the store and output."""
    if record is None:
        record = {"store": Path(emb.path), **{k: out if k == kind else None for k in ("h5", "npz")}}
    write_run_record(out.with_name(out.name + ".run.json"), "cxrprobe export", record)


def _subgroups(emb: Embeddings) -> dict[str, np.ndarray]:
    """The store's subgroup fields (sex, age, view, those it has), in the export's encoding."""
    return {
        name: values.astype(np.float32) if name in NUMERIC_SUBGROUPS else values
        for name, values in emb.metadata().subgroups.items()
    }


def encode_labels(labels: np.ndarray) -> np.ndarray:
    """float32 labels with NaN → int8 with ``LABEL_MISSING``, or unchanged if not all -1/0/1."""
    finite = labels[np.isfinite(labels)]
    if not np.isin(finite, (-1.0, 0.0, 1.0)).all():
        return labels.astype(np.float32)
    return np.where(np.isnan(labels), LABEL_MISSING, labels).astype(np.int8)


def decode_labels(labels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_labels`: float32 with NaN for not annotated."""
    if labels.dtype == np.int8:
        return np.where(labels == LABEL_MISSING, np.nan, labels).astype(np.float32)
    return labels.astype(np.float32)


def export_h5(
    store: Embeddings | str | os.PathLike,
    out: str | os.PathLike,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``store`` to an HDF5 file at ``out`` (see module docs for the layout) and its run
    record (``record``: the config to record; default the store and output paths)."""
    import h5py

    emb = _as_embeddings(store)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    text = h5py.string_dtype(encoding="utf-8")
    try:
        with h5py.File(tmp, "w") as h5:
            for name in emb.feature_kinds:
                shape = emb.store.array(name).shape
                dataset = h5.create_dataset(f"features/{name}", shape=shape, dtype="float32")
                for start in range(0, len(emb), _BLOCK_ROWS):
                    rows = slice(start, min(start + _BLOCK_ROWS, len(emb)))
                    dataset[rows] = emb.features(name, rows=rows).reshape(
                        (rows.stop - rows.start, *shape[1:])
                    )
                dataset.attrs["definition"] = emb.identity.get("features", {}).get(name, "")
            for name, values in (
                ("ids", emb.ids),
                ("split", emb.split),
                ("patient_id", emb.patient_ids),
            ):
                h5.create_dataset(name, data=values.astype(object), dtype=text)
            for name, values in _subgroups(emb).items():
                numeric = name in NUMERIC_SUBGROUPS
                field = h5.create_dataset(
                    name,
                    data=values if numeric else values.astype(object),
                    dtype=None if numeric else text,
                )
                field.attrs["encoding"] = "NaN unknown" if numeric else "'' unknown"
            labels = h5.create_dataset("labels", data=encode_labels(emb.labels))
            labels.attrs["encoding"] = (
                f"1 positive, 0 negative, -1 uncertain, {LABEL_MISSING} (int8) or NaN not annotated"
            )
            h5.create_dataset("failed", data=emb.failed)
            h5.attrs["format"] = "cxrprobe-embeddings"
            h5.attrs["findings"] = _json(list(emb.findings))
            h5.attrs["provenance"] = _json(emb.provenance)
            h5.attrs["identity"] = _json(emb.identity)
            h5.attrs["source"] = str(emb.path)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_record(emb, out, "h5", record)
    return out


def export_npz(
    store: Embeddings | str | os.PathLike,
    out: str | os.PathLike,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``store`` to an uncompressed ``.npz`` at ``out`` (the whole store passes through
    memory) and its run record (``record`` as in :func:`export_h5`)."""
    emb = _as_embeddings(store)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name in emb.feature_kinds:
        shape = emb.store.array(name).shape
        arrays[name] = emb.features(name).reshape(shape)
    arrays.update(
        ids=emb.ids,
        split=emb.split,
        patient_id=emb.patient_ids,
        labels=emb.labels,
        failed=emb.failed,
        **_subgroups(emb),
        findings=np.array(emb.findings, dtype=str),
        provenance=np.array(_json(emb.provenance)),
        identity=np.array(_json(emb.identity)),
    )
    tmp = out.with_name(f".{out.name}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_record(emb, out, "npz", record)
    return out
