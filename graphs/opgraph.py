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
