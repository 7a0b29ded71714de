"""Placing a decoder for generation: prefill, decode, or the mix of a workload.

Prefill runs a whole prompt through every weight at once (compute-bound: FLOPs grow with
the prompt, weights are read once); a decode step runs one token per sequence
(memory-bound: every weight and the KV cache are read for a handful of FLOPs). A roofline
cost model prices the two very differently, so the best split of the layers over devices
can differ. :func:`phase_graphs` builds both step graphs of a decoder
(:func:`graphs.decoding.step_graph`, with the KV cache a full batch at full context keeps
resident on every layer node); :func:`place_phase` places for one phase, or for the mix of
a workload: one prefill of ``prompt_len`` tokens plus ``new_tokens`` decode steps at a
batch of ``max_batch`` sequences, i.e. node times weighted ``1`` (prefill) and
``new_tokens / max_batch`` (decode, per sequence), through :class:`PhaseMix`.

Example:
    >>> from executors.devices import Cluster
    >>> from executors import profiles
    >>> from graphs.models import get_config
    >>> from policies.roofline import RooflineCostModel
    >>> cl = Cluster.from_specs([profiles.load(n, name="sim:" + n)
    ...                          for n in ("atlas-200i-a2", "edge-cpu-a76")])
    >>> cm = RooflineCostModel(cl)
    >>> plan, g, _ = place_phase("heft", get_config("small"), cl, cm, "decode", prompt_len=64,
    ...                          new_tokens=64, max_batch=4, max_context=256)
    >>> sorted(set(plan.assignment.values())) <= ["sim:atlas-200i-a2", "sim:edge-cpu-a76"]
    True
"""
from __future__ import annotations

from typing import Any, Hashable, Sequence

import networkx as nx

from graphs.decoding import step_graph
from graphs.errors import UnknownNameError

from .cost import CostModel

__all__ = ["PHASES", "PhaseMix", "phase_graphs", "place_phase"]

#: The phases a generation placement can optimise.
PHASES = ("prefill", "decode", "mix")


class PhaseMix(CostModel):
    """A cost model that prices a node as the weighted sum of its times in several graphs
    with the same node names (one per phase): ``sum_i w_i * base.node_time(G_i, node, d)``,
    edges likewise. Memory, support and power come from ``base`` on the graph asked about.

    Example:
        >>> import networkx as nx
        >>> from policies.abstract import TableCostModel
        >>> base = TableCostModel({"a": {"x": 2.0, "y": 1.0}}, {})
        >>> g1, g2 = nx.DiGraph(), nx.DiGraph()
        >>> g1.add_node("a"); g2.add_node("a")
        >>> PhaseMix(base, [(g1, 1.0), (g2, 3.0)]).node_time(g1, "a", "x")
        8.0
    """

    def __init__(self, base: CostModel, parts: Sequence[tuple[nx.DiGraph, float]]):
        if not parts:
            raise ValueError("PhaseMix needs at least one (graph, weight) pair")
        self.base = base
        self.parts = tuple((g, float(w)) for g, w in parts)
        self.devices = tuple(base.devices)
        self.cluster = getattr(base, "cluster", None)

    def node_time(self, graph: nx.DiGraph, node: Hashable, device: str) -> float:
        return sum(w * self.base.node_time(g, node, device) for g, w in self.parts if w)

    def edge_time(self, graph: nx.DiGraph, u: Hashable, v: Hashable, src: str, dst: str) -> float:
        if src == dst:
            return 0.0
        return sum(w * self.base.edge_time(g, u, v, src, dst) for g, w in self.parts if w)

    def transfer_time(self, nbytes: float, src: str, dst: str) -> float:
        return self.base.transfer_time(nbytes, src, dst)

    def supports(self, graph: nx.DiGraph, node: Hashable, device: str) -> bool:
        return all(self.base.supports(g, node, device) for g, _ in self.parts)

    def power(self, device: str) -> tuple[float, float] | None:
        return self.base.power(device)

    def node_memory(self, graph: nx.DiGraph, node: Hashable) -> float:
        return self.base.node_memory(graph, node)


def phase_graphs(config: Any, *, prompt_len: int = 128, new_tokens: int = 128, max_batch: int = 1,
                 max_context: int | None = None, itemsize: int = 4) -> dict[str, nx.DiGraph]:
    """``{"prefill": G_p, "decode": G_d}``: one prefill of ``prompt_len`` tokens, and one
    decode step of ``max_batch`` sequences half-way through the output (context
    ``prompt_len + new_tokens // 2``). Both carry the resident KV cache of ``max_batch``
    sequences at ``max_context`` positions (default prompt + output) as ``state_bytes``.

    Example:
        >>> from graphs.models import get_config
        >>> g = phase_graphs(get_config("tiny"), prompt_len=8, new_tokens=8)
        >>> g["prefill"].nodes["layers.0"]["flops"] > g["decode"].nodes["layers.0"]["flops"]
        True
    """
    ctx = max_context if max_context is not None else prompt_len + new_tokens
    kv = max_batch * ctx
    return {
        "prefill": step_graph(config, batch=1, new_tokens=prompt_len, context=0, itemsize=itemsize,
                              kv_positions=kv, name=f"{config.name}:prefill"),
        "decode": step_graph(config, batch=max_batch, new_tokens=1, context=prompt_len + new_tokens // 2,
                             itemsize=itemsize, kv_positions=kv, name=f"{config.name}:decode"),
    }


def place_phase(policy: Any, config: Any, cluster: Any, cost_model: CostModel, phase: str, *,
                prompt_len: int = 128, new_tokens: int = 128, max_batch: int = 1,
                max_context: int | None = None, itemsize: int = 4,
                options: dict | None = None) -> tuple[Any, nx.DiGraph, CostModel]:
    """Place ``config``'s decoder for ``phase`` (see the module docstring).

    ``policy`` is a name from :func:`policies.available` or a Policy. Returns
    ``(plan, graph, cost_model)``: the graph and cost model the plan was made with (for
    ``"mix"``, the decode graph and a :class:`PhaseMix`), to simulate or tabulate it.

    Example:
        >>> from executors import profiles
        >>> from graphs.models import get_config
        >>> from policies.roofline import RooflineCostModel
        >>> cl = profiles.cluster(["atlas-200i-a2", "edge-cpu-a76"])
        >>> plan, g, cm = place_phase("heft", get_config("tiny"), cl, RooflineCostModel(cl), "mix",
        ...                           prompt_len=32, new_tokens=32, max_batch=2)
        >>> type(cm).__name__, set(plan.assignment) == set(g.nodes), plan.makespan > 0
        ('PhaseMix', True, True)
    """
    if phase not in PHASES:
        raise UnknownNameError("generation phase", phase, PHASES)
    from . import get

    pol = get(policy, **(options or {})) if isinstance(policy, str) else policy
    gs = phase_graphs(config, prompt_len=prompt_len, new_tokens=new_tokens, max_batch=max_batch,
                      max_context=max_context, itemsize=itemsize)
    if phase == "mix":
        g = gs["decode"]
        cm: CostModel = PhaseMix(cost_model, [(gs["prefill"], 1.0), (g, new_tokens / max_batch)])
    else:
        g, cm = gs[phase], cost_model
    return pol.place(g, cluster, cm), g, cm
