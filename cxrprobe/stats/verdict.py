"""The comparison's one-sentence verdict, its warnings, and how p-values are printed.

Everything that decides is two-sided: the mean row's two-sided bootstrap p-value decides "X is
better", and the labels that differ are those whose Benjamini-Hochberg adjusted two-sided
bootstrap p-value is below alpha (DeLong's count is given alongside). The study's one-sided p
is quoted, never used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cxrprobe.stats.intervals import smallest_p


def format_p(value: float | None, resamples: int | None = None) -> str:
    """A p-value for tables; a share of 0 (the study's p) shows as below 1/B."""
    if value is None or np.isnan(value):
        return "n/a"
    if resamples and value == 0:
        return f"<{1 / resamples:.2g}"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def fewest_resamples(alpha: float) -> int:
    """The smallest B whose smallest two-sided bootstrap p-value, 2 / (B + 1), is <= alpha.

    Examples
    --------
    >>> fewest_resamples(0.05)
    39
    """
    return math.ceil(2 / alpha - 1 - 1e-9)


def model_label(report: dict[str, Any], key: str) -> str:
    """``A (name)`` / ``B (name)``: the letter and what it stands for."""
    name = report.get("names", {}).get(key)
    return f"{key.upper()} ({name})" if name else key.upper()


def _listed(labels: list[str]) -> str:
    return ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")


def warnings_of(report: dict[str, Any]) -> list[str]:
    """Problems a reader must see: too few resamples to decide, rare labels, constant scores."""
    out = []
    boot, rows = report["bootstrap"], report["labels"]
    if report["kind"] == "compare" and smallest_p(boot["resamples"]) > boot["alpha"]:
        out.append(
            f"with B = {boot['resamples']} resamples the smallest two-sided bootstrap p-value is "
            f"{smallest_p(boot['resamples']):.3g} > alpha {boot['alpha']:g}: no difference can be "
            f"significant; use -B {fewest_resamples(boot['alpha'])} or more"
        )
    families = report["label_families"]
    rare = [r["label"] for r in rows if r["rare"]]
    if rare:
        where = (
            (
                "kept in the FDR family (--include-rare)"
                if families["include_rare"]
                else "left out of the FDR family (--include-rare adds them)"
            )
            if report["kind"] == "compare"
            else "their AUROC intervals are unreliable"
        )
        out.append(
            f"{len(rare)} rare label(s) with fewer than {families['min_positives']} positive or "
            f"negative rows: {_listed(rare)}; {where}"
        )
    constant = [r["label"] for r in rows if r["constant_scores"]]
    if constant:
        out.append(
            f"{len(constant)} label(s) with constant scores (AUROC 0.5 by construction, e.g. no "
            f"positive training rows): {_listed(constant)}; left out of the mean"
        )
    return out


def verdict(report: dict[str, Any]) -> str:
    """One sentence: which model is better on the mean AUROC (two-sided bootstrap test), and how
    many labels differ after FDR (two-sided bootstrap; DeLong alongside)."""
    mean, boot = report["mean"], report["bootstrap"]
    alpha, resamples = boot["alpha"], boot["resamples"]
    a, b = model_label(report, "a"), model_label(report, "b")
    if mean["delta"] is None or np.isnan(mean["delta"]):
        return f"No label has a defined AUROC in both {a} and {b}; nothing to compare."
    lo, hi = mean["delta_ci"]
    tested = [r for r in report["labels"] if r.get("in_fdr_family")]
    hits = sum(r["p_fdr"] <= alpha for r in tested)
    delong = sum(r["p_delong_fdr"] <= alpha for r in tested if not np.isnan(r["p_delong_fdr"]))
    shown = (
        f"mean AUROC difference B - A = {mean['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}], two-sided "
        f"bootstrap p = {format_p(mean['p_bootstrap'])} (alpha {alpha:g}; study p, one-sided = "
        f"{format_p(mean['p_study_one_sided'], resamples)})"
    )
    labels = f"{hits} of {len(tested)} labels differ after FDR (q <= {alpha:g}; DeLong: {delong})"
    left_out = {
        why: [r["label"] for r in report["labels"] if not r.get("in_fdr_family") and test(r)]
        for why, test in (
            ("undefined", lambda r: r["reason"] is not None),
            ("constant scores", lambda r: r["reason"] is None and r["constant_scores"]),
            ("rare", lambda r: r["reason"] is None and not r["constant_scores"] and r["rare"]),
        )
    }
    if any(left_out.values()):
        listed = "; ".join(f"{why}: {_listed(names)}" for why, names in left_out.items() if names)
        labels += f" (not in the FDR family: {listed})"
    if smallest_p(resamples) > alpha:
        return (
            f"No verdict between {a} and {b}: {resamples} resamples cannot reach alpha "
            f"{alpha:g} (rerun with -B {fewest_resamples(alpha)} or more); {shown}."
        )
    if mean["p_bootstrap"] <= alpha:
        better, worse = (b, a) if mean["delta"] > 0 else (a, b)
        return f"{better} is better than {worse}: {shown}; {labels}."
    return f"No significant difference between {a} and {b}: {shown}; {labels}."
