"""The cost-model interface policies see, and helpers shared by every cost model.

A policy never reads device specs or node attributes directly: it asks a
:class:`CostModel` how long a node takes on a device and how long an edge's data takes to
move between two devices. So the same policy runs on a real model's op graph (roofline
model from device specs) and on an abstract task graph (related machines, or a table of
times as in the scheduling papers).

Concrete models live beside this file: ``policies.roofline.RooflineCostModel``,
``policies.abstract.RelatedMachines`` and ``TableCostModel``,
``policies.calibrated.CalibratedCostModel``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Hashable, Iterable, Sequence

import networkx as nx
import numpy as np

from .errors import CostModelError

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan


class CostModel(ABC):
    """Time of a node on a device, time of an edge's transfer, and energy.

    Subclasses implement :meth:`node_time` and :meth:`edge_time`; everything else has a
    default built on those two. Times are in seconds (or the abstract unit of a task
    graph's ``cost`` attribute: the model does not care, as long as it is consistent).

    Example:
        >>> class PerFlop(CostModel):  # seconds = flops / speed; 1 ms between devices
        ...     devices = ("slow", "fast")
        ...     speed = {"slow": 1e9, "fast": 4e9}
        ...     def node_time(self, graph, node, device):
        ...         return graph.nodes[node]["flops"] / self.speed[device]
        ...     def edge_time(self, graph, u, v, src, dst):
        ...         return 0.0 if src == dst else 1e-3
        >>> g = nx.DiGraph([("a", "b")]); nx.set_node_attributes(g, 4e6, "flops")
        >>> PerFlop().time_matrix(g).tolist()
        [[0.004, 0.001], [0.004, 0.001]]
        >>> PerFlop().edge_time_matrix(g)[0].tolist()
        [[0.0, 0.001], [0.001, 0.0]]
    """

    #: Device names this model can price, in the order used by :meth:`time_matrix`.
    devices: tuple[str, ...] = ()

    @abstractmethod
    def node_time(self, graph: nx.DiGraph, node: Hashable, device: str) -> float:
        """Seconds node ``node`` of ``graph`` runs on ``device``."""

    @abstractmethod
    def edge_time(self, graph: nx.DiGraph, u: Hashable, v: Hashable, src: str, dst: str) -> float:
        """Seconds to move the data of edge ``u -> v`` from ``src`` to ``dst``; 0 when equal."""

    def transfer_time(self, nbytes: float, src: str, dst: str) -> float:
        """Seconds to move ``nbytes`` from ``src`` to ``dst``; 0 when equal.

        Models that price edges without sizes (tables) raise :class:`CostModelError`.
        """
        raise CostModelError(f"{type(self).__name__} prices edges, not byte counts")

    def supports(self, graph: nx.DiGraph, node: Hashable, device: str) -> bool:
        """Whether ``device`` can run ``node`` at all (op kinds it lacks, ...)."""
        return True

    def power(self, device: str) -> tuple[float, float] | None:
        """(active, idle) watts of ``device``, or None when the model knows no power."""
        return None

    def node_memory(self, graph: nx.DiGraph, node: Hashable) -> float:
        """Bytes a node keeps resident on its device: parameters, its output and the state
        it keeps between requests (a decoder layer's KV cache).

        Reads the op-graph attributes ``param_bytes``, ``bytes_out`` and ``state_bytes``
        (each 0 when absent, as in abstract task graphs, which then never hit a memory
        limit; :func:`graphs.decoding.step_graph` sets ``state_bytes`` on layer nodes).

        Example:
            >>> import networkx as nx
            >>> from policies.abstract import TableCostModel
            >>> g = nx.DiGraph(); g.add_node("l", param_bytes=100, bytes_out=10, state_bytes=1000)
            >>> TableCostModel({"l": {"x": 1.0}}, {}).node_memory(g, "l")
            1110.0
        """
        a = graph.nodes[node]
        return (float(a.get("param_bytes", 0) or 0) + float(a.get("bytes_out", 0) or 0)
                + float(a.get("state_bytes", 0) or 0))

    # ------------------------------------------------------------ derived views
    def time_matrix(self, graph: nx.DiGraph, nodes: Sequence[Hashable] | None = None,
                    devices: Sequence[str] | None = None) -> np.ndarray:
        """``T[i, j]`` = time of ``nodes[i]`` on ``devices[j]`` (``inf`` where unsupported).

        Example:
            >>> from policies.abstract import TableCostModel
            >>> import networkx as nx
            >>> g = nx.DiGraph(); g.add_node("a")
            >>> TableCostModel({"a": {"x": 1.0, "y": 2.0}}, {}).time_matrix(g).tolist()
            [[1.0, 2.0]]
        """
        nodes = list(graph.nodes) if nodes is None else list(nodes)
        devices = list(self.devices if devices is None else devices)
        T = np.empty((len(nodes), len(devices)))
        for i, n in enumerate(nodes):
            for j, d in enumerate(devices):
                T[i, j] = self.node_time(graph, n, d) if self.supports(graph, n, d) else np.inf
        return T

    def edge_time_matrix(self, graph: nx.DiGraph, edges: Sequence[tuple] | None = None,
                         devices: Sequence[str] | None = None) -> np.ndarray:
        """``C[e, a, b]`` = time of ``edges[e]``'s data from ``devices[a]`` to ``devices[b]``.

        The diagonal ``C[e, a, a]`` is 0. Models override this with a vectorised version;
        the default calls :meth:`edge_time` per edge and device pair.

        Example:
            >>> from policies.abstract import TableCostModel
            >>> import networkx as nx
            >>> g = nx.DiGraph([("a", "b")])
            >>> m = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 1, "y": 1}}, {("a", "b"): 5.0})
            >>> m.edge_time_matrix(g)[0].tolist()
            [[0.0, 5.0], [5.0, 0.0]]
        """
        edges = list(graph.edges) if edges is None else list(edges)
        devices = list(self.devices if devices is None else devices)
        C = np.zeros((len(edges), len(devices), len(devices)))
        for e, (u, v) in enumerate(edges):
            for a, da in enumerate(devices):
                for b, db in enumerate(devices):
                    if a != b:
                        C[e, a, b] = self.edge_time(graph, u, v, da, db)
        return C

    def energy(self, graph: nx.DiGraph, plan: "Plan") -> float | None:
        """Joules of one request under ``plan``: active power over each device's busy time
        plus idle power over the rest of the makespan, for the devices the plan uses.

        Returns None when the model knows no power for some used device.
        """
        return plan_energy(self, plan)


def plan_energy(cost_model: CostModel, plan: "Plan", busy: dict[str, float] | None = None) -> float | None:
    """Energy of ``plan`` under ``cost_model``'s powers (see :meth:`CostModel.energy`).

    ``busy`` (device -> busy seconds) defaults to the sum of predicted node durations.

    Example:
        >>> from policies.abstract import TableCostModel
        >>> from policies.plan import Plan
        >>> p = Plan({"a": "x", "b": "y"}, {"x": ("a",), "y": ("b",)}, {"a": 0.0, "b": 1.0},
        ...          {"a": 1.0, "b": 3.0}, 3.0)
        >>> watts = {"x": (10.0, 1.0), "y": (5.0, 2.0)}  # (active, idle)
        >>> cm = TableCostModel({"a": {"x": 1.0}, "b": {"y": 2.0}}, {}, power=watts)
        >>> plan_energy(cm, p)  # x: 10 W * 1 s + 1 W * 2 s; y: 5 W * 2 s + 2 W * 1 s
        24.0
        >>> plan_energy(TableCostModel({"a": {"x": 1.0}, "b": {"y": 2.0}}, {}), p) is None  # no powers
        True
    """
    if busy is None:
        busy = {}
        for n, d in plan.assignment.items():
            busy[d] = busy.get(d, 0.0) + (plan.finish[n] - plan.start[n])
    total = 0.0
    for d in plan.devices_used:
        p = cost_model.power(d)
        if p is None:
            return None
        active, idle = p
        b = busy.get(d, 0.0)
        total += active * b + idle * max(plan.makespan - b, 0.0)
    return total


def check_dag(graph: nx.DiGraph) -> None:
    """Raise :class:`graphs.errors.CyclicGraphError` naming a cycle if ``graph`` has one.

    Example:
        >>> check_dag(nx.DiGraph([("a", "b")]))  # a DAG: returns None
        >>> check_dag(nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a")]))
        Traceback (most recent call last):
        ...
        graphs.errors.CyclicGraphError: graph has a cycle: a -> b -> c -> a
    """
    from graphs.errors import CyclicGraphError

    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise CyclicGraphError(
            "graph has a cycle: " + " -> ".join(str(u) for u, _ in cycle) + f" -> {cycle[0][0]}"
        )


def require_attr(graph: nx.DiGraph, attr: str, *, edges: bool = False, nodes: Iterable | None = None) -> None:
    """Raise :class:`CostModelError` naming the first node (or edge) missing ``attr``."""
    if edges:
        for u, v, a in graph.edges(data=True):
            if attr not in a:
                raise CostModelError(f"edge {u!r}->{v!r} has no {attr!r} attribute")
    else:
        for n in (graph.nodes if nodes is None else nodes):
            if attr not in graph.nodes[n]:
                raise CostModelError(f"node {n!r} has no {attr!r} attribute")
