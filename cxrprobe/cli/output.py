"""What every command does around its library call: library errors as one-line messages, progress
bars on stderr, and the run record written next to its outputs."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from cxrprobe.errors import ConfigError, CxrprobeError
from cxrprobe.progress import ProgressFactory
from cxrprobe.provenance import write_run_record

INTERRUPTED = "run the same command again"
RESUMABLE = "finished shards are kept: run the same command again to resume"


@contextlib.contextmanager
def library_errors(interrupted: str = INTERRUPTED) -> Iterator[None]:
    """Turn ``CxrprobeError`` into ``click.ClickException`` (exit 1; ConfigError → exit 2), a full
    disk or read-only file system into one line naming the file (exit 1), and Ctrl-C into exit
    130 with ``interrupted`` (what is kept and how to go on) on stderr."""
    from cxrprobe.outputs import write_fault

    try:
        yield
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    except CxrprobeError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        reason = write_fault(exc, disk_only=True)
        if reason is None:
            raise
        raise click.ClickException(f"{exc.filename or 'output'}: cannot write ({reason})") from exc
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted (Ctrl-C): {interrupted}.", err=True)
        sys.exit(130)


def progress(total: int | None, desc: str, unit: str = "img", disable: bool | None = None):
    """A progress bar on stderr with rate and ETA: redrawn on a terminal, a line every 30 s in a
    log file (:func:`cxrprobe.progress.tqdm_bar`)."""
    from cxrprobe.progress import tqdm_bar

    return tqdm_bar(total, desc, unit=unit, disable=disable)


def progress_in(unit: str) -> ProgressFactory:
    """The :func:`progress` factory counting ``unit`` (img, step, iter, resample)."""
    return functools.partial(progress, unit=unit)


def record(target: str | os.PathLike, command: str, config: Mapping[str, Any]) -> Path:
    """Write the run record (resolved config and versions) next to a command's outputs: into an
    output folder as ``run.json``, or to a ``*.run.json`` path beside a single-file output.
    Values of the command's path options are recorded as absolute paths."""
    return write_run_record(target, f"cxrprobe {command}", _paths_as_paths(config))


def _paths_as_paths(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the values of the running command's ``click.Path`` options as ``Path``
    (which the run record writes absolute), whether the command passed them as str or Path."""
    ctx = click.get_current_context(silent=True)
    params = [] if ctx is None else ctx.command.params
    names = {param.name for param in params if isinstance(param.type, click.Path)}
    return {
        key: Path(value) if key in names and isinstance(value, str) else value
        for key, value in config.items()
    }
