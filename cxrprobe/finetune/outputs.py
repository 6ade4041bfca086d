"""What a fine-tuning run writes besides checkpoints: the epoch log, predictions, the summary."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.data.targets import evaluation_targets
from cxrprobe.provenance import atomic_write_text, now_utc, versions

OUTPUTS = (
    "checkpoints",
    "log.csv",
    "predictions.json",
    "val_predictions.json",
    "summary.json",
    "failures.json",
    "run.json",
)


def clear_outputs(out_dir: Path) -> None:
    """Delete a previous run's outputs (``--overwrite``); other files are left alone."""
    for name in OUTPUTS:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def json_floats(values: np.ndarray, names: tuple[str, ...]) -> dict[str, float | None]:
    """Per-finding floats with NaN as None (JSON has no NaN)."""
    return {n: float(v) if np.isfinite(v) else None for n, v in zip(names, values, strict=True)}


def finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def write_log(path: Path, history: list[dict[str, Any]], findings: tuple[str, ...]) -> None:
    """``log.csv``: one row per epoch; every val_ column is on the validation split."""
    columns = [
        "epoch",
        "train_loss",
        "val_mean_auroc",
        "val_loss",
        "selection_split",
        "is_best",
        "lr",
        "images_per_s",
        "epoch_seconds",
        *(f"val_auroc_{f}" for f in findings),
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for entry in history:
        row = {k: entry.get(k) for k in columns}
        row.update({f"val_auroc_{f}": entry["val_auroc"].get(f) for f in findings})
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def predictions(
    source: Any, rows: np.ndarray, scores: np.ndarray, provenance: dict[str, Any]
) -> Any:
    """A :class:`Predictions` of the rows that were scored (failed rows have NaN scores, left out)."""
    from cxrprobe.stats.predictions import Predictions

    meta = source.metadata
    ok = ~np.isnan(scores).any(axis=1)
    kept = rows[ok]
    return Predictions(
        labels=list(meta.findings),
        ids=meta.ids[kept].tolist(),
        targets=evaluation_targets(meta.labels[kept]).astype(np.float64),
        scores=scores[ok].astype(np.float64),
        score_kind="probability",
        patient_ids=meta.patient_id[kept].tolist(),
        provenance=provenance,
        subgroups=meta.subgroup_fields(kept),  # sex, age, view, when the rows have them
    )


def prediction_provenance(
    resolved: dict[str, Any], split: str, extra: dict[str, Any]
) -> dict[str, Any]:
    """Provenance stored with a predictions file: model, weights hash, data, split, config, versions."""
    model = resolved["model"]
    return {
        "method": "finetune",
        "init": model["init"],
        "arch": model["arch"],
        "weights_sha256": model["weights_sha256"],
        "weights_path": model["weights_path"],
        "dataset": resolved["dataset"],  # its label_policies: what the targets mean
        "training_targets": {"uncertain": resolved["uncertain"], "blank": resolved["blank"]},
        "split": split,
        "config": resolved,
        "versions": versions(),
        "time": now_utc(),
        **extra,
    }


def failure_report(source: Any, failures: dict[int, str]) -> list[dict[str, Any]]:
    """Failed rows with their id, split and reason, in row order."""
    meta = source.metadata
    return [
        {
            "row": int(r),
            "image_id": str(meta.ids[r]),
            "split": str(meta.split[r]),
            "reason": failures[r],
        }
        for r in sorted(failures)
    ]


def summary(
    state: Any,
    config: Any,
    plan: Any,
    world_size: int,
    out_dir: Path,
    findings: tuple[str, ...],
    val_report: Any = None,
    test_report: Any = None,
    n_failures: int = 0,
) -> dict[str, Any]:
    """``summary.json``: progress, the best validation epoch and, once finished, AUROC per finding."""
    speeds = [h["images_per_s"] for h in state.history if np.isfinite(h["images_per_s"])]
    out = {
        "out_dir": str(out_dir),
        "finished": state.finished,
        "epochs": config.epochs,
        "epochs_completed": state.next_epoch,
        "stopped_early": state.stopped_early,
        "best_epoch": state.best_epoch,
        "selection_split": "val",
        "select_by": config.select_by,
        "recipe": config.recipe,
        "best_val_mean_auroc": finite_or_none(state.best_val_mean_auroc),
        "best_val_loss": finite_or_none(state.best_val_loss),
        "train_images_per_s": float(np.median(speeds)) if speeds else None,
        "world_size": world_size,
        "precision": plan.precision,
        "failures": n_failures,
        "versions": versions(),
    }
    if test_report is not None:
        out.update(
            {
                "val_auroc": json_floats(val_report.values, findings),
                "test_mean_auroc": finite_or_none(test_report.mean),
                "test_auroc": json_floats(test_report.values, findings),
                "test_auroc_undefined": {
                    f: r for f, r in zip(findings, test_report.reasons, strict=True) if r
                },
                "predictions": str(out_dir / "predictions.json"),
            }
        )
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The human summary the CLI prints: best epoch, AUROC on val and test per finding, speed."""
    if not summary.get("finished"):
        return (
            f"stopped after epoch {summary['epochs_completed']} of {summary['epochs']} "
            f"(rerun with --resume to continue); best so far: epoch {summary['best_epoch']}, "
            f"val mean AUROC {_fmt(summary['best_val_mean_auroc'])}"
        )
    lines = [
        f"best epoch {summary['best_epoch']} of {summary['epochs_completed']} (chosen on the "
        f"{summary['selection_split']} split by {_SELECTED_BY[summary['select_by']]}, "
        f"recipe {summary['recipe']}){' — stopped early' if summary['stopped_early'] else ''}",
        f"mean AUROC: val {_fmt(summary['best_val_mean_auroc'])}, test {_fmt(summary['test_mean_auroc'])}",
        f"training speed: {_fmt(summary['train_images_per_s'], '.1f')} images/s",
        f"{'finding':<28} {'val AUROC':>10} {'test AUROC':>10}",
    ]
    for name, test in summary["test_auroc"].items():
        lines.append(f"{name:<28} {_fmt(summary['val_auroc'].get(name)):>10} {_fmt(test):>10}")
    if summary["failures"]:
        lines.append(
            f"{summary['failures']} image(s) could not be read and were left out: see failures.json"
        )
    return "\n".join(lines)


_SELECTED_BY = {"auroc": "mean AUROC", "loss": "loss"}


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)
