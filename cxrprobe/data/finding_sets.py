"""Named finding sets (each dataset's label set in the study, as data) and the one resolver of a
finding subset spec (``--findings``).

A named set is a JSON file in ``cxrprobe/data/named_sets/`` (the file stem is its name):

``name``
    the set's name, e.g. ``study-chexpert``.
``dataset``
    the adapter that reads the dataset (``generic`` for a private set read with a column map).
``findings``
    canonical finding ids, in the order the source lists them.
``source_labels``
    the same labels as the source spells them (one per finding).
``source``
    where the list comes from: repository, commit, file, lines, what, paper.
``notes``
    views, label handling and any choice made in mapping the source's names.

Examples
--------
>>> resolve_findings("study-mimic", ["no_finding", "cardiomegaly", "pleural_effusion", "pneumonia",
...                   "atelectasis", "consolidation", "pneumothorax", "fracture"])
('no_finding', 'cardiomegaly', 'consolidation', 'pneumonia', 'atelectasis', 'pleural_effusion', 'pneumothorax')
>>> resolve_findings("fracture, cardiomegaly", ["cardiomegaly", "fracture", "edema"])
('cardiomegaly', 'fracture')
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pandas as pd

from cxrprobe.data.findings import FINDING_IDS, in_vocabulary_order
from cxrprobe.data.manifest import finding_columns
from cxrprobe.errors import ConfigError, DataFormatError

_KEYS = ("name", "dataset", "findings", "source_labels", "source", "notes")
_ALL = "all"


@dataclass(frozen=True)
class FindingSet:
    """One named set of findings and where it comes from (see module docstring)."""

    name: str
    dataset: str
    findings: tuple[str, ...]
    source_labels: tuple[str, ...]
    source: Mapping[str, str]
    notes: str

    @classmethod
    def from_dict(cls, data: Mapping[str, object], where: str) -> FindingSet:
        """Build and check a set from parsed JSON; errors name ``where`` (the file)."""
        keys = set(data)
        if keys != set(_KEYS):
            raise DataFormatError(
                f"{where}: keys {', '.join(sorted(keys))}; a finding set has exactly "
                f"{', '.join(_KEYS)}"
            )
        findings = tuple(data["findings"])  # type: ignore[arg-type]
        labels = tuple(data["source_labels"])  # type: ignore[arg-type]
        unknown = [f for f in findings if f not in FINDING_IDS]
        if unknown or not findings or len(set(findings)) != len(findings):
            raise DataFormatError(
                f"{where}: findings must be distinct canonical ids; unknown or empty: "
                f"{unknown or list(findings)} (see `cxrprobe datasets --json`)"
            )
        if len(labels) != len(findings):
            raise DataFormatError(
                f"{where}: {len(labels)} source_labels for {len(findings)} findings; give one each"
            )
        return cls(
            str(data["name"]),
            str(data["dataset"]),
            findings,
            labels,
            dict(data["source"]),  # type: ignore[call-overload]
            str(data["notes"]),
        )


@cache
def finding_sets() -> dict[str, FindingSet]:
    """Every packaged named set by name, in name order."""
    folder = resources.files("cxrprobe.data").joinpath("named_sets")
    sets = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        where = f"named_sets/{entry.name}"
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{where}: not valid JSON ({exc})") from exc
        found = FindingSet.from_dict(data, where)
        if found.name != entry.name.removesuffix(".json"):
            raise DataFormatError(f"{where}: name {found.name!r} differs from the file name")
        sets[found.name] = found
    return sets


def get_finding_set(name: str) -> FindingSet:
    """The named set ``name`` (ConfigError listing the known sets otherwise)."""
    try:
        return finding_sets()[name]
    except KeyError:
        raise ConfigError(
            f"unknown finding set {name!r}; known: {', '.join(finding_sets())}"
        ) from None


def resolve_findings(
    spec: str | Sequence[str] | None, available: Iterable[str], where: str = "the data"
) -> tuple[str, ...]:
    """The findings a subset spec names, checked against what ``where`` provides.

    ``spec`` is None or ``"all"`` (everything available), or a comma-separated string (or a list)
    of named sets (``study-chexpert``) and finding ids, combined. ``available`` is what the data
    provides (e.g. a manifest's finding columns; other names are ignored). Returns the findings in
    vocabulary order, the manifest's column order. Raises ConfigError naming an unknown entry
    with the known sets and findings, or a wanted finding ``where`` lacks with what it provides.
    """
    provided = in_vocabulary_order(available)
    if spec is None:
        return tuple(provided)
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    tokens = [t for t in tokens if t]
    if not tokens:
        raise ConfigError(
            "--findings is empty; give named sets or finding ids (see `cxrprobe datasets`)"
        )
    sets = finding_sets()
    wanted: dict[str, str] = {}  # finding → the token that asked for it
    unknown = []
    for token in tokens:
        name = token.casefold()
        if name == _ALL:
            wanted.update(dict.fromkeys(provided, token))
        elif name in sets:
            wanted.update({f: token for f in sets[name].findings if f not in wanted})
        elif name in FINDING_IDS:
            wanted.setdefault(name, token)
        else:
            unknown.append(token)
    if unknown:
        raise ConfigError(
            f"--findings: unknown finding or set {', '.join(map(repr, unknown))}"
            f"{_suggestion(unknown[0], [*sets, *FINDING_IDS])}; named sets: {', '.join(sets)}; "
            f"findings: {', '.join(FINDING_IDS)}"
        )
    missing: dict[str, list[str]] = {}
    for finding, token in wanted.items():
        if finding not in provided:
            missing.setdefault(token, []).append(finding)
    if missing:
        lacking = "; ".join(
            ", ".join(fs) + ("" if fs == [token] else f" (in {token})")
            for token, fs in missing.items()
        )
        raise ConfigError(
            f"--findings: {where} does not provide {lacking}; it provides: "
            f"{', '.join(provided) or 'no finding'}"
        )
    return tuple(in_vocabulary_order(wanted))


def _suggestion(token: str, names: list[str]) -> str:
    close = difflib.get_close_matches(token.casefold(), names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def select_findings(
    df: pd.DataFrame, spec: str | Sequence[str] | None, where: str = "the manifest"
) -> pd.DataFrame:
    """``df`` with only the finding columns ``spec`` resolves to (rows and other columns kept)."""
    keep = set(resolve_findings(spec, finding_columns(df), where))
    return df.drop(columns=[c for c in finding_columns(df) if c not in keep])
