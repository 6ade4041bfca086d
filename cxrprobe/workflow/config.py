"""The study plan as data: datasets × initialisations × methods, read from one TOML file.

A study config names where the datasets and weights are and how each stage runs. Each stage's
table sets options of that stage's command by their command-line names (``--batch-size`` →
``batch_size``; a dataset's ``options`` are ``cxrprobe manifest`` options), and every value is
checked at load with the command's own click types, ranges and choices, so the file accepts what
the command line accepts. Every problem is reported at once, before anything runs; what the
built plan would read, and option combinations the commands refuse, are checked next, also
before anything runs (:mod:`cxrprobe.workflow.preflight`). Relative paths are resolved against
the config file's folder. Keys spelled the old way (the library's
names, e.g. ``val_frac``, ``img_size``, ``num_workers``) still work for one release, with a
``DeprecationWarning``. An init's ``pretrain`` table, ``exclude`` and ``comparisons`` are read by
:mod:`cxrprobe.workflow.cells`, which documents them. ``cxrprobe study --template paper`` prints
the whole study as a config to edit. The stages' click commands are given by the caller (the CLI
hands in its own), so this module reads their options without importing the CLI.
"""

from __future__ import annotations

import os
import re
import tomllib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from cxrprobe.errors import ConfigError, InputFileError
from cxrprobe.workflow.cells import (
    Pretrain,
    check_pretraining,
    parse_comparisons,
    parse_exclude,
    parse_pretrain,
)
from cxrprobe.workflow.commands import MODEL_KEYS, Commands, check_value, problem, table_params

METHODS = ("probe", "finetune")
SECTIONS = ("preprocess", "extract", "probe", "finetune", "compare")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = {
    *("out", "seed", "device", "methods", "reference", "datasets", "inits"),
    *("exclude", "comparisons", *SECTIONS),
}
_INIT_KEYS = {"name", "methods", "pretrain", *MODEL_KEYS}


# Old keys (the library's argument names) and the options' names that replace them.
RENAMED: dict[str, dict[str, str]] = {
    "manifest": {"val_frac": "val_fraction", "test_frac": "test_fraction"},
    "extract": {"img_size": "size", "num_workers": "workers"},
    "probe": {"selection": "select", "ks": "k"},
    "finetune": {"num_workers": "workers", "class_weights": "class_weight"},
}
# Old values that change form with the new name: class_weights = true → class_weight = "pos_weight".
_TRANSLATED: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("finetune", "class_weights"): lambda v: (
        ("pos_weight" if v else "none") if isinstance(v, bool) else v
    ),
}


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: its adapter, root folder and manifest policies (``cxrprobe manifest`` options)."""

    name: str
    adapter: str
    root: Path
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InitEntry:
    """One initialisation: a registry ``init`` plus optional weights, architecture and kwargs."""

    name: str
    init: str
    weights: Path | None = None
    arch: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] | None = None  # None: the study's methods
    mean: tuple[float, ...] | None = None  # input normalisation override (default: the model's)
    std: tuple[float, ...] | None = None
    pretrain: Pretrain | None = None  # made inside the study (see cxrprobe.workflow.cells)

    def model_args(self) -> dict[str, Any]:
        """The model options shared by ``extract`` and ``finetune`` (None: not given)."""
        return {
            "init": self.init,
            "weights": self.weights,
            "arch": self.arch,
            "model_kwargs": dict(self.model_kwargs) or None,
            "mean": self.mean,
            "std": self.std,
        }


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: every (dataset, init, method) cell not excluded, pretraining steps, and the
    comparisons (``"reference"``, ``"all"`` or (B, A) init pairs; see
    :mod:`cxrprobe.workflow.cells`). The stage tables hold option values by command-line name
    (see the module docs)."""

    out: Path
    datasets: tuple[DatasetEntry, ...]
    inits: tuple[InitEntry, ...]
    methods: tuple[str, ...] = METHODS
    reference: str = ""
    seed: int = 0
    device: str = "auto"
    preprocess: dict[str, Any] = field(default_factory=dict)
    extract: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    exclude: tuple[tuple[str, str], ...] = ()  # (init, dataset) pairs not run
    comparisons: str | tuple[tuple[str, str], ...] = "reference"

    def runs(self, init: InitEntry, dataset: str) -> bool:
        """Whether ``init`` is evaluated on ``dataset``: not listed in ``exclude``, and not the
        dataset it was pretrained on (unless its pretrain table says ``exclude_dataset = false``)."""
        own = init.pretrain is not None and init.pretrain.exclude_dataset
        return (init.name, dataset) not in self.exclude and not (
            own and init.pretrain.dataset == dataset
        )

    def methods_of(self, init: InitEntry) -> tuple[str, ...]:
        """The methods run for one initialisation (its own list, else the study's)."""
        return tuple(m for m in self.methods if init.methods is None or m in init.methods)

    @property
    def reference_init(self) -> InitEntry:
        """The initialisation every other one is compared against (default: the first)."""
        return next(i for i in self.inits if i.name == (self.reference or self.inits[0].name))

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, for the study's run record."""
        from dataclasses import asdict

        return asdict(self)


def load_study(path: str | os.PathLike, commands: Commands) -> StudyConfig:
    """Read and check a study TOML file against the stages' ``commands``; every problem is
    reported at once."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            f"{path}: study config not found; see README 'The real study' for an example"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return study_from_mapping(raw, base=path.parent, commands=commands, source=str(path))


def study_from_mapping(
    raw: Mapping[str, Any], base: Path, commands: Commands, source: str = "study config"
) -> StudyConfig:
    """Build a ``StudyConfig`` from parsed TOML (or a dict); paths resolve against ``base``, values
    are checked with the stages' ``commands`` (stage name → click command).

    Raises one ConfigError listing every problem (table, key, the value given, what was expected).
    """
    problems: list[str] = []
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    datasets = tuple(
        _dataset(commands, d, base, problems) for d in _tables(raw, "datasets", problems)
    )
    inits = tuple(_init(commands, d, base, problems) for d in _tables(raw, "inits", problems))
    methods = raw.get("methods", METHODS)
    if not _is_subset(methods, METHODS):
        problems.append(f"methods {methods!r} must be a non-empty subset of {list(METHODS)}")
        methods = METHODS
    for kind, entries in (("dataset", datasets), ("init", inits)):
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            problems.append(f"{kind} names must be unique, got {names}")
    reference = raw.get("reference", "")
    init_names, dataset_names = [i.name for i in inits], [d.name for d in datasets]
    if reference and reference not in init_names:
        problems.append(f"reference {reference!r} is not one of the inits {init_names}")
    check_pretraining({i.name: i.pretrain for i in inits}, dataset_names, problems)
    exclude = parse_exclude(raw.get("exclude"), init_names, dataset_names, problems)
    comparisons = parse_comparisons(raw.get("comparisons"), init_names, problems)
    top = {
        key: _checked(commands, "probe", key, raw[key], key, problems)
        for key in ("seed", "device")
        if key in raw
    }
    if not isinstance(raw.get("out", ""), str):
        problems.append(f"out = {raw['out']!r}: expected a folder path (a string)")
    sections = {
        name: _table(commands, name, f"[{name}]", raw.get(name, {}), base, problems)
        for name in SECTIONS
    }
    if "repeats" in sections["probe"] and "train_fraction" not in sections["probe"]:
        problems.append("[probe] repeats needs train_fraction (the label-efficiency curve's)")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source}: {len(problems)} problem(s), nothing was run:\n{listed}")
    return StudyConfig(
        out=_path(raw.get("out", "study_run"), base),
        datasets=datasets,
        inits=inits,
        methods=tuple(methods),
        reference=str(reference),
        seed=top.get("seed", 0),
        device=top.get("device", "auto"),
        exclude=exclude,
        comparisons=comparisons,
        **sections,
    )


def _is_subset(values: Any, allowed: tuple[str, ...]) -> bool:
    return isinstance(values, (list, tuple)) and bool(values) and all(v in allowed for v in values)


def _checked(
    commands: Commands, stage: str, key: str, value: Any, where: str, problems: list[str]
) -> Any:
    """``value`` as ``cxrprobe STAGE`` parses option ``key``; a problem (and the raw value) if not."""
    try:
        return check_value(commands, stage, key, value)
    except (ValueError, click.ClickException) as exc:
        problems.append(f"{where} = {value!r}: {problem(exc)}")
        return value


def _table(
    commands: Commands, stage: str, where: str, value: Any, base: Path, problems: list[str]
) -> dict[str, Any]:
    """One stage's options: old keys renamed (with a warning), each key an option of the stage's
    command, each value checked as the command line would check it; relative paths resolved."""
    if not isinstance(value, Mapping):
        problems.append(f"{where} must be a table, got {value!r}")
        return {}
    allowed = table_params(commands, stage)
    table: dict[str, Any] = {}
    unknown = []
    for key, item in value.items():
        if key in RENAMED.get(stage, {}):
            new = RENAMED[stage][key]
            translate = _TRANSLATED.get((stage, key), lambda v: v)
            warnings.warn(
                f"{where} {key} is deprecated and goes in the next release; use {new}",
                DeprecationWarning,
                stacklevel=4,
            )
            if new in value:
                problems.append(f"{where} sets both {key} and {new}; keep {new} only")
                continue
            key, item = new, translate(item)
        if key not in allowed:
            unknown.append(key)
            continue
        if isinstance(allowed[key].type, click.Path) and isinstance(item, str):
            item = _path(item, base)
        _checked(commands, stage, key, item, f"{where} {key}", problems)
        table[key] = item
    if unknown:
        problems.append(
            f"{where} has unknown option(s) {sorted(unknown)} (no such `cxrprobe {stage}` option); "
            f"allowed: {sorted(allowed)}"
        )
    return table


def _tables(raw: Mapping[str, Any], key: str, problems: list[str]) -> list[Mapping[str, Any]]:
    value = raw.get(key)
    if not value or not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        problems.append(f"needs at least one [[{key}]] table")
        return []
    return value


def _path(value: Any, base: Path) -> Path:
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else (base / path).resolve()


def _checked_name(entry: Mapping[str, Any], kind: str, problems: list[str]) -> str:
    name = str(entry.get("name", ""))
    if not _NAME.match(name):
        problems.append(
            f"[[{kind}]] name {name!r} must be letters, digits, '.', '_' or '-' (it names folders)"
        )
    return name


def _dataset(
    commands: Commands, entry: Mapping[str, Any], base: Path, problems: list[str]
) -> DatasetEntry:
    from cxrprobe.data.adapters import ADAPTERS, READER_OPTIONS

    name = _checked_name(entry, "datasets", problems)
    extra = sorted(set(entry) - {"name", "adapter", "root", "options"})
    if extra:
        problems.append(
            f"dataset {name!r}: unknown key(s) {extra}; policies go in its 'options' table"
        )
    adapter = entry.get("adapter", name)
    if adapter not in ADAPTERS:
        problems.append(f"dataset {name!r}: adapter {adapter!r} is not one of {sorted(ADAPTERS)}")
    if not isinstance(entry.get("root"), str):
        problems.append(f"dataset {name!r} needs a root folder (a string)")
    options = _table(
        commands, "manifest", f"dataset {name!r} options", entry.get("options", {}), base, problems
    )
    if adapter in ADAPTERS:
        foreign = sorted(set(options) & set(READER_OPTIONS) - set(ADAPTERS[adapter].options))
        if foreign:
            problems.append(
                f"dataset {name!r} options {foreign} do not apply to the {adapter} adapter "
                f"(its own: {ADAPTERS[adapter].options})"
            )
    return DatasetEntry(name, str(adapter), _path(entry.get("root", "."), base), options)


def _init(
    commands: Commands, entry: Mapping[str, Any], base: Path, problems: list[str]
) -> InitEntry:
    name = _checked_name(entry, "inits", problems)
    extra = sorted(set(entry) - _INIT_KEYS)
    if extra:
        problems.append(f"init {name!r}: unknown key(s) {extra}; allowed: {sorted(_INIT_KEYS)}")
    methods = entry.get("methods")
    if methods is not None and not _is_subset(methods, METHODS):
        problems.append(
            f"init {name!r}: methods {methods!r} must be a non-empty subset of {list(METHODS)}"
        )
        methods = None
    pretrain = parse_pretrain(
        name,
        entry.get("pretrain"),
        problems,
        lambda where, value: _table(commands, "finetune", where, value, base, problems),
    )
    if pretrain is not None and set(entry) & set(MODEL_KEYS):
        problems.append(
            f"init {name!r}: {sorted(set(entry) & set(MODEL_KEYS))} come from its pretraining run "
            "(the model of its pretrain 'from' init); drop them"
        )
    model = {
        "init": entry.get("init", "" if pretrain else name),
        **{k: entry[k] for k in MODEL_KEYS if k in entry and not pretrain},
    }
    checked = {
        k: _checked(commands, "extract", k, v, f"init {name!r} {k}", problems)
        for k, v in model.items()
    }
    weights = model.get("weights")
    kwargs = checked.get("model_kwargs")
    return InitEntry(
        name=name,
        init=str(model["init"]),
        weights=_path(weights, base) if isinstance(weights, str) and weights else None,
        arch=model.get("arch"),
        model_kwargs=kwargs if isinstance(kwargs, dict) else {},
        methods=None if methods is None else tuple(methods),
        mean=_floats(checked.get("mean")),
        std=_floats(checked.get("std")),
        pretrain=pretrain,
    )


def _floats(value: Any) -> tuple[float, ...] | None:
    return tuple(value) if isinstance(value, tuple) else None
