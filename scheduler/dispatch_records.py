"""The dispatcher's records: turning the metadata of finished calls into measurements,
request records and each request's simulated makespan and energy (:meth:`flush`).

:class:`_RecordsMixin` is part of :class:`scheduler.dispatch.Dispatcher` (it reads the
dispatcher's finished-request queue, routes and stats recorder); it is its own module
because accounting is its own concept, off the request path.
"""
from __future__ import annotations

from typing import Any, Mapping

from executors.base import MemberError

from .requests import _Route
from .stats import CallRecord, RequestRecord, dag_makespan, request_energy

__all__: list[str] = []


class _RecordsMixin:
    """Record-keeping methods of :class:`~scheduler.dispatch.Dispatcher` (see the module docstring)."""

    def flush(self) -> None:
        """Fetch the meta records of completed requests (in one batch) and record their
        measurements and request records; called by the completion thread when idle and
        before statistics are read."""
        with self._flush_lock:
            backlog, self._backlog = self._backlog, []
            if not backlog:
                return
            # a group call's meta record is one object (a column over its members): fetch
            # each once
            unique = list({ref: None for _, _, metas in backlog for _, ref, _ in metas})
            try:
                columns = dict(zip(unique, self._ray.get(unique, timeout=60)))
            except Exception:  # noqa: BLE001 - a lost meta record only costs a measurement
                columns = {}
                for ref in unique:
                    try:
                        columns[ref] = self._ray.get(ref, timeout=10)
                    except Exception:  # noqa: BLE001
                        pass
            for req, finished, metas in backlog:
                got, complete = {}, True
                for pid, ref, slot in metas:
                    col = columns.get(ref)
                    if col is None or slot >= len(col):
                        complete = False  # a lost record: no makespan for this request
                        continue
                    m = col[slot]  # None: skipped (it left at an exit before this partition)
                    if m is not None and not isinstance(m, MemberError):
                        got[pid] = m
                for pid, v in got.items():
                    m = CallRecord(request=req.rid, attempt=req.attempt, partition=pid,
                                   device=v.device, start=v.start, duration=v.duration,
                                   wall=v.wall, simulated=bool(v.simulated), version=req.version)
                    self.recorder.add_measurement(m)
                    old = self._wall.get(pid)
                    self._wall[pid] = v.wall if old is None else 0.8 * old + 0.2 * v.wall
                    for cb in self.on_measurement:
                        try:
                            cb(m)
                        except Exception:  # noqa: BLE001 - a user hook must not stop the runtime
                            pass
                sim, energy = (self._request_sim(got, self._routes.get(req.version))
                               if complete else (None, None))
                flops = (sum(self.flops.get(pid, 0.0) for pid in got) if self.flops and complete
                         else None)
                self.recorder.add_request(RequestRecord(
                    request=req.rid, submitted=req.submitted, finished=finished,
                    status="completed", attempts=req.attempt + 1, sim_makespan=sim, energy=energy,
                    exit_depth=req.exit_depth, flops=flops, version=req.version))

    def _request_sim(self, metas: Mapping[int, Any], route: "_Route | None" = None
                     ) -> tuple[float | None, float | None]:
        route = route or self._routes[self.version]
        if route.dag is None or not metas or not all(m.simulated for m in metas.values()):
            return None, None
        dur = {pid: m.duration for pid, m in metas.items()}
        dag = route.dag
        if len(metas) < len(route.stages):  # left at an exit: the partitions that ran (and sources)
            dag = dag.subgraph([n for n in dag if n in metas or dag.in_degree(n) == 0])
        mk = dag_makespan(dag, dur, route.transfer)
        busy: dict[str, float] = {}
        for m in metas.values():
            busy[m.device] = busy.get(m.device, 0.0) + m.duration
        return mk, request_energy(busy, mk, self.power)
