"""A study's steps as command lines of the very click commands the CLI runs.

Each stage of a study is one ``cxrprobe`` command, and a study TOML table sets that command's
options by name: the long flag without its dashes, ``-`` as ``_`` (``--batch-size`` →
``batch_size``). :func:`table_params` lists what a table may set, :func:`check_value` checks one
value as the command line would (click's own types, ranges, choices and checks),
:func:`command_args` writes values as the command's arguments, and :func:`parse_args` reads them
back into the parameters the command's function receives. A step runs from those parameters, so
it runs exactly what its printed command runs. The click commands come from the CLI, which hands
them in (``commands``: stage name → command); the workflow never imports the CLI.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import click

from cxrprobe.errors import ConfigError

Commands = Mapping[str, click.Command]  # stage name → the click command that runs it
MODEL_KEYS = ("init", "weights", "arch", "model_kwargs", "mean", "std")
IMAGE_SOURCE_KEYS = ("images", "manifest", "root", "preset", "aspect", "equalize")
# What the study sets itself in each stage (paths, the initialisation, resuming), not its tables.
PROVIDED: dict[str, frozenset[str]] = {
    "manifest": frozenset({"dataset", "root", "out"}),
    "preprocess": frozenset({"manifest", "root", "out"}),
    "extract": frozenset({*MODEL_KEYS, *IMAGE_SOURCE_KEYS, "out"}),
    "probe": frozenset({"store", "out"}),
    "finetune": frozenset({*MODEL_KEYS, *IMAGE_SOURCE_KEYS, "out", "resume", "overwrite"}),
    "compare": frozenset(
        {"file_a", "file_b", "name_a", "name_b", "align", "validation_a", "validation_b"}
        | {"out", "markdown", "plot", "subgroup_plot", "reliability_plot"}
    ),
}


def command(commands: Commands, stage: str) -> click.Command:
    """The ``cxrprobe`` command that runs ``stage``."""
    try:
        return commands[stage]
    except KeyError:
        raise ConfigError(
            f"no `cxrprobe {stage}` among the commands given ({', '.join(sorted(commands))})"
        ) from None


def key_of(param: click.Parameter) -> str:
    """A parameter's name in a study TOML: its long flag without ``--``, ``-`` as ``_``
    (an argument: its own name)."""
    if not isinstance(param, click.Option):
        return str(param.name)
    flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
    return flag.lstrip("-").replace("-", "_")


def stage_params(commands: Commands, stage: str) -> dict[str, click.Parameter]:
    """Every parameter of the stage's command, by TOML key."""
    return {key_of(p): p for p in command(commands, stage).params}


def table_params(commands: Commands, stage: str) -> dict[str, click.Parameter]:
    """The parameters a study table may set for ``stage`` (those the study does not set itself)."""
    return {k: p for k, p in stage_params(commands, stage).items() if k not in PROVIDED[stage]}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def tokens(param: click.Parameter, value: Any) -> list[str]:
    """The command-line tokens that give ``param`` the value ``value`` (None: none). Raises
    ValueError when the command line cannot say it (e.g. a list for a one-value option)."""
    if value is None:
        return []
    if not isinstance(param, click.Option):
        return [_text(value)]
    flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
    if param.is_flag:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        if value:
            return [flag]
        if param.secondary_opts:
            return [param.secondary_opts[0]]
        if param.default:
            raise ValueError(f"{flag} is on by default and the command line cannot turn it off")
        return []
    if param.multiple or param.nargs != 1:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        if param.multiple:
            return [t for item in value for t in (flag, _text(item))]
        return [flag, *map(_text, value)]
    if isinstance(value, (list, tuple)):
        if not getattr(param.type, "comma_separated", False):  # the CLI's comma-separated lists
            raise ValueError(f"expected one value, not a list: {value!r}")
        return [flag, ",".join(map(_text, value))]
    return [flag, _text(value)]


def check_value(commands: Commands, stage: str, key: str, value: Any) -> Any:
    """``value`` for the stage's option ``key`` as the command line would parse it; raises
    ValueError (or ``click.BadParameter``) naming what was expected."""
    param = stage_params(commands, stage)[key]
    args = tokens(param, value)
    ctx = click.Context(command(commands, stage))
    if isinstance(param, click.Option) and param.is_flag:
        return param.process_value(ctx, value)
    if isinstance(param, click.Option) and param.multiple:
        return param.process_value(ctx, tuple(args[1::2]))
    values = args[1:] if isinstance(param, click.Option) else args
    return param.process_value(ctx, tuple(values) if param.nargs != 1 else values[0])


def problem(exc: Exception) -> str:
    """The message of a failed :func:`check_value`."""
    return exc.message if isinstance(exc, click.ClickException) else str(exc)


def command_args(commands: Commands, stage: str, values: Mapping[str, Any]) -> list[str]:
    """``values`` (by TOML key) as the stage's command-line arguments: its arguments in order,
    then its options in the order of ``values``."""
    params = stage_params(commands, stage)
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise ConfigError(f"`cxrprobe {stage}` has no option(s) {unknown}")
    positional, options = [], []
    for key, param in params.items():
        if key in values:
            try:
                said = tokens(param, values[key])
            except ValueError as exc:
                raise ConfigError(f"`cxrprobe {stage}` {key}: {exc}") from exc
            (options if isinstance(param, click.Option) else positional).append((key, said))
    order = {key: i for i, key in enumerate(values)}
    options.sort(key=lambda item: order[item[0]])
    return [t for _, said in positional + options for t in said]


def command_line(stage: str, args: Sequence[str]) -> str:
    """The shell command of ``args``."""
    return shlex.join(["cxrprobe", stage, *args])


def parse_args(commands: Commands, stage: str, args: Sequence[str]) -> dict[str, Any]:
    """The parameters the stage's command function receives for ``args`` (click parses them)."""
    try:
        ctx = command(commands, stage).make_context(stage, list(args))
    except click.ClickException as exc:
        raise ConfigError(f"{command_line(stage, args)}: {exc.format_message()}") from exc
    return dict(ctx.params)
