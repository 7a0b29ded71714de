"""Coarsen an op-level :class:`~graphs.opgraph.OpGraph` to module or layer granularity.

A coarse node groups op nodes; its costs (``flops``, ``bytes_in``, ``bytes_out``,
``param_bytes``) are the sums of its members', so totals are the same at every granularity.
It records ``members`` (the op-level node names, in topological order, which are fx node
names of ``g.module.graph``) and ``kinds`` (a histogram of the members' kinds). Its ``kind``
is the members' kind when they all share one, else ``"group"``; ``op`` is ``"group"``;
``target`` the group's key; ``shape``/``dtype`` those of the last member whose output leaves
the group; ``module`` the members' common module prefix; ``layer`` their common layer or None.
Input and output nodes stay as they are (with ``kinds`` added).

Grouping keys:

* ``"module"``: inside a repeated block (``layer`` set), the block's direct child the op
  comes from (``layers.3.self_attn``, ``layers.3.mlp``, ``layers.3.input_layernorm``), or
  the block itself for its own ops (residual adds); outside blocks, the root's direct child
  (``embed_tokens``, ``norm``, ``lm_head``) or ``"(root)"`` for ops of the root's forward.
* ``"layer"``: the block (``layers.3``) for ops inside one; otherwise as for ``"module"``.

An edge between two coarse nodes carries the bytes of the distinct tensors crossing it:
for each producer op, the largest of its op edges into the other group (a tensor read by
several members moves once).

Acyclicity: grouping can create a cycle (e.g. root ops both before and after a block
feed into and read from it). When the plain quotient graph has a cycle, groups are split:
ops are visited in topological order and an op joins its group's newest part unless an
edge from one of its predecessors' parts would close a cycle, in which case the group
gets a new part, named ``key#1``, ``key#2``, ... The result is always a DAG.

Reference: the quotient-graph view follows networkx's ``quotient_graph``; the splitting
rule is the usual incremental acyclic clustering (cf. Herrmann et al., "Acyclic
Partitioning of Large Directed Acyclic Graphs", CCGrid 2017).
"""
from __future__ import annotations

from collections import Counter
from typing import Hashable

import networkx as nx

from .errors import CyclicGraphError, GraphError, UnknownNameError
from .opgraph import GRANULARITIES, OpGraph

__all__ = ["coarsen", "group_key", "ROOT_GROUP"]

#: Group key of ops that run in the root module's own forward.
ROOT_GROUP = "(root)"


def group_key(attrs: dict, granularity: str) -> str | None:
    """The group an op node belongs to at ``granularity`` (None: the node stays alone).

    Example:
        >>> a = {"kind": "matmul", "module": "layers.3.self_attn.q_proj", "layer": "layers.3"}
        >>> group_key(a, "module"), group_key(a, "layer")
        ('layers.3.self_attn', 'layers.3')
        >>> group_key({"kind": "matmul", "module": "lm_head", "layer": None}, "layer")
        'lm_head'
    """
    if granularity not in GRANULARITIES:
        raise UnknownNameError("granularity", granularity, GRANULARITIES)
    if granularity == "op" or attrs.get("kind") in ("input", "output"):
        return None
    module = attrs.get("module") or ""
    layer = attrs.get("layer")
    if layer:
        if granularity == "layer" or module == layer or not module.startswith(layer + "."):
            return layer
        rest = module[len(layer) + 1:].split(".", 1)[0]
        return f"{layer}.{rest}"
    return module.split(".", 1)[0] if module else ROOT_GROUP


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") if p else [] for p in paths]
    out = []
    for items in zip(*parts):
        if all(x == items[0] for x in items):
            out.append(items[0])
        else:
            break
    return ".".join(out)


def _assign_parts(g: nx.DiGraph, order: list, key_of: dict) -> dict:
    """Map each node to a group part so that the quotient graph is acyclic."""
    part_of: dict[Hashable, tuple] = {}
    newest: dict[str, tuple] = {}
    count: Counter = Counter()
    parts = nx.DiGraph()
    for n in order:
        key = key_of[n]
        if key is None:
            p = ("node", n)
        else:
            p = newest.get(key)
            preds = {part_of[m] for m in g.predecessors(n)} - {p}
            if p is None or any(nx.has_path(parts, p, q) for q in preds if q in parts):
                p = ("group", key, count[key])
                count[key] += 1
                newest[key] = p
        parts.add_node(p)
        for m in g.predecessors(n):
            q = part_of[m]
            if q != p:
                parts.add_edge(q, p)
        part_of[n] = p
    return part_of


def coarsen(g: OpGraph, granularity: str) -> OpGraph:
    """The graph ``g`` (at ``op`` granularity) grouped to ``granularity``.

    Returns ``g`` itself for ``"op"``. The new graph keeps ``g``'s graph attributes (the
    same ``GraphModule`` under ``"module"``) with ``granularity`` updated.

    Raises:
        UnknownNameError: ``granularity`` is not one of ``op``, ``module``, ``layer``.
        GraphError: ``g`` is not an op-level graph (coarsen the op graph instead).
        CyclicGraphError: ``g`` itself has a cycle.

    Example:
        >>> g = OpGraph(granularity="op", name="toy")
        >>> for n, m in [("x", ""), ("a", "blk.0.f"), ("b", "blk.0.g"), ("y", "")]:
        ...     g.add_node(n, kind="input" if n == "x" else "output" if n == "y" else "matmul",
        ...                flops=0 if m == "" else 10, module=m, layer="blk.0" if m else None)
        >>> g.add_edges_from([("x", "a"), ("a", "b"), ("b", "y")], bytes=4)
        >>> c = coarsen(g, "layer")
        >>> list(c.nodes), c.nodes["blk.0"]["members"], c.total("flops")
        (['x', 'blk.0', 'y'], ('a', 'b'), 20)
    """
    if granularity not in GRANULARITIES:
        raise UnknownNameError("granularity", granularity, GRANULARITIES)
    if g.graph.get("granularity", "op") != "op":
        raise GraphError(f"coarsen needs an op-granularity graph, got granularity "
                         f"{g.graph.get('granularity')!r}; coarsen the op graph instead")
    if granularity == "op":
        return g
    try:
        order = list(nx.topological_sort(g))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(g)
        raise CyclicGraphError(f"graph {g.name!r} has a cycle: {cycle}") from None

    key_of = {n: group_key(g.nodes[n], granularity) for n in order}
    part_of = {n: ("node", n) if k is None else ("group", k, 0) for n, k in key_of.items()}
    quotient = nx.DiGraph()
    quotient.add_nodes_from(part_of.values())
    quotient.add_edges_from((part_of[u], part_of[v]) for u, v in g.edges if part_of[u] != part_of[v])
    if not nx.is_directed_acyclic_graph(quotient):
        part_of = _assign_parts(g, order, key_of)

    # members per part, in topological order; parts ordered by first member
    members: dict[tuple, list] = {}
    for n in order:
        members.setdefault(part_of[n], []).append(n)
    singles = {p[1] for p in members if p[0] == "node"}
    names: dict[tuple, Hashable] = {}
    for p in members:
        if p[0] == "node":
            names[p] = p[1]
            continue
        name = p[1] if p[2] == 0 else f"{p[1]}#{p[2]}"
        while name in singles:  # never collide with an input/output node's name
            name = f"{name}'"
        names[p] = name

    out = OpGraph()
    out.graph.update(g.graph)
    out.graph["granularity"] = granularity
    for p, ms in members.items():
        kinds = dict(sorted(Counter(g.nodes[m].get("kind", "other") for m in ms).items()))
        if p[0] == "node":
            out.add_node(names[p], **{**g.nodes[ms[0]], "kinds": kinds})
            continue
        mset = set(ms)
        leaving = [m for m in ms if any(s not in mset for s in g.successors(m))]
        last = g.nodes[(leaving or ms)[-1]]
        layers = {g.nodes[m].get("layer") for m in ms}
        out.add_node(
            names[p], kind=next(iter(kinds)) if len(kinds) == 1 else "group", op="group",
            target=p[1],
            flops=sum(int(g.nodes[m].get("flops", 0) or 0) for m in ms),
            bytes_in=sum(int(g.nodes[m].get("bytes_in", 0) or 0) for m in ms),
            bytes_out=sum(int(g.nodes[m].get("bytes_out", 0) or 0) for m in ms),
            param_bytes=sum(int(g.nodes[m].get("param_bytes", 0) or 0) for m in ms),
            shape=last.get("shape"), dtype=last.get("dtype"),
            module=_common_prefix([g.nodes[m].get("module") or "" for m in ms]),
            layer=layers.pop() if len(layers) == 1 else None,
            members=tuple(ms), kinds=kinds)
    # edge bytes: per producer op, the largest of its op edges into the consumer group
    per_producer: dict[tuple, dict] = {}
    for u, v, a in g.edges(data=True):
        pu, pv = part_of[u], part_of[v]
        if pu == pv:
            continue
        d = per_producer.setdefault((pu, pv), {})
        d[u] = max(d.get(u, 0), int(a.get("bytes", 0) or 0))
    for (pu, pv), d in per_producer.items():
        out.add_edge(names[pu], names[pv], bytes=sum(d.values()))
    return out
