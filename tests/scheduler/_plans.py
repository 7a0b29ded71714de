"""Test helpers: a tiny cost model and a reference list scheduler that builds plans.

The scheduler here is deliberately independent of ``policies`` (written from the
textbook definition) so that the simulator is checked against a second implementation.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import networkx as nx

from policies.cost import CostModel
from policies.plan import Plan


class TinyCost(CostModel):
    """Related machines: node time = ``cost`` attr / device speed; edge time = ``data``
    attr / link bandwidth (0 on the same device). Optional (active, idle) power per device."""

    def __init__(self, speed: Mapping[str, float], bandwidth: float = 1.0,
                 power: Mapping[str, tuple[float, float]] | None = None):
        self.speed = dict(speed)
        self.devices = tuple(self.speed)
        self.bandwidth = bandwidth
        self._power = dict(power or {})

    def node_time(self, graph: nx.DiGraph, node: Hashable, device: str) -> float:
        return float(graph.nodes[node]["cost"]) / self.speed[device]

    def edge_time(self, graph: nx.DiGraph, u: Hashable, v: Hashable, src: str, dst: str) -> float:
        if src == dst:
            return 0.0
        return float(graph.edges[u, v].get("data", 0.0)) / self.bandwidth

    def power(self, device: str) -> tuple[float, float] | None:
        return self._power.get(device)


class TableCost(CostModel):
    """Times given per node and device, and per edge (as in the HEFT paper's example)."""

    def __init__(self, node_times: Mapping[Hashable, Mapping[str, float]],
                 edge_times: Mapping[tuple, float]):
        self.node_times = {n: dict(t) for n, t in node_times.items()}
        self.edge_times = dict(edge_times)
        self.devices = tuple(next(iter(self.node_times.values())))

    def node_time(self, graph, node, device):
        return float(self.node_times[node][device])

    def edge_time(self, graph, u, v, src, dst):
        return 0.0 if src == dst else float(self.edge_times.get((u, v), 0.0))


def chain_graph(costs: Sequence[float], data: Sequence[float] = ()) -> nx.DiGraph:
    """Nodes 0..n-1 in a chain with ``cost`` per node and ``data`` per edge."""
    g = nx.DiGraph()
    for i, c in enumerate(costs):
        g.add_node(i, cost=c)
    for i in range(len(costs) - 1):
        g.add_edge(i, i + 1, data=data[i] if i < len(data) else 0.0)
    return g


def manual_plan(assignment: Mapping[Hashable, str], order: Mapping[str, Sequence[Hashable]],
                start: Mapping | None = None, finish: Mapping | None = None) -> Plan:
    """A plan from an assignment and an order; predicted times default to 0."""
    start = dict(start or {n: 0.0 for n in assignment})
    finish = dict(finish or {n: 0.0 for n in assignment})
    return Plan(dict(assignment), {d: tuple(ns) for d, ns in order.items()}, start, finish,
                max(finish.values(), default=0.0), policy="manual")


def reference_schedule(graph: nx.DiGraph, assignment: Mapping[Hashable, str], cost_model: CostModel,
                       priority: Sequence[Hashable] | None = None, insertion: bool = False) -> Plan:
    """Earliest-start list scheduling of a fixed assignment, nodes taken in ``priority``
    (a topological order). Without insertion each node goes after the last node on its
    device; with insertion into the earliest idle gap that fits (Topcuoglu et al. 2002)."""
    priority = list(nx.topological_sort(graph)) if priority is None else list(priority)
    start: dict = {}
    finish: dict = {}
    slots: dict[str, list] = {d: [] for d in set(assignment.values())}  # device -> nodes by start
    for n in priority:
        d = assignment[n]
        ready = 0.0
        for u in graph.predecessors(n):
            t = finish[u] + (cost_model.edge_time(graph, u, n, assignment[u], d) if assignment[u] != d else 0.0)
            ready = max(ready, t)
        w = cost_model.node_time(graph, n, d)
        seq = slots[d]
        at = len(seq)
        s = max(ready, finish[seq[-1]]) if seq else ready
        if insertion:
            prev_end = 0.0
            for k, m in enumerate(seq):
                cand = max(ready, prev_end)
                if cand + w <= start[m] and cand < start[m]:  # zero-length nodes: never before a node starting at the same time (it may be a predecessor)
                    at, s = k, cand
                    break
                prev_end = finish[m]
        seq.insert(at, n)
        start[n], finish[n] = s, s + w
    return Plan(dict(assignment), {d: tuple(ns) for d, ns in slots.items()}, start, finish,
                max(finish.values()), policy="reference" + ("-insertion" if insertion else ""))
