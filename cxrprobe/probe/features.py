"""The probe's view of its features: kept as stored, standardised one row block at a time.

An 800k x 1536 training matrix is 2.5 GB as the store holds it (float16) and 4.9 GB as float32;
a standardised float32 copy of every split would not fit a 24 GB machine next to the solver.
So the features stay in their own dtype (on the solver's device) and :class:`ScaledFeatures`
hands out standardised float32 row blocks, ``(x.float() - mean) / std`` computed exactly as a
whole-matrix standardisation would, whenever a block is used.

The memory budget (``--max-memory``, TOML ``max_memory``) bounds the working memory of the linear
solver and the kNN search on top of the features themselves; :func:`memory_budget` turns its
text (``"4GB"``, ``"512MiB"``, ``"auto"``) into bytes. ``auto`` is a quarter of the memory of the
device that computes (physical RAM, or the GPU's memory), at most 1 GiB: at 800k training rows
that still holds batches of about 170 (C, finding) pairs; a larger budget means fewer batches
(fewer passes over the features) at a higher peak.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrprobe.errors import ConfigError

AUTO_CAP = 2**30  # the automatic budget never exceeds this
_UNITS = "KMGT"
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?)B?\s*$", re.IGNORECASE)
_STAT_ELEMENTS = 1 << 24  # elements per block while computing the standardisation (float64)


def parse_memory(text: str | int) -> int:
    """Bytes in ``"4GB"``, ``"512MiB"``, ``"1.5G"`` or a plain byte count (kB = 1000, KiB = 1024)."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        value = int(text)
    else:
        match = _MEMORY.match(str(text))
        if match is None:
            raise ConfigError(f"--max-memory {text!r} is not a size; give e.g. 4GB, 512MiB or auto")
        number, unit, binary = match.groups()
        power = _UNITS.index(unit.upper()) + 1 if unit else 0
        value = int(float(number) * (1024 if binary else 1000) ** power)
    if value <= 0:
        raise ConfigError(f"--max-memory must be positive, got {text!r}")
    return value


def format_memory(count: int) -> str:
    """``count`` bytes for messages: ``"3.9 GiB"``, ``"512.0 KiB"``, ``"100 bytes"``."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if count >= 1024**power:
            return f"{count / 1024**power:.1f} {unit}"
    return f"{count} bytes"


def device_memory(device: Any = None) -> int | None:
    """Total memory of ``device``: the GPU's for CUDA, else physical RAM (None if unknown)."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_budget(value: str | int | None = "auto", device: Any = None) -> int:
    """Bytes of working memory for the solver: ``value`` parsed, or for ``auto``/None a quarter
    of the device's memory, at most :data:`AUTO_CAP` (1 GiB)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        total = device_memory(device)
        return AUTO_CAP if total is None else min(AUTO_CAP, total // 4)
    return parse_memory(value)


def _float_block(x: Any) -> Any:
    """A float32 copy of ``x`` (never a view: callers standardise it in place)."""
    import torch

    return x.to(dtype=torch.float32, copy=True)


@dataclass
class Standardizer:
    """Per-feature mean and standard deviation of the training rows (std 0 → 1)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: Any, *more: Any) -> Standardizer:
        """Statistics of the rows of ``x`` and any ``more`` parts (tensors on any device, or arrays).

        Computed in float64 over row blocks (two passes: mean, then spread), so no float copy of
        the whole matrix is made.
        """
        import torch

        parts = [torch.as_tensor(p) for p in (x, *more)]
        n = sum(p.shape[0] for p in parts)
        if n == 0:
            raise ConfigError(
                "cannot standardise features without rows; the training split is empty"
            )
        step = max(1, _STAT_ELEMENTS // max(parts[0].shape[1], 1))
        total = torch.zeros(parts[0].shape[1], dtype=torch.float64, device=parts[0].device)
        for part in parts:
            for start in range(0, part.shape[0], step):
                total += part[start : start + step].to(total.device, torch.float64).sum(0)
        mean = total / n
        spread = torch.zeros_like(total)
        for part in parts:
            for start in range(0, part.shape[0], step):
                block = part[start : start + step].to(total.device, torch.float64) - mean
                spread += (block * block).sum(0)
        std = (spread / n).sqrt()
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(mean.cpu().numpy().astype(np.float32), std.cpu().numpy().astype(np.float32))

    def apply(self, x: Any) -> Any:
        """``(x - mean) / std`` as a float32 tensor on ``x``'s device (a whole copy)."""
        import torch

        x = torch.as_tensor(x)
        out = _float_block(x)
        out.sub_(torch.as_tensor(self.mean, device=x.device))
        return out.div_(torch.as_tensor(self.std, device=x.device))


class ScaledFeatures:
    """Rows of one or more feature parts, standardised a block at a time.

    ``parts`` are (n_i, D) tensors or arrays (any float dtype, any device) taken in order as one
    matrix of ``sum(n_i)`` rows (e.g. train then validation for the train+val refit, without
    concatenating them); ``device`` (default: the first part's) moves them there once, in their
    own dtype. Without a
    ``standardizer`` the parts are used as they are (already standardised).
    """

    def __init__(
        self,
        parts: Sequence[Any],
        standardizer: Standardizer | None = None,
        device: Any = None,
    ) -> None:
        import torch

        first = torch.as_tensor(parts[0], device=device)
        self.parts = [first, *(torch.as_tensor(p, device=first.device) for p in parts[1:])]
        dims = {p.shape[1] for p in self.parts}
        if len(dims) != 1:
            raise ConfigError(f"feature parts differ in width: {sorted(dims)}")
        self.dim = dims.pop()
        self.n = sum(p.shape[0] for p in self.parts)
        self.device = self.parts[0].device
        self.standardizer = standardizer
        if standardizer is not None:
            self._mean = torch.as_tensor(standardizer.mean, device=self.device)
            self._std = torch.as_tensor(standardizer.std, device=self.device)

    @classmethod
    def of(cls, x: Any, device: Any = None) -> ScaledFeatures:
        """``x`` itself if it is a ScaledFeatures, else already-standardised features ``x``."""
        return x if isinstance(x, ScaledFeatures) else cls([x], None, device)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.dim

    def block(self, part: Any) -> Any:
        """The standardised float32 version of ``part`` (rows of one of the parts)."""
        import torch

        if self.standardizer is None:
            return part if part.dtype == torch.float32 else part.float()
        return _float_block(part).sub_(self._mean).div_(self._std)

    def blocks(self, rows: int | None = None) -> Iterator[tuple[slice, Any]]:
        """``(row slice, standardised float32 block)`` of at most ``rows`` rows, in order."""
        rows = max(1, rows or self.n)
        offset = 0
        for part in self.parts:
            for start in range(0, part.shape[0], rows):
                chunk = part[start : start + rows]
                yield slice(offset + start, offset + start + len(chunk)), self.block(chunk)
            offset += part.shape[0]

    def materialize(self) -> Any:
        """The whole standardised matrix as one float32 tensor (for backends that need it)."""
        import torch

        out = torch.empty(self.n, self.dim, dtype=torch.float32, device=self.device)
        for rows, block in self.blocks(max(1, _STAT_ELEMENTS // max(self.dim, 1))):
            out[rows] = block
        return out

    def to(self, device: Any) -> ScaledFeatures:
        """The same rows on ``device`` (itself when already there)."""
        import torch

        if torch.device(device) == self.device:
            return self
        return ScaledFeatures(self.parts, self.standardizer, device)
