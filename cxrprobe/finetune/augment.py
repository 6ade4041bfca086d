"""Batch augmentations for fine-tuning, run on the batch's device: horizontal flip and rotation.

Both recipes use a random horizontal flip (p = 0.5) and a random rotation of up to ±7°, resampled
bilinearly (``modern``) or by nearest neighbour (``study``: torchvision's ``RandomRotation``
default). Both act on whole normalised batches ``(B, C, S, S)`` on the GPU (or CPU), so the data
loader only moves uint8 pixels. Each image's draws are a hash of (seed, epoch, row number)
(:func:`row_uniforms`), not a stream: they do not depend on the process or batch the image lands
in, so N processes draw exactly what one process draws, and a resumed run what the uninterrupted
run would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cxrprobe.errors import ConfigError
from cxrprobe.stats.resample import GAMMA, mix_numpy

ROTATE_MODES = ("bilinear", "nearest")
_GOLDEN = np.uint64(GAMMA)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 (as :mod:`cxrprobe.stats.resample` uses it) on uint64 ``x``, wrapping: a hash."""
    return mix_numpy(x + _GOLDEN)


def row_uniforms(
    seed: int, epoch: int, rows: np.ndarray | torch.Tensor, count: int = 2
) -> np.ndarray:
    """(B, count) float64 uniforms in [0, 1) for row numbers ``rows`` (B,) in ``epoch``.

    Draw ``k`` of row ``r`` is ``splitmix64(splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ r)
    + k * golden)`` with its top 53 bits as the fraction: a function of (seed, epoch, row, k)
    alone, so it is the same whichever process, batch or invocation handles the row.
    """
    rows = np.asarray(rows, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
    key = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(epoch % 2**64))
    per_row = _splitmix64(key ^ rows)
    draws = _splitmix64(per_row + np.arange(count, dtype=np.uint64) * _GOLDEN)
    return (draws >> np.uint64(11)).astype(np.float64) * 2.0**-53


def hflip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images of ``images`` (B, C, H, W) where ``mask`` (B,) bool is True."""
    if images.shape[0] == 0:
        return images
    flipped = images.flip(-1)
    return torch.where(mask.to(images.device).view(-1, 1, 1, 1), flipped, images)


def rotate(
    images: torch.Tensor,
    degrees: torch.Tensor,
    fill: float | Sequence[float] | torch.Tensor = 0.0,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Rotate each image of ``images`` (B, C, H, W) counter-clockwise by ``degrees`` (B,).

    ``mode`` (``bilinear`` or ``nearest``) resamples about the image centre; pixels rotated in from outside the image take
    ``fill`` (a scalar or one value per channel, in the images' units: the normalised value of a
    black pixel keeps the border black). An angle of 0 returns the input unchanged.
    """
    if mode not in ROTATE_MODES:
        raise ConfigError(f"--rotate-mode must be one of {', '.join(ROTATE_MODES)}, got {mode!r}")
    if images.shape[0] == 0:
        return images
    batch, channels, height, width = images.shape
    radians = degrees.to(device=images.device, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    # affine_grid maps output to input coordinates in [-1, 1]; correct for non-square aspect.
    aspect = width / height
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin / aspect
    theta[:, 1, 0] = sin * aspect
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)
    fill_t = torch.as_tensor(fill, device=images.device, dtype=images.dtype).reshape(1, -1, 1, 1)
    shifted = images - fill_t
    rotated = F.grid_sample(
        shifted.float(), grid, mode=mode, padding_mode="zeros", align_corners=False
    ).to(images.dtype)
    out = rotated + fill_t
    keep = (degrees == 0).to(images.device).view(-1, 1, 1, 1)
    return torch.where(keep, images, out)


def random_flip_rotate(
    images: torch.Tensor,
    draws: np.ndarray,
    flip_p: float = 0.5,
    max_degrees: float = 7.0,
    fill: float | Sequence[float] | torch.Tensor = 0.0,
    mode: str = "bilinear",
) -> torch.Tensor:
    """The training augmentation: flip with probability ``flip_p``, rotate by U(-max, +max) degrees
    with ``mode`` resampling.

    ``draws`` (B, 2) are each image's uniforms in [0, 1) (:func:`row_uniforms`): the first decides
    the flip (``< flip_p``), the second the angle; they are made on the CPU, so results do not
    depend on the device's own random stream.
    """
    draws = torch.as_tensor(draws, dtype=torch.float64)
    flips = draws[:, 0] < flip_p
    angles = ((draws[:, 1] * 2.0 - 1.0) * max_degrees).float()
    if flip_p > 0:
        images = hflip(images, flips)
    if max_degrees > 0:
        images = rotate(images, angles, fill, mode)
    return images
