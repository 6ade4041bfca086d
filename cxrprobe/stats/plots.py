"""Figures of a report: the forest plot of B - A, the subgroup forest plot and the reliability
diagram. Each uses the Agg canvas directly (no display, no global backend change) and is
written atomically in the format its suffix names (png, pdf, svg)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.provenance import atomic_write_bytes
from cxrprobe.stats.verdict import model_label


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    buffer = io.BytesIO()
    path = Path(path)
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=150)
    return atomic_write_bytes(path, buffer.getvalue())


def _defined(value: Any) -> bool:
    return value is not None and not np.isnan(value)


def _interval_rows(ax, rows: list[tuple[str, float, list, bool, str]], reference: float) -> None:
    """Draw (name, value, [lo, hi], filled, colour) rows top-down with a reference line."""
    ys = np.arange(len(rows))[::-1]
    for y, (_, value, ci, filled, color) in zip(ys, rows, strict=True):
        if _defined(value):
            if ci and _defined(ci[0]):
                ax.plot(ci, [y, y], color=color, lw=1.5)
            marker = "D" if color == "k" else "o"  # black diamonds: the overall / mean rows
            ax.plot(value, y, marker, color=color, mfc=color if filled else "white", ms=6)
    ax.axvline(reference, color="grey", ls="--", lw=0.8)
    ax.set_yticks(ys, [row[0] for row in rows])


def _flagged(row: dict[str, Any]) -> str:
    flags = [
        f for f, on in (("rare", row.get("rare")), ("constant", row.get("constant_scores"))) if on
    ]
    return row["label"] + (f" ({', '.join(flags)})" if flags else "")


def forest_plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """AUROC B - A per label and for the mean, with CIs.

    Filled markers: significant, i.e. the BH-adjusted two-sided bootstrap p (labels) or the
    two-sided bootstrap p (mean) is <= alpha. Labels outside the FDR family (rare, constant
    scores) are hollow and flagged in their name.
    """
    boot = report["bootstrap"]
    rows = [
        (_flagged(r), r["delta"], r["delta_ci"], bool(r.get("significant")), "tab:blue")
        for r in report["labels"]
        if _defined(r["delta"])
    ]
    mean = report["mean"]
    rows.append(
        (f"mean ({mean['n_labels']})", mean["delta"], mean["delta_ci"], mean["significant"], "k")
    )
    fig = _figure(7, 1.4 + 0.35 * len(rows))
    ax = fig.add_subplot()
    _interval_rows(ax, rows, 0.0)
    ax.set_xlabel(f"AUROC B - A ({100 * (1 - boot['alpha']):g}% {boot['ci']} CI)")
    ax.set_title(
        f"{model_label(report, 'b')}\nminus {model_label(report, 'a')}\n"
        "filled: significant (two-sided bootstrap; labels after FDR)",
        fontsize=8,
    )
    return _save(fig, path)


def subgroup_plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Mean AUROC (evaluate) or mean AUROC B - A (compare) per subgroup with CIs, one panel per
    ``--by`` field; the overall value on top. Subgroups without a defined mean are named but
    have no marker."""
    sections = report["subgroups"]
    compare = report["kind"] == "compare"
    key = "delta" if compare else "auroc"
    fig = _figure(7, 1.2 + 0.4 * sum(len(s["groups"]) + 1 for s in sections))
    heights = [len(s["groups"]) + 1 for s in sections]
    axes = fig.subplots(len(sections), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    overall = report["mean"]
    for ax, section in zip(axes[:, 0], sections, strict=True):
        rows = [("all rows", overall[key], overall[f"{key}_ci"], True, "k")]
        for group in section["groups"]:
            mean = group.get("mean", {})
            name = f"{group['name']} (n={group['rows']})"
            rows.append((name, mean.get(key), mean.get(f"{key}_ci"), True, "tab:blue"))
        _interval_rows(ax, rows, 0.0 if compare else overall[key])
        ax.set_title(f"by {section['by']}", fontsize=9)
    what = "mean AUROC B - A" if compare else "mean AUROC"
    axes[-1, 0].set_xlabel(f"{what} ({100 * (1 - report['bootstrap']['alpha']):g}% CI)")
    if compare:
        fig.suptitle(f"{model_label(report, 'b')} minus {model_label(report, 'a')}", fontsize=8)
    return _save(fig, path)


def reliability_plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Observed positive rate against mean predicted probability in the equal-mass bins, one
    panel per label, every model with probabilities; the diagonal is perfect calibration."""
    tables = report["reliability"]
    labels = [r["label"] for r in report["labels"]]
    cols = min(4, len(labels))
    nrows = -(-len(labels) // cols)
    fig = _figure(3 * cols, 2.8 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False)
    colors = {"a": "tab:blue", "b": "tab:orange"}
    for index, label in enumerate(labels):
        ax = axes.flat[index]
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        for key, table in tables.items():
            bins = table[index]["bins"]
            ax.plot(
                [b["mean_score"] for b in bins],
                [b["observed"] for b in bins],
                "o-",
                color=colors[key],
                ms=3,
                label=model_label(report, key),
            )
        ax.set(xlim=(0, 1), ylim=(0, 1), title=label)
        ax.title.set_fontsize(9)
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_axis_off()
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.supxlabel("mean predicted probability (equal-mass bins)", fontsize=9)
    fig.supylabel("observed positive rate", fontsize=9)
    return _save(fig, path)
