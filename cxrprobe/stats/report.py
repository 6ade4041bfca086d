"""Assemble the comparison (two models) and evaluation (one model) reports.

One bootstrap run feeds everything: both models' AUROCs and confusion counts at fixed Youden
thresholds are evaluated on the same resample counts. The report is a plain dict (written as
JSON) that records how it was made: seed, resamples, resample scheme, device, CI method, the
p-value definitions, both files' sha256 and provenance, and package versions.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxrprobe.devices import resolve_device
from cxrprobe.errors import ConfigError, DataFormatError
from cxrprobe.progress import ProgressFactory
from cxrprobe.provenance import now_utc, sha256_file, to_jsonable, versions
from cxrprobe.stats.auroc import auroc_report
from cxrprobe.stats.bootstrap import (
    AurocStatistic,
    bca_interval,
    default_chunk,
    make_resampler,
    mean_over_labels,
    paired_p_values,
    percentile_interval,
    run_bootstrap,
)
from cxrprobe.stats.delong import delong_test, jackknife_auroc
from cxrprobe.stats.multiple import benjamini_hochberg
from cxrprobe.stats.predictions import Predictions, pair_predictions, read_predictions
from cxrprobe.stats.render import format_p
from cxrprobe.stats.thresholds import (
    ConfusionStatistic,
    threshold_summary,
    youden_thresholds,
)

REPORT_FORMAT = "cxrprobe.stats-report"
REPORT_VERSION = 1
P_VALUE_DEFINITIONS = {
    "p_bootstrap": "the study's p-value: the share of bootstrap resamples in which the model "
    "with the higher AUROC on the full data does not have a strictly higher AUROC (ties count "
    "as not winning); 1 when the two AUROCs are equal. One-sided in the observed direction.",
    "p_bootstrap_two_sided": "min(1, 2 * min(share of resamples with delta <= 0, share with "
    "delta >= 0)), delta = AUROC_B - AUROC_A; reported in the JSON only.",
    "p_fdr": "Benjamini-Hochberg adjustment of p_bootstrap across the family of labels with a "
    "defined AUROC; the mean row is a separate summary, not in the family, and is not adjusted.",
    "p_delong": "two-sided DeLong test (fast algorithm of Sun & Xu 2014), per label only.",
}


@dataclass
class BootstrapOptions:
    """How to resample: B, seed, rows or patients, device, CI method and level."""

    resamples: int = 1000
    seed: int = 0
    cluster: str = "none"
    device: str = "auto"
    ci: str = "percentile"
    alpha: float = 0.05
    chunk_size: int | None = None

    def check(self) -> None:
        if self.cluster not in ("none", "patient"):
            raise ConfigError(f"--cluster {self.cluster!r} must be 'none' or 'patient'")
        if self.ci not in ("percentile", "bca"):
            raise ConfigError(f"--ci {self.ci!r} must be 'percentile' or 'bca'")
        if self.ci == "bca" and self.cluster == "patient":
            raise ConfigError(
                "--ci bca needs a row jackknife and is not available with "
                "--cluster patient; use --ci percentile"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"--alpha must lie strictly between 0 and 1 (got {self.alpha})")


def _resampler(pred: Predictions, options: BootstrapOptions, source: str):
    clusters = None
    if options.cluster == "patient":
        if pred.patient_ids is None:
            raise ConfigError(
                f"--cluster patient needs patient ids, but {source} has none; "
                "write predictions with patient_ids or drop --cluster"
            )
        clusters = pred.patient_ids
    return make_resampler(pred.n_rows, options.resamples, options.seed, clusters)


def _with_mean(samples: np.ndarray, family: np.ndarray) -> np.ndarray:
    """Append the mean over family labels as a last column: (k, L) -> (k, L + 1)."""
    return np.column_stack([samples, mean_over_labels(samples, family)])


def _interval(samples, estimate, jackknife, options: BootstrapOptions):
    if options.ci == "bca":
        return bca_interval(samples, estimate, jackknife, options.alpha)
    return percentile_interval(samples, options.alpha)


def _validation_for(path: str | None, pred: Predictions) -> tuple[Predictions, str]:
    """Validation predictions for threshold choice, restricted to ``pred``'s labels."""
    if path is None:
        return pred, "evaluated set"
    val = read_predictions(path)
    missing = [label for label in pred.labels if label not in val.labels]
    if missing:
        raise DataFormatError(
            f"{path}: validation predictions lack label(s) "
            f"{', '.join(missing)}; thresholds are chosen per label"
        )
    if val.score_kind != pred.score_kind:
        raise DataFormatError(
            f"{path}: validation scores are {val.score_kind}s but the evaluated "
            f"scores are {pred.score_kind}s; thresholds need the same scale"
        )
    return val.select(np.arange(val.n_rows), pred.labels), f"validation file {path}"


def _base_rows(pred: Predictions, report) -> list[dict[str, Any]]:
    rows = []
    for col, label in enumerate(pred.labels):
        n_pos, n_neg = int(report.n_positive[col]), int(report.n_negative[col])
        rows.append(
            {
                "label": label,
                "n": n_pos + n_neg,
                "n_positive": n_pos,
                "prevalence": n_pos / (n_pos + n_neg) if n_pos + n_neg else np.nan,
                "defined": bool(report.defined[col]),
                "reason": report.reasons[col],
            }
        )
    return rows


def _bootstrap_record(resampler, options: BootstrapOptions) -> dict[str, Any]:
    device = resolve_device(options.device)
    record = {
        **resampler.describe(),
        "device": str(device),
        "ci": options.ci,
        "alpha": options.alpha,
        "chunk_size": options.chunk_size or default_chunk(resampler.n_rows, device),
    }
    if device.type == "cuda":
        import torch

        record["device_name"] = torch.cuda.get_device_name(device)
    return record


def compare_predictions(
    a: Predictions,
    b: Predictions,
    options: BootstrapOptions,
    *,
    validation_a: tuple[Predictions, str] | None = None,
    validation_b: tuple[Predictions, str] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Paired comparison of two models on the same rows (see ``pair_predictions``).

    Per label and for the mean over labels: both AUROCs with CIs, the difference B - A with its
    CI, the bootstrap p-values, BH-FDR across labels and DeLong's test; plus Youden threshold
    metrics of each model with CIs from the same resamples.
    """
    options.check()
    t, n_labels = a.targets, len(a.labels)
    rep_a, rep_b = auroc_report(t, a.scores), auroc_report(t, b.scores)
    family = rep_a.defined
    resampler = _resampler(a, options, "the predictions")
    val_a, on_a = validation_a or (a, "evaluated set")
    val_b, on_b = validation_b or (b, "evaluated set")
    thr_a = youden_thresholds(val_a.targets, val_a.scores)
    thr_b = youden_thresholds(val_b.targets, val_b.scores)
    statistics = {
        "auc_a": AurocStatistic(t, a.scores),
        "auc_b": AurocStatistic(t, b.scores),
        "conf_a": ConfusionStatistic(t, a.scores, thr_a[0]),
        "conf_b": ConfusionStatistic(t, b.scores, thr_b[0]),
    }
    boot = run_bootstrap(
        resampler,
        statistics,
        device=options.device,
        chunk_size=options.chunk_size,
        progress=progress,
    )
    samples_a, samples_b = _with_mean(boot["auc_a"], family), _with_mean(boot["auc_b"], family)
    est_a, est_b = np.r_[rep_a.values, rep_a.mean], np.r_[rep_b.values, rep_b.mean]
    jk_a = jk_b = None
    if options.ci == "bca":
        jk_a = _with_mean(jackknife_auroc(t, a.scores), family)
        jk_b = _with_mean(jackknife_auroc(t, b.scores), family)
    ci_a = _interval(samples_a, est_a, jk_a, options)
    ci_b = _interval(samples_b, est_b, jk_b, options)
    deltas, delta = samples_b - samples_a, est_b - est_a
    ci_d = _interval(deltas, delta, None if jk_a is None else jk_b - jk_a, options)
    p, p_two = paired_p_values(deltas, delta)
    p_fdr = benjamini_hochberg(np.where(family, p[:n_labels], np.nan))
    dl = delong_test(t, a.scores, b.scores, options.alpha)
    dl_fdr = benjamini_hochberg(dl.p)
    undefined = np.isnan(samples_a).sum(axis=0)
    rows = _base_rows(a, rep_a) + [{"label": "mean", "n_labels": int(family.sum())}]
    for k, row in enumerate(rows):
        row.update(
            auroc_a=est_a[k],
            auroc_a_ci=[ci_a[0][k], ci_a[1][k]],
            auroc_b=est_b[k],
            auroc_b_ci=[ci_b[0][k], ci_b[1][k]],
            delta=delta[k],
            delta_ci=[ci_d[0][k], ci_d[1][k]],
            p_bootstrap=p[k],
            p_bootstrap_two_sided=p_two[k],
            undefined_resamples=int(undefined[k]),
        )
        if k < n_labels:
            row.update(
                p_fdr=p_fdr[k],
                p_delong=dl.p[k],
                p_delong_fdr=dl_fdr[k],
                delong={
                    "z": dl.z[k],
                    "var_a": dl.var_a[k],
                    "var_b": dl.var_b[k],
                    "cov": dl.cov[k],
                    "delta_ci": [dl.ci_low[k], dl.ci_high[k]],
                    "reason": dl.reasons[k],
                },
            )
    report = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "kind": "compare",
        "bootstrap": _bootstrap_record(resampler, options),
        "p_values": P_VALUE_DEFINITIONS,
        "labels": rows[:-1],
        "mean": rows[-1],
        "thresholds": {
            "a": {
                "chosen_on": on_a,
                **threshold_summary(a.labels, t, a.scores, *thr_a, boot["conf_a"], options.alpha),
            },
            "b": {
                "chosen_on": on_b,
                **threshold_summary(b.labels, t, b.scores, *thr_b, boot["conf_b"], options.alpha),
            },
        },
        "versions": versions(),
        "time": now_utc(),
        "options": asdict(options),
    }
    report["verdict"] = verdict(report)
    return report


def evaluate_predictions(
    pred: Predictions,
    options: BootstrapOptions,
    *,
    validation: tuple[Predictions, str] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Single-model table: AUROC per label and mean with CIs, and Youden threshold metrics."""
    options.check()
    rep = auroc_report(pred.targets, pred.scores)
    resampler = _resampler(pred, options, "the predictions")
    val, chosen_on = validation or (pred, "evaluated set")
    thresholds = youden_thresholds(val.targets, val.scores)
    boot = run_bootstrap(
        resampler,
        {
            "auc": AurocStatistic(pred.targets, pred.scores),
            "conf": ConfusionStatistic(pred.targets, pred.scores, thresholds[0]),
        },
        device=options.device,
        chunk_size=options.chunk_size,
        progress=progress,
    )
    samples, estimate = _with_mean(boot["auc"], rep.defined), np.r_[rep.values, rep.mean]
    jk = None
    if options.ci == "bca":
        jk = _with_mean(jackknife_auroc(pred.targets, pred.scores), rep.defined)
    lo, hi = _interval(samples, estimate, jk, options)
    rows = _base_rows(pred, rep) + [{"label": "mean", "n_labels": int(rep.defined.sum())}]
    for k, row in enumerate(rows):
        row.update(
            auroc=estimate[k],
            auroc_ci=[lo[k], hi[k]],
            undefined_resamples=int(np.isnan(samples[:, k]).sum()),
        )
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "kind": "evaluate",
        "bootstrap": _bootstrap_record(resampler, options),
        "labels": rows[:-1],
        "mean": rows[-1],
        "thresholds": {
            "chosen_on": chosen_on,
            **threshold_summary(
                pred.labels, pred.targets, pred.scores, *thresholds, boot["conf"], options.alpha
            ),
        },
        "versions": versions(),
        "time": now_utc(),
        "options": asdict(options),
    }


def _file_record(path: str | os.PathLike, pred: Predictions) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "rows": pred.n_rows,
        "labels": len(pred.labels),
        "score_kind": pred.score_kind,
        "provenance": pred.provenance,
    }


def compare_files(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    options: BootstrapOptions,
    *,
    align: bool = False,
    validation_a: str | None = None,
    validation_b: str | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Read, pair (or align) and compare two predictions files; the report names both files."""
    if (validation_a is None) != (validation_b is None):
        raise ConfigError("give both --validation-a and --validation-b, or neither")
    options.check()
    raw_a, raw_b = read_predictions(path_a), read_predictions(path_b)
    a, b, alignment = pair_predictions(raw_a, raw_b, align=align, names=(str(path_a), str(path_b)))
    report = compare_predictions(
        a,
        b,
        options,
        validation_a=_validation_for(validation_a, a) if validation_a else None,
        validation_b=_validation_for(validation_b, b) if validation_b else None,
        progress=progress,
    )
    report["models"] = {"a": _file_record(path_a, raw_a), "b": _file_record(path_b, raw_b)}
    report["validation"] = {
        key: None if path is None else {"path": str(path), "sha256": sha256_file(path)}
        for key, path in (("a", validation_a), ("b", validation_b))
    }
    report["alignment"] = alignment
    return report


def evaluate_file(
    path: str | os.PathLike,
    options: BootstrapOptions,
    *,
    validation: str | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Read and evaluate one predictions file."""
    options.check()
    pred = read_predictions(path)
    report = evaluate_predictions(
        pred,
        options,
        validation=_validation_for(validation, pred) if validation else None,
        progress=progress,
    )
    report["models"] = {"a": _file_record(path, pred)}
    report["validation"] = (
        None if validation is None else {"path": str(validation), "sha256": sha256_file(validation)}
    )
    return report


def verdict(report: dict[str, Any]) -> str:
    """One sentence on the mean AUROC difference and how many labels differ after FDR."""
    mean, alpha = report["mean"], report["bootstrap"]["alpha"]
    if np.isnan(mean["delta"]):
        return "No label has a defined AUROC in both files; nothing to compare."
    lo, hi = mean["delta_ci"]
    tested = [row for row in report["labels"] if not np.isnan(row["p_fdr"])]
    hits = sum(row["p_fdr"] < alpha for row in tested)
    p = format_p(mean["p_bootstrap"], report["bootstrap"]["resamples"])
    p = p.replace("<", "< ") if p.startswith("<") else f"= {p}"
    shown = (
        f"mean AUROC difference B - A = {mean['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}], "
        f"bootstrap p {p} (alpha {alpha:g})"
    )
    labels = f"{hits} of {len(tested)} labels differ after FDR (q < {alpha:g})"
    if mean["p_bootstrap"] < alpha:
        better = "B" if mean["delta"] > 0 else "A"
        caveat = ""
        if lo <= 0 <= hi:
            caveat = " (the study's p is one-sided; the two-sided CI of the difference includes 0)"
        return f"{better} is better: {shown}; {labels}{caveat}."
    return f"No significant difference: {shown}; {labels}."


def jsonable(report: dict[str, Any]) -> Any:
    """The report with numpy values converted and NaN / inf written as null (strict JSON)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    return clean(to_jsonable(report))
