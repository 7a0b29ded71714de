"""The dispatcher's plan versions: add, switch, retire and reroute, so that an adaptive
runtime changes plans without losing or duplicating a request (requests in flight finish on
the version they were admitted to).

:class:`_VersionsMixin` is part of :class:`scheduler.dispatch.Dispatcher` (it uses the
dispatcher's routes and requests); it is its own module because versioning is its own concept.
"""
from __future__ import annotations

from typing import Callable, Hashable, Mapping, Sequence

from .errors import PlanSwitchError
from .requests import Stage, _Request, _Route, _uses

__all__: list[str] = []


class _VersionsMixin:
    """Plan-version methods of :class:`~scheduler.dispatch.Dispatcher` (see the module docstring)."""

    def add_version(self, version: int, stages: Sequence[Stage], *, dag=None,
                    transfer: Callable[[Hashable, Hashable], float] | None = None,
                    call_wall: Mapping[int, float | None] | None = None) -> None:
        """Register the partition calls of plan ``version``, already loaded on the actors
        under partition ids no other live version uses. Requests keep going to the
        current version until :meth:`switch`. ``call_wall`` as in the constructor."""
        stages = tuple(stages)
        with self._lock:
            self._wall.update({pid: float(w) for pid, w in (call_wall or {}).items()
                               if w is not None})
            if version in self._routes:
                raise PlanSwitchError(f"plan version {version} is already registered")
            self._routes[version] = _Route(stages, {s.pid: s for s in stages}, _uses(stages),
                                           dag, transfer)

    def switch(self, version: int) -> None:
        """Make ``version`` current: requests admitted from now on, and retries, run on it;
        requests in flight finish on the version they were admitted to."""
        with self._lock:
            route = self._routes[version]
            self.version = version
            self.stages, self._stage_of, self._uses = route.stages, route.stage_of, route.uses
            self.dag, self.transfer = route.dag, route.transfer
            if self.ledger is not None:
                self.ledger.publish(version)

    def retire_version(self, version: int) -> tuple[Stage, ...]:
        """Mark a drained, non-current version retired; returns its stages (to unload)."""
        with self._lock:
            if version == self.version:
                raise PlanSwitchError(f"plan version {version} is current; switch before retiring it")
            busy = sum(1 for r in self._requests.values() if r.version == version)
            if busy:
                raise PlanSwitchError(f"plan version {version} still has {busy} request(s) in flight")
            route = self._routes.get(version)
            if route is None or route.retired:
                return ()
            route.retired = True
            return route.stages

    def versions(self) -> dict[int, int]:
        """Live (not retired) plan versions -> requests in flight on each."""
        with self._lock:
            out = {v: 0 for v, r in self._routes.items() if not r.retired}
            for r in self._requests.values():
                out[r.version] = out.get(r.version, 0) + 1
            return out

    def _repin(self, req: _Request) -> None:
        """Move a request being retried to the current version (caller holds the lock)."""
        req.version = self.ledger.repin(req.rid) if self.ledger is not None else self.version

    def reroute(self, devices: Sequence[str]) -> int:
        """Restart, on the current version, every request whose attempt has a call on one
        of ``devices`` (e.g. a device that stopped answering): a new attempt of the whole
        request; the old attempt's late results are ignored. Returns how many."""
        bad = set(devices)
        moved = 0
        with self._lock:
            pending = {id(r) for r in self._pending}
            again = []
            for req in list(self._requests.values()):
                route = self._routes.get(req.version)
                if req.state != "running" or route is None or \
                        not any(s.device in bad for s in route.stages):
                    continue
                if req.group is not None:  # issued: abandon its group (all of it is affected)
                    g = req.group
                    self._retire_group(g)
                    req.group = None
                if id(req) not in pending:  # issued, or waiting for a retry: a new attempt
                    req.attempt += 1
                    moved += 1
                self._repin(req)
                again.append(req)
            self._issue(again)  # the issuer and the retrier skip these from now on
        for _ in range(moved):
            self.recorder.add_retry()
        return moved
