"""Human views of a report: terminal and markdown tables, notes and the verdict.

Works on the report dict as built or as read back from JSON (NaN written as null). Headings say
which model is A and which is B, and every difference is B - A.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrprobe.stats.thresholds import METRICS
from cxrprobe.stats.verdict import format_p, model_label


def _missing(value: Any) -> bool:
    return value is None or np.isnan(value)


def _num(value: float | None, signed: bool = False) -> str:
    if _missing(value):
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _with_ci(
    value: float | None, ci: list | None, signed: bool = False, corrected: float | None = None
) -> str:
    """'value [lo, hi]', or 'value (corrected) [lo, hi]' with a bias-corrected value."""
    if _missing(value):
        return "n/a"
    shown = _num(value, signed) + ("" if _missing(corrected) else f" ({_num(corrected, signed)})")
    if not ci or _missing(ci[0]):
        return shown
    return f"{shown} [{_num(ci[0], signed)}, {_num(ci[1], signed)}]"


def _level(report: dict[str, Any]) -> str:
    return f"{100 * (1 - report['bootstrap']['alpha']):g}% CI"


def _label_cell(row: dict[str, Any]) -> str:
    if row["label"] == "mean":
        return f"mean ({row['n_labels']} labels)"
    flags = [
        flag
        for flag, on in (
            ("undefined", row.get("reason") is not None),
            ("rare", row.get("rare")),
            ("constant", row.get("constant_scores")),
        )
        if on
    ]
    return row["label"] + (f" ({', '.join(flags)})" if flags else "")


def _counts(row: dict[str, Any]) -> str:
    return f"{row['n_positive']}/{row['n_negative']}" if "n_positive" in row else ""


def _fdr_cell(row: dict[str, Any]) -> str:
    if row["label"] == "mean" or not row.get("in_fdr_family"):
        return "-"
    return format_p(row["p_fdr"]) + ("*" if row.get("significant") else "")


def comparison_table(report: dict[str, Any], block: dict[str, Any] | None = None) -> tuple:
    """Headers and cells of a comparison (the whole report, or one subgroup's ``block``)."""
    block = block or report
    level, b = _level(report), report["bootstrap"]["resamples"]
    headers = [
        "label",
        "pos/neg",
        f"AUROC A [{level}]",
        f"AUROC B [{level}]",
        f"delta B - A [{level}]",
        "p boot (2-sided)",
        "p FDR",
        "p DeLong",
        "study p (1-sided)",
    ]
    cells = []
    for row in [*block["labels"], block["mean"]]:
        mean = row["label"] == "mean"
        cells.append(
            [
                _label_cell(row),
                _counts(row),
                _with_ci(row["auroc_a"], row["auroc_a_ci"]),
                _with_ci(row["auroc_b"], row["auroc_b_ci"]),
                _with_ci(row["delta"], row["delta_ci"], signed=True),
                format_p(row["p_bootstrap"]) + ("*" if mean and row.get("significant") else ""),
                _fdr_cell(row),
                "-" if mean else format_p(row.get("p_delong")),
                format_p(row["p_study_one_sided"], b),
            ]
        )
    return headers, cells


def evaluation_table(report: dict[str, Any], block: dict[str, Any] | None = None) -> tuple:
    """Headers and cells: label, positives/negatives, AUROC [CI], threshold and metrics [CI]."""
    block = block or report
    thresholds = {e["label"]: e for e in block["thresholds"]["labels"]}
    headers = ["label", "pos/neg", f"AUROC [{_level(report)}]", "threshold", *METRICS]
    cells = []
    for row in block["labels"]:
        entry = thresholds[row["label"]]
        cells.append(
            [
                _label_cell(row),
                _counts(row),
                _with_ci(row["auroc"], row["auroc_ci"]),
                _num(entry["threshold"]),
                *(_with_ci(entry[m], entry[f"{m}_ci"]) for m in METRICS),
            ]
        )
    mean, summary = block["mean"], block["thresholds"]["mean"]
    cells.append(
        [
            _label_cell(mean),
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


def calibration_table(report: dict[str, Any], block: dict[str, Any] | None = None) -> tuple | None:
    """Brier score and ECE per label and mean (per model, and B - A for a comparison); None
    when no model has probabilities."""
    calibration = (block or report)["calibration"]
    parts = {"": calibration} if report["kind"] == "evaluate" else dict(calibration)
    if report["kind"] == "compare" and "difference" in parts:
        parts["B - A"] = parts.pop("difference")
    parts = {k: v for k, v in parts.items() if v.get("available", True)}
    if not parts:
        return None
    names = {k: (k.upper() if len(k) == 1 else k) for k in parts}
    headers = ["label"] + [
        f"{metric} {names[k]}".strip() for metric in ("Brier", "ECE") for k in parts
    ]
    rows = zip(*(p["labels"] + [p["mean"]] for p in parts.values()), strict=True)
    cells = []
    for entries in rows:
        label = entries[0]["label"]
        cell = [f"mean ({entries[0]['n_labels']} labels)" if label == "mean" else label]
        for metric in ("brier", "ece"):
            for key, entry in zip(parts, entries, strict=True):
                cell.append(
                    _with_ci(
                        entry[metric],
                        entry[f"{metric}_ci"],
                        signed=key == "B - A",
                        corrected=entry.get(f"{metric}_bias_corrected"),  # ECE, version 3 on
                    )
                )
        cells.append(cell)
    return headers, cells


def calibration_title(report: dict[str, Any]) -> str:
    """The calibration table's heading, saying which interval each metric has."""
    if "intervals" not in report.get("calibration_method", {}):  # reports before version 3
        return "Calibration (Brier score, ECE):"
    level = _level(report)
    return f"Calibration: Brier score [{level}, percentile]; ECE (bias-corrected) [{level}, basic]:"


def subgroup_table(report: dict[str, Any], section: dict[str, Any]) -> tuple:
    """One ``--by`` field: rows, mean AUROC (or A, B and B - A) per subgroup, gap to reference."""
    compare = report["kind"] == "compare"
    gaps = {g["group"]: g["mean"] for g in section["gaps"]}
    key = "delta_gap" if compare else "auroc_gap"
    values = ["mean AUROC A", "mean AUROC B", "mean delta B - A"] if compare else ["mean AUROC"]
    gap = f"{'delta' if compare else 'AUROC'} gap vs {section['reference']}"
    headers = [section["field"], "rows", "labels", *values, gap]
    cells = []
    for group in section["groups"]:
        cell = [group["name"], str(group["rows"])]
        if "mean" not in group:
            cells.append(cell + ["0"] + ["-"] * len(values) + [group.get("reason", "")])
            continue
        mean = group["mean"]
        cell.append(str(mean["n_labels"]))
        if compare:
            cell += [
                _with_ci(mean["auroc_a"], mean["auroc_a_ci"]),
                _with_ci(mean["auroc_b"], mean["auroc_b_ci"]),
                _with_ci(mean["delta"], mean["delta_ci"], signed=True),
            ]
        else:
            cell.append(_with_ci(mean["auroc"], mean["auroc_ci"]))
        g = gaps.get(group["name"])
        reference = "reference" if group["name"] == section["reference"] else group.get("reason")
        cell.append(_with_ci(g[key], g[f"{key}_ci"], signed=True) if g else reference or "")
        cells.append(cell)
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


def _notes(report: dict[str, Any], warnings: bool = True) -> list[str]:
    boot = report["bootstrap"]
    lines = [
        f"{model_label(report, key)} = {info['path']}"
        for key, info in report.get("models", {}).items()
    ]
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
            "p boot: two-sided paired bootstrap p, (k + 1) / (B + 1) rule; p FDR: "
            "Benjamini-Hochberg of p boot across the FDR family (* = significant at alpha "
            f"{boot['alpha']:g}; '-' = not in the family); p DeLong: two-sided; study p: the "
            "study's one-sided share, for reproduction only, never used to decide"
        )
    for row in report["labels"]:
        if row.get("reason"):
            lines.append(f"undefined: {row['label']}: {row['reason']}")
        lines += [f"{row['label']}: {note}" for note in row.get("notes", [])]
        note = row.get("delong", {}).get("note")
        if note:
            lines.append(f"{row['label']}: {note}")
    calibration = report["calibration"]
    for key, part in (
        [("", calibration)] if report["kind"] == "evaluate" else list(calibration.items())
    ):
        if not part.get("available", True):
            lines.append(f"calibration{' of ' + key.upper() if key else ''}: {part['reason']}")
    if calibration_table(report) and "intervals" in report.get("calibration_method", {}):
        lines.append(
            "ECE: binned ECE is biased upward (bin noise counts as error), so resampled ECEs lie "
            "above it; shown: plain ECE (bias-corrected: 2 ECE - mean resampled ECE) [basic "
            "bootstrap CI for the true ECE: 2 ECE - percentile limits, clipped at 0], which can "
            "lie below the plain ECE"
        )
    if warnings:
        lines += [f"WARNING: {w}" for w in report.get("warnings", [])]
    return lines


def _table(report: dict[str, Any], block: dict[str, Any] | None = None) -> tuple:
    make = comparison_table if report["kind"] == "compare" else evaluation_table
    return make(report, block)


def format_report(report: dict[str, Any], warnings: bool = True) -> str:
    """The terminal summary: the table, calibration, subgroups, notes and the verdict; the
    report's warnings among the notes unless ``warnings`` is False (a command printing them
    on stderr itself, so they show once)."""
    parts = [text_table(*_table(report))]
    calibration = calibration_table(report)
    if calibration:
        parts += ["", calibration_title(report), text_table(*calibration)]
    for section in report.get("subgroups", []):
        parts += [
            "",
            f"Subgroups by {section['by']}:",
            text_table(*subgroup_table(report, section)),
        ]
    parts += ["", *_notes(report, warnings)]
    if report["kind"] == "compare":
        parts += ["", report["verdict"]]
    return "\n".join(parts)


def markdown_report(report: dict[str, Any]) -> str:
    """Markdown: the main table, notes, verdict, thresholds, calibration and every subgroup."""
    parts = [markdown_table(*_table(report)), "", *(f"- {n}" for n in _notes(report))]
    if report["kind"] == "compare":
        parts += ["", f"**{report['verdict']}**"]
        for key in ("a", "b"):
            block = report["thresholds"][key]
            parts += [
                "",
                f"Threshold metrics of {model_label(report, key)} (chosen on "
                f"{block['chosen_on']}):",
                "",
                markdown_table(*threshold_table(block)),
            ]
    else:
        parts += ["", f"Thresholds chosen on {report['thresholds']['chosen_on']}."]
    calibration = calibration_table(report)
    if calibration:
        parts += ["", calibration_title(report), "", markdown_table(*calibration)]
    for section in report.get("subgroups", []):
        parts += [
            "",
            f"## Subgroups by {section['by']}",
            "",
            markdown_table(*subgroup_table(report, section)),
        ]
        for group in section["groups"]:
            if "labels" in group:
                parts += [
                    "",
                    f"### {section['field']} = {group['name']} ({group['rows']} rows)",
                    "",
                    markdown_table(*_table(report, group)),
                ]
    return "\n".join(parts) + "\n"
