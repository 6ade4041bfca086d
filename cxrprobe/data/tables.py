"""Reading dataset tables: finding them under a root, parsing them, and assembling manifest rows."""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrprobe.data.manifest import (
    CSV_FIRST_LINE,
    data_row,
    normalize_manifest,
    one_line,
    validate_manifest,
)
from cxrprobe.errors import ConfigError, DataFormatError, InputFileError

log = logging.getLogger(__name__)
_ENCODING = contextvars.ContextVar("csv_encoding", default="utf-8")


@contextlib.contextmanager
def csv_encoding(encoding: str | None) -> Iterator[None]:
    """Read every table inside the block with ``encoding`` (``manifest --encoding``); None keeps UTF-8."""
    import codecs

    if encoding is None:
        yield
        return
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(
            f"--encoding {encoding!r} is not a known text encoding; e.g. utf-8, latin-1, cp1252"
        ) from None
    token = _ENCODING.set(encoding)
    try:
        yield
    finally:
        _ENCODING.reset(token)


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
    """Read a CSV (``.gz`` too) in the :func:`csv_encoding` (UTF-8 by default) and check
    ``columns`` are present; errors name the file (and for bad text, the line)."""
    encoding = _ENCODING.get()
    try:
        table = pd.read_csv(path, dtype=dtype, low_memory=False, encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DataFormatError(_decode_problem(path, encoding)) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        raise DataFormatError(f"{path}: cannot read as CSV ({one_line(exc)})") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, table.columns))}"
        )
    return table


def _decode_problem(path: Path, encoding: str) -> str:
    """Name the first line of ``path`` that is not valid ``encoding`` (pandas only says where in
    its read buffer the bad byte was)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as exc:
                where = data_row(number - CSV_FIRST_LINE) if number > 1 else "line 1 (header)"
                return (
                    f"{path}: {where} is not valid {encoding} text (byte {line[exc.start]:#04x} at "
                    f"column {exc.start + 1}); pass the file's encoding with --encoding (e.g. "
                    "--encoding latin-1 or cp1252) or re-save it as UTF-8"
                )
    return f"{path}: not valid {encoding} text; pass the file's encoding with --encoding"


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


def assemble(labels: pd.DataFrame, source_csv: Path | None = None, **columns: Any) -> pd.DataFrame:
    """A normalised manifest from base-column values (sequences of equal length) and labels.

    With ``source_csv``, the rows are that CSV's data rows in order: the result is checked here,
    so a problem (an empty or repeated id) is named by its data row and line in that file."""
    base = pd.DataFrame(
        {name: np.asarray(values, dtype=object) for name, values in columns.items()}
    )
    frame = normalize_manifest(pd.concat([base, labels.reset_index(drop=True)], axis=1))
    if source_csv is not None:
        validate_manifest(frame, str(source_csv), CSV_FIRST_LINE)
    return frame
