"""Label families: which labels of a population are averaged and which are tested.

Documented in docs/stats.md. A label is *defined* when the population has positive and negative
rows; *rare* when one class has fewer than ``min_positives`` rows; *constant* when a model gives
every annotated row the same score (a probe without positive training rows does: AUROC 0.5 by
construction). The mean AUROC is over defined, non-constant labels; the FDR family is those,
less the rare ones unless ``include_rare``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrprobe.stats.auroc import as_table, undefined_reason
from cxrprobe.stats.options import BootstrapOptions


@dataclass(frozen=True)
class Families:
    """Per-label counts and which labels enter the mean and the FDR family (all (L,))."""

    n_positive: np.ndarray
    n_negative: np.ndarray
    defined: np.ndarray
    reasons: list[str | None]
    rare: np.ndarray
    in_mean: np.ndarray
    in_fdr: np.ndarray


def constant_scores(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(L,) bool: labels whose annotated rows all have the same score (at least two rows)."""
    t, s = as_table(targets, scores)
    out = np.zeros(t.shape[1], dtype=bool)
    for col in range(t.shape[1]):
        values = s[~np.isnan(t[:, col]), col]
        out[col] = values.size > 1 and bool(np.all(values == values[0]))
    return out


def families(targets: np.ndarray, constant: np.ndarray, options: BootstrapOptions) -> Families:
    """Counts, definedness, rare flags and the mean / FDR families of one population."""
    t = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    n_pos, n_neg = (t == 1).sum(axis=0), (t == 0).sum(axis=0)
    reasons = [undefined_reason(int(p), int(q)) for p, q in zip(n_pos, n_neg, strict=True)]
    defined = np.array([r is None for r in reasons])
    rare = defined & (np.minimum(n_pos, n_neg) < options.min_positives)
    in_mean = defined & ~constant
    in_fdr = in_mean & (~rare | options.include_rare)
    return Families(n_pos, n_neg, defined, reasons, rare, in_mean, in_fdr)
