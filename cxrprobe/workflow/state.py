"""Which study steps are done, to run, stale or refused, and running them the way make/DVC do.

A finished step leaves a record (``.steps/<step>.json``): the settings it ran with, the content
identity of every input it read and of the output it wrote, and its summary. On the next run
each step is

- **done**: same settings, and every input and its own output as recorded: skipped;
- **to run**: never finished (no record, or its output is missing): run, resuming what the
  command itself can resume;
- **stale**: an input changed since it ran (an upstream step was redone, a file was replaced),
  its output was changed by something else, or a redo was interrupted before it replaced the
  output: redone, replacing its output through the command's own ``--overwrite`` (which
  replaces only a cxrprobe output of the same kind). A redone step changes its output, so every
  step reading it is stale in turn;
- **refused**: its settings changed: nothing runs, and the message names the step, the
  settings and the files to delete (a deleted step is then to run, and its readers stale).

A step's inputs are the files or stores named by its options in :data:`INPUT_OPTIONS`, every
path among its settings that an earlier step of the plan writes (its output, or inside its
``out``), and ``Step.inputs`` (a builder names there what no option names, e.g. a pretraining
run's checkpoint); their content identities come from :mod:`cxrprobe.workflow.identity`. The
dataset root and hub weights are not inputs: a changed raw dataset is not noticed.

A study folder may be moved or copied (scratch to project space, another mount): records hold
absolute paths, so a record is read through the :class:`Move` its own ``output`` implies (the
old folder holding the step's output path becomes the new one), and a recorded path counts as
the same setting or input when it is equal as written or once moved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrprobe.errors import ConfigError, DataFormatError
from cxrprobe.provenance import atomic_write_json, now_utc, to_jsonable
from cxrprobe.workflow.identity import Identity, identity, same
from cxrprobe.workflow.moves import Move, same_setting
from cxrprobe.workflow.steps import Paths, Progress, Step

RECORD_FORMAT = "cxrprobe.step-record"
RECORD_VERSION = 3
# Settings a stage's steps gained at a record version, which older records implied: a study's
# compare step always named its models after its cells, and says so with --name-a/--name-b
# since version 3. Their absence from an older record is no change.
IMPLIED_BEFORE = {3: {"compare": frozenset({"name_a", "name_b"})}}
# Options that name a file or store a step reads (any stage); their content is tracked.
INPUT_OPTIONS = frozenset(
    {
        "manifest",
        "images",
        "store",
        "weights",
        "file_a",
        "file_b",
        "validation_a",
        "validation_b",
        "split_csv",
        "labels_csv",
        "column_map",
        "eval_only",
    }
)
DONE, TO_RUN, STALE, REFUSED = "done", "to run", "stale", "refused"
OnStep = Callable[[Step, str, str], Any] | None  # (step, "skipped" | "running" | "redoing", why)


# ------------------------------------------------------------------------------------- moves
def _recorded(recorded: Mapping[str, Any], path: Path, move: Move) -> Any:
    """The identity recorded for input ``path``, under its present or its pre-move name."""
    return recorded.get(str(path), recorded.get(move.back(str(path))))


def _move(step: Step, saved: Mapping[str, Any] | None) -> Move:
    return Move.between((saved or {}).get("output"), step.output)


# ------------------------------------------------------------------------------------ inputs
def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.fspath(path)))


def written_by(step: Step) -> list[Path]:
    """Where ``step`` writes: its output, and its ``out`` option (a fine-tune's run folder, whose
    checkpoint a later step may read)."""
    out = step.settings.get("out")
    extra = [_absolute(out)] if isinstance(out, (str, os.PathLike)) else []
    return list(dict.fromkeys([_absolute(step.output), *extra]))


def writer_of(path: Path, written: Mapping[Path, str]) -> str | None:
    """The step (key) that writes ``path`` or a folder holding it, if any."""
    for folder in (path, *path.parents):
        if folder in written:
            return written[folder]
    return None


def inputs_of(step: Step, produced: Mapping[Path, str] | None = None) -> list[Path]:
    """The files and stores ``step`` reads: ``step.inputs``, the values of its
    :data:`INPUT_OPTIONS`, and any path among its settings that ``produced`` (where the steps
    before it write, see :func:`written_by`, to their keys) covers."""
    produced = produced or {}
    found = [_absolute(p) for p in step.inputs]
    for key, value in step.settings.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, os.PathLike) or (key in INPUT_OPTIONS and isinstance(item, str)):
                path = _absolute(item)
                if key in INPUT_OPTIONS or writer_of(path, produced) is not None:
                    found.append(path)
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------------------------ states
@dataclass(frozen=True)
class StepState:
    """A step's state (:data:`DONE`, :data:`TO_RUN`, :data:`STALE` or :data:`REFUSED`) and why.

    ``replace``: the step's output is stale and the run replaces it (the command's
    ``--overwrite``)."""

    step: Step
    state: str
    reasons: tuple[str, ...] = ()
    replace: bool = False
    inputs: dict[str, Identity | None] = field(default_factory=dict, repr=False)

    @property
    def why(self) -> str:
        return "; ".join(self.reasons)


def read_record(path: Path) -> dict[str, Any] | None:
    """A step record, or None when there is none."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise DataFormatError(
            f"{path}: damaged step record ({exc}); delete it and the step's output to redo the step"
        ) from exc


def changed_settings(step: Step, saved: Mapping[str, Any] | None) -> list[str]:
    """The settings (option names) that differ from the recorded ones."""
    if saved is None:
        return []
    old, new, move = saved.get("settings", {}), to_jsonable(step.settings), _move(step, saved)
    implied = {
        key
        for version, stages in IMPLIED_BEFORE.items()
        if saved.get("version", 1) < version
        for key in stages.get(step.stage, ())
    }
    return sorted(
        k
        for k in set(old) | set(new)
        if not (k not in old and k in implied)
        and (k not in old or k not in new or not same_setting(old[k], new[k], move))
    )


def assess(step: Step, paths: Paths, inputs: Sequence[Path]) -> StepState:
    """The state of ``step`` now, from its record, its inputs and its output."""
    show = _shower(paths.out)
    saved = read_record(paths.record(step.key))
    if saved is None:
        why = (
            "its output exists without a step record: the command runs again, resuming what it can"
            if step.output.exists()
            else "not run yet"
        )
        return StepState(step, TO_RUN, (why,))
    changed = changed_settings(step, saved)
    if changed:
        return StepState(step, REFUSED, (f"its settings changed ({', '.join(changed)})",))
    redo = saved.get("redo")
    if redo is not None:
        if same(identity(step.output, redo.get("output")), redo.get("output")):
            why = "a redo was interrupted before it replaced the output"
            return StepState(step, STALE, (why,), replace=True)
        return StepState(step, TO_RUN, ("resuming an interrupted redo",))
    if not step.output.exists():
        return StepState(step, TO_RUN, (f"its output {show(step.output)} is missing",))
    if "inputs" not in saved:
        why = "its record was written before cxrprobe recorded the inputs of steps"
        return StepState(step, STALE, (why,), replace=True)
    recorded, now, reasons, move = saved["inputs"], {}, [], _move(step, saved)
    for path in inputs:
        known = _recorded(recorded, path, move)
        now[str(path)] = current = identity(path, known)
        if current is None:
            reasons.append(f"input {show(path)} is missing")
        elif known is None:
            reasons.append(f"{show(path)} is a new input")
        elif not same(current, known):
            reasons.append(f"input {show(path)} changed")
    output = saved.get("output_identity")
    if not reasons and not same(identity(step.output, output), output):
        reasons.append(f"its output {show(step.output)} was changed after the step ran")
    if reasons:
        return StepState(step, STALE, tuple(reasons), replace=True, inputs=now)
    return StepState(step, DONE, inputs=now)


def plan_states(steps: Iterable[Step], out: Path) -> list[StepState]:
    """Every step's state, as a run would find it (for ``--dry-run``): a step reading the output of
    a step that runs first (or is refused) is listed as stale because of it; the run itself
    skips it if that output comes out identical."""
    paths, show, produced, remade, states = Paths(out), _shower(out), {}, {}, []
    for step in steps:
        inputs = inputs_of(step, produced)
        state = assess(step, paths, inputs)
        pending = {show(p): key for p in inputs if (key := writer_of(p, remade)) is not None}
        if pending and state.state in (DONE, STALE):
            upstream = [
                f"input {p} may change: step {key} runs first" for p, key in pending.items()
            ]
            others = [r for r in state.reasons if not any(f"input {p} " in r for p in pending)]
            state = StepState(step, STALE, (*upstream, *others), replace=True)
        for path in written_by(step):
            produced[path] = step.key
            if state.state != DONE:
                remade[path] = step.key
        states.append(state)
    return states


def _shower(out: Path) -> Callable[[Path], str]:
    """Paths inside the study's folder shown relative to it."""
    root = _absolute(out)

    def show(path: Path) -> str:
        path = _absolute(path)
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    return show


def refusal(refused: Sequence[tuple[Step, list[str]]], paths: Paths) -> str:
    """The message refusing steps whose settings changed: what changed and what to delete."""
    lines = [
        f"  step {step.key} already ran with different settings ({', '.join(changed)}): delete "
        f"{step.output} and {paths.record(step.key)}"
        for step, changed in refused
    ]
    return "\n".join(
        [
            f"{len(refused)} step(s) would change what they already made; to redo them, delete "
            "what each line names (the steps reading their outputs are then redone too), or use "
            "another 'out' folder:",
            *lines,
        ]
    )


# -------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class Outcome:
    """What happened to one step in a run: ``ran``, ``redone`` (was stale) or ``skipped``."""

    key: str
    status: str
    output: Path
    result: dict[str, Any]


def run_plan(
    steps: Iterable[Step],
    out: Path,
    *,
    progress: Progress = None,
    on_step: OnStep = None,
) -> list[Outcome]:
    """Run every step that is not done, in order, redoing stale ones; ``progress(total, desc)``
    makes the bars, ``on_step(step, "skipped" | "running" | "redoing", why)`` reports each step.

    Refuses (``ConfigError``) before running anything when any step's settings changed.
    """
    steps, paths = list(steps), Paths(out)
    refused = [
        (s, c) for s in steps if (c := changed_settings(s, read_record(paths.record(s.key))))
    ]
    if refused:
        raise ConfigError(refusal(refused, paths))
    produced: dict[Path, str] = {}
    outcomes = []
    for step in steps:
        inputs = inputs_of(step, produced)
        produced.update(dict.fromkeys(written_by(step), step.key))
        state = assess(step, paths, inputs)  # after the steps before it ran: their new outputs
        if state.state == DONE:
            saved = read_record(paths.record(step.key)) or {}
            outcomes.append(Outcome(step.key, "skipped", step.output, saved.get("result", {})))
            if on_step:
                on_step(step, "skipped", "")
            continue
        if on_step:
            on_step(step, "redoing" if state.state == STALE else "running", state.why)
        outcomes.append(_run_step(step, state, inputs, paths, progress))
    return outcomes


def _run_step(
    step: Step, state: StepState, inputs: Sequence[Path], paths: Paths, progress: Progress
) -> Outcome:
    """Run one step and write its record; a stale step is marked as being redone first, so an
    interrupted redo is never taken for the old, finished step."""
    record = paths.record(step.key)
    saved = read_record(record)
    known, move = (saved or {}).get("inputs", {}), _move(step, saved)
    read = {
        str(p): state.inputs.get(str(p)) or identity(p, _recorded(known, p, move)) for p in inputs
    }
    if state.replace and saved is not None:
        before = identity(step.output, saved.get("output_identity"))
        atomic_write_json(
            record, {**saved, "redo": {"output": before, "why": state.why, "started": now_utc()}}
        )
    result = _summary(step.run(progress, replace=state.replace))
    atomic_write_json(
        record,
        {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "step": step.key,
            "stage": step.stage,
            "output": step.output,
            "command": step.command,
            "settings": step.settings,
            "inputs": read,
            "output_identity": identity(step.output),
            "result": result,
            "finished": now_utc(),
        },
    )
    return Outcome(step.key, "redone" if state.state == STALE else "ran", step.output, result)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready part of a step's returned summary (long lists cut to their length)."""
    return {
        k: (len(v) if isinstance(v, list) and len(v) > 20 else v)
        for k, v in to_jsonable(result).items()
    }
