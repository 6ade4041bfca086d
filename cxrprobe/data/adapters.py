"""Dataset adapters: one interface, a registry, and the generated finding × dataset table.

An adapter pairs a dataset's reader (``cxrprobe.data.readers``) with its label map; ``build``
reads the tables, checks the result and applies the shared policies (``cxrprobe.data.policies``).

Examples
--------
>>> from cxrprobe.data.adapters import get_adapter
>>> get_adapter("chestxray14").findings[:3]
['no_finding', 'cardiomegaly', 'nodule_mass']
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from cxrprobe.data import readers
from cxrprobe.data.findings import FINDINGS
from cxrprobe.data.labelmap import LabelMap, load_label_map
from cxrprobe.data.manifest import validate_manifest
from cxrprobe.data.policies import Policies, apply_policies
from cxrprobe.errors import ConfigError, InputFileError


@dataclass(frozen=True)
class Adapter:
    """A dataset: its name, a one-line description, its packaged label map and its reader.

    ``read(root, label_map, **options)`` returns the unpoliced manifest; ``official_split`` says
    where the dataset keeps its official split (shown when it is missing).
    """

    name: str
    description: str
    label_map_name: str
    read: Callable[..., pd.DataFrame]
    official_split: str = ""

    @cached_property
    def label_map(self) -> LabelMap:
        """The packaged label map (``label_maps/<label_map_name>.json``)."""
        return load_label_map(self.label_map_name)

    @property
    def findings(self) -> list[str]:
        """Canonical findings the label map can produce, in vocabulary order."""
        return self.label_map.findings

    @property
    def options(self) -> list[str]:
        """Reader-specific keyword options (e.g. ``labels_csv``, ``aggregation``)."""
        return list(inspect.signature(self.read).parameters)[2:]

    def build(self, root: str | os.PathLike, **options: Any) -> pd.DataFrame:
        """Read the dataset under ``root`` and apply the policies; returns a checked manifest.

        ``options`` are the reader's own (``self.options``) plus the ``Policies`` fields
        (``uncertain``, ``views``, ``split``, ``val_frac``, ``test_frac``, ``seed``,
        ``check_files``); anything else raises ConfigError.
        """
        root = Path(root)
        if not root.is_dir():
            raise InputFileError(f"dataset root {root} is not a folder; check --root")
        reader_options = {k: options.pop(k) for k in list(options) if k in self.options}
        policies = Policies.from_options(options, f"dataset {self.name}", self.options)
        raw = self.read(root, self.label_map, **reader_options)
        validate_manifest(raw, f"{self.name} tables in {root}")
        return apply_policies(raw, policies, root, self.official_split)


ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        Adapter(
            "chestxray14",
            "NIH ChestX-ray14: Data_Entry_2017*.csv, 112,120 frontal images, 14 findings",
            "chestxray14",
            readers.read_chestxray14,
            "test_list.txt and train_val_list.txt beside the label table",
        ),
        Adapter(
            "chexpert",
            "Stanford CheXpert: train.csv (+ valid.csv as test), 14 observations with uncertain labels",
            "chexpert",
            readers.read_chexpert,
            "train.csv is train, valid.csv is test",
        ),
        Adapter(
            "mimic",
            "MIMIC-CXR-JPG 2.0.0: chexpert/negbio labels + metadata + split tables",
            "mimic",
            readers.read_mimic,
            "mimic-cxr-2.0.0-split.csv.gz",
        ),
        Adapter(
            "vindr",
            "VinDr-CXR: 3 readers per training image (majority/any), consensus test labels, DICOM",
            "vindr",
            readers.read_vindr,
            "training tables are train, image_labels_test.csv is test",
        ),
        Adapter(
            "padchest",
            "PadChest: report labels parsed from the Labels list, 16-bit PNGs",
            "padchest",
            readers.read_padchest,
            "PadChest has no official split",
        ),
        Adapter(
            "generic",
            "Any CSV plus a JSON column map (private or synthetic sets)",
            "generic",
            readers.read_generic,
            "a 'split' column in the CSV",
        ),
    )
}


def get_adapter(name: str) -> Adapter:
    """The registered adapter called ``name`` (ConfigError listing the known ones otherwise)."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(ADAPTERS)}") from None


def findings_table() -> pd.DataFrame:
    """Finding × dataset: the source names each dataset maps to each canonical finding ('' if none).

    The generic adapter is left out: its findings come from each column map.
    """
    datasets = [a for a in ADAPTERS.values() if a.name != "generic"]
    rows = {
        f.id: {a.name: ", ".join(a.label_map.sources_of(f.id)) for a in datasets} for f in FINDINGS
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def datasets_markdown() -> str:
    """``docs/datasets.md``: the generated finding × dataset table (regenerate with
    ``cxrprobe datasets --markdown > docs/datasets.md``; a test keeps the file in sync)."""
    table = findings_table()
    names = {f.id: f.name for f in FINDINGS}
    lines = [
        "# Datasets and findings",
        "",
        "<!-- Generated by `cxrprobe datasets --markdown`; do not edit by hand. -->",
        "",
        "Each cell names the dataset's own label(s) mapped to the canonical finding (several names",
        "combine by a maximum under 1 > -1 > 0 > missing). The maps are the JSON files in",
        "`cxrprobe/data/label_maps/`; the `generic` adapter takes its names from a column map.",
        "",
        "| finding | id | " + " | ".join(table.columns) + " |",
        "|---|---|" + "---|" * len(table.columns),
    ]
    for finding, row in table.iterrows():
        cells = [c.replace("|", "\\|") for c in row]
        lines.append(f"| {names[finding]} | `{finding}` | " + " | ".join(cells) + " |")
    counts = " | ".join(str(int((table[c] != "").sum())) for c in table.columns)
    lines.append(f"| **findings** | | {counts} |")
    lines += ["", "## Adapters", ""]
    for adapter in ADAPTERS.values():
        options = ", ".join(f"`{o}`" for o in adapter.options)
        lines.append(
            f"- `{adapter.name}`: {adapter.description}. Official split: "
            f"{adapter.official_split}. Options: {options}."
        )
    return "\n".join(lines) + "\n" + _GENERIC_DOC


_GENERIC_DOC = """
## The generic adapter's column map

`cxrprobe manifest generic --root DIR --column-map map.json -o manifest.parquet` reads
`labels.csv` in `DIR` (or `csv` in the map, or `--labels-csv`). Every key is optional; every column
the map names must exist in the CSV.

```json
{
  "csv": "labels.csv",
  "columns": {"image_id": "Image", "path": "File", "patient_id": "MRN", "study_id": "Accession",
              "view": "Projection", "split": "Set", "sex": "Sex", "age": "Age"},
  "findings": {"Effusion": "pleural_effusion", "Mass": "nodule_mass", "Nodule": "nodule_mass"},
  "views": {"Frontal PA": "PA", "Portable": "AP"},
  "splits": {"holdout": "test"},
  "values": {"yes": 1, "no": 0, "maybe": -1}
}
```

Without a map the CSV must already use the manifest's names: `image_id`, `patient_id`, optional
`path` (default: the image id), `study_id`, `view`, `split`, `sex`, `age`, and finding columns
named by canonical id with values 1, 0, -1 or blank.
"""
