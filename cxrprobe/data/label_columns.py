"""A source table's labels as canonical finding columns, through the dataset's label map.

Tables give labels in one of two shapes: a list of positive label names per row
(:func:`labels_from_lists`) or one column per source label (:func:`labels_from_columns`: values
1, 0, -1 or blank, or grades under a column rule). A name the map does not know stops the build
or is counted, as the map's ``unmapped`` says (:func:`check_label_names`); a column it does not
know is left out, and :func:`warn_unmapped_columns` names the closest known finding. Sources of
one finding merge, and derived findings are added, as :mod:`cxrprobe.data.labelmap` describes.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from cxrprobe.data.findings import FINDINGS, in_vocabulary_order
from cxrprobe.data.labelmap import ColumnRule, LabelMap, add_derived, key, merge_labels
from cxrprobe.data.manifest import data_row, plain_value
from cxrprobe.errors import DataFormatError

log = logging.getLogger(__name__)


def labels_from_lists(
    lists: pd.Series,
    label_map: LabelMap,
    source: str,
    vocabulary: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Finding columns from one list of positive label names per data row of the CSV ``source``.

    Each row's findings are 1 if any listed name maps to them, else 0; a row whose entry is not a
    list (NaN) is not annotated (all NaN). ``vocabulary`` names the source labels the table
    annotates (default: every name in the map); only their findings become columns.
    """
    names = label_map.labels if vocabulary is None else {key(v) for v in vocabulary}
    findings = in_vocabulary_order(t for n in names for t in label_map.labels.get(n, ()))
    out = np.zeros((len(lists), len(findings)), dtype=np.float32)
    annotated = lists.map(lambda v: isinstance(v, (list, tuple))).to_numpy(dtype=bool)
    out[~annotated] = np.nan
    rows_of = np.flatnonzero(annotated)
    exploded = lists[annotated].reset_index(drop=True).explode()
    exploded = exploded[exploded.notna()]
    keys = exploded.map(key)
    check_label_names(
        pd.Series(exploded.to_numpy(), index=rows_of[exploded.index]), label_map, source
    )
    column = {f: j for j, f in enumerate(findings)}
    pairs = [
        (rows_of[i], column[t])
        for i, name in zip(keys.index, keys, strict=True)
        if name in names
        for t in label_map.labels.get(name, ())
    ]
    if pairs:
        r, c = np.array(pairs).T
        out[r, c] = 1.0
    return add_derived(pd.DataFrame(out, columns=findings, index=lists.index))


def check_label_names(names: pd.Series, label_map: LabelMap, source: str) -> None:
    """Names the map does not know: a DataFormatError naming the first one's data row when the
    map's ``unmapped`` is ``"error"``, else an info line counting them. ``names`` is indexed by
    each name's 0-based data row in the CSV ``source``."""
    unknown = names[~names.map(key).isin(label_map.labels.keys())]
    if unknown.empty:
        return
    if label_map.unmapped == "error":
        raise DataFormatError(
            f"{source}: {data_row(unknown.index[0])}: label {unknown.iloc[0]!r} is not in "
            f"{label_map.source}; add it there, mapped to a canonical finding id"
        )
    log.info(
        "%s: %d label mentions outside the vocabulary ignored (most common: %s)",
        source,
        len(unknown),
        ", ".join(unknown.value_counts().index[:5]),
    )


def labels_from_columns(
    table: pd.DataFrame,
    label_map: LabelMap,
    source: str,
    values: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Finding columns from a wide table with one column per source label (1/0/-1/blank), as
    read from the CSV ``source`` (errors name the data row and its line).

    Columns match the map case-insensitively; several columns mapped to one finding merge by
    ``merge_labels``. ``values`` recodes strings (e.g. ``{"yes": 1, "no": 0}``) before checking,
    unless the column's own rule in the map gives its own codes; a rule's ``threshold`` then
    turns ordinal grades into 0/1 (-1 stays uncertain).
    """
    by_finding: dict[str, list[str]] = {}
    for column in table.columns:
        for finding in label_map.labels.get(key(column), ()):
            by_finding.setdefault(finding, []).append(column)
    if not by_finding:
        raise DataFormatError(
            f"{source}: no label columns found; expected some of "
            f"{', '.join(sorted(label_map.names.values()))} (see {label_map.source})"
        )
    parsed = {
        c: _label_values(table[c], source, _rule(label_map, c, values))
        for cs in by_finding.values()
        for c in cs
    }
    findings = in_vocabulary_order(by_finding)
    merged = {
        f: merge_labels(np.column_stack([parsed[c] for c in by_finding[f]])) for f in findings
    }
    return add_derived(pd.DataFrame(merged, columns=findings, index=table.index))


def _rule(label_map: LabelMap, column: str, values: Mapping[str, float] | None) -> ColumnRule:
    """The column's rule, its codes defaulting to the table-wide ``values``."""
    rule = label_map.rules.get(key(column), ColumnRule())
    return ColumnRule(values if rule.values is None else rule.values, rule.threshold)


def _label_values(column: pd.Series, source: str, rule: ColumnRule) -> np.ndarray:
    """One column's labels as float32: recoded by the rule's codes, thresholded if it has one."""
    where = f"{source}: {{row}}, column {column.name!r}: value {{value!r}}"
    if not pd.api.types.is_numeric_dtype(column):
        codes = {key(k): v for k, v in (rule.values or {}).items()}
        column = column.map(
            lambda v: (codes.get(key(v), v) if v.strip() else np.nan) if isinstance(v, str) else v
        )
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float32)
    unparsed = column.notna().to_numpy() & np.isnan(numbers)
    if rule.threshold is not None:
        bad = np.flatnonzero(unparsed | ((numbers < 0) & (numbers != -1)))
        if bad.size:
            raise DataFormatError(
                where.format(row=data_row(bad[0]), value=plain_value(column.iloc[bad[0]]))
                + f" is not a grade (a number >= 0, -1 for uncertain) or blank; this column is "
                f"thresholded at {rule.threshold} (recode text grades with the column's 'values')"
            )
        graded = (numbers >= rule.threshold).astype(np.float32)
        return np.where(np.isnan(numbers) | (numbers == -1), numbers, graded)
    bad = np.flatnonzero(unparsed | ~(np.isnan(numbers) | np.isin(numbers, (1.0, 0.0, -1.0))))
    if bad.size:
        raise DataFormatError(
            where.format(row=data_row(bad[0]), value=plain_value(column.iloc[bad[0]]))
            + " is not 1, 0, -1 or blank (recode it with a 'values' map, or give the column a "
            "'threshold' if it holds grades)"
        )
    return numbers


def warn_unmapped_columns(columns: Iterable[str], label_map: LabelMap, source: str) -> list[str]:
    """Log a warning for each column the map does not know, naming the closest known finding, so a
    misspelt label column (``Cardiomegally``) is never dropped without a word. Returns them."""
    unmapped = [c for c in columns if key(c) not in label_map.labels]
    known = {key(f.name): f.id for f in FINDINGS} | {key(f.id): f.id for f in FINDINGS}
    known |= {
        k: f"{label_map.names[k]!r} ({', '.join(ids)})"
        for k, ids in label_map.labels.items()
        if k not in known
    }
    for column in unmapped:
        close = difflib.get_close_matches(key(column), list(known), n=1, cutoff=0.6)
        hint = f"closest known finding: {known[close[0]]}" if close else "no known finding is close"
        log.warning(
            "%s: column %r is not a label the map knows and is left out (%s); map it under "
            "'findings' in a column map, or list it under 'ignore'",
            source,
            column,
            hint,
        )
    return unmapped
