"""The dispatcher's recovery: one attempt per failure shared by every request waiting for
it, and failing together the requests of a device that did not come back.

:class:`_RecoveryMixin` is part of :class:`scheduler.dispatch.Dispatcher` (it uses the
dispatcher's state: the retry queue, the recover callback, the requests in flight); it is
its own module because recovery is its own concept, read and changed on its own.
"""
from __future__ import annotations

import queue
import time

from .errors import RequestFailed
from .requests import _Request

__all__: list[str] = []


def _last_line(err: BaseException) -> str:
    """The last non-empty line of an error's text (Ray puts the cause's text last)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


class _RecoveryMixin:
    """Recovery methods of :class:`~scheduler.dispatch.Dispatcher` (see the module docstring)."""

    def _retry_loop(self) -> None:
        """The recovery thread: one recovery at a time, shared by every request waiting
        for it (whatever queued meanwhile joins the same attempt)."""
        while True:
            item = self._retry_queue.get()
            if item is None:
                return
            batch, stop = [item], False
            while True:  # every group that failed meanwhile waits on this one recovery
                try:
                    nxt = self._retry_queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._recover_batch(batch)
            except Exception:  # pragma: no cover - never lose the recovery thread
                self._healthy.set()
            if stop:
                return

    def _recover_batch(self, batch: list) -> None:
        """Recover once for the requests of ``batch`` ((requests, error) items) and re-issue
        them; when recovery gives up on a device, mark it lost and fail every request whose
        route uses it, together (:meth:`_fail_lost`). Requests on a device already lost
        fail at once, without another recovery attempt."""
        reqs = [r for rs, _ in batch for r in rs]
        self._fail_lost()
        with self._lock:
            waiting = [r for r in reqs if r.state == "running" and r.group is None]
        if not waiting:
            self._healthy.set()
            return
        try:
            if self.recover is not None:
                self.recover()
        except BaseException as e:  # noqa: BLE001 - every waiting request gets the error
            devices = self._devices_of(e) or {d for _, err in batch for d in self._devices_of(err)}
            reason = f"{type(e).__name__}: {_last_line(e)}"
            first = batch[0][1]
            with self._lock:
                for d in devices:
                    self._lost[d] = (self.actors.get(d), type(first).__name__, reason)
            self._fail_lost()
            self._healthy.set()
            for r in waiting:  # not on a device known lost: fail with the recovery's error
                self._finish(r.rid, "failed", RequestFailed(
                    f"request {r.rid}: recovery after {type(first).__name__} failed: {reason}", e))
            return
        self._healthy.set()
        with self._lock:
            # skip the finished, and those already restarted by reroute()
            again = [r for r in waiting if r.state == "running" and r.group is None]
            for r in again:
                self._repin(r)
            try:
                self._issue(again)
            except BaseException as e:  # noqa: BLE001
                failed, error = [r.rid for r in again if r.state == "running"], e
            else:
                failed, error = [], None
        for rid in failed:
            self._finish(rid, "failed", RequestFailed(
                f"request {rid}: re-issuing its partition calls failed: {error}", error))

    def _devices_of(self, err: BaseException | None) -> set[str]:
        """Devices whose actor ``err`` (or an error in its cause chain) names."""
        ids: set[str] = set()
        for _ in range(6):
            if err is None:
                break
            aid = getattr(err, "actor_id", None)
            if aid:
                ids.add(aid if isinstance(aid, str) else getattr(aid, "hex", lambda: str(aid))())
            nxt = getattr(err, "cause", None) or err.__cause__ or err.__context__
            if nxt is err:
                break
            err = nxt
        if not ids:
            return set()
        out = set()
        for d, a in dict(self.actors).items():
            aid = getattr(a, "_actor_id", None)
            if aid is not None and aid.hex() in ids:
                out.add(d)
        return out

    def _lost_device(self, req: _Request) -> str | None:
        """The first lost device on the request's route, if any (caller holds the lock): a
        device whose recovery gave up, while the runtime has not replaced its actor."""
        if not self._lost:
            return None
        route = self._routes.get(req.version)
        for st in (route.stages if route is not None else ()):
            lost = self._lost.get(st.device)
            if lost is not None and lost[0] is self.actors.get(st.device):
                return st.device
        return None

    def _fail_lost(self) -> None:
        """Fail, together, every request in flight whose route uses a lost device."""
        doomed = []
        with self._lock:
            if not self._lost:
                return
            for req in list(self._requests.values()):
                dev = None if req.state != "running" else self._lost_device(req)
                if dev is None:
                    continue
                if req.group is not None:
                    self._retire_group(req.group)
                    req.group = None
                doomed.append((req, dev, *self._lost[dev][1:]))
        for req, dev, after, reason in doomed:
            self._finish(req.rid, "failed", RequestFailed(
                f"request {req.rid} failed after {req.attempt + 1} attempt(s): recovery after "
                f"{after} failed: device {dev!r} is lost: its actor did not come back within "
                f"the recovery timeout ({reason})"))
