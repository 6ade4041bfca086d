"""What every command shares: library errors as one-line messages, progress bars, run records,
and the options several commands take (device, seed, model, image source) with their checks."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from cxrprobe.devices import DEVICE_HELP, check_device_name
from cxrprobe.errors import ConfigError, CxrprobeError
from cxrprobe.progress import ProgressFactory
from cxrprobe.provenance import write_run_record


@contextlib.contextmanager
def library_errors() -> Iterator[None]:
    """Turn ``CxrprobeError`` into ``click.ClickException`` (exit 1; ConfigError → exit 2)."""
    try:
        yield
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    except CxrprobeError as exc:
        raise click.ClickException(str(exc)) from exc


def progress(total: int | None, desc: str, unit: str = "img", disable: bool | None = None):
    """A tqdm progress bar on stderr showing rate and ETA (hidden when stderr is not a TTY
    unless ``CXRPROBE_PROGRESS=1``)."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("CXRPROBE_PROGRESS"))
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=disable)


def record(target: str | os.PathLike, command: str, config: Mapping[str, Any]) -> Path:
    """Write the run record (resolved config and versions) next to a command's outputs: into an
    output folder as ``run.json``, or to a ``*.run.json`` path beside a single-file output."""
    return write_run_record(target, f"cxrprobe {command}", config)


def progress_in(unit: str) -> ProgressFactory:
    """The :func:`progress` factory counting ``unit`` (img, step, iter, resample)."""
    return functools.partial(progress, unit=unit)


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
    """``--init`` (required unless ``init_default``), ``--weights``, ``--arch``, ``--model-kwargs``."""
    init_kwargs: dict[str, Any] = (
        {"required": True}
        if init_default is None
        else {"default": init_default, "show_default": True}
    )
    return stack_options(
        click.option(
            "--init",
            help="Initialisation: dinov2, dinov2-reg, imagenet, mimic, random, timm:NAME, or a checkpoint file.",
            **init_kwargs,
        ),
        click.option(
            "--weights",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Weights file (safetensors, timm state dict or original DINOv2 .pth); default: the hub's.",
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
    )


def image_source_options(raw_settings: bool = False) -> Callable:
    """``--images`` or ``--manifest`` (+ ``--root``, ``--preset``; with ``raw_settings`` also
    ``--aspect`` and ``--equalize/--no-equalize``). Check them with :func:`check_image_source`."""
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
            type=click.Choice(["default", "paper"]),
            default=None,
            help="Preprocessing of raw files (with --manifest), as in `cxrprobe preprocess`, at --size "
            "[default: default].",
        ),
    ]
    if raw_settings:
        options += [
            click.option(
                "--aspect",
                type=click.Choice(["stretch", "pad", "crop"]),
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


def check_image_source(images: Any, manifest: Any, **raw_only: Any) -> None:
    """Exactly one of ``--images``/``--manifest``; the raw-file options (``raw_only``, by parameter
    name) only with ``--manifest``. UsageError otherwise."""
    if images is None and manifest is None:
        raise click.UsageError(
            "give either --images CACHE (from `cxrprobe preprocess`) or --manifest M --root DIR"
        )
    if images is not None and manifest is not None:
        raise click.UsageError(
            "--images and --manifest exclude each other: read the cache or raw files, not both"
        )
    given = [_flag(name) for name, value in raw_only.items() if value is not None]
    if given and manifest is None:
        names = [_flag(name) for name in raw_only]
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        raise click.UsageError(
            f"{listed} go with --manifest (raw files), not with --images (given: {', '.join(given)}); "
            "the cache was preprocessed already"
        )


def _flag(name: str) -> str:
    return "--equalize/--no-equalize" if name == "equalize" else "--" + name.replace("_", "-")


def raw_preprocess(
    preset: str | None, size: int, aspect: str | None = None, equalize: bool | None = None
) -> Any:
    """The ``PreprocessConfig`` for raw files: ``preset`` (default 'default') at ``size`` with overrides."""
    from dataclasses import replace

    from cxrprobe.data.preprocess import PRESETS

    overrides = {"size": size, "aspect": aspect, "equalize": equalize}
    return replace(
        PRESETS[preset or "default"], **{k: v for k, v in overrides.items() if v is not None}
    )
