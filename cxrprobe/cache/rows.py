"""The manifest columns every store carries: ids, split, patient ids and labels, one per row;
and, when the manifest has them, the subgroup columns sex, age and view (optional: stores made
before them, or from data without them, have none)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrprobe.cache.layout import ROW_COLUMNS
from cxrprobe.errors import DataFormatError

SUBGROUP_FIELDS = ("sex", "age", "view")  # manifest columns stores keep for subgroup analyses
NUMERIC_SUBGROUPS = ("age",)


@dataclass(frozen=True)
class RowMetadata:
    """The manifest columns every store carries, one entry per row."""

    ids: np.ndarray
    split: np.ndarray
    patient_id: np.ndarray
    labels: np.ndarray
    findings: tuple[str, ...]
    # SUBGROUP_FIELDS present in the manifest: strings ('' unknown), age float32 (NaN unknown).
    # Descriptive only: not part of digest() or first_difference(), so resuming ignores them.
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("split", "patient_id", "labels"):
            if len(getattr(self, name)) != n:
                raise DataFormatError(
                    f"row metadata: {name} has {len(getattr(self, name))} rows, ids has {n}"
                )
        for name, values in self.subgroups.items():
            if name not in SUBGROUP_FIELDS or len(values) != n:
                raise DataFormatError(
                    f"row metadata: subgroup field {name!r} with {len(values)} rows for {n} rows "
                    f"(fields: {', '.join(SUBGROUP_FIELDS)})"
                )
        if self.labels.ndim != 2 or self.labels.shape[1] != len(self.findings):
            raise DataFormatError(
                f"row metadata: labels shape {self.labels.shape} does not match {len(self.findings)} findings"
            )
        clashes = sorted(
            {f for f in self.findings if f in ROW_COLUMNS or self.findings.count(f) > 1}
        )
        if clashes:
            raise DataFormatError(
                f"row metadata: finding names {clashes} repeat or are taken by the row columns "
                f"({', '.join(ROW_COLUMNS)}); rename them"
            )

    @classmethod
    def from_manifest(cls, df: Any, findings: Sequence[str] | None = None) -> RowMetadata:
        """Take ids, split, patient ids and label columns from a manifest DataFrame."""
        from cxrprobe.data.manifest import finding_columns, label_matrix

        names = tuple(findings) if findings is not None else tuple(finding_columns(df))
        return cls(
            ids=_strings(df["image_id"]),
            split=_strings(df["split"]),
            patient_id=_strings(df["patient_id"]),
            labels=label_matrix(df, list(names), keep_uncertain=True).astype(np.float32),
            findings=names,
            subgroups=_subgroups(df),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> RowMetadata:
        """The first ``n`` rows."""
        return RowMetadata(
            self.ids[:n],
            self.split[:n],
            self.patient_id[:n],
            self.labels[:n],
            self.findings,
            {name: values[:n] for name, values in self.subgroups.items()},
        )

    def subgroup_fields(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The subgroup fields of ``rows`` as a predictions file's ``subgroups``: strings with
        None for unknown, ages as floats with NaN for unknown (:mod:`cxrprobe.stats.groups`)."""
        from cxrprobe.stats.groups import check_fields

        fields: dict[str, list[Any]] = {}
        for name, values in self.subgroups.items():
            picked = values[rows]
            if picked.dtype.kind == "f":
                fields[name] = picked.astype(np.float64).tolist()
            else:
                fields[name] = [v or None for v in picked.tolist()]
        return check_fields(fields, len(rows), "store rows")

    def first_difference(self, other: RowMetadata) -> str | None:
        """Describe the first row/column where two metadata tables differ, or None if equal."""
        if self.findings != other.findings:
            return f"findings differ ({list(self.findings)} vs {list(other.findings)})"
        if len(self) != len(other):
            return f"row counts differ ({len(self)} vs {len(other)})"
        for name in ("ids", "split", "patient_id"):
            mine, theirs = getattr(self, name), getattr(other, name)
            bad = np.flatnonzero(mine != theirs)
            if bad.size:
                row = int(bad[0])
                return f"row {row}: {name} {str(mine[row])!r} vs {str(theirs[row])!r}"
        same = (self.labels == other.labels) | (np.isnan(self.labels) & np.isnan(other.labels))
        bad_rows = np.flatnonzero(~same.all(axis=1))
        if bad_rows.size:
            row = int(bad_rows[0])
            return f"row {row} ({self.ids[row]}): labels differ"
        return None

    def digest(self) -> str:
        """sha256 of every row's ids, split, patient id and labels, and the findings."""
        h = hashlib.sha256(json.dumps(list(self.findings)).encode())
        for name in ("ids", "split", "patient_id"):
            h.update("\0".join(getattr(self, name).tolist()).encode() + b"\1")
        h.update(np.ascontiguousarray(self.labels, dtype=np.float32).tobytes())
        return h.hexdigest()


def _subgroups(df: Any) -> dict[str, np.ndarray]:
    """The manifest's subgroup columns that have at least one known value."""
    found = {}
    for name in SUBGROUP_FIELDS:
        if name not in df.columns or not df[name].notna().any():
            continue
        if name in NUMERIC_SUBGROUPS:
            found[name] = df[name].to_numpy(dtype=np.float32, na_value=np.nan)
        else:
            column = df[name].astype(object)
            found[name] = _strings(column.where(column.notna(), None))
    return found


def _strings(values: Iterable[Any]) -> np.ndarray:
    """Strings as a numpy unicode array; missing values become ''."""
    return np.array(
        ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values],
        dtype=str,
    )
