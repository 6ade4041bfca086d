"""What every command shares: library errors as one-line messages, progress bars, run records."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import click

from cxrprobe.errors import ConfigError, CxrprobeError
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


def record(out_dir: str | os.PathLike, command: str, config: Mapping[str, Any]) -> None:
    """Write ``run.json`` with the resolved config and versions next to a command's outputs."""
    write_run_record(out_dir, f"cxrprobe {command}", config)
