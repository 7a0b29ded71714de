"""PEFT: Predict Earliest Finish Time list scheduling.

Reference: H. Arabnejad, J. G. Barbosa, "List scheduling algorithm for heterogeneous
systems by an optimistic cost table", IEEE Transactions on Parallel and Distributed
Systems 25(3):682-694, 2014.

The *optimistic cost table* ``OCT(i, p) = max_{j in succ(i)} min_{q} (OCT(j, q) + w(j, q)
+ (c̄_ij if q != p else 0))`` (``OCT = 0`` for exit nodes) is the shortest time from the
end of ``i`` on ``p`` to the exit, ignoring device contention. Nodes are taken from a
ready list by decreasing ``rank_oct(i)`` (the mean of ``OCT(i, ·)`` over the devices that
can run ``i``) and each goes to the device minimising ``O_EFT = EFT + OCT``
(insertion-based). Ties: earlier EFT, then device order; rank ties by topological order.

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> g = nx.DiGraph([("a", "b")])
    >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 10, "y": 1}}
    >>> p = PEFT().place(g, Cluster.from_names(["x", "y"]), TableCostModel(t, {("a", "b"): 5}))
    >>> dict(p.assignment), p.makespan
    ({'a': 'y', 'b': 'y'}, 3.0)
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

from executors.devices import Cluster

from .base import Policy, register
from .cost import CostModel
from .heft import ready_list_order
from .plan import Plan
from .schedule import ScheduleContext

__all__ = ["PEFT", "optimistic_cost_table"]


def optimistic_cost_table(ctx: ScheduleContext) -> np.ndarray:
    """``OCT[i, p]`` per node index and device index (Arabnejad & Barbosa 2014, eq. 6).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 4, "y": 2}}, {("a", "b"): 3})
        >>> optimistic_cost_table(ScheduleContext(g, Cluster.from_names(["x", "y"]), cm)).tolist()
        [[4.0, 2.0], [0.0, 0.0]]
    """
    n, m = len(ctx.nodes), len(ctx.devices)
    T = ctx._T
    c = ctx.mean_edge_time().tolist()
    oct_ = [[0.0] * m for _ in range(n)]
    for i in reversed(ctx.topo):
        row = [0.0] * m
        for s, e in ctx.succs[i]:
            base = [oct_[s][q] + T[s][q] for q in range(m)]
            for p in range(m):
                best = math.inf
                for q in range(m):
                    x = base[q] if q == p else base[q] + c[e]
                    if x < best:
                        best = x
                if best > row[p]:
                    row[p] = best
        oct_[i] = row
    return np.array(oct_, dtype=float).reshape(n, m)


@register
class PEFT(Policy):
    """Predict Earliest Finish Time (Arabnejad & Barbosa, IEEE TPDS 2014).

    Option: ``insertion`` (default True).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 2, "y": 4}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 5}, "d": {"x": 3, "y": 1}}
        >>> cm = TableCostModel(t, {("a", "b"): 3, ("a", "c"): 0, ("b", "d"): 1, ("c", "d"): 3})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = PEFT().place(g, c, cm)
        >>> dict(p.order), p.makespan
        ({'x': ('a', 'c'), 'y': ('b', 'd')}, 9.0)
    """

    name = "peft"
    description = "PEFT: optimistic-cost-table ranking, device by EFT + OCT (Arabnejad & Barbosa 2014)"
    option_defaults = {"insertion": True}

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        ctx = ScheduleContext(graph, cluster, cost_model)
        table = optimistic_cost_table(ctx)
        finite = np.isfinite(ctx.T)
        cnt = np.maximum(finite.sum(axis=1), 1)
        rank = np.where(finite, table, 0.0).sum(axis=1) / cnt
        octl = table.tolist()
        index, dindex = ctx.index, ctx.dindex
        order = {d: k for k, d in enumerate(ctx.devices)}

        def choose(node, cands):
            row = octl[index[node]]
            return min(cands, key=lambda d: (cands[d][1] + row[dindex[d]], cands[d][1], order[d]))

        return ctx.schedule(ready_list_order(ctx, rank), choose=choose,
                            insertion=bool(self.options["insertion"]), options=self.options,
                            policy=self.name)
