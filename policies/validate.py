"""Check a :class:`~policies.plan.Plan` completely against the graph, cluster and cost model.

The checks re-derive everything from the cost model's scalar methods (``node_time``,
``edge_time``, ``supports``, ``node_memory``), independently of the scheduling engine:

1. every node is placed exactly once, on a device of the cluster, and no unknown node is;
2. the order per device holds exactly the nodes assigned there, sorted by start;
3. start and finish times are finite and start >= 0;
4. each duration equals the cost model's time of the node on its device;
5. precedence with transfers: ``start(v) >= finish(u) + edge_time(u -> v, dev(u), dev(v))``;
6. no two nodes overlap on a device;
7. the makespan equals the maximum finish time;
8. resident memory (sum of ``node_memory``, the engine's conservative bound) is within each
   device's capacity (skip with ``memory=False`` for plans made with
   ``respect_memory=False``);
9. every node is on a device that supports it;
10. a ``latency_bound`` in the plan's options is met.

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> from policies.plan import Plan
    >>> g = nx.DiGraph([("a", "b")])
    >>> cm = TableCostModel({"a": {"x": 1}, "b": {"x": 2}}, {("a", "b"): 0})
    >>> ok = Plan({"a": "x", "b": "x"}, {"x": ("a", "b")}, {"a": 0, "b": 1}, {"a": 1, "b": 3}, 3)
    >>> validate(ok, g, Cluster.from_names(["x"]), cm)
    []
    >>> bad = Plan({"a": "x", "b": "x"}, {"x": ("a", "b")}, {"a": 0, "b": 0.5}, {"a": 1, "b": 2.5}, 2.5)
    >>> validate(bad, g, Cluster.from_names(["x"]), cm, raise_=False)  # doctest: +NORMALIZE_WHITESPACE
    ["edge 'a'->'b': 'b' starts at 0.5 before its data is ready at 1 (finish of 'a' 1 + transfer 0)",
     "device 'x': 'b' starts at 0.5 before 'a' finishes at 1"]
"""
from __future__ import annotations

import math
from typing import Hashable

import networkx as nx

from executors.devices import Cluster

from .cost import CostModel
from .errors import InvalidPlan
from .plan import Plan

__all__ = ["validate"]


def validate(plan: Plan, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel, *,
             raise_: bool = True, tol: float = 1e-9, memory: bool = True) -> list[str]:
    """Every problem of ``plan``, as a list of messages (empty when the plan is valid).

    Args:
        raise_: raise :class:`~policies.errors.InvalidPlan` listing every problem instead
            of returning a non-empty list.
        tol: tolerance on time comparisons, relative to ``max(1, |value|)``.
        memory: check resident memory against device capacity.

    Raises:
        InvalidPlan: when ``raise_`` and some check fails; ``.problems`` holds the list.

    Example:
        >>> from policies.abstract import TableCostModel
        >>> from policies.heft import HEFT
        >>> g = nx.DiGraph([("a", "b")])
        >>> c = Cluster.from_names(["x", "y"])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 2, "y": 1}}, {("a", "b"): 3})
        >>> validate(HEFT().place(g, c, cm), g, c, cm)  # a valid plan: no problems
        []
        >>> fast = Plan({"a": "x", "b": "y"}, {"x": ("a",), "y": ("b",)}, {"a": 0, "b": 1}, {"a": 1, "b": 2}, 2)
        >>> validate(fast, g, c, cm)  # b cannot start before a's data has moved (3 s)
        Traceback (most recent call last):
        ...
        policies.errors.InvalidPlan: invalid plan: edge 'a'->'b': 'b' starts at 1 before its data is ready at 4 ...
    """
    problems: list[str] = []
    add = problems.append

    def eps(x: float) -> float:
        return tol * max(1.0, abs(x))

    names = set(cluster.names)
    nodes = set(graph.nodes)
    assignment = dict(plan.assignment)
    for n in graph.nodes:
        if n not in assignment:
            add(f"node {n!r} is not placed")
    for n, d in assignment.items():
        if n not in nodes:
            add(f"plan places {n!r}, which is not a node of the graph")
        if d not in names:
            add(f"node {n!r} is on {d!r}, which is not a device of the cluster "
                f"(devices: {', '.join(cluster.names)})")
    # order per device
    seen: dict[Hashable, str] = {}
    for d, seq in plan.order.items():
        if d not in names:
            if seq:
                add(f"order names device {d!r}, which is not in the cluster (devices: {', '.join(cluster.names)})")
            continue
        for n in seq:
            if n in seen:
                add(f"node {n!r} appears more than once in the orders ({seen[n]!r} and {d!r})")
                continue
            seen[n] = d
            if assignment.get(n) != d:
                add(f"node {n!r} is in the order of {d!r} but assigned to {assignment.get(n)!r}")
    for n, d in assignment.items():
        if n not in seen:
            add(f"node {n!r} (on {d!r}) is missing from the device orders")
    # times
    start, finish = dict(plan.start), dict(plan.finish)
    timed = set()
    for n in graph.nodes:
        s, f = start.get(n), finish.get(n)
        if s is None or f is None:
            add(f"node {n!r} has no {'start' if s is None else 'finish'} time")
            continue
        if not (_finite(s) and _finite(f)):
            add(f"node {n!r} has a non-finite time (start {s!r}, finish {f!r})")
            continue
        if s < -eps(s):
            add(f"node {n!r} starts at {s:.6g} < 0")
        timed.add(n)
    placed = {n for n in timed if assignment.get(n) in names}
    # support and durations
    for n in sorted(placed, key=str):
        d = assignment[n]
        if not cost_model.supports(graph, n, d):
            add(f"node {n!r} is on {d!r}, which cannot run it")
            continue
        want = float(cost_model.node_time(graph, n, d))
        got = finish[n] - start[n]
        if abs(got - want) > eps(want) + eps(finish[n]):
            add(f"node {n!r} on {d!r} lasts {got:.6g}, but the cost model says {want:.6g}")
    # precedence with transfers
    for u, v in graph.edges:
        if u in placed and v in placed:
            c = float(cost_model.edge_time(graph, u, v, assignment[u], assignment[v]))
            ready = finish[u] + c
            if start[v] < ready - eps(ready):
                add(f"edge {u!r}->{v!r}: {v!r} starts at {start[v]:.6g} before its data is ready at "
                    f"{ready:.6g} (finish of {u!r} {finish[u]:.6g} + transfer {c:.6g})")
    # order sorted by start, no overlap
    for d, seq in plan.order.items():
        seq = [n for n in seq if n in timed]
        for a, b in zip(seq, seq[1:]):
            if start[b] < start[a] - eps(start[a]):
                add(f"device {d!r}: order is not sorted by start ({a!r} at {start[a]:.6g} before "
                    f"{b!r} at {start[b]:.6g})")
            elif start[b] < finish[a] - eps(finish[a]):
                add(f"device {d!r}: {b!r} starts at {start[b]:.6g} before {a!r} finishes at {finish[a]:.6g}")
    # makespan
    if timed:
        ms = max(finish[n] for n in timed)
        if not _finite(plan.makespan) or abs(plan.makespan - ms) > eps(ms):
            add(f"makespan is {plan.makespan!r} but the last node finishes at {ms:.6g}")
    bound = dict(plan.options).get("latency_bound")
    if bound is not None and _finite(plan.makespan) and plan.makespan > bound + eps(bound):
        add(f"makespan {plan.makespan:.6g} exceeds the latency_bound {bound:.6g} by {plan.makespan - bound:.6g}")
    # memory
    if memory:
        resident: dict[str, float] = {}
        for n, d in assignment.items():
            if n in nodes and d in names:
                resident[d] = resident.get(d, 0.0) + float(cost_model.node_memory(graph, n))
        for d, used in resident.items():
            spec = cluster.spec(d)
            if spec is not None and used > spec.mem_capacity * (1 + tol):
                add(f"device {d!r} holds {used:.6g} bytes, over its capacity {spec.mem_capacity:.6g} "
                    f"by {used - spec.mem_capacity:.6g}")
    if problems and raise_:
        raise InvalidPlan(problems)
    return problems


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
