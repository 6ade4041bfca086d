"""One population's results (all evaluated rows, or one subgroup) from bootstrap samples.

A subgroup is the evaluated rows with the targets of every other row masked (NaN): its
statistics come from the *same* resample counts as the overall ones, restricted to its rows, so
subgroup intervals are consistent with the overall interval and gaps between subgroups are
paired. Each block holds per-label rows, the mean row, threshold metrics and calibration.
Which labels enter the mean and the FDR family: :mod:`cxrprobe.stats.families`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrprobe.stats.auroc import auroc_report
from cxrprobe.stats.calibration import (
    CALIBRATION_METRICS,
    brier_score,
    calibration_interval,
    expected_calibration_error,
)
from cxrprobe.stats.delong import delong_test, jackknife_auroc
from cxrprobe.stats.families import Families, families
from cxrprobe.stats.intervals import (
    bca_interval,
    mean_over_labels,
    paired_p_values,
    percentile_interval,
)
from cxrprobe.stats.multiple import benjamini_hochberg
from cxrprobe.stats.options import BootstrapOptions
from cxrprobe.stats.thresholds import threshold_summary

# Per model key ("a", "b"): scores (n, L), their score_order (n, L), thresholds with reasons,
# constant-score flags (L,).
Scores = dict[str, np.ndarray]
Thresholds = dict[str, tuple[np.ndarray, list]]
# Bootstrap samples of one population: "auc_a" (B, L), "conf_a" (B, 4, L), "cal_a" (B, 2, L), ...
Samples = dict[str, np.ndarray]
NEEDS_PROBABILITIES = (
    "scores are logits; calibration needs probabilities (write the predictions with "
    "score_kind 'probability')"
)


def with_mean(samples: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Append the per-resample mean over ``family`` labels as a last column: (k, L) -> (k, L+1)."""
    return np.column_stack([samples, mean_over_labels(samples, family)])


def mean_of(values: np.ndarray, family: np.ndarray) -> float:
    """Mean of the (L,) ``values`` over ``family`` labels that are not NaN; NaN when none is."""
    chosen = values[family & ~np.isnan(values)]
    return float(chosen.mean()) if chosen.size else float("nan")


def interval(
    samples: np.ndarray,
    estimate: np.ndarray,
    jackknife: np.ndarray | None,
    options: BootstrapOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile, or with ``--ci bca`` and a jackknife, BCa interval per column."""
    if options.ci == "bca" and jackknife is not None:
        return bca_interval(samples, estimate, jackknife, options.alpha)
    return percentile_interval(samples, options.alpha)


def _ci(lo: np.ndarray, hi: np.ndarray, k: int) -> list[float]:
    return [float(lo[k]), float(hi[k])]


def _notes(
    fam: Families, col: int, constant_in: list[str], options: BootstrapOptions, kind: str
) -> list[str]:
    notes = []
    if constant_in:
        who = " and ".join(m.upper() for m in constant_in)
        notes.append(
            f"constant scores from {who} (e.g. no positive training rows): AUROC 0.5 by "
            "construction; left out of the mean"
            + (" and the FDR family" if kind == "compare" else "")
        )
    if fam.rare[col]:
        n_pos, n_neg = int(fam.n_positive[col]), int(fam.n_negative[col])
        text = f"rare: {n_pos} positive / {n_neg} negative rows (< {options.min_positives} in one class)"
        if kind == "compare":
            text += (
                "; kept in the FDR family (--include-rare)"
                if options.include_rare
                else "; left out of the FDR family (--include-rare adds it)"
            )
        unreliable = "its test and interval are" if kind == "compare" else "its interval is"
        notes.append(f"{text}; {unreliable} unreliable")
    return notes


def base_rows(
    labels: list[str], fam: Families, constant: Scores, options: BootstrapOptions, kind: str
) -> list[dict[str, Any]]:
    """Label, counts, prevalence, definedness, flags and notes of every label, then the mean."""
    rows = []
    for col, label in enumerate(labels):
        n_pos, n_neg = int(fam.n_positive[col]), int(fam.n_negative[col])
        constant_in = [m for m, flags in constant.items() if flags[col]]
        rows.append(
            {
                "label": label,
                "n": n_pos + n_neg,
                "n_positive": n_pos,
                "n_negative": n_neg,
                "prevalence": n_pos / (n_pos + n_neg) if n_pos + n_neg else np.nan,
                "defined": bool(fam.defined[col]),
                "reason": fam.reasons[col],
                "rare": bool(fam.rare[col]),
                "constant_scores": constant_in,
                "in_mean": bool(fam.in_mean[col]),
                "notes": _notes(fam, col, constant_in, options, kind),
            }
        )
    rows.append({"label": "mean", "n_labels": int(fam.in_mean.sum())})
    return rows


@dataclass
class AurocPart:
    """One model's AUROC on a population: raw samples (B, L), estimates (L,), jackknife (n, L)."""

    samples: np.ndarray
    estimate: np.ndarray
    jackknife: np.ndarray | None


@dataclass
class Population:
    """What subgroup gaps need of an analysed population: each model's AUROC and the families."""

    parts: dict[str, AurocPart]
    families: Families


def auroc_part(
    targets: np.ndarray,
    scores: np.ndarray,
    samples: np.ndarray,
    options: BootstrapOptions,
    order: np.ndarray | None = None,
) -> AurocPart:
    """Full-data AUROC per label, and the jackknife when BCa intervals need it."""
    jk = jackknife_auroc(targets, scores, order=order) if options.ci == "bca" else None
    return AurocPart(samples, auroc_report(targets, scores, order=order).values, jk)


def summarise(part: AurocPart, family: np.ndarray, options: BootstrapOptions) -> tuple:
    """Estimates, samples, jackknife (each with a mean column over ``family``) and the CI."""
    est = np.r_[part.estimate, mean_of(part.estimate, family)]
    samples = with_mean(part.samples, family)
    jk = None if part.jackknife is None else with_mean(part.jackknife, family)
    return est, samples, jk, interval(samples, est, jk, options)


def calibration_part(
    labels: list[str],
    targets: np.ndarray,
    scores: np.ndarray,
    samples: np.ndarray,
    family: np.ndarray,
    options: BootstrapOptions,
    order: np.ndarray | None = None,
) -> dict[str, Any]:
    """Brier score and ECE per label and mean over ``family`` with CIs (Brier: percentile;
    ECE: basic bootstrap, with its bias-corrected value; see :mod:`cxrprobe.stats.calibration`)."""
    point = {
        "brier": brier_score(targets, scores),
        "ece": expected_calibration_error(targets, scores, options.ece_bins, order=order),
    }
    rows: list[dict[str, Any]] = [{"label": label} for label in labels]
    mean: dict[str, Any] = {"label": "mean", "n_labels": int(family.sum())}
    raw = {}
    for m, metric in enumerate(CALIBRATION_METRICS):
        est = np.r_[point[metric], mean_of(point[metric], family)]
        boot = with_mean(samples[:, m, :], family)
        _fill([*rows, mean], metric, est, boot, options.alpha, floor=0.0)
        raw[metric] = (est, boot)
    return {"available": True, "labels": rows, "mean": mean, "_raw": raw}


def _fill(
    rows: list[dict],
    metric: str,
    est: np.ndarray,
    boot: np.ndarray,
    alpha: float,
    floor: float | None,
) -> None:
    """Write ``metric``, its CI and (ECE) its bias-corrected value into each of ``rows``."""
    lo, hi, corrected = calibration_interval(metric, boot, est, alpha, floor)
    for k, row in enumerate(rows):
        row[metric], row[f"{metric}_ci"] = float(est[k]), _ci(lo, hi, k)
        if corrected is not None:
            row[f"{metric}_bias_corrected"] = float(corrected[k])


def calibration_difference(
    part_a: dict, part_b: dict, labels: list[str], options: BootstrapOptions
) -> dict[str, Any]:
    """B - A of Brier and ECE per label and for the mean, with paired CIs made as each model's
    (not clipped at 0)."""
    rows: list[dict[str, Any]] = [{"label": label} for label in labels]
    mean: dict[str, Any] = {"label": "mean", "n_labels": part_a["mean"]["n_labels"]}
    for metric in CALIBRATION_METRICS:
        (est_a, boot_a), (est_b, boot_b) = part_a["_raw"][metric], part_b["_raw"][metric]
        _fill([*rows, mean], metric, est_b - est_a, boot_b - boot_a, options.alpha, floor=None)
    return {"labels": rows, "mean": mean}


def calibration_parts(
    labels: list[str],
    targets: np.ndarray,
    scores: Scores,
    samples: Samples,
    family: np.ndarray,
    options: BootstrapOptions,
    orders: Scores,
) -> dict[str, dict]:
    """Each model's calibration part, or why it has none (logit scores)."""
    return {
        m: calibration_part(
            labels, targets, scores[m], samples[f"cal_{m}"], family, options, orders[m]
        )
        if f"cal_{m}" in samples
        else {"available": False, "reason": NEEDS_PROBABILITIES}
        for m in scores
    }


def public(part: dict) -> dict:
    """A calibration part without its raw samples (for the JSON)."""
    return {k: v for k, v in part.items() if not k.startswith("_")}


def compare_block(
    labels: list[str],
    targets: np.ndarray,
    scores: Scores,
    orders: Scores,
    samples: Samples,
    thresholds: Thresholds,
    constant: Scores,
    options: BootstrapOptions,
) -> tuple[dict[str, Any], Population]:
    """A comparison of A and B on one population (``targets`` masked outside it).

    ``scores``, ``orders`` (their ``score_order``), ``thresholds`` and ``constant`` are keyed
    "a" and "b"; ``samples`` holds
    "auc_a", "auc_b" (B, L), "conf_a", "conf_b" (B, 4, L) and, where scores are probabilities,
    "cal_a", "cal_b" (B, 2, L). Returns the block (JSON-ready rows) and the population.
    """
    fam = families(targets, constant["a"] | constant["b"], options)
    parts = {
        m: auroc_part(targets, scores[m], samples[f"auc_{m}"], options, orders[m]) for m in "ab"
    }
    est_a, samp_a, jk_a, ci_a = summarise(parts["a"], fam.in_mean, options)
    est_b, samp_b, jk_b, ci_b = summarise(parts["b"], fam.in_mean, options)
    deltas, delta = samp_b - samp_a, est_b - est_a
    ci_d = interval(deltas, delta, None if jk_a is None else jk_b - jk_a, options)
    p = paired_p_values(deltas, delta)
    n_labels = len(labels)
    p_fdr = benjamini_hochberg(np.where(fam.in_fdr, p.two_sided[:n_labels], np.nan))
    dl = delong_test(
        targets, scores["a"], scores["b"], options.alpha, orders=(orders["a"], orders["b"])
    )
    dl_fdr = benjamini_hochberg(np.where(fam.in_fdr, dl.p, np.nan))
    undefined = np.isnan(samp_a).sum(axis=0)
    rows = base_rows(labels, fam, constant, options, "compare")
    for k, row in enumerate(rows):
        row.update(
            auroc_a=est_a[k],
            auroc_a_ci=_ci(*ci_a, k),
            auroc_b=est_b[k],
            auroc_b_ci=_ci(*ci_b, k),
            delta=delta[k],
            delta_ci=_ci(*ci_d, k),
            p_bootstrap=p.two_sided[k],
            p_study_one_sided=p.study_one_sided[k],
            undefined_resamples=int(undefined[k]),
        )
        if k < n_labels:
            row.update(
                in_fdr_family=bool(fam.in_fdr[k]),
                p_fdr=p_fdr[k],
                significant=bool(p_fdr[k] <= options.alpha),
                p_delong=dl.p[k],
                p_delong_fdr=dl_fdr[k],
                delong={
                    "z": dl.z[k],
                    "var_a": dl.var_a[k],
                    "var_b": dl.var_b[k],
                    "cov": dl.cov[k],
                    "delta_ci": [dl.ci_low[k], dl.ci_high[k]],
                    "reason": dl.reasons[k],
                    "note": dl.notes[k],
                },
            )
        else:
            row["significant"] = bool(p.two_sided[k] <= options.alpha)
    block = {
        "labels": rows[:-1],
        "mean": rows[-1],
        "thresholds": {
            m: threshold_summary(
                labels,
                targets,
                scores[m],
                *thresholds[m],
                samples[f"conf_{m}"],
                options.alpha,
                fam.in_mean,
            )
            for m in "ab"
        },
    }
    calibration = calibration_parts(labels, targets, scores, samples, fam.in_mean, options, orders)
    if calibration["a"]["available"] and calibration["b"]["available"]:
        calibration["difference"] = calibration_difference(
            calibration["a"], calibration["b"], labels, options
        )
    block["calibration"] = {k: public(v) for k, v in calibration.items()}
    return block, Population(parts, fam)


def evaluate_block(
    labels: list[str],
    targets: np.ndarray,
    scores: Scores,
    orders: Scores,
    samples: Samples,
    thresholds: Thresholds,
    constant: Scores,
    options: BootstrapOptions,
) -> tuple[dict[str, Any], Population]:
    """One model (key "a") on one population: AUROC, threshold metrics and calibration (the
    arguments as in :func:`compare_block`)."""
    fam = families(targets, constant["a"], options)
    part = auroc_part(targets, scores["a"], samples["auc_a"], options, orders["a"])
    est, samp, _, (lo, hi) = summarise(part, fam.in_mean, options)
    rows = base_rows(labels, fam, constant, options, "evaluate")
    for k, row in enumerate(rows):
        row.update(
            auroc=est[k],
            auroc_ci=_ci(lo, hi, k),
            undefined_resamples=int(np.isnan(samp[:, k]).sum()),
        )
    block = {
        "labels": rows[:-1],
        "mean": rows[-1],
        "thresholds": threshold_summary(
            labels,
            targets,
            scores["a"],
            *thresholds["a"],
            samples["conf_a"],
            options.alpha,
            fam.in_mean,
        ),
        "calibration": public(
            calibration_parts(labels, targets, scores, samples, fam.in_mean, options, orders)["a"]
        ),
    }
    return block, Population({"a": part}, fam)


def gap_rows(
    labels: list[str], group: Population, reference: Population, options: BootstrapOptions
) -> dict[str, Any]:
    """AUROC gaps (group - reference) per label and for the mean over labels in both families,
    paired (same resamples): ``auroc_gap`` for one model; ``auroc_a_gap``, ``auroc_b_gap`` and
    ``delta_gap`` (of B - A) for a comparison."""
    common = group.families.in_mean & reference.families.in_mean
    rows: list[dict[str, Any]] = [{"label": label} for label in labels]
    mean: dict[str, Any] = {"label": "mean", "n_labels": int(common.sum())}

    def values(side: Population, key: str) -> tuple:
        """Estimates, samples and jackknife (each with a mean column) of one series."""
        if key == "delta":
            a, b = (summarise(side.parts[m], common, options) for m in "ab")
            return b[0] - a[0], b[1] - a[1], None if a[2] is None else b[2] - a[2]
        return summarise(side.parts[key[-1] if key != "auroc" else "a"], common, options)[:3]

    keys = ["auroc_a", "auroc_b", "delta"] if len(group.parts) == 2 else ["auroc"]
    for key in keys:
        (est_g, samp_g, jk_g), (est_r, samp_r, jk_r) = values(group, key), values(reference, key)
        jk = None if jk_g is None else jk_g - jk_r
        lo, hi = interval(samp_g - samp_r, est_g - est_r, jk, options)
        for k, row in enumerate([*rows, mean]):
            row[f"{key}_gap"], row[f"{key}_gap_ci"] = float(est_g[k] - est_r[k]), _ci(lo, hi, k)
    return {"labels": rows, "mean": mean}
