"""Runtime statistics: what each partition call measured, what each request took, and
the summary :meth:`scheduler.Runtime.stats` returns.

The dispatcher records one :class:`CallRecord` per partition call (from the small meta
record every executor call returns) and one :class:`RequestRecord` per finished request.
:class:`StatsRecorder` keeps the last ``history`` of each in bounded deques (so a long
stream uses bounded memory) plus running counters, and :meth:`StatsRecorder.summary`
turns them into a frozen :class:`RuntimeStats`.

Example:
    >>> rec = StatsRecorder()
    >>> rec.add_request(RequestRecord(request=0, submitted=0.0, finished=0.5, status="completed"))
    >>> rec.add_request(RequestRecord(request=1, submitted=0.5, finished=1.0, status="completed"))
    >>> s = rec.summary()
    >>> s.completed, s.latency_p50, s.throughput
    (2, 0.5, 2.0)
"""
from __future__ import annotations

import math
import threading
import warnings
from collections import deque
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Hashable, Iterable, Mapping

import networkx as nx

#: Terminal states of a request.
STATUSES = ("completed", "failed", "cancelled", "timeout")


@dataclass(frozen=True)
class CallRecord:
    """What one partition call of one request measured (one executor call).

    The dispatcher makes one per finished partition call; read them with
    :meth:`StatsRecorder.measurements` or :meth:`scheduler.Runtime.measurements`, or receive
    them as they arrive with :meth:`scheduler.Runtime.on_measurement`. (Not to be confused
    with :class:`policies.calibrated.Measurement`, a measured time fed to a cost-model fit.)

    Example:
        >>> rec = StatsRecorder()
        >>> rec.add_measurement(CallRecord(request=0, attempt=0, partition=1, device="cpu",
        ...                                start=0.0, duration=0.25, wall=0.25, simulated=False))
        >>> [(m.partition, m.device, m.duration) for m in rec.measurements()]
        [(1, 'cpu', 0.25)]
    """

    request: int  # request id
    attempt: int  # 0 for the first try, 1.. for retries after a failure
    partition: int  # partition id
    device: str  # device name the partition ran on
    start: float  # wall clock (time.time()) when the call began on the executor
    duration: float  # seconds on the device: measured, or the simulated device's seconds
    wall: float  # wall seconds actually spent in the call (includes pacing sleeps)
    simulated: bool  # True when ``duration`` is a simulated device's time
    version: int = 0  # plan version the call belonged to


@dataclass(frozen=True)
class RequestRecord:
    """One finished request (any terminal status).

    Example:
        >>> r = RequestRecord(request=4, submitted=10.0, finished=10.25, status="completed", attempts=2)
        >>> r.latency, r.attempts - 1  # seconds, retries
        (0.25, 1)
    """

    request: int  # request id
    submitted: float  # wall clock (time.time()) at submit
    finished: float  # wall clock when the future was completed
    status: str  # one of STATUSES
    attempts: int = 1  # tries (1 + retries)
    sim_makespan: float | None = None  # seconds along the partition DAG from measured durations
    energy: float | None = None  # joules for this request on simulated devices (None: unknown)
    exit_depth: int = 0  # early exit it left at (stages run); 0 = the full model
    flops: float | None = None  # FLOPs of the partitions it ran (None: not counted)
    version: int = 0  # plan version of the attempt that ended it (answered it, if completed)

    @property
    def latency(self) -> float:
        """Submit-to-result wall seconds."""
        return self.finished - self.submitted


@dataclass(frozen=True)
class RuntimeStats:
    """Summary of a runtime's requests and devices (see :meth:`StatsRecorder.summary`).

    Example:
        >>> rec = StatsRecorder()
        >>> for i in range(4):
        ...     rec.add_request(RequestRecord(i, submitted=i * 0.5, finished=i * 0.5 + 0.5,
        ...                                   status="completed" if i else "failed"))
        >>> s = rec.summary(in_flight=1)
        >>> s.completed, s.failed, s.in_flight, s.latency_p50, s.throughput
        (3, 1, 1, 0.5, 1.5)
        >>> s.as_dict()["window"]
        2.0
    """

    count: int  # requests submitted
    completed: int  # completed with a result
    failed: int  # completed with an error
    cancelled: int  # cancelled by the caller
    timed_out: int  # hit the request timeout
    retried: int  # retries issued after executor/actor failures
    in_flight: int  # submitted and not yet finished, now
    latency_p50: float | None  # seconds, wall, completed requests in the window
    latency_p95: float | None  # seconds
    latency_p99: float | None  # seconds
    latency_mean: float | None  # seconds
    throughput: float | None  # completed requests per wall second over the window
    window: float  # wall seconds from the first submit to the last finish in the window
    busy_wall: Mapping[str, float]  # device -> measured wall seconds in partition calls
    utilisation_wall: Mapping[str, float]  # device -> busy_wall / window
    busy_simulated: Mapping[str, float]  # device -> simulated device seconds (sim devices)
    utilisation_simulated: Mapping[str, float]  # device -> simulated busy / simulated window (with pace)
    sim_makespan_p50: float | None  # seconds, median simulated makespan of a request
    energy_per_request: float | None  # joules, mean over completed requests (sim devices)
    measurements: int  # partition calls measured (all time)
    group_size: float | None = None  # requests per issued group (coalescing; 1.0: none), all time
    exit_rate: float | None = None  # fraction of completed requests that left at an early exit (gated)
    exits: Mapping[str, int] = field(default_factory=dict)  # path ("exit@d" | "full") -> completed requests
    compute_saved: float | None = None  # 1 - FLOPs run / FLOPs of the plain model, over completed requests
    latency_by_path: Mapping[str, float] = field(default_factory=dict)  # path -> median wall latency, s
    plan_version: int = 0  # the current plan version (0: the initial plan)
    replans: int = 0  # plan versions deployed after the initial one
    failures: int = 0  # devices marked failed (adaptive runtime)
    recoveries: int = 0  # failed devices re-admitted (adaptive runtime)
    events: tuple = ()  # scheduler.adaptive.AdaptiveEvent records, oldest first

    def as_dict(self) -> dict:
        """Plain dict (mappings copied)."""
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.__dict__.items()}


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation; None for no values.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
        >>> percentile([], 99) is None
        True
    """
    xs = sorted(values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def dag_makespan(dag: nx.DiGraph, duration: Mapping[Hashable, float],
                 transfer: Callable[[Hashable, Hashable], float] | None = None) -> float:
    """Longest path through ``dag`` with node weights ``duration`` and edge weights
    ``transfer(u, v)`` (0 when None): the makespan of one request run alone.

    Example:
        >>> import networkx as nx
        >>> g = nx.DiGraph([(0, 1), (0, 2), (1, 3), (2, 3)])
        >>> dag_makespan(g, {0: 1.0, 1: 2.0, 2: 5.0, 3: 1.0}, lambda u, v: 0.5)
        8.0
    """
    finish: dict[Hashable, float] = {}
    for n in nx.topological_sort(dag):
        ready = 0.0
        for p in dag.predecessors(n):
            ready = max(ready, finish[p] + (transfer(p, n) if transfer else 0.0))
        finish[n] = ready + float(duration.get(n, 0.0))
    return max(finish.values(), default=0.0)


def request_energy(busy: Mapping[str, float], makespan: float,
                   power: Mapping[str, tuple[float, float] | None]) -> float | None:
    """Joules of one request: active power over each device's busy seconds plus idle power
    over the rest of the makespan (as :func:`policies.cost.plan_energy`); None when a
    device's power is unknown.

    Example:
        >>> request_energy({"a": 1.0, "b": 0.5}, 2.0, {"a": (10.0, 1.0), "b": (4.0, 2.0)})
        16.0
    """
    total = 0.0
    for d, b in busy.items():
        p = power.get(d)
        if p is None:
            return None
        total += p[0] * b + p[1] * max(makespan - b, 0.0)
    return total


class StatsRecorder:
    """Thread-safe store of measurements and finished requests, with bounded memory.

    ``history`` bounds how many measurements and request records are kept for the
    percentiles, busy times and traces (counters are kept for all time).

    Example:
        >>> rec = StatsRecorder(history=2)
        >>> for r in range(3):
        ...     rec.add_measurement(CallRecord(r, 0, 0, "sim:npu", start=r, duration=0.1,
        ...                                    wall=0.3, simulated=True))
        >>> [m.request for m in rec.measurements()]  # the last two are kept
        [1, 2]
        >>> s = rec.summary()
        >>> s.measurements, dict(s.busy_wall), round(s.busy_simulated["sim:npu"], 6)
        (3, {'sim:npu': 0.6}, 0.2)
    """

    def __init__(self, history: int = 100_000, pace: float | None = None,
                 full_flops: float | None = None, gated: bool = False):
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an int >= 1, got {history!r}")
        self.pace = pace
        self.full_flops = full_flops  # FLOPs of one request through the plain model
        self.gated = gated  # requests may leave at early exits
        self._lock = threading.Lock()
        self._measurements: deque[CallRecord] = deque(maxlen=history)
        self._requests: deque[RequestRecord] = deque(maxlen=history)
        self._counts = dict.fromkeys(STATUSES, 0)
        self._submitted = 0
        self._retried = 0
        self._n_meas = 0
        self._groups = self._grouped = 0
        self._first_submit: float | None = None

    # ----------------------------------------------------------------- recording
    def add_submit(self, when: float) -> None:
        """Count one submitted request."""
        with self._lock:
            self._submitted += 1
            if self._first_submit is None:
                self._first_submit = when

    def add_retry(self) -> None:
        """Count one retry."""
        with self._lock:
            self._retried += 1

    def add_group(self, size: int) -> None:
        """Count one issued group of ``size`` requests (request coalescing)."""
        with self._lock:
            self._groups += 1
            self._grouped += size

    def add_measurement(self, m: CallRecord) -> None:
        """Record one partition call's measurement."""
        with self._lock:
            self._measurements.append(m)
            self._n_meas += 1

    def add_request(self, r: RequestRecord) -> None:
        """Record one finished request."""
        if r.status not in STATUSES:
            raise ValueError(f"unknown request status {r.status!r}; valid: {', '.join(STATUSES)}")
        with self._lock:
            self._requests.append(r)
            self._counts[r.status] += 1
            if self._first_submit is None:
                self._first_submit = r.submitted

    def reset(self) -> None:
        """Forget everything recorded (e.g. after a warm-up)."""
        with self._lock:
            self._measurements.clear()
            self._requests.clear()
            self._counts = dict.fromkeys(STATUSES, 0)
            self._submitted = self._retried = self._n_meas = 0
            self._groups = self._grouped = 0
            self._first_submit = None

    # ------------------------------------------------------------------- reading
    def measurements(self) -> list[CallRecord]:
        """The kept measurements, oldest first."""
        with self._lock:
            return list(self._measurements)

    def requests(self) -> list[RequestRecord]:
        """The kept request records, oldest first."""
        with self._lock:
            return list(self._requests)

    def summary(self, in_flight: int = 0) -> RuntimeStats:
        """A :class:`RuntimeStats` of everything kept."""
        with self._lock:
            reqs = list(self._requests)
            meas = list(self._measurements)
            counts = dict(self._counts)
            submitted = max(self._submitted, sum(counts.values()))
            retried, n_meas = self._retried, self._n_meas
            group_size = self._grouped / self._groups if self._groups else None
        done = [r for r in reqs if r.status == "completed"]
        lat = [r.latency for r in done]
        ends = [r.finished for r in reqs]
        if reqs:
            t0 = min(r.submitted for r in reqs)
            window = max(ends) - t0
        else:
            window = 0.0
        busy_wall: dict[str, float] = {}
        busy_sim: dict[str, float] = {}
        for m in meas:
            busy_wall[m.device] = busy_wall.get(m.device, 0.0) + m.wall
            if m.simulated:
                busy_sim[m.device] = busy_sim.get(m.device, 0.0) + m.duration
        util_wall = {d: (b / window if window > 0 else 0.0) for d, b in busy_wall.items()}
        util_sim = {}
        if self.pace and window > 0:
            sim_window = window / self.pace
            util_sim = {d: b / sim_window for d, b in busy_sim.items()}
        sims = [r.sim_makespan for r in done if r.sim_makespan is not None]
        energies = [r.energy for r in done if r.energy is not None]
        return RuntimeStats(
            count=submitted,
            completed=counts["completed"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            timed_out=counts["timeout"],
            retried=retried,
            in_flight=in_flight,
            latency_p50=percentile(lat, 50),
            latency_p95=percentile(lat, 95),
            latency_p99=percentile(lat, 99),
            latency_mean=(sum(lat) / len(lat)) if lat else None,
            throughput=(len(done) / window) if done and window > 0 else None,
            window=window,
            busy_wall=MappingProxyType(busy_wall),
            utilisation_wall=MappingProxyType(util_wall),
            busy_simulated=MappingProxyType(busy_sim),
            utilisation_simulated=MappingProxyType(util_sim),
            sim_makespan_p50=percentile(sims, 50),
            energy_per_request=(sum(energies) / len(energies)) if energies and len(energies) == len(done) else None,
            measurements=n_meas,
            group_size=group_size,
            **self._paths(done),
        )

    def _paths(self, done: list[RequestRecord]) -> dict:
        """Exit rate, compute saved and latency by path (gated runtimes)."""
        if not self.gated:
            return {}
        by: dict[str, list[float]] = {}
        for r in done:
            by.setdefault(f"exit@{r.exit_depth}" if r.exit_depth else "full", []).append(r.latency)
        flops = [r.flops for r in done if r.flops is not None]
        saved = None
        if self.full_flops and done and len(flops) == len(done):
            saved = 1.0 - sum(flops) / (len(done) * self.full_flops)
        return {
            "exit_rate": (sum(1 for r in done if r.exit_depth) / len(done)) if done else None,
            "exits": MappingProxyType({k: len(v) for k, v in sorted(by.items())}),
            "compute_saved": saved,
            "latency_by_path": MappingProxyType({k: percentile(v, 50) for k, v in sorted(by.items())}),
        }


__all__ = ["CallRecord", "RequestRecord", "RuntimeStats", "StatsRecorder", "percentile",
           "dag_makespan", "request_energy", "STATUSES"]


def __getattr__(name: str):
    # deprecated alias: this class was called Measurement until it was renamed CallRecord, to
    # tell it apart from policies.calibrated.Measurement (a measured time for a cost-model fit)
    if name == "Measurement":
        warnings.warn("scheduler.stats.Measurement is deprecated; use scheduler.stats.CallRecord",
                      DeprecationWarning, stacklevel=2)
        return CallRecord
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
