"""From a decoded radiograph to a square 8-bit image, and from 8-bit images to a model's input.

The offline step (:func:`preprocess`) runs once per image and is what the image cache stores.
``decode`` picks the reading: ``display`` (``decode.read_grayscale``: DICOM LUTs applied,
MONOCHROME1 inverted, float [0, 1]) or ``raw`` (``decode.read_raw``: stored values, MONOCHROME1
inverted after the 8-bit step). Then, by default:

1. min-max scale the decoded grayscale to [0, 1] (``minmax``; a constant image is refused),
2. quantise to 8 bits: ``round(255 * g)``,
3. optionally histogram-equalise the 8-bit image (``equalize``; the ``cv2.equalizeHist`` formula),
4. make it square by the ``aspect`` policy and resize to ``size`` × ``size``
   (``stretch``: resize without keeping the aspect ratio; ``pad``: pad the short side with black,
   centred, then resize; ``crop``: keep the centred square of side min(H, W), then resize) with
   the ``resample`` filter: a Pillow filter (antialiased) or ``spline2``
   (``scipy.ndimage.zoom(order=2)``, no antialiasing).

With ``resize_first`` (the study's order) the decoded image is resized first (``stretch`` or
``crop``), then min-max scaled and quantised in double precision, inverted if MONOCHROME1, and
equalised with cv2's single-precision arithmetic: the ``study`` preset reproduces the study's
``normalizer_resizer`` this way.

The online step (:func:`to_model_input`) replicates to 3 channels, scales to [0, 1], optionally
resizes, and normalises with the model's own mean and std (:data:`NO_NORMALIZATION` leaves the
[0, 1] values as they are, as the study fed them). ``docs/images.md`` holds the details.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from cxrprobe.errors import ConfigError, CxrprobeError, DataFormatError, DecodeError

ASPECTS = ("stretch", "pad", "crop")
RESAMPLES = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos", "spline2")
DECODES = ("display", "raw")
PREPROCESS_VERSION = 1  # bump when the offline step changes in a way that changes pixels
FIRST_FIELDS = ("size", "aspect", "equalize", "minmax", "resample")  # always in to_dict()
NO_NORMALIZATION: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
"""``(mean, std)`` for :func:`to_model_input` that keeps [0, 1] inputs: the study's online step."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the offline step; every field changes the stored pixels.

    ``size``: output side in pixels. ``aspect``: ``stretch``, ``pad`` or ``crop`` (module docs).
    ``equalize``: 8-bit histogram equalisation. ``minmax``: per-image min-max scaling before
    quantisation. ``resample``: Pillow filter (antialiased) or ``spline2`` (scipy zoom, order 2).
    ``decode``: ``display`` (DICOM LUTs applied) or ``raw`` (stored values, as the study read
    them). ``resize_first``: resize the decoded image before the 8-bit steps (the study's order).
    """

    size: int = 224
    aspect: str = "stretch"
    equalize: bool = False
    minmax: bool = True
    resample: str = "bilinear"
    decode: str = "display"
    resize_first: bool = False

    def __post_init__(self) -> None:
        if (
            not isinstance(self.size, (int, np.integer))
            or isinstance(self.size, bool)
            or self.size < 1
        ):
            raise ConfigError(f"--size must be a positive integer, got {self.size!r}")
        if self.aspect not in ASPECTS:
            raise ConfigError(f"--aspect must be one of {', '.join(ASPECTS)}, got {self.aspect!r}")
        if self.resample not in RESAMPLES:
            raise ConfigError(
                f"resample must be one of {', '.join(RESAMPLES)}, got {self.resample!r}"
            )
        if self.decode not in DECODES:
            raise ConfigError(f"decode must be one of {', '.join(DECODES)}, got {self.decode!r}")
        if self.decode == "raw" and not self.minmax:
            raise ConfigError(
                "decode 'raw' needs minmax: stored values have no fixed [0, 1] scale; "
                "set minmax to true or use decode 'display'"
            )
        if self.resize_first and self.aspect == "pad":
            raise ConfigError(
                "--aspect pad cannot be combined with resize_first (the study's order): padding "
                "is defined on 8-bit images; use --aspect stretch or crop, or the default order"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (stored in cache identity and run records).

        Fields added after the first release appear only when they differ from their default,
        so caches built before them keep their identity and can still be resumed.
        """
        values = {**asdict(self), "size": int(self.size)}
        defaults = asdict(PreprocessConfig())
        return {k: v for k, v in values.items() if k in FIRST_FIELDS or v != defaults[k]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys are refused)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown preprocessing settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def with_size(self, size: int) -> PreprocessConfig:
        """The same settings at another output size."""
        return replace(self, size=int(size))


PRESETS: dict[str, PreprocessConfig] = {
    "default": PreprocessConfig(),
    # cxrprobe's first approximation of the study's step, kept so its caches stay valid:
    # displayed grayscale, min-max, 8-bit, equalised at full resolution, then Pillow-resized.
    "paper": PreprocessConfig(
        size=224, aspect="stretch", equalize=True, minmax=True, resample="bilinear"
    ),
    # The study's code (tayebiarasteh/chestx normalizer_resizer): stored values, zoom(order=2)
    # to size x size, min-max, 8-bit, invert MONOCHROME1, cv2.equalizeHist at the final size.
    "study": PreprocessConfig(
        size=224,
        aspect="stretch",
        equalize=True,
        minmax=True,
        resample="spline2",
        decode="raw",
        resize_first=True,
    ),
}


def preset_config(preset: str | None, **overrides: Any) -> PreprocessConfig:
    """The settings of ``preset`` (None: 'default') with the ``overrides`` that are not None:
    what the commands' ``--preset``, ``--size``, ``--aspect``... options mean together."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[preset or "default"], **given)


def preprocess(gray: np.ndarray, cfg: PreprocessConfig, invert: bool = False) -> np.ndarray:
    """Decoded grayscale (H, W) → uint8 (size, size), by the steps in the module docs.

    ``gray``: float in [0, 1] (display decoding) or stored integers (raw decoding, needs
    ``minmax``). ``invert``: flip the 8-bit image (raw MONOCHROME1), before equalisation.
    """
    gray = np.asarray(gray)
    numeric = np.issubdtype(gray.dtype, np.floating) or np.issubdtype(gray.dtype, np.integer)
    if gray.ndim != 2 or gray.size == 0 or not numeric:
        raise DataFormatError(
            "preprocess expects a non-empty 2-D float or integer image, "
            f"got {gray.dtype} {gray.shape}"
        )
    if not cfg.minmax and not np.issubdtype(gray.dtype, np.floating):
        raise DataFormatError("without min-max scaling, preprocess expects floats in [0, 1]")
    if cfg.resize_first:
        resized = resize(
            center_crop(gray) if cfg.aspect == "crop" else gray, cfg.size, cfg.resample
        )
        image = minmax_8bit(resized) if cfg.minmax else quantize(np.clip(resized, 0.0, 1.0))
    else:
        image = quantize(minmax_scale(gray) if cfg.minmax else np.clip(gray, 0.0, 1.0))
    if invert:
        image = np.invert(image)
    if cfg.equalize:
        image = equalize_hist(image, exact_cv2=cfg.resize_first)
    if cfg.resize_first:
        return image
    return square_resize(image, cfg.size, cfg.aspect, cfg.resample)


def load_preprocessed(path: str | os.PathLike, cfg: PreprocessConfig) -> np.ndarray:
    """Decode ``path`` by ``cfg.decode`` and run :func:`preprocess`; errors name the file."""
    from cxrprobe.data.decode import read_grayscale, read_raw

    if cfg.decode == "raw":
        gray, invert = read_raw(path)
    else:
        gray, invert = read_grayscale(path), False
    try:
        return preprocess(gray, cfg, invert=invert)
    except CxrprobeError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def _value_range(gray: np.ndarray) -> tuple[float, float]:
    """(min, max) of a picture; NaN/infinite or constant images are refused (``DecodeError``)."""
    low, high = float(np.min(gray)), float(np.max(gray))
    if not np.isfinite(low) or not np.isfinite(high):
        raise DecodeError("image holds NaN or infinite values; check the file")
    if high <= low:
        raise DecodeError(
            f"image is constant (every pixel {low:.4g}); the file holds no picture: drop its row"
        )
    return low, high


def minmax_scale(gray: np.ndarray) -> np.ndarray:
    """Scale to exactly [0, 1] in float32; a constant image holds no picture (``DecodeError``)."""
    low, high = _value_range(gray)
    scaled = (gray.astype(np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def minmax_8bit(gray: np.ndarray) -> np.ndarray:
    """Min-max then 8-bit in double precision, as the study: ``rint(255 * ((v - lo) / (hi - lo)))``.

    The order of operations is the study's (divide, then skimage's ``img_as_ubyte`` multiply
    and round half to even), so ties round the same way.
    """
    low, high = _value_range(gray)
    unit = (gray.astype(np.float64) - low) / (high - low)
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def quantize(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint8 by ``round(255 * g)`` (half to even)."""
    return np.rint(unit * np.float32(255.0)).astype(np.uint8)


def equalize_hist(image: np.ndarray, exact_cv2: bool = False) -> np.ndarray:
    """Histogram-equalise a uint8 image with the ``cv2.equalizeHist`` formula.

    ``lut[v] = round(255 * (cdf[v] - cdf[v_min]) / (n - cdf[v_min]))`` where ``v_min`` is the
    smallest value present; a constant image is returned unchanged. ``exact_cv2`` computes it in
    single precision as OpenCV does (the ``study`` preset); the double-precision default, kept
    for earlier caches, differs from it by one level at rare exact ties.
    """
    from PIL import Image

    hist = np.asarray(Image.fromarray(np.ascontiguousarray(image)).histogram(), dtype=np.int64)
    cdf = np.cumsum(hist)
    lowest = int(np.flatnonzero(hist)[0])
    base, total = int(cdf[lowest]), int(image.size)
    if base == total:
        return image.copy()
    if exact_cv2:
        scale = np.float32(255.0) / np.float32(total - base)
        lut = np.rint((cdf - base).astype(np.float32) * scale)
    else:
        lut = np.rint((cdf - base) * (255.0 / (total - base)))
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    return lut[image]


def center_crop(image: np.ndarray) -> np.ndarray:
    """The centred square of side min(H, W)."""
    height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def resize(image: np.ndarray, size: int, resample: str = "bilinear") -> np.ndarray:
    """(H, W) → (size, size) without keeping the aspect ratio.

    ``spline2``: ``scipy.ndimage.zoom(order=2)``, which keeps the dtype (integers rounded and
    clipped), as the study resized. Pillow filters: uint8 stays uint8, other dtypes go through
    float32.
    """
    if image.shape == (size, size):
        return np.ascontiguousarray(image)
    if resample == "spline2":
        from scipy import ndimage

        return ndimage.zoom(image, np.divide((size, size), image.shape), order=2)
    from PIL import Image

    filt = Image.Resampling[resample.upper()]
    dtype = np.uint8 if image.dtype == np.uint8 else np.float32
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=dtype))
    return np.asarray(pil.resize((size, size), resample=filt), dtype=dtype)


def square_resize(
    image: np.ndarray, size: int, aspect: str = "stretch", resample: str = "bilinear"
) -> np.ndarray:
    """uint8 (H, W) → uint8 (size, size) by the ``aspect`` policy (module docs)."""
    height, width = image.shape
    if aspect == "pad" and height != width:
        side = max(height, width)
        canvas = np.zeros((side, side), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        canvas[top : top + height, left : left + width] = image
        image = canvas
    elif aspect == "crop" and height != width:
        image = center_crop(image)
    elif aspect not in ASPECTS:
        raise ConfigError(f"aspect must be one of {', '.join(ASPECTS)}, got {aspect!r}")
    return resize(image, size, resample)


def to_model_input(
    images: Any,
    mean: Sequence[float],
    std: Sequence[float],
    size: int | None = None,
) -> Any:
    """uint8 images (B, S, S) or (B, 1, S, S) → float32 (B, 3, size, size) on the same device.

    Scales to [0, 1], resizes (bilinear, antialiased) when ``size`` differs from S, replicates to
    3 channels and normalises with the model's own ``mean`` and ``std`` (3 values, or 1 for all);
    ``*NO_NORMALIZATION`` keeps the [0, 1] values, as the study's training and evaluation did.
    """
    import torch
    import torch.nn.functional as F

    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise DataFormatError(
            f"to_model_input expects (B, S, S) or (B, 1, S, S) images, got {tuple(images.shape)}"
        )
    x = images.to(torch.float32) / 255.0
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        x = x.clamp_(0.0, 1.0)
    mean_t = _channel_stats(mean, "mean", x)
    std_t = _channel_stats(std, "std", x)
    if bool((std_t <= 0).any()):
        raise ConfigError(f"normalisation std must be positive, got {list(std)}")
    return ((x.expand(-1, 3, -1, -1) - mean_t) / std_t).contiguous()


def _channel_stats(values: Sequence[float], name: str, like: Any) -> Any:
    import torch

    stats = torch.as_tensor(list(values), dtype=torch.float32, device=like.device)
    if stats.numel() == 1:
        stats = stats.expand(3)
    if stats.numel() != 3:
        raise ConfigError(f"normalisation {name} needs 3 values (or 1), got {list(values)}")
    return stats.view(1, 3, 1, 1)
