"""Assemble the comparison (two models) and evaluation (one model) reports.

One bootstrap run feeds everything: both models' AUROCs, confusion counts at fixed Youden
thresholds and calibration, overall and in every subgroup, are evaluated on the same resample
counts. The report is a plain dict (written as JSON) that records how it was made: seed,
resamples, resample scheme, device, CI method, the p-value and label-family definitions, both
files' sha256 and provenance, and package versions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from cxrprobe.errors import ConfigError, DataFormatError
from cxrprobe.progress import ProgressFactory
from cxrprobe.provenance import now_utc, sha256_file, versions
from cxrprobe.stats.auroc import score_order
from cxrprobe.stats.blocks import Population, compare_block, evaluate_block, gap_rows
from cxrprobe.stats.bootstrap import RankStatistic, make_resampler, run_bootstrap
from cxrprobe.stats.calibration import INTERVALS, CalibrationStatistic, reliability_table
from cxrprobe.stats.engine import default_chunk, make_backend
from cxrprobe.stats.families import constant_scores
from cxrprobe.stats.groups import MISSING, SubgroupSpec, parse_by, subgroup_masks
from cxrprobe.stats.intervals import smallest_p
from cxrprobe.stats.options import BootstrapOptions
from cxrprobe.stats.pairing import model_names, narrow_findings, pair_predictions
from cxrprobe.stats.predictions import Predictions, read_predictions, validate_predictions
from cxrprobe.stats.thresholds import youden_thresholds
from cxrprobe.stats.verdict import verdict, warnings_of

REPORT_FORMAT = "cxrprobe.stats-report"
REPORT_VERSION = 3  # 2: a two-sided p_bootstrap decides; 3: ECE basic CIs, ece_bias_corrected
P_VALUE_DEFINITIONS = {
    "p_bootstrap": "two-sided paired bootstrap p-value, min(1, 2 * (min(k_le, k_ge) + 1) / "
    "(B' + 1)), k_le / k_ge the resamples with delta <= 0 / >= 0 among the B' where it is "
    "defined, delta = AUROC_B - AUROC_A. It decides: significant when <= alpha.",
    "p_fdr": "Benjamini-Hochberg adjustment of p_bootstrap across the FDR family (labels with a "
    "defined AUROC, non-constant scores and, unless --include-rare, at least min_positives "
    "positive and negative rows); the mean row is a separate summary and is not adjusted.",
    "p_study_one_sided": "the study's p-value, kept to reproduce the paper and never used to "
    "decide: the share of resamples in which the model with the higher AUROC on the full data "
    "does not have a strictly higher AUROC (ties count as not winning); 1 when the AUROCs are "
    "equal. One-sided in the observed direction, so it rejects about twice as often as alpha.",
    "p_delong": "two-sided DeLong test (fast algorithm of Sun & Xu 2014), per label only; "
    "p_delong_fdr is its Benjamini-Hochberg adjustment over the same FDR family.",
}


def _resampler(pred: Predictions, options: BootstrapOptions, sources: list[str]):
    clusters = None
    if options.cluster == "patient":
        if pred.patient_ids is None:
            lacking = (
                f"{sources[0]} has none"
                if len(sources) == 1
                else f"neither {' nor '.join(sources)} has any"
            )
            raise ConfigError(
                f"--cluster patient needs patient ids, but {lacking}; "
                "write predictions with patient_ids or drop --cluster"
            )
        clusters = pred.patient_ids
    return make_resampler(pred.n_rows, options.resamples, options.seed, clusters)


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


def _bootstrap_record(resampler, options: BootstrapOptions) -> dict[str, Any]:
    engine = make_backend(options.device)
    kind = "cpu" if engine.name == "numpy" else "cuda"
    record = {
        **resampler.describe(),
        "device": str(engine.device),
        "ci": options.ci,
        "alpha": options.alpha,
        "smallest_p": smallest_p(resampler.n_resamples),
        "chunk_size": options.chunk_size or default_chunk(resampler.n_rows, kind),
    }
    if kind == "cuda":
        import torch

        record["device_name"] = torch.cuda.get_device_name(engine.device)
    return record


def _masked(targets: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Targets with the rows outside ``mask`` not annotated (NaN), label columns contiguous."""
    if mask is None:
        return targets
    out = np.array(targets, order="F")
    out[~mask] = np.nan
    return out


def _analyse(
    kind: str,
    pred: dict[str, Predictions],
    validation: dict[str, tuple[Predictions, str]],
    options: BootstrapOptions,
    by: Sequence[str | SubgroupSpec],
    progress: ProgressFactory | None,
) -> dict[str, Any]:
    """The shared body of compare and evaluate: one bootstrap, the overall block, subgroups."""
    options.check()
    sources = [p.source or f"the predictions of {m.upper()}" for m, p in pred.items()]
    pred = {
        m: validate_predictions(p, where)
        for (m, p), where in zip(pred.items(), sources, strict=True)
    }
    first = pred["a"]
    labels, targets = first.labels, np.asfortranarray(first.targets)  # label columns contiguous
    specs = [spec if isinstance(spec, SubgroupSpec) else parse_by(spec) for spec in by]
    plan = [(spec, subgroup_masks(first.subgroups, spec, " and ".join(sources))) for spec in specs]
    masks = [None] + [mask for _, groups in plan for _, mask in groups if mask.any()]
    resampler = _resampler(first, options, sources)
    scores = {m: np.asfortranarray(p.scores) for m, p in pred.items()}
    orders = {m: score_order(s) for m, s in scores.items()}  # every sort, once
    thresholds = {  # on the evaluated scores themselves unless validation files are given
        m: youden_thresholds(
            v[0].targets,
            v[0].scores,
            order=orders[m] if np.array_equal(v[0].scores, scores[m]) else None,
        )
        for m, v in validation.items()
    }
    constant = {m: constant_scores(targets, s) for m, s in scores.items()}
    statistics: dict[str, Any] = {}
    for k, mask in enumerate(masks):
        t = _masked(targets, mask)
        for m, s in scores.items():
            statistics[f"rank_{m}@{k}"] = RankStatistic(t, s, thresholds[m][0], order=orders[m])
            if pred[m].score_kind == "probability":
                statistics[f"cal_{m}@{k}"] = CalibrationStatistic(
                    t, s, options.ece_bins, order=orders[m]
                )
    boot = run_bootstrap(
        resampler,
        statistics,
        device=options.device,
        chunk_size=options.chunk_size,
        progress=progress,
    )
    make = compare_block if kind == "compare" else evaluate_block

    def block(k: int) -> tuple[dict[str, Any], Population]:
        samples = {}
        for key, value in boot.items():
            name, population = key.split("@")
            if population == str(k) and name.startswith("rank_"):
                samples[f"auc_{name[5:]}"], samples[f"conf_{name[5:]}"] = (
                    value["auc"],
                    value["conf"],
                )
            elif population == str(k):
                samples[name] = value
        t = _masked(targets, masks[k])
        return make(labels, t, scores, orders, samples, thresholds, constant, options)

    overall, _ = block(0)
    named = [m for m, p in pred.items() if p.source]
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "kind": kind,
        "names": dict(zip(named, model_names([pred[m].source for m in named]), strict=True)),
        "bootstrap": _bootstrap_record(resampler, options),
        "label_families": {
            "min_positives": options.min_positives,
            "include_rare": options.include_rare,
            "rule": "mean: labels with positive and negative rows and non-constant scores; "
            "rare: fewer than min_positives positive or negative rows; FDR family: the mean's "
            "labels less the rare ones (unless include_rare)",
        },
        **overall,
        "calibration_method": {
            "bins": options.ece_bins,
            "binning": "equal-mass: annotated rows sorted by score (stable), cut into "
            "min(bins, rows) consecutive groups (numpy.array_split); bins fixed on the full "
            "data, re-weighted in every resample",
            "intervals": INTERVALS,
        },
        "reliability": {
            m: reliability_table(labels, targets, p.scores, options.ece_bins, order=orders[m])
            for m, p in pred.items()
            if p.score_kind == "probability"
        },
        "subgroups": _subgroups(labels, plan, block, options),
        "versions": versions(),
        "time": now_utc(),
        "options": asdict(options),
    }
    chosen_on = {m: v[1] for m, v in validation.items()}
    if kind == "compare":
        report["p_values"] = P_VALUE_DEFINITIONS
        for m in "ab":
            report["thresholds"][m] = {"chosen_on": chosen_on[m], **report["thresholds"][m]}
    else:
        report["thresholds"] = {"chosen_on": chosen_on["a"], **report["thresholds"]}
    finish(report)
    return report


def _subgroups(
    labels: list[str],
    plan: list[tuple[SubgroupSpec, list[tuple[str, np.ndarray]]]],
    block: Callable[[int], tuple[dict[str, Any], Population]],
    options: BootstrapOptions,
) -> list[dict[str, Any]]:
    """Per ``--by``: every subgroup's block (or why it has none) and gaps to the reference.
    ``block(k)`` analyses population k (0: all rows; then the non-empty subgroups in order)."""
    sections, k = [], 0
    for spec, groups in plan:
        entries: list[dict[str, Any]] = []
        analysed: dict[str, Population] = {}
        for name, mask in groups:
            entry: dict[str, Any] = {"name": name, "rows": int(mask.sum())}
            entries.append(entry)
            if not mask.any():
                entry["reason"] = "no rows"
                continue
            k += 1
            result, analysed[name] = block(k)
            entry.update(result)
            if result["mean"]["n_labels"] == 0:
                entry["reason"] = (
                    "no label has both positive and negative rows here (with usable scores): "
                    "AUROC undefined"
                )
        usable = [e for e in entries if e["name"] in analysed and "reason" not in e]
        preferred = [e for e in usable if e["name"] != MISSING] or usable
        reference = max(preferred, key=lambda e: e["rows"])["name"] if preferred else None
        gaps = [
            {"group": e["name"], "reference": reference}
            | gap_rows(labels, analysed[e["name"]], analysed[reference], options)
            for e in usable
            if e["name"] != reference
        ]
        sections.append(
            {
                "by": str(spec),
                "field": spec.field,
                "reference": reference,
                "reference_rule": "the subgroup with the most rows (known values first) "
                "among those with a defined mean AUROC",
                "groups": entries,
                "gaps": gaps,
            }
        )
    return sections


def finish(report: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute the warnings and, for comparisons, the verdict (after renaming the models)."""
    report["warnings"] = warnings_of(report)
    if report["kind"] == "compare":
        report["verdict"] = verdict(report)
    return report


def compare_predictions(
    a: Predictions,
    b: Predictions,
    options: BootstrapOptions,
    *,
    validation_a: tuple[Predictions, str] | None = None,
    validation_b: tuple[Predictions, str] | None = None,
    by: Sequence[str | SubgroupSpec] = (),
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Paired comparison of two models on the same rows (see ``pair_predictions``).

    Per label and for the mean over labels: both AUROCs with CIs, the difference B - A with its
    CI, the two-sided bootstrap p (which decides), BH-FDR across the label family, DeLong's
    test and the study's one-sided p; Youden threshold metrics and calibration of each model;
    and the same per subgroup of every ``by`` field, with AUROC gaps between subgroups.
    """
    return _analyse(
        "compare",
        {"a": a, "b": b},
        {"a": validation_a or (a, "evaluated set"), "b": validation_b or (b, "evaluated set")},
        options,
        by,
        progress,
    )


def evaluate_predictions(
    pred: Predictions,
    options: BootstrapOptions,
    *,
    validation: tuple[Predictions, str] | None = None,
    by: Sequence[str | SubgroupSpec] = (),
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Single-model table: AUROC per label and mean with CIs, Youden threshold metrics and
    calibration; the same per subgroup of every ``by`` field, with AUROC gaps."""
    return _analyse(
        "evaluate",
        {"a": pred},
        {"a": validation or (pred, "evaluated set")},
        options,
        by,
        progress,
    )


def _file_record(path: str | os.PathLike, pred: Predictions) -> dict[str, Any]:
    return {
        "path": str(path),
        "sha256": sha256_file(path),
        "rows": pred.n_rows,
        "labels": len(pred.labels),
        "score_kind": pred.score_kind,
        "subgroup_fields": sorted(pred.subgroups),
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
    by: Sequence[str | SubgroupSpec] = (),
    findings: str | Sequence[str] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Read, pair (or align) and compare two predictions files; the report names both files.
    ``findings`` (a subset spec, see ``narrow_findings``) keeps only those labels of each."""
    if (validation_a is None) != (validation_b is None):
        raise ConfigError("give both --validation-a and --validation-b, or neither")
    options.check()
    raw_a, raw_b = read_predictions(path_a), read_predictions(path_b)
    a, b = narrow_findings(raw_a, findings), narrow_findings(raw_b, findings)
    a, b, alignment = pair_predictions(a, b, align=align, names=(str(path_a), str(path_b)))
    report = compare_predictions(
        a,
        b,
        options,
        validation_a=_validation_for(validation_a, a) if validation_a else None,
        validation_b=_validation_for(validation_b, b) if validation_b else None,
        by=by,
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
    by: Sequence[str | SubgroupSpec] = (),
    findings: str | Sequence[str] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Read and evaluate one predictions file (only the labels of ``findings``, if given)."""
    options.check()
    raw = read_predictions(path)
    pred = narrow_findings(raw, findings)
    report = evaluate_predictions(
        pred,
        options,
        validation=_validation_for(validation, pred) if validation else None,
        by=by,
        progress=progress,
    )
    report["models"] = {"a": _file_record(path, raw)}
    report["validation"] = (
        None if validation is None else {"path": str(validation), "sha256": sha256_file(validation)}
    )
    return report
