"""Seeded synthetic task graphs for policy experiments.

Every generator returns a ``networkx.DiGraph`` whose nodes are ``0 .. n-1`` (in a
topological order) with a ``cost`` attribute (abstract work units) and whose edges carry
a ``data`` attribute (abstract data units), the attributes
``policies.abstract.RelatedMachines`` reads. The same arguments always give the same
graph. ``g.graph`` records the generator and its parameters.

Knobs shared by all generators:

* ``mean_cost``: mean node cost;
* ``spread`` in ``[0, 2]``: costs are uniform in ``mean_cost * [1 - spread/2, 1 + spread/2]``
  (``spread=2`` is the HEFT paper's ``[0, 2 w̄]``; ``spread=0`` makes every cost equal);
* ``ccr``: communication-to-computation ratio. Edge data are drawn the same way and then
  scaled so that ``mean(data) / mean(cost) == ccr`` exactly (when the graph has edges).

Reference for the layered generator and the knobs (shape, out-degree, CCR, and the
heterogeneity ``beta`` of :func:`heterogeneous_times`): H. Topcuoglu, S. Hariri, M.-Y. Wu,
"Performance-effective and low-complexity task scheduling for heterogeneous computing",
IEEE TPDS 13(3), 2002, section 5.1.

Example:
    >>> g = layered(20, shape=1.0, ccr=2.0, seed=1)
    >>> g.number_of_nodes(), round(mean_data(g) / mean_cost(g), 6)
    (20, 2.0)
    >>> chain(3, spread=0).nodes[1]["cost"]
    10.0
"""
from __future__ import annotations

import math
from typing import Hashable, Sequence

import networkx as nx
import numpy as np

from .errors import GraphError

__all__ = ["layered", "fork_join", "chain", "in_tree", "out_tree", "heterogeneous_times",
           "edge_times", "mean_cost", "mean_data"]


# ---------------------------------------------------------------------------- checks
def _int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise GraphError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _num(name: str, v: object, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi < math.inf else "")
        raise GraphError(f"{name} must be a finite number {rng}, got {v!r}")
    return float(v)


def _common(mean_cost_: float, spread: float, ccr: float, seed: object) -> np.random.Generator:
    _num("mean_cost", mean_cost_, 0.0, lo_open=True)
    _num("spread", spread, 0.0, 2.0)
    _num("ccr", ccr, 0.0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise GraphError(f"seed must be an integer, got {seed!r}")
    return np.random.default_rng(int(seed))


def _finish(g: nx.DiGraph, rng: np.random.Generator, mean: float, spread: float, ccr: float,
            kind: str, params: dict) -> nx.DiGraph:
    """Draw node costs and edge data, scale data to the CCR, record parameters."""
    lo, hi = mean * (1 - spread / 2), mean * (1 + spread / 2)
    n = g.number_of_nodes()
    costs = rng.uniform(lo, hi, size=n) if spread > 0 else np.full(n, mean)
    for i, x in zip(sorted(g.nodes), costs):
        g.nodes[i]["cost"] = float(x)
    edges = sorted(g.edges)
    if edges:
        data = rng.uniform(lo, hi, size=len(edges)) if spread > 0 else np.full(len(edges), mean)
        mc, md = float(costs.mean()), float(data.mean())
        scale = (ccr * mc / md) if md > 0 else 0.0
        for (u, v), x in zip(edges, data):
            g.edges[u, v]["data"] = float(x) * scale
    g.graph.update(name=f"{kind}({', '.join(f'{k}={v}' for k, v in params.items())})", generator=kind,
                   params=dict(params, mean_cost=mean, spread=spread, ccr=ccr))
    return g


# ---------------------------------------------------------------------------- generators
def layered(n: int, *, shape: float = 1.0, out_degree: int = 2, ccr: float = 1.0,
            mean_cost: float = 10.0, spread: float = 2.0, seed: int = 0) -> nx.DiGraph:
    """A random layered DAG in the style of Topcuoglu et al. 2002, sec. 5.1.

    ``height = round(sqrt(n) / shape)`` levels (at least 1, at most ``n``); the ``n``
    nodes are spread over them at random, every level getting at least one node, so the
    mean width is ``n / height ~ sqrt(n) * shape``. Each node links to
    ``1 .. 2*out_degree - 1`` random nodes of the next level (mean ``out_degree``), and
    every node below the first level has at least one parent there.

    Raises:
        GraphError: ``n < 1``, ``shape <= 0``, ``out_degree < 1``, ``ccr < 0``, ...

    Example:
        >>> g = layered(30, shape=0.5, seed=3)
        >>> nx.is_directed_acyclic_graph(g), g.number_of_nodes(), g.graph["params"]["height"]
        (True, 30, 11)
    """
    n = _int("n", n, 1)
    shape = _num("shape", shape, 0.0, lo_open=True)
    out_degree = _int("out_degree", out_degree, 1)
    rng = _common(mean_cost, spread, ccr, seed)
    height = min(n, max(1, round(math.sqrt(n) / shape)))
    widths = np.ones(height, dtype=int)
    if n > height:
        widths += rng.multinomial(n - height, np.full(height, 1.0 / height))
    levels: list[list[int]] = []
    k = 0
    for w in widths:
        levels.append(list(range(k, k + int(w))))
        k += int(w)
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    for upper, lower in zip(levels, levels[1:]):
        for u in upper:
            deg = min(len(lower), int(rng.integers(1, 2 * out_degree)))
            for v in rng.choice(lower, size=deg, replace=False):
                g.add_edge(u, int(v))
        for v in lower:
            if g.in_degree(v) == 0:
                g.add_edge(int(rng.choice(upper)), v)
    return _finish(g, rng, float(mean_cost), float(spread), float(ccr), "layered",
                   {"n": n, "shape": shape, "out_degree": out_degree, "height": height, "seed": seed})


def fork_join(width: int, depth: int = 1, *, ccr: float = 1.0, mean_cost: float = 10.0,
              spread: float = 1.0, seed: int = 0) -> nx.DiGraph:
    """``depth`` fork-join stages in sequence: a fork node, ``width`` parallel nodes, a join
    node (the join of one stage is the fork of the next). ``1 + depth * (width + 1)`` nodes.

    Example:
        >>> g = fork_join(3, 2, spread=0)
        >>> g.number_of_nodes(), g.out_degree(0), g.in_degree(4), g.out_degree(4)
        (9, 3, 3, 3)
    """
    width = _int("width", width, 1)
    depth = _int("depth", depth, 1)
    rng = _common(mean_cost, spread, ccr, seed)
    g = nx.DiGraph()
    fork = 0
    g.add_node(fork)
    k = 1
    for _ in range(depth):
        mids = list(range(k, k + width))
        join = k + width
        for m in mids:
            g.add_edge(fork, m)
            g.add_edge(m, join)
        fork, k = join, join + 1
    return _finish(g, rng, float(mean_cost), float(spread), float(ccr), "fork_join",
                   {"width": width, "depth": depth, "seed": seed})


def chain(n: int, *, ccr: float = 1.0, mean_cost: float = 10.0, spread: float = 1.0,
          seed: int = 0) -> nx.DiGraph:
    """A path ``0 -> 1 -> ... -> n-1``.

    Example:
        >>> list(chain(4).edges)
        [(0, 1), (1, 2), (2, 3)]
    """
    n = _int("n", n, 1)
    rng = _common(mean_cost, spread, ccr, seed)
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, i + 1) for i in range(n - 1))
    return _finish(g, rng, float(mean_cost), float(spread), float(ccr), "chain", {"n": n, "seed": seed})


def _tree(depth: int, branching: int) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_node(0)
    level, k = [0], 1
    for _ in range(depth - 1):
        nxt = []
        for p in level:
            for _ in range(branching):
                g.add_edge(p, k)
                nxt.append(k)
                k += 1
        level = nxt
    return g


def out_tree(depth: int, branching: int = 2, *, ccr: float = 1.0, mean_cost: float = 10.0,
             spread: float = 1.0, seed: int = 0) -> nx.DiGraph:
    """A complete out-tree (one root, edges pointing away) with ``depth`` levels, each
    node having ``branching`` children: ``sum(branching**k for k < depth)`` nodes.

    Example:
        >>> g = out_tree(3, 2)
        >>> g.number_of_nodes(), g.out_degree(0), g.in_degree(0)
        (7, 2, 0)
    """
    depth = _int("depth", depth, 1)
    branching = _int("branching", branching, 1)
    rng = _common(mean_cost, spread, ccr, seed)
    return _finish(_tree(depth, branching), rng, float(mean_cost), float(spread), float(ccr), "out_tree",
                   {"depth": depth, "branching": branching, "seed": seed})


def in_tree(depth: int, branching: int = 2, *, ccr: float = 1.0, mean_cost: float = 10.0,
            spread: float = 1.0, seed: int = 0) -> nx.DiGraph:
    """A complete in-tree (edges pointing to one sink): the reverse of :func:`out_tree`,
    renumbered so that nodes ``0 .. n-1`` are in a topological order (the sink is last).

    Example:
        >>> g = in_tree(3, 2)
        >>> n = g.number_of_nodes()
        >>> n, g.in_degree(n - 1), g.out_degree(n - 1)
        (7, 2, 0)
    """
    depth = _int("depth", depth, 1)
    branching = _int("branching", branching, 1)
    rng = _common(mean_cost, spread, ccr, seed)
    t = _tree(depth, branching)
    n = t.number_of_nodes()
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from((n - 1 - v, n - 1 - u) for u, v in t.edges)
    return _finish(g, rng, float(mean_cost), float(spread), float(ccr), "in_tree",
                   {"depth": depth, "branching": branching, "seed": seed})


# ---------------------------------------------------------------------------- heterogeneity
def heterogeneous_times(graph: nx.DiGraph, devices: Sequence[str], beta: float = 0.5, seed: int = 0,
                        *, attr: str = "cost") -> dict[Hashable, dict[str, float]]:
    """Unrelated-machines time table: ``w[i][d]`` uniform in ``w_i * [1 - beta/2, 1 + beta/2]``
    (the HEFT paper's heterogeneity range ``beta`` in ``[0, 2]``; ``w_i`` = node ``attr``).

    The result feeds ``policies.abstract.TableCostModel(node_time=..., edge_time=edge_times(g))``.

    Raises:
        GraphError: a bad ``beta``, an empty or repeated device list, a node without ``attr``.

    Example:
        >>> g = chain(2, spread=0)
        >>> t = heterogeneous_times(g, ["x", "y"], beta=0.0)
        >>> t[0]
        {'x': 10.0, 'y': 10.0}
    """
    beta = _num("beta", beta, 0.0, 2.0)
    devices = list(devices)
    if not devices:
        raise GraphError("devices must name at least one device, got none")
    if len(set(devices)) != len(devices):
        raise GraphError(f"devices must be distinct, got {devices!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise GraphError(f"seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    out: dict[Hashable, dict[str, float]] = {}
    for n in graph.nodes:
        if attr not in graph.nodes[n]:
            raise GraphError(f"node {n!r} has no {attr!r} attribute")
        w = float(graph.nodes[n][attr])
        f = rng.uniform(1 - beta / 2, 1 + beta / 2, size=len(devices)) if beta > 0 else np.ones(len(devices))
        out[n] = {d: w * float(x) for d, x in zip(devices, f)}
    return out


def edge_times(graph: nx.DiGraph, bandwidth: float = 1.0, *, attr: str = "data") -> dict[tuple, float]:
    """``{(u, v): data / bandwidth}`` for every edge (the edge table of a TableCostModel).

    Example:
        >>> edge_times(chain(2, spread=0, ccr=0.5), bandwidth=2.0)
        {(0, 1): 2.5}
    """
    bandwidth = _num("bandwidth", bandwidth, 0.0, lo_open=True)
    out = {}
    for u, v, a in graph.edges(data=True):
        if attr not in a:
            raise GraphError(f"edge {u!r}->{v!r} has no {attr!r} attribute")
        out[(u, v)] = float(a[attr]) / bandwidth
    return out


def mean_cost(graph: nx.DiGraph, attr: str = "cost") -> float:
    """Mean node ``attr`` (0 for an empty graph).

    Example:
        >>> g = nx.DiGraph(); g.add_nodes_from([(0, {"cost": 2.0}), (1, {"cost": 4.0})])
        >>> mean_cost(g), mean_cost(nx.DiGraph())
        (3.0, 0.0)
    """
    vals = [float(a[attr]) for _, a in graph.nodes(data=True)]
    return sum(vals) / len(vals) if vals else 0.0


def mean_data(graph: nx.DiGraph, attr: str = "data") -> float:
    """Mean edge ``attr`` (0 for a graph without edges).

    Example:
        >>> g = fork_join(4, ccr=0.5, mean_cost=8.0, spread=0)  # data scaled to the CCR
        >>> mean_data(g), mean_cost(g), mean_data(nx.DiGraph())
        (4.0, 8.0, 0.0)
    """
    vals = [float(a[attr]) for _, _, a in graph.edges(data=True)]
    return sum(vals) / len(vals) if vals else 0.0

