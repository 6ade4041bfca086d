"""Rows of images with ids, labels and splits: what extraction and fine-tuning read.

An :class:`ImageSource` is the row metadata (ids, split, patients, labels), a per-row dataset,
the rows already known to be unreadable, and what decides the pixels (for identities and
provenance). Constructors: :func:`from_cache` (the image cache), :func:`from_manifest` (raw files
named by a manifest, decoded and preprocessed on the fly), :func:`from_arrays` (uint8 images in
memory), :func:`from_dataset` (any map-style torch or torchxrayvision-style dataset, its images
preprocessed on the fly); :func:`open_source` picks one of the first two from command options.

The per-row dataset is map-style and yields items ``(row, image, error)``: ``image`` uint8
(S, S) numpy or None, ``error`` a one-line reason or None. Errors are returned rather than
raised so batch work records failures and goes on; :func:`collate_images` stacks the good
images of a batch and keeps the failures beside them, and :meth:`ImageSource.loader` gives
``(rows LongTensor (k,), images uint8 (k, S, S), failures {row: reason})`` per batch of rows.
Datasets pickle cheaply (paths and settings only) and open files or the Zarr store lazily in
each DataLoader worker. A new kind of source needs only a per-row dataset and a constructor.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrprobe.cache.images import RECORDED_ERRORS, ImageCache, open_images
from cxrprobe.cache.items import DatasetImages, Item, scan_items
from cxrprobe.cache.store import RowMetadata
from cxrprobe.data.decode import image_paths
from cxrprobe.data.preprocess import PreprocessConfig, load_preprocessed
from cxrprobe.errors import ConfigError, DataFormatError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

IMAGE_CACHE, RAW_FILES, ARRAYS, DATASET = "image-cache", "raw-files", "arrays", "dataset"


# ---------------------------------------------------------------------- per-row datasets
class RawImages:
    """Decode and preprocess manifest rows on the fly (no cache needed, slower)."""

    def __init__(
        self, manifest_df: Any, root: str | os.PathLike | None, cfg: PreprocessConfig
    ) -> None:
        self.paths = image_paths(manifest_df, root)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        try:
            return i, load_preprocessed(self.paths[i], self.cfg), None
        except RECORDED_ERRORS as exc:
            return i, None, str(exc)


class CachedImages:
    """Rows of a finished image cache; failed rows come back with their recorded reason."""

    def __init__(self, image_cache: ImageCache | str | os.PathLike) -> None:
        self._cache: ImageCache | None = (
            image_cache if isinstance(image_cache, ImageCache) else None
        )
        self.path = str(image_cache.path if isinstance(image_cache, ImageCache) else image_cache)
        self._length = len(self.cache)

    @property
    def cache(self) -> ImageCache:
        """The opened cache (opened on first use in each process)."""
        if self._cache is None:
            self._cache = open_images(self.path)
        return self._cache

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> Item:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        """A whole batch in one sorted read (DataLoader calls this with a batch's indices)."""
        cache = self.cache
        images = cache.read(np.asarray(indices, dtype=np.int64))
        items: list[Item] = []
        for k, row in enumerate(int(i) for i in indices):
            if cache.failed[row]:
                items.append((row, None, cache.failures.get(row, f"row {row} could not be read")))
            else:
                items.append((row, images[k], None))
        return items


class ArrayImages:
    """Rows of a uint8 (n, S, S) array held in memory (benchmarks, tests)."""

    def __init__(self, images: Any) -> None:
        self.images = np.asarray(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Item:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Item]:
        block = self.images[np.asarray(indices, dtype=np.int64)]
        return [(int(row), block[k], None) for k, row in enumerate(indices)]


def collate_images(batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
    """Items → (rows LongTensor (B,), images uint8 Tensor (B, S, S), failures {row: reason}).

    ``rows`` and ``images`` hold only the items that have an image, in batch order; failed items
    appear only in ``failures``. B may be 0 (then images is (0, 0, 0)).
    """
    import torch

    good = [(row, image) for row, image, error in batch if error is None and image is not None]
    failures = {
        int(row): error or "no image"
        for row, image, error in batch
        if error is not None or image is None
    }
    rows = torch.tensor([row for row, _ in good], dtype=torch.long)
    if not good:
        return rows, torch.zeros((0, 0, 0), dtype=torch.uint8), failures
    images = torch.from_numpy(np.stack([image for _, image in good]))
    return rows, images, failures


# ---------------------------------------------------------------------------- the source
@dataclass
class ImageSource:
    """Rows of images: metadata, a per-row dataset, known failures and what the rows are.

    ``preprocess`` (``{"config", "version"}``, None for arrays) decides the pixels and is part of
    an embedding store's identity. ``provenance`` is what an embedding store records (paths as
    given); ``description`` is the record of fine-tuning runs (kind, absolute paths, preprocessing).
    """

    metadata: RowMetadata
    dataset: Any
    size: int
    kind: str
    known_failures: dict[int, str] = field(default_factory=dict)
    preprocess: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """sha256 of ids, splits and labels: a resumed run must see the same rows."""
        digest = hashlib.sha256()
        for name in ("ids", "split", "patient_id"):
            digest.update("\x1f".join(getattr(self.metadata, name).tolist()).encode("utf-8"))
        digest.update(np.ascontiguousarray(self.metadata.labels, dtype="<f4").tobytes())
        digest.update(",".join(self.metadata.findings).encode("utf-8"))
        return digest.hexdigest()

    def loader(
        self, batches: Sequence[Sequence[int]], num_workers: int, pin_memory: bool
    ) -> DataLoader:
        """A DataLoader giving one collated batch per entry of ``batches`` (row numbers), in order."""
        from torch.utils.data import DataLoader

        return DataLoader(
            self.dataset,
            batch_sampler=[[int(r) for r in rows] for rows in batches],
            collate_fn=collate_images,
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=4 if num_workers > 0 else None,
        )


def _absolute(path: Any) -> str | None:
    return None if path is None else str(Path(path).resolve())


def from_cache(path: str | os.PathLike) -> ImageSource:
    """The image cache at ``path`` (``cxrprobe preprocess`` output); its failed rows are known."""
    cache = open_images(path)
    reasons = cache.failures
    known = {
        int(r): reasons.get(int(r), "marked failed in the image cache")
        for r in np.flatnonzero(cache.failed)
    }
    recorded = cache.provenance
    config = cache.config.to_dict()
    return ImageSource(
        metadata=cache.metadata(),
        dataset=CachedImages(str(cache.path)),
        size=cache.size,
        kind=IMAGE_CACHE,
        known_failures=known,
        preprocess={"config": config, "version": cache.store.identity.get("preprocess_version")},
        provenance={
            "images": str(cache.path),
            "manifest": recorded.get("manifest"),
            "manifest_hash": recorded.get("manifest_hash"),
            "label_policies": recorded.get("label_policies"),
        },
        description={
            "kind": IMAGE_CACHE,
            "path": _absolute(path),
            "manifest_hash": recorded.get("manifest_hash"),
            "label_policies": recorded.get("label_policies"),
            "preprocess": config,
        },
    )


def from_manifest(
    manifest: Any, root: str | os.PathLike | None, cfg: PreprocessConfig
) -> ImageSource:
    """Raw image files named by ``manifest`` (a path or a DataFrame) under ``root``, decoded and
    preprocessed with ``cfg`` on the fly."""
    from cxrprobe.data.manifest import label_policies, manifest_hash, read_manifest
    from cxrprobe.data.preprocess import PREPROCESS_VERSION

    path = None if hasattr(manifest, "columns") else str(manifest)
    df = manifest if path is None else read_manifest(manifest)
    digest, policies = manifest_hash(df), label_policies(df)
    config = cfg.to_dict()
    return ImageSource(
        metadata=RowMetadata.from_manifest(df),
        dataset=RawImages(df, root, cfg),
        size=int(cfg.size),
        kind=RAW_FILES,
        preprocess={"config": config, "version": PREPROCESS_VERSION},
        provenance={
            "manifest": path,
            "manifest_hash": digest,
            "label_policies": policies,
            "root": None if root is None else str(root),
        },
        description={
            "kind": RAW_FILES,
            "manifest": _absolute(path),
            "manifest_hash": digest,
            "label_policies": policies,
            "root": _absolute(root),
            "preprocess": config,
        },
    )


def from_arrays(images: Any, metadata: RowMetadata, name: str = "in-memory") -> ImageSource:
    """uint8 (n, S, S) images held in memory (numpy or torch) with their row metadata."""
    if len(images) != len(metadata):
        raise DataFormatError(
            f"{len(images)} images for {len(metadata)} metadata rows; give one image per row"
        )
    return ImageSource(
        metadata=metadata,
        dataset=ArrayImages(images),
        size=int(images.shape[-1]),
        kind=ARRAYS,
        provenance={"name": name},
        description={"kind": ARRAYS, "name": name},
    )


def from_dataset(
    dataset: Any,
    cfg: PreprocessConfig | None = None,
    *,
    findings: Sequence[str] | None = None,
    labels: Any = None,
    ids: Sequence[Any] | None = None,
    patient_ids: Sequence[Any] | None = None,
    split: str | Sequence[str] | None = None,
) -> ImageSource:
    """Any map-style dataset (``len`` and ``dataset[i]``) of images with labels and ids, the
    images preprocessed with ``cfg`` (default settings) on the fly: see :mod:`cxrprobe.cache.items`.

    ``findings`` default to ``dataset.pathologies`` (torchxrayvision), ``labels`` (n, L) to
    ``dataset.labels``; labels and ids missing from both are read from the items in one pass
    (every image is loaded once more, so give them for large datasets). ``patient_ids`` and
    ``split`` (one value for every row, or one per row) default to empty strings.
    """
    from cxrprobe.data.preprocess import PREPROCESS_VERSION

    cfg = cfg or PreprocessConfig()
    n = len(dataset)
    names = findings if findings is not None else getattr(dataset, "pathologies", ())
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ConfigError("give findings=[...] (the label names): the dataset has no .pathologies")
    if labels is None:
        labels = getattr(dataset, "labels", None)
    if labels is None or ids is None:
        found_labels, found_ids = scan_items(dataset, labels is None, ids is None)
        labels = found_labels if labels is None else labels
        ids = found_ids if ids is None else ids
    metadata = RowMetadata(
        ids=_row_strings(ids, n, "ids"),
        split=_row_strings(split, n, "split"),
        patient_id=_row_strings(patient_ids, n, "patient_ids"),
        labels=_label_matrix(labels, n, len(names)),
        findings=names,
    )
    unique, counts = np.unique(metadata.ids, return_counts=True)
    if (counts > 1).any():
        raise DataFormatError(
            f"dataset ids must be unique; {str(unique[counts > 1][0])!r} appears more than once"
        )
    cls = type(dataset)
    described = {
        "dataset": f"{cls.__module__}.{cls.__qualname__}",
        "rows_sha256": metadata.digest(),
    }
    config = cfg.to_dict()
    return ImageSource(
        metadata=metadata,
        dataset=DatasetImages(dataset, cfg, metadata.ids.tolist()),
        size=int(cfg.size),
        kind=DATASET,
        preprocess={"config": config, "version": PREPROCESS_VERSION},
        provenance=dict(described),
        description={"kind": DATASET, **described, "preprocess": config},
    )


def _row_strings(values: Any, n: int, name: str) -> np.ndarray:
    """One string per row: ``values`` per row, one value for all rows, or '' when None."""
    if values is None or isinstance(values, str):
        return np.full(n, values or "", dtype=object).astype(str)
    strings = np.array([str(v) for v in values], dtype=str)
    if len(strings) != n:
        raise DataFormatError(f"{name}: {len(strings)} values for a dataset of {n} rows")
    return strings


def _label_matrix(labels: Any, n: int, width: int) -> np.ndarray:
    """Labels as float32 (n, L); NaN = not annotated."""
    rows = [np.asarray(row, dtype=np.float32).reshape(-1) for row in labels]
    matrix = np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
    if matrix.shape != (n, width):
        raise DataFormatError(
            f"labels have shape {matrix.shape}; expected ({n}, {width}): one per row and finding"
        )
    return matrix


def open_source(
    images: str | os.PathLike | None = None,
    manifest: Any = None,
    root: str | os.PathLike | None = None,
    preprocess: PreprocessConfig | None = None,
    size: int = 224,
) -> ImageSource:
    """The image cache at ``images``, or the raw files of ``manifest`` under ``root`` preprocessed
    with ``preprocess`` (default settings) at ``size``; ConfigError unless exactly one is given."""
    if (images is None) == (manifest is None):
        raise ConfigError(
            "give either --images (an image cache) or --manifest (raw files), not both or neither"
        )
    if images is not None:
        if preprocess is not None:
            raise ConfigError(
                "--preset applies to raw files only; an image cache was preprocessed when it was built"
            )
        return from_cache(images)
    return from_manifest(manifest, root, (preprocess or PreprocessConfig()).with_size(size))


def check_image_source(images: Any, manifest: Any, **raw_only: Any) -> None:
    """The commands' image-source options: exactly one of ``--images``/``--manifest``, and the
    raw-file options (``raw_only``, by parameter name) only with ``--manifest``; ConfigError
    naming the options otherwise."""
    if images is None and manifest is None:
        raise ConfigError(
            "give either --images CACHE (from `cxrprobe preprocess`) or --manifest M --root DIR"
        )
    if images is not None and manifest is not None:
        raise ConfigError(
            "--images and --manifest exclude each other: read the cache or raw files, not both"
        )
    given = [_flag(name) for name, value in raw_only.items() if value is not None]
    if given and manifest is None:
        names = [_flag(name) for name in raw_only]
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        raise ConfigError(
            f"{listed} go with --manifest (raw files), not with --images (given: {', '.join(given)}); "
            "the cache was preprocessed already"
        )


def _flag(name: str) -> str:
    return "--equalize/--no-equalize" if name == "equalize" else "--" + name.replace("_", "-")
