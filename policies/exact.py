"""``exact``: optimal placement of small graphs by mixed-integer linear programming.

A disjunctive (not time-indexed) MILP for makespan (or energy) minimisation of a DAG on
heterogeneous devices with communication delays, in the family of formulations compared
by Venugopalan & Sinnen (*ILP formulations for optimal task scheduling with communication
delays on parallel systems*, IEEE TPDS 26(1), 2015), extended to unrelated devices, per
device-pair transfer times and memory capacity. It is solved by HiGHS (``highspy``) with a time
limit. The best heuristic plan is the incumbent: its makespan bounds ``C`` and tightens
every big-M. (It is *not* passed to HiGHS as a MIP start: with ``setSolution`` HiGHS 1.15
was seen to stop with a false "optimal" above a known solution on a 14-node instance;
without it the same model solves to the true optimum.)

Variables (``n`` nodes, ``m`` devices):

* ``x[i, d]`` binary: node ``i`` runs on device ``d`` (fixed to 0 where ``d`` cannot run it);
  ``sum_d x[i, d] = 1``. The duration of ``i`` is ``p_i = sum_d T[i, d] x[i, d]``.
* ``s[i] >= 0``: start time of ``i``; ``C`` the makespan.
* Precedence with communication, for each edge ``u -> v`` and each device pair
  ``a != b``: ``s[v] >= s[u] + p_u + c_uv(a, b) (x[u, a] + x[v, b] - 1)`` (and
  ``s[v] >= s[u] + p_u``), so the transfer is paid exactly when the endpoints are on
  ``a`` and ``b`` without any product variable.
* No overlap on a device, for each pair ``{i, j}`` that is not ordered by precedence
  (transitively ordered pairs can never overlap) and can share a device: a binary
  ``o[i, j]`` (``i`` first) and ``y[i, j] >= x[i, d] + x[j, d] - 1`` (same device), with
  big-M disjunctions deactivated when ``y = 0``.
* Memory capacity: ``sum_i mem_i x[i, d] <= capacity_d`` (a knapsack per device; ``mem_i``
  is :meth:`CostModel.node_memory`: resident parameters plus the output, all kept).
* Valid inequalities that tighten the LP bound: ``C >= load_d`` (the busy time of every
  device), ``s[i] >= head_i`` and ``s[i] + p_i + tail_i <= C`` (longest paths with the
  fastest device times and no communication), and ``C <= `` the heuristic makespan.

Nodes only ever go to devices that can run them, so ``strict`` changes nothing here; a
node that no device can run is an :class:`InfeasiblePlacement` naming it, and a graph that
cannot fit the devices' memory in any placement is one that says by how many bytes.

Objective ``latency`` minimises ``C``. Objective ``energy`` minimises
``sum_d active_d busy_d + idle_d (C - busy_d)`` over the devices used (an exact
linearisation with a binary ``used_d``), under ``C <= latency_bound`` when one is given.

The solution's assignment and its order by start times are replayed through the shared
list-scheduling engine (:func:`policies.schedule.list_schedule`), so the plan's times are
exactly the cost model's; replaying never makes the makespan longer than the MILP's. The
plan is never worse than the heuristic incumbent: at a time limit with a worse (or no)
solution the incumbent is returned, with the solver's lower bound and gap.

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> g = nx.DiGraph([("a", "b"), ("a", "c")])
    >>> cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 2, "y": 2}, "c": {"x": 2, "y": 2}},
    ...                     {("a", "b"): 1, ("a", "c"): 1})
    >>> plan = Exact().place(g, Cluster.from_names(["x", "y"]), cm)
    >>> plan.makespan, plan.info["status"]
    (4.0, 'optimal')
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any, Hashable, Sequence

import networkx as nx
import numpy as np

from executors.devices import Cluster
from graphs.units import format_bytes

from .base import Policy, register
from .cost import CostModel
from .errors import InfeasiblePlacement, PolicyError
from .plan import Plan
from .schedule import ScheduleContext

#: HiGHS model statuses mapped to the plan's ``info["status"]``.
_STATUS = {"Optimal": "optimal", "Time limit reached": "time_limit", "Infeasible": "infeasible"}


# ---------------------------------------------------------------------------- problem data
class Problem:
    """The numeric view of one placement problem, shared by ``exact``, ``search`` and ``auto``.

    Built on the shared engine's :class:`policies.schedule.ScheduleContext` (``ctx``), whose
    arrays it exposes: ``nodes``, ``devices``, ``T[i, d]`` node times (``inf`` where
    unsupported), ``edges`` as index pairs with ``C[e, a, b]`` transfer times, ``preds`` /
    ``succs``, ``order`` (a topological order of indices), ``mem[i]`` resident bytes,
    ``cap[d]`` capacities (``inf`` when unknown or when memory is not respected) and
    ``power`` (``[m, 2]`` active/idle watts, or None).

    Raises :class:`InfeasiblePlacement` when a node can run on no device, naming it.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 1}}, {("a", "b"): 5})
        >>> p = Problem(g, Cluster.from_names(["x", "y"]), cm)
        >>> p.T.tolist(), p.C[0].tolist()
        ([[1.0, 2.0], [3.0, 1.0]], [[0.0, 5.0], [5.0, 0.0]])
    """

    def __init__(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel,
                 respect_memory: bool = True, context: ScheduleContext | None = None):
        ctx = context if context is not None else ScheduleContext(graph, cluster, cost_model)
        self.ctx = ctx
        self.graph = graph
        self.cost_model = cost_model
        self.nodes: list[Hashable] = ctx.nodes
        self.index = ctx.index
        self.devices: tuple[str, ...] = ctx.devices
        self.T = ctx.T
        bad = [self.nodes[i] for i in range(len(self.nodes)) if not np.isfinite(self.T[i]).any()]
        if bad:
            kind = graph.nodes[bad[0]].get("kind", "?")
            raise InfeasiblePlacement(
                f"node {bad[0]!r} (kind {kind!r}) can run on no device of the cluster "
                f"({', '.join(self.devices)}); add a device that supports it"
            )
        self.edges = [(ctx.index[u], ctx.index[v]) for u, v in ctx.edges]
        self.C = ctx.C
        self.preds, self.succs = ctx.preds, ctx.succs
        self.order: list[int] = list(ctx.topo)
        self.mem = ctx.mem
        self.cap = ctx.capacity.copy() if respect_memory else np.full(len(self.devices), np.inf)
        pw = [cost_model.power(d) for d in self.devices]
        self.power = None if any(p is None for p in pw) else np.array(pw, dtype=float)

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def m(self) -> int:
        return len(self.devices)

    def allowed(self, i: int) -> list[int]:
        """Device indices that can run node ``i`` and hold it alone."""
        return [d for d in range(self.m) if np.isfinite(self.T[i, d]) and self.mem[i] <= self.cap[d]]

    def schedule(self, assignment: Sequence[int], priority: Sequence[int], options: dict | None = None) -> Plan:
        """The engine's plan for device indices ``assignment`` taken in ``priority`` (indices) order."""
        opts = {k: v for k, v in (options or {}).items() if k in ("strict", "respect_memory")}
        return self.ctx.schedule([self.nodes[i] for i in priority],
                                 assignment={v: self.devices[assignment[i]] for i, v in enumerate(self.nodes)},
                                 options=opts)

    def energy(self, assignment: Sequence[int], makespan: float) -> float:
        """Energy of one request (:func:`policies.cost.plan_energy`'s model) from the
        assignment and the makespan alone: busy time does not depend on the order."""
        busy = np.zeros(self.m)
        for i, d in enumerate(assignment):
            busy[d] += self.T[i, d]
        used = np.zeros(self.m, dtype=bool)
        used[list(set(assignment))] = True
        act, idle = self.power[:, 0], self.power[:, 1]
        return float((act * busy + idle * np.maximum(makespan - busy, 0.0))[used].sum())


def memory_shortfall(problem: Problem, time_limit: float = 5.0) -> float:
    """Least total bytes the device capacities must grow by for every node to fit (0 if it fits).

    A first-fit-decreasing packing settles the common case; otherwise a small bin-packing
    MILP (minimise the total overflow) is solved with HiGHS. At its time limit the best
    overflow known is returned (then an upper bound of the least shortfall).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster, DeviceSpec
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph(); g.add_nodes_from([("a", {"param_bytes": 6}), ("b", {"param_bytes": 6})])
        >>> d = [DeviceSpec(n, "cpu", {"float32": 1.0}, 1.0, 8.0) for n in ("x", "y")]
        >>> cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 1, "y": 1}}, {})
        >>> memory_shortfall(Problem(g, Cluster.from_specs(d), cm))
        0.0
    """
    n, m = problem.n, problem.m
    finite = np.isfinite(problem.cap)
    if not finite.any() or problem.mem.sum() <= 0 or _greedy_fits(problem):
        return 0.0
    # variables: x[i, d] (n*m) then overflow o[d] (m); rows: one device per node, capacity
    rows = [([i * m + d for d in range(m)], [1.0] * m, 1.0, 1.0) for i in range(n)]
    for d in range(m):
        rows.append(([i * m + d for i in range(n)] + [n * m + d], list(problem.mem) + [-1.0],
                     -np.inf, problem.cap[d] if finite[d] else np.inf))
    upper = np.concatenate([np.isfinite(problem.T).astype(float).ravel(), np.full(m, np.inf)])
    cost = np.concatenate([np.zeros(n * m), np.ones(m)])
    integ = np.concatenate([np.ones(n * m), np.zeros(m)]).astype(np.int32)
    h = _highs(cost, np.zeros(n * m + m), upper, integ, rows, time_limit, 1e-9, 1)
    h.run()
    info = h.getInfo()
    if info.primal_solution_status != 2:  # pragma: no cover - every node has a device
        return float(problem.mem.sum())
    return max(float(info.objective_function_value), 0.0)


def _greedy_fits(problem: Problem) -> bool:
    """First-fit decreasing onto the device with the most room left: True if all fit."""
    room = problem.cap.copy()
    for i in sorted(range(problem.n), key=lambda i: -problem.mem[i]):
        ds = [d for d in range(problem.m) if np.isfinite(problem.T[i, d])]
        d = max(ds, key=lambda d: room[d])
        if room[d] < problem.mem[i]:
            return False
        room[d] -= problem.mem[i]
    return True


_BANNER_LOCK = threading.Lock()
_banner_done = False  # True once this process has constructed a HiGHS instance


def new_highs():
    """A ``highspy.Highs`` with all console output off (``output_flag``, ``log_to_console``).

    HiGHS writes its banner ("Running HiGHS ... Copyright ...") to the C-level stdout
    from the first constructor call in a process, before any option can be set; that
    first construction therefore runs with file descriptor 1 pointed at the null device
    (C stdio flushed on both sides), so ``place --json`` output stays parseable.

    Example:
        >>> opts = new_highs().getOptions()
        >>> opts.output_flag, opts.log_to_console
        (False, False)
    """
    global _banner_done
    import highspy

    with _BANNER_LOCK:
        if _banner_done:
            h = highspy.Highs()
        else:
            h = _quietly(highspy.Highs)
            _banner_done = True
    h.setOptionValue("output_flag", False)
    h.setOptionValue("log_to_console", False)
    return h


def _quietly(make):
    """``make()`` with the process's file descriptor 1 redirected to the null device."""
    import ctypes

    try:
        libc_fflush = ctypes.CDLL(None).fflush
    except (OSError, AttributeError):  # no C library to flush: redirect anyway
        libc_fflush = None
    sys.stdout.flush()
    if libc_fflush is not None:
        libc_fflush(None)
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 at all: nothing to protect
        return make()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        try:
            return make()
        finally:
            if libc_fflush is not None:
                libc_fflush(None)
            os.dup2(saved, 1)
    finally:
        os.close(devnull)
        os.close(saved)


def _highs(cost, lower, upper, integ, rows, time_limit, rel_gap, threads):
    """A silent HiGHS instance holding the model; ``rows`` = [(cols, vals, lo, hi)]."""
    import highspy

    inf = highspy.kHighsInf
    starts = np.zeros(len(rows) + 1, dtype=np.int32)
    starts[1:] = np.cumsum([len(r[0]) for r in rows])
    h = new_highs()
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("mip_rel_gap", float(rel_gap))
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("random_seed", 0)
    lp = highspy.HighsLp()
    lp.num_col_ = len(cost)
    lp.num_row_ = len(rows)
    lp.col_cost_ = np.asarray(cost, dtype=float)
    lp.col_lower_ = np.asarray(lower, dtype=float)
    lp.col_upper_ = np.minimum(np.asarray(upper, dtype=float), inf)
    lp.row_lower_ = np.array([max(r[2], -inf) for r in rows], dtype=float)
    lp.row_upper_ = np.array([min(r[3], inf) for r in rows], dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = starts
    lp.a_matrix_.index_ = np.array([k for r in rows for k in r[0]], dtype=np.int32)
    lp.a_matrix_.value_ = np.array([x for r in rows for x in r[1]], dtype=float)
    lp.a_matrix_.num_col_ = len(cost)
    lp.a_matrix_.num_row_ = len(rows)
    lp.integrality_ = [highspy.HighsVarType(int(t)) for t in integ]
    h.passModel(lp)
    return h


def check_memory(problem: Problem) -> None:
    """Raise :class:`InfeasiblePlacement` with the shortfall when the nodes cannot fit.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster, DeviceSpec
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph(); g.add_nodes_from([("a", {"param_bytes": 6}), ("b", {"param_bytes": 6})])
        >>> d = [DeviceSpec("x", "cpu", {"float32": 1.0}, 1.0, 8.0)]
        >>> check_memory(Problem(g, Cluster.from_specs(d), TableCostModel({"a": {"x": 1}, "b": {"x": 1}}, {})))
        Traceback (most recent call last):
        ...
        policies.errors.InfeasiblePlacement: the graph needs 4 more bytes ... of device memory than ...
    """
    if not np.isfinite(problem.cap).any():
        return
    fits_alone = [problem.allowed(i) for i in range(problem.n)]
    worst = 0.0
    for i, ok in enumerate(fits_alone):
        if not ok:
            room = max(problem.cap[d] for d in range(problem.m) if np.isfinite(problem.T[i, d]))
            worst = max(worst, problem.mem[i] - room)
    short = max(worst, memory_shortfall(problem))
    if short > 0:
        raise InfeasiblePlacement(
            f"the graph needs {round(short):,} more bytes ({format_bytes(short)}) of device memory "
            f"than the cluster ({', '.join(f'{d}: {format_bytes(c)}' for d, c in zip(problem.devices, problem.cap))}) "
            f"can hold in any placement (total resident {format_bytes(problem.mem.sum(), exact=True)})",
            shortfall=short,
        )


def plan_objective(plan: Plan, objective: str) -> float:
    """The value a policy minimises for ``objective``: makespan, period or energy.

    Example:
        >>> p = Plan({"a": "x"}, {"x": ("a",)}, {"a": 0.0}, {"a": 2.0}, 2.0, energy=5.0)
        >>> plan_objective(p, "latency"), plan_objective(p, "energy")
        (2.0, 5.0)
    """
    if objective == "latency":
        return float(plan.makespan)
    if objective == "energy":
        return float("inf") if plan.energy is None else float(plan.energy)
    if objective == "throughput":
        return float(plan.period if plan.period is not None else plan.makespan)
    raise PolicyError(f"unknown objective {objective!r}; valid: latency, throughput, energy")


def plan_key(plan: Plan, objective: str, latency_bound: float | None = None) -> tuple:
    """Sort key of a plan: bound violation first, then the objective, then the makespan."""
    over = 0.0 if latency_bound is None else max(plan.makespan - latency_bound, 0.0)
    return (over, plan_objective(plan, objective), float(plan.makespan))


# ---------------------------------------------------------------------------- the MILP
def _longest(problem: Problem, w: np.ndarray, order: Sequence[int], preds: bool) -> np.ndarray:
    """head (preds=True: longest path before i) or tail (after i) with node weights ``w``."""
    out = np.zeros(problem.n)
    for i in order:
        nb = problem.preds[i] if preds else problem.succs[i]
        for j, _ in nb:
            out[i] = max(out[i], out[j] + w[j])
    return out


def topo_by(problem: Problem, key: Sequence[float]) -> list[int]:
    """A topological order of node indices that takes the ready node of smallest ``key``
    first (so a MILP's start times, even with solver round-off, give a valid priority).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")]); g.add_node("c")
        >>> cm = TableCostModel({v: {"x": 1} for v in "abc"}, {("a", "b"): 0})
        >>> p = Problem(g, Cluster.from_names(["x"]), cm)
        >>> [p.nodes[i] for i in topo_by(p, [5.0, 0.0, 1.0])]
        ['c', 'a', 'b']
    """
    import heapq

    indeg = [len(problem.preds[i]) for i in range(problem.n)]
    heap = [(key[i], i) for i in range(problem.n) if indeg[i] == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, i = heapq.heappop(heap)
        out.append(i)
        for j, _ in problem.succs[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, (key[j], j))
    return out


def solve_milp(problem: Problem, *, objective: str = "latency", incumbent: Plan | None = None,
               latency_bound: float | None = None, time_limit: float = 10.0,
               mip_rel_gap: float = 1e-7, threads: int = 1) -> dict[str, Any]:
    """Build and solve the MILP of the module docstring with HiGHS.

    Returns a dict: ``status`` (``"optimal"``, ``"time_limit"``, ``"infeasible"`` or the
    HiGHS status text), ``assignment`` (node index -> device index) and ``start``
    (node index -> start) of the best solution found or None, ``objective`` (its value),
    ``lower_bound`` (the solver's dual bound), ``gap`` (relative), ``nodes`` (branch and
    bound nodes) and ``columns`` / ``rows`` (the model size).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 1}}, {("a", "b"): 5})
        >>> r = solve_milp(Problem(g, Cluster.from_names(["x", "y"]), cm))
        >>> r["status"], round(r["objective"], 6), r["assignment"]
        ('optimal', 3.0, [1, 1])
    """
    import highspy

    n, m, T = problem.n, problem.m, problem.T
    ok = np.isfinite(T)
    Tz = np.where(ok, T, 0.0)
    order = problem.order
    tmin = np.where(ok, T, np.inf).min(axis=1)
    head = _longest(problem, tmin, order, preds=True)
    tail = _longest(problem, tmin, order[::-1], preds=False)
    # horizon: any list schedule of any assignment ends by this time
    horizon = float(np.where(ok, T, 0).max(axis=1).sum() + (problem.C.max(axis=(1, 2)).sum() if len(problem.edges) else 0.0))
    ub = horizon
    if incumbent is not None and objective == "latency":
        ub = min(ub, float(incumbent.makespan))
    if latency_bound is not None:
        ub = min(ub, float(latency_bound))
    M = ub + float(np.max(Tz)) + 1.0  # big-M; s and p are both below ub
    # transitive closure: pairs ordered by precedence never overlap
    reach = [set() for _ in range(n)]
    for i in reversed(order):
        for j, _ in problem.succs[i]:
            reach[i].add(j)
            reach[i] |= reach[j]
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            if j in reach[i] or i in reach[j]:
                continue
            common = [d for d in range(m) if ok[i, d] and ok[j, d]
                      and problem.mem[i] + problem.mem[j] <= problem.cap[d]]
            if common:
                pairs.append((i, j, common))
    energy = objective == "energy"
    if energy and problem.power is None:
        raise PolicyError("objective 'energy' needs a cost model that knows device power; "
                          "this one returns None from power()")
    # column layout
    X = 0
    S = n * m
    CM = S + n
    O = CM + 1
    Y = O + len(pairs)
    U = Y + len(pairs)  # used[d] (energy only)
    W = U + (m if energy else 0)  # w[d] = C * used[d] (energy only)
    ncol = W + (m if energy else 0)
    lower = np.zeros(ncol)
    upper = np.ones(ncol)
    integ = np.zeros(ncol, dtype=np.int32)
    upper[X:S] = ok.ravel().astype(float)
    integ[X:S] = 1
    lower[S:CM] = head
    upper[S:CM] = np.maximum(ub - tmin - tail, head)
    lower[CM] = float((head + tmin + tail).max())
    upper[CM] = ub
    integ[O:Y] = 1
    if energy:
        integ[U:W] = 1
        upper[W:ncol] = ub
    cost = np.zeros(ncol)
    if energy:
        act, idle = problem.power[:, 0], problem.power[:, 1]
        for i in range(n):
            for d in range(m):
                cost[X + i * m + d] = (act[d] - idle[d]) * Tz[i, d]
        cost[W:ncol] = idle
    else:
        cost[CM] = 1.0
    rows_idx: list[list[int]] = []
    rows_val: list[list[float]] = []
    rlo: list[float] = []
    rhi: list[float] = []
    inf = highspy.kHighsInf

    def row(idx, val, lo, hi):
        rows_idx.append(idx)
        rows_val.append(val)
        rlo.append(lo)
        rhi.append(hi)

    def dur(i, sign=1.0):  # +/- p_i as (idx, val) lists
        ds = [d for d in range(m) if ok[i, d]]
        return [X + i * m + d for d in ds], [sign * Tz[i, d] for d in ds]

    for i in range(n):  # one device each
        ds = [d for d in range(m) if ok[i, d]]
        row([X + i * m + d for d in ds], [1.0] * len(ds), 1.0, 1.0)
        # s_i + p_i + tail_i <= C
        di, dv = dur(i)
        row([S + i, CM] + di, [1.0, -1.0] + dv, -inf, -tail[i])
    for e, (u, v) in enumerate(problem.edges):
        di, dv = dur(u, -1.0)
        row([S + v, S + u] + di, [1.0, -1.0] + dv, 0.0, inf)
        for a in range(m):
            for b in range(m):
                c = problem.C[e, a, b]
                if a == b or c <= 0 or not ok[u, a] or not ok[v, b]:
                    continue
                idx = [S + v, S + u] + di + [X + u * m + a, X + v * m + b]
                val = [1.0, -1.0] + dv + [-c, -c]
                # merge duplicate column (x[u, a] appears in p_u too)
                merged: dict[int, float] = {}
                for k, x in zip(idx, val):
                    merged[k] = merged.get(k, 0.0) + x
                row(list(merged), list(merged.values()), -c, inf)
    for k, (i, j, common) in enumerate(pairs):
        for d in common:  # y >= x_id + x_jd - 1
            row([Y + k, X + i * m + d, X + j * m + d], [1.0, -1.0, -1.0], -1.0, inf)
        # i before j: s_j >= s_i + p_i - M(1 - o) - M(1 - y)
        di, dv = dur(i, -1.0)
        row([S + j, S + i] + di + [O + k, Y + k], [1.0, -1.0] + dv + [-M, -M], -2 * M, inf)
        # j before i: s_i >= s_j + p_j - M o - M(1 - y)
        dj, dw = dur(j, -1.0)
        row([S + i, S + j] + dj + [O + k, Y + k], [1.0, -1.0] + dw + [M, -M], -M, inf)
    for d in range(m):  # C >= load_d ; memory
        ids = [i for i in range(n) if ok[i, d]]
        row([CM] + [X + i * m + d for i in ids], [1.0] + [-Tz[i, d] for i in ids], 0.0, inf)
        if np.isfinite(problem.cap[d]) and problem.mem.sum() > problem.cap[d]:
            row([X + i * m + d for i in ids], [problem.mem[i] for i in ids], -inf, problem.cap[d])
        if energy:
            for i in ids:  # used_d >= x_id
                row([U + d, X + i * m + d], [1.0, -1.0], 0.0, inf)
            # w_d >= C - ub (1 - used_d)
            row([W + d, CM, U + d], [1.0, -1.0, -ub], -ub, inf)

    h = _highs(cost, lower, upper, integ,
               [(i, v, lo, hi) for i, v, lo, hi in zip(rows_idx, rows_val, rlo, rhi)],
               time_limit, mip_rel_gap, threads)
    h.run()
    status_text = h.modelStatusToString(h.getModelStatus())
    info = h.getInfo()
    status = _STATUS.get(status_text, status_text)
    out: dict[str, Any] = {"status": status, "assignment": None, "start": None,
                           "objective": None, "lower_bound": float(info.mip_dual_bound),
                           "gap": None, "nodes": int(info.mip_node_count),
                           "columns": ncol, "rows": len(rows_idx)}
    if info.primal_solution_status == 2:  # feasible
        x = np.asarray(h.getSolution().col_value)
        out["assignment"] = [int(np.argmax(x[X + i * m: X + (i + 1) * m])) for i in range(n)]
        out["start"] = [float(v) for v in x[S:CM]]
        out["objective"] = float(info.objective_function_value)
        out["gap"] = float(info.mip_gap)
    return out


# ---------------------------------------------------------------------------- the policy
@register
class Exact(Policy):
    """Optimal placement by MILP (HiGHS) for graphs up to ``max_nodes`` nodes.

    Options: ``time_limit`` (seconds, default 10), ``max_nodes`` (default 40: larger graphs
    are rejected, use ``search`` or ``auto``), ``seeds`` (heuristic policies whose best
    plan bounds the MILP and is the fallback, default HEFT, PEFT, CPOP, MCT),
    ``search_share`` (fraction of the time limit spent improving that plan with
    ``search`` first: a better incumbent tightens every big-M; default 0.1, 0 to skip;
    ``seed`` and ``max_evals`` go to that search), ``mip_rel_gap`` (relative gap at which
    HiGHS calls a solution optimal, default 1e-7), ``threads``.
    ``info`` records ``status`` (``"optimal"`` or ``"time_limit"``), ``lower_bound``,
    ``gap`` (relative, of the returned plan against the bound), ``incumbent`` (the seed's
    name and value) and ``source`` (``"milp"`` or the seed policy when it was kept).

    See the module docstring for the model.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 2, "y": 4}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 5}, "d": {"x": 3, "y": 1}}
        >>> cm = TableCostModel(t, {("a", "b"): 3, ("a", "c"): 0, ("b", "d"): 1, ("c", "d"): 3})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = Exact(seeds=("heft",), search_share=0).place(g, c, cm)  # HEFT alone makes 9
        >>> p.makespan, p.info["status"], p.info["source"], p.info["incumbent"]
        (8.0, 'optimal', 'milp', {'policy': 'heft', 'value': 9.0})
        >>> dict(p.order)
        {'x': ('a', 'b'), 'y': ('c', 'd')}
    """

    name = "exact"
    description = "MILP (HiGHS) optimum for small graphs, with time limit, bound and gap"
    objectives = ("latency", "energy")
    option_defaults = {"time_limit": 10.0, "max_nodes": 40, "seeds": ("heft", "peft", "cpop", "mct", "single"),
                       "search_share": 0.1, "seed": 0, "max_evals": None,
                       "mip_rel_gap": 1e-7, "threads": 1}

    def __init__(self, **options: Any):
        super().__init__(**options)
        tl = self.options["time_limit"]
        if not isinstance(tl, (int, float)) or isinstance(tl, bool) or not tl > 0:
            raise PolicyError(f"exact: time_limit must be a number of seconds > 0, got {tl!r}")
        sh = self.options["search_share"]
        if isinstance(sh, bool) or not isinstance(sh, (int, float)) or not 0 <= sh < 1:
            raise PolicyError(f"exact: search_share must be a number in [0, 1), got {sh!r}")
        mn = self.options["max_nodes"]
        if not isinstance(mn, int) or isinstance(mn, bool) or mn < 1:
            raise PolicyError(f"exact: max_nodes must be an int >= 1, got {mn!r}")

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        opts = self.options
        n = graph.number_of_nodes()
        if n > opts["max_nodes"]:
            raise PolicyError(
                f"exact: graph has {n} nodes, more than max_nodes={opts['max_nodes']}; the MILP "
                f"would not finish. Use policy 'search' or 'auto' for graphs this large, or raise max_nodes"
            )
        objective = opts["objective"]
        problem = Problem(graph, cluster, cost_model, respect_memory=opts["respect_memory"])
        if opts["respect_memory"]:
            check_memory(problem)
        t0 = time.perf_counter()
        incumbent, inc_name = best_seed(graph, cluster, cost_model, opts["seeds"], opts)
        share = float(opts["search_share"])
        if incumbent is not None and share > 0:
            from .search import improve_plan  # search builds on this module

            budget = share * max(float(opts["time_limit"]) - (time.perf_counter() - t0), 0.0)
            if budget > 0:
                improved = improve_plan(problem, incumbent, inc_name, dict(opts, latency_bound=None), budget)
                if plan_key(improved, opts["objective"]) < plan_key(incumbent, opts["objective"]):
                    incumbent, inc_name = improved, f"search({inc_name})"
        remaining = max(float(opts["time_limit"]) - (time.perf_counter() - t0), 0.05)
        return dataclasses.replace(solve_exact(problem, incumbent, inc_name, opts, remaining),
                                   policy=self.name)


def solve_exact(problem: Problem, incumbent: Plan | None, incumbent_name: str | None,
                options: dict[str, Any], time_limit: float) -> Plan:
    """Solve the MILP bounded by ``incumbent`` and return the better plan with its
    ``info`` (``status``, ``lower_bound``, ``gap``, ``source``, ``incumbent``, ...).

    ``options`` are a policy's options (``objective``, ``latency_bound``, ``mip_rel_gap``,
    ``threads``, ``strict``, ``respect_memory``). Used by :class:`Exact` and ``auto``.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 1}}, {("a", "b"): 5})
        >>> p = solve_exact(Problem(g, Cluster.from_names(["x", "y"]), cm), None, None, {}, 5.0)
        >>> p.makespan, p.info["status"], p.info["gap"]
        (3.0, 'optimal', 0.0)
    """
    objective = options.get("objective", "latency")
    bound = options.get("latency_bound")
    rel_gap = float(options.get("mip_rel_gap", 1e-7))
    res = solve_milp(problem, objective=objective, incumbent=incumbent,
                     latency_bound=bound if objective == "energy" else None,
                     time_limit=time_limit, mip_rel_gap=rel_gap,
                     threads=int(options.get("threads", 1)))
    candidates: list[tuple[Plan, str | None]] = []
    if incumbent is not None:  # first: kept on ties
        candidates.append((incumbent, incumbent_name))
    if res["assignment"] is not None:
        prio = topo_by(problem, res["start"])
        plan = problem.schedule(res["assignment"], prio, options)
        candidates.append((with_energy(plan, problem.graph, problem.cost_model), "milp"))
    if not candidates:
        if res["status"] == "infeasible" and bound is not None:
            raise InfeasiblePlacement(
                f"exact: no placement meets latency_bound={bound!r} (the MILP is infeasible)")
        raise PolicyError(f"exact: HiGHS found no solution (status {res['status']!r}) within "
                          f"time_limit={time_limit:.3g} s; raise it or use policy 'search'")
    plan, source = min(candidates, key=lambda c: plan_key(c[0], objective, bound))
    value = plan_objective(plan, objective)
    lb = res["lower_bound"]
    status = res["status"]
    if status == "optimal":
        lb = min(lb, value) if np.isfinite(lb) else value
    gap = 0.0 if value <= 0 else max(value - lb, 0.0) / abs(value)
    if status == "optimal" and gap <= 10 * rel_gap:
        gap = 0.0
    _check_bound(plan, bound)
    return dataclasses.replace(plan, info={
        "status": status, "lower_bound": float(lb), "gap": float(gap), "source": source,
        "incumbent": {"policy": incumbent_name, "value": None if incumbent is None
                      else plan_objective(incumbent, objective)},
        "milp_nodes": res["nodes"], "milp_size": [res["columns"], res["rows"]],
    })


def _check_bound(plan: Plan, bound: float | None) -> None:
    if bound is not None and plan.makespan > bound * (1 + 1e-9):
        raise InfeasiblePlacement(
            f"best plan found has makespan {plan.makespan:.6g}, above latency_bound={bound!r} "
            f"by {plan.makespan - bound:.6g}", shortfall=plan.makespan - bound)


# ---------------------------------------------------------------------------- shared glue
def best_seed(graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel,
              seeds: Sequence[str], options: dict[str, Any],
              deadline: float | None = None) -> tuple[Plan | None, str | None]:
    """The best plan of the heuristic policies ``seeds`` (by the options' objective).

    Each seed runs with the common options that it accepts; a seed that cannot serve the
    objective runs for latency; a seed that raises :class:`InfeasiblePlacement` is skipped.
    Past ``deadline`` (a ``time.perf_counter()`` value) no further seed is started once
    one plan exists.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 1}}, {("a", "b"): 5})
        >>> plan, name = best_seed(g, Cluster.from_names(["x", "y"]), cm, ["heft"], {"objective": "latency"})
        >>> name, plan.makespan
        ('heft', 4.0)
    """
    from . import base

    objective = options.get("objective", "latency")
    bound = options.get("latency_bound")
    best: tuple[Plan, str] | None = None
    for name in seeds:
        if deadline is not None and best is not None and time.perf_counter() > deadline:
            break
        cls = type(base.get(name))
        common = {k: options[k] for k in ("strict", "respect_memory") if k in options}
        kw = dict(common)
        if objective in cls.objectives:
            kw["objective"] = objective
        try:
            plan = cls(**kw).place(graph, cluster, cost_model)
        except InfeasiblePlacement:
            continue
        plan = with_energy(plan, graph, cost_model)
        if best is None or plan_key(plan, objective, bound) < plan_key(best[0], objective, bound):
            best = (plan, name)
    return (None, None) if best is None else best


def with_energy(plan: Plan, graph: nx.DiGraph, cost_model: CostModel) -> Plan:
    """``plan`` with its ``energy`` filled in from the cost model (when it knows power)."""
    if plan.energy is not None:
        return plan
    return dataclasses.replace(plan, energy=cost_model.energy(graph, plan))
