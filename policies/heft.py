"""HEFT: Heterogeneous Earliest Finish Time list scheduling.

Reference: H. Topcuoglu, S. Hariri, M.-Y. Wu, "Performance-effective and low-complexity
task scheduling for heterogeneous computing", IEEE Transactions on Parallel and
Distributed Systems 13(3):260-274, 2002, section 4.1.

Nodes are ranked by their *upward rank* ``rank_u(i) = w̄_i + max_{j in succ(i)} (c̄_ij +
rank_u(j))``, where ``w̄_i`` is the node's mean time over the devices that can run it and
``c̄_ij`` the edge's mean transfer time over ordered pairs of distinct devices; they are
scheduled in decreasing rank, each on the device that gives it the earliest finish time,
with insertion into idle gaps. Ties in rank are broken by a fixed topological order, so
the priority list is always a topological order (``rank_u(i) >= rank_u(j)`` for an edge
``i -> j`` because costs are non-negative) and the result is deterministic.

With ``objective="energy"`` the plan is the least-energy one among the earliest-finish
schedule and energy-greedy ones, where each node goes to the device, among those
finishing within ``energy_slack`` (relative) of the earliest finish time, that least
raises a lower bound of the plan's energy (see :mod:`policies.schedule`); it never uses
more energy than the latency plan.

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    >>> t = {"a": {"x": 1, "y": 1}, "b": {"x": 2, "y": 4}, "c": {"x": 2, "y": 2}, "d": {"x": 1, "y": 1}}
    >>> cm = TableCostModel(t, {e: 0.5 for e in g.edges})
    >>> HEFT().place(g, Cluster.from_names(["x", "y"]), cm).makespan
    4.5
"""
from __future__ import annotations

from typing import Hashable

import networkx as nx
import numpy as np

from executors.devices import Cluster

from .base import Policy, register
from .cost import CostModel
from .plan import Plan
from .schedule import ScheduleContext

__all__ = ["HEFT", "upward_rank", "downward_rank", "rank_order"]


def upward_rank(ctx: ScheduleContext) -> np.ndarray:
    """``rank_u`` per node index (Topcuoglu et al. 2002, eq. 5), mean costs.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 3}, "b": {"x": 2, "y": 2}}, {("a", "b"): 4})
        >>> upward_rank(ScheduleContext(g, Cluster.from_names(["x", "y"]), cm)).tolist()
        [8.0, 2.0]
    """
    w = ctx.mean_node_time().tolist()
    c = ctx.mean_edge_time().tolist()
    rank = [0.0] * len(ctx.nodes)
    for i in reversed(ctx.topo):
        best = 0.0
        for s, e in ctx.succs[i]:
            x = c[e] + rank[s]
            if x > best:
                best = x
        rank[i] = w[i] + best
    return np.array(rank)


def downward_rank(ctx: ScheduleContext) -> np.ndarray:
    """``rank_d`` per node index (Topcuoglu et al. 2002, eq. 6): the longest mean-cost
    distance from an entry node to the node, excluding the node's own cost.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 3}, "b": {"x": 2, "y": 2}}, {("a", "b"): 4})
        >>> downward_rank(ScheduleContext(g, Cluster.from_names(["x", "y"]), cm)).tolist()
        [0.0, 6.0]
    """
    w = ctx.mean_node_time().tolist()
    c = ctx.mean_edge_time().tolist()
    rank = [0.0] * len(ctx.nodes)
    for i in ctx.topo:
        best = 0.0
        for p, e in ctx.preds[i]:
            x = rank[p] + w[p] + c[e]
            if x > best:
                best = x
        rank[i] = best
    return np.array(rank)


def rank_order(ctx: ScheduleContext, rank: np.ndarray) -> list[Hashable]:
    """Node names by decreasing ``rank``, ties broken by ``ctx.topo`` position.

    The result is a topological order whenever ``rank`` never increases along an edge
    (true of ``rank_u``).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 2, "y": 4}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 5}, "d": {"x": 3, "y": 1}}
        >>> cm = TableCostModel(t, {("a", "b"): 3, ("a", "c"): 0, ("b", "d"): 1, ("c", "d"): 3})
        >>> c = Cluster.from_names(["x", "y"])
        >>> ctx = ScheduleContext(g, c, cm)
        >>> upward_rank(ctx).tolist(), rank_order(ctx, upward_rank(ctx))
        ([12.0, 6.0, 9.0, 2.0], ['a', 'c', 'b', 'd'])
    """
    pos = [0] * len(ctx.nodes)
    for k, i in enumerate(ctx.topo):
        pos[i] = k
    r = rank.tolist()
    idx = sorted(range(len(ctx.nodes)), key=lambda i: (-r[i], pos[i]))
    return [ctx.nodes[i] for i in idx]


def ready_list_order(ctx: ScheduleContext, priority: np.ndarray) -> list[Hashable]:
    """Node names in the order a ready-list scheduler takes them: repeatedly the ready
    node (all predecessors taken) of highest ``priority``, ties by ``ctx.topo`` position.
    Always a topological order (used by CPOP and PEFT, whose priorities need not decrease
    along edges).
    """
    import heapq

    pos = [0] * len(ctx.nodes)
    for k, i in enumerate(ctx.topo):
        pos[i] = k
    pr = priority.tolist()
    indeg = [len(p) for p in ctx.preds]
    heap = [(-pr[i], pos[i], i) for i in range(len(ctx.nodes)) if indeg[i] == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, _, i = heapq.heappop(heap)
        out.append(ctx.nodes[i])
        for s, _ in ctx.succs[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, (-pr[s], pos[s], s))
    return out


@register
class HEFT(Policy):
    """Heterogeneous Earliest Finish Time (Topcuoglu, Hariri, Wu, IEEE TPDS 2002).

    Options: ``insertion`` (default True), ``energy_slack`` (for ``objective="energy"``).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 2, "y": 4}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 5}, "d": {"x": 3, "y": 1}}
        >>> cm = TableCostModel(t, {("a", "b"): 3, ("a", "c"): 0, ("b", "d"): 1, ("c", "d"): 3})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = HEFT().place(g, c, cm)  # the optimum is 8 (see policies.exact.Exact)
        >>> dict(p.order), p.makespan
        ({'x': ('a', 'c'), 'y': ('b', 'd')}, 9.0)
    """

    name = "heft"
    description = "HEFT: upward-rank list scheduling, earliest finish time with insertion (Topcuoglu et al. 2002)"
    option_defaults = {"insertion": True, "energy_slack": 0.1}
    objectives = ("latency", "energy")

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        ctx = ScheduleContext(graph, cluster, cost_model)
        prio = rank_order(ctx, upward_rank(ctx))
        return ctx.schedule(prio, insertion=bool(self.options["insertion"]), options=self.options,
                            policy=self.name)
