"""Label maps as data: each dataset's label, view and split names mapped to canonical ones.

A label map is a JSON file in ``cxrprobe/data/label_maps/`` (or a dict, for the generic adapter):

``labels``
    source label name → canonical finding id, a list of ids, or a column rule
    ``{"finding": id or ids, "values": {...}, "threshold": t}`` (wide tables: the column's own
    value codes, replacing the table-wide ones, then ``>= t`` → 1 for ordinal grades). Names match
    case-insensitively with whitespace collapsed. Several source names mapped to one finding
    combine by a maximum under the order 1 > -1 > 0 > NaN: any positive wins, else any uncertain,
    else negative, and the finding is missing only when every source is missing. A derived
    finding (``findings.DERIVED``, e.g. ``nodule_mass`` from ``nodule`` and ``mass``) is added the
    same way wherever all its parts are.
``unmapped``
    ``"error"`` (a source label absent from the map stops the build, naming it) or ``"ignore"``
    (such labels are counted in the log and dropped; PadChest has ~190 labels, most outside the
    vocabulary).
``views`` / ``default_view``
    raw view names → PA, AP, LATERAL or OTHER; unlisted or missing views get ``default_view``.
``splits``
    raw split names → train, val, test, added to the common synonyms (train/training,
    val/valid/validate/validation/dev, test/testing).

:mod:`cxrprobe.data.label_columns` turns a source table's labels into finding columns through a
map.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrprobe.data.findings import DERIVED, FINDING_IDS, in_vocabulary_order, with_derived
from cxrprobe.data.manifest import SPLITS, VIEWS, data_row
from cxrprobe.errors import ConfigError, DataFormatError, InputFileError

_SPLIT_SYNONYMS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validate": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}  # fmt: skip
_KEYS = {"dataset", "about", "merge", "unmapped", "labels", "views", "default_view", "splits"}
_RULE_KEYS = {"finding", "values", "threshold"}
# Rank of each label value when merging: 1 > -1 > 0 > NaN.
_RANK_VALUES = np.array([np.nan, 0.0, -1.0, 1.0], dtype=np.float32)


def key(name: Any) -> str:
    """The matching key of a source name: whitespace collapsed, case folded."""
    return " ".join(str(name).split()).casefold()


@dataclass(frozen=True)
class ColumnRule:
    """How one wide-table column's values become labels: its own value codes (replacing the
    table-wide ones), then, for ordinal grades, ``>= threshold`` → 1 and lower grades → 0."""

    values: Mapping[str, float] | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class LabelMap:
    """A dataset's names mapped to canonical findings, views and splits (see module docstring)."""

    source: str
    labels: Mapping[str, tuple[str, ...]]
    views: Mapping[str, str] = field(default_factory=dict)
    default_view: str = "OTHER"
    splits: Mapping[str, str] = field(default_factory=dict)
    unmapped: str = "error"
    names: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[str, ColumnRule] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> LabelMap:
        """Build and check a label map from parsed JSON; ``source`` names it in errors."""
        unknown_keys = sorted(set(data) - _KEYS)
        if unknown_keys:
            raise ConfigError(
                f"{source}: unknown key(s) {', '.join(unknown_keys)}; known: {', '.join(sorted(_KEYS))}"
            )
        labels: dict[str, tuple[str, ...]] = {}
        names: dict[str, str] = {}
        rules: dict[str, ColumnRule] = {}
        for name, target in dict(data.get("labels", {})).items():
            if isinstance(target, Mapping):
                rules[key(name)] = _column_rule(name, target, source)
                target = target.get("finding", ())
            ids = (target,) if isinstance(target, str) else tuple(target)
            unknown = [t for t in ids if t not in FINDING_IDS]
            if unknown or not ids:
                raise ConfigError(
                    f"{source}: label {name!r} maps to unknown finding(s) {unknown or ids}; use ids "
                    f"from `cxrprobe datasets --json` ({', '.join(FINDING_IDS)})"
                )
            labels[key(name)] = ids
            names[key(name)] = name
        views = {key(k).upper(): v for k, v in dict(data.get("views", {})).items()}
        default_view = data.get("default_view", "OTHER")
        for raw, view in [*views.items(), ("default_view", default_view)]:
            if view not in VIEWS:
                raise ConfigError(f"{source}: view {raw!r} maps to {view!r}; use one of {VIEWS}")
        splits = {key(k): v for k, v in dict(data.get("splits", {})).items()}
        for raw, split in splits.items():
            if split not in SPLITS:
                raise ConfigError(f"{source}: split {raw!r} maps to {split!r}; use one of {SPLITS}")
        unmapped = data.get("unmapped", "error")
        if unmapped not in ("error", "ignore"):
            raise ConfigError(f"{source}: unmapped must be 'error' or 'ignore', got {unmapped!r}")
        return cls(source, labels, views, default_view, splits, unmapped, names, rules)

    @property
    def findings(self) -> list[str]:
        """Canonical findings this map can produce (derived ones included), in vocabulary order."""
        return with_derived(t for ids in self.labels.values() for t in ids)

    def sources_of(self, finding: str) -> list[str]:
        """The source names mapped to ``finding`` (as written in the map); for a derived finding
        the map provides, also those of its parts."""
        direct = {t for ids in self.labels.values() for t in ids}
        parts = DERIVED.get(finding, ())
        wanted = {finding, *parts} if direct.issuperset(parts) and parts else {finding}
        return [self.names[k] for k, ids in self.labels.items() if wanted & set(ids)]


def _column_rule(name: str, rule: Mapping[str, Any], source: str) -> ColumnRule:
    """A column rule from its JSON object; ConfigError naming the column for a bad key or value."""
    where = f"{source}: label {name!r}"
    unknown = sorted(set(rule) - _RULE_KEYS)
    if unknown or "finding" not in rule:
        problem = f"unknown key(s) {', '.join(unknown)}" if unknown else "no 'finding'"
        raise ConfigError(
            f"{where}: {problem}; a column rule has 'finding' (an id or ids) and optionally "
            "'values' and 'threshold'"
        )
    values = rule.get("values")
    if values is not None and not (
        isinstance(values, Mapping) and all(_is_number(v) for v in values.values())
    ):
        raise ConfigError(f"{where}: 'values' must map codes to numbers, got {values!r}")
    threshold = rule.get("threshold")
    if threshold is not None and not (_is_number(threshold) and threshold > 0):
        raise ConfigError(
            f"{where}: 'threshold' must be a number above 0 (grades >= it become 1), got "
            f"{threshold!r}"
        )
    return ColumnRule(None if values is None else dict(values), threshold)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def packaged_label_map(name: str) -> LabelMap:
    """The label map shipped as ``label_maps/NAME.json`` (what an adapter always uses: a file or
    folder called NAME in the current directory is never consulted)."""
    folder = resources.files("cxrprobe.data").joinpath("label_maps")
    packaged = folder.joinpath(f"{name}.json")
    if Path(name).name != name or not packaged.is_file():  # a path is never a packaged name
        known = sorted(
            p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
        )
        raise ConfigError(
            f"no packaged label map named {name!r} (known: {', '.join(known)}); a label map of "
            "your own is a JSON file"
        )
    return _parse(packaged.read_text(encoding="utf-8"), f"label_maps/{name}.json")


def load_label_map(name_or_path: str | Path) -> LabelMap:
    """A label map from a file (a ``.json`` path, or any existing file) or else the packaged map
    of that name; a folder is never a label map."""
    path = Path(name_or_path)
    if path.is_file():
        return _parse(path.read_text(encoding="utf-8"), str(path))
    if path.suffix == ".json":
        raise InputFileError(f"label map {path} is not a file; check the path of the JSON file")
    return packaged_label_map(str(name_or_path))


def _parse(text: str, source: str) -> LabelMap:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{source}: not valid JSON ({exc})") from exc
    return LabelMap.from_dict(data, source)


def merge_labels(values: np.ndarray) -> np.ndarray:
    """Combine label columns (n, k) into one (n,) by the order 1 > -1 > 0 > NaN.

    Examples
    --------
    >>> merge_labels(np.array([[0, 1], [0, -1], [np.nan, 0], [np.nan, np.nan]]))
    array([ 1., -1.,  0., nan], dtype=float32)
    """
    values = np.asarray(values, dtype=np.float32)
    rank = np.select([values == 1, values == -1, values == 0], [3, 2, 1], default=0)
    return _RANK_VALUES[rank.max(axis=1)]


def add_derived(labels: pd.DataFrame) -> pd.DataFrame:
    """``labels`` plus each derived finding (``findings.DERIVED``) whose parts are all columns:
    the merge (1 > -1 > 0 > NaN) of its parts and of its own column when the table gave one.

    Examples
    --------
    >>> add_derived(pd.DataFrame({"nodule": [1.0, 0.0, np.nan], "mass": [0.0, -1.0, np.nan]}))
       nodule_mass  nodule  mass
    0          1.0     1.0   0.0
    1         -1.0     0.0  -1.0
    2          NaN     NaN   NaN
    """
    derived = {
        finding: [c for c in (finding, *parts) if c in labels]
        for finding, parts in DERIVED.items()
        if all(p in labels for p in parts)
    }
    if not derived:
        return labels
    out = labels.copy()
    for finding, columns in derived.items():
        out[finding] = merge_labels(labels[columns].to_numpy(dtype=np.float32))
    return out[in_vocabulary_order(out.columns)]


def _map_distinct(raw: pd.Series, convert: Any) -> pd.Series:
    """``convert`` applied once per distinct value (missing values are passed as None)."""
    table = {v: convert(v) for v in raw.dropna().unique()}
    return pd.Series(
        [convert(None) if v is None or v != v else table[v] for v in raw.to_numpy(dtype=object)],
        index=raw.index,
        dtype=object,
    )


def map_views(raw: pd.Series, label_map: LabelMap) -> pd.Series:
    """Raw view names → PA/AP/LATERAL/OTHER; canonical names pass through, others get the default."""
    canonical = {v: v for v in VIEWS} | dict(label_map.views)
    return _map_distinct(
        raw,
        lambda v: (
            canonical.get(key(v).upper(), label_map.default_view)
            if v is not None
            else label_map.default_view
        ),
    )


def map_splits(raw: pd.Series, label_map: LabelMap, source: str) -> pd.Series:
    """Raw split names → train/val/test (missing stays None); an unknown name raises
    DataFormatError naming its data row in the CSV ``source`` (``raw`` holds its rows in order)."""
    table = _SPLIT_SYNONYMS | dict(label_map.splits)
    mapped = _map_distinct(
        raw, lambda v: None if v is None or not str(v).strip() else table.get(key(v), "?")
    )
    bad = np.flatnonzero((mapped == "?").to_numpy())
    if bad.size:
        raise DataFormatError(
            f"{source}: {data_row(bad[0])}: split {raw.iloc[bad[0]]!r} is not a known split "
            "name; use train/val/test or add it to the map's 'splits'"
        )
    return mapped


def normalize_sex(raw: pd.Series) -> pd.Series:
    """Sex as 'M', 'F' or None (Male/Female/M/F in any case; anything else is unknown)."""
    sexes = {"m": "M", "male": "M", "f": "F", "female": "F"}
    return _map_distinct(raw, lambda v: None if v is None else sexes.get(key(v)))
