"""Human views of a report: the terminal table, a markdown table and a forest plot (Agg)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text
from cxrprobe.stats.thresholds import METRICS


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or np.isnan(value):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _with_ci(value: float, ci: list, signed: bool = False) -> str:
    if value is None or np.isnan(value):
        return "n/a"
    return f"{_num(value, signed)} [{_num(ci[0], signed)}, {_num(ci[1], signed)}]"


def format_p(value: float | None, resamples: int | None = None) -> str:
    """A p-value for tables; a bootstrap p of 0 shows as below 1/B."""
    if value is None or np.isnan(value):
        return "n/a"
    if resamples and value == 0:
        return f"<{1 / resamples:.2g}"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _label_cell(row: dict[str, Any]) -> str:
    return row["label"] if row.get("reason") is None else f"{row['label']} (undefined)"


def _prevalence(row: dict[str, Any]) -> str:
    return f"{row['prevalence']:.3f}" if "prevalence" in row and row["n"] else ""


def comparison_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells: label, prevalence, AUROC A/B [CI], delta [CI], p boot/FDR/DeLong."""
    level = f"{100 * (1 - report['bootstrap']['alpha']):g}% CI"
    b = report["bootstrap"]["resamples"]
    headers = [
        "label",
        "prevalence",
        f"AUROC A [{level}]",
        f"AUROC B [{level}]",
        f"delta B-A [{level}]",
        "p boot",
        "p FDR",
        "p DeLong",
    ]
    cells = []
    for row in [*report["labels"], report["mean"]]:
        cells.append(
            [
                _label_cell(row) if row["label"] != "mean" else f"mean ({row['n_labels']} labels)",
                _prevalence(row),
                _with_ci(row["auroc_a"], row["auroc_a_ci"]),
                _with_ci(row["auroc_b"], row["auroc_b_ci"]),
                _with_ci(row["delta"], row["delta_ci"], signed=True),
                format_p(row["p_bootstrap"], b),
                format_p(row.get("p_fdr"), b) if row["label"] != "mean" else "-",
                format_p(row.get("p_delong")) if row["label"] != "mean" else "-",
            ]
        )
    return headers, cells


def evaluation_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells: label, prevalence, AUROC [CI], threshold and metrics [CI]."""
    thresholds = {e["label"]: e for e in report["thresholds"]["labels"]}
    headers = ["label", "prevalence", "AUROC [CI]", "threshold", *METRICS]
    cells = []
    for row in report["labels"]:
        entry = thresholds[row["label"]]
        cells.append(
            [
                _label_cell(row),
                _prevalence(row),
                _with_ci(row["auroc"], row["auroc_ci"]),
                _num(entry["threshold"]),
                *(_with_ci(entry[m], entry[f"{m}_ci"]) for m in METRICS),
            ]
        )
    mean, summary = report["mean"], report["thresholds"]["mean"]
    cells.append(
        [
            f"mean ({mean['n_labels']} labels)",
            "",
            _with_ci(mean["auroc"], mean["auroc_ci"]),
            "",
            *(_with_ci(summary[m], summary[f"{m}_ci"]) for m in METRICS),
        ]
    )
    return headers, cells


def threshold_table(block: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of one model's threshold metrics."""
    headers = ["label", "threshold", *METRICS]
    cells = [
        [e["label"], _num(e["threshold"]), *(_with_ci(e[m], e[f"{m}_ci"]) for m in METRICS)]
        for e in block["labels"]
    ]
    cells.append(
        ["mean", "", *(_with_ci(block["mean"][m], block["mean"][f"{m}_ci"]) for m in METRICS)]
    )
    return headers, cells


def text_table(headers: list[str], cells: list[list[str]]) -> str:
    """Columns padded to their widest cell (first column left-aligned, others right)."""
    widths = [max(len(r[i]) for r in [headers, *cells]) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)])


def markdown_table(headers: list[str], cells: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    rows = [headers, ["---"] + ["---:"] * (len(headers) - 1), *cells]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows)


def _notes(report: dict[str, Any]) -> list[str]:
    boot = report["bootstrap"]
    models = report.get("models", {})
    lines = [f"{key.upper()} = {info['path']}" for key, info in models.items()]
    lines.append(
        f"{boot['resamples']} bootstrap resamples of {boot['scheme']} (seed "
        f"{boot['seed']}), {boot['ci']} CIs, device {boot['device']}"
    )
    if report["kind"] == "compare":
        align = report.get("alignment")
        if align and align["aligned"]:
            lines.append(
                f"aligned by id: {align['rows_used']} rows used, {align['dropped_a']} "
                f"dropped from A, {align['dropped_b']} from B"
                + (
                    f", labels dropped: {', '.join(align['labels_dropped'])}"
                    if align["labels_dropped"]
                    else ""
                )
            )
        lines.append(
            "p boot: the study's one-sided bootstrap p (share of resamples in which "
            "the better model does not win); p FDR: Benjamini-Hochberg across labels; "
            "p DeLong: two-sided"
        )
    undefined = [r["label"] + ": " + r["reason"] for r in report["labels"] if r.get("reason")]
    lines += [f"undefined: {u}" for u in undefined]
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The terminal summary: the table, notes and (for comparisons) the verdict."""
    table = comparison_table if report["kind"] == "compare" else evaluation_table
    parts = [text_table(*table(report)), "", *_notes(report)]
    if report["kind"] == "compare":
        parts += ["", report["verdict"]]
    return "\n".join(parts)


def markdown_report(report: dict[str, Any]) -> str:
    """Markdown: the main table, notes, verdict and (for comparisons) each model's thresholds."""
    table = comparison_table if report["kind"] == "compare" else evaluation_table
    parts = [markdown_table(*table(report)), "", *(f"- {n}" for n in _notes(report))]
    if report["kind"] == "compare":
        parts += ["", f"**{report['verdict']}**"]
        for key in ("a", "b"):
            block = report["thresholds"][key]
            parts += [
                "",
                f"Threshold metrics of {key.upper()} (chosen on {block['chosen_on']}):",
                "",
                markdown_table(*threshold_table(block)),
            ]
    else:
        parts += ["", f"Thresholds chosen on {report['thresholds']['chosen_on']}."]
    return "\n".join(parts) + "\n"


def _model_names(report: dict[str, Any]) -> tuple[str, str]:
    """Short names of models A and B: the study's cell names, else the files' names."""
    cells, models = report.get("cells", {}), report.get("models", {})
    return tuple(
        cells.get(key) or Path(models.get(key, {}).get("path", key)).name for key in ("a", "b")
    )


def forest_plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a forest plot of AUROC B - A per label and for the mean, with CIs (format by suffix).

    Filled markers: significant after FDR (labels) or at alpha (mean). Uses the Agg canvas
    directly, so no display and no global backend change.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    alpha = report["bootstrap"]["alpha"]
    rows = [r for r in report["labels"] if not np.isnan(r["delta"])] + [report["mean"]]
    ys = np.arange(len(rows))[::-1]
    fig = Figure(figsize=(7, 1.2 + 0.35 * len(rows)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, row in zip(ys, rows, strict=True):
        p = row["p_bootstrap"] if row["label"] == "mean" else row["p_fdr"]
        lo, hi = row["delta_ci"]
        color = "black" if row["label"] == "mean" else "tab:blue"
        ax.plot([lo, hi], [y, y], color=color, lw=1.5)
        ax.plot(
            row["delta"],
            y,
            "D" if row["label"] == "mean" else "o",
            color=color,
            mfc=color if p < alpha else "white",
            ms=6,
        )
    ax.axvline(0, color="grey", ls="--", lw=0.8)
    ax.set_yticks(ys, [f"{r['label']}" for r in rows])
    ax.set_xlabel(f"AUROC B - A ({100 * (1 - alpha):g}% {report['bootstrap']['ci']} CI)")
    a, b = _model_names(report)
    ax.set_title(
        f"B = {b}  vs  A = {a}\nfilled: significant (FDR across labels; mean at alpha)", fontsize=9
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    path = Path(path)
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=150)
    return atomic_write_bytes(path, buffer.getvalue())


def write_report_outputs(
    report: dict[str, Any],
    *,
    out: str | os.PathLike | None = None,
    markdown: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
) -> list[Path]:
    """Write a report's JSON (strict: NaN as null), markdown table and forest plot where asked."""
    from cxrprobe.stats.report import jsonable

    written = []
    if out is not None:
        written.append(atomic_write_json(out, jsonable(report)))
    if markdown is not None:
        written.append(atomic_write_text(markdown, markdown_report(report)))
    if plot is not None:
        written.append(forest_plot(report, plot))
    return written
