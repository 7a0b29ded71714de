"""The version ledger: the bookkeeping that makes a plan switch lossless.

Every request is pinned to the plan version current at its admission and completes exactly
once, on that version (a retry after a device failure re-pins the whole request to the
newest version: one attempt never mixes plans); a version is retired once no request pinned
to it is in flight, so its partitions can be unloaded. The dispatcher
(:class:`scheduler.dispatch.Dispatcher`) keeps a :class:`VersionLedger` when the runtime is
adaptive.

Example:
    >>> led = VersionLedger()
    >>> led.admit("r1"), led.repin("r1"), led.version_of("r1")
    (0, 0, 0)
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Hashable

from .errors import PlanSwitchError

__all__ = ["VersionLedger"]


class VersionLedger:
    """Which plan version each request runs on; exactly-once, single-version completion.

    The dispatcher calls :meth:`admit` when a request enters (pinning it to the current
    version), :meth:`repin` when a failed attempt is retried (the whole request moves to
    the newest version, as a new attempt), and :meth:`complete` / :meth:`fail` when it
    ends. :meth:`publish` makes a new version current; a non-current version whose last
    request ended is *retired* (the ``on_retire`` callbacks run, outside the lock, so its
    partitions can be unloaded).

    Example:
        >>> led = VersionLedger()
        >>> led.admit("r1")
        0
        >>> led.publish(1)
        >>> led.admit("r2"), led.in_flight(0), led.in_flight(1)
        (1, 1, 1)
        >>> led.complete("r1", 0); led.retired
        (0,)
        >>> led.complete("r1", 0)
        Traceback (most recent call last):
        ...
        scheduler.errors.PlanSwitchError: request 'r1' completed twice (first on v0, again on v0)
    """

    def __init__(self, version: int = 0, *, history: int | None = None):
        self._lock = threading.Lock()
        self.current = int(version)
        self._pinned: dict[Hashable, int] = {}  # in flight: request -> version
        self._attempts: dict[Hashable, int] = {}
        self._done: dict[Hashable, int] | deque = {}  # finished request -> version
        self._count: dict[int, int] = {self.current: 0}
        self._served: dict[int, int] = {}
        self._retired: list[int] = []
        self._failed = 0
        self._repins = 0
        self.on_retire: list[Callable[[int], None]] = []

    @property
    def retired(self) -> tuple[int, ...]:
        """Versions retired so far, in order."""
        with self._lock:
            return tuple(self._retired)

    def publish(self, version: int) -> None:
        """Make ``version`` current (it must be newer)."""
        retire = []
        with self._lock:
            if version <= self.current:
                raise PlanSwitchError(f"plan version {version} is not newer than the current v{self.current}")
            old = self.current
            self.current = int(version)
            self._count.setdefault(self.current, 0)
            if self._count.get(old, 0) == 0:
                retire.append(self._retire(old))
        self._run_retire(retire)

    def admit(self, request: Hashable) -> int:
        """Pin a new request to the current version; returns it."""
        with self._lock:
            if request in self._pinned or request in self._done:
                raise PlanSwitchError(f"request {request!r} was admitted twice")
            v = self.current
            self._pinned[request] = v
            self._attempts[request] = 1
            self._count[v] = self._count.get(v, 0) + 1
            return v

    def version_of(self, request: Hashable) -> int:
        """The version an in-flight request is pinned to."""
        with self._lock:
            try:
                return self._pinned[request]
            except KeyError:
                raise PlanSwitchError(f"request {request!r} is not in flight") from None

    def repin(self, request: Hashable) -> int:
        """A failed attempt of ``request`` is retried: pin it to the current version."""
        retire = []
        with self._lock:
            if request not in self._pinned:
                raise PlanSwitchError(f"request {request!r} is not in flight; cannot retry it")
            old = self._pinned[request]
            new = self.current
            self._attempts[request] += 1
            self._repins += 1
            if new != old:
                self._pinned[request] = new
                self._count[new] = self._count.get(new, 0) + 1
                self._count[old] -= 1
                if self._count[old] == 0 and old != self.current:
                    retire.append(self._retire(old))
        self._run_retire(retire)
        return new

    def complete(self, request: Hashable, version: int) -> None:
        """``request`` produced its answer, computed entirely on plan ``version``."""
        self._end(request, version, ok=True)

    def fail(self, request: Hashable) -> None:
        """``request`` ended without an answer (error, timeout, cancel)."""
        self._end(request, None, ok=False)

    def _end(self, request: Hashable, version: int | None, ok: bool) -> None:
        retire = []
        with self._lock:
            if request in self._done:
                raise PlanSwitchError(f"request {request!r} completed twice (first on "
                                      f"v{self._done[request]}, again on v{version})")
            if request not in self._pinned:
                raise PlanSwitchError(f"request {request!r} completed but was never admitted")
            pinned = self._pinned.pop(request)
            if ok and version != pinned:
                self._pinned[request] = pinned
                raise PlanSwitchError(f"request {request!r} answered by plan v{version} but pinned to "
                                      f"v{pinned}: plans must not mix within a request")
            self._done[request] = pinned
            if ok:
                self._served[pinned] = self._served.get(pinned, 0) + 1
            else:
                self._failed += 1
            self._count[pinned] -= 1
            if self._count[pinned] == 0 and pinned != self.current:
                retire.append(self._retire(pinned))
        self._run_retire(retire)

    def _retire(self, version: int) -> int:
        self._retired.append(version)
        return version

    def _run_retire(self, versions: list[int]) -> None:
        for v in versions:
            for cb in list(self.on_retire):
                cb(v)

    def in_flight(self, version: int | None = None) -> int:
        """Requests in flight on ``version`` (None: all)."""
        with self._lock:
            if version is None:
                return len(self._pinned)
            return self._count.get(version, 0)

    def finished(self) -> dict[Hashable, int]:
        """Finished request -> the version it was pinned to at the end."""
        with self._lock:
            return dict(self._done)

    def summary(self) -> dict[str, Any]:
        """Counts: admitted, completed per version, failed, in flight, retries re-pinned."""
        with self._lock:
            return {"current": self.current, "in_flight": len(self._pinned),
                    "finished": len(self._done), "failed": self._failed,
                    "served": dict(self._served), "retired": list(self._retired),
                    "attempts": self._repins}
