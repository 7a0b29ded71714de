"""Device health: which devices may take work, from the outcomes of their calls and of
recovery probes.

:class:`HealthTracker` keeps one of :data:`HEALTH_STATES` per device: consecutive failures
or timeouts of a device make it ``failed``; a successful recovery probe makes it
``healthy`` again. The :class:`scheduler.replan.ReplanController` re-plans without failed
devices and with recovered ones.

Example:
    >>> h = HealthTracker(["npu", "gpu"], max_failures=1)
    >>> h.failure("gpu", "timeout"), h.snapshot()
    (True, {'npu': 'healthy', 'gpu': 'failed'})
"""
from __future__ import annotations

import threading
from typing import Iterable

from .adaptive_checks import _count
from .errors import AdaptiveError

__all__ = ["HEALTH_STATES", "HealthTracker"]

#: States of a device in :class:`HealthTracker`.
HEALTH_STATES = ("healthy", "suspect", "failed")


class HealthTracker:
    """Per-device health from call outcomes and probes.

    A device is ``healthy`` until a call fails or times out; it is ``suspect`` after fewer
    than ``max_failures`` consecutive failures and ``failed`` at ``max_failures`` (or at
    once through :meth:`mark_failed`, e.g. an actor that died for good). One success of
    a ``suspect`` device makes it ``healthy``; a ``failed`` device comes back only through
    :meth:`recovered` (a successful recovery probe), so a stray late result cannot
    re-admit it.

    Example:
        >>> h = HealthTracker(["npu", "gpu"], max_failures=2)
        >>> h.failure("npu", "timeout"), h.state("npu")
        (False, 'suspect')
        >>> h.failure("npu", "timeout"), h.failed()
        (True, ('npu',))
        >>> h.recovered("npu"), h.state("npu")
        (True, 'healthy')
    """

    def __init__(self, devices: Iterable[str], *, max_failures: int = 3):
        self.max_failures = _count("max_failures", max_failures)
        self._lock = threading.Lock()
        self._state: dict[str, str] = {}
        self._fails: dict[str, int] = {}
        self._reason: dict[str, str] = {}
        for d in devices:
            self._state[d] = "healthy"
            self._fails[d] = 0
        if not self._state:
            raise AdaptiveError("HealthTracker needs at least one device; got none")

    def _check(self, device: str) -> None:
        if device not in self._state:
            from graphs.errors import UnknownNameError

            raise UnknownNameError("device", device, self._state)

    @property
    def devices(self) -> tuple[str, ...]:
        """The tracked devices, in the order given."""
        return tuple(self._state)

    def state(self, device: str) -> str:
        """``"healthy"``, ``"suspect"`` or ``"failed"``."""
        self._check(device)
        return self._state[device]

    def healthy(self, device: str) -> bool:
        """True unless the device is ``failed`` (a suspect device still takes work)."""
        return self.state(device) != "failed"

    def failed(self) -> tuple[str, ...]:
        """The failed devices, in tracking order."""
        with self._lock:
            return tuple(d for d, s in self._state.items() if s == "failed")

    def reason(self, device: str) -> str | None:
        """Why the device last failed or became suspect."""
        self._check(device)
        return self._reason.get(device)

    def success(self, device: str) -> bool:
        """Record a successful call; True if a suspect device became healthy again."""
        self._check(device)
        with self._lock:
            self._fails[device] = 0
            if self._state[device] == "suspect":
                self._state[device] = "healthy"
                return True
            return False

    def failure(self, device: str, reason: str = "") -> bool:
        """Record a failed or timed-out call; True if the device just became ``failed``."""
        self._check(device)
        with self._lock:
            if self._state[device] == "failed":
                return False
            self._fails[device] += 1
            self._reason[device] = reason
            if self._fails[device] >= self.max_failures:
                self._state[device] = "failed"
                return True
            self._state[device] = "suspect"
            return False

    def mark_failed(self, device: str, reason: str = "") -> bool:
        """Mark a device failed at once; True if it was not failed before."""
        self._check(device)
        with self._lock:
            was = self._state[device]
            self._state[device] = "failed"
            self._fails[device] = max(self._fails[device], self.max_failures)
            self._reason[device] = reason
            return was != "failed"

    def recovered(self, device: str) -> bool:
        """A recovery probe succeeded: the device is healthy again; True if it had failed."""
        self._check(device)
        with self._lock:
            was = self._state[device]
            self._state[device] = "healthy"
            self._fails[device] = 0
            return was == "failed"

    def snapshot(self) -> dict[str, str]:
        """device -> state."""
        with self._lock:
            return dict(self._state)
