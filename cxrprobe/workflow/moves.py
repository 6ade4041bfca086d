"""Reading records made before their folder was moved or copied.

Run and step records hold absolute paths. When a study folder moves (scratch to project space,
another mount), the path a record gives for its own output tells where it was: the parts before
the longest tail the recorded and the present path share are the old and the new folder. Other
recorded paths under the old folder are read as under the new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any


@dataclass(frozen=True)
class Move:
    """The folder ``old`` of a record is now ``new`` (both absolute; equal: nothing moved)."""

    old: PurePath
    new: PurePath

    @classmethod
    def between(cls, recorded_output: str | os.PathLike | None, output: str | os.PathLike) -> Move:
        """The move that takes a record's output path to the step's: the two paths' parts before
        the longest tail they share (``/scratch/a/run/x.json`` -> ``/proj/a/run/x.json`` is
        ``/scratch`` -> ``/proj``)."""
        new = PurePath(os.path.abspath(output))
        if not recorded_output:
            return cls(new, new)
        old = PurePath(recorded_output)
        shared = 0
        for a, b in zip(reversed(old.parts), reversed(new.parts), strict=False):
            if a != b:
                break
            shared += 1
        if shared == 0:
            return cls(new, new)
        return cls(PurePath(*old.parts[:-shared]), PurePath(*new.parts[:-shared]))

    def forward(self, value: str) -> str:
        """``value`` as it reads after the move (unchanged outside the old folder)."""
        return _rebase(value, self.old, self.new)

    def back(self, value: str) -> str:
        """``value`` as a record written before the move would hold it."""
        return _rebase(value, self.new, self.old)


def _rebase(value: str, old: PurePath, new: PurePath) -> str:
    if old == new or not os.path.isabs(value):
        return value
    path = PurePath(value)
    return str(new / path.relative_to(old)) if path.is_relative_to(old) else value


def same_setting(recorded: Any, current: Any, move: Move) -> bool:
    """Equal as recorded, or once the record's paths are moved (see :class:`Move`)."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return recorded.keys() == current.keys() and all(
            same_setting(recorded[k], current[k], move) for k in recorded
        )
    if isinstance(recorded, list) and isinstance(current, list):
        return len(recorded) == len(current) and all(
            same_setting(r, c, move) for r, c in zip(recorded, current, strict=True)
        )
    if isinstance(recorded, str) and isinstance(current, str):
        return recorded == current or move.forward(recorded) == current
    return recorded == current
