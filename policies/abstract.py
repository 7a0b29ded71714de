"""Abstract cost models of the scheduling literature: related machines and explicit tables.

* :class:`RelatedMachines` -- "uniform (related) machines" (Graham, Lawler, Lenstra,
  Rinnooy Kan, 1979): a task of cost ``c`` takes ``c / speed`` on a machine; an edge of
  ``data`` units takes ``latency + data / bandwidth`` between two machines.
* :class:`TableCostModel` -- unrelated machines with an explicit table of times per task
  and processor, and a communication time per edge, as in the HEFT paper (Topcuoglu,
  Hariri, Wu, "Performance-effective and low-complexity task scheduling for heterogeneous
  computing", IEEE TPDS 13(3), 2002).

Both price abstract task graphs: nodes need no op-graph attributes beyond the ones named
here, and devices are plain names (``Cluster.from_names``).

Example:
    >>> import networkx as nx
    >>> g = nx.DiGraph(); g.add_node("a", cost=6.0); g.add_node("b", cost=2.0)
    >>> g.add_edge("a", "b", data=8.0)
    >>> m = RelatedMachines(speed={"fast": 3.0, "slow": 1.0}, bandwidth=4.0, latency=1.0)
    >>> m.node_time(g, "a", "fast"), m.edge_time(g, "a", "b", "fast", "slow")
    (2.0, 3.0)
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Hashable, Mapping, Sequence

import networkx as nx
import numpy as np

from .cost import CostModel
from .errors import CostModelError


def _check_power(power: Mapping[str, tuple[float, float]] | None, devices: Sequence[str]) -> dict:
    out = {}
    for d, p in dict(power or {}).items():
        if d not in devices:
            raise CostModelError(f"power given for unknown device {d!r}; devices: {', '.join(devices)}")
        try:
            active, idle = (float(x) for x in p)
        except (TypeError, ValueError):
            raise CostModelError(f"power of device {d!r} must be (active, idle) watts, got {p!r}") from None
        if not (active >= 0 and idle >= 0 and math.isfinite(active) and math.isfinite(idle)):
            raise CostModelError(f"power of device {d!r} must be finite watts >= 0, got {p!r}")
        out[d] = (active, idle)
    return out


def _positive(what: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise CostModelError(f"{what} must be a finite number > 0, got {v!r}")
    return float(v)


class RelatedMachines(CostModel):
    """Related machines: ``time = cost / speed``, ``transfer = latency + data / bandwidth``.

    Args:
        speed: device name -> speed (> 0); the device order is the mapping's order.
        bandwidth: one number for every pair, or ``{(a, b): bw}`` (symmetric unless both
            directions are given); data units per second, > 0.
        latency: seconds added to every transfer between two different devices (>= 0).
        power: optional device -> (active, idle) watts.

    Nodes need a ``cost`` attribute and edges a ``data`` attribute.

    Raises:
        CostModelError: zero or negative speed or bandwidth (names the device or pair).

    Example:
        >>> RelatedMachines({"a": 0.0})
        Traceback (most recent call last):
        ...
        policies.errors.CostModelError: speed of device 'a' must be a finite number > 0, got 0.0
    """

    def __init__(self, speed: Mapping[str, float],
                 bandwidth: float | Mapping[tuple[str, str], float] = 1.0,
                 latency: float = 0.0,
                 power: Mapping[str, tuple[float, float]] | None = None):
        if not speed:
            raise CostModelError("RelatedMachines needs at least one device in speed={device: s}")
        self.speed = {d: _positive(f"speed of device {d!r}", s) for d, s in speed.items()}
        self.devices = tuple(self.speed)
        if isinstance(bandwidth, Mapping):
            self.bandwidth: float | dict = {}
            for (a, b), bw in bandwidth.items():
                for d in (a, b):
                    if d not in self.speed:
                        raise CostModelError(f"bandwidth names unknown device {d!r}; devices: "
                                             f"{', '.join(self.devices)}")
                self.bandwidth[(a, b)] = _positive(f"bandwidth between {a!r} and {b!r}", bw)
            for (a, b), bw in list(self.bandwidth.items()):
                self.bandwidth.setdefault((b, a), bw)
        else:
            self.bandwidth = _positive("bandwidth", bandwidth)
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) \
                or not math.isfinite(latency) or latency < 0:
            raise CostModelError(f"latency must be a finite number >= 0, got {latency!r}")
        self.latency = float(latency)
        self._power = _check_power(power, self.devices)

    def _speed(self, device: str) -> float:
        try:
            return self.speed[device]
        except KeyError:
            raise CostModelError(f"unknown device {device!r}; devices: {', '.join(self.devices)}") from None

    def node_time(self, graph: nx.DiGraph, node: Hashable, device: str) -> float:
        """``cost / speed[device]``."""
        a = graph.nodes[node]
        if "cost" not in a:
            raise CostModelError(f"node {node!r} has no 'cost' attribute (RelatedMachines prices "
                                 "node attribute 'cost')")
        return float(a["cost"]) / self._speed(device)

    def time_matrix(self, graph: nx.DiGraph, nodes: Sequence[Hashable] | None = None,
                    devices: Sequence[str] | None = None) -> np.ndarray:
        """Vectorised: the outer product of costs and inverse speeds."""
        nodes = list(graph.nodes) if nodes is None else list(nodes)
        devices = list(self.devices if devices is None else devices)
        cost = np.empty(len(nodes))
        for i, n in enumerate(nodes):
            a = graph.nodes[n]
            if "cost" not in a:
                raise CostModelError(f"node {n!r} has no 'cost' attribute (RelatedMachines prices "
                                     "node attribute 'cost')")
            cost[i] = float(a["cost"])
        inv = np.array([1.0 / self._speed(d) for d in devices])
        return np.outer(cost, inv)

    def edge_time_matrix(self, graph: nx.DiGraph, edges: Sequence[tuple] | None = None,
                         devices: Sequence[str] | None = None) -> np.ndarray:
        """Vectorised: ``latency + data / bandwidth`` for every edge and device pair."""
        edges = list(graph.edges) if edges is None else list(edges)
        devices = list(self.devices if devices is None else devices)
        data = np.empty(len(edges))
        for e, (u, v) in enumerate(edges):
            a = graph.edges[u, v]
            if "data" not in a:
                raise CostModelError(f"edge {u!r}->{v!r} has no 'data' attribute (RelatedMachines "
                                     "prices edge attribute 'data')")
            data[e] = float(a["data"])
        k = len(devices)
        inv_bw = np.zeros((k, k))
        lat = np.zeros((k, k))
        for a_, da in enumerate(devices):
            for b_, db in enumerate(devices):
                if a_ != b_:
                    lat[a_, b_] = self.latency
                    inv_bw[a_, b_] = self.transfer_time(1.0, da, db) - self.latency
        return lat[None, :, :] + data[:, None, None] * inv_bw[None, :, :]

    def transfer_time(self, nbytes: float, src: str, dst: str) -> float:
        """``latency + nbytes / bandwidth(src, dst)``; 0 on the same device."""
        self._speed(src), self._speed(dst)
        if src == dst:
            return 0.0
        if isinstance(self.bandwidth, dict):
            if (src, dst) not in self.bandwidth:
                raise CostModelError(f"no bandwidth given between devices {src!r} and {dst!r}")
            bw = self.bandwidth[(src, dst)]
        else:
            bw = self.bandwidth
        return self.latency + float(nbytes) / bw

    def edge_time(self, graph: nx.DiGraph, u: Hashable, v: Hashable, src: str, dst: str) -> float:
        """Transfer time of the edge's ``data`` attribute."""
        a = graph.edges[u, v]
        if "data" not in a:
            raise CostModelError(f"edge {u!r}->{v!r} has no 'data' attribute (RelatedMachines "
                                 "prices edge attribute 'data')")
        return self.transfer_time(a["data"], src, dst)

    def power(self, device: str) -> tuple[float, float] | None:
        """(active, idle) watts if given."""
        return self._power.get(device)


class TableCostModel(CostModel):
    """Explicit times: ``node_time[node][device]`` seconds, ``edge_time[(u, v)]`` seconds.

    An edge's time applies when its two ends run on different devices (0 on the same one).
    A device missing from a node's row (or an ``inf`` time) means the node cannot run there.

    Args:
        node_time: node -> {device: seconds}.
        edge_time: (u, v) -> seconds.
        devices: device order (default: order of first appearance in ``node_time``).
        power: optional device -> (active, idle) watts.

    Example:
        >>> import networkx as nx
        >>> g = nx.DiGraph([("a", "b")])
        >>> m = TableCostModel({"a": {"x": 1.0, "y": 2.0}, "b": {"x": 3.0}}, {("a", "b"): 5.0})
        >>> m.edge_time(g, "a", "b", "x", "y"), m.supports(g, "b", "y")
        (5.0, False)
    """

    def __init__(self, node_time: Mapping[Hashable, Mapping[str, float]],
                 edge_time: Mapping[tuple[Hashable, Hashable], float],
                 devices: Sequence[str] | None = None,
                 power: Mapping[str, tuple[float, float]] | None = None):
        seen: dict[str, None] = {}
        self.table: dict[Hashable, dict[str, float]] = {}
        for n, row in node_time.items():
            if not isinstance(row, Mapping):
                raise CostModelError(f"node_time[{n!r}] must be a mapping device -> seconds, got {row!r}")
            r = {}
            for d, t in row.items():
                if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t) or t < 0:
                    raise CostModelError(f"node_time[{n!r}][{d!r}] must be a number >= 0, got {t!r}")
                r[d] = float(t)
                seen.setdefault(d, None)
            self.table[n] = r
        self.devices = tuple(devices) if devices is not None else tuple(seen)
        unknown = [d for d in seen if d not in self.devices]
        if unknown:
            raise CostModelError(f"node_time names device(s) {unknown} not in devices "
                                 f"{list(self.devices)}")
        self.edges: dict[tuple, float] = {}
        for e, t in edge_time.items():
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise CostModelError(f"edge_time[{e!r}] must be a finite number >= 0, got {t!r}")
            self.edges[tuple(e)] = float(t)
        self._power = _check_power(power, self.devices)

    def _row(self, node: Hashable) -> dict[str, float]:
        try:
            return self.table[node]
        except KeyError:
            raise CostModelError(f"node {node!r} has no row in the time table") from None

    def node_time(self, graph: nx.DiGraph, node: Hashable, device: str) -> float:
        """The table's time of ``node`` on ``device``."""
        row = self._row(node)
        if device not in row:
            if device not in self.devices:
                raise CostModelError(f"unknown device {device!r}; devices: {', '.join(self.devices)}")
            raise CostModelError(f"node {node!r} has no time on device {device!r}; it has times "
                                 f"on: {', '.join(row)}")
        return row[device]

    def supports(self, graph: nx.DiGraph, node: Hashable, device: str) -> bool:
        """True when the table gives a finite time for ``node`` on ``device``."""
        t = self._row(node).get(device)
        return t is not None and math.isfinite(t)

    def edge_time(self, graph: nx.DiGraph, u: Hashable, v: Hashable, src: str, dst: str) -> float:
        """The table's time of edge ``u -> v`` if ``src != dst``, else 0."""
        if src == dst:
            return 0.0
        try:
            return self.edges[(u, v)]
        except KeyError:
            raise CostModelError(f"edge {u!r}->{v!r} has no time in the edge table") from None

    def time_matrix(self, graph: nx.DiGraph, nodes: Sequence[Hashable] | None = None,
                    devices: Sequence[str] | None = None) -> np.ndarray:
        """Vectorised table lookup; ``inf`` where a node has no time on a device."""
        nodes = list(graph.nodes) if nodes is None else list(nodes)
        devices = list(self.devices if devices is None else devices)
        for d in devices:
            if d not in self.devices:
                raise CostModelError(f"unknown device {d!r}; devices: {', '.join(self.devices)}")
        inf = math.inf
        return np.array([[self._row(n).get(d, inf) for d in devices] for n in nodes],
                        dtype=float).reshape(len(nodes), len(devices))

    def edge_time_matrix(self, graph: nx.DiGraph, edges: Sequence[tuple] | None = None,
                         devices: Sequence[str] | None = None) -> np.ndarray:
        """Vectorised: each edge's table time off the diagonal, 0 on it."""
        edges = list(graph.edges) if edges is None else list(edges)
        k = len(self.devices if devices is None else devices)
        t = np.empty(len(edges))
        for e, (u, v) in enumerate(edges):
            try:
                t[e] = self.edges[(u, v)]
            except KeyError:
                raise CostModelError(f"edge {u!r}->{v!r} has no time in the edge table") from None
        return t[:, None, None] * (1.0 - np.eye(k))[None, :, :]

    def power(self, device: str) -> tuple[float, float] | None:
        """(active, idle) watts if given."""
        return self._power.get(device)

    # ------------------------------------------------------------------ JSON
    @classmethod
    def from_json(cls, path_or_dict: str | os.PathLike | Mapping[str, Any],
                  power: Mapping[str, tuple[float, float]] | None = None) -> "TableCostModel":
        """Read the table format of ``heft_paper_example.json``.

        The format: ``processors`` (list of names), ``node_time`` (task -> list of times, one
        per processor, in that order), ``edge_time`` (``"u->v"`` -> time). Task keys stay
        strings as in the file (``"1"`` .. ``"10"``); :func:`graph_from_table` builds the
        matching graph.

        Example:
            >>> d = {"processors": ["P1", "P2"], "node_time": {"1": [3, 4], "2": [5, 1]},
            ...      "edge_time": {"1->2": 2}}
            >>> m = TableCostModel.from_json(d)
            >>> m.devices, m.node_time(graph_from_table(d), "2", "P2")
            (('P1', 'P2'), 1.0)
        """
        d = _table_dict(path_or_dict)
        procs = d["processors"]
        node_time = {n: dict(zip(procs, row)) for n, row in d["node_time"].items()}
        edge_time = {_edge_key(k): t for k, t in d["edge_time"].items()}
        return cls(node_time, edge_time, devices=procs, power=power)


def _edge_key(k: str) -> tuple[str, str]:
    parts = str(k).split("->")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise CostModelError(f"edge_time key {k!r} is not of the form 'u->v'")
    return parts[0].strip(), parts[1].strip()


def _table_dict(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(path_or_dict, Mapping):
        d, where = dict(path_or_dict), "table"
    else:
        where = os.fspath(path_or_dict)
        try:
            with open(where, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CostModelError(f"cannot read table {where}: {e}") from e
    for key in ("processors", "node_time", "edge_time"):
        if key not in d:
            raise CostModelError(f"{where}: missing field {key!r} (need processors, node_time, edge_time)")
    procs = d["processors"]
    if not isinstance(procs, list) or not procs or not all(isinstance(p, str) for p in procs):
        raise CostModelError(f"{where}: field 'processors' must be a non-empty list of names, got {procs!r}")
    for n, row in d["node_time"].items():
        if not isinstance(row, list) or len(row) != len(procs):
            raise CostModelError(f"{where}: node_time[{n!r}] must be a list of {len(procs)} times "
                                 f"(one per processor), got {row!r}")
    return d


def graph_from_table(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> nx.DiGraph:
    """The task graph of a table file: node keys as in the file (strings), edges from
    ``edge_time``. The graph's ``name`` is the file's ``source`` (if any) and its
    ``published`` results (if any) are kept under ``graph.graph["published"]``.

    Example:
        >>> g = graph_from_table({"processors": ["P"], "node_time": {"a": [1], "b": [2]},
        ...                       "edge_time": {"a->b": 3}})
        >>> sorted(g.edges)
        [('a', 'b')]
    """
    d = _table_dict(path_or_dict)
    g = nx.DiGraph(name=d.get("source", ""), published=dict(d.get("published", {})))
    g.add_nodes_from(d["node_time"])
    for k in d["edge_time"]:
        u, v = _edge_key(k)
        for x in (u, v):
            if x not in d["node_time"]:
                raise CostModelError(f"edge_time key {k!r} names task {x!r} that has no node_time row")
        g.add_edge(u, v)
    return g
