"""Numbers of bytes as people read them: the one formatting helper the packages share.

:func:`format_bytes` writes a byte count in binary units (``B``, ``KiB``, ``MiB``, ...),
as the command line's tables print memory, and with ``exact=True`` also the exact count
with thousands separators, as error messages give it (so that a reader sees the order of
magnitude at a glance and can still compare the count with a limit they set).

It lives here, in the lowest package, so that :mod:`policies` (memory errors),
:mod:`executors` and :mod:`scheduler` (tables) all format bytes the same way.

Example:
    >>> format_bytes(3 * 2 ** 30), format_bytes(942_538_752, exact=True)
    ('3.00 GiB', '898.88 MiB = 942,538,752 bytes')
"""
from __future__ import annotations

import math

__all__ = ["format_bytes", "BYTE_UNITS"]

#: The binary units :func:`format_bytes` steps through, each 1024 times the one before.
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: float, *, exact: bool = False) -> str:
    """Text of ``n`` bytes: ``"1023 B"``, ``"1.50 KiB"``, ``"898.88 MiB"`` (two decimals
    from KiB up, in binary units).

    With ``exact`` the exact count follows, rounded to whole bytes, with thousands
    separators: ``"898.88 MiB = 942,538,752 bytes"``; below 1 KiB only the count,
    ``"40 bytes"``. The ``=`` form (no parentheses) reads the same inside a message's own
    parentheses. A count that is not finite is written as it is (``"inf bytes"``).

    Example:
        >>> format_bytes(0), format_bytes(1023), format_bytes(1536), format_bytes(-2048)
        ('0 B', '1023 B', '1.50 KiB', '-2.00 KiB')
        >>> format_bytes(40, exact=True), format_bytes(72728.0, exact=True)
        ('40 bytes', '71.02 KiB = 72,728 bytes')
        >>> format_bytes(float("inf"), exact=True)
        'inf bytes'
    """
    v = float(n)
    if not math.isfinite(v):
        return f"{v} bytes" if exact else f"{v} B"
    x, i = v, 0
    while abs(x) >= 1024 and i < len(BYTE_UNITS) - 1:
        x, i = x / 1024, i + 1
    if exact:
        count = f"{round(v):,} bytes"
        return count if i == 0 else f"{x:.2f} {BYTE_UNITS[i]} = {count}"
    return f"{int(x)} B" if i == 0 else f"{x:.2f} {BYTE_UNITS[i]}"
