"""Dataset adapters: one interface, a registry, and the generated finding × dataset table.

An adapter pairs a dataset's reader (``cxrprobe.data.readers``, ``cxrprobe.data.generic``) with
its label map; ``build`` reads the tables, checks the result and applies the shared policies
(``cxrprobe.data.policies``).

Examples
--------
>>> from cxrprobe.data.adapters import get_adapter
>>> get_adapter("chestxray14").findings[:3]
['no_finding', 'cardiomegaly', 'nodule_mass']
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from cxrprobe.data import generic, readers
from cxrprobe.data.finding_sets import finding_sets, select_findings
from cxrprobe.data.findings import DERIVED, FINDINGS
from cxrprobe.data.labelmap import LabelMap, packaged_label_map
from cxrprobe.data.manifest import validate_manifest
from cxrprobe.data.policies import LABEL_POLICIES_DOC, SPLITS_DOC, Policies, apply_policies
from cxrprobe.errors import ConfigError, InputFileError

# Options only some adapters read (each adapter lists its own in ``Adapter.options``).
READER_OPTIONS = ("labels_csv", "column_map", "aggregation", "labeler")


@dataclass(frozen=True)
class Adapter:
    """A dataset: its name, a one-line description, its packaged label map and its reader.

    ``read(root, label_map, **options)`` returns the unpoliced manifest; ``official_split`` says
    where the dataset keeps its official split and ``official_test`` where its official test
    images come from (both shown when they are missing).
    """

    name: str
    description: str
    label_map_name: str
    read: Callable[..., pd.DataFrame]
    official_split: str = ""
    official_test: str = ""

    @cached_property
    def label_map(self) -> LabelMap:
        """The packaged label map (``label_maps/<label_map_name>.json``), never a path: a file
        or folder named like the adapter in the current directory does not hide it."""
        return packaged_label_map(self.label_map_name)

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

        ``options`` are the reader's own (``self.options``), ``findings`` (a subset spec for
        ``finding_sets.resolve_findings``: only those finding columns are kept) and the
        ``Policies`` fields (``uncertain``, ``blank``, ``views``, ``split``, ``val_frac``,
        ``test_frac``, ``seed``, ``check_files``); anything else raises ConfigError.
        """
        root = Path(root)
        if not root.is_dir():
            raise InputFileError(f"dataset root {root} is not a folder; check --root")
        findings = options.pop("findings", None)
        reader_options = {k: options.pop(k) for k in list(options) if k in self.options}
        known = [*self.options, "findings"]
        policies = Policies.from_options(options, f"dataset {self.name}", known)
        raw = self.read(root, self.label_map, **reader_options)
        validate_manifest(raw, f"{self.name} tables in {root}")
        raw = select_findings(raw, findings, f"dataset {self.name} (tables in {root})")
        return apply_policies(raw, policies, root, self.official_split, self.official_test)


ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        Adapter(
            "chestxray14",
            "NIH ChestX-ray14: Data_Entry_2017*.csv, 112,120 frontal images, 14 disease labels",
            "chestxray14",
            readers.read_chestxray14,
            "test_list.txt and train_val_list.txt beside the label table",
            "the images test_list.txt lists",
        ),
        Adapter(
            "chexpert",
            "Stanford CheXpert: train.csv (+ valid.csv as test), 14 observations with uncertain labels",
            "chexpert",
            readers.read_chexpert,
            "train.csv is train, valid.csv is test",
            "valid.csv in the root",
        ),
        Adapter(
            "mimic",
            "MIMIC-CXR-JPG 2.0.0: chexpert/negbio labels + metadata + split tables",
            "mimic",
            readers.read_mimic,
            "mimic-cxr-2.0.0-split.csv.gz",
            "the rows of mimic-cxr-2.0.0-split.csv.gz whose split is test",
        ),
        Adapter(
            "vindr",
            "VinDr-CXR: 3 readers per training image (majority/any), consensus test labels, DICOM",
            "vindr",
            readers.read_vindr,
            "training tables are train, image_labels_test.csv is test",
            "image_labels_test.csv in the root or its annotations/ folder",
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
            generic.read_generic,
            "a 'split' column in the CSV",
            "the CSV rows whose split column says test",
        ),
    )
}


def get_adapter(name: str) -> Adapter:
    """The registered adapter called ``name`` (ConfigError listing the known ones otherwise)."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(ADAPTERS)}") from None


def build_manifest(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    options: Mapping[str, Any],
    done: Callable[[], Any] = lambda: None,
) -> tuple[pd.DataFrame, Adapter, dict[str, Any]]:
    """Build and write the manifest of parsed ``cxrprobe manifest`` options (``options``: the
    adapter's keywords, ``encoding`` and ``findings``; None: not given); the command and a study's
    step both run this. ``done()`` is called after building and after writing. Returns the
    manifest, the adapter and the options given, as the adapter took them; the run record goes
    beside the manifest (:func:`cxrprobe.data.manifest.write_manifest`)."""
    from cxrprobe.data.manifest import write_manifest
    from cxrprobe.data.tables import csv_encoding

    adapter = get_adapter(dataset)
    given = {k: v for k, v in options.items() if v is not None}
    encoding = given.pop("encoding", None)
    for name in READER_OPTIONS:
        if name in given and name not in adapter.options:
            raise ConfigError(
                f"--{name.replace('_', '-')} does not apply to {dataset} "
                f"(its own options: {', '.join('--' + o.replace('_', '-') for o in adapter.options)})"
            )
    with csv_encoding(encoding):
        df = adapter.build(root, **given)
    if encoding is not None:
        given["encoding"] = encoding  # recorded with the other options
    done()
    record = {
        "dataset": dataset,
        "root": Path(root).resolve(),
        "out": Path(out).resolve(),
        "options": given,
        "label_map": adapter.label_map.source,
    }
    write_manifest(df, out, command=f"cxrprobe manifest {dataset}", record=record)
    done()
    return df, adapter, given


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
    """``docs/datasets.md``: the generated finding × dataset table, derived findings, named sets
    and adapters (regenerate with ``cxrprobe datasets --markdown > docs/datasets.md``; a test
    keeps the file in sync)."""
    table = findings_table()
    names = {f.id: f.name for f in FINDINGS}
    lines = [
        "# Datasets and findings",
        "",
        "<!-- Generated by `cxrprobe datasets --markdown`; do not edit by hand. -->",
        "",
        "Each cell names the dataset's own label(s) mapped to the canonical finding (several names",
        "combine by a maximum under 1 > -1 > 0 > missing). The maps are the JSON files in",
        "`cxrprobe/data/label_maps/`, which each adapter always loads from the package (a file or",
        "folder named like the adapter in the current directory is never taken for its map); the",
        "`generic` adapter takes its names from a column map. A derived finding's cell names the",
        "labels of its parts.",
        "",
        "| finding | id | " + " | ".join(table.columns) + " |",
        "|---|---|" + "---|" * len(table.columns),
    ]
    for finding, row in table.iterrows():
        cells = [c.replace("|", "\\|") for c in row]
        lines.append(f"| {names[finding]} | `{finding}` | " + " | ".join(cells) + " |")
    counts = " | ".join(str(int((table[c] != "").sum())) for c in table.columns)
    lines.append(f"| **findings** | | {counts} |")
    lines += ["", "## Derived findings", "", _DERIVED_DOC.strip(), ""]
    lines += [
        f"- `{d}` = max({', '.join(f'`{p}`' for p in parts)})" for d, parts in DERIVED.items()
    ]
    lines += ["", "## Named finding sets", "", _SETS_DOC.strip(), ""]
    lines += ["| set | dataset | size | findings | source |", "|---|---|---|---|---|"]
    for fs in finding_sets().values():
        lines.append(
            f"| `{fs.name}` | {fs.dataset} | {len(fs.findings)} | "
            f"{', '.join(fs.findings)} | {_source_link(fs.source)} |"
        )
    lines += [""] + [f"- `{fs.name}`: {fs.notes}" for fs in finding_sets().values()]
    lines += ["", "## Label policies", "", LABEL_POLICIES_DOC.strip()]
    lines += ["", "## Splits and row numbers", "", SPLITS_DOC.strip()]
    lines += ["", "## Adapters", ""]
    for adapter in ADAPTERS.values():
        options = ", ".join(f"`{o}`" for o in adapter.options)
        test = f" Official test images: {adapter.official_test}." if adapter.official_test else ""
        lines.append(
            f"- `{adapter.name}`: {adapter.description}. Official split: "
            f"{adapter.official_split}.{test} Options: {options}."
        )
    return "\n".join(lines) + "\n" + _GENERIC_DOC


def _source_link(source: Mapping[str, str]) -> str:
    """``file`` at ``lines`` as a link to the pinned commit of ``repository``."""
    first, _, last = source["lines"].partition("-")
    anchor = f"#L{first}" + (f"-L{last}" if last else "")
    url = f"{source['repository']}/blob/{source['commit']}/{source['file']}{anchor}"
    repo = source["repository"].rstrip("/").split("/")[-1]
    return f"[{repo} `{source['file']}` L{source['lines']}]({url}) @ {source['commit'][:7]}"


_DERIVED_DOC = """
A dataset that provides every part of a derived finding also provides the derived finding: the
merge of its parts (1 > -1 > 0 > missing), so ChestX-ray14 gives `nodule`, `mass` and
`nodule_mass`, while VinDr-CXR, whose own label merges them ("Nodule/Mass"), gives only
`nodule_mass`. Sided findings (graded per side in bedside sets such as UKA-CXR) derive the
unsided one. PadChest's aortic elongation labels give `aortic_elongation` (the study's PadChest
label) and also `aortic_enlargement` (VinDr-CXR's wider "enlarged, elongated or tortuous aorta"),
so neither meaning is lost.
"""

_SETS_DOC = """
Each dataset's label set in the study, shipped as data in `cxrprobe/data/named_sets/` (one JSON
file per set, with the source's own spellings, where the list comes from, and notes). Pass a set
name, finding ids, or both, comma-separated, to `--findings` (e.g. `cxrprobe manifest chestxray14
... --findings study-chestxray14` keeps only those finding columns, and the run record says so).
An unknown name, or a finding the data does not provide, is refused with the list of what
exists. `cxrprobe datasets` lists the sets.
"""


_GENERIC_DOC = """
## The generic adapter's column map

`cxrprobe manifest generic --root DIR --column-map map.json --out manifest.parquet` reads
`labels.csv` in `DIR` (or `csv` in the map, or `--labels-csv`). Every key is optional; every column
the map names must exist in the CSV.

```json
{
  "csv": "labels.csv",
  "columns": {"image_id": "Image", "path": "File", "patient_id": "MRN", "study_id": "Accession",
              "view": "Projection", "split": "Set", "sex": "Sex", "age": "Age"},
  "findings": {"Effusion": "pleural_effusion", "Mass": "mass", "Nodule": "nodule"},
  "views": {"Frontal PA": "PA", "Portable": "AP"},
  "splits": {"holdout": "test"},
  "values": {"yes": 1, "no": 0, "maybe": -1},
  "ignore": ["Comment"]
}
```

- `columns`: the CSV's names for the manifest's base columns.
- `findings`: CSV column → canonical finding id, a list of ids, or a column rule
  `{"finding": ID, "values": {...}, "threshold": T}`. Several columns mapped to one finding
  combine by a maximum under 1 > -1 > 0 > missing (left and right columns into one finding).
- `values`: text codes → 1, 0 or -1, for every finding column without its own `values`. A column
  rule's `values` replaces this map for that column, so a `healthy` column whose 1 means "healthy"
  is not recoded by a map written for the disease columns.
- `threshold` (per column): the column holds ordinal grades (numbers >= 0 after its `values`);
  grades >= T become 1, lower grades 0, blank stays missing and -1 stays uncertain.
- `ignore`: CSV columns that are neither base nor finding columns. Any other column that the map
  does not name is left out with a warning naming the closest known finding (a misspelt
  `Cardiomegally` is reported, never dropped silently).

A UKA-like bedside table, graded per side from 0 (none) to 4 (severe), with "healthy" 1/0:

```json
{
  "csv": "uka.csv",
  "columns": {"image_id": "Image", "patient_id": "Patient", "split": "Set"},
  "values": {"none": 0, "questionable": 1, "mild": 2, "moderate": 3, "severe": 4},
  "findings": {
    "Cardiomegaly": {"finding": "cardiomegaly", "threshold": 2},
    "Congestion": {"finding": "congestion", "threshold": 2},
    "Effusion left": {"finding": "pleural_effusion_left", "threshold": 2},
    "Effusion right": {"finding": "pleural_effusion_right", "threshold": 2},
    "Infiltrates left": {"finding": "pneumonia_left", "threshold": 2},
    "Infiltrates right": {"finding": "pneumonia_right", "threshold": 2},
    "Atelectasis left": {"finding": "atelectasis_left", "threshold": 2},
    "Atelectasis right": {"finding": "atelectasis_right", "threshold": 2},
    "Healthy": {"finding": "no_finding", "values": {"1": 1, "0": 0}}
  }
}
```

This gives the nine findings of `study-uka` plus the derived `pleural_effusion`, `pneumonia` and
`atelectasis` (either side). To keep only one finding per pair, map both sides to the unsided id
instead (`"Effusion left": {"finding": "pleural_effusion", "threshold": 2}`, and the same for the
right). The threshold is the user's choice: check the resulting prevalence (printed by `cxrprobe
manifest`) against your own table.

Without a map the CSV must already use the manifest's names: `image_id`, `patient_id`, optional
`path` (default: the image id), `study_id`, `view`, `split`, `sex`, `age`, and finding columns
named by canonical id with values 1, 0, -1 or blank.
"""
