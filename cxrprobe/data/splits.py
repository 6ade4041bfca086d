"""Patient-level splits: seeded random splits and official splits with validation carved out.

Patients are ordered by ``sha256(seed, patient_id)`` and the first ``round(test_frac * n)`` go to
test, the next ``round(val_frac * n)`` to val, the rest to train. The order of one patient does
not depend on the others, so the split is deterministic given the seed, independent of row order,
and barely moves when patients are added or removed; no patient is ever in two splits.
:func:`check_patient_leakage` refuses splits (official, hand-made, a probe's) that put a patient
in two splits, unless ``--allow-leakage``.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd

from cxrprobe.errors import ConfigError, DataFormatError, LeakageError

log = logging.getLogger(__name__)
_SHOWN = 5  # patients named in a leakage message


def check_fractions(val_frac: float, test_frac: float) -> None:
    """ConfigError unless 0 <= val_frac, test_frac and val_frac + test_frac < 1."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ConfigError(
            f"--val-fraction {val_frac} and --test-fraction {test_frac} must each be in [0, 1) "
            "and sum to less than 1"
        )


def patient_order(patients: np.ndarray, seed: int) -> np.ndarray:
    """The patients sorted by their seeded hash: a permutation fixed by ``seed`` alone."""
    ordered = sorted(patients, key=lambda p: hashlib.sha256(f"{seed}\x1f{p}".encode()).digest())
    return np.array(ordered, dtype=object)


def _count(frac: float, n: int) -> int:
    """Patients a fraction asks for: rounded, at least one when the fraction is positive."""
    return 0 if frac == 0 else max(1, round(frac * n))


def random_split(patient_id: pd.Series, val_frac: float, test_frac: float, seed: int) -> pd.Series:
    """A seeded patient-level train/val/test assignment per row."""
    check_fractions(val_frac, test_frac)
    order = patient_order(pd.unique(patient_id.to_numpy(dtype=str)), seed)
    n_test, n_val = _count(test_frac, len(order)), _count(val_frac, len(order))
    if n_test + n_val >= len(order):
        raise ConfigError(
            f"{len(order)} patients are too few for --val-fraction {val_frac} and "
            f"--test-fraction {test_frac}: the train split would be empty"
        )
    split_of = dict.fromkeys(order[:n_test], "test")
    split_of.update(dict.fromkeys(order[n_test : n_test + n_val], "val"))
    return patient_id.astype(str).map(lambda p: split_of.get(p, "train")).astype(object)


def official_split(
    split: pd.Series,
    patient_id: pd.Series,
    val_frac: float,
    seed: int,
    hint: str = "",
    test_source: str = "",
    allow_empty_test: bool = False,
) -> pd.Series:
    """Keep the dataset's own split; carve val out of its train patients when it has no val.

    Raises ConfigError when no row has an official split, or when none is in the test split
    (unless ``allow_empty_test``: then it warns), so a manifest that probe and compare would
    refuse is not written; ``hint`` says where the dataset keeps its split, ``test_source``
    where its test images come from. Raises DataFormatError when only some rows have one.
    """
    check_fractions(val_frac, 0.0)
    where = f" ({hint})" if hint else ""
    missing = split.isna().to_numpy()
    if missing.all():
        raise ConfigError(
            f"--split official: these tables carry no official split{where}; use --split random"
        )
    if missing.any():
        first = patient_id.iloc[int(np.flatnonzero(missing)[0])]
        raise DataFormatError(
            f"--split official: {int(missing.sum())} of {len(split)} images have no official "
            f"split{where}, the first an image of patient {first!r}; use --split random"
        )
    split = split.astype(object).copy()
    train = (split == "train").to_numpy()
    if val_frac > 0 and not (split == "val").any() and train.any():
        patients = pd.unique(patient_id[train].to_numpy(dtype=str))
        order = patient_order(patients, seed)
        val_patients = set(order[: _count(val_frac, len(order))]) if len(order) > 1 else set()
        split[train & patient_id.astype(str).isin(val_patients).to_numpy()] = "val"
    source = f" (they come from {test_source})" if test_source else where
    no_test = f"--split official: no image is in the official test split{source}"
    if not (split == "test").any():
        if not allow_empty_test:
            raise ConfigError(
                f"{no_test}; use --split random for a seeded patient-level split, or pass "
                "--allow-empty-test to write a manifest without test images"
            )
        log.warning(
            "%s; written without test images, as --allow-empty-test asks: probe's default "
            "--test-split test finds no rows in it",
            no_test,
        )
    if not train.any():
        log.warning("--split official: no image is in the official train split%s", where)
    elif val_frac > 0 and not (split == "val").any():
        log.warning(
            "--split official: the val split is empty: the official train split has one "
            "patient, too few to carve --val-fraction %s from",
            val_frac,
        )
    return split


def _splits_of_shared_patients(split: Any, patient_id: Any) -> pd.Series:
    """Per patient with rows in more than one split, the sorted split names (rows without a
    split or a patient id are ignored)."""
    frame = pd.DataFrame(
        {"patient": pd.Series(patient_id, dtype=object).to_numpy(),
         "split": pd.Series(split, dtype=object).to_numpy()}
    )  # fmt: skip
    known = frame["patient"].notna() & frame["split"].notna()
    frame = frame[known & (frame["patient"] != "") & (frame["split"] != "")].astype(str)
    splits = frame.drop_duplicates().groupby("patient")["split"].agg(sorted)
    return splits[splits.map(len) > 1]


def patients_in_several_splits(df: pd.DataFrame) -> list[str]:
    """Patient ids that appear in more than one split (rows without a split are ignored)."""
    return _splits_of_shared_patients(df["split"], df["patient_id"]).index.tolist()


def check_patient_leakage(
    split: Any, patient_id: Any, *, allow: bool, source: str, fix: str
) -> list[str]:
    """Refuse patient leakage: a patient with rows in more than one split.

    ``split`` and ``patient_id`` are per-row sequences (rows without either are ignored).
    Raises :class:`~cxrprobe.errors.LeakageError` naming ``source``, how many patients and the
    first few with their splits, then ``fix`` (what to do) and ``--allow-leakage``; with ``allow``
    it only warns. Returns the shared patients (sorted), for the run record.
    """
    shared = _splits_of_shared_patients(split, patient_id)
    if shared.empty:
        return []
    first = ", ".join(f"{p} ({'+'.join(s)})" for p, s in shared.head(_SHOWN).items())
    more = ", ..." if len(shared) > _SHOWN else ""
    what = (
        f"{source}: {len(shared)} patient(s) have images in more than one split (patient "
        f"leakage: {first}{more})"
    )
    if not allow:
        raise LeakageError(
            f"{what}; results on the test split would be optimistic. {fix}, or pass "
            "--allow-leakage to accept it (recorded with the outputs)"
        )
    log.warning("%s; allowed by --allow-leakage", what)
    return shared.index.tolist()
