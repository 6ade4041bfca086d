"""Per-row subgroup fields of a predictions file (sex, age, view, any extra column) and ``--by``.

A predictions file may carry ``subgroups``: a mapping from a field name to one value per row.
A field is *categorical* (strings, ``None`` where unknown) or *numeric* (finite numbers, NaN
where unknown). ``--by sex`` splits the rows by a categorical field's values; ``--by
age:0,40,60,80`` splits a numeric field into the half-open bins [0, 40), [40, 60), [60, 80) and
[80, inf). Rows with an unknown value, or below the first edge, form groups of their own, so no
row is silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrprobe.errors import ConfigError, DataFormatError

MISSING = "(missing)"


def check_fields(value: Any, n_rows: int, source: str) -> dict[str, np.ndarray]:
    """Validate a ``subgroups`` mapping; numeric fields become float64 (NaN unknown), categorical
    ones object arrays of ``str`` or None. Raises ``DataFormatError`` naming the field and row."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataFormatError(f"{source}: 'subgroups' must be an object of per-row fields")
    fields: dict[str, np.ndarray] = {}
    for name, values in value.items():
        if not isinstance(name, str) or not name or any(c in name for c in ":,"):
            raise DataFormatError(
                f"{source}: subgroup field name {name!r} must be a non-empty string without "
                "':' or ','"
            )
        fields[name] = _check_field(name, values, n_rows, source)
    return fields


def _check_field(name: str, values: Any, n_rows: int, source: str) -> np.ndarray:
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f":
            values = values.tolist()
        elif values.dtype.kind == "U":
            values = [v or None for v in values.tolist()]  # npz stores unknown as ""
        else:
            values = values.tolist()
    if not isinstance(values, list) or len(values) != n_rows:
        size = len(values) if isinstance(values, list) else type(values).__name__
        raise DataFormatError(
            f"{source}: subgroup field '{name}' has {size} values for {n_rows} rows; give one "
            "per row (null where unknown)"
        )
    known = [(row, v) for row, v in enumerate(values) if v is not None and v == v]
    numeric = bool(known) and _is_number(known[0][1])  # the first known value sets the kind
    for row, v in known:
        if numeric and _is_number(v) and not np.isfinite(v):
            raise DataFormatError(
                f"{source}: subgroup field '{name}', row {row}: {v!r} is not finite"
            )
        if not (_is_number(v) if numeric else isinstance(v, str) and v):
            kind = "numbers" if numeric else "non-empty strings"
            raise DataFormatError(
                f"{source}: subgroup field '{name}', row {row}: {v!r}, but the field holds "
                f"{kind}; one kind per field, null where unknown"
            )
    if numeric:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    out = np.empty(n_rows, dtype=object)
    out[:] = [None if v is None or v != v else v for v in values]
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def is_numeric(values: np.ndarray) -> bool:
    """Whether a validated field is numeric (else categorical)."""
    return values.dtype.kind == "f"


def field_to_json(values: np.ndarray) -> list:
    """A validated field as a JSON list (null where unknown)."""
    if is_numeric(values):
        return [None if np.isnan(v) else float(v) for v in values]
    return list(values)


def field_to_npz(values: np.ndarray) -> np.ndarray:
    """A validated field as an npz array: float64 with NaN, or strings with '' where unknown."""
    if is_numeric(values):
        return values
    return np.array(["" if v is None else v for v in values], dtype=str)


def fields_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise equality of two fields, unknown equal to unknown."""
    if is_numeric(a) != is_numeric(b):
        return np.zeros(len(a), dtype=bool)
    if is_numeric(a):
        return (a == b) | (np.isnan(a) & np.isnan(b))
    return np.array([x == y for x, y in zip(a, b, strict=True)], dtype=bool)


@dataclass(frozen=True)
class SubgroupSpec:
    """One ``--by`` request: a field, and bin edges when the field is numeric."""

    field: str
    edges: tuple[float, ...] | None = None

    def __str__(self) -> str:
        if self.edges is None:
            return self.field
        return f"{self.field}:{','.join(f'{e:g}' for e in self.edges)}"


def parse_by(text: str) -> SubgroupSpec:
    """``sex`` → categorical; ``age:0,40,60,80`` → numeric with increasing bin edges.

    Examples
    --------
    >>> parse_by("age:0,40,60").edges
    (0.0, 40.0, 60.0)
    """
    name, _, edges = text.partition(":")
    if not name:
        raise ConfigError(f"--by {text!r}: give a field name, e.g. --by sex or --by age:0,40,60,80")
    if not _:
        return SubgroupSpec(name)
    try:
        values = tuple(float(e) for e in edges.split(","))
    except ValueError:
        raise ConfigError(
            f"--by {text!r}: bin edges must be numbers separated by commas, e.g. age:0,40,60,80"
        ) from None
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise ConfigError(f"--by {text!r}: bin edges must be finite and strictly increasing")
    return SubgroupSpec(name, values)


def _bin_name(edges: tuple[float, ...], k: int) -> str:
    if k == len(edges) - 1:
        return f">= {edges[k]:g}"
    return f"[{edges[k]:g}, {edges[k + 1]:g})"


def subgroup_masks(
    fields: dict[str, np.ndarray], spec: SubgroupSpec, source: str
) -> list[tuple[str, np.ndarray]]:
    """The (name, row mask) of every subgroup of ``spec``, in a fixed order.

    Categorical: one group per value (sorted); numeric: one per bin, empty bins included (they
    are listed as having no rows). Unknown values (and numbers below the first edge) get groups
    of their own. Raises ``DataFormatError`` naming ``source`` and the fields it has when the
    field is absent, and ``ConfigError`` when bins are given for a categorical field or missing
    for a numeric one.
    """
    if spec.field not in fields:
        have = ", ".join(sorted(fields)) or "none"
        raise DataFormatError(
            f"{source}: no subgroup field '{spec.field}' for --by (fields present: {have}); "
            "write predictions with a 'subgroups' field (see docs/stats.md)"
        )
    values = fields[spec.field]
    if is_numeric(values) != (spec.edges is not None):
        need = (
            f"give bin edges, e.g. --by {spec.field}:0,40,60,80"
            if is_numeric(values)
            else "it is categorical, so give no bin edges"
        )
        kind = "numeric" if is_numeric(values) else "categorical"
        raise ConfigError(f"--by {spec}: field '{spec.field}' is {kind}; {need}")
    groups: list[tuple[str, np.ndarray]] = []
    if spec.edges is None:
        known = np.array([v is not None for v in values], dtype=bool)
        for value in sorted({v for v in values if v is not None}):
            groups.append((value, np.array([v == value for v in values], dtype=bool)))
    else:
        edges = spec.edges
        known = ~np.isnan(values)
        below = known & (values < edges[0])
        if below.any():
            groups.append((f"< {edges[0]:g}", below))
        with np.errstate(invalid="ignore"):
            for k in range(len(edges)):
                upper = values < edges[k + 1] if k + 1 < len(edges) else known
                groups.append((_bin_name(edges, k), known & (values >= edges[k]) & upper))
    if not known.all():
        groups.append((MISSING, ~known))
    return groups
