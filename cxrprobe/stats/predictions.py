"""The ``cxrprobe.predictions`` file: one model's scores and the targets they are judged against.

Probes and fine-tuning write it; ``cxrprobe compare`` and ``cxrprobe evaluate`` read it. The same
content is stored, by file suffix, as JSON (``null`` for targets that were not annotated, one
table row per line), ``.npz`` (large test sets), or a long table, ``.parquet`` or ``.csv``
(one row per image and finding, see :mod:`cxrprobe.stats.tabular`): the form pandas and other
codebases read and write, so a model from elsewhere can be compared without writing our JSON.
The reader validates everything a comparison relies on and names the file and the problem, so a
bad file fails before any statistics run. Optional per-row ``subgroups`` fields (sex, age,
view, ...) feed ``--by`` (see ``groups``).

``pandas.read_json`` does not read the JSON form: it is one object holding the label list, the
n x L tables and metadata, not a table; use ``read_predictions(path).to_frame()``, or write
``.parquet`` / ``.csv`` for other tools.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrprobe.errors import DataFormatError, InputFileError
from cxrprobe.provenance import atomic_write_bytes, atomic_write_text, to_jsonable
from cxrprobe.stats import tabular
from cxrprobe.stats.groups import check_fields, field_to_json, field_to_npz
from cxrprobe.stats.messages import shown

if TYPE_CHECKING:
    import pandas as pd

FORMAT_NAME = "cxrprobe.predictions"
FORMAT_VERSION = 1
SCORE_KINDS = ("probability", "logit")
_REQUIRED = ("labels", "ids", "targets", "scores", "score_kind")
_NPZ_SUBGROUP = "subgroup."  # npz array name prefix of a subgroup field
SUFFIXES = (".json", ".npz", ".parquet", ".csv")
TABLE_SUFFIXES = tabular.SUFFIXES


@dataclass
class Predictions:
    """Scores of one model on n rows and L labels, with the targets (NaN = not annotated).

    ``targets`` and ``scores`` are (n, L) float arrays; ``score_kind`` says whether scores are
    probabilities or logits (AUROC does not care; thresholds are on the model's own scale).
    ``subgroups`` maps a field name (sex, age, view, ...) to one value per row; ``source`` names
    the file it was read from (empty when built in memory), for messages and reports.
    """

    labels: list[str]
    ids: list[str]
    targets: np.ndarray
    scores: np.ndarray
    score_kind: str
    patient_ids: list[str] | None = None
    provenance: dict = field(default_factory=dict)
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

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
            subgroups={name: values[rows] for name, values in self.subgroups.items()},
        )

    def to_frame(self) -> pd.DataFrame:
        """The long table: one row per image and finding (``image_id``, ``patient_id``,
        ``finding``, ``target``, ``score``, ``score_kind``, then the subgroup fields).

        Examples
        --------
        >>> p = Predictions(["effusion", "mass"], ["a"], np.array([[1.0, np.nan]]),
        ...                 np.array([[0.9, 0.2]]), "probability")
        >>> p.to_frame()[["image_id", "finding", "target", "score"]].values.tolist()
        [['a', 'effusion', 1.0, 0.9], ['a', 'mass', nan, 0.2]]
        """
        return tabular.frame(validate_predictions(self, self.source or "predictions"))

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        score_kind: str | None = None,
        provenance: dict | None = None,
        source: str = "data frame",
    ) -> Predictions:
        """Predictions from a long table (columns ``image_id``, ``finding``, ``target``,
        ``score``; optional ``patient_id``, ``score_kind`` and subgroup columns), validated.

        ``score_kind`` overrides the table's; without either, scores are probabilities when
        all lie in [0, 1], else logits.
        """
        fields = tabular.from_frame(frame, source)
        fields["score_kind"] = score_kind or fields["score_kind"]
        fields["provenance"] = provenance if provenance is not None else fields["provenance"]
        return validate_predictions(cls(**fields), source)


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
    if len(set(values)) == len(values):
        return None
    seen: dict[str, int] = {}
    for row, value in enumerate(values):
        if value in seen:
            return value, seen[value], row
        seen[value] = row
    return None


def _table(value: Any, name: str, shape: tuple[int, int], source: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)  # no copy of a float64 array
    except (TypeError, ValueError) as exc:
        raise _fail(source, f"'{name}' is not a table of numbers ({exc})") from None
    if array.shape != shape:
        raise _fail(source, f"'{name}' has shape {array.shape}, expected (rows, labels) = {shape}")
    return array


def _is_null(table: Any, row: int, col: int) -> bool:
    """Whether the cell was given as None (a JSON null), not as a number such as NaN."""
    try:
        return table[row][col] is None
    except (TypeError, IndexError, KeyError):
        return False


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
    subgroups = check_fields(pred.subgroups, len(ids), source)
    shape = (len(ids), len(labels))
    targets = _table(pred.targets, "targets", shape, source)
    scores = _table(pred.scores, "scores", shape, source)
    bad = ~np.isnan(targets) & (targets != 0) & (targets != 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise _fail(
            source,
            f"target of id '{ids[r]}' (row {r}), label '{labels[c]}' is "
            f"{shown(targets[r, c])}; targets must be 1, 0 or null (not annotated)",
        )
    bad = ~np.isfinite(scores)
    if pred.score_kind == "probability":
        bad |= (scores < 0) | (scores > 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        need = "a probability in [0, 1]" if pred.score_kind == "probability" else "finite"
        value = "null" if _is_null(pred.scores, r, c) else shown(scores[r, c])
        raise _fail(
            source,
            f"score of id '{ids[r]}' (row {r}), label '{labels[c]}' is {value}; every score "
            f"must be {need}",
        )
    return replace(
        pred,
        labels=labels,
        ids=ids,
        patient_ids=patients,
        targets=targets,
        scores=scores,
        subgroups=subgroups,
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
        **(
            {"subgroups": {k: field_to_json(v) for k, v in pred.subgroups.items()}}
            if pred.subgroups
            else {}
        ),
    }


def _dump_json(payload: dict[str, Any]) -> str:
    """JSON with one top-level field per line and one table row per line: compact enough to
    write and read fast (an indented table puts every number on a line of its own), still
    readable and diff-friendly."""

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)

    fields = []
    for key, value in payload.items():
        if key in ("targets", "scores"):
            rows = ",\n  ".join(compact(row) for row in value)
            text = f"[\n  {rows}\n ]" if value else "[]"
        elif key == "subgroups":  # one field per line
            items = ",\n  ".join(f"{json.dumps(k)}: {compact(v)}" for k, v in value.items())
            text = f"{{\n  {items}\n }}"
        elif key == "provenance":
            text = json.dumps(value, indent=1, allow_nan=False).replace("\n", "\n ")
        else:
            text = compact(value)
        fields.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def write_predictions(pred: Predictions, path: str | os.PathLike) -> Path:
    """Validate ``pred`` and write it atomically: JSON, or ``.npz``, ``.parquet`` or ``.csv``
    when the suffix says so (the last two as a long table, see :mod:`cxrprobe.stats.tabular`).

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
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return tabular.write_table(pred, path)
    if suffix != ".npz":
        return atomic_write_text(path, _dump_json(_payload(pred)))
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
    for name, values in pred.subgroups.items():
        arrays[_NPZ_SUBGROUP + name] = field_to_npz(values)
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
        try:
            data["provenance"] = json.loads(data["provenance"])
        except json.JSONDecodeError as exc:
            raise _fail(
                str(path),
                f"'provenance' is not valid JSON ({exc}); rewrite the file with "
                "cxrprobe.stats.write_predictions",
            ) from None
    names = [key for key in data if key.startswith(_NPZ_SUBGROUP)]
    if names:
        data["subgroups"] = {key[len(_NPZ_SUBGROUP) :]: data.pop(key) for key in names}
    return data


def read_predictions(path: str | os.PathLike) -> Predictions:
    """Read and validate a predictions file (JSON, ``.npz``, ``.parquet`` or ``.csv``).

    Raises ``InputFileError`` when the file is missing and ``DataFormatError`` (naming the file and
    the problem) for an unknown format or version, missing fields or columns, bad shapes, targets
    outside {0, 1, null}, non-finite scores, duplicate ids, an image without a row for some
    finding (tables) or malformed subgroup fields.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: predictions file not found; check the path")
    source = str(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        pred = Predictions(**tabular.read_table(path))
        return replace(validate_predictions(pred, source), source=source)
    data = _load_npz(path) if path.suffix.lower() == ".npz" else _load_json(path)
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
        subgroups=data.get("subgroups"),
    )
    return replace(validate_predictions(pred, source), source=source)
