"""One progress convention for long library work, and the bars the command line shows.

Library functions take ``progress``: a factory ``progress(total, desc) -> bar`` whose bar has
``update(n)`` and ``close()`` (a tqdm bar fits; the CLI passes :func:`tqdm_bar`). ``None`` means
silent. Library code opens its bar with :func:`start_bar` once it knows how much work is left.

:func:`tqdm_bar` redraws in place on a terminal. When stderr is a file or a pipe (SLURM and nohup
logs) it writes one plain line every ``CXRPROBE_PROGRESS_INTERVAL`` seconds (default 30) and one at
the end, instead of carriage-return redraws that pile up in the log; ``CXRPROBE_PROGRESS=0`` hides
the bars.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

LOG_INTERVAL = 30.0  # seconds between bar lines when stderr is not a terminal


class Bar(Protocol):
    """What library code calls on a progress bar."""

    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


ProgressFactory = Callable[[int | None, str], Bar]


class _Silent:
    def update(self, n: int = 1) -> None:
        return None

    def close(self) -> None:
        return None


def start_bar(progress: ProgressFactory | None, total: int | None, desc: str) -> Bar:
    """A bar from ``progress`` (or a silent one when it is None) for ``total`` units of work."""
    return _Silent() if progress is None else progress(total, desc)


def show_note(bar: Bar, text: str) -> None:
    """Show ``text`` beside ``bar`` at its next redraw (tqdm's postfix); other bars ignore it.

    No redraw of its own, so notes never make a log bar write more often than its interval.
    """
    note = getattr(bar, "set_postfix_str", None)
    if note is not None:
        note(text, refresh=False)


class _LogLines:
    """A stream for tqdm that turns its carriage-return redraws into whole lines (log files)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def log_interval() -> float:
    """Seconds between bar lines in a log: ``CXRPROBE_PROGRESS_INTERVAL``, else ``LOG_INTERVAL``."""
    value = os.environ.get("CXRPROBE_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(value)) if value.strip() else LOG_INTERVAL
    except ValueError:
        return LOG_INTERVAL


def tqdm_bar(
    total: int | None,
    desc: str,
    unit: str = "img",
    disable: bool | None = None,
    stream: TextIO | None = None,
) -> Any:
    """A tqdm bar with rate and ETA on ``stream`` (stderr): redrawn in place on a terminal, one
    line every :func:`log_interval` seconds otherwise. Hidden when ``disable`` or
    ``CXRPROBE_PROGRESS=0``."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if disable is None:
        disable = os.environ.get("CXRPROBE_PROGRESS", "").strip().lower() in {"0", "false", "off"}
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        from tqdm.auto import tqdm as auto

        return auto(
            total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=disable, file=stream
        )
    every = log_interval()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        file=_LogLines(stream),
        mininterval=every,
        maxinterval=max(every, 1.0),
        ncols=100,
        ascii=True,
    )
