"""Discrete-event simulation of a plan in virtual time, for one request or a stream.

:func:`simulate` runs one request of ``graph`` under ``plan`` and reports when each node
starts and finishes, the makespan, per-device busy time and utilisation, energy and peak
memory. :func:`simulate_stream` runs many requests that share the devices (pipelining) and
reports latency percentiles and throughput. :func:`bottleneck_bound` is the throughput
bound of such a stream.

Model (the one of the list-scheduling literature, e.g. Topcuoglu et al., "Performance-
effective and low-complexity task scheduling for heterogeneous computing", IEEE TPDS 2002):

* A node runs on ``plan.assignment[node]`` for ``cost_model.node_time(graph, node, dev)``;
  a device runs one node at a time, without preemption.
* A node may start once (a) every predecessor ``u`` has finished and its data has arrived,
  at ``finish[u] + cost_model.edge_time(graph, u, v, dev_u, dev_v)`` (0 on the same
  device; the cost model is not asked), and (b) the node before it in
  ``plan.order[dev]`` has finished. It starts as soon as both hold (as soon as possible).
* Transfers overlap with computation. By default links are contention-free: any number of
  transfers proceed at once, each taking its ``edge_time``, as HEFT and its relatives
  assume. With ``link_contention=True`` each directed device pair ``(src, dst)`` carries
  one transfer at a time, first come first served by the time the producer finishes (ties:
  the order events were processed, then the producer's successor order in the graph).
* Every edge is its own transfer, even when two consumers sit on the same device.

So a plan from an as-soon-as-possible list scheduler (HEFT with or without insertion,
per-device order by start time) is reproduced exactly: :meth:`SimResult.max_deviation`
is 0 up to float rounding. A plan whose predicted starts are later than they need be
simulates to earlier times: the simulator never idles a device on purpose.

Energy: ``active * busy + idle * (span - busy)`` summed over the devices that have nodes,
with ``(active, idle) = cost_model.power(dev)``; transfers cost no energy; None when the
cost model knows no power for a used device. This matches :func:`policies.cost.plan_energy`.

Memory (bytes, per device, from node attributes ``param_bytes``, ``state_bytes``,
``bytes_out`` and edge attribute ``bytes``; all 0 when absent, as in abstract task graphs):

* parameters and state (``state_bytes``: a decoder layer's KV cache, as
  :func:`graphs.decoding.step_graph` sets it) of every node placed on the device are
  resident for the whole run (counted once, however many requests are in flight);
* a node's output (``bytes_out``) is allocated on its device when the node starts and
  freed when the last of its local consumers has finished and the last of its outgoing
  transfers has ended; a node without successors keeps its output until its request
  completes (it is the result);
* a transferred copy (edge ``bytes``, else the producer's ``bytes_out``) is allocated on
  the destination when the transfer starts and freed when its consumer finishes.

At equal times, frees happen before allocations. The peak is parameters and state plus
the maximum of the live bytes over time.

Example:
    >>> import networkx as nx
    >>> from policies.cost import CostModel
    >>> from policies.plan import Plan
    >>> class Unit(CostModel):      # every node takes 1, every transfer 0.5
    ...     def node_time(self, g, n, d): return 1.0
    ...     def edge_time(self, g, u, v, s, t): return 0.0 if s == t else 0.5
    >>> g = nx.DiGraph([("a", "b"), ("a", "c")])
    >>> plan = Plan({"a": "cpu", "b": "cpu", "c": "gpu"}, {"cpu": ("a", "b"), "gpu": ("c",)},
    ...             {"a": 0, "b": 1, "c": 1.5}, {"a": 1, "b": 2, "c": 2.5}, 2.5)
    >>> r = simulate(g, plan, Unit())
    >>> r.makespan, r.start["c"], r.busy["cpu"]
    (2.5, 1.5, 2.0)
    >>> s = simulate_stream(g, plan, Unit(), [0.0, 0.0])   # two requests at once
    >>> s.completion
    (2.5, 4.5)
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Hashable, Mapping, NamedTuple, Sequence

import networkx as nx
import numpy as np

from executors.devices import Cluster
from policies.cost import CostModel, check_dag
from policies.plan import Plan

from .errors import DeadlockError, PlanMismatchError, SimulationError

__all__ = ["Transfer", "SimResult", "StreamResult", "simulate", "simulate_stream",
           "bottleneck_bound", "poisson_arrivals", "periodic_arrivals"]


def _ro(m: Mapping) -> Mapping:
    return MappingProxyType(dict(m))


class Transfer(NamedTuple):
    """One edge's data moving between two devices.

    Example:
        >>> t = Transfer("a", "b", "cpu", "npu", start=1.0, end=1.25)
        >>> t.end - t.start, t.request
        (0.25, None)
        >>> u, v, src, dst, *_ = t  # a named tuple
        >>> f"{u}@{src} -> {v}@{dst}"
        'a@cpu -> b@npu'
    """

    u: Hashable  # producer node
    v: Hashable  # consumer node
    src: str  # device of u
    dst: str  # device of v
    start: float  # seconds: when the data starts moving (u's finish, or later under contention)
    end: float  # seconds: when it has arrived on dst
    request: int | None = None  # request id in a stream; None for a single request


@dataclass(frozen=True)
class SimResult:
    """What :func:`simulate` found for one request (times in cost-model units, seconds).

    Example:
        >>> from executors.devices import Cluster
        >>> from policies import HEFT, TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 3}, "d": {"x": 1, "y": 2}}
        >>> cm = TableCostModel(t, {e: 1 for e in g.edges}, power={"x": (10.0, 1.0), "y": (4.0, 1.0)})
        >>> plan = HEFT().place(g, Cluster.from_names(["x", "y"]), cm)
        >>> dict(plan.order)
        {'x': ('a', 'c', 'd'), 'y': ('b',)}
        >>> r = simulate(g, plan, cm)
        >>> r.makespan, dict(r.busy), r.energy, r.agrees_with(plan)
        (6.0, {'x': 5.0, 'y': 2.0}, 63.0, True)
        >>> [(t.u, t.v, t.start, t.end) for t in r.transfers]  # a -> b -> d crosses to y and back
        [('a', 'b', 1.0, 2.0), ('b', 'd', 4.0, 5.0)]
    """

    start: Mapping[Hashable, float]  # node -> start
    finish: Mapping[Hashable, float]  # node -> finish
    makespan: float  # max finish (the request arrives at 0)
    busy: Mapping[str, float]  # device -> seconds running nodes
    utilisation: Mapping[str, float]  # device -> busy / makespan (0 when makespan is 0)
    energy: float | None  # joules (see module docstring); None when power is unknown
    memory: Mapping[str, float]  # device -> peak bytes (see module docstring)
    assignment: Mapping[Hashable, str]  # node -> device (the plan's)
    transfers: tuple[Transfer, ...] = ()  # every cross-device edge, by start time
    link_contention: bool = False  # whether transfers were serialised per link

    def max_deviation(self, plan: Plan) -> float:
        """Largest absolute difference between simulated and ``plan``'s predicted start,
        finish and makespan.

        Example:
            >>> r = SimResult({"a": 0.0}, {"a": 2.0}, 2.0, {}, {}, None, {}, {"a": "x"})
            >>> r.max_deviation(Plan({"a": "x"}, {"x": ("a",)}, {"a": 0.0}, {"a": 2.5}, 2.5))
            0.5
        """
        dev = abs(self.makespan - plan.makespan)
        for n, s in self.start.items():
            if n not in plan.start or n not in plan.finish:
                raise PlanMismatchError(f"plan has no predicted start/finish for node {n!r}")
            dev = max(dev, abs(s - plan.start[n]), abs(self.finish[n] - plan.finish[n]))
        return dev

    def agrees_with(self, plan: Plan, rel: float = 1e-9) -> bool:
        """Whether every simulated time equals the plan's within ``rel`` of the makespan.

        Example:
            >>> r = SimResult({"a": 0.0}, {"a": 2.0}, 2.0, {}, {}, None, {}, {"a": "x"})
            >>> r.agrees_with(Plan({"a": "x"}, {"x": ("a",)}, {"a": 0.0}, {"a": 2.0}, 2.0))
            True
        """
        return self.max_deviation(plan) <= rel * max(abs(self.makespan), abs(plan.makespan), 1e-300)


@dataclass(frozen=True)
class StreamResult:
    """What :func:`simulate_stream` found for a stream of requests (times in seconds).

    Example:
        >>> from executors.devices import Cluster
        >>> from policies import HEFT, TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 3}, "d": {"x": 1, "y": 2}}
        >>> cm = TableCostModel(t, {e: 1 for e in g.edges}, power={"x": (10.0, 1.0), "y": (4.0, 1.0)})
        >>> plan = HEFT().place(g, Cluster.from_names(["x", "y"]), cm)
        >>> dict(plan.order)
        {'x': ('a', 'c', 'd'), 'y': ('b',)}
        >>> s = simulate_stream(g, plan, cm, periodic_arrivals(2.0, 4))  # a request every 2 s
        >>> s.completion, s.latency
        ((6.0, 10.0, 16.0, 20.0), (6.0, 8.0, 12.0, 14.0))
        >>> s.n_requests, s.throughput, s.p50, s.energy_per_request
        (4, 0.2, 10.0, 61.0)
    """

    arrivals: tuple[float, ...]  # request id -> arrival time
    admitted: tuple[float, ...]  # request id -> when it entered (later than arrival under max_in_flight)
    completion: tuple[float, ...]  # request id -> finish of its last node
    latency: tuple[float, ...]  # request id -> completion - arrival
    span: float  # last completion - first arrival
    throughput: float  # completed requests / span (inf when span is 0)
    p50: float  # median latency
    p95: float  # 95th percentile latency
    p99: float  # 99th percentile latency
    busy: Mapping[str, float]  # device -> seconds running nodes, all requests
    utilisation: Mapping[str, float]  # device -> busy / span
    energy: float | None  # joules over the span, all requests; None when power is unknown
    energy_per_request: float | None  # energy / number of requests
    memory: Mapping[str, float]  # device -> peak bytes over the whole stream
    start: Mapping[tuple[int, Hashable], float]  # (request id, node) -> start
    finish: Mapping[tuple[int, Hashable], float]  # (request id, node) -> finish
    assignment: Mapping[Hashable, str]  # node -> device (the plan's)
    transfers: tuple[Transfer, ...] = ()  # every cross-device edge of every request, by start
    link_contention: bool = False  # whether transfers were serialised per link

    @property
    def n_requests(self) -> int:
        """Number of requests simulated."""
        return len(self.arrivals)

    def percentile(self, q: float) -> float:
        """Latency percentile ``q`` in [0, 100] (linear interpolation, as ``numpy.percentile``).

        Example:
            >>> r = simulate_stream(_ExampleGraph, _ExamplePlan, _ExampleCost, [0.0, 0.0, 0.0])
            >>> r.latency, r.percentile(50)
            ((1.0, 2.0, 3.0), 2.0)
        """
        if not 0 <= q <= 100:
            raise SimulationError(f"percentile must be in [0, 100], got {q!r}")
        return float(np.percentile(self.latency, q))


# ----------------------------------------------------------------------------- arrivals
def poisson_arrivals(rate: float, n: int, seed: int | None = 0, start: float = 0.0) -> tuple[float, ...]:
    """``n`` arrival times of a Poisson process of ``rate`` requests per second.

    Gaps are exponential with mean ``1 / rate``; the first request arrives one gap after
    ``start``. The same ``seed`` gives the same times.

    Example:
        >>> a = poisson_arrivals(10.0, 4, seed=1)
        >>> len(a), all(x < y for x, y in zip(a, a[1:])), a == poisson_arrivals(10.0, 4, seed=1)
        (4, True, True)
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (rate > 0 and math.isfinite(rate)):
        raise SimulationError(f"rate must be a finite number > 0 (requests per second), got {rate!r}")
    _check_count(n)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    return tuple(float(x) for x in start + np.cumsum(gaps))


def periodic_arrivals(period: float, n: int, start: float = 0.0) -> tuple[float, ...]:
    """``n`` arrival times ``start, start + period, ...``.

    Example:
        >>> periodic_arrivals(0.5, 3)
        (0.0, 0.5, 1.0)
    """
    if isinstance(period, bool) or not isinstance(period, (int, float)) or not (period >= 0 and math.isfinite(period)):
        raise SimulationError(f"period must be a finite number >= 0 (seconds), got {period!r}")
    _check_count(n)
    return tuple(float(start + k * period) for k in range(n))


def _check_count(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SimulationError(f"number of requests must be an int >= 1, got {n!r}")


# ----------------------------------------------------------------------- public entries
def simulate(graph: nx.DiGraph, plan: Plan, cost_model: CostModel, cluster: Cluster | None = None,
             *, link_contention: bool = False) -> SimResult:
    """Simulate one request of ``graph`` under ``plan`` (see the module docstring).

    Args:
        graph: the DAG the plan places.
        plan: assignment and per-device order; its predicted times are not read.
        cost_model: node and edge times, power.
        cluster: when given, every device of the plan must be in it, and its devices
            without nodes are reported with busy time 0.
        link_contention: serialise transfers per directed device pair.

    Raises:
        PlanMismatchError: the plan misses a node, lists a node twice or on another device,
            names a device not in ``cluster``, ...
        DeadlockError: the per-device order contradicts precedence (names a cycle).
        graphs.errors.CyclicGraphError: the graph itself has a cycle.
        SimulationError: a node or edge time is negative or not finite.

    Example:
        >>> r = simulate(_ExampleGraph, _ExamplePlan, _ExampleCost)
        >>> r.makespan, dict(r.utilisation)
        (1.0, {'cpu': 1.0})
    """
    eng = _Engine(graph, plan, cost_model, cluster, link_contention)
    run = eng.run([0.0], None)
    start = {n: run.start[0][i] for i, n in enumerate(eng.nodes)}
    finish = {n: run.finish[0][i] for i, n in enumerate(eng.nodes)}
    makespan = run.completion[0]
    busy = eng.busy_per_request()
    util = {d: (b / makespan if makespan > 0 else 0.0) for d, b in busy.items()}
    return SimResult(
        start=_ro(start), finish=_ro(finish), makespan=makespan, busy=_ro(busy),
        utilisation=_ro(util), energy=eng.energy(busy, makespan), memory=_ro(run.memory),
        assignment=plan.assignment, transfers=run.transfers, link_contention=link_contention,
    )


def simulate_stream(graph: nx.DiGraph, plan: Plan, cost_model: CostModel, arrivals: Sequence[float],
                    cluster: Cluster | None = None, *, max_in_flight: int | None = None,
                    link_contention: bool = False) -> StreamResult:
    """Simulate requests arriving at ``arrivals`` (non-decreasing) that share the devices.

    Request ``k`` arrives at ``arrivals[k]``. It is admitted at once, or, with
    ``max_in_flight``, once fewer than that many earlier requests are unfinished (FIFO).
    A *closed loop* of ``c`` clients is ``arrivals=[0.0] * n, max_in_flight=c``.

    Dispatch rule: within a request, nodes follow the single-request rules (precedence and
    the plan's order per device). Across requests, a device that falls idle starts, among
    the nodes ready for it, the one of the oldest request (lowest id), then the earliest in
    the plan's order. A device never waits for an older request while it has ready work of
    a newer one, so request ``k + 1`` can run on device A while request ``k`` runs on B
    (pipelining). One request simulates exactly as :func:`simulate` does.

    Latency is completion minus arrival (admission waits included); throughput is the
    number of requests over ``span`` = last completion - first arrival; percentiles
    interpolate linearly; utilisation is busy / span; energy is over the span.

    Raises:
        SimulationError: arrivals empty, not finite or decreasing; bad ``max_in_flight``;
            and everything :func:`simulate` raises.

    Example:
        >>> r = simulate_stream(_ExampleGraph, _ExamplePlan, _ExampleCost, [0.0, 0.0], max_in_flight=1)
        >>> r.admitted, r.latency, r.throughput
        ((0.0, 1.0), (1.0, 2.0), 1.0)
    """
    arr = _check_arrivals(arrivals)
    if max_in_flight is not None and (isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int)
                                      or max_in_flight < 1):
        raise SimulationError(f"max_in_flight must be None or an int >= 1, got {max_in_flight!r}")
    eng = _Engine(graph, plan, cost_model, cluster, link_contention)
    run = eng.run(arr, max_in_flight)
    n = len(arr)
    latency = tuple(c - a for c, a in zip(run.completion, arr))
    span = max(run.completion) - arr[0]
    per = eng.busy_per_request()
    busy = {d: b * n for d, b in per.items()}
    util = {d: (b / span if span > 0 else 0.0) for d, b in busy.items()}
    energy = eng.energy(busy, span)
    start, finish = {}, {}
    for r in range(n):
        for i, node in enumerate(eng.nodes):
            start[(r, node)] = run.start[r][i]
            finish[(r, node)] = run.finish[r][i]
    p50, p95, p99 = (float(x) for x in np.percentile(latency, [50, 95, 99]))
    return StreamResult(
        arrivals=arr, admitted=tuple(run.admitted), completion=tuple(run.completion), latency=latency,
        span=span, throughput=(n / span if span > 0 else math.inf), p50=p50, p95=p95, p99=p99,
        busy=_ro(busy), utilisation=_ro(util), energy=energy,
        energy_per_request=None if energy is None else energy / n, memory=_ro(run.memory),
        start=_ro(start), finish=_ro(finish), assignment=plan.assignment, transfers=run.transfers,
        link_contention=link_contention,
    )


def bottleneck_bound(graph: nx.DiGraph, plan: Plan, cost_model: CostModel) -> float:
    """Seconds of work per request on the busiest device: the period a pipelined stream
    cannot beat, so ``1 / bottleneck_bound(...)`` bounds its throughput (requests/s).

    Links are not counted (contention-free links never limit throughput).

    Example:
        >>> bottleneck_bound(_ExampleGraph, _ExamplePlan, _ExampleCost)
        1.0
    """
    eng = _Engine(graph, plan, cost_model, None, False)
    return max(eng.busy_per_request().values(), default=0.0)


def _check_arrivals(arrivals: Sequence[float]) -> tuple[float, ...]:
    try:
        arr = tuple(float(a) for a in arrivals)
    except (TypeError, ValueError) as e:
        raise SimulationError(f"arrivals must be a sequence of numbers (seconds), got {arrivals!r}") from e
    if not arr:
        raise SimulationError("arrivals is empty; give at least one arrival time")
    for k, a in enumerate(arr):
        if not math.isfinite(a):
            raise SimulationError(f"arrival {k} is {a!r}; arrival times must be finite")
        if k and a < arr[k - 1]:
            raise SimulationError(
                f"arrivals must be non-decreasing; arrival {k} ({a!r}) is before arrival {k - 1} ({arr[k - 1]!r})")
    return arr


# -------------------------------------------------------------------------- the engine
@dataclass
class _Run:
    start: list  # request -> list of start per node index
    finish: list
    admitted: list
    completion: list
    transfers: tuple
    memory: dict = field(default_factory=dict)


_FINISH, _READY, _ARRIVE = 0, 1, 2


class _Engine:
    """Validated, index-based form of (graph, plan, cost model), and the event loop."""

    def __init__(self, graph: nx.DiGraph, plan: Plan, cost_model: CostModel, cluster: Cluster | None,
                 link_contention: bool):
        if not isinstance(graph, nx.DiGraph):
            raise SimulationError(f"graph must be a networkx.DiGraph, got {type(graph).__name__}")
        if not isinstance(plan, Plan):
            raise SimulationError(f"plan must be a policies.plan.Plan, got {type(plan).__name__}")
        if not isinstance(cost_model, CostModel):
            raise SimulationError(f"cost_model must be a policies.cost.CostModel, got {type(cost_model).__name__}")
        if cluster is not None and not isinstance(cluster, Cluster):
            raise SimulationError(f"cluster must be None or an executors.devices.Cluster, got {type(cluster).__name__}")
        if graph.number_of_nodes() == 0:
            raise SimulationError("graph has no nodes; nothing to simulate")
        self.graph, self.plan, self.cost_model = graph, plan, cost_model
        self.link_contention = bool(link_contention)
        self._check_plan(cluster)

        self.nodes = list(graph.nodes)
        idx = {n: i for i, n in enumerate(self.nodes)}
        N = len(self.nodes)
        self.dev = [plan.assignment[n] for n in self.nodes]
        self.dur = [_finite(cost_model.node_time(graph, n, d), f"node_time of node {n!r} on device {d!r}")
                    for n, d in zip(self.nodes, self.dev)]
        self.pos = [0] * N
        self.next_on_dev = [-1] * N
        self.count0 = [graph.in_degree(n) for n in self.nodes]
        for d, ns in plan.order.items():
            prev = -1
            for p, n in enumerate(ns):
                i = idx[n]
                self.pos[i] = p
                if prev >= 0:
                    self.next_on_dev[prev] = i
                    self.count0[i] += 1
                prev = i
        # successors: (j, transfer time or None when same device, bytes moved)
        self.succ: list[list[tuple[int, float | None, float]]] = [[] for _ in range(N)]
        self.out_bytes = [float(graph.nodes[n].get("bytes_out", 0) or 0) for n in self.nodes]
        for u, v, a in graph.edges(data=True):
            i, j = idx[u], idx[v]
            du, dv = self.dev[i], self.dev[j]
            if du == dv:
                et = None
            else:
                et = _finite(cost_model.edge_time(graph, u, v, du, dv), f"edge_time of edge {u!r}->{v!r} "
                             f"from {du!r} to {dv!r}")
            nbytes = a.get("bytes")
            self.succ[i].append((j, et, self.out_bytes[i] if nbytes is None else float(nbytes)))
        self.devices = list(plan.order)
        if cluster is not None:
            self.devices += [d for d in cluster.names if d not in plan.order]
        self.params: dict[str, float] = {d: 0.0 for d in self.devices}
        for n, d in zip(self.nodes, self.dev):
            a = graph.nodes[n]
            self.params[d] += float(a.get("param_bytes", 0) or 0) + float(a.get("state_bytes", 0) or 0)
        self._check_deadlock()

    # ------------------------------------------------------------------ checks
    def _check_plan(self, cluster: Cluster | None) -> None:
        g, plan = self.graph, self.plan
        missing = [n for n in g.nodes if n not in plan.assignment]
        if missing:
            raise PlanMismatchError(f"node(s) not in the plan's assignment: {_few(missing)}")
        extra = [n for n in plan.assignment if n not in g]
        if extra:
            raise PlanMismatchError(f"plan assigns node(s) that are not in the graph: {_few(extra)}")
        if cluster is not None:
            for d in list(plan.order) + list(plan.assignment.values()):
                if d not in cluster:
                    raise PlanMismatchError(
                        f"plan uses device {d!r}, which is not in the cluster; devices: {', '.join(cluster.names)}")
        seen: dict = {}
        for d, ns in plan.order.items():
            for n in ns:
                if n not in g:
                    raise PlanMismatchError(f"plan.order[{d!r}] lists node {n!r}, which is not in the graph")
                if n in seen:
                    where = "twice" if seen[n] == d else f"on both {seen[n]!r} and {d!r}"
                    raise PlanMismatchError(f"plan.order lists node {n!r} {where}")
                if plan.assignment[n] != d:
                    raise PlanMismatchError(
                        f"plan.order[{d!r}] lists node {n!r}, but the assignment puts it on {plan.assignment[n]!r}")
                seen[n] = d
        for n, d in plan.assignment.items():
            if d not in plan.order:
                raise PlanMismatchError(
                    f"node {n!r} is assigned to device {d!r}, which has no entry in plan.order; "
                    f"devices in plan.order: {', '.join(map(repr, plan.order)) or '(none)'}")
            if n not in seen:
                raise PlanMismatchError(f"node {n!r} is assigned to {d!r} but missing from plan.order[{d!r}]")

    def _check_deadlock(self) -> None:
        """Kahn's algorithm on graph edges plus per-device order; name a cycle if stuck."""
        cnt = list(self.count0)
        stack = [i for i, c in enumerate(cnt) if c == 0]
        done = 0
        while stack:
            i = stack.pop()
            done += 1
            targets = [j for j, _, _ in self.succ[i]]
            if self.next_on_dev[i] >= 0:
                targets.append(self.next_on_dev[i])
            for j in targets:
                cnt[j] -= 1
                if cnt[j] == 0:
                    stack.append(j)
        if done == len(self.nodes):
            return
        check_dag(self.graph)  # a cycle of the graph itself is a graph error, not a deadlock
        stuck = {i for i, c in enumerate(cnt) if c > 0}
        h = nx.DiGraph()
        for i in stuck:
            for j, _, _ in self.succ[i]:
                if j in stuck:
                    h.add_edge(i, j, why="data")
            j = self.next_on_dev[i]
            if j in stuck:
                h.add_edge(i, j, why=f"order on {self.dev[i]}")
        cyc = nx.find_cycle(h)
        names = [self.nodes[i] for i, _ in cyc]
        text = "".join(f"{self.nodes[i]!r} ({self.dev[i]}) -[{h.edges[i, j]['why']}]-> " for i, j in cyc)
        raise DeadlockError(
            "deadlock: the plan's per-device order contradicts the graph's precedence; "
            f"each node waits for the next: {text}{self.nodes[cyc[0][0]]!r}", cycle=names)

    # ------------------------------------------------------------ derived values
    def busy_per_request(self) -> dict[str, float]:
        busy = {d: 0.0 for d in self.devices}
        for d, t in zip(self.dev, self.dur):
            busy[d] += t
        return busy

    def energy(self, busy: Mapping[str, float], span: float) -> float | None:
        total = 0.0
        for d, ns in self.plan.order.items():
            if not ns:
                continue
            p = self.cost_model.power(d)
            if p is None:
                return None
            active, idle = p
            total += active * busy[d] + idle * max(span - busy[d], 0.0)
        return total

    # ---------------------------------------------------------------- event loop
    def run(self, arrivals: Sequence[float], max_in_flight: int | None) -> _Run:
        N, R = len(self.nodes), len(arrivals)
        dev, dur, succ, nxt, pos = self.dev, self.dur, self.succ, self.next_on_dev, self.pos
        contention = self.link_contention
        start = [None] * R
        finish = [None] * R
        ready = [None] * R
        cnt = [None] * R
        left = [N] * R
        admitted = [math.nan] * R
        completion = [math.nan] * R
        raw: list[tuple] = []  # (start, end, request, producer index, consumer index, bytes)
        link_free: dict[tuple[str, str], float] = {}
        queues: dict[str, list] = {d: [] for d in self.devices}
        running = {d: False for d in self.devices}
        roots = [i for i, c in enumerate(self.count0) if c == 0]
        heap: list = []
        seq = 0
        for r, a in enumerate(arrivals):
            heap.append((a, seq, _ARRIVE, r, -1))
            seq += 1
        heapq.heapify(heap)
        waiting: list[int] = []  # admission queue (FIFO, request ids ascending)
        w_head = 0
        in_flight = 0
        cap = max_in_flight or R
        single = R == 1

        def admit(r: int, now: float) -> None:
            nonlocal in_flight
            in_flight += 1
            admitted[r] = now
            start[r] = [math.nan] * N
            finish[r] = [math.nan] * N
            ready[r] = [now] * N
            cnt[r] = list(self.count0)
            for i in roots:
                heapq.heappush(queues[dev[i]], (r, pos[i], i))
                dirty.add(dev[i])

        dirty: set[str] = set()
        while heap:
            now = heap[0][0]
            while heap and heap[0][0] == now:
                _, _, kind, r, i = heapq.heappop(heap)
                if kind == _FINISH:
                    d = dev[i]
                    running[d] = False
                    dirty.add(d)
                    finish[r][i] = now
                    rr, cr = ready[r], cnt[r]
                    for j, et, nb in succ[i]:
                        if et is None:
                            t = now
                        else:
                            s = now
                            if contention:
                                link = (d, dev[j])
                                s = max(now, link_free.get(link, now))
                                t = s + et
                                link_free[link] = t
                            else:
                                t = now + et
                            raw.append((s, t, r, i, j, nb))
                        if t > rr[j]:
                            rr[j] = t
                        cr[j] -= 1
                        if cr[j] == 0:
                            self._ready(heap, queues, dirty, r, j, rr[j], now, seq)
                            seq += 1
                    j = nxt[i]
                    if j >= 0:
                        if now > rr[j]:
                            rr[j] = now
                        cr[j] -= 1
                        if cr[j] == 0:
                            self._ready(heap, queues, dirty, r, j, rr[j], now, seq)
                            seq += 1
                    left[r] -= 1
                    if left[r] == 0:
                        completion[r] = max(finish[r])
                        in_flight -= 1
                        if w_head < len(waiting):
                            admit(waiting[w_head], now)
                            w_head += 1
                elif kind == _READY:
                    heapq.heappush(queues[dev[i]], (r, pos[i], i))
                    dirty.add(dev[i])
                else:  # _ARRIVE
                    if in_flight < cap:
                        admit(r, now)
                    else:
                        waiting.append(r)
            for d in dirty:
                q = queues[d]
                if q and not running[d]:
                    r, _, i = heapq.heappop(q)
                    running[d] = True
                    start[r][i] = now
                    heapq.heappush(heap, (now + dur[i], seq, _FINISH, r, i))
                    seq += 1
            dirty.clear()
        if any(x > 0 for x in left):  # pragma: no cover  (ruled out by _check_deadlock)
            raise DeadlockError("simulation stopped with unfinished nodes")
        raw.sort(key=_by_start_end)
        nodes = self.nodes
        transfers = tuple(Transfer(nodes[i], nodes[j], dev[i], dev[j], s, t, None if single else r)
                          for s, t, r, i, j, _ in raw)
        run = _Run(start, finish, admitted, completion, transfers)
        run.memory = self._memory(run, raw)
        return run

    def _ready(self, heap: list, queues: dict, dirty: set, r: int, j: int, t: float, now: float,
               seq: int) -> None:
        """Node ``j`` of request ``r`` has all it waits for by time ``t``: queue it on its
        device now, or at ``t`` through a ready event."""
        if t > now:
            heapq.heappush(heap, (t, seq, _READY, r, j))
        else:
            heapq.heappush(queues[self.dev[j]], (r, self.pos[j], j))
            dirty.add(self.dev[j])

    def _memory(self, run: _Run, raw: list[tuple]) -> dict[str, float]:
        """Peak bytes per device (see the module docstring for what lives when)."""
        peak = dict(self.params)
        if not any(self.out_bytes) and not any(nb for s in self.succ for _, _, nb in s):
            return peak
        N = len(self.nodes)
        local = [[j for j, et, _ in s if et is None] for s in self.succ]
        sink = [not s for s in self.succ]
        t_list: dict[str, list[float]] = {d: [] for d in self.devices}
        b_list: dict[str, list[float]] = {d: [] for d in self.devices}
        release = [[-math.inf] * N for _ in run.start]
        for r, (st, fi) in enumerate(zip(run.start, run.finish)):
            rel = release[r]
            for i in range(N):
                rel[i] = run.completion[r] if sink[i] else max((fi[j] for j in local[i]), default=-math.inf)
        for s, t, r, i, j, nb in raw:  # the source copy lives until the transfer ends
            if t > release[r][i]:
                release[r][i] = t
            if nb:  # the destination copy lives from the transfer's start to its consumer's finish
                d = self.dev[j]
                t_list[d] += (s, run.finish[r][j])
                b_list[d] += (nb, -nb)
        for r, st in enumerate(run.start):
            rel = release[r]
            for i, nb in enumerate(self.out_bytes):
                if nb:
                    d = self.dev[i]
                    t_list[d] += (st[i], max(rel[i], st[i]))
                    b_list[d] += (nb, -nb)
        for d in self.devices:
            if t_list[d]:
                t, b = np.asarray(t_list[d]), np.asarray(b_list[d])
                order = np.lexsort((b, t))  # by time; at equal times frees (negative) first
                peak[d] += max(float(np.cumsum(b[order]).max()), 0.0)
        return peak


def _by_start_end(t: tuple) -> tuple:
    return t[0], t[1]


def _finite(x: object, what: str) -> float:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise SimulationError(f"{what} is {x!r}, not a number") from e
    if not math.isfinite(v) or v < 0:
        raise SimulationError(f"{what} is {v!r}; times must be finite and >= 0 (is the device able to run it?)")
    return v


def _few(items: list, k: int = 5) -> str:
    head = ", ".join(repr(x) for x in items[:k])
    return head + (f" (+{len(items) - k} more)" if len(items) > k else "")


# tiny fixtures for the docstring examples above
class _ExampleCostModel(CostModel):
    def node_time(self, graph, node, device):
        return 1.0

    def edge_time(self, graph, u, v, src, dst):
        return 0.0


_ExampleGraph = nx.DiGraph()
_ExampleGraph.add_node("a")
_ExamplePlan = Plan({"a": "cpu"}, {"cpu": ("a",)}, {"a": 0.0}, {"a": 1.0}, 1.0)
_ExampleCost = _ExampleCostModel()
