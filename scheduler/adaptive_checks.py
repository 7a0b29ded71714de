"""Argument checks shared by the adaptive loop's pieces (:mod:`scheduler.adaptive`,
:mod:`scheduler.drift`, :mod:`scheduler.health`, :mod:`scheduler.replan`): a finite number
within bounds, an int at least a bound. Both raise :class:`scheduler.errors.AdaptiveError`
with a message that names the option, the valid range and the bad value.

Example:
    >>> _number("threshold", 0.25, low=0.0, low_open=True)
    0.25
    >>> _count("min_samples", 0)
    Traceback (most recent call last):
    ...
    scheduler.errors.AdaptiveError: min_samples must be an int >= 1, got 0
"""
from __future__ import annotations

import math
from typing import Any

from .errors import AdaptiveError

__all__: list[str] = []


def _number(name: str, v: Any, *, low: float | None = None, low_open: bool = False,
            high: float | None = None) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        rng = ("" if low is None else (f"> {low}" if low_open else f">= {low}")) + \
              ("" if high is None else f" and <= {high}")
        raise AdaptiveError(f"{name} must be a finite number {rng.strip()}, got {v!r}")
    return float(v)


def _count(name: str, v: Any, low: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise AdaptiveError(f"{name} must be an int >= {low}, got {v!r}")
    return v
