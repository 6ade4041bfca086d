"""The manifest: the one table (one row per image) every later stage reads.

Columns are ``BASE_COLUMNS`` then one float column per canonical finding (``findings.FINDING_IDS``)
the dataset annotates, valued 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or NaN (not
annotated). ``label_matrix`` gives them as an array, by default as evaluation targets
(:mod:`cxrprobe.data.targets`: uncertain masked to NaN). Written as Parquet; CSV is accepted on
input.

The label policies that made a manifest (``uncertain``, ``blank``; see
:mod:`cxrprobe.data.policies`) travel with it: ``df.attrs["label_policies"]`` in memory, the
Parquet file's key-value metadata (key ``cxrprobe.label_policies``, JSON) on disk, so stores built
from the file record them (:func:`label_policies`). A CSV manifest carries none (unknown).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrprobe.data.findings import FINDING_IDS, in_vocabulary_order
from cxrprobe.data.targets import evaluation_targets
from cxrprobe.errors import ConfigError, DataFormatError, InputFileError
from cxrprobe.provenance import atomic_write_bytes, write_run_record

BASE_COLUMNS = ("image_id", "path", "patient_id", "study_id", "view", "split", "sex", "age")
VIEWS = ("PA", "AP", "LATERAL", "OTHER")
SPLITS = ("train", "val", "test")
LABEL_VALUES = (1.0, 0.0, -1.0)
_REQUIRED_STRINGS = ("image_id", "path", "patient_id")
_STRING_COLUMNS = ("image_id", "path", "patient_id", "study_id", "view", "split", "sex")
LABEL_POLICIES = ("uncertain", "blank")  # the policies that decide what a label value means
LABEL_POLICIES_ATTR = "label_policies"  # key in DataFrame.attrs
_PARQUET_KEY = b"cxrprobe.label_policies"
CSV_FIRST_LINE = 2  # the file line of a CSV's first data row (line 1 is the header)


def data_row(index: int, first_line: int | None = CSV_FIRST_LINE) -> str:
    """A 0-based row position as messages give it: ``data row N`` counted from 1 (as predictions
    tables count), then ``(line M)``, its line in the file, when the rows are a text table's
    whose first data row is on ``first_line`` (None: not a text file, e.g. Parquet)."""
    where = f"data row {int(index) + 1}"
    return where if first_line is None else f"{where} (line {int(index) + first_line})"


def _as_strings(values: pd.Series) -> pd.Series:
    """Strings as an object column, missing values (NaN, None, '') as None."""
    missing = values.isna()
    out = values.astype(str).astype(object)
    out[missing | (out == "")] = None
    return out


def normalize_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical column order and dtypes: base columns, findings in vocabulary order, extras.

    Missing optional base columns are added empty; string columns hold ``str`` or None, ``age`` is
    float64 and finding columns float32. The index is reset.
    """
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for name in BASE_COLUMNS:
        column = df[name].reset_index(drop=True) if name in df else pd.Series([None] * len(df))
        if name == "age":
            out[name] = pd.to_numeric(column, errors="coerce").astype("float64")
        else:
            out[name] = _as_strings(column)
    findings = in_vocabulary_order(df.columns)
    for name in findings:
        out[name] = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float32)
    extras = sorted(c for c in df.columns if c not in out.columns)
    for name in extras:
        out[name] = df[name].reset_index(drop=True)
    if LABEL_POLICIES_ATTR in df.attrs:
        out.attrs[LABEL_POLICIES_ATTR] = dict(df.attrs[LABEL_POLICIES_ATTR])
    return out


def label_policies(df: pd.DataFrame) -> dict[str, str] | None:
    """The label policies recorded with a manifest (``{"uncertain": ..., "blank": ...}``), or None
    when unknown (a CSV manifest, or a DataFrame not built by an adapter)."""
    recorded = df.attrs.get(LABEL_POLICIES_ATTR)
    return None if recorded is None else dict(recorded)


def _read_label_policies(path: Path) -> dict[str, str] | None:
    """The label policies in a Parquet manifest's metadata (None if it has none)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(_PARQUET_KEY)
    if raw is None:
        return None
    try:
        recorded = json.loads(raw)
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict) or set(recorded) != set(LABEL_POLICIES):
        raise DataFormatError(
            f"{path}: metadata {_PARQUET_KEY.decode()} is {raw[:80]!r}, not a JSON object with "
            f"{', '.join(LABEL_POLICIES)}; rebuild the manifest with `cxrprobe manifest`"
        )
    return {k: str(recorded[k]) for k in LABEL_POLICIES}


def validate_manifest(
    df: pd.DataFrame, source: str = "manifest", first_line: int | None = None
) -> None:
    """Raise DataFormatError naming ``source``, the row and the column of the first problem.

    Checks: base columns present, required ids non-empty, unique ``image_id``, ``view`` and
    ``split`` in their canonical sets, finding values in {1, 0, -1, NaN}. Rows are named as
    :func:`data_row` does, with their file line when ``df`` holds the data rows of a CSV whose
    first data row is on ``first_line``.
    """
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing:
        raise DataFormatError(
            f"{source}: missing column(s) {', '.join(missing)}; a manifest needs "
            f"{', '.join(BASE_COLUMNS)} (build one with `cxrprobe manifest`)"
        )
    for name in _REQUIRED_STRINGS:
        empty = np.flatnonzero(df[name].isna().to_numpy() | (df[name].astype(str) == "").to_numpy())
        if empty.size:
            raise DataFormatError(
                f"{source}: {data_row(empty[0], first_line)}, column {name}: empty; every row "
                "needs one"
            )
    duplicated = np.flatnonzero(df["image_id"].duplicated(keep=False).to_numpy())
    if duplicated.size:
        row = duplicated[0]
        more = ", ..." if duplicated.size > 5 else ""
        rows = ", ".join(str(r + 1) for r in duplicated[:5]) + more
        raise DataFormatError(
            f"{source}: {data_row(row, first_line)}, column image_id: "
            f"{df['image_id'].iloc[row]!r} appears {duplicated.size} times (data rows {rows}); "
            "ids must be unique"
        )
    _check_allowed(df, "view", VIEWS, source, first_line)
    _check_allowed(df, "split", SPLITS, source, first_line)
    for name in in_vocabulary_order(df.columns):
        values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
        unparsed = df[name].notna().to_numpy() & np.isnan(values)
        bad = np.flatnonzero(unparsed | ~(np.isnan(values) | np.isin(values, LABEL_VALUES)))
        if bad.size:
            raise DataFormatError(
                f"{source}: {data_row(bad[0], first_line)}, column {name}: value "
                f"{plain_value(df[name].iloc[bad[0]])!r} is not 1, 0, -1 or empty"
            )


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (pandas' parser messages end in a newline)."""
    return " ".join(str(exc).split())


def plain_value(value: object) -> object:
    """A numpy scalar as the Python value, for messages."""
    return value.item() if isinstance(value, np.generic) else value


def _check_allowed(
    df: pd.DataFrame, column: str, allowed: Sequence[str], source: str, first_line: int | None
) -> None:
    values = df[column]
    bad = np.flatnonzero((values.notna() & (values != "") & ~values.isin(allowed)).to_numpy())
    if bad.size:
        raise DataFormatError(
            f"{source}: {data_row(bad[0], first_line)}, column {column}: "
            f"{plain_value(values.iloc[bad[0]])!r} is not one of "
            f"{', '.join(allowed)} (or empty)"
        )


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest from Parquet or CSV (``.csv``/``.csv.gz``), normalised."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"manifest {path} not found; build one with `cxrprobe manifest`")
    name = path.name.lower()
    is_csv = name.endswith((".csv", ".csv.gz"))
    try:
        if is_csv:
            df = pd.read_csv(
                path, dtype={c: str for c in _STRING_COLUMNS}, keep_default_na=False, na_values=[""]
            )
        else:
            df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataFormatError(
            f"{path}: cannot read as {'CSV' if is_csv else 'Parquet'} ({one_line(exc)})"
        ) from exc
    validate_manifest(df, str(path), CSV_FIRST_LINE if is_csv else None)
    recorded = None if is_csv else _read_label_policies(path)
    df.attrs.pop(LABEL_POLICIES_ATTR, None)
    df = normalize_manifest(df)
    if recorded is not None:
        df.attrs[LABEL_POLICIES_ATTR] = recorded
    return df


def write_manifest(
    df: pd.DataFrame,
    path: str | os.PathLike,
    policies: Mapping[str, str] | None = None,
    command: str | None = None,
    record: Mapping[str, Any] | None = None,
) -> Path:
    """Validate, normalise and write a manifest as Parquet atomically (temp file + os.replace),
    with the file mode the user's umask gives, like every other output.

    ``policies`` (default: those recorded in ``df.attrs``, see :func:`label_policies`) go into the
    file's metadata. With ``command`` (e.g. ``"cxrprobe manifest nih"``), its run record goes to
    :func:`run_record_path`: ``record`` (the command's resolved options) plus the manifest's hash,
    label policies, findings and per-split counts, so the CLI and a study write the same record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    validate_manifest(df, str(path))
    policies = label_policies(df) if policies is None else dict(policies)
    if policies is not None and set(policies) != set(LABEL_POLICIES):
        raise ConfigError(
            f"label policies {policies} for {path} must name exactly {', '.join(LABEL_POLICIES)}"
        )
    table = pa.Table.from_pandas(normalize_manifest(df), preserve_index=False)
    if policies is not None:
        metadata = {**(table.schema.metadata or {}), _PARQUET_KEY: json.dumps(policies).encode()}
        table = table.replace_schema_metadata(metadata)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    if command is not None:
        counts = prevalence(df)
        config = {
            **(record or {}),
            "manifest_hash": manifest_hash(df),
            "label_policies": policies,
            "findings": list(counts.columns[2:]),
            "counts": counts.to_dict(orient="index"),
        }
        write_run_record(run_record_path(path), command, config)
    return path


def run_record_path(path: str | os.PathLike) -> Path:
    """``<stem>.run.json`` beside the manifest ``path``: the record of the command that wrote it."""
    path = Path(path)
    return path.with_name(path.stem + ".run.json")


def finding_columns(df: pd.DataFrame) -> list[str]:
    """The canonical finding columns present in ``df``, in vocabulary order."""
    return in_vocabulary_order(df.columns)


def label_matrix(
    df: pd.DataFrame, findings: Sequence[str] | None = None, keep_uncertain: bool = False
) -> np.ndarray:
    """Labels as a float32 (n, L) array: evaluation targets (1, 0 or NaN; uncertain masked, see
    :mod:`cxrprobe.data.targets`), or the raw labels with -1 if ``keep_uncertain`` (stores keep
    -1 so that a probe's ``--uncertain`` policy can still map it).

    ``findings`` picks and orders the columns (default: ``finding_columns(df)``); a finding the
    manifest lacks raises ConfigError rather than silently giving an all-NaN column.
    """
    names = finding_columns(df) if findings is None else list(findings)
    absent = [f for f in names if f not in df.columns]
    if absent:
        raise ConfigError(
            f"finding(s) {', '.join(absent)} not in the manifest; it has {', '.join(finding_columns(df))}"
        )
    if not names:
        return np.empty((len(df), 0), dtype=np.float32)
    labels = df[names].to_numpy(dtype=np.float32, na_value=np.nan)
    return labels.copy() if keep_uncertain else evaluation_targets(labels)


def manifest_hash(df: pd.DataFrame) -> str:
    """Hex sha256 of the normalised content (column names, row order, values).

    Independent of how the manifest was saved: a DataFrame, its Parquet and its CSV round trip hash
    the same.
    """
    df = normalize_manifest(df)
    digest = hashlib.sha256()
    for name in df.columns:
        digest.update(f"\x1e{name}\x1f".encode())
        column = df[name]
        if name == "age" or name in FINDING_IDS:
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            values = np.where(np.isnan(values), np.nan, values + 0.0)  # one NaN, no -0.0
            digest.update(values.astype("<f8").tobytes())
        else:
            text = "\x1f".join(
                "\x00" if v is None or v is pd.NA or v != v else str(v) for v in column
            )
            digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def prevalence(df: pd.DataFrame) -> pd.DataFrame:
    """Per split (then ``all``): images, patients and positives per finding.

    Rows are ``train``, ``val``, ``test`` (those present), ``unassigned`` when some rows have no
    split, and ``all``; columns ``n_images``, ``n_patients`` then one positive count per finding.
    """
    findings = finding_columns(df)
    split = df["split"].fillna("unassigned")
    groups = [s for s in (*SPLITS, "unassigned") if (split == s).any()]
    rows = {}
    for name, part in [*((s, df[split == s]) for s in groups), ("all", df)]:
        counts = {"n_images": len(part), "n_patients": part["patient_id"].nunique()}
        counts.update({f: int((part[f] == 1).sum()) for f in findings})
        rows[name] = counts
    return pd.DataFrame.from_dict(rows, orient="index")
