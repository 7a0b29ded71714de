"""Process-level settings for long-running serving processes (the driver, executor actors).

A process that imports torch and Ray holds a quarter of a million container objects before
it serves anything, and every full (generation 2) collection of Python's cyclic garbage
collector walks all of them: about 0.1-0.2 s here, a stall of every request in flight,
recurring as requests allocate. The objects alive once a runtime is deployed (modules,
weights, framework state) live as long as the process, so :func:`freeze_gc_once` collects
once and then moves them out of the collector's scans (``gc.freeze()``), as serving systems
do after start-up (Ray Serve replicas, vLLM, SGLang). Frozen objects are still freed by
reference counting; only cycles among them are never reclaimed.

Example:
    >>> import gc
    >>> freeze_gc_once(); freeze_gc_once()   # the second call does nothing
    >>> gc.get_freeze_count() > 0
    True
"""
from __future__ import annotations

import gc
import os

__all__ = ["freeze_gc_once"]

_frozen_in: set[int] = set()


def freeze_gc_once() -> None:
    """``gc.collect()`` then ``gc.freeze()``, once per process (see the module docstring).

    Example:
        >>> import gc
        >>> freeze_gc_once()
        >>> frozen = gc.get_freeze_count()
        >>> freeze_gc_once(); gc.get_freeze_count() == frozen  # nothing more is frozen
        True
    """
    pid = os.getpid()
    if pid in _frozen_in:
        return
    _frozen_in.add(pid)
    gc.collect()
    gc.freeze()
