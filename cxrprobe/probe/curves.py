"""Label-efficiency curves: the probe refitted on patient-level subsets of the training split.

``cxrprobe probe --train-fraction 0.01,0.1,1 --repeats 5`` fits the probe once per (fraction,
repeat) on a subset of the training split; validation and test stay whole, so every point is
chosen and judged on the same rows. The subsets follow one rule:

- **Patient-level.** A subset takes whole patients (rows without a patient id count as their own
  patient): ``max(1, round(fraction * P))`` of the ``P`` training patients, so the fraction is
  one of patients, respected to within rounding; the rows follow.
- **Seeded and nested.** Repeat ``r`` ranks the patients once, by ``sha256`` of ``(seed, r)``
  and the patient id (:func:`cxrprobe.data.splits.patient_order`); every fraction of that repeat
  takes the first patients of the ranking, so its subsets are nested (the 1% subset lies inside
  the 10% one) and a subset does not depend on the other fractions asked for, on row order, or
  on the machine. Fraction 1 is the whole training split, the same fit as a plain probe.
- **Kept fittable.** Before the random ranking, the ranking puts, for each finding and class
  (positive, negative), the first patient in random order holding that training target unless a
  patient already put first holds it; requirements go rarest first (fewest patients). A subset of
  at least that many patients (at most twice the number of findings, usually far fewer) so keeps
  a positive and a negative training row of every finding the training split has both for; a
  smaller one keeps them for the rarest findings first. Tiny subsets therefore hold rare
  findings slightly more often than their prevalence. Training targets come from
  :mod:`cxrprobe.data.targets` under the probe's ``--uncertain`` and ``--blank`` policies.

A finding a subset still lacks a class for is **flagged** (``unfittable`` in its provenance and
in the curve summary): the linear probe gives it a constant score, so its AUROC is undefined and
it drops out of that point's mean. A subset with no fittable finding at all is refused before
anything is fitted. Points with the same rows (fraction 1 in every repeat) are fitted once and
their outputs copied.

Outputs for ``--out DIR/NAME.json`` (or ``.npz``): ``DIR/NAME/f{fraction}_r{repeat}.json`` (the
test predictions, provenance recording fraction, repeat, seed, patients, rows and the sha256 of
the subset's row ids), with ``.weights.safetensors`` (linear) and ``.summary.json`` beside each,
and ``DIR/NAME/curve.json``: every point and, per fraction, the test AUROC over repeats (mean,
sd, range, per finding).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.data.splits import patient_order
from cxrprobe.data.targets import NEGATIVE, POSITIVE, fittable, training_targets
from cxrprobe.errors import ConfigError
from cxrprobe.progress import ProgressFactory
from cxrprobe.provenance import atomic_write_json, now_utc

CURVE_FORMAT = "cxrprobe.probe-curve"
CURVE_VERSION = 1
SUBSET_RULE = (
    "per repeat, training patients ranked by sha256(seed, repeat, patient); first, for each "
    "finding and class (rarest first), the first patient in that order with that training "
    "target unless one already taken has it; a fraction takes the first max(1, round(fraction * "
    "patients)) patients of the ranking (nested across fractions); validation and test fixed"
)


@dataclass(frozen=True)
class Subset:
    """One curve point's training rows: ``positions`` (sorted) index the training split's rows."""

    fraction: float
    repeat: int
    positions: np.ndarray
    patients: int
    patients_total: int
    rows_sha256: str
    unfittable: list[str]

    @property
    def name(self) -> str:
        """The point's file stem, ``f0.1_r0``."""
        return f"f{self.fraction:g}_r{self.repeat}"


def check_curve_options(fractions: Sequence[float] | None, repeats: int) -> list[str]:
    """Problems with ``--train-fraction`` / ``--repeats`` (for ``ProbeConfig.check``)."""
    problems = []
    if repeats < 1:
        problems.append(f"--repeats must be 1 or more, got {repeats}")
    if fractions is None:
        if repeats != 1:
            problems.append("--repeats needs --train-fraction (the fractions to repeat)")
        return problems
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        problems.append(f"--train-fraction needs values in (0, 1], got {list(fractions)}")
    repeated = sorted({f for f in fractions if list(fractions).count(f) > 1})
    if repeated:
        problems.append(f"--train-fraction lists {repeated} more than once")
    return problems


def curve_paths(out: Path) -> dict[str, Path]:
    """Where a curve for ``--out`` goes: its folder (``out`` without suffix) and ``curve.json``."""
    folder = out.with_suffix("")
    return {"folder": folder, "curve": folder / "curve.json"}


def _repeat_seed(seed: int, repeat: int) -> int:
    """The seed that ranks repeat ``repeat``'s patients (independent streams per repeat)."""
    digest = hashlib.sha256(f"cxrprobe-curve\x1f{seed}\x1f{repeat}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def patient_ranking(units: np.ndarray, has_class: np.ndarray, seed: int, repeat: int) -> np.ndarray:
    """Indices into ``units`` (sorted patient ids) in the order subsets take them.

    ``has_class`` (U, K) says which patient holds which required (finding, class); see the
    module docs for the rule.
    """
    order = np.searchsorted(units, patient_order(units, _repeat_seed(seed, repeat)).astype(str))
    held = has_class[order]  # (U, K) in random order
    first: list[int] = []
    covered = np.zeros(held.shape[1], dtype=bool)
    for k in np.argsort(held.sum(axis=0), kind="stable"):
        if covered[k] or not held[:, k].any():
            continue
        at = int(np.argmax(held[:, k]))
        first.append(at)
        covered |= held[at]
    rest = np.setdiff1d(np.arange(len(order)), first, assume_unique=True)
    return order[np.concatenate([np.asarray(first, dtype=np.int64), rest])]


def draw_subsets(
    groups: np.ndarray,
    ids: np.ndarray,
    targets: np.ndarray,
    findings: Sequence[str],
    fractions: Sequence[float],
    repeats: int,
    seed: int,
) -> list[Subset]:
    """Every (repeat, fraction) subset of the training rows (repeat-major, fractions ascending).

    ``groups`` (n,) patient per training row, ``ids`` (n,) its image ids (hashed into
    ``rows_sha256``), ``targets`` (n, L) its 1/0/NaN training targets. Raises ConfigError when a
    subset leaves no finding with both classes.
    """
    units, unit_of_row = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    held = []  # (U, L) per class: the patient has a training row of that class for the finding
    for value in (POSITIVE, NEGATIVE):
        per_patient = np.zeros((len(units), targets.shape[1]), dtype=bool)
        np.logical_or.at(per_patient, unit_of_row, targets == value)
        held.append(per_patient)
    has_class = np.concatenate(held, axis=1)
    subsets = []
    for repeat in range(repeats):
        ranking = patient_ranking(units, has_class, seed, repeat)
        for fraction in sorted(fractions):
            count = min(len(units), max(1, round(fraction * len(units))))
            positions = np.flatnonzero(np.isin(unit_of_row, ranking[:count]))
            able = fittable(targets[positions])
            if not able.any():
                raise ConfigError(
                    f"--train-fraction {fraction:g}: repeat {repeat}'s subset of {count} of "
                    f"{len(units)} training patients has no finding with both positive and "
                    "negative training labels; use a larger fraction"
                )
            digest = hashlib.sha256("\n".join(map(str, ids[positions])).encode()).hexdigest()
            missing = [f for f, ok in zip(findings, able, strict=True) if not ok]
            subsets.append(Subset(fraction, repeat, positions, count, len(units), digest, missing))
    return subsets


# ---------------------------------------------------------------------------------- the loop
def run_curve(
    config: Any,
    emb: Any,
    splits: Any,
    x: dict[str, Any],
    labels: dict[str, np.ndarray],
    findings: list[str],
    columns: np.ndarray,
    base: dict[str, Any],
    device: Any,
    progress: ProgressFactory | None,
    started: float,
) -> dict[str, Any]:
    """Fit and score every point of ``config``'s curve on the loaded splits; write each point's
    outputs and ``curve.json``; return the curve summary. Called by ``run_probe``."""
    import torch

    from cxrprobe.outputs import check_output_location
    from cxrprobe.probe import outputs as probe_outputs
    from cxrprobe.probe.fits import FITS

    paths = curve_paths(config.out)
    check_output_location(paths["folder"], "folder")
    train_rows = splits.rows["train"]
    groups = np.where(emb.patient_ids != "", emb.patient_ids, emb.ids)[train_rows]
    targets = training_targets(labels["train"], config.uncertain, config.blank)
    subsets = draw_subsets(
        groups,
        emb.ids[train_rows],
        targets,
        findings,
        config.train_fractions,
        config.repeats,
        config.seed,
    )
    fit = FITS[config.method]
    suffix = config.out.suffix.lower()
    points: list[dict[str, Any]] = []
    fitted: dict[str, dict[str, Path]] = {}  # rows_sha256 -> outputs of the point fitted on them
    for subset in subsets:
        point = probe_outputs.output_paths(paths["folder"] / f"{subset.name}{suffix}")
        record = {
            "fraction": subset.fraction,
            "repeat": subset.repeat,
            "seed": config.seed,
            "patients": subset.patients,
            "patients_total": subset.patients_total,
            "rows": len(subset.positions),
            "rows_total": len(train_rows),
            "rows_sha256": subset.rows_sha256,
            "unfittable": subset.unfittable,
            "subset_rule": SUBSET_RULE,
        }
        if subset.rows_sha256 in fitted:  # the same rows (fraction 1): the same fit
            same = fitted[subset.rows_sha256]
            summary = _copy_point(same, point, record)
        else:
            whole = len(subset.positions) == len(train_rows)
            index = torch.as_tensor(subset.positions, device=x["train"].device)
            xs = x if whole else {**x, "train": x["train"][index]}
            ls = {**labels, "train": labels["train"][subset.positions]}
            fit_started = time.perf_counter()
            summary, scores, provenance = fit(
                config, xs, ls, findings, device, progress, base, point
            )
            test_auroc = probe_outputs.write_predictions(
                emb,
                splits.rows["test"],
                scores["test"],
                columns,
                findings,
                {**provenance, "curve": record, "time": now_utc()},
                point["predictions"],
            )
            weights = "probe_weights" in provenance  # the linear probe's, not kNN's
            summary = _point_summary(summary, findings, test_auroc, record, point, weights)
            summary["timings"] = {"fit_s": time.perf_counter() - fit_started}
            atomic_write_json(point["summary"], {**base, **summary, "time": now_utc()})
            fitted[subset.rows_sha256] = point
        points.append(
            {
                **{k: record[k] for k in ("fraction", "repeat", "patients", "rows")},
                "rows_sha256": subset.rows_sha256,
                "unfittable": subset.unfittable,
                "predictions": point["predictions"].name,
                "chosen": summary.get("chosen"),
                "val_mean_auroc": summary.get("val_mean_auroc"),
                "test_mean_auroc": summary["test_mean_auroc"],
                "test_auroc": summary["test_auroc"],
            }
        )
    notes = list(splits.notes)
    if config.refit_trainval:
        notes.append(
            "--refit-trainval: every point was refitted on its subset plus the whole validation "
            "split, so each point also trained on the validation rows"
        )
    curve = {
        "format": CURVE_FORMAT,
        "version": CURVE_VERSION,
        **base,
        "findings": findings,
        "fractions": sorted(config.train_fractions),
        "repeats": config.repeats,
        "seed": config.seed,
        "subset_rule": SUBSET_RULE,
        "training": {"patients": subsets[0].patients_total, "rows": len(train_rows)},
        "points": points,
        "curve": summarise_points(points, findings),
        "splits": splits.table(),
        "notes": notes,
        "timings": {"total_s": time.perf_counter() - started},
        "outputs": {"curve": str(paths["curve"]), "folder": str(paths["folder"])},
        "time": now_utc(),
    }
    atomic_write_json(paths["curve"], curve)
    return curve


def _point_summary(summary, findings, test_auroc, record, point, weights) -> dict[str, Any]:
    from cxrprobe.probe.summary import mean_or_none, per_finding

    written = ["predictions", "summary"] + (["weights"] if weights else [])
    return {
        **summary,
        "findings": findings,
        "curve": record,
        "test_auroc": per_finding(findings, test_auroc),
        "test_mean_auroc": mean_or_none(test_auroc),
        "outputs": {k: str(point[k]) for k in written},
    }


def _copy_point(
    source: dict[str, Path], target: dict[str, Path], record: dict[str, Any]
) -> dict[str, Any]:
    """Write ``target``'s outputs as copies of ``source``'s (a point fitted on the same rows),
    with this point's curve record; returns its summary."""
    import json

    from cxrprobe.stats.predictions import read_predictions, write_predictions

    summary = json.loads(source["summary"].read_text())
    pred = read_predictions(source["predictions"])
    pred.provenance = {
        **pred.provenance,
        "curve": record,
        "same_fit_as": source["predictions"].name,
        "time": now_utc(),
    }
    write_predictions(pred, target["predictions"])
    if "weights" in summary["outputs"]:
        tmp = target["weights"].with_name(f".{target['weights'].name}.tmp")
        shutil.copyfile(source["weights"], tmp)
        tmp.replace(target["weights"])
    summary.update(curve=record, same_fit_as=source["predictions"].name, time=now_utc())
    summary["outputs"] = {k: str(target[k]) for k in summary["outputs"]}
    atomic_write_json(target["summary"], summary)
    return summary


def _spread(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample sd (None below two values), min and max of the defined values."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    if not defined.size:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(defined.mean()),
        "sd": float(defined.std(ddof=1)) if defined.size > 1 else None,
        "min": float(defined.min()),
        "max": float(defined.max()),
        "n": int(defined.size),
    }


def summarise_points(points: list[dict[str, Any]], findings: Sequence[str]) -> list[dict[str, Any]]:
    """Per fraction (ascending): patients, mean rows, and the test AUROC over repeats (mean,
    sample sd, range; per finding mean and sd) with how many repeats flagged each finding."""
    rows = []
    for fraction in sorted({p["fraction"] for p in points}):
        at = [p for p in points if p["fraction"] == fraction]
        per_finding = {f: _spread([p["test_auroc"][f] for p in at]) for f in findings}
        unfittable = {f: sum(f in p["unfittable"] for p in at) for f in findings}
        rows.append(
            {
                "fraction": fraction,
                "patients": at[0]["patients"],
                "rows_mean": float(np.mean([p["rows"] for p in at])),
                "repeats": len(at),
                "test_mean_auroc": _spread([p["test_mean_auroc"] for p in at]),
                "test_auroc": {
                    f: {k: s[k] for k in ("mean", "sd")} for f, s in per_finding.items()
                },
                "unfittable_repeats": {f: n for f, n in unfittable.items() if n},
            }
        )
    return rows


def format_curve(curve: dict[str, Any]) -> list[str]:
    """Human-readable lines: one per fraction, then the files written."""

    def num(value: float | None) -> str:
        return "  n/a" if value is None else f"{value:.3f}"

    lines = [
        f"{curve['method']} label-efficiency curve on {curve['features']} from {curve['store']}: "
        f"{curve['training']['patients']} training patients, {curve['repeats']} repeat(s)"
    ]
    lines += [f"note: {n}" for n in curve["notes"]]
    lines.append("fraction  patients  test mean AUROC (sd)  [min, max]   unfittable findings")
    for row in curve["curve"]:
        auc = row["test_mean_auroc"]
        flagged = ", ".join(f"{f} ({n})" for f, n in row["unfittable_repeats"].items()) or "-"
        lines.append(
            f"{row['fraction']:<8g}  {row['patients']:>8}  {num(auc['mean'])} ({num(auc['sd'])})"
            f"        [{num(auc['min'])}, {num(auc['max'])}]  {flagged}"
        )
    lines.append(f"wrote {curve['outputs']['curve']} and {len(curve['points'])} point(s) beside it")
    return lines
