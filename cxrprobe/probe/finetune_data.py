"""Where fine-tuning reads its images: the image cache, raw files through a manifest, or arrays.

Every source gives the same three things: the per-row metadata (ids, split, patients, labels),
the rows already known to be unreadable (the cache's ``failed`` mask), and a batch reader — a
map-style dataset indexed by an array of row numbers that returns
``(rows LongTensor (k,), images uint8 (k, S, S), failures {row: reason})`` (the contract of
:func:`cxrprobe.data.loading.collate_images`). Rows that fail to decode while training (raw files)
come back in ``failures`` and are left out of the batch; they are reported, never trained on as
zeros.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrprobe.cache.store import RowMetadata
from cxrprobe.errors import DataFormatError

Batch = tuple[torch.Tensor, torch.Tensor, dict[int, str]]


@dataclass
class ImageSource:
    """Images and labels for fine-tuning, and what they are (for provenance)."""

    metadata: RowMetadata
    reader: Dataset
    size: int
    known_failures: dict[int, str] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of ids, splits and labels: a resumed run must see the same rows."""
        digest = hashlib.sha256()
        for name in ("ids", "split", "patient_id"):
            digest.update("\x1f".join(getattr(self.metadata, name).tolist()).encode("utf-8"))
        digest.update(np.ascontiguousarray(self.metadata.labels, dtype="<f4").tobytes())
        digest.update(",".join(self.metadata.findings).encode("utf-8"))
        return digest.hexdigest()


class _RowBatches(Dataset):
    """Batches from a per-row dataset (``CachedImages`` or ``RawImages``) via ``collate_images``."""

    def __init__(self, rows: Dataset) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, rows: np.ndarray) -> Batch:
        from cxrprobe.data.loading import collate_images

        index = [int(r) for r in rows]
        items = (
            self.rows.__getitems__(index)
            if hasattr(self.rows, "__getitems__")
            else [self.rows[r] for r in index]
        )
        return collate_images(items)


class _ArrayBatches(Dataset):
    """Batches from an in-memory uint8 (n, S, S) array (benchmarks, tests)."""

    def __init__(self, images: np.ndarray | torch.Tensor) -> None:
        self.images = torch.as_tensor(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: np.ndarray) -> Batch:
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return index, self.images[index], {}


def from_cache(path: str | os.PathLike) -> ImageSource:
    """The image cache at ``path`` (``cxrprobe preprocess`` output); its failed rows are known."""
    from cxrprobe.cache.images import open_images
    from cxrprobe.data.loading import CachedImages

    cache = open_images(path)
    reasons = cache.failures
    known = {
        int(r): reasons.get(int(r), "marked failed in the image cache")
        for r in np.flatnonzero(cache.failed)
    }
    return ImageSource(
        metadata=cache.metadata(),
        reader=_RowBatches(CachedImages(cache.path)),
        size=cache.size,
        known_failures=known,
        description={
            "kind": "image-cache",
            "path": str(Path(path).resolve()),
            "manifest_hash": cache.provenance.get("manifest_hash"),
            "preprocess": cache.config.to_dict(),
        },
    )


def from_manifest(
    manifest: str | os.PathLike, root: str | os.PathLike | None, cfg: Any
) -> ImageSource:
    """Raw image files named by a manifest, decoded and preprocessed with ``cfg`` on the fly."""
    from cxrprobe.data.loading import RawImages
    from cxrprobe.data.manifest import manifest_hash, read_manifest

    df = read_manifest(manifest)
    return ImageSource(
        metadata=RowMetadata.from_manifest(df),
        reader=_RowBatches(RawImages(df, root, cfg)),
        size=int(cfg.size),
        description={
            "kind": "raw-files",
            "manifest": str(Path(manifest).resolve()),
            "manifest_hash": manifest_hash(df),
            "root": None if root is None else str(Path(root).resolve()),
            "preprocess": cfg.to_dict(),
        },
    )


def from_arrays(
    images: np.ndarray | torch.Tensor, metadata: RowMetadata, name: str = "in-memory"
) -> ImageSource:
    """uint8 (n, S, S) images held in memory with their row metadata."""
    if len(images) != len(metadata):
        raise DataFormatError(
            f"{len(images)} images for {len(metadata)} metadata rows; give one image per row"
        )
    return ImageSource(
        metadata=metadata,
        reader=_ArrayBatches(images),
        size=int(images.shape[-1]),
        description={"kind": "arrays", "name": name},
    )


def _as_is(batch: Batch) -> Batch:
    return batch


def batch_loader(
    source: ImageSource, batches: list[np.ndarray], num_workers: int, pin_memory: bool
) -> DataLoader:
    """A loader yielding one :data:`Batch` per entry of ``batches`` (arrays of row numbers), in order."""
    return DataLoader(
        source.reader,
        sampler=batches,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
