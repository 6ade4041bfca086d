"""The study's table: every comparison of a run folder collected into one report.

Rows are (dataset, initialisation, method) cells with their mean AUROC and bootstrap CI; the
comparisons list the mean-AUROC difference with its CI and bootstrap p-value, corrected with
Benjamini–Hochberg across every comparison in the study (one family), plus how many labels differ
after each comparison's own per-label FDR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.errors import InputFileError
from cxrprobe.provenance import atomic_write_json, atomic_write_text, now_utc

REPORT_FORMAT = "cxrprobe.study-report"


def find_comparisons(run_dir: str | os.PathLike) -> list[Path]:
    """Every comparison report (``*/compare/*.json``) under a study's run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputFileError(
            f"{run_dir}: run folder not found; give the 'out' folder of a study or demo"
        )
    found = sorted(run_dir.glob("*/compare/*.json"))
    if not found:
        raise InputFileError(
            f"{run_dir}: no comparison reports (*/compare/*.json); run `cxrprobe study CONFIG` first"
        )
    return found


def collect_study(run_dir: str | os.PathLike, alpha: float = 0.05) -> dict[str, Any]:
    """Cells and comparisons of a run folder, with study-wide FDR on the mean-AUROC p-values."""
    from cxrprobe.stats.multiple import benjamini_hochberg

    cells: dict[tuple[str, str], dict[str, Any]] = {}
    rows = []
    for path in find_comparisons(run_dir):
        report = json.loads(path.read_text())
        dataset = report.get("cells", {}).get("dataset", path.parent.parent.name)
        names = report.get("cells", {})
        mean = report["mean"]
        for side in ("a", "b"):
            cell = names.get(side, report["models"][side]["path"])
            cells[(dataset, cell)] = {
                "dataset": dataset,
                "init": cell.split("/")[0],
                "method": cell.split("/")[-1],
                "mean_auroc": mean[f"auroc_{side}"],
                "ci": mean[f"auroc_{side}_ci"],
                "n_labels": mean.get("n_labels"),
                "predictions": report["models"][side]["path"],
            }
        labels = [r for r in report["labels"] if r.get("p_fdr") is not None]
        rows.append(
            {
                "dataset": dataset,
                "a": names.get("a", report["models"]["a"]["path"]),
                "b": names.get("b", report["models"]["b"]["path"]),
                "delta": mean["delta"],
                "delta_ci": mean["delta_ci"],
                "p_bootstrap": mean["p_bootstrap"],
                "labels_differing": sum(r["p_fdr"] < alpha for r in labels),
                "labels_tested": len(labels),
                "resamples": report["bootstrap"]["resamples"],
                "report": str(path),
            }
        )
    p = np.array(
        [np.nan if r["p_bootstrap"] is None else r["p_bootstrap"] for r in rows], dtype=float
    )
    for row, q in zip(rows, benjamini_hochberg(p), strict=True):
        row["p_fdr_study"] = None if np.isnan(q) else float(q)
    return {
        "format": REPORT_FORMAT,
        "run_dir": str(Path(run_dir).resolve()),
        "alpha": alpha,
        "fdr_family": "all mean-AUROC comparisons in the study (Benjamini-Hochberg)",
        "cells": sorted(cells.values(), key=lambda c: (c["dataset"], c["method"], c["init"])),
        "comparisons": rows,
        "time": now_utc(),
    }


def _fmt(value: float | None, ci: list | None = None, signed: bool = False) -> str:
    if value is None:
        return "undefined"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if ci and None not in ci:
        lo, hi = ci
        text += f" [{lo:+.3f}, {hi:+.3f}]" if signed else f" [{lo:.3f}, {hi:.3f}]"
    return text


def _p(value: float | None) -> str:
    return "–" if value is None else (f"{value:.3g}" if value >= 1e-3 else "<0.001")


def study_markdown(study: dict[str, Any]) -> str:
    """The study table as markdown: cells, then comparisons with study-wide FDR."""
    lines = [
        "## Mean AUROC per dataset, initialisation and method",
        "",
        "| dataset | init | method | mean AUROC [95% CI] | labels |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['dataset']} | {c['init']} | {c['method']} | {_fmt(c['mean_auroc'], c['ci'])} | "
        f"{c['n_labels']} |"
        for c in study["cells"]
    ]
    lines += [
        "",
        "## Comparisons (B − A)",
        "",
        "| dataset | A | B | Δ mean AUROC [95% CI] | p bootstrap | p FDR (study) | labels differing |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['dataset']} | {r['a']} | {r['b']} | {_fmt(r['delta'], r['delta_ci'], signed=True)} | "
        f"{_p(r['p_bootstrap'])} | {_p(r['p_fdr_study'])} | {r['labels_differing']} of "
        f"{r['labels_tested']} |"
        for r in study["comparisons"]
    ]
    lines += [
        "",
        f"FDR family: {study['fdr_family']}; alpha {study['alpha']}. Per-label results are in "
        "each comparison's report.",
    ]
    return "\n".join(lines) + "\n"


def study_figure(study: dict[str, Any], path: str | os.PathLike) -> Path:
    """Mean AUROC with CIs for every cell, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({c["dataset"] for c in study["cells"]})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        cells = [
            c for c in study["cells"] if c["dataset"] == dataset and c["mean_auroc"] is not None
        ]
        y = np.arange(len(cells))
        x = np.array([c["mean_auroc"] for c in cells])
        lo = np.array([c["ci"][0] if c["ci"][0] is not None else np.nan for c in cells])
        hi = np.array([c["ci"][1] if c["ci"][1] is not None else np.nan for c in cells])
        ax.errorbar(x, y, xerr=[x - lo, hi - x], fmt="o", capsize=3)
        ax.set_yticks(y, [f"{c['init']} · {c['method']}" for c in cells])
        ax.set_xlabel("mean AUROC (95% CI)")
        ax.set_title(dataset)
        ax.invert_yaxis()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_study_report(run_dir: str | os.PathLike, alpha: float = 0.05) -> dict[str, Any]:
    """Collect a run folder and write ``report.json``, ``report.md`` and ``report.png`` into it."""
    run_dir = Path(run_dir)
    study = collect_study(run_dir, alpha)
    atomic_write_json(run_dir / "report.json", study)
    atomic_write_text(run_dir / "report.md", study_markdown(study))
    study_figure(study, run_dir / "report.png")
    study["outputs"] = {
        name: str(run_dir / name) for name in ("report.json", "report.md", "report.png")
    }
    return study
