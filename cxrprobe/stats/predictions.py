"""The ``cxrprobe.predictions`` file: one model's scores and the targets they are judged against.

Probes and fine-tuning write it; ``cxrprobe compare`` and ``cxrprobe evaluate`` read it. The same
content is stored as JSON (readable, ``null`` for targets that were not annotated) or, for large
test sets, as ``.npz`` (chosen by the file suffix). The reader validates everything a comparison
relies on and names the file and the problem, so a bad file fails before any statistics run.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.errors import DataFormatError, InputFileError
from cxrprobe.provenance import atomic_write_bytes, atomic_write_json, to_jsonable

FORMAT_NAME = "cxrprobe.predictions"
FORMAT_VERSION = 1
SCORE_KINDS = ("probability", "logit")
_REQUIRED = ("labels", "ids", "targets", "scores", "score_kind")


@dataclass
class Predictions:
    """Scores of one model on n rows and L labels, with the targets (NaN = not annotated).

    ``targets`` and ``scores`` are (n, L) float arrays; ``score_kind`` says whether scores are
    probabilities or logits (AUROC does not care; thresholds are on the model's own scale).
    """

    labels: list[str]
    ids: list[str]
    targets: np.ndarray
    scores: np.ndarray
    score_kind: str
    patient_ids: list[str] | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    def select(self, rows: np.ndarray, labels: list[str] | None = None) -> Predictions:
        """A copy restricted to ``rows`` (indices, in that order) and ``labels`` (names)."""
        cols = [self.labels.index(name) for name in (labels or self.labels)]
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            labels=[self.labels[c] for c in cols],
            ids=[self.ids[r] for r in rows],
            targets=self.targets[np.ix_(rows, cols)],
            scores=self.scores[np.ix_(rows, cols)],
            patient_ids=None if self.patient_ids is None else [self.patient_ids[r] for r in rows],
        )


def _fail(source: str, problem: str) -> DataFormatError:
    return DataFormatError(f"{source}: {problem}")


def _string_list(value: Any, name: str, source: str, allow_none: bool = False) -> list[str] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(source, f"'{name}' must be a list of non-empty strings")
    return value


def _first_duplicate(values: list[str]) -> tuple[str, int, int] | None:
    seen: dict[str, int] = {}
    for row, value in enumerate(values):
        if value in seen:
            return value, seen[value], row
        seen[value] = row
    return None


def _table(value: Any, name: str, shape: tuple[int, int], source: str) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _fail(source, f"'{name}' is not a table of numbers ({exc})") from None
    if array.shape != shape:
        raise _fail(source, f"'{name}' has shape {array.shape}, expected (rows, labels) = {shape}")
    return array


def validate_predictions(pred: Predictions, source: str = "predictions") -> Predictions:
    """Check shapes, types, values and unique ids; return ``pred`` with float64 arrays.

    Raises ``DataFormatError`` naming ``source``, the row or label, and what is wrong.
    """
    labels = _string_list(pred.labels, "labels", source)
    ids = _string_list(pred.ids, "ids", source)
    patients = _string_list(pred.patient_ids, "patient_ids", source, allow_none=True)
    if not labels:
        raise _fail(source, "no labels; a predictions file needs at least one label column")
    if not ids:
        raise _fail(source, "no rows; a predictions file needs at least one row")
    for name, values in (("label", labels), ("id", ids)):
        dup = _first_duplicate(values)
        if dup:
            raise _fail(
                source,
                f"{name} '{dup[0]}' appears twice (positions {dup[1]} and "
                f"{dup[2]}); {name}s must be unique",
            )
    if patients is not None and len(patients) != len(ids):
        raise _fail(source, f"{len(patients)} patient_ids for {len(ids)} ids; give one per row")
    if pred.score_kind not in SCORE_KINDS:
        raise _fail(
            source, f"score_kind '{pred.score_kind}' is not one of {', '.join(SCORE_KINDS)}"
        )
    if not isinstance(pred.provenance, dict):
        raise _fail(source, "'provenance' must be an object (a dict)")
    shape = (len(ids), len(labels))
    targets = _table(pred.targets, "targets", shape, source)
    scores = _table(pred.scores, "scores", shape, source)
    bad = ~np.isnan(targets) & (targets != 0) & (targets != 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise _fail(
            source,
            f"target of id '{ids[r]}' (row {r}), label '{labels[c]}' is "
            f"{targets[r, c]!r}; targets must be 1, 0 or null (not annotated)",
        )
    bad = ~np.isfinite(scores)
    if pred.score_kind == "probability":
        bad |= (scores < 0) | (scores > 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        need = "a probability in [0, 1]" if pred.score_kind == "probability" else "finite"
        raise _fail(
            source,
            f"score of id '{ids[r]}' (row {r}), label '{labels[c]}' is "
            f"{scores[r, c]!r}; every score must be {need}",
        )
    return replace(
        pred, labels=labels, ids=ids, patient_ids=patients, targets=targets, scores=scores
    )


def _payload(pred: Predictions) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "labels": pred.labels,
        "ids": pred.ids,
        "patient_ids": pred.patient_ids,
        "score_kind": pred.score_kind,
        "targets": [[None if np.isnan(v) else int(v) for v in row] for row in pred.targets],
        "scores": pred.scores.tolist(),
        "provenance": to_jsonable(pred.provenance),
    }


def write_predictions(pred: Predictions, path: str | os.PathLike) -> Path:
    """Validate ``pred`` and write it atomically as JSON, or as ``.npz`` when the suffix says so.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> p = Predictions(["effusion"], ["a", "b"], np.array([[1.0], [np.nan]]),
    ...                 np.array([[0.9], [0.2]]), "probability")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     out = write_predictions(p, pathlib.Path(folder) / "p.json")
    ...     read_predictions(out).targets.tolist()
    [[1.0], [nan]]
    """
    path = Path(path)
    pred = validate_predictions(pred, str(path))
    if path.suffix.lower() != ".npz":
        return atomic_write_json(path, _payload(pred))
    buffer = io.BytesIO()
    arrays = {
        "format": np.array(FORMAT_NAME),
        "version": np.array(FORMAT_VERSION),
        "labels": np.array(pred.labels, dtype=str),
        "ids": np.array(pred.ids, dtype=str),
        "score_kind": np.array(pred.score_kind),
        "targets": pred.targets,
        "scores": pred.scores,
        "provenance": np.array(json.dumps(to_jsonable(pred.provenance))),
    }
    if pred.patient_ids is not None:
        arrays["patient_ids"] = np.array(pred.patient_ids, dtype=str)
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(str(path), f"not a JSON predictions file ({exc})") from None
    if not isinstance(data, dict):
        raise _fail(str(path), "not a JSON object; expected a cxrprobe.predictions file")
    return data


def _load_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise _fail(str(path), f"not a readable .npz predictions file ({exc})") from None
    for key in ("format", "version", "score_kind", "provenance"):
        if key in data:
            data[key] = data[key].item()
    if isinstance(data.get("provenance"), str):
        data["provenance"] = json.loads(data["provenance"])
    return data


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read and validate a predictions file (JSON or ``.npz``).

    Raises ``InputFileError`` when the file is missing and ``DataFormatError`` (naming the file and
    the problem) for an unknown format or version, missing fields, bad shapes, targets outside
    {0, 1, null}, non-finite scores or duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: predictions file not found; check the path")
    data = _load_npz(path) if path.suffix.lower() == ".npz" else _load_json(path)
    source = str(path)
    if data.get("format") != FORMAT_NAME:
        raise _fail(
            source,
            f"format is {data.get('format')!r}, expected '{FORMAT_NAME}'; "
            "write it with cxrprobe.stats.write_predictions",
        )
    if data.get("version") != FORMAT_VERSION:
        raise _fail(
            source,
            f"format version {data.get('version')!r} is not supported "
            f"(this cxrprobe reads version {FORMAT_VERSION})",
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise _fail(source, f"missing field(s) {', '.join(missing)}")
    pred = Predictions(
        labels=data["labels"],
        ids=data["ids"],
        targets=data["targets"],
        scores=data["scores"],
        score_kind=data["score_kind"],
        patient_ids=data.get("patient_ids"),
        provenance=data.get("provenance") or {},
    )
    return validate_predictions(pred, source)


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


def pair_predictions(
    a: Predictions, b: Predictions, *, align: bool = False, names: tuple[str, str] = ("a", "b")
) -> tuple[Predictions, Predictions, dict[str, Any]]:
    """Put two models' predictions on the same rows and labels for a paired comparison.

    Without ``align`` the ids and labels must match exactly (same order); otherwise a
    ``DataFormatError`` says what differs (row counts, the first differing id, missing labels).
    With ``align`` rows are matched by id and labels by name (in ``a``'s order); rows or labels
    found in only one file are dropped and counted in the returned summary. Targets of shared
    rows must agree; patient ids are taken from whichever file has them.
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
    return replace(a, patient_ids=patients), replace(b, patient_ids=patients), summary
