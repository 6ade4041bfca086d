"""One progress convention for long library work.

Library functions take ``progress``: a factory ``progress(total, desc) -> bar`` whose bar has
``update(n)`` and ``close()`` (a tqdm bar fits; the CLI passes ``cli._common.progress``). ``None``
means silent. Library code opens its bar with :func:`start_bar` once it knows how much work is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


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
    """Show ``text`` beside ``bar`` where it can (tqdm's postfix); other bars ignore it."""
    note = getattr(bar, "set_postfix_str", None)
    if note is not None:
        note(text)
