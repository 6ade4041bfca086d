"""Pre-flight checks of a study plan: what would stop a step, found before the first one runs.

A study that stops at its twentieth step has spent hours on the first nineteen. Before a run
starts (and in ``--dry-run``), :func:`plan_problems` goes over every step that is not done:

- every file or folder the config names for it to read (weights, a dataset ``root``, label
  tables, column maps, split tables: its input options, see
  :data:`cxrprobe.workflow.state.INPUT_OPTIONS`) that no earlier step of the plan writes must
  exist, a file as a file and a folder as a folder;
- option combinations its command refuses are refused here, by the command's own checks run
  without the work: the init, weights and arch rules (:func:`cxrprobe.models.resolve_init`; a
  checkpoint ``init`` must exist), a manifest's split fractions (``Policies``) and findings
  (``resolve_findings``), the probe's (``ProbeConfig.check``), the fine-tune's
  (``FinetuneConfig.problems``) and the comparison's (``BootstrapOptions.check``).

Each problem names the step that meets it first (and how many later steps meet it too) and the
study config's table and key (``Step.where``). What only the work itself finds (a label table's
columns, an undecodable image, weights that do not fit the architecture, hub downloads) is still
reported by the step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError, CxrprobeError
from cxrprobe.finetuned import RUN_PREFIX
from cxrprobe.workflow.commands import PROVIDED, Commands, stage_params
from cxrprobe.workflow.state import INPUT_OPTIONS, writer_of, written_by
from cxrprobe.workflow.steps import Step

READ_OPTIONS = INPUT_OPTIONS | {"root"}  # options naming what a step reads (root: raw images)
Problem = tuple[str, str]  # (where in the config, what is wrong and what to do)


def plan_problems(
    steps: Iterable[Step], commands: Commands, done: Collection[str] = ()
) -> list[str]:
    """Every problem that would stop a step of ``steps`` (in plan order), one line each, naming
    the first step that meets it and the config table/key; steps whose key is in ``done`` are
    skipped (a run skips them), though what they wrote counts as there."""
    produced: dict[Path, str] = {}  # where earlier steps write, to their keys
    met: dict[Problem, list[str]] = {}
    for step in steps:
        if step.key not in done:
            found = _missing(step, commands, produced) + _refused(step, produced)
            for problem in found:
                met.setdefault(problem, []).append(step.key)
        produced.update(dict.fromkeys(written_by(step), step.key))
    return [
        f"step {keys[0]}{_later(len(keys) - 1)}: {where}: {what}"
        for (where, what), keys in met.items()
    ]


def check_plan(
    steps: Iterable[Step], commands: Commands, source: str, done: Collection[str] = ()
) -> None:
    """Raise one ConfigError listing every :func:`plan_problems` (``source`` names the config)."""
    problems = plan_problems(steps, commands, done)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(
            f"{source}: {len(problems)} problem(s) to fix before the study can run:\n{listed}"
        )


def _later(n: int) -> str:
    return f" (and {n} later step{'s' if n > 1 else ''})" if n else ""


def _where(step: Step, key: str) -> str:
    """The config place of the step's option ``key`` (see ``Step.where``)."""
    if key in step.where:
        return step.where[key]
    if key == "options":
        return f"[{step.stage}]"
    return f"the plan's {key}" if key in PROVIDED[step.stage] else f"[{step.stage}] {key}"


def _missing(step: Step, commands: Commands, produced: Mapping[Path, str]) -> list[Problem]:
    """The files and folders the config names for ``step`` to read that neither exist nor come
    from an earlier step (the paths the plan sets itself, such as a manifest or store, and the
    files beside them, are its own steps' outputs)."""
    params = stage_params(commands, step.stage)
    named = [
        (key, item)
        for key, value in step.settings.items()
        if key in READ_OPTIONS and (key in step.where or key not in PROVIDED[step.stage])
        for item in (value if isinstance(value, (list, tuple)) else [value])
        if isinstance(item, (str, os.PathLike))
    ]
    problems = []
    for key, item in named:
        path = Path(os.path.abspath(item))
        if writer_of(path, produced) is not None:
            continue
        kind = params[key].type if key in params else None
        folder = key == "root" or not getattr(kind, "file_okay", True)
        file = not folder and not getattr(kind, "dir_okay", True)
        name = "folder" if folder else "file"
        if not path.exists():
            what = f"{name} not found; give the path of an existing {name}"
        elif (folder and not path.is_dir()) or (file and not path.is_file()):
            what = f"not a {name}; give the path of the {name}"
        else:
            continue
        problems.append((f"{_where(step, key)} = {str(item)!r}", what))
    return problems


def _refused(step: Step, produced: Mapping[Path, str]) -> list[Problem]:
    """The option combinations the step's command would refuse, by the command's own checks."""
    check = _CHECKS.get(step.stage)
    if check is None:
        return []
    problems = []
    for key, run in check(step, produced):
        try:
            run()
        except CxrprobeError as exc:
            problems.append((_where(step, key), str(exc)))
    return problems


Check = Callable[[], Any]


def _model_checks(step: Step, produced: Mapping[Path, str]) -> list[tuple[str, Check]]:
    """``resolve_init`` on the step's init, weights and arch, as ``create_model`` runs it (a
    fine-tuning run made by an earlier step of the plan is checked by that step)."""
    from cxrprobe.models import resolve_init

    p = step.settings
    init = str(p["init"])
    run = Path(os.path.abspath(init[len(RUN_PREFIX) :]))
    if init.startswith(RUN_PREFIX) and writer_of(run, produced) is not None:
        return []
    return [("init", lambda: resolve_init(init, p.get("weights"), p.get("arch")))]


def _manifest_checks(step: Step, produced: Mapping[Path, str]) -> list[tuple[str, Check]]:
    """The manifest's policies (``Policies``: choices and split fractions) and, for an adapter
    whose label map fixes its findings, the ``findings`` spec."""
    from cxrprobe.data.adapters import ADAPTERS
    from cxrprobe.data.finding_sets import resolve_findings
    from cxrprobe.data.policies import Policies

    p, adapter = step.params, ADAPTERS.get(step.settings["dataset"])
    given = {f.name: p[f.name] for f in fields(Policies) if p.get(f.name) is not None}
    checks: list[tuple[str, Check]] = [("options", lambda: Policies(**given))]
    if adapter is not None and adapter.name != "generic" and p.get("findings") is not None:
        where = f"the {adapter.name} adapter"
        checks.append(
            ("findings", lambda: resolve_findings(p["findings"], adapter.findings, where))
        )
    return checks


def _probe_checks(step: Step, produced: Mapping[Path, str]) -> list[tuple[str, Check]]:
    from cxrprobe.probe.run import ProbeConfig

    return [("options", lambda: ProbeConfig(**step.params).check())]


def _finetune_checks(step: Step, produced: Mapping[Path, str]) -> list[tuple[str, Check]]:
    from cxrprobe.finetune.recipe import finetune_config

    def options() -> None:
        problems = finetune_config(step.params).problems()
        if problems:
            raise ConfigError("; ".join(problems))

    return [*_model_checks(step, produced), ("options", options)]


def _compare_checks(step: Step, produced: Mapping[Path, str]) -> list[tuple[str, Check]]:
    from cxrprobe.stats.options import BootstrapOptions

    p = step.params
    options = {f.name: p[f.name] for f in fields(BootstrapOptions) if f.name in p}
    return [("options", lambda: BootstrapOptions(**options).check())]


_CHECKS: Mapping[str, Callable[[Step, Mapping[Path, str]], list[tuple[str, Check]]]] = {
    "manifest": _manifest_checks,
    "extract": _model_checks,
    "probe": _probe_checks,
    "finetune": _finetune_checks,
    "compare": _compare_checks,
}
