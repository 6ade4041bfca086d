"""The options several commands share: device, seed and model (with their checks), image source,
label policies, finding subset, leakage and class weights (one meaning in every command); choices
read from the library's registries; list-valued options; and the old spellings of renamed options,
which still work for one release."""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from cxrprobe.devices import DEVICE_HELP, check_device_name
from cxrprobe.errors import ConfigError
from cxrprobe.models import describe_inits


class RegistryChoice(click.Choice):
    """A ``click.Choice`` of the names in a library registry (``"module:ATTRIBUTE"``), read when
    first needed: the registry's module may import numpy or torch, which ``cxrprobe --help`` must
    not, and the names are never copied into the CLI."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.case_sensitive = True

    @functools.cached_property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        module, attribute = self.where.split(":")
        return tuple(getattr(importlib.import_module(module), attribute))


class CommaList(click.ParamType):
    """Comma-separated values (``a,b``) as a tuple of ``item`` values. A list or tuple (from a
    study TOML file) is taken item by item, so the file and the command line give the same tuple."""

    name = "list"
    comma_separated = True  # how the study's command lines say a list (cxrprobe.workflow.commands)

    def __init__(self, item: click.ParamType = click.STRING) -> None:
        self.item = item

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            parts: Sequence[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            parts = value
        else:
            self.fail(f"{value!r} is not a comma-separated list", param, ctx)
        if not parts:
            self.fail(
                f"{value!r} lists nothing; give one value or more, comma-separated", param, ctx
            )
        return tuple(self.item.convert(part, param, ctx) for part in parts)


class RenamingCommand(click.Command):
    """A command that still accepts the old spellings of its renamed options for one release:
    ``renamed`` maps an old token to the new tokens, used instead with a one-line warning."""

    def __init__(
        self, *args: Any, renamed: Mapping[str, Sequence[str]] | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.renamed = dict(renamed or {})

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, renamed_args(args, self.renamed))


def renamed_args(args: Iterable[str], renamed: Mapping[str, Sequence[str]]) -> list[str]:
    """``args`` with every old spelling (``--old`` or ``--old=VALUE``) replaced by the new one,
    each announced on stderr; arguments after ``--`` are left alone."""
    out: list[str] = []
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        old, eq, value = arg.partition("=")
        new = renamed.get(old) if arg.startswith("--") else None
        if new is None or (eq and len(new) != 1):
            out.append(arg)
            continue
        click.echo(
            f"Warning: {old} is deprecated and goes in the next release; use {' '.join(new)}",
            err=True,
        )
        out += [new[0] + eq + value] if eq else list(new)
    return out


def stack_options(*options: Callable) -> Callable:
    """One decorator applying ``options`` in the order they are listed in ``--help``."""

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _device_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_device_name(value)
    except ConfigError:
        raise click.BadParameter(f"{value!r} is not a device; use {DEVICE_HELP}") from None


def device_option(where: str) -> Callable:
    """``--device`` (auto, cpu, cuda, cuda:N; checked without importing torch); ``where`` ends the help."""
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        callback=_device_name,
        help=f"{DEVICE_HELP} ({where}).",
    )


def seed_option(help: str) -> Callable:
    """``--seed``, a non-negative integer (default 0), written into the run record."""
    return click.option(
        "--seed", type=click.IntRange(min=0), default=0, show_default=True, help=help
    )


def alpha_option(help: str) -> Callable:
    """``--alpha``, a significance level strictly between 0 and 1 (default 0.05); anything else
    is a usage error (exit 2)."""
    return click.option(
        "--alpha",
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=0.05,
        show_default=True,
        help=help,
    )


def workers_option(default: int | None, help: str, minimum: int = 0) -> Callable:
    """``--workers``: worker processes (the one spelling every command uses)."""
    return click.option(
        "--workers",
        type=click.IntRange(min=minimum),
        default=default,
        show_default=default is not None,
        help=help,
    )


def _model_kwargs(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any]:
    """``--model-kwargs`` JSON → a dict of timm constructor overrides (empty when not given)."""
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc.msg}); e.g. '{{\"depth\": 2}}'") from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter(
            "must be a JSON object of timm constructor options, e.g. '{\"depth\": 2}'"
        )
    return parsed


def model_options(init_default: str | None = None) -> Callable:
    """``--init`` (required unless ``init_default``), ``--weights``, ``--arch``, ``--model-kwargs``,
    ``--mean``/``--std``."""
    init_kwargs: dict[str, Any] = (
        {"required": True}
        if init_default is None
        else {"default": init_default, "show_default": True}
    )
    return stack_options(
        click.option(
            "--init",
            help="Initialisation, from the registry:\n\n\b\n" + describe_inits(),
            **init_kwargs,
        ),
        click.option(
            "--weights",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Weights file (safetensors, timm state dict, original DINOv2 .pth or a transformers "
            "Dinov2Model such as RAD-DINO); default: the hub's.",
        ),
        click.option(
            "--arch",
            default=None,
            help="timm architecture for --init mimic/random or a checkpoint file.",
        ),
        click.option(
            "--model-kwargs",
            callback=_model_kwargs,
            default=None,
            help="JSON object of timm constructor overrides, e.g. '{\"depth\": 2}'.",
        ),
        click.option(
            "--mean",
            type=CommaList(click.FLOAT),
            default=None,
            help="Input normalisation mean per channel (1 or 3 comma-separated values) replacing "
            "the model config's, for weights trained with other statistics (e.g. RAD-DINO).",
        ),
        click.option(
            "--std",
            type=CommaList(click.FLOAT),
            default=None,
            help="Input normalisation std per channel (1 or 3 values), with --mean.",
        ),
    )


PRESET_CHOICE = RegistryChoice("cxrprobe.data.preprocess:PRESETS")
ASPECT_CHOICE = RegistryChoice("cxrprobe.data.preprocess:ASPECTS")
_CLASS_WEIGHT_CHOICE = RegistryChoice("cxrprobe.probe.linear:CLASS_WEIGHTS")
_FINDINGS_SPEC = (
    "a named set (study-chexpert), finding ids, or both, comma-separated; default all. "
    "`cxrprobe datasets` lists the sets."
)
# The label policies' effect on training (probe, finetune): scoring keeps the manifest's labels.
TRAINING_USE = "in training (masked: out of the loss)"
SCORED_AS_MADE = (
    "Validation and test are scored on the labels as the manifest made them (build it with "
    "--blank negative to score blanks as negatives, as the study does)."
)


def uncertain_option(where: str) -> Callable:
    """``--uncertain``: what uncertain (-1) labels become (one registry, one meaning in every
    command); ``where`` says which labels it changes."""
    return click.option(
        "--uncertain",
        type=RegistryChoice("cxrprobe.data.targets:UNCERTAIN_POLICIES"),
        default="ignore",
        show_default=True,
        help=f"Uncertain (-1) labels {where}: kept masked (ignore), or made 0 or 1.",
    )


def blank_option(where: str, note: str) -> Callable:
    """``--blank``: what not-annotated (blank) labels become; ``where`` says which labels it
    changes and ``note`` how the command scores them."""
    return click.option(
        "--blank",
        type=RegistryChoice("cxrprobe.data.targets:BLANK_POLICIES"),
        default="missing",
        show_default=True,
        help=f"Not-annotated (blank) labels {where}: kept masked (missing), or made 0 "
        f"(negative). {note}",
    )


def findings_option(use: str) -> Callable:
    """``--findings SPEC`` (resolved by :func:`cxrprobe.data.finding_sets.resolve_findings`);
    ``use`` says what the command does with the findings kept."""
    return click.option("--findings", metavar="SPEC", default=None, help=f"{use}: {_FINDINGS_SPEC}")


def allow_leakage_option(recorded_in: str) -> Callable:
    """``--allow-leakage``: accept a patient in two splits; ``recorded_in`` names the record."""
    return click.option(
        "--allow-leakage",
        is_flag=True,
        help="Accept a patient with images in two of the train/val/test splits (refused by "
        f"default); recorded in {recorded_in}.",
    )


def class_weight_option(note: str, **kwargs: Any) -> Callable:
    """``--class-weight`` (none or pos_weight); ``kwargs`` give the command's default."""
    return click.option(
        "--class-weight",
        type=_CLASS_WEIGHT_CHOICE,
        help=f"pos_weight weighs positives by negatives/positives per finding ({note}).",
        **kwargs,
    )


def image_source_options(raw_settings: bool = False) -> Callable:
    """``--images`` or ``--manifest`` (+ ``--root``, ``--preset``; with ``raw_settings`` also
    ``--aspect`` and ``--equalize/--no-equalize``). The library checks them
    (:func:`cxrprobe.cache.source.check_image_source`)."""
    options = [
        click.option(
            "--images",
            type=click.Path(path_type=Path),
            default=None,
            help="Preprocessed image cache (from `cxrprobe preprocess`): the fast path.",
        ),
        click.option(
            "--manifest",
            type=click.Path(path_type=Path),
            default=None,
            help="Manifest (Parquet or CSV) to read raw image files instead of a cache (slower).",
        ),
        click.option(
            "--root",
            type=click.Path(path_type=Path),
            default=None,
            help="Folder the manifest's relative paths start from (with --manifest).",
        ),
        click.option(
            "--preset",
            type=PRESET_CHOICE,
            default=None,
            help="Preprocessing of raw files (with --manifest), as in `cxrprobe preprocess`, at --size "
            "[default: default].",
        ),
    ]
    if raw_settings:
        options += [
            click.option(
                "--aspect",
                type=ASPECT_CHOICE,
                default=None,
                help="Aspect policy for raw files (default: the preset's).",
            ),
            click.option(
                "--equalize/--no-equalize",
                default=None,
                help="Histogram-equalise raw files (default: the preset's).",
            ),
        ]
    return stack_options(*options)
