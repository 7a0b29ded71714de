"""Roofline cost model: node times from device specs, transfers from link specs.

Time of a node on a device (Williams, Waterman, Patterson, "Roofline: an insightful
visual performance model for multicore architectures", CACM 52(4), 2009)::

    t = launches * launch_overhead + max(flops / peak_flops[dtype], bytes / mem_bandwidth)

with ``bytes = bytes_in + bytes_out`` (node attributes of the op-graph contract,
:mod:`graphs.opgraph`). Choices for nodes that are not kernels:

* ``input``, ``output``, ``param``: 0 seconds. They launch nothing; the bytes they stand
  for are read by their consumers (``bytes_in`` includes parameters) or moved by edges.
* ``view`` with 0 flops: one launch overhead only (reshape, transpose, slice are
  metadata changes) -- except data-movement targets (``cat``, ``stack``, ``contiguous``,
  ``clone``, ``copy``, ``index``, ``gather``, ``scatter``, ``repeat``, ``pad``, ``where``,
  ``masked``, ``roll``, ``flip``, ``to``), which also pay their memory time.
* a coarse node (``graphs.coarsen``): one launch per member that is not free (counted from
  its ``kinds`` histogram, else ``len(members)``; see :func:`launches`), and the roofline
  of the summed flops and bytes: an optimistic bound (the max of sums is at most the sum
  of maxes). Supported on a device when every kind in its ``kinds`` attribute is.
* a dtype the device lists no peak for uses :meth:`DeviceSpec.flops_for`'s fallback.

Transfers: ``latency + bytes / bandwidth`` over ``cluster.link(src, dst)``, 0 on the same
device. A device with ``active_power == idle_power == 0`` has no known power.

Example:
    >>> from executors.devices import Cluster, DeviceSpec
    >>> from graphs.opgraph import OpGraph
    >>> dev = DeviceSpec("d", "cpu", {"float32": 1e9}, mem_bandwidth=1e9, mem_capacity=1e9)
    >>> g = OpGraph()
    >>> g.add_node("mm", kind="matmul", flops=2_000_000, bytes_in=1000, bytes_out=1000,
    ...            dtype="float32")
    >>> RooflineCostModel(Cluster.from_specs([dev])).node_time(g, "mm", "d")  # compute-bound
    0.002
"""
from __future__ import annotations

import re
from typing import Hashable, Sequence

import networkx as nx
import numpy as np

from executors.devices import Cluster

from .cost import CostModel
from .errors import CostModelError

#: Node kinds that launch nothing and cost 0 seconds.
FREE_KINDS = frozenset({"input", "output", "param"})
#: Node kinds every device is assumed to support (no kernel runs).
ALWAYS_SUPPORTED = FREE_KINDS
#: Words in a view node's target that mark a copy (the node pays its memory time).
COPY_WORDS = frozenset({"cat", "stack", "contiguous", "clone", "copy", "index", "gather", "scatter",
              "repeat", "pad", "where", "masked", "roll", "flip", "to"})


def launches(attrs: dict) -> int:
    """Ops a node launches: 0 for input/output/param; for a coarse node, its members that
    are not free (from its ``kinds`` histogram, else ``len(members)``); else 1.

    Example:
        >>> launches({"kind": "group", "kinds": {"matmul": 2, "view": 1, "param": 3}})
        3
        >>> launches({"kind": "matmul", "members": ("mm",)})
        1
    """
    kind = attrs.get("kind", "other")
    if kind in FREE_KINDS:
        return 0
    kinds = attrs.get("kinds")
    if isinstance(kinds, dict) and kinds:
        return max(1, sum(int(c) for k, c in kinds.items() if k not in FREE_KINDS))
    return max(1, len(attrs.get("members") or ()))


def _is_copy(target: object) -> bool:
    """Whether a view node's target names a data-movement op (a word of COPY_WORDS)."""
    words = re.split(r"[^a-z0-9]+", str(target or "").lower())
    return any(w in COPY_WORDS for w in words)


class RooflineCostModel(CostModel):
    """Analytical node and transfer times from a cluster's device and link specs.

    Args:
        cluster: a :class:`~executors.devices.Cluster` whose devices all have specs.

    Raises:
        CostModelError: the cluster has abstract devices (no specs).

    Example:
        >>> from executors.devices import DeviceSpec
        >>> npu = DeviceSpec("npu", "npu", {"float16": 8e12}, mem_bandwidth=5e10, mem_capacity=8e9)
        >>> cpu = DeviceSpec("cpu", "cpu", {"float32": 1e11}, mem_bandwidth=2e10, mem_capacity=8e9)
        >>> m = RooflineCostModel(Cluster.from_specs([npu, cpu]))
        >>> g = nx.DiGraph()
        >>> g.add_node("mm", kind="matmul", flops=1e9, bytes_in=4e6, bytes_out=4e6, dtype="float16")
        >>> m.node_time(g, "mm", "npu"), m.node_time(g, "mm", "cpu")  # memory-, then compute-bound
        (0.00016, 0.01)
        >>> m.transfer_time(1e6, "cpu", "npu")  # default link: 20 us + 1 MB / 4 GB/s
        0.00027
    """

    def __init__(self, cluster: Cluster):
        if not isinstance(cluster, Cluster):
            raise CostModelError(f"RooflineCostModel needs an executors.devices.Cluster, "
                                 f"got {type(cluster).__name__}")
        missing = [n for n in cluster.names if cluster.specs[n] is None]
        if missing:
            raise CostModelError(
                f"RooflineCostModel needs device specs; devices without one: {', '.join(missing)} "
                "(build the cluster with Cluster.from_specs or executors.profiles.cluster, or "
                "use policies.abstract.RelatedMachines / TableCostModel for abstract devices)")
        self.cluster = cluster
        self.devices = tuple(cluster.names)

    # ------------------------------------------------------------------ nodes
    def _attrs(self, graph: nx.DiGraph, node: Hashable) -> dict:
        try:
            return graph.nodes[node]
        except KeyError:
            raise CostModelError(f"node {node!r} is not in the graph") from None

    def node_time(self, graph: nx.DiGraph, node: Hashable, device: str) -> float:
        """Roofline seconds of ``node`` on ``device`` (see the module docstring)."""
        a = self._attrs(graph, node)
        spec = self.cluster.spec(device)
        kind = a.get("kind", "other")
        if kind in FREE_KINDS:
            return 0.0
        flops = float(a.get("flops", 0) or 0)
        nbytes = float(a.get("bytes_in", 0) or 0) + float(a.get("bytes_out", 0) or 0)
        n = launches(a)
        if kind == "view" and flops == 0 and not _is_copy(a.get("target")):
            return n * spec.launch_overhead
        compute = flops / spec.flops_for(str(a.get("dtype", "float32")))
        memory = nbytes / spec.mem_bandwidth
        return n * spec.launch_overhead + max(compute, memory)

    def time_matrix(self, graph: nx.DiGraph, nodes: Sequence[Hashable] | None = None,
                    devices: Sequence[str] | None = None) -> np.ndarray:
        """Vectorised :meth:`node_time` for all (node, device) pairs; ``inf`` where unsupported.

        Example:
            >>> from executors.profiles import cluster
            >>> from graphs.opgraph import OpGraph
            >>> g = OpGraph(); g.add_node("x", kind="input")
            >>> RooflineCostModel(cluster(["edge-cpu-a76"])).time_matrix(g).tolist()
            [[0.0]]
        """
        nodes = list(graph.nodes) if nodes is None else list(nodes)
        devices = list(self.devices if devices is None else devices)
        n = len(nodes)
        flops = np.empty(n)
        nbytes = np.empty(n)
        nlaunch = np.empty(n)
        free = np.zeros(n, bool)
        meta_view = np.zeros(n, bool)
        dtypes: dict[str, list[int]] = {}
        kinds: list[object] = []
        for i, v in enumerate(nodes):
            a = self._attrs(graph, v)
            kind = a.get("kind", "other")
            flops[i] = float(a.get("flops", 0) or 0)
            nbytes[i] = float(a.get("bytes_in", 0) or 0) + float(a.get("bytes_out", 0) or 0)
            nlaunch[i] = launches(a)
            free[i] = kind in FREE_KINDS
            meta_view[i] = kind == "view" and flops[i] == 0 and not _is_copy(a.get("target"))
            dtypes.setdefault(str(a.get("dtype", "float32")), []).append(i)
            kinds.append(a.get("kinds") if kind == "group" and a.get("kinds") else kind)
        T = np.empty((n, len(devices)))
        for j, d in enumerate(devices):
            spec = self.cluster.spec(d)
            compute = np.empty(n)
            for dt, idx in dtypes.items():
                compute[idx] = flops[idx] / spec.flops_for(dt)
            col = nlaunch * spec.launch_overhead + np.maximum(compute, nbytes / spec.mem_bandwidth)
            col[meta_view] = nlaunch[meta_view] * spec.launch_overhead
            col[free] = 0.0
            if spec.supported_kinds is not None:
                for i, k in enumerate(kinds):
                    if not self._kind_ok(spec, k):
                        col[i] = np.inf
            T[:, j] = col
        return T

    @staticmethod
    def _kind_ok(spec, kind: object) -> bool:
        if isinstance(kind, str):
            return kind in ALWAYS_SUPPORTED or spec.supports(kind)
        return all(k in ALWAYS_SUPPORTED or spec.supports(k) for k in kind)  # a group's kinds

    def supports(self, graph: nx.DiGraph, node: Hashable, device: str) -> bool:
        """Whether ``device``'s spec lists the node's kind (a group: all its ``kinds``)."""
        a = self._attrs(graph, node)
        kind = a.get("kind", "other")
        if kind == "group" and a.get("kinds"):
            kind = a["kinds"]
        return self._kind_ok(self.cluster.spec(device), kind)

    # -------------------------------------------------------------- transfers
    def transfer_time(self, nbytes: float, src: str, dst: str) -> float:
        """``latency + nbytes / bandwidth`` of the link ``src -> dst``; 0 on one device.

        Example:
            >>> from executors.profiles import cluster
            >>> c = cluster(["a100-pcie", "edge-cpu-a76"])
            >>> RooflineCostModel(c).transfer_time(25e9, "edge-cpu-a76", "a100-pcie")
            1.00001
        """
        if src == dst:
            self.cluster.check(src)
            return 0.0
        link = self.cluster.link(src, dst)
        if link is None:
            raise CostModelError(f"no link between devices {src!r} and {dst!r} and the cluster "
                                 "has no default link; give Cluster links or a default_link")
        return link.time(float(nbytes))

    def edge_time(self, graph: nx.DiGraph, u: Hashable, v: Hashable, src: str, dst: str) -> float:
        """Transfer time of the edge's ``bytes`` attribute from ``src`` to ``dst``."""
        try:
            a = graph.edges[u, v]
        except KeyError:
            raise CostModelError(f"edge {u!r}->{v!r} is not in the graph") from None
        if "bytes" not in a:
            raise CostModelError(f"edge {u!r}->{v!r} has no 'bytes' attribute")
        return self.transfer_time(a["bytes"], src, dst)

    def power(self, device: str) -> tuple[float, float] | None:
        """(active, idle) watts from the spec; None when both are 0 (unknown)."""
        s = self.cluster.spec(device)
        if s.active_power == 0 and s.idle_power == 0:
            return None
        return (s.active_power, s.idle_power)
