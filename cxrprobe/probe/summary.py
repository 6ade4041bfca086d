"""What a probe run reports: the grid table, the chosen value, and the printed summary.

Everything here is JSON-ready (NaN becomes None): the summary file, the predictions' provenance
and the lines the CLI prints are built from the same dictionaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrprobe.probe.knn import KnnReport
from cxrprobe.probe.linear import GridReport, LinearProbe


def per_finding(findings: Sequence[str], values: np.ndarray) -> dict[str, float | None]:
    """``{finding: value}`` with NaN as None."""
    return {f: (None if np.isnan(v) else float(v)) for f, v in zip(findings, values, strict=True)}


def mean_or_none(values: np.ndarray) -> float | None:
    """Mean over the defined (non-NaN) values, None when there is none."""
    defined = np.asarray(values)[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def linear_grid(report: GridReport, probe: LinearProbe, findings: Sequence[str]) -> dict[str, Any]:
    """The C grid as validation saw it, the chosen C (one, or per finding) and its validation AUROC."""
    grid = [
        {
            "C": float(c),
            "val_mean_auroc": mean_or_none(report.val_auroc[g]),
            "val_auroc": per_finding(findings, report.val_auroc[g]),
            "not_converged": int((report.status[g] != 0).sum()),
            "max_n_iter": int(report.n_iter[g].max()),
        }
        for g, c in enumerate(report.cs)
    ]
    chosen_val = report.val_auroc[report.chosen, np.arange(len(findings))]
    one_c = report.selection == "mean"
    chosen = {
        "selection": report.selection,
        "C": float(report.cs[report.chosen[0]]) if one_c else per_finding(findings, probe.cs),
        "val_mean_auroc": mean_or_none(chosen_val),
    }
    return {
        "grid": grid,
        "chosen": chosen,
        "refit_trainval": probe.metadata["refit_trainval"],
        "val_auroc": per_finding(findings, chosen_val),
        "val_mean_auroc": chosen["val_mean_auroc"],
    }


def knn_grid(report: KnnReport, findings: Sequence[str]) -> dict[str, Any]:
    """Validation AUROC of every k and the chosen k."""
    grid = [
        {
            "k": int(k),
            "val_mean_auroc": mean_or_none(report.val_auroc[i]),
            "val_auroc": per_finding(findings, report.val_auroc[i]),
        }
        for i, k in enumerate(report.ks)
    ]
    chosen_val = report.val_auroc[int(np.flatnonzero(report.ks == report.chosen_k)[0])]
    chosen = {
        "k": report.chosen_k,
        "temperature": report.temperature,
        "val_mean_auroc": mean_or_none(chosen_val),
    }
    return {
        "grid": grid,
        "chosen": chosen,
        "val_auroc": per_finding(findings, chosen_val),
        "val_mean_auroc": chosen["val_mean_auroc"],
    }


def format_summary(summary: dict[str, Any], top: int = 5) -> list[str]:
    """Human-readable lines: splits, the best grid values, the choice, per-finding test AUROC."""

    def num(v: float | None) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    splits = ", ".join(
        f"{role} {s['rows']}"
        + (f" (+{s['failed_excluded']} failed)" if s["failed_excluded"] else "")
        for role, s in summary["splits"].items()
    )
    lines = [
        f"{summary['method']} on {summary['features']} ({summary['feature_dim']}-d) from {summary['store']}: {splits}"
    ]
    lines += [f"note: {n}" for n in summary.get("notes", [])]
    if "grid" in summary:
        key = "C" if summary["method"] == "linear-probe" else "k"
        ranked = sorted(
            summary["grid"],
            key=lambda g: -1 if g["val_mean_auroc"] is None else -g["val_mean_auroc"],
        )
        lines.append(
            f"grid ({len(ranked)} values, best {min(top, len(ranked))} by validation mean AUROC):"
        )
        lines += [
            f"  {key}={g[key]:<10.4g} val mean AUROC {num(g['val_mean_auroc'])}"
            for g in ranked[:top]
        ]
        chosen = summary["chosen"][key]
        shown = "per finding" if isinstance(chosen, dict) else f"{chosen:.4g}"
        refit = ", refitted on train+val" if summary.get("refit_trainval") else ""
        lines.append(
            f"chosen {key}: {shown} (validation mean AUROC {num(summary['chosen']['val_mean_auroc'])}){refit}"
        )
    lines.append(f"test AUROC per finding (mean {num(summary['test_mean_auroc'])}):")
    width = max(len(f) for f in summary["test_auroc"])
    lines += [f"  {f:<{width}}  {num(v)}" for f, v in summary["test_auroc"].items()]
    lines.append(f"wrote {', '.join(summary['outputs'].values())}")
    return lines
