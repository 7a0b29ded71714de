"""CPOP: Critical-Path-on-a-Processor list scheduling.

Reference: H. Topcuoglu, S. Hariri, M.-Y. Wu, "Performance-effective and low-complexity
task scheduling for heterogeneous computing", IEEE TPDS 13(3):260-274, 2002, section 4.2.

Priority of a node is ``rank_u + rank_d`` (mean costs, :mod:`policies.heft`). The
critical path (CP) starts at the entry node of highest priority and repeatedly follows
the successor whose priority equals the CP length ``|CP|``. The *critical-path
processor* is the device minimising the CP nodes' total time. Nodes are taken from a
ready list by highest priority; CP nodes go to the critical-path processor, the others
to the device with the earliest finish time (insertion-based). If the CP processor
cannot hold a CP node (op support, memory), that node falls back to earliest finish.

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> g = nx.DiGraph([("a", "b"), ("a", "c")])
    >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 5, "y": 6}, "c": {"x": 1, "y": 1}}
    >>> p = CPOP().place(g, Cluster.from_names(["x", "y"]), TableCostModel(t, {("a", "b"): 1, ("a", "c"): 1}))
    >>> p.assignment["b"], p.makespan
    ('x', 6.0)
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

from executors.devices import Cluster

from .base import Policy, register
from .cost import CostModel
from .heft import downward_rank, ready_list_order, upward_rank
from .plan import Plan
from .schedule import ScheduleContext

__all__ = ["CPOP", "critical_path"]


def critical_path(ctx: ScheduleContext, priority: np.ndarray, rel_tol: float = 1e-9) -> list[int]:
    """Node indices of the critical path by ``priority = rank_u + rank_d`` (Topcuoglu et
    al. 2002, fig. 5 lines 5-13); ties broken by ``ctx.topo`` position.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 3}, "d": {"x": 1, "y": 2}}
        >>> cm = TableCostModel(t, {e: 1 for e in g.edges})
        >>> ctx = ScheduleContext(g, Cluster.from_names(["x", "y"]), cm)
        >>> prio = upward_rank(ctx) + downward_rank(ctx)  # 8 for every node: all lie on a longest path
        >>> [ctx.nodes[i] for i in critical_path(ctx, prio)]
        ['a', 'b', 'd']
    """
    if not len(ctx.nodes):
        return []
    pr = priority.tolist()
    cp_len = max(pr)
    pos = {i: k for k, i in enumerate(ctx.topo)}

    def on_cp(i: int) -> bool:
        return math.isclose(pr[i], cp_len, rel_tol=rel_tol, abs_tol=1e-12) or pr[i] == cp_len

    entries = [i for i in ctx.topo if not ctx.preds[i] and on_cp(i)]
    if not entries:
        return []
    path = [entries[0]]
    while True:
        nxt = sorted((s for s, _ in ctx.succs[path[-1]] if on_cp(s)), key=lambda s: pos[s])
        if not nxt:
            return path
        path.append(nxt[0])


@register
class CPOP(Policy):
    """Critical-Path-on-a-Processor (Topcuoglu, Hariri, Wu, IEEE TPDS 2002).

    Option: ``insertion`` (default True). ``plan.info`` records the ``critical_path`` and
    the ``cp_device`` it was placed on.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 3}, "d": {"x": 1, "y": 2}}
        >>> cm = TableCostModel(t, {e: 1 for e in g.edges})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = CPOP().place(g, c, cm)
        >>> p.info["critical_path"], p.info["cp_device"], p.makespan
        (['a', 'b', 'd'], 'x', 7.0)
    """

    name = "cpop"
    description = "CPOP: critical path on its fastest device, rest by earliest finish (Topcuoglu et al. 2002)"
    option_defaults = {"insertion": True}

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        ctx = ScheduleContext(graph, cluster, cost_model)
        prio = upward_rank(ctx) + downward_rank(ctx)
        cp = critical_path(ctx, prio)
        cp_names = {ctx.nodes[i] for i in cp}
        sums = ctx.T[cp].sum(axis=0) if cp else np.zeros(len(ctx.devices))
        cp_dev = ctx.devices[int(np.argmin(sums))]  # first device on ties

        def choose(node, cands):
            if node in cp_names and cp_dev in cands:
                return cp_dev
            return min(cands, key=lambda d: cands[d][1])  # earliest finish; first device on ties

        plan = ctx.schedule(ready_list_order(ctx, prio), choose=choose,
                            insertion=bool(self.options["insertion"]), options=self.options,
                            policy=self.name)
        import dataclasses

        return dataclasses.replace(plan, info={**plan.info, "critical_path": [str(n) for n in
                                                                             (ctx.nodes[i] for i in cp)],
                                               "cp_device": cp_dev})
