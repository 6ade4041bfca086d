"""The study plan as data: datasets × initialisations × methods, read from one TOML file.

A study config names where the datasets and weights are and how each stage runs; every stage's
options are the library's own (``PreprocessConfig``, ``extract_embeddings``, ``ProbeConfig``,
``FinetuneConfig``, ``BootstrapOptions``), so a study runs exactly what the single commands run.
Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError, InputFileError

METHODS = ("probe", "finetune")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TOP_KEYS = {
    "out",
    "seed",
    "device",
    "methods",
    "reference",
    "datasets",
    "inits",
    "preprocess",
    "extract",
    "probe",
    "finetune",
    "compare",
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

    def model_args(self) -> dict[str, Any]:
        """Keyword arguments shared by ``extract_embeddings`` and ``FinetuneConfig``."""
        return {
            "init": self.init,
            "weights": self.weights,
            "arch": self.arch,
            "model_kwargs": dict(self.model_kwargs),
        }


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: every (dataset, init, method) cell plus the comparisons against ``reference``."""

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


def load_study(path: str | os.PathLike) -> StudyConfig:
    """Read and check a study TOML file; every problem is reported at once."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(
            f"{path}: study config not found; see README 'The real study' for an example"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return study_from_mapping(raw, base=path.parent, source=str(path))


def study_from_mapping(
    raw: Mapping[str, Any], base: Path, source: str = "study config"
) -> StudyConfig:
    """Build a ``StudyConfig`` from parsed TOML (or a dict); paths resolve against ``base``."""
    problems: list[str] = []
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    datasets = tuple(_dataset(d, base, problems) for d in _tables(raw, "datasets", problems))
    inits = tuple(_init(d, base, problems) for d in _tables(raw, "inits", problems))
    methods = tuple(raw.get("methods", METHODS))
    bad_methods = [m for m in methods if m not in METHODS]
    if bad_methods or not methods:
        problems.append(f"methods {list(methods)} must be a non-empty subset of {list(METHODS)}")
    for kind, entries in (("dataset", datasets), ("init", inits)):
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            problems.append(f"{kind} names must be unique, got {names}")
    reference = str(raw.get("reference", ""))
    if reference and reference not in {i.name for i in inits}:
        problems.append(
            f"reference {reference!r} is not one of the inits {[i.name for i in inits]}"
        )
    sections = {}
    allowed = section_options()
    for name in ("preprocess", "extract", "probe", "finetune", "compare"):
        value = raw.get(name, {})
        if not isinstance(value, Mapping):
            problems.append(f"[{name}] must be a table")
            value = {}
        unknown = sorted(set(value) - allowed[name])
        if unknown:
            problems.append(
                f"[{name}] has unknown option(s) {unknown}; allowed: {sorted(allowed[name])}"
            )
        sections[name] = dict(value)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return StudyConfig(
        out=_path(raw.get("out", "study_run"), base),
        datasets=datasets,
        inits=inits,
        methods=methods,
        reference=reference,
        seed=int(raw.get("seed", 0)),
        device=str(raw.get("device", "auto")),
        **sections,
    )


def section_options() -> dict[str, set[str]]:
    """The options each stage's table may set: the library's own parameters, less those the
    study itself provides (paths, the initialisation, progress)."""
    import inspect
    from dataclasses import fields

    from cxrprobe.cache.extract import extract_embeddings
    from cxrprobe.data.preprocess import PreprocessConfig
    from cxrprobe.probe.finetune import FinetuneConfig
    from cxrprobe.probe.run import ProbeConfig
    from cxrprobe.stats.report import BootstrapOptions

    model = {"init", "weights", "arch", "model_kwargs"}
    extract = set(inspect.signature(extract_embeddings).parameters)
    return {
        "preprocess": {f.name for f in fields(PreprocessConfig)} | {"preset", "workers"},
        "extract": extract
        - model
        - {"out", "images", "manifest", "root", "preprocess", "progress"},
        "probe": {f.name for f in fields(ProbeConfig)} - {"store", "out"},
        "finetune": {f.name for f in fields(FinetuneConfig)} - model,
        "compare": {f.name for f in fields(BootstrapOptions)},
    }


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


def _dataset(entry: Mapping[str, Any], base: Path, problems: list[str]) -> DatasetEntry:
    name = _checked_name(entry, "datasets", problems)
    extra = sorted(set(entry) - {"name", "adapter", "root", "options"})
    if extra:
        problems.append(
            f"dataset {name!r}: unknown key(s) {extra}; policies go in its 'options' table"
        )
    if "root" not in entry:
        problems.append(f"dataset {name!r} needs a root folder")
    options = dict(entry.get("options", {}))
    for key in ("column_map", "labels_csv"):
        if key in options and isinstance(options[key], str):
            options[key] = _path(options[key], base)
    return DatasetEntry(
        name, str(entry.get("adapter", name)), _path(entry.get("root", "."), base), options
    )


def _init(entry: Mapping[str, Any], base: Path, problems: list[str]) -> InitEntry:
    name = _checked_name(entry, "inits", problems)
    extra = sorted(set(entry) - {"name", "init", "weights", "arch", "model_kwargs", "methods"})
    if extra:
        problems.append(f"init {name!r}: unknown key(s) {extra}")
    methods = entry.get("methods")
    if methods is not None and (not methods or set(methods) - set(METHODS)):
        problems.append(
            f"init {name!r}: methods {methods} must be a non-empty subset of {list(METHODS)}"
        )
    weights = entry.get("weights")
    return InitEntry(
        name=name,
        init=str(entry.get("init", name)),
        weights=_path(weights, base) if weights else None,
        arch=entry.get("arch"),
        model_kwargs=dict(entry.get("model_kwargs", {})),
        methods=None if methods is None else tuple(methods),
    )
