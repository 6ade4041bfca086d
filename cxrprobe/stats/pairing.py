"""Put two models' predictions on the same rows and labels for a paired comparison.

Without ``align`` the two files must hold the same ids and labels in the same order; with it,
rows are matched by id and labels by name, and what only one file has is dropped and counted.
Either way the targets (and patient ids, and subgroup fields) of shared rows must agree.
A finding subset (``--findings``) narrows each file to the labels it names before pairing.
:func:`model_names` names the two models in reports when no name is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.data.findings import FINDING_IDS
from cxrprobe.errors import DataFormatError
from cxrprobe.stats.groups import fields_equal
from cxrprobe.stats.messages import shown
from cxrprobe.stats.predictions import Predictions


def model_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Short names telling the models of ``paths`` apart: each file's name, or, when two files
    have the same name (every probe writes ``predictions.json``), the fewest trailing folders
    in which their paths differ.

    Examples
    --------
    >>> model_names(["run/imagenet.json", "run/dinov2.npz"])
    ['imagenet.json', 'dinov2.npz']
    >>> model_names(["s/dinov2/probe/predictions.json", "s/imagenet/probe/predictions.json"])
    ['dinov2/probe', 'imagenet/probe']
    """
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    folders = [Path(os.path.abspath(p)).parent.parts for p in paths]
    for depth in range(1, max(map(len, folders)) + 1):
        tails = [Path(*parts[-depth:]).as_posix() for parts in folders]
        if len(set(tails)) == len(tails):
            return tails
    return names  # the same file twice: nothing tells them apart


def narrow_findings(pred: Predictions, spec: str | Sequence[str] | None) -> Predictions:
    """``pred`` with only the labels the finding subset ``spec`` names (see
    :func:`cxrprobe.data.finding_sets.resolve_findings`), in the file's order; all when None.

    Raises ConfigError for an unknown finding or set, or one the file does not have (naming the
    file and its labels), so a subset never silently shrinks.
    """
    if spec is None:
        return pred
    from cxrprobe.data.finding_sets import resolve_findings  # imports pandas: only when asked

    where = pred.source or "the predictions"
    if any(label not in FINDING_IDS for label in pred.labels):  # the resolver lists only ids
        where += f" (labels: {', '.join(pred.labels)})"
    keep = set(resolve_findings(spec, pred.labels, where=where))
    return pred.select(np.arange(pred.n_rows), [x for x in pred.labels if x in keep])


def _label_mismatch(a: Predictions, b: Predictions, names: tuple[str, str]) -> str | None:
    if a.labels == b.labels:
        return None
    only_a = [x for x in a.labels if x not in b.labels]
    only_b = [x for x in b.labels if x not in a.labels]
    if not only_a and not only_b:
        return f"{names[0]} and {names[1]} have the same labels in a different order"
    parts = [
        f"only in {name}: {', '.join(only)}"
        for name, only in zip(names, (only_a, only_b), strict=True)
        if only
    ]
    return f"labels differ ({'; '.join(parts)})"


def _id_mismatch(a: Predictions, b: Predictions, names: tuple[str, str]) -> str | None:
    if a.ids == b.ids:
        return None
    if len(a.ids) != len(b.ids):
        return f"{names[0]} has {len(a.ids)} rows and {names[1]} has {len(b.ids)}"
    row = next(i for i, (x, y) in enumerate(zip(a.ids, b.ids, strict=True)) if x != y)
    order = " (the same ids in a different order)" if set(a.ids) == set(b.ids) else ""
    return f"ids first differ at row {row}: '{a.ids[row]}' vs '{b.ids[row]}'{order}"


def _check_same_truth(a: Predictions, b: Predictions, names: tuple[str, str]) -> None:
    differ = ~((a.targets == b.targets) | (np.isnan(a.targets) & np.isnan(b.targets)))
    if differ.any():
        r, c = np.argwhere(differ)[0]
        raise DataFormatError(
            f"{names[0]} and {names[1]} disagree on the target of id '{a.ids[r]}', label "
            f"'{a.labels[c]}' ({a.targets[r, c]} vs {b.targets[r, c]}); a paired comparison "
            "needs the same ground truth, so write both files from the same manifest"
        )
    if a.patient_ids is not None and b.patient_ids is not None and a.patient_ids != b.patient_ids:
        r = next(
            i for i, (x, y) in enumerate(zip(a.patient_ids, b.patient_ids, strict=True)) if x != y
        )
        raise DataFormatError(
            f"{names[0]} and {names[1]} give id '{a.ids[r]}' different "
            f"patient ids ('{a.patient_ids[r]}' vs '{b.patient_ids[r]}')"
        )
    for name in sorted(set(a.subgroups) & set(b.subgroups)):
        same = fields_equal(a.subgroups[name], b.subgroups[name])
        if not same.all():
            r = int(np.flatnonzero(~same)[0])
            raise DataFormatError(
                f"{names[0]} and {names[1]} give id '{a.ids[r]}' different values of subgroup "
                f"field '{name}' ({shown(a.subgroups[name][r])} vs {shown(b.subgroups[name][r])})"
            )


def pair_predictions(
    a: Predictions, b: Predictions, *, align: bool = False, names: tuple[str, str] = ("a", "b")
) -> tuple[Predictions, Predictions, dict[str, Any]]:
    """Put two models' predictions on the same rows and labels for a paired comparison.

    Without ``align`` the ids and labels must match exactly (same order); otherwise a
    ``DataFormatError`` says what differs (row counts, the first differing id, missing labels).
    With ``align`` rows are matched by id and labels by name (in ``a``'s order); rows or labels
    found in only one file are dropped and counted in the returned summary. Targets of shared
    rows must agree; patient ids are taken from whichever file has them, and the paired files
    carry the subgroup fields of both.
    """
    summary: dict[str, Any] = {"aligned": align, "rows_a": a.n_rows, "rows_b": b.n_rows}
    if not align:
        for problem in (_label_mismatch(a, b, names), _id_mismatch(a, b, names)):
            if problem:
                raise DataFormatError(
                    f"{problem}; compare needs the same rows and labels, or pass --align to "
                    "match them by id and name"
                )
        summary.update(rows_used=a.n_rows, dropped_a=0, dropped_b=0, labels_dropped=[])
    else:
        labels = [x for x in a.labels if x in b.labels]
        if not labels:
            raise DataFormatError(f"{names[0]} and {names[1]} share no label; nothing to compare")
        where_b = {id_: i for i, id_ in enumerate(b.ids)}
        rows_a = np.array([i for i, id_ in enumerate(a.ids) if id_ in where_b], dtype=np.int64)
        if rows_a.size == 0:
            raise DataFormatError(f"{names[0]} and {names[1]} share no id; nothing to compare")
        rows_b = np.array([where_b[a.ids[i]] for i in rows_a], dtype=np.int64)
        dropped_labels = sorted(set(a.labels).symmetric_difference(b.labels))
        a, b = a.select(rows_a, labels), b.select(rows_b, labels)
        summary.update(
            rows_used=len(rows_a),
            dropped_a=summary["rows_a"] - len(rows_a),
            dropped_b=summary["rows_b"] - len(rows_a),
            labels_dropped=dropped_labels,
        )
    _check_same_truth(a, b, names)
    patients = a.patient_ids if a.patient_ids is not None else b.patient_ids
    shared = {"patient_ids": patients, "subgroups": {**b.subgroups, **a.subgroups}}
    return replace(a, **shared), replace(b, **shared), summary
