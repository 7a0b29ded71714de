"""``OpGraph``: a networkx DiGraph of ops annotated with costs.

This module fixes the attribute contract every other package relies on.

Node attributes (one node per op at ``op`` granularity; a coarse node sums its members):

=============  ==========================================================================
``kind``       one of :data:`OP_KINDS` (what cost models and device support key on)
``op``         the fx opcode (``call_function``, ``call_module``, ``call_method``,
               ``placeholder``, ``get_attr``, ``output``) or ``"group"`` for coarse nodes
``target``     what runs: ``"aten.mm"``, ``"torch.nn.functional.silu"``, a module path ...
``flops``      floating-point operations (int; a multiply-add counts 2)
``bytes_in``   bytes read from tensor inputs, parameters included (int)
``bytes_out``  bytes of the tensor outputs (int)
``param_bytes`` bytes of parameters and buffers the node owns (int; each counted once)
``shape``      output shape: a tuple of ints, or a tuple of such tuples for several outputs
``dtype``      output dtype name, e.g. ``"float32"`` (the first output's for several)
``module``     dotted path of the innermost ``nn.Module`` the op came from (``""`` for root)
``layer``      the repeated block it belongs to (``"layers.3"``) or ``None``
``members``    tuple of the op-level node names it covers (``(name,)`` at op granularity)
=============  ==========================================================================

Edge attribute: ``bytes`` — the size of the tensor the edge carries.

Graph attributes (``g.graph``): ``granularity`` (``"op" | "module" | "layer"``), ``name``
(model name), and the fx ``GraphModule`` the graph came from under ``"module"`` (not
serialised; :attr:`OpGraph.module` raises if the graph was loaded from JSON).
"""
from __future__ import annotations

import math
import sys
from typing import Any

import networkx as nx

from .errors import GraphError

#: The op-kind vocabulary.
OP_KINDS = (
    "input",        # a graph input (placeholder)
    "output",       # the graph output
    "param",        # a parameter or buffer read (get_attr)
    "matmul",       # mm, bmm, linear, addmm, matmul
    "conv",         # convolutions
    "attention",    # fused scaled-dot-product attention
    "elementwise",  # add, mul, neg, ... (pointwise arithmetic)
    "activation",   # silu, gelu, relu, sigmoid, tanh, softmax
    "norm",         # rms/layer/batch norm
    "embedding",    # embedding lookup
    "reduction",    # sum, mean, max, argmax, ...
    "view",         # data movement / view: reshape, transpose, cat, slice, index, ...
    "other",        # anything else (counted, but no device-specific roofline)
    "group",        # a coarse node made of several kinds (see ``kinds`` on it)
)

NODE_ATTRS = ("kind", "op", "target", "flops", "bytes_in", "bytes_out", "param_bytes",
              "shape", "dtype", "module", "layer", "members")

GRANULARITIES = ("op", "module", "layer")

#: Valid ``dtype`` names: torch dtype names without the ``torch.`` prefix (``None`` = no
#: tensor output). Kept here as data so that checking a graph does not import torch.
DTYPES = (
    "bfloat16", "bits16", "bits1x8", "bits2x4", "bits4x2", "bits8", "bool", "complex128",
    "complex32", "complex64", "float16", "float32", "float4_e2m1fn_x2", "float64",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "int1", "int2", "int3", "int4", "int5", "int6", "int7", "int8", "int16", "int32", "int64",
    "qint32", "qint8", "quint2x4", "quint4x2", "quint8",
    "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "uint8", "uint16", "uint32", "uint64",
)

#: Numeric cost attributes of a node: each, where present, a finite number >= 0
#: (``None`` is read as 0 by the cost models and allowed).
COST_ATTRS = ("flops", "bytes_in", "bytes_out", "param_bytes", "state_bytes")


def _torch_dtype(name: str) -> bool:
    """Whether ``name`` is a dtype of the torch already imported (newer than :data:`DTYPES`)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(getattr(torch, name, None), getattr(torch, "dtype", ()))


def check_node_attrs(node: Any, attrs: dict) -> None:
    """Check one node's attributes against the contract above.

    ``kind`` must be one of :data:`OP_KINDS`, ``dtype`` one of :data:`DTYPES` (or None),
    each of :data:`COST_ATTRS` present a finite number ``>= 0``, and a node that carries
    any cost attribute must carry ``bytes_out`` (what every transfer and memory estimate
    reads). Nodes without cost attributes (abstract task graphs) are not checked for it.

    Raises:
        GraphError: naming the node, the field, the bad value and the valid range or choices.

    Example:
        >>> check_node_attrs("mm", {"kind": "matmul", "flops": 10, "bytes_out": 4})
        >>> check_node_attrs("mm", {"kind": "matmul", "flops": -1, "bytes_out": 4})
        Traceback (most recent call last):
        ...
        graphs.errors.GraphError: node 'mm': field 'flops' = -1 is out of range; it must be a finite number >= 0
    """
    kind = attrs.get("kind")
    if kind is not None and kind not in OP_KINDS:
        raise GraphError(f"node {node!r}: field 'kind' = {kind!r} is not a valid kind; valid kinds: "
                         f"{', '.join(OP_KINDS)}")
    if "dtype" in attrs:
        dt = attrs["dtype"]
        if dt is not None and (not isinstance(dt, str) or (dt not in DTYPES and not _torch_dtype(dt))):
            raise GraphError(f"node {node!r}: field 'dtype' = {dt!r} is not a known dtype; valid dtypes: "
                             f"{', '.join(DTYPES)} (or null)")
    for f in COST_ATTRS:
        if f not in attrs or attrs[f] is None:
            continue
        v = attrs[f]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise GraphError(f"node {node!r}: field {f!r} = {v!r} ({type(v).__name__}) is not a number; "
                             "it must be a finite number >= 0")
        if not math.isfinite(v) or v < 0:
            raise GraphError(f"node {node!r}: field {f!r} = {v!r} is out of range; it must be a finite "
                             "number >= 0")
    if "bytes_out" not in attrs and any(f in attrs for f in COST_ATTRS):
        given = [f for f in COST_ATTRS if f in attrs]
        raise GraphError(f"node {node!r}: field 'bytes_out' is missing (the node has {', '.join(given)}); "
                         "a node with cost attributes needs bytes_out, a finite number >= 0")


class OpGraph(nx.DiGraph):
    """A DAG of ops with cost attributes (see the module docstring for the contract).

    Example:
        >>> g = OpGraph(granularity="op", name="toy")
        >>> g.add_node("x", kind="input", flops=0, bytes_out=16)
        >>> g.granularity
        'op'
    """

    @property
    def granularity(self) -> str:
        """``"op"``, ``"module"`` or ``"layer"``."""
        return self.graph.get("granularity", "op")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.graph.get("name", "")

    @name.setter
    def name(self, value: str) -> None:
        self.graph["name"] = value

    @property
    def module(self) -> Any:
        """The ``torch.fx.GraphModule`` this graph was captured from."""
        gm = self.graph.get("module")
        if gm is None:
            raise GraphError(
                "this OpGraph has no GraphModule (it was loaded from JSON or built by hand); "
                "capture the model with graphs.capture(...) to run or partition it"
            )
        return gm

    def total(self, attr: str) -> int:
        """Sum of a numeric node attribute over all nodes (e.g. ``g.total("flops")``)."""
        return sum(int(a.get(attr, 0) or 0) for _, a in self.nodes(data=True))

    def kinds(self) -> dict[str, int]:
        """Number of nodes of each kind."""
        out: dict[str, int] = {}
        for _, a in self.nodes(data=True):
            out[a.get("kind", "other")] = out.get(a.get("kind", "other"), 0) + 1
        return dict(sorted(out.items()))
