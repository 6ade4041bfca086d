"""The study's table: every comparison of a run folder collected into one report.

Rows are (dataset, initialisation, method) cells with their mean AUROC and bootstrap CI; the
comparisons list the mean-AUROC difference B − A with its CI and two-sided bootstrap p-value,
corrected with Benjamini–Hochberg across every comparison in the study (one family), plus how
many labels differ after each comparison's own per-label FDR. The study's one-sided p is shown
beside it to reproduce the paper; it decides nothing.

A comparison whose predictions (or validation) files are missing or no longer have the sha256 it
recorded was computed from stale inputs: it is left out of the tables, the FDR family and the
figure, and listed under "Not shown" with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.errors import DataFormatError, InputFileError
from cxrprobe.provenance import atomic_write_json, atomic_write_text, now_utc, sha256_file
from cxrprobe.workflow.moves import Move

REPORT_FORMAT = "cxrprobe.study-report"
_COMPARISON_VERSION = 2  # comparison reports whose p_bootstrap is two-sided


def find_comparisons(run_dir: str | os.PathLike) -> list[Path]:
    """Every comparison report (``*/compare/*.json``, not the ``*.run.json`` records beside
    them) under a study's run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputFileError(
            f"{run_dir}: run folder not found; give the 'out' folder of a study or demo"
        )
    found = sorted(p for p in run_dir.glob("*/compare/*.json") if not p.name.endswith(".run.json"))
    if not found:
        raise InputFileError(
            f"{run_dir}: no comparison reports (*/compare/*.json); run `cxrprobe study CONFIG` first"
        )
    return found


def collect_study(run_dir: str | os.PathLike, alpha: float = 0.05) -> dict[str, Any]:
    """Cells and comparisons of a run folder, with study-wide FDR on the mean-AUROC p-values;
    comparisons whose input files changed are listed under ``stale`` instead."""
    from cxrprobe.stats.multiple import benjamini_hochberg

    cells: dict[tuple[str, str], dict[str, Any]] = {}
    rows, stale, hashes = [], [], {}
    for path in find_comparisons(run_dir):
        report = json.loads(path.read_text())
        if report.get("version", 1) < _COMPARISON_VERSION:
            raise DataFormatError(
                f"{path}: comparison report version {report.get('version', 1)} has the study's "
                "one-sided p where a two-sided one is needed; delete it and its step record "
                "(.steps/*compare*) and run the study again to redo the comparison"
            )
        dataset = report.get("cells", {}).get("dataset", path.parent.parent.name)
        names = report.get("cells", {})
        changed = _changed_inputs(report, path, hashes)
        if changed:
            stale.append(
                {
                    "dataset": dataset,
                    "a": names.get("a", report["models"]["a"]["path"]),
                    "b": names.get("b", report["models"]["b"]["path"]),
                    "why": "; ".join(changed),
                    "report": str(path),
                }
            )
            continue
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
                "predictions": str(_resolve(Path(report["models"][side]["path"]), path)),
            }
        labels = [r for r in report["labels"] if r.get("in_fdr_family")]
        rows.append(
            {
                "dataset": dataset,
                "a": names.get("a", report["models"]["a"]["path"]),
                "b": names.get("b", report["models"]["b"]["path"]),
                "delta": mean["delta"],
                "delta_ci": mean["delta_ci"],
                "p_bootstrap": mean["p_bootstrap"],
                "p_study_one_sided": mean["p_study_one_sided"],
                "labels_differing": sum(r["p_fdr"] <= alpha for r in labels),
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
        "fdr_family": "all mean-AUROC comparisons in the study (Benjamini-Hochberg of the "
        "two-sided bootstrap p-values)",
        "cells": sorted(cells.values(), key=lambda c: (c["dataset"], c["method"], c["init"])),
        "comparisons": rows,
        "stale": stale,
        "time": now_utc(),
    }


def _changed_inputs(report: dict[str, Any], path: Path, hashes: dict[Path, str]) -> list[str]:
    """Why a comparison is stale: its predictions or validation files missing or changed since
    it recorded their sha256 (``hashes`` caches the files' sha256 across comparisons)."""
    recorded = list(report["models"].values()) + [
        v for v in (report.get("validation") or {}).values() if v is not None
    ]
    problems = []
    for entry in recorded:
        file = _resolve(Path(entry["path"]), path)
        if not file.is_file():
            problems.append(f"{entry['path']} is missing")
            continue
        if file not in hashes:
            hashes[file] = sha256_file(file)
        if hashes[file] != entry["sha256"]:
            problems.append(f"{entry['path']} changed after the comparison was computed")
    return problems


def _resolve(file: Path, report: Path) -> Path:
    """A recorded input path: a relative one against the folder the comparison ran in (from its
    run record, else the current folder), and moved with the comparison where the folder holding
    both was moved or copied since (:class:`~cxrprobe.workflow.moves.Move`)."""
    try:
        record = json.loads(report.with_name(report.name + ".run.json").read_text())
        cwd, out = record["cwd"], record["config"]["out"]
    except (OSError, ValueError, KeyError, TypeError):
        return file
    move = Move.between(os.path.join(cwd, out), report)
    return Path(move.forward(os.path.join(cwd, file)))


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
        "| dataset | A | B | Δ mean AUROC B − A [95% CI] | p bootstrap (2-sided) | p FDR (study) "
        "| labels differing | study p (1-sided) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['dataset']} | {r['a']} | {r['b']} | {_fmt(r['delta'], r['delta_ci'], signed=True)} | "
        f"{_p(r['p_bootstrap'])} | {_p(r['p_fdr_study'])} | {r['labels_differing']} of "
        f"{r['labels_tested']} | {_p(r['p_study_one_sided'])} |"
        for r in study["comparisons"]
    ]
    lines += [
        "",
        f"FDR family: {study['fdr_family']}; alpha {study['alpha']}. The study's one-sided p is "
        "shown to reproduce the paper and decides nothing. Per-label results are in each "
        "comparison's report.",
    ]
    if study.get("stale"):
        lines += [
            "",
            "## Not shown: comparisons computed from files that changed since",
            "",
            "| dataset | A | B | why |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r['dataset']} | {r['a']} | {r['b']} | {r['why']} |" for r in study["stale"]]
        lines += [
            "",
            "Their numbers are left out of every table above and of the FDR family; run the "
            "study again (`cxrprobe study CONFIG`) to redo them.",
        ]
    from cxrprobe.workflow.curve_report import curve_markdown

    return "\n".join(lines) + "\n" + curve_markdown(study.get("curves", []))


def study_figure(study: dict[str, Any], path: str | os.PathLike) -> Path:
    """Mean AUROC with CIs for every cell, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({c["dataset"] for c in study["cells"]})
    panels = max(len(datasets), 1)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.2), squeeze=False)
    if not datasets:  # every comparison is stale: say so rather than keep an old figure
        axes[0][0].text(0.5, 0.5, "no current comparison\n(see report.md)", ha="center")
        axes[0][0].set_axis_off()
    for ax, dataset in zip(axes[0][: len(datasets)], datasets, strict=True):
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path


def write_study_report(run_dir: str | os.PathLike, alpha: float = 0.05) -> dict[str, Any]:
    """Collect a run folder and write ``report.json``, ``report.md`` and ``report.png`` into it
    (and ``report_curves.png`` when it holds label-efficiency curves)."""
    from cxrprobe.workflow.curve_report import CI_RULE, bootstrap_options, collect_curves

    run_dir = Path(run_dir)
    study = collect_study(run_dir, alpha)
    study["curves"] = collect_curves(run_dir, bootstrap_options(study))
    if study["curves"]:
        study["curve_rule"] = CI_RULE
    atomic_write_json(run_dir / "report.json", study)
    atomic_write_text(run_dir / "report.md", study_markdown(study))
    study_figure(study, run_dir / "report.png")
    names = ["report.json", "report.md", "report.png"]
    if study["curves"]:
        from cxrprobe.workflow.curve_report import curve_figure

        names.append(curve_figure(study["curves"], run_dir / "report_curves.png").name)
    study["outputs"] = {name: str(run_dir / name) for name in names}
    return study
