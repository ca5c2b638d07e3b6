"""Client values quoted in error messages: short, never in full, nor nested deep."""

from __future__ import annotations

import reprlib
from typing import Any

_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = _SHOW.maxlong = 40
_SHOW.maxlevel = 2


def show(value: Any) -> str:
    """A short repr of a client value for error messages (long strings and lists cut)."""
    return _SHOW.repr(value)
