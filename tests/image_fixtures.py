"""Small image files in the real formats, written into a test's tmp_path.

Other tests import these helpers::

    from tests.image_fixtures import make_image_dataset, write_dicom, write_png

- ``radiograph_like(h, w, seed)``: a smooth, full-range, non-constant test picture (uint8/uint16);
- ``write_png(path, array)``: 8-bit (uint8 (H, W)), 16-bit (uint16 (H, W)) or RGB (uint8 (H, W, 3));
- ``write_jpeg(path, array)``: grayscale or RGB JPEG through Pillow;
- ``write_dicom(path, array, ...)``: MONOCHROME1/2 DICOM, optional rescale, window, VOI LUT
  sequence, signed pixels, or the JPEG-baseline transfer syntax;
- ``write_corrupt(path)``: a PNG signature followed by garbage;
- ``make_image_dataset(tmp_path, n, size)``: PNG files plus a manifest DataFrame (paths relative
  to the returned root), with optional corrupt/missing rows;
- ``preprocess_args(manifest, root, out, *extra)``: a small, quick ``cxrprobe preprocess`` line.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

FINDINGS = ("cardiomegaly", "pleural_effusion")


def radiograph_like(height: int, width: int, seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    """A smooth picture using the dtype's full range: gradient, two dark "lungs", noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = y / max(height - 1, 1), x / max(width - 1, 1)
    picture = 0.6 + 0.3 * y
    for cx in (0.3, 0.7):
        picture -= 0.45 * np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2))
    picture += rng.normal(0.0, 0.03, size=picture.shape)
    picture = (picture - picture.min()) / (picture.max() - picture.min())
    top = np.iinfo(dtype).max
    return np.rint(picture * top).astype(dtype)


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write uint8 (H, W) as 8-bit, uint16 (H, W) as 16-bit grayscale, uint8 (H, W, 3) as RGB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if array.dtype == np.uint16 and array.ndim == 2:
        image = Image.fromarray(array)  # mode "I;16"
    elif array.dtype == np.uint8 and array.ndim in (2, 3):
        image = Image.fromarray(array)
    else:
        raise ValueError(
            f"write_png takes uint8 (H, W[, 3]) or uint16 (H, W), got {array.dtype} {array.shape}"
        )
    image.save(path, format="PNG")
    return path


def jpeg_bytes(array: np.ndarray, quality: int = 95) -> bytes:
    """uint8 (H, W) or (H, W, 3) encoded as baseline JPEG by Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_jpeg(path: str | Path, array: np.ndarray, quality: int = 95) -> Path:
    """Write uint8 (H, W) or (H, W, 3) as a JPEG file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(array, quality))
    return path


def write_corrupt(path: str | Path) -> Path:
    """A file that looks like a PNG by its signature but holds garbage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return path


def write_dicom(
    path: str | Path,
    array: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, int, Sequence[int]] | None = None,
    jpeg_baseline: bool = False,
    preamble: bool = True,
) -> Path:
    """Write a single-frame grayscale DICOM.

    ``array``: uint8/uint16/int16 (H, W) stored values. ``rescale``: (slope, intercept).
    ``window``: (centre, width). ``voi_lut``: (first mapped value, bits per entry, LUT data).
    ``jpeg_baseline``: encapsulate a Pillow JPEG (uint8 only) with transfer syntax 1.2.840.10008.1.2.4.50.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    array = np.asarray(array)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    allocated = array.dtype.itemsize * 8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg_baseline else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(array.dtype, np.signedinteger))
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, bits, data = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(data), first, bits]
        item.add_new(0x00283006, "US", [int(v) for v in data])  # LUT Data
        ds.VOILUTSequence = [item]
    if jpeg_baseline:
        if array.dtype != np.uint8:
            raise ValueError("jpeg_baseline needs uint8 pixels")
        ds.PixelData = encapsulate([jpeg_bytes(array)])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return path


def make_image_dataset(
    tmp_path: str | Path,
    n: int,
    size: int = 48,
    *,
    corrupt: Sequence[int] = (),
    missing: Sequence[int] = (),
    sixteen_bit: Sequence[int] = (),
    seed: int = 0,
) -> tuple[pd.DataFrame, Path]:
    """``n`` PNGs of about ``size`` px (varied aspect) and their manifest; returns (manifest, root).

    Rows in ``corrupt`` get a garbage file, rows in ``missing`` no file, rows in ``sixteen_bit``
    a 16-bit PNG. Patients hold two images each; splits are assigned by patient.
    """
    root = Path(tmp_path) / "images_root"
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rel = f"p{i // 2:03d}/img{i:03d}.png"
        height, width = size + (i % 3) * 4, size + (i % 2) * 6
        if i in corrupt:
            write_corrupt(root / rel)
        elif i not in missing:
            dtype = "uint16" if i in sixteen_bit else "uint8"
            write_png(root / rel, radiograph_like(height, width, seed=seed + i, dtype=dtype))
        labels = rng.integers(0, 2, size=len(FINDINGS)).astype(float)
        if i % 5 == 4:
            labels[0] = np.nan
        rows.append(
            {
                "image_id": f"img{i:03d}",
                "path": rel,
                "patient_id": f"p{i // 2:03d}",
                "study_id": f"s{i:03d}",
                "view": "PA",
                "split": ("train", "val", "test")[(i // 2) % 3],
                "sex": "F" if i % 2 else "M",
                "age": 40.0 + i,
                **dict(zip(FINDINGS, labels, strict=True)),
            }
        )
    return pd.DataFrame(rows), root


def preprocess_args(manifest: Path, root: Path, out: Path, *extra: str) -> list[str]:
    """``cxrprobe preprocess`` arguments for a tiny cache (24 px, one worker, 2-row shards) of
    ``manifest``'s images under ``root`` into ``out``; ``extra`` adds or overrides options."""
    return [
        "preprocess",
        "--manifest",
        str(manifest),
        "--root",
        str(root),
        "--out",
        str(out),
        "--size",
        "24",
        "--workers",
        "1",
        "--shard-rows",
        "2",
        *extra,
    ]
