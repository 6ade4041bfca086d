"""How values read from files appear in error messages: plain text, never numpy's reprs
(``np.float64(nan)``, ``np.str_('test')``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def shown(value: Any) -> str:
    """``value`` as a message quotes it: ``null`` for None, ``NaN``, ``inf``, a number as
    written (``2``, ``0.25``), a string in quotes.

    Examples
    --------
    >>> shown(np.float64(2.0)), shown(np.float64("nan")), shown(None), shown(np.str_("test"))
    ('2', 'NaN', 'null', "'test'")
    """
    if value is None:
        return "null"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return str(int(value)) if value.is_integer() else repr(value)
    return repr(value)
