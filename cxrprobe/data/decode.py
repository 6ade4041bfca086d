"""Reading radiographs as grayscale: PNG (8/16-bit), JPEG and DICOM.

Two readings: :func:`read_grayscale` gives float32 in [0, 1] as a viewer displays the image
(DICOM LUTs applied, MONOCHROME1 inverted); :func:`read_raw` gives the stored integer values as
the study's code read them (no LUTs, 8-bit PNG/JPEG as OpenCV reads them, inversion left to the
caller). The format is told by the file's first bytes, not its suffix (PadChest and VinDr use
``.dicom``, some releases rename PNGs). One decoder per format is pinned for reproducibility:
Pillow for PNG and JPEG, and Pillow again for DICOMs with the JPEG-baseline transfer syntax
(different JPEG decoders disagree by one grey level). See ``docs/images.md`` for the full rules.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cxrprobe.errors import DataFormatError, DecodeError, InputFileError, MissingDependencyError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_SUFFIXES = (".dcm", ".dicom")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's "L"
OPENCV_LUMA_15 = (9798, 19235, 3735)  # OpenCV 4.x 8-bit BGR2GRAY: R, G, B weights, 15-bit shift

_PILLOW_SCALE = {
    "1": 1.0,
    "L": 255.0,
    "I;16": 65535.0,
    "I;16B": 65535.0,
    "I;16L": 65535.0,
    "I": 65535.0,
}


def sniff_format(path: str | os.PathLike) -> str:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the file's first bytes (suffix only as a fallback)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(DICOM_MAGIC_OFFSET + 4)
    except FileNotFoundError as exc:
        raise InputFileError(
            f"{path}: image file not found; check the manifest's path column and --root"
        ) from exc
    except OSError as exc:
        raise InputFileError(
            f"{path}: cannot read the image file ({exc.strerror}); check its permissions"
        ) from exc
    if not head:
        raise DecodeError(
            f"{path}: empty file; re-copy it from the dataset or drop its row from the manifest"
        )
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if (
        head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"
        or path.suffix.lower() in DICOM_SUFFIXES
    ):
        return "dicom"
    raise DecodeError(
        f"{path}: not a PNG, JPEG or DICOM file (starts with {head[:8]!r}); convert it to PNG or drop its row"
    )


def read_grayscale(path: str | os.PathLike) -> np.ndarray:
    """Decode one radiograph to a float32 (H, W) array in [0, 1], dark = low attenuation.

    PNG and JPEG are scaled by their bit depth (8-bit / 255, 16-bit / 65535); colour-encoded
    grayscale takes the first channel when all channels are equal, otherwise BT.601 luminance.
    DICOM gets the Modality LUT (or rescale slope/intercept), then the VOI LUT or the first
    window centre/width, is scaled by the range those define, and MONOCHROME1 is inverted.

    Raises ``InputFileError`` for a missing file, ``DecodeError`` for a corrupt or unsupported
    one and ``MissingDependencyError`` when a DICOM needs a decoder that is not installed.
    """
    fmt = sniff_format(path)
    gray = _read_dicom(Path(path)) if fmt == "dicom" else _read_pillow(Path(path))
    if gray.ndim != 2 or gray.size == 0:
        raise DecodeError(
            f"{path}: decoded to shape {gray.shape}, expected a 2-D image; check the file"
        )
    return gray


class RawImage(NamedTuple):
    """Stored integer values of one radiograph (H, W), and whether it is DICOM MONOCHROME1
    (low values bright: the caller inverts, after whatever scaling it does)."""

    pixels: np.ndarray
    monochrome1: bool


def read_raw(path: str | os.PathLike) -> RawImage:
    """Decode one radiograph to its stored values, the way the study's code read files.

    PNG and JPEG as OpenCV's default ``cv2.imread`` then ``COLOR_BGR2GRAY`` give them: uint8, a
    16-bit PNG keeping its high byte (libpng's ``png_set_strip_16``), colour by OpenCV's
    fixed-point BT.601 weights (exact for colour-encoded grayscale). DICOM as pydicom's
    ``pixel_array`` (first frame): no Modality LUT, rescale, VOI LUT or window, no inversion.

    Raises the errors of :func:`read_grayscale`; a colour DICOM is refused (``DecodeError``).
    """
    fmt = sniff_format(path)
    if fmt == "dicom":
        raw = _read_dicom_raw(Path(path))
    else:
        raw = RawImage(_read_pillow(Path(path), _pillow_to_uint8), False)
    if raw.pixels.ndim != 2 or raw.pixels.size == 0:
        raise DecodeError(
            f"{path}: decoded to shape {raw.pixels.shape}, expected a 2-D image; check the file"
        )
    return raw


# ----------------------------------------------------------------------------- PNG and JPEG
def _read_pillow(path: Path, convert: Callable[[Any], np.ndarray] | None = None) -> np.ndarray:
    """Open with Pillow and convert by ``convert`` (default :func:`_pillow_to_gray`)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return (convert or _pillow_to_gray)(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError(
            f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated: re-copy it from the dataset or drop its row from the manifest"
        ) from exc


def _pillow_to_gray(image: Any) -> np.ndarray:
    """Pillow image → float32 (H, W) in [0, 1]."""
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    if image.mode in ("LA", "La"):
        image = image.getchannel("L")
    if image.mode in _PILLOW_SCALE:
        return np.asarray(image).astype(np.float32) / np.float32(_PILLOW_SCALE[image.mode])
    if image.mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        return color_to_gray(np.asarray(image)[..., :3], 255.0)
    raise DecodeError(
        f"unsupported Pillow image mode {image.mode!r}; convert the file to 8- or 16-bit grayscale PNG"
    )


def _pillow_to_uint8(image: Any) -> np.ndarray:
    """Pillow image → uint8 (H, W) as OpenCV's default ``imread`` + ``COLOR_BGR2GRAY`` give it."""
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    if image.mode in ("LA", "La"):
        image = image.getchannel("L")
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        high_byte = np.asarray(image).astype(np.int64) >> 8
        return np.clip(high_byte, 0, 255).astype(np.uint8)
    if image.mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        return opencv_gray(np.asarray(image)[..., :3])
    raise DecodeError(
        f"unsupported Pillow image mode {image.mode!r}; convert the file to 8- or 16-bit grayscale PNG"
    )


def opencv_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB → uint8 (H, W) by OpenCV 4.x's fixed-point ``COLOR_BGR2GRAY``.

    ``(9798 R + 19235 G + 3735 B + 2**14) >> 15``; the weights sum to 2**15, so equal channels
    come back unchanged.
    """
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    wr, wg, wb = OPENCV_LUMA_15
    return ((wr * r + wg * g + wb * b + (1 << 14)) >> 15).astype(np.uint8)


def color_to_gray(rgb: np.ndarray, max_value: float) -> np.ndarray:
    """(H, W, 3) colour-encoded grayscale → float32 (H, W) in [0, 1].

    The first channel when the three are equal (lossless), otherwise BT.601 luminance.
    """
    first = rgb[..., 0]
    if np.array_equal(first, rgb[..., 1]) and np.array_equal(first, rgb[..., 2]):
        gray = first.astype(np.float32)
    else:
        gray = rgb.astype(np.float32) @ LUMA
    return gray / np.float32(max_value)


# ------------------------------------------------------------------------------------ DICOM
def _read_dicom(path: Path) -> np.ndarray:
    ds = _open_dicom(path)
    arr = _dicom_pixels(path, ds)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return color_to_gray(arr[..., :3], 2 ** int(ds.BitsStored) - 1)
    return dicom_to_unit(arr, ds, path)


def _read_dicom_raw(path: Path) -> RawImage:
    ds = _open_dicom(path)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        raise DecodeError(
            f"{path}: colour DICOM; the raw (study) decoding reads grayscale DICOMs only, as the "
            "study did: use the default decoding (--preset default) or drop its row"
        )
    photometric = _photometric(ds, path)
    return RawImage(_dicom_pixels(path, ds), photometric == "MONOCHROME1")


def _open_dicom(path: Path) -> Any:
    """The dataset of a DICOM file that holds pixel data."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise MissingDependencyError(
            f"{path}: reading DICOM needs pydicom; pip install 'cxrprobe[dicom]'"
        ) from exc
    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise DecodeError(
            f"{path}: not a readable DICOM file ({exc}); re-copy it or drop its row"
        ) from exc
    if "PixelData" not in ds:
        raise DecodeError(
            f"{path}: DICOM without pixel data (a report or structured file?); drop its row"
        )
    return ds


def _photometric(ds: Any, path: str | os.PathLike) -> str:
    """``MONOCHROME1`` or ``MONOCHROME2``; any other grayscale interpretation is refused."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DecodeError(
            f"{path}: unsupported DICOM photometric interpretation {photometric!r}; convert it"
        )
    return photometric


def _dicom_pixels(path: Path, ds: Any) -> np.ndarray:
    """The stored values of the first frame, decoded with a pinned plugin where one is available."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    plugin = ""
    if uid is not None and uid.is_compressed:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError as exc:
            raise DecodeError(
                f"{path}: DICOM transfer syntax {uid.name} ({uid}) is not supported; convert the file "
                "to an uncompressed or JPEG DICOM (e.g. dcmdjpeg) or to PNG"
            ) from exc
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            raise MissingDependencyError(
                f"{path}: DICOM transfer syntax {uid.name} needs a decoder that is not installed ({missing}); "
                "run pip install 'cxrprobe[dicom]'"
            )
        if uid == JPEG_BASELINE and "pillow" in decoder.available_plugins:
            plugin = "pillow"
    try:
        ds.pixel_array_options(decoding_plugin=plugin)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises plain Exception subclasses of many kinds
        raise DecodeError(
            f"{path}: cannot decode the DICOM pixel data ({type(exc).__name__}: {exc}); the file is "
            "corrupt or truncated: re-copy it or drop its row"
        ) from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    return arr


def dicom_to_unit(arr: np.ndarray, ds: Any, path: str | os.PathLike = "<dataset>") -> np.ndarray:
    """Stored grayscale DICOM values → float32 (H, W) in [0, 1], as a viewer would display them.

    Order (PS3.3 C.11): Modality LUT or rescale → VOI LUT sequence, else the first window
    centre/width → scale by the output range those define → invert MONOCHROME1.
    """
    from pydicom.pixels import apply_modality_lut, apply_windowing

    photometric = _photometric(ds, path)
    try:
        values = apply_modality_lut(arr, ds)
        low, high = _modality_range(ds)
        if ds.get("VOILUTSequence"):
            values, (low, high) = _apply_voi_lut_sequence(values, ds)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            values = apply_windowing(values, ds)
    except (ValueError, AttributeError, KeyError, NotImplementedError, IndexError) as exc:
        raise DecodeError(
            f"{path}: invalid DICOM LUT or window attributes ({exc}); fix or drop the file"
        ) from exc
    if high <= low:
        raise DecodeError(
            f"{path}: DICOM value range [{low}, {high}] is empty; check BitsStored/RescaleSlope"
        )
    gray = ((np.asarray(values, dtype=np.float64) - low) / (high - low)).astype(np.float32)
    np.clip(gray, 0.0, 1.0, out=gray)
    if photometric == "MONOCHROME1":
        gray = 1.0 - gray
    return gray


def _apply_voi_lut_sequence(values: np.ndarray, ds: Any) -> tuple[np.ndarray, tuple[float, float]]:
    """The first VOI LUT of the sequence, and its output range [0, 2**bits - 1].

    Done here rather than by pydicom, whose ``apply_voi`` indexes through an array of the LUT's
    own dtype and so wraps input values above 255 for 8-bit LUTs (checked with pydicom 3.0).
    """
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2**16
    data = item.LUTData
    if isinstance(data, bytes):  # OW: raw 16-bit words in the dataset's byte order
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        lut = np.frombuffer(data, dtype="<u2" if little else ">u2")[:entries]
    else:
        lut = np.asarray(data if isinstance(data, (list, tuple)) else [data])
    if lut.size < entries:
        raise ValueError(f"VOI LUT holds {lut.size} entries, its descriptor says {entries}")
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, entries - 1)
    return lut.astype(np.float64)[index], (0.0, float(2**bits - 1))


def _modality_range(ds: Any) -> tuple[float, float]:
    """The value range after the Modality LUT/rescale, as pydicom's windowing defines it."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        ends = sorted(
            (low * float(slope) + float(intercept), high * float(slope) + float(intercept))
        )
        low, high = ends
    return low, high


# ------------------------------------------------------------------------------------ paths
def image_paths(manifest: Any, root: str | os.PathLike | None) -> list[str]:
    """Absolute file paths for a manifest's ``path`` column (absolute entries kept as they are)."""
    return [resolve_image_path(p, root) for p in _column(manifest, "path")]


def resolve_image_path(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """``root / path`` unless ``path`` is absolute or no root is given."""
    path = Path(path)
    if path.is_absolute() or root is None:
        return str(path)
    return str(Path(root) / path)


def _column(manifest: Any, name: str) -> Sequence[Any]:
    if name not in manifest.columns:
        raise DataFormatError(
            f"manifest has no {name!r} column (columns: {list(manifest.columns)[:10]}); rebuild it"
        )
    return manifest[name].tolist()
