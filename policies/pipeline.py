"""``pipeline``: split a chain of layers into contiguous stages, one device each, exactly.

Pipelined inference of a stream (GPipe/PipeDream-style model parallelism) places
contiguous runs of layers on devices; in steady state one request leaves every
*period*, the time of the slowest stage. The optimal contiguous split of a chain over
heterogeneous devices is a dynamic program over (layers covered, devices used, last
device) -- the chains-on-chains partitioning problem (Bokhari, *Partitioning problems in
parallel, pipelined and distributed computing*, IEEE TC 37(1), 1988; Pinar & Aykanat,
JPDC 64(8), 2004) extended to unrelated devices with transfer costs, as in PipeDream's
planner (Narayanan et al., SOSP 2019).

Model:

* the chain's layers ``0 .. n-1`` are split into ``k <= D`` contiguous stages; each stage
  runs on a **distinct** device (a device holds at most one stage, so with ``D`` devices
  there are at most ``D`` stages);
* a stage on device ``d`` covering layers ``a .. b`` takes ``sum times[a..b, d]`` plus the
  transfer of layer ``a - 1``'s output from the previous stage's device into ``d``
  (``comm[a - 1, prev, d]``): the receiving stage is busy while its input arrives (a link
  that overlapped transfer and compute would be faster; this is the conservative model);
* objective ``"throughput"`` minimises the slowest stage (the period); ``"latency"``
  minimises the end-to-end latency of one request (the ``sum`` of stage times); each
  state keeps the lexicographically best (objective, other objective) pair, so ties lean
  towards the other objective (best effort: the primary optimum is exact);
* layers a device cannot run (``inf`` times) are never put on it (``strict`` changes
  nothing here: there is no fallback to make);
* a stage's memory (the sum of its layers' ``memory``) must fit its device's capacity.

The DP visits ``O(n^2 2^D D^2)`` transitions (vectorised over the stage end with numpy),
so ``D`` is limited to :data:`MAX_DEVICES`.

A DAG that is not a chain is *contracted* to the chain of its nodes in a deterministic
topological order: a stage is a contiguous run of that order, and the transfer at a cut
between positions ``k`` and ``k + 1`` sums the edges crossing it. An edge that skips
stages is priced at every cut it crosses, as if forwarded through each stage (an upper
bound for a DAG, exact for a chain). The plan itself is then replayed as one request by
the shared list-scheduling engine, so its start/finish times and makespan are exact.

Example:
    >>> import numpy as np
    >>> times = np.array([[1.0, 4.0], [1.0, 4.0], [4.0, 1.0], [4.0, 1.0]])
    >>> split_chain(times, np.zeros((3, 2, 2)))
    ([(0, 0, 1), (1, 2, 3)], 2.0)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Sequence

import networkx as nx
import numpy as np

from executors.devices import Cluster
from graphs.units import format_bytes

from .base import Policy, register
from .cost import CostModel
from .errors import InfeasiblePlacement, PolicyError
from .plan import Plan
from .schedule import ScheduleContext

#: Largest number of devices the subset DP accepts (2^D states per position).
MAX_DEVICES = 12

OBJECTIVES = ("throughput", "latency")


def _check_inputs(times, comm, memory, capacity):
    times = np.asarray(times, dtype=float)
    if times.ndim != 2 or times.shape[0] < 1 or times.shape[1] < 1:
        raise PolicyError(f"times must be an array [n_layers, n_devices] with n >= 1, D >= 1; "
                          f"got shape {times.shape}")
    n, D = times.shape
    if D > MAX_DEVICES:
        raise PolicyError(f"split_chain supports at most {MAX_DEVICES} devices (the DP is "
                          f"exponential in D), got {D}")
    if np.isnan(times).any() or (times < 0).any():
        raise PolicyError("times must be >= 0 (inf marks a layer a device cannot run)")
    if callable(comm):
        C = np.zeros((max(n - 1, 0), D, D))
        for k in range(n - 1):
            for a in range(D):
                for b in range(D):
                    C[k, a, b] = 0.0 if a == b else float(comm(k, a, b))
    else:
        C = np.asarray(comm, dtype=float).reshape(-1, D, D) if n > 1 else np.zeros((0, D, D))
        if C.shape != (n - 1, D, D):
            raise PolicyError(f"comm must be an array [n-1, D, D] = {(n - 1, D, D)} or a callable "
                              f"(k, a, b) -> seconds; got shape {C.shape}")
    if (~np.isfinite(C)).any() or (C < 0).any():
        raise PolicyError("comm times must be finite and >= 0")
    mem = np.zeros(n) if memory is None else np.asarray(memory, dtype=float)
    cap = np.full(D, np.inf) if capacity is None else np.asarray(capacity, dtype=float)
    if mem.shape != (n,) or cap.shape != (D,):
        raise PolicyError(f"memory must have shape ({n},) and capacity ({D},); got "
                          f"{mem.shape} and {cap.shape}")
    return times, C, mem, cap


def split_chain(times: np.ndarray, comm: np.ndarray | Callable[[int, int, int], float], *,
                objective: str = "throughput", memory: Sequence[float] | None = None,
                capacity: Sequence[float] | None = None,
                max_stages: int | None = None) -> tuple[list[tuple[int, int, int]], float]:
    """Optimal split of a chain into contiguous stages on distinct devices (see module).

    Args:
        times: ``[n, D]`` seconds of layer ``k`` on device ``d`` (``inf``: cannot run).
        comm: ``[n-1, D, D]`` seconds to move layer ``k``'s output from device ``a`` to
            ``b`` (the diagonal is ignored), or a callable ``(k, a, b) -> seconds``.
        objective: ``"throughput"`` (min of the slowest stage) or ``"latency"`` (min of
            the sum of stage times).
        memory: ``[n]`` bytes per layer; capacity: ``[D]`` bytes per device.
        max_stages: at most this many stages (default: ``D``).

    Returns:
        ``(stages, value)``: ``stages`` a list of ``(device, first, last)`` (layer indices,
        inclusive) covering ``0 .. n-1`` in order, ``value`` the objective's optimum.

    Raises:
        InfeasiblePlacement: no split fits the memory (``shortfall`` = the least total
            overflow in bytes over all splits) or runs every layer.

    Example:
        >>> import numpy as np
        >>> split_chain(np.array([[2.0, 1.0], [2.0, 1.0]]), np.full((1, 2, 2), 5.0), objective="latency")
        ([(1, 0, 1)], 2.0)
    """
    if objective not in OBJECTIVES:
        from graphs.errors import UnknownNameError

        raise UnknownNameError("pipeline objective", objective, OBJECTIVES)
    times, C, mem, cap = _check_inputs(times, comm, memory, capacity)
    n, D = times.shape
    kmax = D if max_stages is None else int(max_stages)
    if kmax < 1:
        raise PolicyError(f"max_stages must be >= 1, got {max_stages!r}")
    ok = np.isfinite(times)
    prefix = np.vstack([np.zeros((1, D)), np.cumsum(np.where(ok, times, 0.0), axis=0)])
    bad = np.vstack([np.zeros((1, D)), np.cumsum(~ok, axis=0)])
    mprefix = np.concatenate([[0.0], np.cumsum(mem)])

    def stage(d: int, a: int, prev: int) -> np.ndarray:
        """Times of the stages on ``d`` starting at layer ``a`` and ending before each
        ``b = a+1 .. n`` (inf where a layer is unsupported or the memory overflows)."""
        t = prefix[a + 1:, d] - prefix[a, d]
        if a > 0:
            t = t + C[a - 1, prev, d]
        return np.where((bad[a + 1:, d] > bad[a, d]) | (mprefix[a + 1:] - mprefix[a] > cap[d]), np.inf, t)

    stages, val = _dp(n, D, kmax, stage, objective)
    if stages is None:
        short = _overflow(n, D, kmax, bad, mprefix, cap)
        if 0 < short < np.inf:
            raise InfeasiblePlacement(
                f"no split of the {n}-layer chain into at most {kmax} stages on distinct devices "
                f"fits device memory; the best split overflows by {format_bytes(short, exact=True)} in total",
                shortfall=short)
        raise InfeasiblePlacement(f"no split of the {n}-layer chain into at most {kmax} contiguous "
                                  f"stages on distinct devices runs every layer on a device that "
                                  f"supports it; use a policy without contiguous stages ('auto', 'search')")
    return stages, val


def _dp(n, D, kmax, stage, objective):
    """Subset DP over (layers covered ``b``, devices used ``mask``, last device ``d``).

    ``P[b, mask, d]`` / ``L[b, mask, d]`` hold the (period, latency) of the best split of
    layers ``0 .. b-1`` (lexicographic on the objective first) and ``back`` its previous
    state; each transition is vectorised over the end ``b`` of the new stage.
    """
    thr = objective == "throughput"
    S = 1 << D
    P = np.full((n + 1, S, D), np.inf)
    L = np.full((n + 1, S, D), np.inf)
    back_a = np.full((n + 1, S, D), -1, dtype=np.int64)   # start layer of the last stage
    back_p = np.full((n + 1, S, D), -1, dtype=np.int64)   # previous device (-1: first stage)
    popcount = [bin(s).count("1") for s in range(S)]

    def relax(a, mask_new, d, per, lat, t, prev):
        cand_p = np.maximum(per, t)
        cand_l = lat + t
        cur_p = P[a + 1:, mask_new, d]
        cur_l = L[a + 1:, mask_new, d]
        if thr:
            better = (cand_p < cur_p) | ((cand_p == cur_p) & (cand_l < cur_l))
        else:
            better = (cand_l < cur_l) | ((cand_l == cur_l) & (cand_p < cur_p))
        better &= np.isfinite(t)
        if better.any():
            idx = np.nonzero(better)[0] + a + 1
            P[idx, mask_new, d] = cand_p[better]
            L[idx, mask_new, d] = cand_l[better]
            back_a[idx, mask_new, d] = a
            back_p[idx, mask_new, d] = prev

    for d in range(D):
        relax(0, 1 << d, d, 0.0, 0.0, stage(d, 0, -1), -1)
    for a in range(1, n):
        live = np.argwhere(np.isfinite(L[a]))
        for mask, p in live:
            mask, p = int(mask), int(p)
            if popcount[mask] >= kmax:
                continue
            per, lat = P[a, mask, p], L[a, mask, p]
            for d in range(D):
                if not mask >> d & 1:
                    relax(a, mask | (1 << d), d, per, lat, stage(d, a, p), p)
    fin_p, fin_l = P[n], L[n]
    if not np.isfinite(fin_l).any():
        return None, np.inf
    cells = [(m, d) for m in range(S) for d in range(D) if np.isfinite(fin_l[m, d])]
    key = (lambda c: (fin_p[c], fin_l[c])) if thr else (lambda c: (fin_l[c], fin_p[c]))
    mask, d = min(cells, key=key)
    val = float(fin_p[mask, d] if thr else fin_l[mask, d])
    out = []
    b = n
    while True:
        a, prev = int(back_a[b, mask, d]), int(back_p[b, mask, d])
        out.append((d, a, b - 1))
        if prev < 0:
            break
        b, mask, d = a, mask & ~(1 << d), prev
    out.reverse()
    return out, val


def _overflow(n, D, kmax, bad, mprefix, cap):
    """Least total memory overflow over all splits (ignoring speed, but not support)."""

    def stage(d, a, prev):
        over = np.maximum(mprefix[a + 1:] - mprefix[a] - cap[d], 0.0)
        return np.where(bad[a + 1:, d] > bad[a, d], np.inf, over)

    stages, val = _dp(n, D, kmax, stage, "latency")
    return val if stages is not None else np.inf


def chain_order(graph: nx.DiGraph) -> list[Hashable]:
    """The deterministic topological order a DAG is contracted along (a chain's own order).

    Example:
        >>> import networkx as nx
        >>> chain_order(nx.DiGraph([("b", "c"), ("a", "b")]))
        ['a', 'b', 'c']
    """
    return list(nx.lexicographical_topological_sort(graph, key=str))


def chain_arrays(ctx: ScheduleContext, order: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """``times[k, d]`` and cut transfer times ``comm[k, a, b]`` of a graph contracted along
    ``order`` (each crossing edge priced at every cut it crosses; see the module)."""
    pos = {v: k for k, v in enumerate(order)}
    rows = [ctx.index[v] for v in order]
    times = ctx.T[rows]
    n, D = len(order), len(ctx.devices)
    comm = np.zeros((max(n - 1, 0), D, D))
    for e, (u, v) in enumerate(ctx.edges):
        a, b = pos[u], pos[v]
        comm[a:b] += ctx.C[e]
    return times, comm


@register
class Pipeline(Policy):
    """Exact contiguous split of a chain (or a DAG contracted to one) into pipeline stages.

    Objectives ``"throughput"`` (default: minimise the period, the slowest stage) and
    ``"latency"`` (minimise one request's end-to-end time along the chain). Option
    ``max_stages`` caps the number of stages (default: the number of devices). The plan's
    ``period`` is the slowest stage time (seconds per request in steady state);
    ``info["stages"]`` lists ``(device, first node, last node)``, ``info["stage_times"]``
    the stage times and ``info["dp_value"]`` the DP optimum. Memory capacity per device
    is the sum of :meth:`CostModel.node_memory` of its stage. A ``latency_bound`` is
    checked on the chosen split (``InfeasiblePlacement`` with the excess), not optimised
    under; ``strict`` changes nothing (layers never go to devices that cannot run them).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("l0", "l1"), ("l1", "l2"), ("l2", "l3")])
        >>> t = {"l0": {"x": 1, "y": 4}, "l1": {"x": 1, "y": 4}, "l2": {"x": 4, "y": 1}, "l3": {"x": 4, "y": 1}}
        >>> cm = TableCostModel(t, {e: 0.5 for e in g.edges})
        >>> plan = Pipeline().place(g, Cluster.from_names(["x", "y"]), cm)
        >>> plan.period, plan.info["stages"], plan.makespan
        (2.5, [('x', 'l0', 'l1'), ('y', 'l2', 'l3')], 4.5)
    """

    name = "pipeline"
    description = "exact DP splitting a layer chain into contiguous stages (throughput or latency)"
    objectives = ("throughput", "latency")
    option_defaults = {"max_stages": None, "objective": "throughput"}

    def __init__(self, **options: Any):
        super().__init__(**options)
        ms = self.options["max_stages"]
        if ms is not None and (not isinstance(ms, int) or isinstance(ms, bool) or ms < 1):
            raise PolicyError(f"pipeline: max_stages must be None or an int >= 1, got {ms!r}")

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        opts = self.options
        ctx = ScheduleContext(graph, cluster, cost_model)
        order = chain_order(graph)
        times, comm = chain_arrays(ctx, order)
        mem = np.array([ctx.mem[ctx.index[v]] for v in order])
        cap = ctx.capacity if opts["respect_memory"] else None
        stages, value = split_chain(times, comm, objective=opts["objective"], memory=mem,
                                    capacity=cap, max_stages=opts["max_stages"])
        assign = {}
        stage_times = []
        for d, a, b in stages:
            for k in range(a, b + 1):
                assign[order[k]] = ctx.devices[d]
        prev = None
        for d, a, b in stages:
            t = float(times[a:b + 1, d].sum()) + (float(comm[a - 1, prev, d]) if a > 0 else 0.0)
            stage_times.append(t)
            prev = d
        eng = {k: v for k, v in opts.items() if k in ("strict", "respect_memory")}
        plan = ctx.schedule(order, assignment=assign, options=eng, policy=self.name)
        bound = opts["latency_bound"]
        if bound is not None and plan.makespan > bound * (1 + 1e-12):
            raise InfeasiblePlacement(
                f"pipeline: the best split's latency {plan.makespan:.6g} s exceeds latency_bound "
                f"{bound:.6g} s by {plan.makespan - bound:.6g} s", shortfall=plan.makespan - bound)
        info = dict(plan.info)
        info.update(stages=[(ctx.devices[d], order[a], order[b]) for d, a, b in stages],
                    stage_times=stage_times, dp_value=float(value))
        return dataclasses.replace(plan, period=max(stage_times), info=info)
