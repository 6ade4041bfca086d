"""The embedding store: frozen-backbone features per manifest row, and its reader.

An embedding store is a :class:`~cxrprobe.cache.store.RowStore` of kind ``"embeddings"`` holding,
for every manifest row (in manifest order):

``cls``     (n, D)     the class token of the last block, after the final norm
``mean``    (n, D)     the mean of the patch tokens of the last block, after the final norm
                       (register/prefix tokens excluded) — DINOv2's linear protocol concatenates
                       ``cls`` and ``mean``
``layers``  (n, N, D)  optional: the class token of each of the last N blocks, each after the
                       final norm (``layers[:, -1] == cls``); DINOv2's ``n_last_blocks``

Models without a class token (CNNs such as DenseNet-121; the ``pooled`` read-out of
:mod:`cxrprobe.models`) fill the same two arrays: ``cls`` is the model's pooled feature vector
(timm's ``forward_head(pre_logits=True)``, its classifier's input) and ``mean`` the mean of the
last feature map over its positions (equal to ``cls`` for average-pooled CNNs); they have no
``layers``. So ``cls`` is always the model's own read-out and probes default to it.

stored as float16 (default) or float32, in chunks of about 16 MB (8192 rows of ``cls``) and
shards of up to 16384 rows, so a whole array reads in seconds and a shard (one extraction work
unit) stays small enough to redo. Rows that failed (an
unreadable image) hold NaN and are set in ``failed``. :func:`open_embeddings` is the reader every
downstream step uses; :func:`create_embeddings` imports features computed elsewhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.cache.store import ArraySpec, RowMetadata, RowStore
from cxrprobe.errors import ConfigError, DataFormatError

KIND = "embeddings"
DTYPES = ("float16", "float32")
CHUNK_ROWS = 8192  # most rows per chunk (cls/mean at D=768 float16: 12 MB chunks)
CHUNK_BYTES = 16 * 2**20  # a chunk holds at most about this much
MAX_SHARD_ROWS = 16384  # a shard is the unit of work, resume and per-rank assignment
MIN_SHARD_ROWS = 1024
SHARD_BYTES = 64 * 2**20  # a shard holds at most about this much (all arrays): bounds memory
FEATURES = {
    "cls": "class token of the last block after the final norm",
    "mean": "mean of the last block's patch tokens after the final norm (prefix/register tokens excluded)",
    "layers": "class token of each of the last N blocks after the final norm (last entry = cls)",
}
POOLED_FEATURES = {
    "cls": "the model's pooled features, timm forward_head(pre_logits=True) (no class token)",
    "mean": "mean of the last feature map (forward_features) over its positions",
}
_PART = re.compile(r"^(cls|mean|layers|last(\d+))$")


def feature_definitions(readout: str) -> dict[str, str]:
    """What ``cls``/``mean``/``layers`` mean for a model's read-out (``token`` or ``pooled``)."""
    return POOLED_FEATURES if readout == "pooled" else FEATURES


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(x).bit_length() - 1) if x >= 1 else 1


def embedding_layout(
    dim: int, layers: int, dtype: str, shard_rows: int | None = None
) -> tuple[int, list[ArraySpec]]:
    """Rows per shard and the data arrays of a store of width ``dim`` with ``layers`` block tokens.

    Default shards are a power of two of rows between ``MIN_SHARD_ROWS`` and ``MAX_SHARD_ROWS``
    holding about ``SHARD_BYTES``; each array's chunk holds about ``CHUNK_BYTES`` (at most
    ``CHUNK_ROWS`` rows) and divides the shard, so every store shard is whole Zarr shards and
    ranks never write the same Zarr shard.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if layers < 0:
        raise ConfigError(f"--layers must be >= 0, got {layers}")
    itemsize = np.dtype(dtype).itemsize
    tails = {"cls": (dim,), "mean": (dim,), **({"layers": (layers, dim)} if layers else {})}
    row_bytes = {name: int(np.prod(tail)) * itemsize for name, tail in tails.items()}
    if shard_rows is None:
        fit = _pow2_floor(SHARD_BYTES / sum(row_bytes.values()))
        shard_rows = min(MAX_SHARD_ROWS, max(MIN_SHARD_ROWS, fit))
    specs = []
    for name, tail in tails.items():
        target = min(CHUNK_ROWS, _pow2_floor(CHUNK_BYTES / row_bytes[name]))
        specs.append(
            ArraySpec(name, tail, dtype, float("nan"), _dividing_chunk(shard_rows, target))
        )
    return shard_rows, specs


def _dividing_chunk(shard_rows: int, target: int) -> int:
    """The largest chunk of at most ``target`` rows that splits ``shard_rows`` into equal parts."""
    parts = -(-shard_rows // target)
    while shard_rows % parts:
        parts += 1
    return shard_rows // parts


class Embeddings:
    """A finished embedding store: row metadata in memory, features read lazily on request.

    Examples
    --------
    >>> emb = open_embeddings("emb.zarr")  # doctest: +SKIP
    >>> train = emb.rows(split="train")  # doctest: +SKIP
    >>> x = emb.features("cls+mean", rows=train)  # (k, 2D) float32  # doctest: +SKIP
    >>> y = emb.labels[train]  # (k, L) float32, NaN = not annotated  # doctest: +SKIP
    """

    def __init__(self, store: RowStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"Embeddings({str(self.path)!r}, rows={len(self)}, dim={self.dim}, layers={self.n_layers})"

    def __len__(self) -> int:
        return self.store.n_rows

    @property
    def path(self) -> Path:
        return self.store.path

    @cached_property
    def _metadata(self) -> RowMetadata:
        return self.store.metadata()

    def metadata(self) -> RowMetadata:
        """ids, split, patient ids, labels and findings, as a :class:`RowMetadata`."""
        return self._metadata

    @property
    def ids(self) -> np.ndarray:
        return self._metadata.ids

    @property
    def split(self) -> np.ndarray:
        return self._metadata.split

    @property
    def patient_ids(self) -> np.ndarray:
        return self._metadata.patient_id

    @property
    def labels(self) -> np.ndarray:
        """(n, L) float32: 1 positive, 0 negative, -1 uncertain, NaN not annotated."""
        return self._metadata.labels

    @property
    def findings(self) -> tuple[str, ...]:
        return self._metadata.findings

    @cached_property
    def failed(self) -> np.ndarray:
        """(n,) bool: rows without features (their image could not be read); NaN in every array."""
        return self.store.failed_mask()

    @property
    def provenance(self) -> dict[str, Any]:
        return self.store.provenance

    @property
    def identity(self) -> dict[str, Any]:
        return self.store.identity

    @property
    def feature_kinds(self) -> tuple[str, ...]:
        """Stored arrays (``cls``, ``mean``, maybe ``layers``); see :meth:`features` for kinds."""
        return tuple(spec.name for spec in self.store.array_specs)

    @property
    def readout(self) -> str:
        """``token`` (class token and patch mean of a ViT) or ``pooled`` (a CNN's pooled features)."""
        return str(self.identity.get("model", {}).get("readout", "token"))

    @property
    def dim(self) -> int:
        """D, the width of one token."""
        return int(self.store.array("cls").shape[1])

    @property
    def n_layers(self) -> int:
        """N, the number of stored per-block class tokens (0 without ``--layers``)."""
        return int(self.store.array("layers").shape[1]) if "layers" in self.feature_kinds else 0

    @property
    def dtype(self) -> str:
        return str(self.store.array("cls").dtype)

    def to_xarray(self) -> Any:
        """The store as a lazily read ``xarray.Dataset``: ``cls``/``mean`` (row, feature),
        ``layers`` (row, layer, feature), ``labels`` (row, finding), ``failed`` (row), with
        ``ids``, ``split``, ``patient_id`` and ``finding`` as coordinates (needs xarray)."""
        return self.store.to_xarray()

    def rows(
        self,
        split: str | Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        include_failed: bool = False,
    ) -> np.ndarray:
        """Row indices (int64, ascending; in ``ids`` order when ids are given) to read.

        ``split`` keeps rows of that split (or any of several); ``ids`` picks rows by image id
        (an unknown id raises ``DataFormatError``). Failed rows are left out unless asked for.
        """
        keep = np.ones(len(self), dtype=bool)
        if split is not None:
            wanted = [split] if isinstance(split, str) else list(split)
            keep &= np.isin(self.split, wanted)
        if not include_failed:
            keep &= ~self.failed
        if ids is None:
            return np.flatnonzero(keep).astype(np.int64)
        position = {image_id: row for row, image_id in enumerate(self.ids)}
        missing = [i for i in ids if i not in position]
        if missing:
            raise DataFormatError(
                f"{self.path}: {len(missing)} ids not in the store (first: {missing[0]!r})"
            )
        picked = np.array([position[i] for i in ids], dtype=np.int64)
        return picked[keep[picked]]

    def feature_dim(self, kind: str) -> int:
        """Width of :meth:`features` for ``kind``."""
        return sum(self.dim * count for _, count in self._parts(kind))

    def features(
        self,
        kind: str = "cls",
        rows: Sequence[int] | np.ndarray | slice | None = None,
        as_: str = "numpy",
        dtype: Any = np.float32,
        device: Any = None,
    ) -> Any:
        """Features (k, D') of ``rows`` (all rows when None), concatenated in the order asked.

        ``kind`` joins parts with ``+``: ``cls``, ``mean``, ``layers`` (all N stored class
        tokens, oldest block first) or ``lastK`` (class tokens of the last K blocks, K <= N; e.g.
        DINOv2's linear protocol ``last4+mean``). ``as_="torch"`` returns a tensor on ``device``;
        ``dtype=None`` keeps the stored dtype. Failed rows read as NaN.
        """
        parts = self._parts(kind)
        index = self._index(rows)
        blocks = []
        for name, count in parts:
            data = self._read(name, index)
            if name == "layers":
                data = data[:, data.shape[1] - count :].reshape(len(data), -1)
            blocks.append(data)
        out = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        if dtype is not None:
            out = out.astype(dtype, copy=False)
        if as_ == "numpy":
            return out
        if as_ == "torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(out)).to(device or "cpu")
        raise ConfigError(f"as_ must be 'numpy' or 'torch', got {as_!r}")

    def _parts(self, kind: str) -> list[tuple[str, int]]:
        parts = []
        for part in kind.split("+"):
            match = _PART.match(part.strip())
            if match is None:
                raise ConfigError(
                    f"feature kind {kind!r}: unknown part {part!r}; use cls, mean, layers or lastK joined by '+'"
                )
            name = match.group(1)
            if name in ("cls", "mean"):
                parts.append((name, 1))
                continue
            count = self.n_layers if name == "layers" else int(match.group(2))
            if self.readout == "pooled":
                arch = self.identity.get("model", {}).get("arch", "its model")
                raise ConfigError(
                    f"feature kind {kind!r}: {self.path} holds the pooled features of {arch}, which "
                    "has no class token per block; use cls (its pooled features), mean or cls+mean"
                )
            if not 1 <= count <= self.n_layers:
                raise ConfigError(
                    f"feature kind {kind!r}: {self.path} holds class tokens of {self.n_layers} blocks; "
                    "re-extract with --layers N to use more"
                )
            parts.append(("layers", count))
        return parts

    def _index(self, rows: Sequence[int] | np.ndarray | slice | None) -> slice | np.ndarray:
        if rows is None:
            return slice(0, len(self))
        if isinstance(rows, slice):
            return (
                slice(*rows.indices(len(self))[:2])
                if rows.step in (None, 1)
                else np.arange(len(self))[rows]
            )
        index = np.asarray(rows, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"{self.path}: rows out of range (the store has {len(self)} rows)")
        return index

    def _read(self, name: str, index: slice | np.ndarray) -> np.ndarray:
        """Rows of one array: a slice in one read; indices sorted, read once each, put back in order."""
        array = self.store.array(name)
        if isinstance(index, slice):
            return np.asarray(array[index])
        if index.size == 0:
            return np.zeros((0, *array.shape[1:]), dtype=array.dtype)
        unique, inverse = np.unique(index, return_inverse=True)
        if unique[-1] - unique[0] + 1 <= 4 * unique.size:  # dense: one contiguous read is cheaper
            block = np.asarray(array[int(unique[0]) : int(unique[-1]) + 1])[unique - unique[0]]
        else:
            block = np.asarray(array.get_orthogonal_selection((unique,)))
        return block[inverse]


def open_embeddings(path: str | os.PathLike, allow_incomplete: bool = False) -> Embeddings:
    """Open an embedding store; an unfinished one is refused unless ``allow_incomplete``."""
    store = RowStore.open(path, kind=KIND)
    if not allow_incomplete:
        store.require_complete()
    return Embeddings(store)


def create_embeddings(
    path: str | os.PathLike,
    metadata: RowMetadata,
    features: Mapping[str, np.ndarray],
    provenance: Mapping[str, Any] | None = None,
    dtype: str = "float16",
    failures: Mapping[int, str] | None = None,
    shard_rows: int | None = None,
) -> Embeddings:
    """Write features computed elsewhere as a finished store (replacing anything at ``path``).

    ``features`` holds ``cls`` and ``mean`` (n, D) and optionally ``layers`` (n, N, D);
    ``failures`` maps rows without features to reasons (their values are stored as NaN).
    """
    names = set(features)
    if not {"cls", "mean"} <= names <= {"cls", "mean", "layers"}:
        raise DataFormatError(
            f"features must hold 'cls' and 'mean' (and optionally 'layers'), got {sorted(names)}"
        )
    arrays = {name: np.asarray(values, dtype=np.float32) for name, values in features.items()}
    n, dim = arrays["cls"].shape
    layers = arrays["layers"].shape[1] if "layers" in arrays else 0
    expected = {
        "cls": (len(metadata), dim),
        "mean": (len(metadata), dim),
        "layers": (len(metadata), layers, dim),
    }
    for name, values in arrays.items():
        if values.shape != expected[name]:
            raise DataFormatError(
                f"features[{name!r}] has shape {values.shape}, expected {expected[name]}"
            )
    failures = {int(r): str(v) for r, v in (failures or {}).items()}
    for values in arrays.values():
        values[list(failures)] = np.nan
    shard_rows, specs = embedding_layout(dim, layers, dtype, shard_rows)
    store = RowStore.create(
        path,
        kind=KIND,
        metadata=metadata,
        arrays=specs,
        shard_rows=shard_rows,
        identity={
            "source": "imported",
            "dim": dim,
            "layers": layers,
            "dtype": dtype,
            "features": FEATURES,
        },
        provenance=dict(provenance or {}),
    )
    for shard in range(store.n_shards):
        rows = store.shard_slice(shard)
        data = {name: values[rows].astype(dtype) for name, values in arrays.items()}
        store.write_shard(
            shard, data, {r: v for r, v in failures.items() if rows.start <= r < rows.stop}
        )
    store.finalize()
    return Embeddings(store)
