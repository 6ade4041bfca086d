"""Policies every adapter shares, also applicable to an existing manifest.

``uncertain``
    ``"ignore"`` keeps -1 in the manifest (every probe and metric masks it, see
    :mod:`cxrprobe.data.targets`); ``"zero"`` / ``"one"`` turn -1 into a negative / positive.
``blank``
    ``"missing"`` keeps not-annotated cells (NaN) of the finding columns, masked later;
    ``"negative"`` turns them into 0 (with ``uncertain="zero"``: the study's ``label[label != 1]
    = 0``). The manifest records both label policies (:data:`LABEL_POLICIES`).
``views``
    ``"frontal"`` (PA and AP), ``"pa"``, ``"ap"`` or ``"all"``; other rows are dropped.
``split``
    ``"official"``: the dataset's own split, val carved out of official train at patient level
    (``val_frac`` of its patients) when the dataset has no val; ``"random"``: a seeded
    patient-level split with ``val_frac`` and ``test_frac`` of the patients (see ``splits``).
``allow_empty_test``
    ``split="official"`` with no image in the official test split (its table missing from the
    root, or a generic CSV whose split column has no test rows) is refused unless this is set;
    then it only warns. ChestX-ray14 and PadChest without any official split are refused too.
``allow_leakage``
    a split (official, or the dataset's own table's) that puts a patient in more than one split
    is refused unless this is set; then it only warns (the option is recorded in the run record).
``check_files``
    verify every kept row's image exists under the root (off by default: manifests build from the
    tables alone).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from cxrprobe.data.manifest import LABEL_POLICIES, LABEL_POLICIES_ATTR
from cxrprobe.data.splits import (
    check_fractions,
    check_patient_leakage,
    official_split,
    random_split,
)
from cxrprobe.data.targets import BLANK_POLICIES, UNCERTAIN_POLICIES, apply_label_policies
from cxrprobe.errors import ConfigError, InputFileError

log = logging.getLogger(__name__)

VIEW_POLICIES = {"frontal": ("PA", "AP"), "pa": ("PA",), "ap": ("AP",), "all": None}
SPLIT_POLICIES = ("official", "random")


@dataclass(frozen=True)
class Policies:
    """The resolved policy options (checked on construction; ConfigError names a bad one)."""

    uncertain: str = "ignore"
    blank: str = "missing"
    views: str = "all"
    split: str = "official"
    val_frac: float = 0.1
    test_frac: float = 0.2
    seed: int = 0
    check_files: bool = False
    allow_leakage: bool = False
    allow_empty_test: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("uncertain", UNCERTAIN_POLICIES),
            ("blank", BLANK_POLICIES),
            ("views", VIEW_POLICIES),
            ("split", SPLIT_POLICIES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"--{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        check_fractions(self.val_frac, self.test_frac)

    @classmethod
    def from_options(
        cls, options: dict[str, Any], context: str, also_known: Sequence[str] = ()
    ) -> Policies:
        """Policies from keyword options; an unknown key raises ConfigError naming ``context`` and
        every known option (``also_known`` adds the caller's own, e.g. a reader's)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"{context}: unknown option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known | set(also_known)))}"
            )
        return cls(**options)

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (for run records)."""
        return asdict(self)

    def label_policies(self) -> dict[str, str]:
        """The policies that decide what the manifest's labels mean (recorded with it)."""
        return {name: getattr(self, name) for name in LABEL_POLICIES}


def select_views(df: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Keep the rows whose canonical view the policy allows."""
    keep = VIEW_POLICIES[policy]
    if keep is None:
        return df
    mask = df["view"].isin(keep)
    log.info("views=%s keeps %d of %d images", policy, int(mask.sum()), len(df))
    return df[mask].reset_index(drop=True)


def assign_split(
    df: pd.DataFrame, policies: Policies, hint: str = "", test_source: str = ""
) -> pd.DataFrame:
    """Set the ``split`` column by the split policy; refuses (``LeakageError``) a split that puts
    a patient in two splits unless ``policies.allow_leakage``, and an official split without
    test images unless ``policies.allow_empty_test``."""
    df = df.copy()
    if policies.split == "random":
        df["split"] = random_split(
            df["patient_id"], policies.val_frac, policies.test_frac, policies.seed
        )
    else:
        df["split"] = official_split(
            df["split"],
            df["patient_id"],
            policies.val_frac,
            policies.seed,
            hint,
            test_source,
            policies.allow_empty_test,
        )
    where = f" ({hint})" if hint and policies.split == "official" else ""
    check_patient_leakage(
        df["split"],
        df["patient_id"],
        allow=policies.allow_leakage,
        source=f"--split {policies.split}{where}",
        fix="Use --split random for a seeded patient-level split, or fix the split table",
    )
    return df


def check_image_files(df: pd.DataFrame, root: str | os.PathLike) -> None:
    """InputFileError listing how many images are missing under ``root`` (and the first few)."""
    root = Path(root)
    missing = [p for p in df["path"] if not (root / p).is_file()]
    if missing:
        raise InputFileError(
            f"{len(missing)} of {len(df)} images are missing under {root} (first: "
            f"{', '.join(missing[:3])}); check --root or the image folders"
        )


def apply_policies(
    df: pd.DataFrame,
    policies: Policies,
    root: str | os.PathLike | None = None,
    hint: str = "",
    test_source: str = "",
) -> pd.DataFrame:
    """Label policies (uncertain, blank), then views, then split, then the optional file check.
    ``hint`` and ``test_source`` say where the official split and its test images come from.

    The result records its label policies in ``df.attrs["label_policies"]``; ``write_manifest``
    stores them in the Parquet file."""
    if df.empty:
        raise ConfigError("no images to apply policies to: the tables hold no rows")
    df = apply_label_policies(df, policies.uncertain, policies.blank)
    df = select_views(df, policies.views)
    if df.empty:
        raise ConfigError(f"--views {policies.views} keeps no image; try --views all")
    df = assign_split(df, policies, hint, test_source)
    if policies.check_files:
        if root is None:
            raise ConfigError("check_files needs the dataset root")
        check_image_files(df, root)
    df.attrs[LABEL_POLICIES_ATTR] = policies.label_policies()
    return df


# docs/datasets.md "Label policies" (included by ``adapters.datasets_markdown``). The table was
# measured on the real CheXpert train.csv; tests/test_cli_data.py checks it when the table exists.
LABEL_POLICIES_DOC = """
Every finding cell is 1 (positive), 0 (negative), -1 (uncertain) or blank (not annotated). Two
`cxrprobe manifest` options decide what they mean:

- `--uncertain ignore|zero|one` (default `ignore`): keep -1 (every probe and metric masks it), or
  make it 0 or 1.
- `--blank missing|negative` (default `missing`): keep a blank as not annotated (masked), or make
  it 0. `--uncertain zero --blank negative` is the study's `label[label != 1] = 0` ("U-Zeros"
  with blanks as 0).

The manifest records both (its `.run.json` and the Parquet metadata key
`cxrprobe.label_policies`); image caches and embedding stores built from it, and every
predictions file made from those, carry them in their provenance (`label_policies`, under
`dataset` in a predictions file). `cxrprobe probe` and `cxrprobe finetune` have their own
`--uncertain` and `--blank`, which change only the training targets (recorded as
`training_targets`): validation (choosing C, k or the epoch) and the test predictions are always
judged on the labels as the manifest made them. To score as the study does, with blanks as
negatives, build the manifest with `--blank negative`.

Why the default keeps blanks masked: in CheXpert and MIMIC-CXR a blank means the report did not
mention the finding, and calling that a negative is a choice, not a label. Share of
the 191,010 frontal (PA/AP) images of CheXpert's `train.csv` on which each label of
`study-chexpert` is defined (1 or 0), under `--uncertain` / `--blank`:

| finding | positive | ignore / missing | zero / missing | zero / negative |
|---|---|---|---|---|
| `cardiomegaly` | 12.2 % | 16.4 % | 19.9 % | 100.0 % |
| `pleural_effusion` | 40.3 % | 53.5 % | 58.5 % | 100.0 % |
| `pneumonia` | 2.4 % | 3.4 % | 11.8 % | 100.0 % |
| `atelectasis` | 15.6 % | 16.1 % | 31.7 % | 100.0 % |
| `no_finding` | 8.9 % | 8.9 % | 8.9 % | 100.0 % |
| `consolidation` | 6.8 % | 17.1 % | 29.8 % | 100.0 % |
| `pneumothorax` | 9.3 % | 34.3 % | 35.7 % | 100.0 % |
| `lung_opacity` | 49.3 % | 52.0 % | 54.3 % | 100.0 % |
| `lung_lesion` | 3.7 % | 4.1 % | 4.7 % | 100.0 % |
| `fracture` | 3.9 % | 4.9 % | 5.2 % | 100.0 % |

With blanks masked the study's labels are defined on only 3.4-53.5 % of the images (4.7-58.5 %
with uncertain as 0), and `no_finding` is only ever 1 or blank: it has no negative at all, so its
AUROC is undefined.
"""


# docs/datasets.md "Splits and row numbers" (included by ``adapters.datasets_markdown``).
SPLITS_DOC = """
`--split official` (the default) keeps the dataset's own split (where each adapter finds it is
listed under Adapters below) and carves val out of the official train patients
(`--val-fraction`, 0.1 by default) when the dataset has no val. `--split random` is a seeded
patient-level split (`--val-fraction`, `--test-fraction`, `--seed`). Either way a patient with
images in two splits is refused unless `--allow-leakage`.

An official split with no test image is refused (exit 2), as ChestX-ray14 without its split
lists and PadChest (no official split) are: probe and compare need test images, and otherwise
the gap would show only after preprocessing and extraction. This happens when CheXpert's
`valid.csv` or VinDr-CXR's `image_labels_test.csv` is not in the root (the Kaggle VinBigData
release has no test labels), or when a generic CSV's split column has no test rows. The message
says where the test images come from; use `--split random`, or pass `--allow-empty-test` to
write the manifest anyway with a `Warning:` line (a study's dataset takes `allow_empty_test =
true` in its options; probe's default `--test-split test` then finds no rows).

Errors in a table name the file, the data row counted from 1 (as predictions tables count) and
its line in the file, the header being line 1: `labels.csv: data row 3 (line 4), column
'Cardiomegaly': value '2' is not 1, 0, -1 or blank`. A problem found only once the tables are
combined (an image id in two tables) or in a Parquet manifest names the data row alone.
"""
