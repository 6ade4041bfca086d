"""torch Datasets over raw files or the image cache, with one item contract for every consumer.

An item is ``(row, image, error)``: ``image`` is uint8 (S, S) numpy or None, ``error`` a one-line
reason or None. Errors are returned rather than raised so batch work (extraction, fine-tuning)
records failures and goes on. :func:`collate_images` stacks the good images of a batch and keeps
the failures beside them. Both datasets pickle cheaply (paths and settings only) and open files or
the Zarr store lazily in each DataLoader worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrprobe.cache.images import RECORDED_ERRORS, ImageCache, open_images
from cxrprobe.data.decode import image_paths
from cxrprobe.data.preprocess import PreprocessConfig, load_preprocessed

Item = tuple[int, "np.ndarray | None", "str | None"]


class RawImages(Dataset):
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


class CachedImages(Dataset):
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


def collate_images(batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, dict[int, str]]:
    """Items → (rows LongTensor (B,), images uint8 Tensor (B, S, S), failures {row: reason}).

    ``rows`` and ``images`` hold only the items that have an image, in batch order; failed items
    appear only in ``failures``. B may be 0 (then images is (0, 0, 0)).
    """
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
