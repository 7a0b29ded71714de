"""The shared list-scheduling engine every list-scheduling policy is built on.

A list scheduler takes nodes one at a time in a *priority* order (a topological order)
and gives each a device and a start time. HEFT, CPOP, PEFT, the greedy baselines and the
local searches differ only in the priority order and in how the device is chosen, so
they all call :func:`list_schedule` (the "parametric scheduler" split of priority and
placement components, as in Topcuoglu, Hariri & Wu, IEEE TPDS 13(3) 2002, sec. 4, and
the SAGA benchmark's parametric schedulers).

Timing semantics (the same as ``scheduler.simulate``):

* a node's *data-ready time* on device ``d`` is the maximum over its predecessors ``p``
  of ``finish(p) + edge_time(p -> node, dev(p), d)``; transfers are contention-free and
  overlap with compute;
* a node starts at ``max(data-ready time, the finish of the node before it in its
  device's order)``; each device's order is sorted by start time;
* with ``insertion=True`` a node goes into the *earliest idle gap* of the device that is
  long enough and starts no earlier than its data-ready time (insertion-based policy,
  Topcuoglu et al. 2002 sec. 4.1); with ``insertion=False`` it is appended after the last
  node on the device.

Constraints come from the policy's options (``policies.base.COMMON_OPTIONS``):

* ``respect_memory`` (default True): a device's resident bytes (the sum of
  :meth:`CostModel.node_memory` of the nodes placed on it) may not exceed
  ``cluster.spec(d).mem_capacity``. This is a *conservative* bound: every node's
  parameters **and** its output are counted as resident for the whole request, whereas
  a real executor frees intermediate outputs once consumed. Devices without a spec
  (abstract clusters) have unlimited memory.
* ``strict`` (default False): with an explicit ``assignment``, a node sent to a device
  that cannot run it (``CostModel.supports`` false) or whose memory it does not fit falls
  back to the feasible device with the earliest finish (recorded in
  ``plan.info["fallbacks"]`` as node -> the device it was assigned); with ``strict=True``
  that is an :class:`~policies.errors.InfeasiblePlacement` instead (searches that must
  not have their assignment changed pass ``strict=True``). Without an assignment the
  engine only ever considers devices that can run the node and that it fits.
* ``latency_bound`` (seconds, default None): a schedule longer than it raises
  :class:`~policies.errors.InfeasiblePlacement` saying by how much.
* ``objective="energy"`` (when neither ``choose`` nor ``assignment`` is given): the
  engine returns the plan of least energy (:meth:`CostModel.energy`, then the shorter
  makespan) among a few list schedules of the same priority order: the earliest-finish
  (latency) schedule and energy-greedy schedules. The energy greedy gives each node,
  among the devices whose earliest finish time is at most ``(1 + energy_slack)`` times the
  best one (and within ``latency_bound`` if given), the one with the smallest increase of
  a *lower bound of the final plan's energy* (:func:`policies.cost.plan_energy`'s model:
  ``sum_d (active_d - idle_d) * busy_d + makespan * sum_d idle_d`` over the used devices),
  where the makespan is bounded below by each placed node's finish plus the longest path
  after it (fastest times, free transfers). A greedy cannot know which devices later
  nodes will power anyway, so it is run once with no device assumed powered and once
  with the devices of the latency schedule (and of the best plan so far) assumed powered:
  powering a device costs its idle power over the *whole* final makespan, which a
  node-by-node score either over-charges (the device is used later anyway) or, charging
  only the partial makespan, under-charges. The latency schedule among the candidates
  makes the energy objective never spend more energy than the latency one does with the
  same priority order. ``energy_slack`` defaults to 0.1.

Precomputation: :class:`ScheduleContext` builds, once per (graph, cluster, cost model),
the node and edge indices, the time matrix ``T[node, device]``
(:meth:`CostModel.time_matrix`) and the transfer matrix ``C[edge, src, dst]``
(:meth:`CostModel.edge_time_matrix`). Callers that evaluate many assignments (local
search, exact-method warm starts) build one context and call :meth:`ScheduleContext.schedule`
or the cheaper :meth:`ScheduleContext.makespan` / :meth:`ScheduleContext.makespan_indices`
repeatedly. With an assignment that needs no fallback, the engine computes each node's
data-ready time on its assigned device only, and without insertion it keeps only each
device's last finish. :class:`IncrementalSchedule` goes further for searches that
change a few nodes at a time: it resumes an append-only schedule at the first changed
position and can stop early once a candidate provably cannot beat a given makespan.

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> g = nx.DiGraph([("a", "b"), ("a", "c")])
    >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 3}, "c": {"x": 3, "y": 3}},
    ...                     {("a", "b"): 1, ("a", "c"): 1})
    >>> p = list_schedule(g, Cluster.from_names(["x", "y"]), cm, ["a", "b", "c"])
    >>> p.makespan, dict(p.assignment)
    (5.0, {'a': 'x', 'b': 'x', 'c': 'y'})
"""
from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from typing import Any, Callable, Hashable, Mapping, Sequence

import networkx as nx
import numpy as np

from executors.devices import Cluster
from graphs.units import format_bytes

from .cost import CostModel
from .errors import InfeasiblePlacement, PolicyError
from .plan import Plan

__all__ = ["ScheduleContext", "IncrementalSchedule", "list_schedule", "Choose"]

#: ``choose(node, candidates) -> device``; ``candidates`` maps each feasible device to
#: ``(earliest start, earliest finish)`` of the node there.
Choose = Callable[[Hashable, "dict[str, tuple[float, float]]"], str]

_INF = math.inf


class ScheduleContext:
    """Precomputed, reusable view of one (graph, cluster, cost model) for list scheduling.

    Attributes (read-only by convention):
        nodes: node names; ``index[node]`` is the row of a node in every array.
        devices: device names (``cluster.names``); ``dindex[device]`` its column.
        edges: edges ``(u, v)``; ``eindex[(u, v)]`` its row in ``C``.
        T: ``T[i, j]`` seconds of ``nodes[i]`` on ``devices[j]`` (``inf`` = unsupported).
        C: ``C[e, a, b]`` seconds of ``edges[e]``'s transfer from device ``a`` to ``b``.
        preds / succs: per node index, a list of ``(other node index, edge index)``.
        mem: bytes each node keeps resident (:meth:`CostModel.node_memory`).
        capacity: bytes per device (``inf`` for devices without a spec).
        topo: a deterministic topological order of node indices.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 2, "y": 1}}, {("a", "b"): 5})
        >>> ctx = ScheduleContext(g, Cluster.from_names(["x", "y"]), cm)
        >>> ctx.makespan(["a", "b"], {"a": "x", "b": "y"})   # 1 + 5 + 1
        7.0
        >>> ctx.schedule(["a", "b"]).makespan                 # both on x: 1 + 2
        3.0
    """

    def __init__(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel):
        if not isinstance(cluster, Cluster):
            raise PolicyError(f"cluster must be an executors.devices.Cluster, got {type(cluster).__name__}")
        if not isinstance(cost_model, CostModel):
            raise PolicyError(f"cost_model must be a policies.cost.CostModel, got {type(cost_model).__name__}")
        self.graph = graph
        self.cluster = cluster
        self.cost_model = cost_model
        self.nodes: list = list(graph.nodes)
        self.index: dict = {n: i for i, n in enumerate(self.nodes)}
        self.devices: tuple[str, ...] = tuple(cluster.names)
        self.dindex: dict[str, int] = {d: j for j, d in enumerate(self.devices)}
        self.edges: list = list(graph.edges)
        self.eindex: dict = {e: k for k, e in enumerate(self.edges)}
        n, m = len(self.nodes), len(self.devices)
        T = np.asarray(cost_model.time_matrix(graph, self.nodes, self.devices), dtype=float)
        if T.shape != (n, m):
            raise PolicyError(f"cost model's time_matrix has shape {T.shape}, expected {(n, m)}")
        bad = np.argwhere(np.isnan(T) | (T < 0))
        if len(bad):
            i, j = bad[0]
            raise PolicyError(f"cost model gives node {self.nodes[i]!r} on device {self.devices[j]!r} "
                              f"an invalid time {T[i, j]!r}; times must be >= 0")
        if self.edges:
            C = np.asarray(cost_model.edge_time_matrix(graph, self.edges, self.devices), dtype=float)
        else:
            C = np.zeros((0, m, m))
        if C.shape != (len(self.edges), m, m):
            raise PolicyError(f"cost model's edge_time_matrix has shape {C.shape}, expected {(len(self.edges), m, m)}")
        bad = np.argwhere(~np.isfinite(C) | (C < 0))
        if len(bad):
            e, a, b = bad[0]
            raise PolicyError(f"cost model gives edge {self.edges[e]!r} from {self.devices[a]!r} to "
                              f"{self.devices[b]!r} an invalid transfer time {C[e, a, b]!r}; must be finite and >= 0")
        self.T, self.C = T, C
        self.preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.succs: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for k, (u, v) in enumerate(self.edges):
            iu, iv = self.index[u], self.index[v]
            self.preds[iv].append((iu, k))
            self.succs[iu].append((iv, k))
        self.mem = np.array([float(cost_model.node_memory(graph, x)) for x in self.nodes])
        self.capacity = np.array([
            (s.mem_capacity if s is not None else _INF) for s in (cluster.spec(d) for d in self.devices)
        ], dtype=float)
        self.topo: list[int] = [self.index[x] for x in nx.topological_sort(graph)]
        # plain-Python copies: scalar access on lists is much faster than on numpy arrays
        # (``_C`` flat, index ``(e * m + a) * m + b``: floats are not tracked by the garbage
        # collector, nested lists are, and thousands of them make ``tolist`` trigger full
        # collections that cost more than the whole schedule)
        self._T = T.tolist()
        self._C = C.ravel().tolist()
        self._mem = self.mem.tolist()
        self._cap = self.capacity.tolist()
        # for the fixed-assignment path, which needs the ready time on one device only:
        # ``_Cto[b][e * m + a]`` is ``C[e, a, b]`` and ``_pin[i]`` lists ``(p, e * m)``
        self._Cto = [np.ascontiguousarray(C[:, :, b]).ravel().tolist() for b in range(m)]
        self._pin: list[list[tuple[int, int]]] = [[(p, e * m) for p, e in ps] for ps in self.preds]
        self._tails: list[float] | None = None
        self._nogate = [_INF] * n

    # ------------------------------------------------------------------ helpers
    def mean_node_time(self) -> np.ndarray:
        """Per node, its mean time over the devices that can run it (HEFT's ``w̄_i``)."""
        finite = np.isfinite(self.T)
        cnt = finite.sum(axis=1)
        tot = np.where(finite, self.T, 0.0).sum(axis=1)
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), _INF)

    def mean_edge_time(self) -> np.ndarray:
        """Per edge, its mean transfer time over ordered pairs of distinct devices (HEFT's ``c̄_ij``)."""
        m = len(self.devices)
        if m < 2 or not self.edges:
            return np.zeros(len(self.edges))
        return self.C.sum(axis=(1, 2)) / (m * (m - 1))

    def min_node_time(self) -> np.ndarray:
        """Per node, its fastest time over all devices."""
        return self.T.min(axis=1)

    def critical_path_bound(self) -> float:
        """Lower bound on any makespan: the longest path with each node at its fastest time
        and free communication (the SLR denominator, Topcuoglu et al. 2002 sec. 5.1)."""
        w = self.min_node_time().tolist()
        best = [0.0] * len(self.nodes)
        for i in self.topo:
            b = max((best[p] for p, _ in self.preds[i]), default=0.0)
            best[i] = b + w[i]
        return max(best, default=0.0)

    def _tail_bound(self) -> list[float]:
        """Per node, a lower bound on (makespan - its finish) in any schedule: the longest
        path after it with fastest times and free transfers, shrunk by a relative 1e-9 so
        that float round-off can never make ``finish + tail`` exceed the true makespan."""
        if self._tails is None:
            w = self.min_node_time().tolist()
            tail = [0.0] * len(self.nodes)
            for i in reversed(self.topo):
                t = 0.0
                for s, _ in self.succs[i]:
                    x = w[s] + tail[s]
                    if x > t:
                        t = x
                tail[i] = t
            self._tails = [t * (1 - 1e-9) for t in tail]
        return self._tails

    def priority_indices(self, priority: Sequence[Hashable]) -> list[int]:
        """Node indices of ``priority``; raises :class:`PolicyError` unless it is a
        topological order of every node exactly once."""
        prio = list(priority)
        try:
            idx = [self.index[x] for x in prio]
        except KeyError as e:
            raise PolicyError(f"priority names node {e.args[0]!r}, which is not in the graph") from None
        if len(idx) != len(self.nodes) or len(set(idx)) != len(idx):
            missing = [self.nodes[i] for i in sorted(set(range(len(self.nodes))) - set(idx))]
            dup = sorted({x for x in prio if prio.count(x) > 1}, key=str)
            raise PolicyError(f"priority must list every node exactly once; missing {missing[:5]!r}, "
                              f"repeated {dup[:5]!r}")
        pos = [0] * len(idx)
        for k, i in enumerate(idx):
            pos[i] = k
        for (u, v) in self.edges:
            if pos[self.index[u]] > pos[self.index[v]]:
                raise PolicyError(f"priority is not a topological order: {v!r} comes before its "
                                  f"predecessor {u!r}")
        return idx

    # ------------------------------------------------------------------ engine
    def _run(self, prio: list[int], assign: list[int] | None, choose: Choose | None,
             insertion: bool, opts: Mapping[str, Any], want_plan: bool = True,
             powered: Sequence[bool] | None = None):
        """Schedule ``prio`` (node indices); returns ``(dev, start, finish, slots, resident,
        makespan, fallbacks)`` (``slots[j]``: node indices on device ``j`` by start; with
        ``want_plan=False`` on the fixed-assignment path ``start`` and ``slots`` may be
        left empty: only the makespan is wanted). ``powered`` (energy greedy only): per
        device, True if its idle power is to be counted from the start."""
        n, m = len(self.nodes), len(self.devices)
        T, C, preds, mem, cap = self._T, self._C, self.preds, self._mem, self._cap
        names, devices = self.nodes, self.devices
        respect_memory = bool(opts.get("respect_memory", True))
        strict = bool(opts.get("strict", False))
        bound = opts.get("latency_bound")
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                  or math.isnan(bound) or bound < 0):
            raise PolicyError(f"latency_bound must be a number of seconds >= 0 (or None), got {bound!r}")
        energy = opts.get("objective", "latency") == "energy" and choose is None and assign is None
        if assign is not None and choose is None and self._fits_as_assigned(prio, assign, respect_memory):
            out = self._run_fixed(prio, assign, insertion, want_plan)
            _check_bound(out[5], bound)
            return out
        if energy:
            powers = self._powers()
            slack = opts.get("energy_slack", 0.1)
            if isinstance(slack, bool) or not isinstance(slack, (int, float)) or not slack >= 0:
                raise PolicyError(f"energy_slack must be >= 0, got {slack!r}")
            used = [bool(x) for x in powered] if powered is not None else [False] * m
            busy_idle = sum(powers[j][1] for j in range(m) if used[j])  # W, idle power of used devices
            proj = 0.0       # seconds, lower bound of the final makespan so far
            tails = self._tail_bound()
        dev = [-1] * n
        start = [0.0] * n
        finish = [0.0] * n
        starts: list[list[float]] = [[] for _ in range(m)]
        ends: list[list[float]] = [[] for _ in range(m)]
        slots: list[list[int]] = [[] for _ in range(m)]
        resident = [0.0] * m
        fallbacks: dict = {}
        devrange = range(m)
        zeros = [0.0] * m
        for i in prio:
            Ti = T[i]
            pr = preds[i]
            if pr:
                ready = [0.0] * m
                for p, e in pr:
                    fp = finish[p]
                    base = (e * m + dev[p]) * m
                    for j in devrange:
                        x = fp + C[base + j]
                        if x > ready[j]:
                            ready[j] = x
            else:
                ready = zeros
            mi = mem[i]
            if assign is not None:
                j = assign[i]
                if Ti[j] == _INF:
                    if strict:
                        raise InfeasiblePlacement(
                            f"node {names[i]!r} is assigned to device {devices[j]!r}, which cannot run it "
                            f"(strict=True); devices that can: {self._able(i) or '(none)'}")
                    cands = self._feasible(i, resident, respect_memory)
                    fallbacks[names[i]] = devices[j]
                elif respect_memory and resident[j] + mi > cap[j]:
                    short = resident[j] + mi - cap[j]
                    if strict:
                        raise InfeasiblePlacement(
                            f"node {names[i]!r} does not fit in the memory of device {devices[j]!r}: "
                            f"short by {format_bytes(short, exact=True)} (capacity "
                            f"{format_bytes(cap[j])}, already resident {format_bytes(resident[j])}, "
                            f"node needs {format_bytes(mi)}; strict=True)", shortfall=short)
                    cands = self._feasible(i, resident, respect_memory)
                    fallbacks[names[i]] = devices[j]
                else:
                    cands = [j]
            else:
                cands = self._feasible(i, resident, respect_memory)
            # earliest start on each candidate
            best_j = -1
            best_s = best_f = _INF
            best_k = 0
            if len(cands) == 1 and choose is None:
                best_j = cands[0]
                best_s, best_k = _slot(starts[best_j], ends[best_j], ready[best_j], Ti[best_j], insertion)
                best_f = best_s + Ti[best_j]
            elif choose is None and not energy:
                for j in cands:
                    s, k = _slot(starts[j], ends[j], ready[j], Ti[j], insertion)
                    f = s + Ti[j]
                    if f < best_f:
                        best_j, best_s, best_f, best_k = j, s, f, k
            else:
                found = {}
                for j in cands:
                    s, k = _slot(starts[j], ends[j], ready[j], Ti[j], insertion)
                    found[j] = (s, s + Ti[j], k)
                if energy:
                    best_j = self._energy_pick(found, powers, used, busy_idle, proj, tails[i], slack, bound)
                else:
                    pick = choose(names[i], {devices[j]: (v[0], v[1]) for j, v in found.items()})
                    best_j = self.dindex.get(pick, -1)
                    if best_j not in found:
                        raise PolicyError(
                            f"choose() returned {pick!r} for node {names[i]!r}; it must be one of the "
                            f"candidates {[devices[j] for j in found]}")
                best_s, best_f, best_k = found[best_j]
            j = best_j
            dev[i] = j
            start[i] = best_s
            finish[i] = best_f
            starts[j].insert(best_k, best_s)
            ends[j].insert(best_k, best_f)
            slots[j].insert(best_k, i)
            resident[j] += mi
            if energy:
                if not used[j]:
                    used[j] = True
                    busy_idle += powers[j][1]
                if best_f + tails[i] > proj:
                    proj = best_f + tails[i]
        makespan = max(finish, default=0.0)
        _check_bound(makespan, bound)
        return dev, start, finish, slots, resident, makespan, fallbacks

    def _fits_as_assigned(self, prio: list[int], assign: list[int], respect_memory: bool) -> bool:
        """True when no node of ``assign`` needs a fallback: every node's device can run it
        and (with ``respect_memory``) every device's total fits. Resident bytes only grow,
        and float partial sums of non-negative terms taken in ``prio`` order never exceed
        the total, so the total fitting means every node fits when it is placed."""
        T = self._T
        try:
            if any(T[i][assign[i]] == _INF for i in prio):
                return False
        except (IndexError, TypeError):
            return False
        if not respect_memory:
            return True
        cap, mem = self._cap, self._mem
        if all(c == _INF for c in cap):
            return True
        res = [0.0] * len(self.devices)
        for i in prio:
            res[assign[i]] += mem[i]
        return all(r <= c for r, c in zip(res, cap))

    def _run_fixed(self, prio: list[int], assign: list[int], insertion: bool, want_plan: bool):
        """:meth:`_run` for an assignment that needs no fallback: the data-ready time is
        computed on the assigned device only."""
        n, m = len(self.nodes), len(self.devices)
        finish = [0.0] * n
        resident = [0.0] * m
        mem = self._mem
        for i in prio:
            resident[assign[i]] += mem[i]
        if not insertion:
            start = [0.0] * n if want_plan else None
            makespan = self._append(prio, assign, 0, len(prio), finish, [0.0] * m, 0.0, _INF, None,
                                    start, None)
            slots: list[list[int]] = [[] for _ in range(m)]
            if want_plan:
                for i in prio:  # appended: a device's order is the priority order
                    slots[assign[i]].append(i)
            return list(assign), start or [], finish, slots, resident, makespan, {}
        T, Cto, pin = self._T, self._Cto, self._pin
        start = [0.0] * n
        starts: list[list[float]] = [[] for _ in range(m)]
        ends: list[list[float]] = [[] for _ in range(m)]
        slots = [[] for _ in range(m)]
        makespan = 0.0
        for i in prio:
            j = assign[i]
            Cj = Cto[j]
            r = 0.0
            for p, em in pin[i]:
                x = finish[p] + Cj[em + assign[p]]
                if x > r:
                    r = x
            d = T[i][j]
            s, k = _slot(starts[j], ends[j], r, d, True)
            f = s + d
            start[i] = s
            finish[i] = f
            if f > makespan:
                makespan = f
            starts[j].insert(k, s)
            ends[j].insert(k, f)
            if want_plan:
                slots[j].insert(k, i)
        return list(assign), start, finish, slots, resident, makespan, {}

    def _append(self, prio: Sequence[int], assign: Sequence[int], k: int, end: int,
                finish: list[float], last: list[float], makespan: float, cutoff: float,
                bound: tuple | None, start: list[float] | None, snaps: list | None) -> float:
        """The append-only (``insertion=False``) loop for a fixed assignment that needs no
        fallback, over positions ``k .. end - 1`` of ``prio``.

        ``finish`` holds the finish of every node before position ``k`` (the others are
        overwritten), ``last[j]`` the finish of the last node on device ``j`` and ``makespan``
        the largest finish so far; ``finish`` and ``last`` are updated in place. ``start``,
        if given, receives start times. ``snaps``, if given, gets ``(makespan, list(last))``
        appended before each position (and, at ``end == len(prio)``, after the last), so a
        later run can resume at any position. Returns the makespan so far, or a lower bound
        (``>= cutoff``) of the final makespan as soon as one reaches ``cutoff``.

        ``bound`` is ``(tail, gate, floor)``: the final makespan is at least a node's finish
        plus ``tail[node]``, and at least ``floor`` once a node finishes at or after
        ``gate[node]``. Default (None): :meth:`_tail_bound` and no gates.
        """
        T, Cto, pin = self._T, self._Cto, self._pin
        if cutoff == _INF:
            tail = None
        else:
            tail, gate, floor = bound if bound is not None else (self._tail_bound(), self._nogate, 0.0)
        for pos in range(k, end):
            if snaps is not None:
                snaps.append((makespan, list(last)))
            i = prio[pos]
            j = assign[i]
            Cj = Cto[j]
            s = last[j]
            for p, em in pin[i]:
                x = finish[p] + Cj[em + assign[p]]
                if x > s:
                    s = x
            f = s + T[i][j]
            finish[i] = f
            last[j] = f
            if start is not None:
                start[i] = s
            if f > makespan:
                makespan = f
            if tail is not None:
                b = f + tail[i]
                if b >= cutoff:
                    return b
                if f >= gate[i]:
                    return floor
        if snaps is not None and end == len(prio):
            snaps.append((makespan, list(last)))
        return makespan

    def _able(self, i: int) -> str:
        return ", ".join(d for j, d in enumerate(self.devices) if self._T[i][j] != _INF)

    def _feasible(self, i: int, resident: list[float], respect_memory: bool) -> list[int]:
        Ti, mi, cap = self._T[i], self._mem[i], self._cap
        able = [j for j in range(len(self.devices)) if Ti[j] != _INF]
        if not able:
            raise InfeasiblePlacement(f"no device of {list(self.devices)} can run node {self.nodes[i]!r}")
        if not respect_memory:
            return able
        fit = [j for j in able if resident[j] + mi <= cap[j]]
        if not fit:
            short = min(resident[j] + mi - cap[j] for j in able)
            raise InfeasiblePlacement(
                f"node {self.nodes[i]!r} ({format_bytes(mi, exact=True)}) fits on no device that can "
                f"run it: memory is short by at least {format_bytes(short, exact=True)} (devices "
                f"{', '.join(self.devices[j] for j in able)})",
                shortfall=short)
        return fit

    def _powers(self) -> list[tuple[float, float]]:
        out = []
        for d in self.devices:
            p = self.cost_model.power(d)
            if p is None:
                raise PolicyError(f"objective 'energy' needs device powers, but cost model "
                                  f"{type(self.cost_model).__name__} knows none for device {d!r}")
            out.append((float(p[0]), float(p[1])))
        return out

    def _energy_pick(self, found, powers, used, busy_idle, proj, tail, slack, bound) -> int:
        """The candidate device (``found``: index -> (start, finish, slot)) within the slack
        whose placement least raises the energy lower bound ``sum (active - idle) * busy +
        makespan_lb * sum idle`` (``proj``: the makespan lower bound so far, ``tail``: the
        node's tail bound)."""
        min_f = min(v[1] for v in found.values())
        limit = min_f * (1 + slack) if min_f > 0 else min_f
        best_j, best_e = -1, _INF
        for j, (s, f, _) in found.items():
            if f > limit + 1e-12 * max(1.0, abs(limit)) and f != min_f:
                continue
            if bound is not None and f > bound and f != min_f:
                continue
            act, idle = powers[j]
            new_idle = busy_idle + (0.0 if used[j] else idle)
            end = f + tail
            new_proj = end if end > proj else proj
            de = (act - idle) * (f - s) + new_proj * new_idle - proj * busy_idle
            if de < best_e - 1e-15 or (abs(de - best_e) <= 1e-15 and f < found[best_j][1]):
                best_j, best_e = j, de
        return best_j

    def _schedule_energy(self, prio: list[int], insertion: bool, opts: Mapping[str, Any], policy: str) -> Plan:
        """The least-energy plan among the earliest-finish schedule and energy-greedy ones
        (see the module docstring); raises the first candidate's InfeasiblePlacement when
        none is feasible."""
        plans: list[tuple[tuple[float, float, int], Plan]] = []
        errors: list[InfeasiblePlacement] = []
        tried: set[tuple[bool, ...]] = set()

        def attempt(label: str, run_opts: Mapping[str, Any], powered: tuple[bool, ...] | None) -> Plan | None:
            if powered is not None:
                if powered in tried:
                    return None
                tried.add(powered)
            try:
                out = self._run(prio, None, None, insertion, run_opts, powered=powered)
            except InfeasiblePlacement as e:
                errors.append(e)
                return None
            plan = self._plan(prio, out, insertion, opts, policy, {"energy_candidate": label})
            plans.append(((_INF if plan.energy is None else plan.energy, plan.makespan, len(plans)), plan))
            return plan

        def used(plan: Plan) -> tuple[bool, ...]:
            return tuple(bool(plan.order[d]) for d in self.devices)

        attempt("greedy", opts, tuple([False] * len(self.devices)))
        eft = attempt("eft", {**opts, "objective": "latency"}, None)
        if eft is not None:
            attempt("greedy-powered", opts, used(eft))
        def best() -> Plan:
            return min(plans, key=lambda kp: kp[0])[1]

        for _ in range(2):  # the best plan's devices, until that set repeats
            if not plans or attempt("greedy-powered", opts, used(best())) is None:
                break
        if not plans:
            raise errors[0]
        return best()

    def _plan(self, prio: list[int], out: tuple, insertion: bool, opts: Mapping[str, Any], policy: str,
              extra: Mapping[str, Any] | None = None) -> Plan:
        """A :class:`Plan` (with its energy, where the cost model knows power) from ``_run``'s output."""
        dev, start, finish, slots, resident, makespan, fallbacks = out
        names, devices = self.nodes, self.devices
        info: dict[str, Any] = {"insertion": bool(insertion), **(extra or {})}
        if fallbacks:
            info["fallbacks"] = {str(k): v for k, v in fallbacks.items()}
        plan = Plan(
            assignment={names[i]: devices[dev[i]] for i in prio},
            order={d: tuple(names[i] for i in slots[j]) for j, d in enumerate(devices)},
            start={names[i]: start[i] for i in prio},
            finish={names[i]: finish[i] for i in prio},
            makespan=makespan,
            memory={d: resident[j] for j, d in enumerate(devices)},
            objective=opts.get("objective", "latency"),
            policy=policy,
            info=info,
        )
        e = self.cost_model.energy(self.graph, plan)
        if e is not None:
            plan = dataclasses.replace(plan, energy=float(e))
        return plan

    # ------------------------------------------------------------------ public
    def schedule(self, priority: Sequence[Hashable], *, assignment: Mapping[Hashable, str] | None = None,
                 choose: Choose | None = None, insertion: bool = True,
                 options: Mapping[str, Any] | None = None, policy: str = "") -> Plan:
        """List-schedule the nodes in ``priority`` order; see :func:`list_schedule`."""
        opts = dict(options or {})
        prio = self.priority_indices(priority)
        if opts.get("objective", "latency") == "energy" and choose is None and assignment is None:
            return self._schedule_energy(prio, insertion, opts, policy)
        assign = self._assign_indices(assignment) if assignment is not None else None
        out = self._run(prio, assign, choose, insertion, opts)
        return self._plan(prio, out, insertion, opts, policy)

    def makespan(self, priority: Sequence[Hashable], assignment: Mapping[Hashable, str], *,
                 insertion: bool = True, options: Mapping[str, Any] | None = None) -> float:
        """Makespan of ``assignment`` scheduled in ``priority`` order, without building a Plan.

        Raises :class:`InfeasiblePlacement` like :meth:`schedule` does.
        """
        prio = self.priority_indices(priority)
        return self._run(prio, self._assign_indices(assignment), None, insertion, dict(options or {}),
                         want_plan=False)[5]

    def makespan_indices(self, prio: Sequence[int], assign: Sequence[int], *, insertion: bool = True,
                         options: Mapping[str, Any] | None = None) -> float:
        """Fastest evaluation for search loops: ``prio`` node indices in a topological order
        (not checked) and ``assign[i]`` the device index of node ``i``.

        Each node's data-ready time is computed on its assigned device only (unless it
        needs a fallback); for many assignments that share a prefix of the schedule,
        :class:`policies.incremental.IncrementalSchedule` resumes instead of starting over."""
        return self._run(prio if isinstance(prio, list) else list(prio),
                         assign if isinstance(assign, list) else list(assign),
                         None, insertion, dict(options or {}), want_plan=False)[5]

    def times_indices(self, prio: Sequence[int], assign: Sequence[int], *, insertion: bool = True,
                      options: Mapping[str, Any] | None = None) -> tuple[list[float], list[float], float]:
        """``(start, finish, makespan)`` of :meth:`makespan_indices`'s schedule, without a
        Plan: ``start[i]`` / ``finish[i]`` per node index. A fallback moves a node to
        another device; only :meth:`schedule` records which."""
        out = self._run(prio if isinstance(prio, list) else list(prio),
                        assign if isinstance(assign, list) else list(assign),
                        None, insertion, dict(options or {}), want_plan=True)
        return out[1], out[2], out[5]

    def _assign_indices(self, assignment: Mapping[Hashable, str]) -> list[int]:
        out = [-1] * len(self.nodes)
        for x, d in assignment.items():
            if x not in self.index:
                raise PolicyError(f"assignment names node {x!r}, which is not in the graph")
            if d not in self.dindex:
                from graphs.errors import UnknownNameError

                raise UnknownNameError("device", d, self.devices)
            out[self.index[x]] = self.dindex[d]
        missing = [self.nodes[i] for i, j in enumerate(out) if j < 0]
        if missing:
            raise PolicyError(f"assignment misses {len(missing)} node(s), e.g. {missing[:5]!r}")
        return out


def _check_bound(makespan: float, bound: float | None) -> None:
    if bound is not None and makespan > bound * (1 + 1e-12):
        raise InfeasiblePlacement(
            f"makespan {makespan:.6g} s exceeds latency_bound {bound:.6g} s by {makespan - bound:.6g} s",
            shortfall=makespan - bound)


def _slot(starts: list[float], ends: list[float], ready: float, dur: float, insertion: bool) -> tuple[float, int]:
    """Earliest start >= ``ready`` on a device with busy intervals ``starts``/``ends``
    (sorted, disjoint) and the position to insert at."""
    L = len(starts)
    if not L:
        return ready, 0
    if not insertion:
        e = ends[-1]
        return (ready if ready > e else e), L
    # slots starting at or before `ready` stay before the node (never insert before a
    # zero-length predecessor that starts exactly at `ready`)
    k = bisect_right(starts, ready)
    cand = ready
    if k and ends[k - 1] > cand:
        cand = ends[k - 1]
    while k < L:
        if cand + dur <= starts[k]:
            return cand, k
        e = ends[k]
        if e > cand:
            cand = e
        k += 1
    return cand, L


def list_schedule(graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel,
                  priority: Sequence[Hashable], *, assignment: Mapping[Hashable, str] | None = None,
                  choose: Choose | None = None, insertion: bool = True,
                  options: Mapping[str, Any] | None = None, context: ScheduleContext | None = None,
                  policy: str = "") -> Plan:
    """Schedule ``graph`` on ``cluster``, taking nodes in ``priority`` order.

    Args:
        priority: every node once, in a topological order (else :class:`PolicyError`).
        assignment: node -> device. Each node goes to its device at its earliest start
            (how a search evaluates a re-assignment). Without it, each node goes to the
            feasible device with the earliest finish time, or to ``choose(node,
            {device: (est, eft)})``'s pick among the feasible devices.
        insertion: place into the earliest long-enough idle gap (True) or append (False).
        options: a policy's options (``objective``, ``latency_bound``, ``strict``,
            ``respect_memory``, ``energy_slack``); see the module docstring.
        context: a :class:`ScheduleContext` of the same graph, cluster and cost model, to
            skip the precomputation.

    Returns:
        A :class:`Plan` with assignment, per-device order (sorted by start), start and finish
        times, makespan, energy (None where the cost model knows no power) and resident
        memory per device.

    Raises:
        PolicyError: ``priority`` is not a topological order of the graph.
        InfeasiblePlacement: a node fits on no device (memory short by how much), a strict
            assignment to a device that cannot run a node, or a latency bound exceeded.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 1, "y": 1}}, {("a", "b"): 9})
        >>> list_schedule(g, Cluster.from_names(["x", "y"]), cm, ["a", "b"],
        ...               assignment={"a": "x", "b": "y"}).finish["b"]
        11.0
    """
    ctx = context if context is not None else ScheduleContext(graph, cluster, cost_model)
    return ctx.schedule(priority, assignment=assignment, choose=choose, insertion=insertion,
                        options=options, policy=policy)


# re-exported: the incremental schedule lives in its own module (it imports this one's names)
from .incremental import IncrementalSchedule  # noqa: E402
