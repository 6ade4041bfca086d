"""Map-style datasets as rows of images: any ``dataset[i]`` holding an image, labels and an id.

Items may be ``(image, labels, id)`` or ``(image, labels)`` tuples, torchxrayvision-style dicts
(``img``/``image``, ``lab``/``labels``, ``id``/``image_id``), or a bare image. The image may be a
numpy array, a PIL image or a torch tensor of any dtype and range, shaped (H, W), (1, H, W),
(H, W, 1), or RGB(A) channels first or last. It becomes a 2-D grayscale as a decoded file does
(:func:`to_grayscale`), then goes through the same offline step as raw files
(:func:`cxrprobe.data.preprocess.preprocess`), so a PNG read with Pillow gives the pixels the
raw-files path gives (``PreprocessConfig.decode`` is about files and does not apply).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrprobe.data.decode import _pillow_to_gray, color_to_gray
from cxrprobe.data.preprocess import PreprocessConfig, preprocess
from cxrprobe.errors import DataFormatError, DecodeError

_IMAGE_KEYS, _LABEL_KEYS, _ID_KEYS = ("img", "image"), ("lab", "labels"), ("id", "image_id")
# A per-row dataset's item: (row, uint8 image or None, one-line error or None).
Item = tuple[int, "np.ndarray | None", "str | None"]
_UNIT_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}  # as an 8/16-bit PNG


def unpack_item(item: Any, row: int) -> tuple[Any, Any, Any]:
    """``(image, labels or None, id or None)`` of one dataset item (see the module docs)."""
    if isinstance(item, dict):
        found = [
            next((item[k] for k in keys if k in item), None)
            for keys in (_IMAGE_KEYS, _LABEL_KEYS, _ID_KEYS)
        ]
        if found[0] is None:
            raise DataFormatError(
                f"dataset row {row}: a dict item without an image (keys {sorted(item)}); "
                "give the image under 'img' or 'image'"
            )
        return found[0], found[1], found[2]
    if isinstance(item, (tuple, list)):
        if not 1 <= len(item) <= 3:
            raise DataFormatError(
                f"dataset row {row}: an item of {len(item)} values; give (image, labels, id)"
            )
        return (*item, None, None)[:3]
    return item, None, None


def to_grayscale(image: Any) -> np.ndarray:
    """A dataset image as a 2-D array for :func:`~cxrprobe.data.preprocess.preprocess`.

    PIL images are converted as the raw-files path converts a decoded file; uint8 and uint16
    arrays are scaled to [0, 1] like an 8- or 16-bit PNG; other numbers are kept as they are
    (min-max scaling, on by default, makes their range irrelevant); RGB(A) becomes luminance.
    """
    if hasattr(image, "getbands"):  # a PIL image: the raw-files path's own conversion
        return _pillow_to_gray(image)
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    scale = _UNIT_SCALE.get(array.dtype)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return color_to_gray(array[..., :3], scale or 1.0)
    if array.ndim != 2 or array.size == 0:
        raise DataFormatError(
            f"an image of shape {array.shape}; give (H, W), (1, H, W), (H, W, 1) or RGB"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataFormatError(f"an image of dtype {array.dtype}; give numbers")
    return array.astype(np.float32) / np.float32(scale) if scale else array


class DatasetImages:
    """The per-row dataset of a map-style dataset: items ``(row, uint8 (S, S) image, error)``.

    An image that cannot be converted (wrong shape, constant, NaN) is a recorded failure; an
    exception raised by the dataset itself propagates, with the row added to its message. An
    item whose id differs from the row's listed id is refused: the dataset changed its order.
    """

    def __init__(self, dataset: Any, cfg: PreprocessConfig, ids: Sequence[str]) -> None:
        self.dataset = dataset
        self.cfg = cfg
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Item:
        try:
            item = self.dataset[i]
        except Exception as exc:
            exc.add_note(f"cxrprobe: while reading dataset row {i} ({self.ids[i]})")
            raise
        image, _, item_id = unpack_item(item, i)
        if item_id is not None and str(item_id) != self.ids[i]:
            raise DataFormatError(
                f"dataset row {i}: item id {str(item_id)!r}, but the row was listed as "
                f"{self.ids[i]!r}; the dataset's order changed: build the image source again"
            )
        try:
            return i, preprocess(to_grayscale(image), self.cfg), None
        except (DataFormatError, DecodeError) as exc:
            return i, None, f"dataset row {i} ({self.ids[i]}): {exc}"


def scan_items(dataset: Any, want_labels: bool, want_ids: bool) -> tuple[list[Any], list[Any]]:
    """Labels and ids of every item, reading each item once (images are loaded and dropped)."""
    labels: list[Any] = []
    ids: list[Any] = []
    for row in range(len(dataset)):
        _, item_labels, item_id = unpack_item(dataset[row], row)
        if want_labels and item_labels is None:
            raise DataFormatError(
                f"dataset row {row}: the item holds no labels; give labels=(n, L) or items "
                "(image, labels, id)"
            )
        if want_ids and item_id is None:
            raise DataFormatError(
                f"dataset row {row}: the item holds no id; give ids=[...] (one per row) or "
                "items (image, labels, id)"
            )
        labels.append(None if item_labels is None else np.asarray(_numpy(item_labels)))
        ids.append(item_id)
    return labels, ids


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value
