"""Which store rows a probe trains on, chooses on and is tested on.

Splits come from the store's ``split`` column, or from a CSV (``image_id,split``) that overrides
it; a validation split can instead be held out from the training rows by whole patients. Failed
rows (unreadable images) are excluded and counted; an empty split is an error naming the splits
present; a patient with rows in two roles (train, val, test) is refused as leakage unless
``allow_leakage`` (then reported in the notes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.data.splits import check_patient_leakage
from cxrprobe.errors import ConfigError, DataFormatError, InputFileError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    """Row indices per role (failed rows removed), the split names behind them, what was left out."""

    rows: dict[str, np.ndarray]
    names: dict[str, list[str]]
    failed_excluded: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def table(self) -> dict[str, dict[str, Any]]:
        """Per role: split names, rows used, failed rows excluded (for the summary)."""
        return {
            role: {
                "names": self.names[role],
                "rows": len(rows),
                "failed_excluded": self.failed_excluded[role],
            }
            for role, rows in self.rows.items()
        }


def split_assignment(emb: Any, split_csv: Path | None) -> tuple[np.ndarray, list[str]]:
    """(n,) split name per store row: the store's, or a CSV's (unlisted rows get ''), and notes."""
    if split_csv is None:
        return np.asarray(emb.split, dtype=str), []
    import pandas as pd

    if not Path(split_csv).is_file():
        raise InputFileError(
            f"{split_csv}: split CSV not found; give a CSV with columns image_id,split"
        )
    table = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    missing = {"image_id", "split"} - set(table.columns)
    if missing:
        raise DataFormatError(
            f"{split_csv}: missing column(s) {sorted(missing)}; it needs image_id and split"
        )
    duplicated = np.flatnonzero(table["image_id"].duplicated().to_numpy())
    if duplicated.size:
        row = int(duplicated[0])
        raise DataFormatError(
            f"{split_csv}: image_id {table['image_id'].iloc[row]!r} appears twice (data row {row + 1})"
        )
    mapping = dict(zip(table["image_id"], table["split"], strict=True))
    assigned = np.array([mapping.get(i, "") for i in emb.ids], dtype=str)
    notes = []
    unknown = len(mapping) - int(np.isin(emb.ids, list(mapping)).sum())
    if unknown:
        notes.append(f"{unknown} ids in {split_csv} are not in the store (ignored)")
    unlisted = int((assigned == "").sum())
    if unlisted:
        notes.append(f"{unlisted} store rows are not in {split_csv} (left out)")
    return assigned, notes


def carve_validation(
    train: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split training rows into (train, val) by whole groups (patients), seeded."""
    units = np.unique(groups[train])
    if len(units) < 2:
        return train, train[:0]
    n_val = min(max(1, round(fraction * len(units))), len(units) - 1)
    val_units = np.random.default_rng(seed).choice(units, size=n_val, replace=False)
    is_val = np.isin(groups[train], val_units)
    return train[~is_val], train[is_val]


def resolve_splits(
    emb: Any,
    names: Mapping[str, Sequence[str]],
    *,
    split_csv: Path | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    optional: Sequence[str] = (),
    allow_leakage: bool = False,
) -> Splits:
    """Rows of each role in ``names`` (role → split names); roles not in ``optional`` must have rows.

    With ``val_fraction`` the ``val`` role is that fraction of the training patients instead;
    it is refused (``ConfigError``) when the ``val`` names have rows of their own, which it would
    leave unused. A patient with rows in two roles raises ``LeakageError`` unless ``allow_leakage``.
    """
    assigned, notes = split_assignment(emb, split_csv)
    failed = np.asarray(emb.failed, dtype=bool)
    names = {role: list(values) for role, values in names.items()}
    rows, excluded = {}, {}
    for role, wanted in names.items():
        member = np.isin(assigned, wanted)
        rows[role] = np.flatnonzero(member & ~failed)
        excluded[role] = int((member & failed).sum())
    if "val" in names and val_fraction is not None:
        _refuse_unused_val(assigned, names, val_fraction, emb.path)
        groups = np.where(emb.patient_ids != "", emb.patient_ids, emb.ids)
        rows["train"], rows["val"] = carve_validation(rows["train"], groups, val_fraction, seed)
        names["val"] = [f"{val_fraction:g} of {'+'.join(names['train'])} patients (seed {seed})"]
        excluded["val"] = 0
    present = ", ".join(sorted(set(assigned.tolist()) - {""})) or "none"
    for role in names:
        if len(rows[role]) == 0 and role not in optional:
            hint = " (use --val-fraction to hold out training patients)" if role == "val" else ""
            raise ConfigError(
                f"--{role}-split {','.join(names[role])}: no usable rows in {emb.path} "
                f"(splits present: {present}; {excluded[role]} failed rows){hint}"
            )
    notes += _leakage_notes(emb, rows, split_csv, allow_leakage)
    for note in notes:
        log.warning(note)
    return Splits(rows, names, excluded, notes)


def _refuse_unused_val(
    assigned: np.ndarray, names: Mapping[str, Sequence[str]], val_fraction: float, store: Any
) -> None:
    """Refuse ``--val-fraction`` when the store has validation rows it would leave unused (those
    of a ``--val-split`` name that is not also a training split)."""
    unused = [name for name in names["val"] if name not in names["train"]]
    counts = {name: int((assigned == name).sum()) for name in unused}
    present = {name: n for name, n in counts.items() if n}
    if present:
        listed = ", ".join(f"'{name}' ({n} rows)" for name, n in present.items())
        raise ConfigError(
            f"--val-fraction {val_fraction:g}: {store} already has validation split {listed}, "
            "which it would leave unused; drop --val-fraction to choose on it, add it to "
            "--train-split to train on it (the fraction is then held out of both), or pass "
            "--val-split none to leave it out"
        )


def _leakage_notes(
    emb: Any, rows: Mapping[str, np.ndarray], split_csv: Path | None, allow: bool
) -> list[str]:
    """Refuse patients with rows in two roles (``LeakageError``, unless ``allow``); the notes say
    what was allowed, and how many rows could not be checked (no patient id)."""
    if len(rows) < 2:
        return []
    every = np.concatenate(list(rows.values()))
    roles = np.concatenate([np.full(len(r), role, dtype=object) for role, r in rows.items()])
    patients = np.asarray(emb.patient_ids, dtype=str)[every]
    where = f"{emb.path}" + (f" with --split-csv {split_csv}" if split_csv is not None else "")
    fix = (
        "Give every patient's images one split: rebuild the manifest with a patient-level split "
        "(`cxrprobe manifest ... --split random`) or fix the split CSV"
    )
    shared = check_patient_leakage(roles, patients, allow=allow, source=where, fix=fix)
    notes = []
    if shared:
        notes.append(
            f"{len(shared)} patients have rows in more than one of {', '.join(rows)} "
            "(leakage, allowed by --allow-leakage)"
        )
    unknown = int((patients == "").sum())
    if unknown:
        notes.append(f"{unknown} rows have no patient id, so leakage could not be checked for them")
    return notes
