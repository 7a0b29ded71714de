"""The :class:`scheduler.Runtime`'s reporting methods: statistics, measurements, request
records, trace events in wall or simulated time, Perfetto traces and Gantt charts; mixed
into the Runtime.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from .errors import RuntimeConfigError
from .stats import CallRecord, RuntimeStats

__all__ = ["RuntimeReporting", "TIME_BASES"]

#: Time bases of :meth:`RuntimeReporting.events`.
TIME_BASES = ("wall", "simulated")


class RuntimeReporting:
    """What ran where and how fast (see :meth:`stats` and :meth:`events`).

    Example:
        >>> from scheduler.runtime import Runtime
        >>> issubclass(Runtime, RuntimeReporting), TIME_BASES
        (True, ('wall', 'simulated'))
    """

    def on_measurement(self, callback: Callable[[CallRecord], None]) -> None:
        """Call ``callback(record)`` with a :class:`~scheduler.stats.CallRecord` for every
        partition call measured from now on (from the runtime's completion thread: keep it
        short)."""
        if not callable(callback):
            raise RuntimeConfigError(f"on_measurement needs a callable, got {type(callback).__name__}")
        self._dispatcher.on_measurement.append(callback)

    # -------------------------------------------------------------- reporting
    def stats(self) -> RuntimeStats:
        """Latency percentiles, throughput, per-device busy time and utilisation (wall and
        simulated), energy per request on simulated devices, retries, requests in flight."""
        if self._dispatcher is not None:
            self._dispatcher.flush()
        s = self.recorder.summary(in_flight=self._dispatcher.in_flight if self._dispatcher else 0)
        if self._adaptive is None:
            return s
        import dataclasses

        ev = tuple(self._adaptive.controller.events())
        return dataclasses.replace(
            s, plan_version=self._adaptive.version,
            replans=sum(e.kind == "deployed" for e in ev),
            failures=sum(e.kind == "failure" for e in ev),
            recoveries=sum(e.kind == "recovery" for e in ev), events=ev)

    def measurements(self) -> list[CallRecord]:
        """The kept partition-call measurements (:class:`~scheduler.stats.CallRecord`, up to
        ``history``), oldest first."""
        if self._dispatcher is not None:
            self._dispatcher.flush()
        return self.recorder.measurements()

    def requests(self) -> list:
        """The kept finished-request records (:class:`scheduler.stats.RequestRecord`)."""
        if self._dispatcher is not None:
            self._dispatcher.flush()
        return self.recorder.requests()

    def reset_stats(self) -> None:
        """Forget the measurements so far (e.g. after a warm-up)."""
        if self._dispatcher is not None:
            self._dispatcher.flush()
        self.recorder.reset()

    @property
    def predicted_makespan(self) -> float:
        """Seconds of one request along the partition DAG by the cost model's predictions."""
        from .stats import dag_makespan

        return dag_makespan(self._sim_dag, self.predicted, self._transfer_time)

    def events(self, time: str = "wall") -> list:
        """Trace events (:class:`scheduler.trace.TraceEvent`) of the recorded partition
        calls, in measured wall time (``"wall"``, seconds since the first call) or in
        simulated time (``"simulated"``: simulated durations; with ``pace`` the wall start
        times are rescaled, without it each device replays its calls back to back in the
        order they ran, each starting when its inputs' partitions have finished)."""
        from .trace import TraceEvent

        if time not in TIME_BASES:
            from graphs.errors import UnknownNameError

            raise UnknownNameError("time base", time, TIME_BASES)
        ms = sorted(self.measurements(), key=lambda m: m.start)
        if not ms:
            return []
        t0 = ms[0].start
        out = []
        if self._adaptive is not None and (time == "wall" or self.pace):
            scale = 1.0 if time == "wall" else 1.0 / self.pace
            for e in self._adaptive.controller.events():
                at = max(0.0, (e.time - t0) * scale)
                out.append(TraceEvent(e.kind, "adaptive", at, at, category="adaptive",
                                      args={"version": e.version, "device": e.device or "",
                                            "detail": e.detail}))
        if time == "wall":
            for m in ms:
                out.append(TraceEvent(f"p{m.partition}", m.device, m.start - t0, m.start - t0 + m.wall,
                                      request=m.request, args={"partition": m.partition,
                                                               "attempt": m.attempt,
                                                               "version": m.version}))
            return out
        if self.pace:
            for m in ms:
                s = (m.start - t0) / self.pace
                out.append(TraceEvent(f"p{m.partition}", m.device, s, s + m.duration,
                                      request=m.request, args={"partition": m.partition}))
            return out
        free: dict[str, float] = {}
        fin: dict[tuple, float] = {}
        for m in ms:
            dep = self._adaptive.deployment(m.version) if self._adaptive is not None else None
            dag, tr = (self._sim_dag, self._transfer) if dep is None else (dep.dag, dep.transfer)
            ready = max((fin.get((m.request, m.attempt, q), 0.0) + tr.get((q, m.partition), 0.0)
                         for q in dag.predecessors(m.partition) if isinstance(q, int)), default=0.0)
            s = max(ready, free.get(m.device, 0.0))
            e = s + m.duration
            free[m.device] = e
            fin[(m.request, m.attempt, m.partition)] = e
            out.append(TraceEvent(f"p{m.partition}", m.device, s, e, request=m.request,
                                  args={"partition": m.partition}))
        return out

    def write_trace(self, path: str | os.PathLike, time: str = "wall") -> dict:
        """Write a Chrome / Perfetto trace of what ran where; returns the JSON document."""
        from .trace import to_chrome_trace

        return to_chrome_trace(self.events(time), path)

    def write_gantt(self, path: str | os.PathLike, time: str = "wall", **kw: Any) -> int:
        """Draw a Gantt chart (PNG) of what ran where; returns the number of bars."""
        from .trace import gantt

        kw.setdefault("title", f"{self.graph.name}: {self.plan.policy} ({time} time)")
        return gantt(self.events(time), path, **kw)

