"""From a decoded radiograph to a square 8-bit image, and from 8-bit images to a model's input.

The offline step (:func:`preprocess`) runs once per image and is what the image cache stores:

1. min-max scale the decoded grayscale to [0, 1] (``minmax``; a constant image is refused),
2. quantise to 8 bits: ``round(255 * g)``,
3. optionally histogram-equalise the 8-bit image (``equalize``; the ``cv2.equalizeHist`` formula),
4. make it square by the ``aspect`` policy and resize to ``size`` × ``size`` with Pillow
   (``stretch``: resize without keeping the aspect ratio; ``pad``: pad the short side with black,
   centred, then resize; ``crop``: keep the centred square of side min(H, W), then resize).

The online step (:func:`to_model_input`) replicates to 3 channels, scales to [0, 1], optionally
resizes, and normalises with the model's own mean and std. ``docs/images.md`` holds the details.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from cxrprobe.errors import ConfigError, CxrprobeError, DataFormatError, DecodeError

ASPECTS = ("stretch", "pad", "crop")
RESAMPLES = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
PREPROCESS_VERSION = 1  # bump when the offline step changes in a way that changes pixels


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the offline step; every field changes the stored pixels.

    ``size``: output side in pixels. ``aspect``: ``stretch``, ``pad`` or ``crop`` (module docs).
    ``equalize``: 8-bit histogram equalisation before resizing. ``minmax``: per-image min-max
    scaling before quantisation. ``resample``: Pillow filter used to resize (antialiased).
    """

    size: int = 224
    aspect: str = "stretch"
    equalize: bool = False
    minmax: bool = True
    resample: str = "bilinear"

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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (stored in cache identity and run records)."""
        return {**asdict(self), "size": int(self.size)}

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
    # The study's offline step: grayscale (MONOCHROME1 inverted at decoding), min-max scaled,
    # histogram-equalised, resized to the square size without keeping the aspect ratio, 8-bit.
    "paper": PreprocessConfig(
        size=224, aspect="stretch", equalize=True, minmax=True, resample="bilinear"
    ),
    "default": PreprocessConfig(),
}


def preprocess(gray: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Decoded float grayscale (H, W) in [0, 1] → uint8 (size, size), by the steps in the module docs."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0 or not np.issubdtype(gray.dtype, np.floating):
        raise DataFormatError(
            f"preprocess expects a non-empty 2-D float image, got {gray.dtype} {gray.shape}"
        )
    image = quantize(minmax_scale(gray) if cfg.minmax else np.clip(gray, 0.0, 1.0))
    if cfg.equalize:
        image = equalize_hist(image)
    return square_resize(image, cfg.size, cfg.aspect, cfg.resample)


def load_preprocessed(path: str | os.PathLike, cfg: PreprocessConfig) -> np.ndarray:
    """Decode ``path`` and run :func:`preprocess`; errors name the file."""
    from cxrprobe.data.decode import read_grayscale

    gray = read_grayscale(path)
    try:
        return preprocess(gray, cfg)
    except CxrprobeError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def minmax_scale(gray: np.ndarray) -> np.ndarray:
    """Scale to exactly [0, 1]; a constant image holds no picture and is refused (``DecodeError``)."""
    low, high = float(np.min(gray)), float(np.max(gray))
    if not np.isfinite(low) or not np.isfinite(high):
        raise DecodeError("image holds NaN or infinite values; check the file")
    if high <= low:
        raise DecodeError(
            f"image is constant (every pixel {low:.4g}); the file holds no picture: drop its row"
        )
    scaled = (gray.astype(np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def quantize(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats → uint8 by ``round(255 * g)`` (half to even)."""
    return np.rint(unit * np.float32(255.0)).astype(np.uint8)


def equalize_hist(image: np.ndarray) -> np.ndarray:
    """Histogram-equalise a uint8 image with the ``cv2.equalizeHist`` formula.

    ``lut[v] = round(255 * (cdf[v] - cdf[v_min]) / (n - cdf[v_min]))`` where ``v_min`` is the
    smallest value present; a constant image is returned unchanged.
    """
    from PIL import Image

    hist = np.asarray(Image.fromarray(np.ascontiguousarray(image)).histogram(), dtype=np.int64)
    cdf = np.cumsum(hist)
    lowest = int(np.flatnonzero(hist)[0])
    base, total = int(cdf[lowest]), int(image.size)
    if base == total:
        return image.copy()
    lut = np.rint((cdf - base) * (255.0 / (total - base)))
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    return lut[image]


def square_resize(
    image: np.ndarray, size: int, aspect: str = "stretch", resample: str = "bilinear"
) -> np.ndarray:
    """uint8 (H, W) → uint8 (size, size) by the ``aspect`` policy (module docs)."""
    from PIL import Image

    height, width = image.shape
    if aspect == "pad" and height != width:
        side = max(height, width)
        canvas = np.zeros((side, side), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        canvas[top : top + height, left : left + width] = image
        image = canvas
    elif aspect == "crop" and height != width:
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        image = image[top : top + side, left : left + side]
    elif aspect not in ASPECTS:
        raise ConfigError(f"aspect must be one of {', '.join(ASPECTS)}, got {aspect!r}")
    if image.shape == (size, size):
        return np.ascontiguousarray(image)
    filt = Image.Resampling[resample.upper()]
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((size, size), resample=filt)
    return np.asarray(resized, dtype=np.uint8)


def to_model_input(
    images: Any,
    mean: Sequence[float],
    std: Sequence[float],
    size: int | None = None,
) -> Any:
    """uint8 images (B, S, S) or (B, 1, S, S) → float32 (B, 3, size, size) on the same device.

    Scales to [0, 1], resizes (bilinear, antialiased) when ``size`` differs from S, replicates to
    3 channels and normalises with the model's own ``mean`` and ``std`` (3 values, or 1 for all).
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
