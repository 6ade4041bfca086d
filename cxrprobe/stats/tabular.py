"""The long (tidy) table form of predictions: one row per image and finding.

Columns: ``image_id``, ``patient_id`` (empty when unknown), ``finding``, ``target`` (1, 0, or
empty where not annotated), ``score``, ``score_kind`` and one column per subgroup field (sex,
age, view, ...; the image's value on each of its rows). This is what pandas, R or another
codebase read and write naturally (``pd.read_parquet`` / ``pd.read_csv``), and what
``cxrprobe compare`` / ``evaluate`` accept from them: a table with the columns ``image_id``,
``finding``, ``target`` and ``score`` is enough (``patient_id`` and ``score_kind`` are optional;
without ``score_kind`` the scores are probabilities when all lie in [0, 1], else logits; every
other column is a subgroup field).

Parquet keeps the format, version, label order and provenance in the file's metadata. CSV has no
metadata: a non-empty provenance goes to ``<file>.provenance.json`` beside it and is read back
from there.

The reader checks what a wide table cannot get wrong: every image has exactly one row per
finding, and per-image columns (``patient_id``, subgroup fields) agree across an image's rows.
Errors name the file, the data row (counted from 1) and the column.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrprobe.errors import DataFormatError
from cxrprobe.provenance import atomic_write_bytes, atomic_write_json, to_jsonable
from cxrprobe.stats.groups import field_to_json
from cxrprobe.stats.messages import shown

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# ``pred`` below is a validated ``cxrprobe.stats.predictions.Predictions`` (not imported here:
# that module imports this one).

REQUIRED = ("image_id", "finding", "target", "score")
RESERVED = (*REQUIRED, "patient_id", "score_kind")
METADATA_KEY = b"cxrprobe.predictions"
SUFFIXES = (".parquet", ".csv")
_NEEDS = {  # what a value of a numeric column must be
    "target": "a target must be 1, 0 or empty (not annotated)",
    "score": "every score must be a number",
}


def provenance_path(path: Path) -> Path:
    """Where a CSV's provenance is kept: ``<file>.provenance.json`` beside it."""
    return path.with_name(path.name + ".provenance.json")


def to_table(pred: Any) -> pa.Table:
    """The long table of validated predictions (image-major: all findings of an image together)."""
    import pyarrow as pa

    n, n_labels = pred.targets.shape
    image = np.repeat(np.arange(n, dtype=np.int32), n_labels)
    target = pred.targets.ravel()
    columns: dict[str, Any] = {
        "image_id": pa.DictionaryArray.from_arrays(image, pa.array(pred.ids)),
        "patient_id": pa.array(
            [None] * n * n_labels
            if pred.patient_ids is None
            else np.repeat(pred.patient_ids, n_labels),
            pa.string(),
        ),
        "finding": pa.DictionaryArray.from_arrays(
            np.tile(np.arange(n_labels, dtype=np.int32), n), pa.array(pred.labels)
        ),
        "target": pa.array(np.nan_to_num(target).astype(np.int8), mask=np.isnan(target)),
        "score": pa.array(pred.scores.ravel()),
        "score_kind": pa.DictionaryArray.from_arrays(
            np.zeros(n * n_labels, dtype=np.int32), pa.array([pred.score_kind])
        ),
    }
    for name, values in pred.subgroups.items():
        per_image = field_to_json(values)
        columns[name] = pa.array([per_image[i] for i in image])
    metadata = {
        "format": "cxrprobe.predictions",
        "version": 1,
        "labels": pred.labels,
        "score_kind": pred.score_kind,
        "provenance": to_jsonable(pred.provenance),
    }
    return pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(metadata)})


def write_table(pred: Any, path: Path) -> Path:
    """Write validated predictions as Parquet or CSV (by suffix), atomically."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = to_table(pred)
    buffer = io.BytesIO()
    if path.suffix.lower() == ".parquet":
        pq.write_table(table, buffer)
    else:
        pcsv.write_csv(table.replace_schema_metadata(None), buffer)
        if pred.provenance:
            atomic_write_json(provenance_path(path), to_jsonable(pred.provenance))
    return atomic_write_bytes(path, buffer.getvalue())


def read_table(path: Path) -> dict[str, Any]:
    """Read a Parquet or CSV predictions table into the fields of a ``Predictions``."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    source = str(path)
    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            # numbers are read as text and converted in from_table, whose errors name the data
            # row and the column (pyarrow's name neither)
            names = ("image_id", "patient_id", "finding", "target", "score", "score_kind")
            types = dict.fromkeys(names, pa.string())
            table = pcsv.read_csv(
                path,
                convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
            )
    except (pa.ArrowInvalid, OSError) as exc:
        kind = "Parquet" if path.suffix.lower() == ".parquet" else "CSV"
        problem = str(exc).replace("\n", " ")
        raise DataFormatError(
            f"{source}: not a readable {kind} predictions table ({problem})"
        ) from None
    metadata = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    if "provenance" not in metadata and provenance_path(path).is_file():
        metadata["provenance"] = json.loads(provenance_path(path).read_text(encoding="utf-8"))
    return from_table(table, source, metadata)


def from_frame(frame: pd.DataFrame, source: str = "data frame") -> dict[str, Any]:
    """The fields of a ``Predictions`` from a long pandas DataFrame."""
    import pyarrow as pa

    return from_table(pa.Table.from_pandas(frame, preserve_index=False), source, {})


def _codes(table: pa.Table, name: str, source: str) -> tuple[np.ndarray, list[str]]:
    """A string column as codes (in order of first appearance) and its distinct values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(name).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    column = column.cast(pa.string())
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataFormatError(f"{source}: '{name}' is empty in data row {row + 1}; fill it in")
    encoded = pc.dictionary_encode(column)
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary.to_pylist()


def _numbers(table: pa.Table, name: str, source: str) -> np.ndarray:
    """A numeric column as float64 in data-row order (NaN where empty); text that is not a
    number is refused naming its data row."""
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    try:
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowNotImplementedError:
        raise DataFormatError(
            f"{source}: column '{name}' holds {column.type} values; it must hold numbers"
        ) from None
    except pa.ArrowInvalid:
        lo, hi = 0, len(column)  # the first value that is not a number lies in [lo, hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                column.slice(lo, mid - lo).cast(pa.float64())
                lo = mid
            except pa.ArrowInvalid:
                hi = mid
        raise DataFormatError(
            f"{source}: '{name}' is {shown(column[lo].as_py())} in data row {lo + 1}, not a "
            f"number; {_NEEDS[name]}"
        ) from None


def _check_values(
    name: str, values: np.ndarray, bad: np.ndarray, need: str, where: tuple, source: str
) -> None:
    """Refuse the first data row flagged ``bad``, naming its value, image and finding, and
    saying what it must be (``need``)."""
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        image, finding, ids, labels = where
        raise DataFormatError(
            f"{source}: '{name}' is {shown(values[row])} in data row {row + 1} (image "
            f"'{ids[image[row]]}', finding '{labels[finding[row]]}'); {need}"
        )


def _per_image(
    table: pa.Table, name: str, image: np.ndarray, ids: list[str], source: str
) -> np.ndarray | list:
    """The value of a per-image column for each image, checked equal on all its rows: float64
    (NaN unknown) for numbers, else a list of str / None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(name).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        numbers = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        key = np.where(np.isnan(numbers), -np.inf, numbers)

        def value(row: int) -> Any:
            return numbers[row]
    else:
        encoded = pc.dictionary_encode(column.cast(pa.string()))
        key = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()

        def value(row: int) -> Any:
            return None if key[row] < 0 else names[key[row]]

    first = np.full(len(ids), -1, dtype=np.int64)
    first[image[::-1]] = np.arange(len(image))[::-1]  # each image's first data row
    differ = key != key[first[image]]
    if differ.any():
        row = int(np.flatnonzero(differ)[0])
        other = int(first[image[row]])
        raise DataFormatError(
            f"{source}: image '{ids[image[row]]}' has {name} {shown(value(other))} in data row "
            f"{other + 1} but {shown(value(row))} in data row {row + 1}; a per-image column must "
            "agree on all the image's rows"
        )
    if key.dtype.kind == "f":
        return numbers[first]
    return [value(row) for row in first]


def from_table(table: pa.Table, source: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """Pivot a long table to the fields of ``Predictions`` (targets, scores: images x findings)."""
    missing = [name for name in REQUIRED if name not in table.column_names]
    if missing:
        raise DataFormatError(
            f"{source}: missing column(s) {', '.join(missing)}; a predictions table needs "
            f"{', '.join(REQUIRED)} (optional: patient_id, score_kind, subgroup columns)"
        )
    image, ids = _codes(table, "image_id", source)
    finding, labels = _codes(table, "finding", source)
    if metadata.get("labels") and sorted(metadata["labels"]) == sorted(labels):
        remap = {name: k for k, name in enumerate(metadata["labels"])}
        finding = np.array([remap[name] for name in labels])[finding]
        labels = list(metadata["labels"])
    n, n_labels = len(ids), len(labels)
    cell = image * n_labels + finding
    seen = np.bincount(cell, minlength=n * n_labels)
    if (seen > 1).any():
        rows = np.flatnonzero(cell == np.flatnonzero(seen > 1)[0])
        raise DataFormatError(
            f"{source}: data rows {rows[0] + 1} and {rows[1] + 1} both give image "
            f"'{ids[image[rows[0]]]}', finding '{labels[finding[rows[0]]]}'; one row per image "
            "and finding"
        )
    if (seen == 0).any():
        absent = int(np.flatnonzero(seen == 0)[0])
        raise DataFormatError(
            f"{source}: image '{ids[absent // n_labels]}' has no row for finding "
            f"'{labels[absent % n_labels]}'; every image needs a score for every finding "
            "(leave target empty where it is not annotated)"
        )
    where = (image, finding, ids, labels)
    target_rows, score_rows = _numbers(table, "target", source), _numbers(table, "score", source)
    known = ~np.isnan(target_rows)
    bad = known & (target_rows != 0) & (target_rows != 1)
    _check_values("target", target_rows, bad, _NEEDS["target"], where, source)
    empty = np.isnan(score_rows)
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise DataFormatError(f"{source}: 'score' is empty in data row {row + 1}; fill it in")
    score_kind = _score_kind(table, metadata, score_rows, source)
    bad, need = ~np.isfinite(score_rows), "every score must be finite"
    if score_kind == "probability":
        bad |= (score_rows < 0) | (score_rows > 1)
        need = "every score must be a probability in [0, 1] (score_kind probability)"
    _check_values("score", score_rows, bad, need, where, source)
    targets, scores = np.empty(n * n_labels), np.empty(n * n_labels)
    targets[cell], scores[cell] = target_rows, score_rows
    fields = {
        name: _per_image(table, name, image, ids, source)
        for name in table.column_names
        if name not in RESERVED
    }
    patients = None
    if "patient_id" in table.column_names:
        patients = _per_image(table, "patient_id", image, ids, source)
        if all(p is None for p in patients):
            patients = None
        elif any(p is None for p in patients):
            absent = ids[[p is None for p in patients].index(True)]
            raise DataFormatError(
                f"{source}: image '{absent}' has no patient_id; give every row one, or leave "
                "the column out"
            )
    return {
        "labels": labels,
        "ids": ids,
        "patient_ids": patients,
        "targets": targets.reshape(n, n_labels),
        "scores": scores.reshape(n, n_labels),
        "score_kind": score_kind,
        "provenance": metadata.get("provenance") or {},
        "subgroups": fields,
    }


def _score_kind(table: pa.Table, metadata: dict[str, Any], scores: np.ndarray, source: str) -> str:
    """The table's score kind: its column (one value), the metadata, else probabilities when
    every score lies in [0, 1] and logits otherwise."""
    if "score_kind" in table.column_names:
        kinds = set(table.column("score_kind").combine_chunks().cast("string").to_pylist())
        if len(kinds) != 1 or None in kinds:
            raise DataFormatError(
                f"{source}: 'score_kind' must hold one value for all rows (found "
                f"{sorted(map(str, kinds))})"
            )
        return kinds.pop()
    if metadata.get("score_kind"):
        return metadata["score_kind"]
    return "probability" if scores.min() >= 0 and scores.max() <= 1 else "logit"


def frame(pred: Any) -> pd.DataFrame:
    """The long table as a pandas DataFrame (see the module docstring)."""
    return to_table(pred).replace_schema_metadata(None).to_pandas()
