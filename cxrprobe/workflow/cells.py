"""Which cells a study runs and compares: pretraining steps, exclusions and the comparison list.

A study runs every (dataset, init, method) cell, except:

- **Pretraining.** An ``[[inits]]`` entry with a ``pretrain`` table is made inside the study: a
  fine-tune of the init named by ``from`` on the dataset named by ``dataset`` runs first, and
  its run folder becomes this init (``--init run:RUN_DIR``) on every dataset::

      [[inits]]
      name = "mimic"
      pretrain = { dataset = "mimic", from = "imagenet" }

  Keys: ``dataset`` and ``from`` (required), ``method`` (``"finetune"``, the only one),
  ``options`` (``cxrprobe finetune`` options replacing the study's ``[finetune]`` values for
  this run only) and ``exclude_dataset`` (default true: the init is not evaluated on the
  dataset it was pretrained on). Without ``options`` the pretraining run is the ``from`` init's
  own fine-tune cell on that dataset when the study runs it, so it is not trained twice. An init
  can be pretrained from a pretrained init; a cycle is refused.
- **Exclusions.** ``exclude = [["mimic", "chexpert"], ...]`` lists (init, dataset) pairs not run.
- **Comparisons.** ``comparisons = "reference"`` (the default) compares, per method, every init
  with ``reference`` (default: the first init) as A; ``"all"`` compares every pair of inits once,
  the one listed first as A; a list of pairs ``[["dinov2", "imagenet"], ...]`` reads each pair
  as "B vs A" (the reported difference is B − A). ``reference`` and ``all`` also compare each
  init's fine-tune with its probe. A comparison is made on a dataset only where both cells run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PRETRAIN_METHODS = ("finetune",)
COMPARISON_MODES = ("reference", "all")
_PRETRAIN_KEYS = {"dataset", "from", "method", "options", "exclude_dataset"}
_TABLE = {"dataset": "datasets", "from": "inits"}  # the tables a pretrain key names an entry of


@dataclass(frozen=True)
class Pretrain:
    """How an init is made inside the study: ``method`` of the init ``source`` on ``dataset``."""

    dataset: str
    source: str  # the init it starts from (TOML ``from``)
    method: str = "finetune"
    options: dict[str, Any] = field(default_factory=dict)  # `cxrprobe finetune` options
    exclude_dataset: bool = True


def parse_pretrain(
    name: str,
    value: Any,
    problems: list[str],
    options_table: Callable[[str, Any], dict[str, Any]],
) -> Pretrain | None:
    """The ``pretrain`` table of init ``name`` (None when absent); ``options_table(where, value)``
    checks its ``options`` as a ``[finetune]`` table. Names are checked by :func:`check_pretraining`."""
    if value is None:
        return None
    where = f"init {name!r} pretrain"
    if not isinstance(value, Mapping):
        problems.append(f'{where} must be a table like {{ dataset = "mimic", from = "imagenet" }}')
        return None
    unknown = sorted(set(value) - _PRETRAIN_KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_PRETRAIN_KEYS)}")
    for key in ("dataset", "from"):
        if not isinstance(value.get(key), str):
            problems.append(f'{where} needs {key} = "NAME" (a [[{_TABLE[key]}]] name)')
    method = value.get("method", "finetune")
    if method not in PRETRAIN_METHODS:
        problems.append(f"{where} method = {method!r}: only {list(PRETRAIN_METHODS)} can pretrain")
    exclude = value.get("exclude_dataset", True)
    if not isinstance(exclude, bool):
        problems.append(f"{where} exclude_dataset = {exclude!r}: expected true or false")
    return Pretrain(
        dataset=str(value.get("dataset", "")),
        source=str(value.get("from", "")),
        method=str(method),
        options=options_table(f"{where} options", value.get("options", {})),
        exclude_dataset=exclude is not False,
    )


def check_pretraining(
    pretrains: Mapping[str, Pretrain | None], datasets: Sequence[str], problems: list[str]
) -> None:
    """Every pretraining names a known dataset and init, and no init is pretrained (through any
    chain) from itself."""
    for name, pretrain in pretrains.items():
        if pretrain is None:
            continue
        if pretrain.dataset and pretrain.dataset not in datasets:
            problems.append(
                f"init {name!r} pretrain dataset {pretrain.dataset!r} is not one of the datasets "
                f"{list(datasets)}"
            )
        if pretrain.source and pretrain.source not in pretrains:
            problems.append(
                f"init {name!r} pretrain from {pretrain.source!r} is not one of the inits "
                f"{list(pretrains)}"
            )
    reported: set[str] = set()
    for name in pretrains:
        chain = _chain(name, pretrains)
        if chain[-1] in chain[:-1] and chain[-1] not in reported:
            cycle = chain[chain.index(chain[-1]) :]
            reported.update(cycle)
            steps = ", which is pretrained from ".join(repr(c) for c in cycle)
            problems.append(
                f"pretraining cycle: {steps}; an init cannot be made from itself, so start one "
                "of them from an init without a pretrain table"
            )


def _chain(name: str, pretrains: Mapping[str, Pretrain | None]) -> list[str]:
    """``name``, the init it is pretrained from, and so on, until a plain init or a repeat."""
    chain = [name]
    while (step := pretrains.get(chain[-1])) is not None and step.source in pretrains:
        chain.append(step.source)
        if chain[-1] in chain[:-1]:
            break
    return chain


def pretraining_order(pretrains: Mapping[str, Pretrain | None]) -> list[str]:
    """The inits with a pretraining, each after the init it starts from (the config is checked:
    no cycles)."""
    order: list[str] = []
    for name in pretrains:
        for link in reversed(_chain(name, pretrains)):
            if pretrains[link] is not None and link not in order:
                order.append(link)
    return order


def parse_exclude(
    value: Any, inits: Sequence[str], datasets: Sequence[str], problems: list[str]
) -> tuple[tuple[str, str], ...]:
    """``exclude``: a list of [init, dataset] pairs, each naming a known init and dataset."""
    if value is None:
        return ()
    pairs = _pairs(value)
    if pairs is None:
        problems.append(
            f"exclude = {value!r}: expected a list of [init, dataset] pairs, e.g. "
            '[["mimic", "mimic"]]'
        )
        return ()
    for init, dataset in pairs:
        if init not in inits:
            problems.append(f"exclude [{init!r}, {dataset!r}]: {init!r} is not one of the inits")
        if dataset not in datasets:
            problems.append(
                f"exclude [{init!r}, {dataset!r}]: {dataset!r} is not one of the datasets"
            )
    return pairs


def parse_comparisons(
    value: Any, inits: Sequence[str], problems: list[str]
) -> str | tuple[tuple[str, str], ...]:
    """``comparisons``: ``"reference"``, ``"all"`` or a list of [B, A] init pairs."""
    if value is None:
        return "reference"
    if isinstance(value, str):
        if value not in COMPARISON_MODES:
            problems.append(
                f"comparisons = {value!r}: expected one of {list(COMPARISON_MODES)} or a list of "
                '[B, A] init pairs, e.g. [["dinov2", "imagenet"]]'
            )
            return "reference"
        return value
    pairs = _pairs(value)
    if not pairs:
        problems.append(
            f"comparisons = {value!r}: expected one of {list(COMPARISON_MODES)} or a non-empty "
            'list of [B, A] init pairs, e.g. [["dinov2", "imagenet"]]'
        )
        return "reference"
    for b, a in pairs:
        unknown = [n for n in (b, a) if n not in inits]
        if unknown:
            problems.append(
                f"comparisons [{b!r}, {a!r}]: {unknown} not among the inits {list(inits)}"
            )
        elif a == b:
            problems.append(f"comparisons [{b!r}, {a!r}]: an init compared with itself")
    if len(set(pairs)) != len(pairs):
        problems.append(f"comparisons lists a pair twice: {[list(p) for p in pairs]}")
    return pairs


def _pairs(value: Any) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(n, str) for n in p) for p in value
    ):
        return None
    return tuple((p[0], p[1]) for p in value)


def init_pairs(
    mode: str | Sequence[tuple[str, str]], inits: Sequence[str], reference: str
) -> list[tuple[str, str]]:
    """The (A, B) init pairs a comparison setting asks for, in a fixed order."""
    if mode == "reference":
        return [(reference, b) for b in inits if b != reference]
    if mode == "all":
        return [(a, b) for i, a in enumerate(inits) for b in inits[i + 1 :]]
    return [(a, b) for b, a in mode]
