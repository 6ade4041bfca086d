"""Coverage of ECE bootstrap intervals: percentile against basic (the rule reports use).

Binned ECE is biased upward and a resample adds that bias again, so a percentile interval sits
above the estimate. This simulates data sets of ``m`` rows with scores p ~ Beta(2, 5) and
outcomes drawn from a true probability g(p) (calibrated, mildly and strongly over-confident),
computes the equal-mass 10-bin ECE and its 95 % interval from multinomial (row) resamples, and
counts how often each interval covers the population's binned ECE. It is an independent numpy
computation of the rule in ``docs/stats.md`` ("Calibration"), not a call into cxrprobe.
Prints one JSON line per (m, model). Seeded: the figures in docs/stats.md come from

    python benchmarks/bench_ece_coverage.py            # about 20 s on one core
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np

BINS = 10
MODELS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "calibrated": lambda p: p,
    "over-confident x1.3": lambda p: np.clip(p * 1.3, 0, 1),
    "over-confident x1.8": lambda p: np.clip(p * 1.8, 0, 1),
}


def ece(y: np.ndarray, p: np.ndarray, bins: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """ECE of each weight row of ``w`` (resample counts), equal-mass bins fixed on the data."""
    return sum(np.abs((w[:, b] * (y[b] - p[b])).sum(1)) for b in bins) / w.sum(1)


def coverage(
    rng: np.random.Generator, m: int, g: Callable, reps: int, resamples: int
) -> dict[str, float]:
    population = np.sort(rng.beta(2, 5, 400_000))
    true = float(np.mean([abs((g(e) - e).mean()) for e in np.array_split(population, BINS)]))
    hits = {"percentile": 0, "basic": 0}
    widths = {"percentile": 0.0, "basic": 0.0}
    estimates = []
    for _ in range(reps):
        p = rng.beta(2, 5, m)
        y = (rng.random(m) < g(p)).astype(float)
        bins = np.array_split(np.argsort(p, kind="stable"), BINS)
        theta = ece(y, p, bins, np.ones((1, m)))[0]
        estimates.append(theta)
        counts = rng.multinomial(m, np.full(m, 1 / m), size=resamples).astype(float)
        low, high = np.percentile(ece(y, p, bins, counts), [2.5, 97.5])
        intervals = {
            "percentile": (low, high),
            "basic": (max(0.0, 2 * theta - high), max(0.0, 2 * theta - low)),
        }
        for name, (lo, hi) in intervals.items():
            hits[name] += lo <= true <= hi
            widths[name] += hi - lo
    return {
        "true_ece": round(true, 4),
        "mean_estimate": round(float(np.mean(estimates)), 4),
        **{f"coverage_{k}": round(v / reps, 3) for k, v in hits.items()},
        **{f"width_{k}": round(v / reps, 4) for k, v in widths.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="134,1000", help="comma list of data-set sizes")
    parser.add_argument("--reps", type=int, default=300, help="simulated data sets per case")
    parser.add_argument("--resamples", type=int, default=400, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for m in (int(v) for v in args.rows.split(",")):
        for name, g in MODELS.items():
            result = coverage(rng, m, g, args.reps, args.resamples)
            print(json.dumps({"benchmark": "ece_coverage", "rows": m, "model": name, **result}))


if __name__ == "__main__":
    main()
