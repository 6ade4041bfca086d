"""How a comparison or evaluation resamples and judges: the options every statistic reads."""

from __future__ import annotations

from dataclasses import dataclass

from cxrprobe.errors import ConfigError
from cxrprobe.stats.calibration import DEFAULT_BINS


@dataclass
class BootstrapOptions:
    """How to resample and judge: B, seed, rows or patients, device, CI method and level, the
    rare-label minimum, whether rare labels join the FDR family, and ECE bins."""

    resamples: int = 1000
    seed: int = 0
    cluster: str = "none"
    device: str = "auto"
    ci: str = "percentile"
    alpha: float = 0.05
    chunk_size: int | None = None
    min_positives: int = 10
    include_rare: bool = False
    ece_bins: int = DEFAULT_BINS

    def check(self) -> None:
        if self.cluster not in ("none", "patient"):
            raise ConfigError(f"--cluster {self.cluster!r} must be 'none' or 'patient'")
        if self.ci not in ("percentile", "bca"):
            raise ConfigError(f"--ci {self.ci!r} must be 'percentile' or 'bca'")
        if self.ci == "bca" and self.cluster == "patient":
            raise ConfigError(
                "--ci bca needs a row jackknife and is not available with "
                "--cluster patient; use --ci percentile"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"--alpha must lie strictly between 0 and 1 (got {self.alpha})")
        if self.min_positives < 0:
            raise ConfigError(f"--min-positives must be 0 or more (got {self.min_positives})")
        if self.ece_bins < 1:
            raise ConfigError(f"--ece-bins must be at least 1 (got {self.ece_bins})")
