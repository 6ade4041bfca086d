"""Seeded bootstrap resamples from a counter-based generator: the same draws on every device.

Resample ``b`` draws ``n_units`` units (rows, or patients) with replacement. Draw ``i`` of
resample ``b`` is a pure function of ``(seed, b, i)``, the SplitMix64 generator (Steele, Lea &
Flood 2014) evaluated at counter ``b * 2**32 + i``::

    key  = mix(seed + GAMMA)
    z    = mix(key + (b * 2**32 + i + 1) * GAMMA)          (all mod 2**64)
    draw = floor(((z >> 11) * 2**-53) * n_units)           (float64, < n_units)
    mix(z): z = (z ^ z >> 30) * M1; z = (z ^ z >> 27) * M2; z ^ z >> 31

Nothing depends on the order in which draws are made, so a resample is the same in any
chunking, and numpy (CPU) and torch (CUDA, or CPU in tests) compute bit-identical draws with
the same 64-bit integer arithmetic (torch's int64 wraps like numpy's uint64; its shifts are made
logical by masking) and one correctly rounded float64 product. The GPU therefore generates its
own draws: nothing is generated on the CPU and copied over. The mapping to ``[0, n_units)`` is
uniform up to ``n_units / 2**53`` and never reaches ``n_units``: the largest u is 1 - 2**-53, and
(1 - 2**-53) * n rounds to a float below n (exactly representable when n is a power of 2, else
more than half a unit in the last place below n).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxrprobe.errors import ConfigError

if TYPE_CHECKING:
    import torch

GAMMA = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1
RECIPE = (
    "splitmix64 counter-based: draw(b, i) = floor(u * units), u = (mix(key + (b * 2**32 + i + 1)"
    " * 0x9E3779B97F4A7C15) >> 11) * 2**-53, key = mix(seed + 0x9E3779B97F4A7C15); "
    "row counts = draw counts of each row's unit"
)


def _mix_int(z: int) -> int:
    """SplitMix64's finaliser on a Python int (for the key)."""
    z = ((z ^ (z >> 30)) * M1) & _MASK
    z = ((z ^ (z >> 27)) * M2) & _MASK
    return z ^ (z >> 31)


def mix_numpy(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array, in place (wrapping arithmetic); returns ``z``."""
    tmp = np.empty_like(z)
    for shift, mult in ((30, M1), (27, M2), (31, None)):
        np.right_shift(z, np.uint64(shift), out=tmp)
        z ^= tmp
        if mult is not None:
            z *= np.uint64(mult)
    return z


def _key(seed: int) -> int:
    return _mix_int((seed + GAMMA) & _MASK)


def _signed(value: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``value``."""
    return value - (1 << 64) if value >= 1 << 63 else value


def draws_numpy(seed: int, start: int, stop: int, n_units: int) -> np.ndarray:
    """Draws of resamples ``start:stop``: (stop - start, n_units) int64 unit indices.

    Examples
    --------
    >>> draws_numpy(0, 0, 2, 5).shape
    (2, 5)
    >>> bool((draws_numpy(3, 1, 3, 10) == draws_numpy(3, 0, 3, 10)[1:]).all())
    True
    """
    # key + (b * 2**32 + i + 1) * GAMMA = (key + (b * 2**32 + 1) * GAMMA) + i * GAMMA: one pass
    first = [(_key(seed) + ((b << 32) + 1) * GAMMA) & _MASK for b in range(start, stop)]
    step = np.arange(n_units, dtype=np.uint64) * np.uint64(GAMMA)
    z = mix_numpy(np.array(first, dtype=np.uint64)[:, None] + step[None, :])
    z >>= np.uint64(11)
    u = z.astype(np.float64)
    u *= n_units * 2.0**-53
    return u.astype(np.int64)  # < n_units: u * n_units rounds below n_units (module docstring)


def draws_torch(
    seed: int, start: int, stop: int, n_units: int, device: torch.device
) -> torch.Tensor:
    """:func:`draws_numpy` computed by torch on ``device`` (bit-identical), int64 tensor."""
    import torch

    def shift_right(z: torch.Tensor, k: int) -> torch.Tensor:  # logical, not arithmetic
        return (z >> k) & ((1 << (64 - k)) - 1)

    counter = torch.arange(start, stop, dtype=torch.int64, device=device)[:, None] << 32
    z = counter | torch.arange(n_units, dtype=torch.int64, device=device)[None, :]
    z += 1
    z *= _signed(GAMMA)
    z += _signed(_key(seed))
    for shift, mult in ((30, M1), (27, M2), (31, None)):
        z ^= shift_right(z, shift)
        if mult is not None:
            z *= _signed(mult)
    u = shift_right(z, 11).to(torch.float64)
    u *= n_units * 2.0**-53
    return u.to(torch.int64)


@dataclass(frozen=True)
class Resampler:
    """Seeded bootstrap resamples of ``n_rows`` rows, or of the units (patients) they belong to.

    ``unit_of_row`` (n,) maps each row to its unit; None resamples rows themselves. Resample b
    draws ``n_units`` units with replacement (see the module docstring for the generator); a
    row's count is the number of times its unit was drawn.
    """

    n_rows: int
    n_resamples: int
    seed: int = 0
    unit_of_row: np.ndarray | None = None

    @property
    def scheme(self) -> str:
        return "rows" if self.unit_of_row is None else "patients"

    @property
    def n_units(self) -> int:
        return self.n_rows if self.unit_of_row is None else int(self.unit_of_row.max()) + 1

    @property
    def largest_total(self) -> int:
        """The largest number of rows a resample can hold (bounds every sum of counts)."""
        if self.unit_of_row is None:
            return self.n_rows
        return self.n_units * int(np.bincount(self.unit_of_row).max())

    def draws(self, start: int, stop: int) -> np.ndarray:
        """Unit draws of resamples ``start:stop``, (stop - start, n_units) int64."""
        return draws_numpy(self.seed, start, stop, self.n_units)

    def counts(self, start: int, stop: int) -> np.ndarray:
        """Row counts of resamples ``start:stop``, shape (stop - start, n_rows) int64.

        Examples
        --------
        >>> r = make_resampler(5, n_resamples=3, seed=1)
        >>> r.counts(0, 3).sum(axis=1).tolist()
        [5, 5, 5]
        """
        draws = self.draws(start, stop)
        width, units = draws.shape
        draws += np.arange(width, dtype=np.int64)[:, None] * units
        unit_counts = np.bincount(draws.ravel(), minlength=width * units).reshape(width, units)
        return unit_counts if self.unit_of_row is None else unit_counts[:, self.unit_of_row]

    def indices(self, b: int) -> np.ndarray:
        """Row indices of resample ``b`` (each row as often as drawn), for slow references."""
        if self.unit_of_row is None:
            return self.draws(b, b + 1)[0]
        return np.repeat(np.arange(self.n_rows), self.counts(b, b + 1)[0])

    def describe(self) -> dict:
        return {
            "scheme": self.scheme,
            "resamples": self.n_resamples,
            "seed": self.seed,
            "units": self.n_units,
            "rows": self.n_rows,
            "rng": RECIPE,
        }


def make_resampler(
    n_rows: int, n_resamples: int = 1000, seed: int = 0, clusters: Sequence[str] | None = None
) -> Resampler:
    """Resample rows, or whole clusters (patients) when ``clusters`` (n,) names each row's."""
    if n_resamples < 1:
        raise ConfigError(f"--resamples must be at least 1 (got {n_resamples})")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"--seed must be an integer in [0, 2**63) (got {seed})")
    units = None
    if clusters is not None:
        _, units = np.unique(np.asarray(clusters), return_inverse=True)
    if (n_rows if units is None else int(units.max()) + 1) >= 2**32:
        raise ConfigError(f"{n_rows} rows: the resampler draws at most 2**32 units")
    return Resampler(n_rows, n_resamples, seed, units)
