"""Labels → training and evaluation targets: the one place that decides what a label means.

Raw labels (manifest finding columns, a store's ``labels``) are 1 (positive), 0 (negative),
-1 (uncertain) or NaN (not annotated). :func:`to_targets` turns raw labels and the label
policies into ``(targets, mask)``: float32 targets that are 1 or 0 where the entry counts and NaN
where it is masked, and the boolean mask of the entries that count. Everything that trains or
judges on labels (the linear and kNN probes, fine-tuning's loss, class weights and validation,
predictions files, ``label_matrix``) goes through it, so a new policy is added here only.

Policies:

``uncertain``
    ``"ignore"`` masks -1, ``"zero"`` / ``"one"`` make it a negative / positive. On a manifest
    (:func:`apply_uncertain`) ``"ignore"`` keeps the -1, so a store still holds it and a later
    probe's policy can map it.
``blank``
    ``"missing"`` masks a not-annotated (NaN) entry, ``"negative"`` makes it a 0. With
    ``uncertain="zero"`` this is the study's ``label[label != 1] = 0`` ("U-Zeros" with blanks as
    0). On a manifest (:func:`apply_blank`) ``"missing"`` keeps the NaN.

Evaluation targets always use ``"ignore"`` and ``"missing"``: a model is judged against the
ground truth its data holds, whatever it was trained on. To score as the study does (blanks as
negatives), build the manifest with ``--blank negative``: its labels then hold the zeros.

The mask helpers (:func:`observed_mask`, :func:`uncertain_mask`, :func:`not_annotated_mask`) use
elementwise operations only, so they work on numpy arrays, torch tensors and pandas Series alike
(fine-tuning's masked BCE takes its mask from :func:`observed_mask`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrprobe.data.findings import in_vocabulary_order
from cxrprobe.errors import ConfigError, DataFormatError

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
UNCERTAIN_POLICIES = ("ignore", "zero", "one")
BLANK_POLICIES = ("missing", "negative")
EVALUATION_UNCERTAIN, EVALUATION_BLANK = "ignore", "missing"
_UNCERTAIN_BECOMES = {"ignore": np.nan, "zero": NEGATIVE, "one": POSITIVE}
_BLANK_BECOMES = {"missing": np.nan, "negative": NEGATIVE}


# ----------------------------------------------------------------------------------- masks
def uncertain_mask(labels: Any) -> Any:
    """Entries labelled uncertain (-1)."""
    return labels == UNCERTAIN


def not_annotated_mask(labels: Any) -> Any:
    """Entries not annotated (NaN)."""
    return labels.isnan() if hasattr(labels, "isnan") else np.isnan(labels)


def observed_mask(targets: Any) -> Any:
    """Entries that count: labelled 0 or 1 (NaN and -1 do not)."""
    return (targets == NEGATIVE) | (targets == POSITIVE)


# ------------------------------------------------------------------------------- policies
def check_uncertain(policy: str) -> str:
    """``policy`` if it is an uncertain-label policy, else ConfigError naming ``--uncertain``."""
    if policy not in UNCERTAIN_POLICIES:
        raise ConfigError(
            f"--uncertain {policy!r} is unknown; choose one of {', '.join(UNCERTAIN_POLICIES)}"
        )
    return policy


def check_blank(policy: str) -> str:
    """``policy`` if it is a blank-label policy, else ConfigError naming ``--blank``."""
    if policy not in BLANK_POLICIES:
        raise ConfigError(
            f"--blank {policy!r} is unknown; choose one of {', '.join(BLANK_POLICIES)}"
        )
    return policy


def check_labels(labels: Any) -> np.ndarray:
    """``labels`` as float32, or DataFormatError naming the first entry not 1, 0, -1 or NaN."""
    labels = np.asarray(labels, dtype=np.float32)
    bad = ~not_annotated_mask(labels) & ~observed_mask(labels) & ~uncertain_mask(labels)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataFormatError(
            f"label table row {row}, column {col} is {float(labels[row, col])!r}; labels must be 1, 0, -1 or NaN"
        )
    return labels


def to_targets(
    labels: Any, uncertain: str = "ignore", blank: str = "missing"
) -> tuple[np.ndarray, np.ndarray]:
    """Raw labels (n, L) and the policies → ``(targets, mask)``.

    ``targets`` is float32 (n, L): 1 or 0 where ``mask`` (bool, n, L) is set, NaN elsewhere.
    The one function that applies label policies; every consumer calls it (or a wrapper below).
    """
    check_uncertain(uncertain)
    check_blank(blank)
    targets = check_labels(labels).copy()
    blanks = not_annotated_mask(targets)  # before -1 may become NaN under "ignore"
    targets[uncertain_mask(targets)] = _UNCERTAIN_BECOMES[uncertain]
    targets[blanks] = _BLANK_BECOMES[blank]
    return targets, observed_mask(targets)


def training_targets(labels: Any, uncertain: str = "ignore", blank: str = "missing") -> np.ndarray:
    """(n, L) 1/0/NaN targets to train on: -1 masked (``ignore``) or mapped to 0 or 1, NaN
    masked (``missing``) or mapped to 0 (``negative``)."""
    return to_targets(labels, uncertain, blank)[0]


def evaluation_targets(labels: Any) -> np.ndarray:
    """(n, L) 1/0/NaN targets to judge scores against: uncertain (-1) and not annotated (NaN)
    are never targets (a manifest built with ``--blank negative`` already holds 0 there)."""
    return to_targets(labels, EVALUATION_UNCERTAIN, EVALUATION_BLANK)[0]


def apply_uncertain(df: Any, policy: str) -> Any:
    """A manifest DataFrame with -1 labels replaced by ``policy`` (``ignore`` keeps them, to be
    masked by :func:`to_targets` later); the input is not modified."""
    check_uncertain(policy)
    if policy == "ignore":
        return df
    df = df.copy()
    for name in in_vocabulary_order(df.columns):
        df.loc[uncertain_mask(df[name]), name] = _UNCERTAIN_BECOMES[policy]
    return df


def apply_blank(df: Any, policy: str) -> Any:
    """A manifest DataFrame with not-annotated (NaN) finding cells set to 0 under ``negative``
    (``missing`` keeps them, to be masked by :func:`to_targets` later); columns that are not
    findings are never touched, and the input is not modified."""
    check_blank(policy)
    if policy == "missing":
        return df
    df = df.copy()
    for name in in_vocabulary_order(df.columns):
        column = df[name].to_numpy(dtype=np.float32, na_value=np.nan)
        df.loc[not_annotated_mask(column), name] = _BLANK_BECOMES[policy]
    return df


def apply_label_policies(df: Any, uncertain: str, blank: str) -> Any:
    """A manifest DataFrame with both label policies applied (:func:`apply_uncertain`, then
    :func:`apply_blank`; they touch different cells, so the order does not matter)."""
    return apply_blank(apply_uncertain(df, uncertain), blank)


# --------------------------------------------------------------------- counts and weights
def class_counts(targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per column of ``targets`` (n, L) (or in a 1-D column)."""
    targets = np.asarray(targets)
    return (targets == POSITIVE).sum(axis=0), (targets == NEGATIVE).sum(axis=0)


def fittable(targets: Any) -> np.ndarray:
    """(L,) bool: findings with both classes among the observed rows of ``targets``."""
    positives, negatives = class_counts(targets)
    return (positives > 0) & (negatives > 0)


def positive_weights(targets: Any) -> np.ndarray:
    """(L,) negatives / positives among observed rows (the study's ``pos_weight``; 1 if undefined)."""
    positives, negatives = class_counts(targets)
    both = (positives > 0) & (negatives > 0)
    return np.where(both, negatives / np.maximum(positives, 1), 1.0).astype(np.float64)


def entry_weights(targets: Any, pos_weight: Any = None) -> np.ndarray:
    """(n, L) float64 weight of each entry in a weighted BCE: 0 where masked, ``pos_weight[l]``
    for positives (1 without ``pos_weight``), 1 for negatives."""
    targets = np.asarray(targets)
    weights = observed_mask(targets).astype(np.float64)
    if pos_weight is not None:
        weights = np.where(targets == POSITIVE, np.asarray(pos_weight, dtype=np.float64), weights)
    return weights
