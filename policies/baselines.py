"""Simple baselines every cleverer policy must beat.

* ``single``: everything on one device (option ``device``; default the device that can
  run every node with the least total time). Makespan = sum of the node times there.
* ``round-robin``: the k-th node of a topological order on device ``k mod m``.
* ``met``: Minimum Execution Time: each node on its fastest device, regardless of load
  (Braun et al., "A comparison of eleven static heuristics for mapping a class of
  independent tasks onto heterogeneous distributed computing systems", JPDC 61(6), 2001;
  Armstrong, Hensgen, Kidd, "The relative performance of various mapping algorithms is
  independent of sizable variances in run-time predictions", HCW 1998).
* ``mct``: Minimum Completion Time: nodes in topological order, each on the device where
  it finishes earliest (Braun et al. 2001). Serves ``objective="energy"`` as HEFT does.

All use the shared engine (:mod:`policies.schedule`) without insertion, taking nodes in
the graph's deterministic topological order (``networkx.topological_sort``). Where an
assigned device cannot run a node or has no memory left for it, ``single`` and
``round-robin`` fall back to the earliest-finishing device that can (listed in
``plan.info["fallbacks"]``; ``strict=True`` makes that an InfeasiblePlacement instead).

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> g = nx.DiGraph([("a", "b")])
    >>> cm = TableCostModel({"a": {"x": 1, "y": 3}, "b": {"x": 5, "y": 2}}, {("a", "b"): 1})
    >>> c = Cluster.from_names(["x", "y"])
    >>> Single().place(g, c, cm).makespan, MET().place(g, c, cm).makespan
    (5.0, 4.0)
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from executors.devices import Cluster

from .base import Policy, register
from .cost import CostModel
from .plan import Plan
from .schedule import ScheduleContext

__all__ = ["Single", "RoundRobin", "MET", "MCT"]


def _topo_names(ctx: ScheduleContext) -> list:
    return [ctx.nodes[i] for i in ctx.topo]


@register
class Single(Policy):
    """Every node on one device (``device`` option; default: least total time).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 3}, "d": {"x": 1, "y": 2}}
        >>> cm = TableCostModel(t, {e: 1 for e in g.edges})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = Single().place(g, c, cm)  # x runs all four in 9, y in 9: the first wins
        >>> p.devices_used, p.makespan
        (('x',), 9.0)
        >>> Single(device="y").place(g, c, cm).nodes_on("y")
        ('a', 'b', 'c', 'd')
    """

    name = "single"
    description = "every node on one device (option device; default the one with least total time)"
    option_defaults = {"device": None}

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        ctx = ScheduleContext(graph, cluster, cost_model)
        dev = self.options["device"]
        if dev is None:
            unsupported = (~np.isfinite(ctx.T)).sum(axis=0)
            total = np.where(np.isfinite(ctx.T), ctx.T, 0.0).sum(axis=0)
            fits = ctx.mem.sum() <= ctx.capacity if self.options["respect_memory"] else np.ones(len(ctx.devices), bool)
            # prefer devices that run every node and hold them all, then the least total time
            j = min(range(len(ctx.devices)), key=lambda j: (int(unsupported[j]), not bool(fits[j]), total[j], j))
            dev = ctx.devices[j]
        else:
            cluster.check(dev)
        prio = _topo_names(ctx)
        return ctx.schedule(prio, assignment={n: dev for n in prio}, insertion=False,
                            options=self.options, policy=self.name)


@register
class RoundRobin(Policy):
    """The k-th node of a topological order on device ``k mod m``.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 3}, "d": {"x": 1, "y": 2}}
        >>> cm = TableCostModel(t, {e: 1 for e in g.edges})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = RoundRobin().place(g, c, cm)
        >>> dict(p.assignment), p.makespan
        ({'a': 'x', 'b': 'y', 'c': 'x', 'd': 'y'}, 7.0)
    """

    name = "round-robin"
    description = "k-th node in topological order on device k mod m (no cost model used)"

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        ctx = ScheduleContext(graph, cluster, cost_model)
        prio = _topo_names(ctx)
        m = len(ctx.devices)
        assignment = {n: ctx.devices[k % m] for k, n in enumerate(prio)}
        return ctx.schedule(prio, assignment=assignment, insertion=False, options=self.options,
                            policy=self.name)


@register
class MET(Policy):
    """Minimum Execution Time: each node on its fastest feasible device (Braun et al. 2001).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 3}, "d": {"x": 1, "y": 2}}
        >>> cm = TableCostModel(t, {e: 1 for e in g.edges})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = MET().place(g, c, cm)  # b is faster on y; a, d on x; c ties: first device
        >>> dict(p.assignment), p.makespan
        ({'a': 'x', 'b': 'y', 'c': 'x', 'd': 'x'}, 6.0)
    """

    name = "met"
    description = "MET: each node on its fastest device, ignoring load and transfers (Braun et al. 2001)"

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        ctx = ScheduleContext(graph, cluster, cost_model)
        T, index, dindex = ctx._T, ctx.index, ctx.dindex

        def choose(node, cands):
            row = T[index[node]]
            return min(cands, key=lambda d: (row[dindex[d]], dindex[d]))

        return ctx.schedule(_topo_names(ctx), choose=choose, insertion=False, options=self.options,
                            policy=self.name)


@register
class MCT(Policy):
    """Minimum Completion Time: topological order, earliest finish device (Braun et al. 2001).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 1, "y": 2}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 3}, "d": {"x": 1, "y": 2}}
        >>> cm = TableCostModel(t, {e: 1 for e in g.edges})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = MCT().place(g, c, cm)
        >>> p.nodes_on("x"), p.nodes_on("y"), p.makespan
        (('a', 'c', 'd'), ('b',), 6.0)
    """

    name = "mct"
    description = "MCT: topological order, each node where it finishes earliest (Braun et al. 2001)"
    option_defaults = {"energy_slack": 0.1}
    objectives = ("latency", "energy")

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        ctx = ScheduleContext(graph, cluster, cost_model)
        return ctx.schedule(_topo_names(ctx), insertion=False, options=self.options, policy=self.name)


