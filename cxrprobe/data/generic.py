"""The generic reader: any CSV described by a JSON column map (private or synthetic sets).

A column map (docs/datasets.md) names the CSV (``csv``), which of its columns hold the manifest
fields (``columns``), its label columns' findings, views and splits (``findings``, ``views``,
``splits``, replacing those of the packaged ``generic`` label map), value codes (``values``) and
columns to leave out (``ignore``). Without a map the CSV already uses the manifest's names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxrprobe.data.findings import FINDING_IDS
from cxrprobe.data.label_columns import labels_from_columns, warn_unmapped_columns
from cxrprobe.data.labelmap import LabelMap, map_splits, map_views, normalize_sex
from cxrprobe.data.tables import assemble, find_table, optional_column, parse_age, read_table
from cxrprobe.errors import ConfigError, DataFormatError, InputFileError

PathLike = str | os.PathLike
_SPEC_KEYS = {"csv", "columns", "findings", "views", "splits", "values", "ignore"}
_GENERIC_COLUMNS = ("image_id", "path", "patient_id", "study_id", "view", "split", "sex", "age")


def _load_column_map(column_map: PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    if column_map is None:
        return {}
    if isinstance(column_map, Mapping):
        spec = dict(column_map)
    else:
        path = Path(column_map)
        if not path.is_file():
            raise InputFileError(f"column map {path} not found; check --column-map")
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: not valid JSON ({exc})") from exc
    unknown = sorted(set(spec) - _SPEC_KEYS) + sorted(
        set(spec.get("columns", {})) - set(_GENERIC_COLUMNS)
    )
    if unknown:
        raise ConfigError(
            f"column map {column_map}: unknown key(s) {', '.join(unknown)}; top-level keys are "
            f"{', '.join(sorted(_SPEC_KEYS))} and 'columns' keys are {', '.join(_GENERIC_COLUMNS)}"
        )
    ignore = spec.get("ignore", [])
    if not (isinstance(ignore, list) and all(isinstance(c, str) for c in ignore)):
        raise ConfigError(f"column map {column_map}: 'ignore' must be a list of column names")
    return spec


def read_generic(
    root: Path,
    label_map: LabelMap,
    labels_csv: PathLike | None = None,
    column_map: PathLike | Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Any CSV (default ``labels.csv`` in root) plus a column map (see docs/datasets.md). Without
    a map the CSV must already use the manifest's names: ``image_id``, ``patient_id``, optional
    ``path`` (default: the image id), ``study_id``, ``view``, ``split``, ``sex``, ``age`` and
    finding ids as columns. Every column the map names must exist; a CSV column that is neither
    named nor ignored is left out with a warning naming the closest known finding."""
    spec = _load_column_map(column_map)
    columns = {name: name for name in _GENERIC_COLUMNS} | dict(spec.get("columns", {}))
    if spec.keys() & {"findings", "views", "splits"}:
        label_map = LabelMap.from_dict(
            {
                "labels": spec.get("findings", {f: f for f in FINDING_IDS}),
                "views": dict(label_map.views) | dict(spec.get("views", {})),
                "splits": spec.get("splits", {}),
                "default_view": label_map.default_view,
            },
            source=f"column map {column_map}",
        )
    path = find_table(root, [spec.get("csv", "labels.csv")], labels_csv)
    named = [columns["image_id"], columns["patient_id"], *spec.get("columns", {}).values()]
    ignore = spec.get("ignore", [])
    table = read_table(path, [*named, *spec.get("findings", {}), *ignore], dtype=str)

    def column(name: str) -> pd.Series:
        return optional_column(table, columns[name])

    label_columns = table.drop(
        columns=[c for c in {*columns.values(), *ignore} if c in table.columns]
    )
    warn_unmapped_columns(label_columns.columns, label_map, str(path))
    has_path = columns["path"] in table.columns
    return assemble(
        labels_from_columns(label_columns, label_map, str(path), spec.get("values")),
        path,
        image_id=table[columns["image_id"]],
        path=table[columns["path"] if has_path else columns["image_id"]],
        patient_id=table[columns["patient_id"]],
        study_id=column("study_id"),
        view=map_views(column("view"), label_map),
        split=map_splits(column("split"), label_map, str(path)),
        sex=normalize_sex(column("sex")),
        age=parse_age(column("age")),
    )
