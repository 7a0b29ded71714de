"""JSON import/export of op graphs, and a short human-readable summary.

Format (``version`` 1), one JSON object::

    {"format": "hetsched.opgraph", "version": 1,
     "graph": {<graph attributes except "module">},
     "nodes": [{"id": <node key>, "attrs": {<node attributes>}}, ...],
     "edges": [{"source": <key>, "target": <key>, "attrs": {<edge attributes>}}, ...]}

Values are JSON values, with three tagged forms so that a round trip is lossless:
a tuple is ``{"__tuple__": [...]}`` (shapes, ``members``; nested tuples nest), a dict whose
keys are not all strings (or that uses a tag name as a key) is ``{"__dict__": [[k, v], ...]}``,
and a non-finite float is ``{"__float__": "nan" | "inf" | "-inf"}``. Node keys use the same
encoding, so integer and tuple keys (synthetic task graphs) survive. ``None`` is ``null``.
Lists stay lists. Any other type (tensors, modules, sets) is rejected with
:class:`GraphFormatError` naming the attribute. The fx ``GraphModule`` (graph attribute
``"module"``) is never written; a loaded graph has none (``g.module`` raises).

Loading checks the envelope (``format``, a supported ``version``), that every node has an
``id`` and an ``attrs`` object, that ids are unique, that edges name existing nodes, that a
``kind`` is one of :data:`~graphs.opgraph.OP_KINDS` and a ``granularity`` one of
:data:`~graphs.opgraph.GRANULARITIES`, each node's cost attributes
(:func:`~graphs.opgraph.check_node_attrs`: ``flops``, ``bytes_in``, ``bytes_out``,
``param_bytes``, ``state_bytes`` finite numbers ``>= 0``, ``bytes_out`` present on a node
with cost attributes, ``dtype`` a known dtype name), an edge's ``bytes`` (a finite number
``>= 0``), and that the graph is a DAG (:class:`CyclicGraphError` naming a cycle). Every
error is a :class:`GraphFormatError` naming the node (or edge), the field, the value and
the valid range or choices.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Hashable

import networkx as nx

from .errors import CyclicGraphError, GraphError, GraphFormatError
from .opgraph import GRANULARITIES, OP_KINDS, OpGraph, check_node_attrs

__all__ = ["to_json", "from_json", "save", "load", "summary", "FORMAT", "VERSION"]

FORMAT = "hetsched.opgraph"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
_TAGS = ("__tuple__", "__dict__", "__float__")
_NOT_SERIALISED = ("module",)


def _enc(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return {"__float__": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x, where) for x in v]}
    if isinstance(v, list):
        return [_enc(x, where) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v) and not any(k in _TAGS for k in v):
            return {k: _enc(x, f"{where}.{k}") for k, x in v.items()}
        return {"__dict__": [[_enc(k, where), _enc(x, where)] for k, x in v.items()]}
    # numpy scalars and the like
    item = getattr(v, "item", None)
    if callable(item) and getattr(v, "shape", None) == ():
        return _enc(item(), where)
    raise GraphFormatError(f"{where}: cannot serialise a value of type {type(v).__name__} "
                           "to JSON (allowed: None, bool, int, float, str, tuple, list, dict)")


def _dec(v: Any, where: str) -> Any:
    if isinstance(v, list):
        return [_dec(x, where) for x in v]
    if isinstance(v, dict):
        if len(v) == 1 and "__tuple__" in v:
            if not isinstance(v["__tuple__"], list):
                raise GraphFormatError(f"{where}: '__tuple__' must hold a list")
            return tuple(_dec(x, where) for x in v["__tuple__"])
        if len(v) == 1 and "__dict__" in v:
            pairs = v["__dict__"]
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise GraphFormatError(f"{where}: '__dict__' must hold a list of [key, value] pairs")
            return {_hashable(_dec(k, where), where): _dec(x, where) for k, x in pairs}
        if len(v) == 1 and "__float__" in v:
            try:
                return float(v["__float__"])
            except (TypeError, ValueError):
                raise GraphFormatError(f"{where}: bad '__float__' value {v['__float__']!r}") from None
        return {k: _dec(x, f"{where}.{k}") for k, x in v.items()}
    return v


def _hashable(k: Any, where: str) -> Hashable:
    try:
        hash(k)
    except TypeError:
        raise GraphFormatError(f"{where}: key {k!r} is not hashable (use a string, int or "
                               "tuple)") from None
    return k


def to_json(g: nx.DiGraph, indent: int | None = None) -> str:
    """Serialise ``g`` (an :class:`OpGraph` or any DiGraph) to a JSON string.

    Example:
        >>> g = OpGraph(granularity="op", name="toy")
        >>> g.add_node("x", kind="input", shape=(2, 3), layer=None)
        >>> g.add_node("y", kind="output", shape=(2, 3), layer=None)
        >>> g.add_edge("x", "y", bytes=24)
        >>> h = from_json(to_json(g))
        >>> h.nodes["x"]["shape"], h.edges["x", "y"], h.name
        ((2, 3), {'bytes': 24}, 'toy')
    """
    doc = {
        "format": FORMAT, "version": VERSION,
        "graph": {k: _enc(v, f"graph.{k}") for k, v in g.graph.items() if k not in _NOT_SERIALISED},
        "nodes": [{"id": _enc(n, f"node {n!r}"),
                   "attrs": {k: _enc(v, f"node {n!r}.{k}") for k, v in a.items()}}
                  for n, a in g.nodes(data=True)],
        "edges": [{"source": _enc(u, "edge"), "target": _enc(v, "edge"),
                   "attrs": {k: _enc(x, f"edge {u!r}->{v!r}.{k}") for k, x in a.items()}}
                  for u, v, a in g.edges(data=True)],
    }
    return json.dumps(doc, indent=indent, allow_nan=False)


def _need(obj: dict, key: str, typ: type | tuple, where: str) -> Any:
    if key not in obj:
        raise GraphFormatError(f"{where}: missing field {key!r}")
    if not isinstance(obj[key], typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise GraphFormatError(f"{where}: field {key!r} must be a {names}, got "
                               f"{type(obj[key]).__name__}")
    return obj[key]


def from_json(text: str | bytes) -> OpGraph:
    """Parse a graph written by :func:`to_json` (see the module docstring for the checks).

    Example:
        >>> from_json('{"format": "hetsched.opgraph", "version": 9, "graph": {}, '
        ...           '"nodes": [], "edges": []}')
        Traceback (most recent call last):
        ...
        graphs.errors.GraphFormatError: unsupported version 9; supported versions: 1
    """
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as e:
        raise GraphFormatError(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise GraphFormatError(f"top level must be a JSON object, got {type(doc).__name__}")
    fmt = doc.get("format")
    if fmt != FORMAT:
        raise GraphFormatError(f"field 'format' must be {FORMAT!r}, got {fmt!r}")
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise GraphFormatError(f"unsupported version {version!r}; supported versions: "
                               f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    gattrs = _dec(_need(doc, "graph", dict, "top level"), "graph")
    if not isinstance(gattrs, dict):
        raise GraphFormatError("field 'graph' must hold an object of graph attributes")
    gran = gattrs.get("granularity", "op")
    if gran not in GRANULARITIES:
        raise GraphFormatError(f"graph.granularity {gran!r} is not one of "
                               f"{', '.join(GRANULARITIES)}")
    g = OpGraph()
    g.graph.update(gattrs)
    for i, item in enumerate(_need(doc, "nodes", list, "top level")):
        where = f"nodes[{i}]"
        if not isinstance(item, dict):
            raise GraphFormatError(f"{where} must be an object, got {type(item).__name__}")
        n = _hashable(_dec(_need(item, "id", (str, int, dict), where), where), where)
        attrs = _dec(_need(item, "attrs", dict, where), where)
        if n in g:
            raise GraphFormatError(f"{where}: duplicate node id {n!r}")
        kind = attrs.get("kind")
        if kind is not None and kind not in OP_KINDS:
            raise GraphFormatError(f"{where} (node {n!r}): unknown kind {kind!r}; valid kinds: "
                                   f"{', '.join(OP_KINDS)}")
        try:
            check_node_attrs(n, attrs)
        except GraphError as e:
            raise GraphFormatError(f"{where}: {e}") from None
        g.add_node(n, **attrs)
    for i, item in enumerate(_need(doc, "edges", list, "top level")):
        where = f"edges[{i}]"
        if not isinstance(item, dict):
            raise GraphFormatError(f"{where} must be an object, got {type(item).__name__}")
        u = _dec(_need(item, "source", (str, int, dict), where), where)
        v = _dec(_need(item, "target", (str, int, dict), where), where)
        for end, x in (("source", u), ("target", v)):
            if _hashable(x, where) not in g:
                raise GraphFormatError(f"{where}: {end} {x!r} is not a node id")
        eattrs = _dec(item.get("attrs", {}), where)
        if not isinstance(eattrs, dict):
            raise GraphFormatError(f"{where}: field 'attrs' must be an object, got {type(eattrs).__name__}")
        b = eattrs.get("bytes")
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float))
                              or not math.isfinite(b) or b < 0):
            raise GraphFormatError(f"{where} (edge {u!r} -> {v!r}): field 'bytes' = {b!r} is out of range; "
                                   "it must be a finite number >= 0")
        g.add_edge(u, v, **eattrs)
    if not nx.is_directed_acyclic_graph(g):
        cycle = [u for u, _ in nx.find_cycle(g)]
        raise CyclicGraphError(f"graph {g.name!r} has a cycle: "
                               f"{' -> '.join(map(repr, cycle + cycle[:1]))}")
    return g


def save(g: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write ``g`` to ``path`` as JSON (see :func:`to_json`).

    Example:
        >>> import json, os, tempfile
        >>> g = OpGraph(name="pair"); g.add_edge("a", "b", bytes=64)
        >>> path = os.path.join(tempfile.mkdtemp(), "pair.json")
        >>> save(g, path)
        >>> doc = json.load(open(path))
        >>> doc["format"], doc["graph"]["name"], doc["edges"][0]["attrs"]
        ('hetsched.opgraph', 'pair', {'bytes': 64})
    """
    text = to_json(g, indent=1)
    with open(path, "w") as f:
        f.write(text)


def load(path: str | os.PathLike) -> OpGraph:
    """Read a graph written by :func:`save`.

    Example:
        >>> import os, tempfile
        >>> g = OpGraph(name="t"); g.add_edge(0, 1, bytes=8)
        >>> p = os.path.join(tempfile.mkdtemp(), "g.json"); save(g, p)
        >>> sorted(load(p).edges(data=True))
        [(0, 1, {'bytes': 8})]
    """
    with open(path) as f:
        return from_json(f.read())


# ------------------------------------------------------------------ summary
def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(b) < 1000 or unit == "GB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1000
    return f"{b:.1f} GB"  # pragma: no cover


def summary(g: nx.DiGraph, top: int = 5) -> str:
    """A short human-readable summary: nodes/edges, counts per kind, total GFLOPs,
    parameter MB, activation bytes (sum of ``bytes_out`` over non-param nodes), and the
    ``top`` heaviest nodes by FLOPs.

    Example:
        >>> g = OpGraph(granularity="op", name="toy")
        >>> g.add_node("x", kind="input", flops=0, bytes_out=8, param_bytes=0)
        >>> g.add_node("mm", kind="matmul", flops=2_000_000, bytes_out=8, param_bytes=4_000_000)
        >>> g.add_edge("x", "mm", bytes=8)
        >>> print(summary(g, top=1))
        OpGraph 'toy' (op granularity): 2 nodes, 1 edges
        kinds: input 1, matmul 1
        total: 0.002 GFLOPs, params 4.0 MB, activations 16 B
        heaviest nodes (FLOPs):
          mm  matmul  0.002 GFLOPs  params 4.0 MB
    """
    kinds: dict[str, int] = {}
    for _, a in g.nodes(data=True):
        k = a.get("kind", "other")
        kinds[k] = kinds.get(k, 0) + 1
    flops = sum(int(a.get("flops", 0) or 0) for _, a in g.nodes(data=True))
    params = sum(int(a.get("param_bytes", 0) or 0) for _, a in g.nodes(data=True))
    acts = sum(int(a.get("bytes_out", 0) or 0) for _, a in g.nodes(data=True)
               if a.get("kind") != "param")
    gran = g.graph.get("granularity", "op")
    lines = [f"OpGraph {g.graph.get('name', '')!r} ({gran} granularity): "
             f"{g.number_of_nodes()} nodes, {g.number_of_edges()} edges",
             "kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
             f"total: {flops / 1e9:.4g} GFLOPs, params {params / 1e6:.1f} MB, "
             f"activations {_fmt_bytes(acts)}",
             "heaviest nodes (FLOPs):"]
    heavy = sorted(g.nodes(data=True), key=lambda na: -int(na[1].get("flops", 0) or 0))[:top]
    for n, a in heavy:
        lines.append(f"  {n}  {a.get('kind', 'other')}  {int(a.get('flops', 0) or 0) / 1e9:.4g} "
                     f"GFLOPs  params {int(a.get('param_bytes', 0) or 0) / 1e6:.1f} MB")
    return "\n".join(lines)
