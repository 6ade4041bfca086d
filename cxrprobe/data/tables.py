"""Reading dataset tables: finding them under a root, parsing them, and assembling manifest rows."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrprobe.data.manifest import normalize_manifest
from cxrprobe.errors import DataFormatError, InputFileError

log = logging.getLogger(__name__)


def _matches(root: Path, patterns: Sequence[str], subdirs: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        for sub in subdirs:
            folder = root / sub if sub else root
            found += sorted(folder.glob(pattern)) + sorted(folder.glob(pattern + ".gz"))
        if found:
            return found
    return found


def find_table(
    root: Path,
    patterns: Sequence[str],
    override: str | os.PathLike | None = None,
    subdirs: Sequence[str] = ("",),
) -> Path:
    """The table file: ``override`` (relative to ``root`` or absolute), else the first pattern
    (also tried with ``.gz``) that matches under ``root`` or its ``subdirs``.

    Several matches of one pattern pick the last in name order (e.g. the v2020 ChestX-ray14 table).
    """
    if override is not None:
        path = Path(override) if Path(override).is_absolute() else root / override
        if not path.is_file():
            raise InputFileError(f"label table {path} not found; check --labels-csv")
        return path
    found = _matches(root, patterns, subdirs)
    if not found:
        raise InputFileError(
            f"no {' or '.join(patterns)} (or .gz) in {root}; check --root or pass --labels-csv"
        )
    if len(found) > 1:
        log.info("several tables match in %s; using %s", root, found[-1].name)
    return found[-1]


def find_optional_table(
    root: Path, patterns: Sequence[str], subdirs: Sequence[str] = ("",)
) -> Path | None:
    """Like ``find_table`` but None when nothing matches."""
    found = _matches(root, patterns, subdirs)
    return found[-1] if found else None


def read_table(
    path: Path, columns: Sequence[str], dtype: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a CSV (``.gz`` too) and check ``columns`` are present; errors name the file."""
    try:
        table = pd.read_csv(path, dtype=dtype, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataFormatError(f"{path}: cannot read as CSV ({exc})") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, table.columns))}"
        )
    return table


def column_by_name(table: pd.DataFrame, name: str, path: Path) -> str:
    """The column called ``name`` ignoring case (``rad_ID`` vs ``rad_id``)."""
    for column in table.columns:
        if str(column).casefold() == name.casefold():
            return str(column)
    raise DataFormatError(
        f"{path}: missing column {name}; found {', '.join(map(str, table.columns))}"
    )


def optional_column(table: pd.DataFrame, name: str) -> pd.Series:
    """The column ``name``, or an all-missing column when the table lacks it."""
    if name in table.columns:
        return table[name]
    return pd.Series([None] * len(table), index=table.index, dtype=object)


def parse_age(raw: pd.Series) -> pd.Series:
    """Ages in years as float: numbers, or strings such as ``'058Y'``; anything else NaN."""
    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype("float64")
    return pd.to_numeric(raw.astype(str).str.extract(r"(\d+(?:\.\d+)?)")[0], errors="coerce")


def extract(values: pd.Series, pattern: str) -> pd.DataFrame:
    """Named groups of ``pattern`` per value (None where it does not match), via pyarrow (fast)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(values.to_numpy(dtype=object), type=pa.string(), from_pandas=True)
    matches = pc.extract_regex(array, pattern)
    names = [matches.type.field(i).name for i in range(matches.type.num_fields)]
    return pd.DataFrame(
        {n: matches.field(n).to_numpy(zero_copy_only=False) for n in names}, index=values.index
    )


def assemble(labels: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    """A normalised manifest from base-column values (sequences of equal length) and labels."""
    base = pd.DataFrame(
        {name: np.asarray(values, dtype=object) for name, values in columns.items()}
    )
    frame = pd.concat([base, labels.reset_index(drop=True)], axis=1)
    return normalize_manifest(frame)
