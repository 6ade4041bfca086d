"""Policies every adapter shares, also applicable to an existing manifest.

``uncertain``
    ``"ignore"`` keeps -1 in the manifest; ``label_matrix`` (and so every probe, store and metric)
    masks it like a missing label. ``"zero"`` / ``"one"`` turn -1 into a negative / positive.
``views``
    ``"frontal"`` (PA and AP), ``"pa"``, ``"ap"`` or ``"all"``; other rows are dropped.
``split``
    ``"official"``: the dataset's own split, val carved out of official train at patient level
    (``val_frac`` of its patients) when the dataset has no val; ``"random"``: a seeded
    patient-level split with ``val_frac`` and ``test_frac`` of the patients (see ``splits``).
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

from cxrprobe.data.manifest import finding_columns
from cxrprobe.data.splits import (
    check_fractions,
    official_split,
    patients_in_several_splits,
    random_split,
)
from cxrprobe.errors import ConfigError, InputFileError

log = logging.getLogger(__name__)

UNCERTAIN_POLICIES = {"ignore": -1.0, "zero": 0.0, "one": 1.0}
VIEW_POLICIES = {"frontal": ("PA", "AP"), "pa": ("PA",), "ap": ("AP",), "all": None}
SPLIT_POLICIES = ("official", "random")


@dataclass(frozen=True)
class Policies:
    """The resolved policy options (checked on construction; ConfigError names a bad one)."""

    uncertain: str = "ignore"
    views: str = "all"
    split: str = "official"
    val_frac: float = 0.1
    test_frac: float = 0.2
    seed: int = 0
    check_files: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("uncertain", UNCERTAIN_POLICIES),
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


def apply_uncertain(df: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Replace -1 labels according to ``policy`` (``ignore`` leaves them to be masked)."""
    value = UNCERTAIN_POLICIES[policy]
    if value == -1.0:
        return df
    df = df.copy()
    for name in finding_columns(df):
        df.loc[df[name] == -1.0, name] = value
    return df


def select_views(df: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Keep the rows whose canonical view the policy allows."""
    keep = VIEW_POLICIES[policy]
    if keep is None:
        return df
    mask = df["view"].isin(keep)
    log.info("views=%s keeps %d of %d images", policy, int(mask.sum()), len(df))
    return df[mask].reset_index(drop=True)


def assign_split(df: pd.DataFrame, policies: Policies, hint: str = "") -> pd.DataFrame:
    """Set the ``split`` column by the split policy; warns if an official split shares patients."""
    df = df.copy()
    if policies.split == "random":
        df["split"] = random_split(
            df["patient_id"], policies.val_frac, policies.test_frac, policies.seed
        )
    else:
        df["split"] = official_split(
            df["split"], df["patient_id"], policies.val_frac, policies.seed, hint
        )
        shared = patients_in_several_splits(df)
        if shared:
            log.warning(
                "the official split puts %d patients in more than one split (e.g. %s)",
                len(shared),
                shared[0],
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
) -> pd.DataFrame:
    """Uncertain labels, then views, then split, then the optional file check."""
    if df.empty:
        raise ConfigError("no images to apply policies to: the tables hold no rows")
    df = apply_uncertain(df, policies.uncertain)
    df = select_views(df, policies.views)
    if df.empty:
        raise ConfigError(f"--views {policies.views} keeps no image; try --views all")
    df = assign_split(df, policies, hint)
    if policies.check_files:
        if root is None:
            raise ConfigError("check_files needs the dataset root")
        check_image_files(df, root)
    return df
