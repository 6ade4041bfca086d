"""A study's steps: each one ``cxrprobe`` command with its settings, and where each stage writes.

:class:`Step` is what :mod:`cxrprobe.workflow.plan` builds and :mod:`cxrprobe.workflow.state`
runs and records; :class:`Paths` places every stage's output (and every step's record) under
the study's ``out`` folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrprobe.workflow.commands import command_line

Progress = Callable[[int | None, str], Any] | None  # (total, desc) -> a tqdm-like bar
Action = Callable[[dict[str, Any], Progress], dict[str, Any]]  # (parsed params, progress)


@dataclass
class Step:
    """One unit of the study: one command for one dataset (and init), with its output and settings.

    ``settings`` are the values the study gives the command (by option name), ``args`` the
    command line they make and ``params`` what click parses from it, which ``run`` uses.
    ``inputs`` are files the step reads beyond its input options' values (see
    :func:`cxrprobe.workflow.state.inputs_of`): their content is recorded, and the step is redone
    when it changes. ``where`` names the place in the study config that sets each option (by
    key; ``options``: the table of the others, default ``[STAGE]``), for pre-flight messages."""

    key: str
    stage: str
    output: Path
    settings: dict[str, Any]
    args: list[str]
    params: dict[str, Any] = field(repr=False)
    action: Action = field(repr=False)
    inputs: tuple[Path, ...] = ()
    where: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def command(self) -> str:
        """The equivalent single command."""
        return command_line(self.stage, self.args)

    def run(self, progress: Progress, replace: bool = False) -> dict[str, Any]:
        """Run the step's library call on its parsed parameters; returns its summary.
        ``replace``: the old output is stale, so the command's ``--overwrite`` is set (a command
        without one replaces its output files anyway)."""
        params = dict(self.params)
        if replace and "overwrite" in params:
            params["overwrite"] = True
        return self.action(params, progress)


@dataclass(frozen=True)
class Paths:
    """Where each stage writes, under the study's ``out`` folder."""

    out: Path

    def manifest(self, ds: str) -> Path:
        return self.out / ds / "manifest.parquet"

    def images(self, ds: str, size: int) -> Path:
        return self.out / ds / f"images_{size}.zarr"

    def embeddings(self, ds: str, init: str) -> Path:
        return self.out / ds / init / "embeddings.zarr"

    def predictions(self, ds: str, init: str, method: str) -> Path:
        folder = self.out / ds / init / method
        return folder / "predictions.json"

    def curve(self, ds: str, init: str) -> Path:
        """The ``--out`` of an init's label-efficiency curve: its points and ``curve.json`` go in
        the folder ``<init>/curve/``."""
        return self.out / ds / init / "curve.json"

    def pretraining(self, ds: str, init: str) -> Path:
        """The test predictions of the run that makes ``init`` (its run folder is the parent;
        ``_`` cannot start an init name, so no cell shares it)."""
        return self.out / ds / "_pretrain" / init / "predictions.json"

    def comparison(self, ds: str, a: str, b: str) -> Path:
        return self.out / ds / "compare" / f"{b.replace('/', '-')}_vs_{a.replace('/', '-')}.json"

    def record(self, key: str) -> Path:
        return self.out / ".steps" / (key.replace("/", "__") + ".json")
