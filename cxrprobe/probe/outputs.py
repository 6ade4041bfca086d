"""What a ``cxrprobe probe`` run writes beside its ``--out``, and the provenance they carry.

Outputs for ``--out preds.json`` (or ``.npz``, ``.parquet``, ``.csv``), side by side:

``preds.json``                 test-split predictions (probabilities) with provenance
``preds.val.json``             validation-split predictions of the same probe (the chosen C or
                               k), in the same format: ``cxrprobe compare --validation-a`` chooses
                               Youden thresholds on them instead of on the test split. With
                               ``--refit-trainval`` the probe was refitted on these rows, so they
                               are in-sample (``validation_in_sample`` in their provenance)
``preds.weights.safetensors``  linear probe weights + standardisation (``--eval-only`` input)
``preds.summary.json``         grid table (validation AUROC per value), chosen value, per-finding
                               validation and test AUROC, split sizes, timings, resolved config
``preds.run.json``             the command's resolved config and versions (named after the
                               predictions, so several probes can share one folder)

A run that scores no validation rows (``--eval-only``, or a one-value grid without a validation
split) writes no ``preds.val.json`` and removes one an earlier run left there: it would not
belong to these predictions.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.data.targets import evaluation_targets
from cxrprobe.stats.auroc import auroc

VALIDATION_INFIX = ".val"  # preds.json -> preds.val.json (a fine-tune's val_predictions.json)


def output_paths(out: Path) -> dict[str, Path]:
    """Where a run writes: predictions (test and validation), weights, summary and run.json."""
    stem = out.with_suffix("")
    return {
        "predictions": out,
        "validation": stem.with_name(stem.name + VALIDATION_INFIX + out.suffix),
        "weights": stem.with_name(stem.name + ".weights.safetensors"),
        "summary": stem.with_name(stem.name + ".summary.json"),
        "run": stem.with_name(stem.name + ".run.json"),
    }


def store_provenance(emb: Any) -> dict[str, Any]:
    """Which model, weights and manifest the features came from (for the predictions file)."""
    identity, prov = emb.identity, emb.provenance
    model = identity.get("model") or {}
    return {
        "init": model.get("init"),
        "weights_sha256": model.get("weights_sha256"),
        "model": model or identity.get("source"),
        "dataset": {
            "manifest": prov.get("manifest"),
            "manifest_hash": prov.get("manifest_hash"),
            "label_policies": prov.get("label_policies"),  # what the ground truth means
        },
        "store": str(emb.path),
        "store_identity": identity,
    }


def training_policies(uncertain: str | None, blank: str | None) -> dict[str, Any]:
    """How labels became training targets (recorded beside the store's own label policies)."""
    return {"training_targets": {"uncertain": uncertain, "blank": blank}}


def config_dict(config: Any) -> dict[str, Any]:
    """A probe config as JSON-ready values (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def write_predictions(
    emb: Any,
    rows: np.ndarray,
    scores: np.ndarray,
    columns: np.ndarray,
    findings: list[str],
    provenance: dict[str, Any],
    path: Path,
) -> np.ndarray:
    """Write the predictions of store ``rows`` (targets: -1 and NaN as not annotated); return
    their AUROC per finding."""
    from cxrprobe.stats.predictions import Predictions
    from cxrprobe.stats.predictions import write_predictions as write

    targets = evaluation_targets(emb.labels[rows][:, columns]).astype(np.float64)
    patients = emb.patient_ids[rows]
    pred = Predictions(
        labels=list(findings),
        ids=[str(i) for i in emb.ids[rows]],
        targets=targets,
        scores=np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0),
        score_kind="probability",
        patient_ids=[str(p) for p in patients] if (patients != "").all() else None,
        provenance=provenance,
        subgroups=emb.metadata().subgroup_fields(rows),  # sex, age, view, when the store has them
    )
    write(pred, path)
    return auroc(targets, pred.scores)


def write_validation(
    emb: Any,
    rows: np.ndarray,
    scores: np.ndarray | None,
    columns: np.ndarray,
    findings: list[str],
    provenance: dict[str, Any],
    path: Path,
    in_sample: bool,
) -> str | None:
    """Write the validation predictions to ``path``; with no validation ``scores`` (None:
    ``--eval-only``) or ``rows``, write none and remove a stale file there. Returns a note for the
    summary, or None when there is nothing to say."""
    if scores is None or len(rows) == 0:
        why = "--eval-only scores the test split only" if scores is None else "no validation rows"
        if path.exists():
            path.unlink()
            return f"{why}: wrote no validation predictions and removed the stale {path}"
        return None if scores is None else f"{why}: wrote no validation predictions"
    record = {**provenance, "scored_split": "val", "validation_in_sample": in_sample}
    write_predictions(emb, rows, scores, columns, findings, record, path)
    if in_sample:
        return (
            f"{path}: the validation predictions are in-sample (--refit-trainval fitted the "
            "probe on these rows); thresholds chosen on them do not see the test split"
        )
    return None
