"""Split a captured model by a placement into same-device fx submodules and a partition DAG.

:func:`partition` takes an :class:`~graphs.opgraph.OpGraph` captured from a model (any
granularity) and an assignment ``node -> device name`` (a ``Plan.assignment``), and returns
a :class:`PartitionedModel`: one :class:`Partition` per region of consecutive same-device
ops, each an executable ``torch.fx.GraphModule`` that owns its parameters, plus the DAG of
values flowing between partitions.

The split itself is :func:`split_graph_module`, a transform over a ``GraphModule`` that
takes the decision as a plain callable from fx node to region id (the policy-as-callable
shape of ``torch.fx.passes.split_module``). It differs from ``split_module`` in two ways
the runtime needs: parameters and buffers read with ``get_attr`` are copied *into* every
partition that reads them (never passed in as inputs, so weights never travel with a
request), and every submodule returns a tuple, even of one value.

Regions (see :func:`regions`): nodes are visited in the graph's topological order; a node
joins a partition of its own device that already holds one of its inputs, else the latest
partition of its device, provided the partition graph stays acyclic (``A(dev1) -> B(dev2)
-> C(dev1)`` puts ``C`` in a new partition); otherwise it opens a new partition.  A
partition runs as a unit and releases its outputs when it ends, so merging trades
concurrency for fewer launches; see the notes on :func:`regions`.

Example:
    >>> import torch, torch.fx
    >>> class M(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         return self.b(torch.relu(self.a(x)))
    >>> gm = torch.fx.symbolic_trace(M())
    >>> g = OpGraph(granularity="op", module=gm)  # graphs.capture(...) builds this for real
    >>> for n in gm.graph.nodes:
    ...     kind = {"placeholder": "input", "output": "output"}.get(n.op, "other")
    ...     g.add_node(n.name, kind=kind, members=(n.name,))
    >>> pm = partition(g, {"a": "cpu", "relu": "cpu", "b": "sim:npu"})
    >>> [(p.device, p.inputs, p.outputs) for p in pm.parts]
    [('cpu', ('x',), ('relu',)), ('sim:npu', ('relu',), ('b',))]
    >>> x = torch.randn(2, 4)
    >>> torch.equal(pm(x), gm(x))
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

import networkx as nx
import torch
import torch.fx as fx

from .errors import GraphError
from .opgraph import OpGraph
from .capture import META_KEY as _META_KEY

__all__ = ["Partition", "PartitionedModel", "OutputSpec", "ValueRef", "partition", "regions",
           "split_graph_module"]

#: OpGraph node kinds that need no device of their own.
DEVICELESS_KINDS = ("input", "output", "param")


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ValueRef:
    """A named value (an fx node's result) inside an :class:`OutputSpec` structure.

    Example:
        >>> spec = OutputSpec({"logits": ValueRef("fc"), "hidden": [ValueRef("h0"), ValueRef("h1")]})
        >>> spec.names, spec.build({"fc": 0.5, "h0": 1, "h1": 2})
        (('fc', 'h0', 'h1'), {'logits': 0.5, 'hidden': [1, 2]})
    """

    name: str  # fx node name: a model input or some partition's output


@dataclass(frozen=True)
class OutputSpec:
    """How to rebuild the model's output (a pytree) from named values.

    ``structure`` is the model's output with every tensor replaced by a :class:`ValueRef`;
    constants stay as they are. Tuples, lists and dicts are rebuilt as plain ones.

    Example:
        >>> spec = OutputSpec((ValueRef("a"), {"b": ValueRef("b"), "k": 3}))
        >>> spec.names
        ('a', 'b')
        >>> spec.build({"a": 1, "b": 2})
        (1, {'b': 2, 'k': 3})
    """

    structure: Any  # the output pytree with ValueRef leaves

    @property
    def names(self) -> tuple[str, ...]:
        """Value names the output needs, in first-use order."""
        out: list[str] = []
        _walk(self.structure, lambda r: out.append(r.name) if r.name not in out else None)
        return tuple(out)

    def build(self, values: Mapping[str, Any]) -> Any:
        """The output pytree with each :class:`ValueRef` replaced by ``values[name]``."""
        def rebuild(x: Any) -> Any:
            if isinstance(x, ValueRef):
                return values[x.name]
            if isinstance(x, tuple) and not hasattr(x, "_fields"):
                return tuple(rebuild(v) for v in x)
            if isinstance(x, tuple):  # namedtuple
                return type(x)(*(rebuild(v) for v in x))
            if isinstance(x, list):
                return [rebuild(v) for v in x]
            if isinstance(x, dict):
                return {k: rebuild(v) for k, v in x.items()}
            return x

        return rebuild(self.structure)


def _walk(x: Any, fn: Callable[[ValueRef], None]) -> None:
    if isinstance(x, ValueRef):
        fn(x)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _walk(v, fn)
    elif isinstance(x, dict):
        for v in x.values():
            _walk(v, fn)


@dataclass(frozen=True, eq=False)
class Partition:
    """One same-device region of the model, runnable on its own.

    ``module(*args)`` takes the values named by ``inputs`` in that order and returns a tuple
    of the values named by ``outputs`` in that order. The module owns (shares, in-process)
    the parameters it reads, so it can be pickled and shipped to an executor.

    Example:
        >>> import torch, torch.fx
        >>> from graphs.capture import capture
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> x = torch.randn(3, 4)
        >>> g = capture(model, (x,))  # nodes input_1, _0, _1, _2, output
        >>> first, second = partition(g, {"_0": "cpu", "_1": "cpu", "_2": "sim:npu"}).parts
        >>> first.device, first.inputs, first.outputs, first.flops > 0
        ('cpu', ('input_1',), ('_1',), True)
        >>> h, = first(x)  # runs on its own: Linear and ReLU
        >>> torch.equal(h, model[1](model[0](x)))
        True
    """

    id: int  # position in PartitionedModel.parts (a topological order)
    device: str  # device name from the assignment
    module: fx.GraphModule  # the submodule; returns a tuple of len(outputs)
    inputs: tuple[str, ...]  # value names it consumes, in argument order
    outputs: tuple[str, ...]  # value names it produces, in return order
    nodes: tuple = ()  # OpGraph nodes with ops in it (in graph order)
    fx_nodes: tuple[str, ...] = ()  # fx node names it computes
    flops: int = 0  # FLOPs of its ops (its share of each OpGraph node's flops)
    shares: Mapping[Hashable, float] = field(default_factory=dict)  # OpGraph node -> fraction of
    # the node's work done here (1.0 unless a coarse node's ops span several partitions)
    param_bytes: int = 0  # bytes of the parameters and buffers it owns
    bytes_in: int = 0  # bytes of its input values (0 for values of unknown size)
    bytes_out: int = 0  # bytes of its output values

    def __call__(self, *args: Any) -> tuple:
        return self.module(*args)

    def predicted(self, graph: nx.DiGraph, cost_model: Any, device: str | None = None) -> float:
        """Seconds this partition takes on ``device`` (default: its own) by ``cost_model``
        (a ``policies.cost.CostModel``): its share of each op-graph node's ``node_time``.
        This is what a simulated executor reports (``executor.load(part, predicted)``)."""
        device = self.device if device is None else device
        return float(sum(self.shares.get(n, 1.0) * cost_model.node_time(graph, n, device)
                         for n in self.nodes))


@dataclass(frozen=True, eq=False)
class PartitionedModel:
    """A model split into :class:`Partition` s, runnable in-process as a reference.

    ``parts`` are in a topological order (``parts[i].id == i``); ``dag`` has the partition
    ids as nodes and an edge ``i -> j`` with attributes ``values`` (names, tuple) and
    ``bytes`` (int) when ``j`` consumes outputs of ``i``.

    Example:
        >>> import torch, torch.fx
        >>> from graphs.capture import capture
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> x = torch.randn(3, 4)
        >>> g = capture(model, (x,))  # nodes input_1, _0, _1, _2, output
        >>> pm = partition(g, {"_0": "cpu", "_1": "cpu", "_2": "sim:npu"})
        >>> len(pm), pm.devices, pm.dag.edges[0, 1]["values"], pm.dag.edges[0, 1]["bytes"]
        (2, ('cpu', 'sim:npu'), ('_1',), 96)
        >>> torch.allclose(pm(x), model(x))  # in-process reference run
        True
    """

    parts: tuple[Partition, ...]  # in topological order
    dag: nx.DiGraph  # partition id -> partition id, edge attrs values, bytes
    input_names: tuple[str, ...]  # the model's placeholders, in order
    input_defaults: Mapping[str, Any]  # placeholder name -> default value, where it has one
    output_spec: OutputSpec  # how to rebuild the model output from values
    producer: Mapping[str, int] = field(default_factory=dict)  # value name -> partition id

    @property
    def devices(self) -> tuple[str, ...]:
        """Device of each partition, in ``parts`` order."""
        return tuple(p.device for p in self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def bind(self, *inputs: Any, **kw: Any) -> dict[str, Any]:
        """Map call arguments to the model's input names (defaults filled in)."""
        if len(inputs) > len(self.input_names):
            raise GraphError(f"model takes {len(self.input_names)} inputs "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        values = dict(zip(self.input_names, inputs))
        for k, v in kw.items():
            if k not in self.input_names:
                raise GraphError(f"unknown input {k!r}; inputs: {', '.join(self.input_names)}")
            if k in values:
                raise GraphError(f"input {k!r} given twice")
            values[k] = v
        for name in self.input_names:
            if name not in values:
                if name not in self.input_defaults:
                    raise GraphError(f"missing input {name!r}; inputs: {', '.join(self.input_names)}")
                values[name] = self.input_defaults[name]
        return values

    def predicted(self, graph: nx.DiGraph, cost_model: Any) -> tuple[float, ...]:
        """:meth:`Partition.predicted` of every partition on its own device."""
        return tuple(p.predicted(graph, cost_model) for p in self.parts)

    def __call__(self, *inputs: Any, **kw: Any) -> Any:
        """Run every partition in order in this process; equals the unpartitioned model."""
        values = self.bind(*inputs, **kw)
        for p in self.parts:
            outs = p.module(*(values[n] for n in p.inputs))
            values.update(zip(p.outputs, outs))
        return self.output_spec.build(values)


# ----------------------------------------------------------------- fx splitting
def _fx_order(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(gm.graph.nodes)}


def _attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def split_graph_module(gm: fx.GraphModule, region_of: Callable[[fx.Node], Hashable | None]
                       ) -> list[tuple[Hashable, fx.GraphModule, tuple[str, ...], tuple[str, ...]]]:
    """Split ``gm`` into one submodule per region id returned by ``region_of``.

    ``region_of`` is called on every ``call_*`` node (and on ``get_attr`` nodes, where
    None means "copy into each region that reads it"); a region must be a set of nodes
    whose inputs from other regions do not depend on the region itself (the region graph
    must be acyclic). Each submodule takes the values it reads from outside as
    placeholders (named after the producing fx nodes, in first-use order) and returns a
    tuple of the values used outside it (the model output included), in graph order.

    Returns ``[(region, module, inputs, outputs), ...]`` in order of first node.

    Example:
        >>> import torch, torch.fx
        >>> gm = torch.fx.symbolic_trace(lambda x: (x + 1) * 2)
        >>> [(r, i, o) for r, _, i, o in split_graph_module(gm, lambda n: n.name == "mul")]
        [(False, ('x',), ('add',)), (True, ('add',), ('mul',))]
    """
    nodes = list(gm.graph.nodes)
    region: dict[fx.Node, Hashable] = {}
    order: list[Hashable] = []
    for n in nodes:
        if n.op in ("placeholder", "output"):
            continue
        r = region_of(n)
        if r is None:
            if n.op == "get_attr":
                continue
            raise GraphError(f"region_of returned None for fx node {n.name!r} ({n.op} {n.target})")
        region[n] = r
        if r not in order:
            order.append(r)
    result = []
    for r in order:
        members = [n for n in nodes if region.get(n) == r]
        mset = set(members)
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        root: dict[str, Any] = {}
        inputs: list[str] = []
        # placeholders first, in first-use order
        for n in members:
            for a in n.all_input_nodes:
                if a in mset or a in env:
                    continue
                if a.op == "get_attr" and a not in region:
                    continue
                env[a] = g.placeholder(a.name)
                inputs.append(a.name)

        def arg(a: fx.Node) -> fx.Node:
            if a not in env:  # a get_attr copied into this region
                root[a.target] = _attr(gm, a.target)
                env[a] = g.get_attr(a.target)
            return env[a]

        for n in members:
            if n.op in ("call_module", "get_attr"):
                root[n.target] = _attr(gm, n.target)
            env[n] = g.node_copy(n, arg)
        outputs = [n for n in members if any(u not in mset for u in n.users)]
        g.output(tuple(env[n] for n in outputs))
        sub = fx.GraphModule(root, g, class_name=f"Part_{r}")
        result.append((r, sub, tuple(inputs), tuple(n.name for n in outputs)))
    return result


# ------------------------------------------------------------------- regions
def _fx_devices(graph: OpGraph, assignment: Mapping[Hashable, str]) -> dict[str, str]:
    """fx node name -> device, for the compute nodes covered by assigned OpGraph nodes."""
    out: dict[str, str] = {}
    for node, a in graph.nodes(data=True):
        kind = a.get("kind")
        if kind in DEVICELESS_KINDS:
            continue
        if node not in assignment:
            raise GraphError(f"assignment has no device for node {node!r} (kind {kind!r}); "
                             f"assign every node whose kind is not one of {', '.join(DEVICELESS_KINDS)}")
        dev = assignment[node]
        if not isinstance(dev, str) or not dev:
            raise GraphError(f"assignment maps node {node!r} to {dev!r}; a device name must be a non-empty string")
        for m in a.get("members") or (node,):
            out[str(m)] = dev
    return out


def regions(gm: fx.GraphModule, device_of: Mapping[str, str]) -> dict[str, int]:
    """Region id of every fx compute node: maximal same-device runs with an acyclic region graph.

    ``device_of`` maps fx node names to devices. Nodes it does not cover (``get_attr``
    reads, and ops a coarse graph dropped) take the device of their first input that has
    one, else of their first user, else the most common device; ``get_attr`` nodes read only
    by compute nodes get no region (they are copied into each region that reads them).

    Visiting nodes in topological order, a node on device ``d`` joins, in this order of
    preference, a region of ``d`` holding one of its inputs (latest first), or the latest
    region of ``d``, unless joining would close a cycle in the region graph (some input's
    region already depends on it); otherwise it opens a new region. The region graph stays
    acyclic at every step, so the result is always executable.

    Notes:
        A region runs as one unit, so joining two independent same-device runs makes the
        consumers of the first wait for the second. The rule above keeps to the program
        order (the latest region), which is the usual trade-off between launch count and
        concurrency (cf. the placement-then-clustering step of pipeline partitioners such as
        PipeDream, Narayanan et al., SOSP 2019).

    Example:
        >>> import torch, torch.fx
        >>> gm = torch.fx.symbolic_trace(lambda x: ((x + 1) * 2) - 3)
        >>> regions(gm, {"add": "a", "mul": "b", "sub": "a"})
        {'add': 0, 'mul': 1, 'sub': 2}
    """
    return _regions(gm, device_of)[0]


def _regions(gm: fx.GraphModule, device_of: Mapping[str, str]) -> tuple[dict[str, int], list[str]]:
    nodes = list(gm.graph.nodes)
    dev: dict[fx.Node, str] = {}
    copied: set[fx.Node] = set()
    for n in nodes:
        if n.op in ("placeholder", "output"):
            continue
        if n.op == "get_attr" and all(u.op != "output" for u in n.users):
            copied.add(n)  # parameters go with every consumer, whatever group they were in
        elif n.name in device_of:
            dev[n] = device_of[n.name]
    # uncovered compute nodes: from producers, then from users, then the commonest device
    pending = [n for n in nodes if n.op not in ("placeholder", "output") and n not in dev and n not in copied]
    for n in pending:
        d = next((dev[a] for a in n.all_input_nodes if a in dev), None)
        if d is not None:
            dev[n] = d
    for n in reversed(pending):
        if n not in dev:
            d = next((dev[u] for u in n.users if u in dev), None)
            if d is not None:
                dev[n] = d
    if any(n not in dev for n in pending):
        counts: dict[str, int] = {}
        for d in dev.values():
            counts[d] = counts.get(d, 0) + 1
        common = max(counts, key=counts.get) if counts else "cpu"
        for n in pending:
            dev.setdefault(n, common)

    region: dict[fx.Node, int] = {}
    rdev: list[str] = []
    anc: list[set[int]] = []  # region -> all regions it depends on (transitively)
    latest: dict[str, int] = {}
    for n in nodes:
        if n not in dev:
            continue
        d = dev[n]
        srcs = {region[a] for a in n.all_input_nodes if a in region}
        cands = sorted((region[a] for a in n.all_input_nodes if a in region and rdev[region[a]] == d),
                       reverse=True)
        if d in latest:
            cands.append(latest[d])
        chosen = None
        for r in cands:
            if all(r == q or r not in anc[q] for q in srcs):
                chosen = r
                break
        if chosen is None:
            chosen = len(rdev)
            rdev.append(d)
            anc.append(set())
        new = set()
        for q in srcs:
            if q != chosen:
                new |= anc[q] | {q}
        if new - anc[chosen]:
            for r in range(len(anc)):
                if r == chosen or chosen in anc[r]:
                    anc[r] |= new
        region[n] = chosen
        latest[d] = chosen
    return {n.name: r for n, r in region.items()}, rdev


# ---------------------------------------------------------------------- sizes
def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if hasattr(x, "shape") and hasattr(x, "dtype"):  # TensorMetadata
        try:
            return math.prod(x.shape) * torch.empty((), dtype=x.dtype).element_size()
        except Exception:
            return 0
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    return 0


def _value_bytes(n: fx.Node, graph: OpGraph) -> int:
    hs = n.meta.get("hetsched")  # graphs.capture's cost annotation
    if isinstance(hs, dict) and hs.get("bytes_out"):
        return int(hs["bytes_out"])
    for key in ("val", "tensor_meta", "example_value"):
        if key in n.meta and n.meta[key] is not None:
            b = _nbytes(n.meta[key])
            if b:
                return b
    if n.name in graph:
        return int(graph.nodes[n.name].get("bytes_out", 0) or 0)
    return 0


def _param_bytes(module: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------- partition
def partition(graph: OpGraph, assignment: Mapping[Hashable, str] | Any) -> PartitionedModel:
    """Split the model behind ``graph`` by ``assignment`` into a :class:`PartitionedModel`.

    Parameters:
        graph: an OpGraph from ``graphs.capture(...)`` (any granularity); its
            ``graph.module`` is the fx ``GraphModule`` that is split.
        assignment: OpGraph node -> device name (a ``Plan.assignment``, or a ``Plan``).
            Nodes of kind ``input``, ``output`` or ``param`` need no device.

    Returns:
        The partitions in topological order, their DAG, and how to rebuild the output.

    Raises:
        graphs.errors.GraphError: the graph has no module, a node lacks a device, or the
            assignment names a node the graph does not have.

    Example:
        >>> import torch, torch.fx
        >>> from graphs.capture import capture
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> x = torch.randn(3, 4)
        >>> g = capture(model, (x,))  # nodes input_1, _0, _1, _2, output
        >>> pm = partition(g, {"_0": "cpu", "_1": "sim:npu", "_2": "cpu"})  # A -> B -> A
        >>> [(p.id, p.device, p.nodes) for p in pm.parts]
        [(0, 'cpu', ('_0',)), (1, 'sim:npu', ('_1',)), (2, 'cpu', ('_2',))]
        >>> partition(g, {"_0": "cpu"})
        Traceback (most recent call last):
        ...
        graphs.errors.GraphError: assignment has no device for node '_1' (kind 'activation'); ...
    """
    if hasattr(assignment, "assignment") and not isinstance(assignment, Mapping):
        assignment = assignment.assignment  # a Plan
    if not isinstance(graph, OpGraph):
        raise GraphError(f"partition needs an OpGraph from graphs.capture(...), got {type(graph).__name__}")
    if not isinstance(assignment, Mapping):
        raise GraphError(f"assignment must be a mapping node -> device name, got {type(assignment).__name__}")
    unknown = [n for n in assignment if n not in graph]
    if unknown:
        raise GraphError(f"assignment names {len(unknown)} node(s) not in the graph, e.g. {unknown[0]!r}")
    gm = graph.module
    device_of = _fx_devices(graph, assignment)
    fx_names = {n.name for n in gm.graph.nodes}
    missing = [m for m in device_of if m not in fx_names]
    if missing:
        raise GraphError(f"OpGraph members name fx node(s) not in graph.module, e.g. {missing[0]!r}; "
                         f"was the graph captured from this module?")
    region, rdev = _regions(gm, device_of)
    by_name = {n.name: n for n in gm.graph.nodes}
    splits = split_graph_module(gm, lambda n: region.get(n.name))

    # topological order of regions (ties by first appearance)
    rdag = nx.DiGraph()
    producer_r: dict[str, Hashable] = {}
    for r, _, _, outs in splits:
        rdag.add_node(r)
        for o in outs:
            producer_r[o] = r
    for r, _, ins, _ in splits:
        for i in ins:
            if i in producer_r:
                rdag.add_edge(producer_r[i], r)
    first = {r: k for k, (r, *_rest) in enumerate(splits)}
    topo = list(nx.lexicographical_topological_sort(rdag, key=lambda r: first[r]))
    new_id = {r: k for k, r in enumerate(topo)}

    # OpGraph nodes per region. A coarse node's ops can land in several regions (a split
    # made to keep the partition DAG acyclic): each region gets the share of the node's work
    # its ops carry, weighted by the ops' counted FLOPs and output bytes (capture's meta).
    og_nodes: dict[Hashable, list] = {}
    og_share: dict[Hashable, dict] = {}
    og_flops: dict[Hashable, float] = {}
    for node, a in graph.nodes(data=True):
        if a.get("kind") in DEVICELESS_KINDS:
            continue
        weight: dict[Hashable, float] = {}
        for m in (a.get("members") or (node,)):
            if str(m) not in region:
                continue
            meta = by_name[str(m)].meta.get(_META_KEY) or {}
            w = float(meta.get("flops", 0) or 0) + float(meta.get("bytes_out", 0) or 0) + 1.0
            weight[region[str(m)]] = weight.get(region[str(m)], 0.0) + w
        total = sum(weight.values())
        for r, w in weight.items():
            og_nodes.setdefault(r, []).append(node)
            og_share.setdefault(r, {})[node] = w / total
            og_flops[r] = og_flops.get(r, 0.0) + w / total * float(a.get("flops", 0) or 0)

    sizes = {name: _value_bytes(n, graph) for name, n in by_name.items()}
    parts: list[Partition] = [None] * len(splits)  # type: ignore[list-item]
    for r, sub, ins, outs in splits:
        fx_nodes = tuple(n for n, rr in region.items() if rr == r)
        dev = rdev[r]
        parts[new_id[r]] = Partition(
            id=new_id[r], device=dev, module=sub, inputs=ins, outputs=outs,
            nodes=tuple(og_nodes.get(r, ())), fx_nodes=fx_nodes, flops=round(og_flops.get(r, 0)),
            shares=og_share.get(r, {}),
            param_bytes=_param_bytes(sub), bytes_in=sum(sizes.get(i, 0) for i in ins),
            bytes_out=sum(sizes.get(o, 0) for o in outs))

    producer = {o: p.id for p in parts for o in p.outputs}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(parts)))
    for p in parts:
        for i in p.inputs:
            if i in producer:
                q = producer[i]
                if dag.has_edge(q, p.id):
                    dag.edges[q, p.id]["values"] += (i,)
                    dag.edges[q, p.id]["bytes"] += sizes.get(i, 0)
                else:
                    dag.add_edge(q, p.id, values=(i,), bytes=sizes.get(i, 0))

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    defaults = {n.name: n.args[0] for n in placeholders if n.args}
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    structure = _to_plain(fx.node.map_arg(out_node.args[0], lambda n: ValueRef(n.name)))
    out_spec = getattr(getattr(gm.graph._codegen, "pytree_info", None), "out_spec", None)
    if out_spec is not None:  # torch.export graphs return a flat tuple; the module unflattens it
        import torch.utils._pytree as pytree

        flat = list(structure) if isinstance(structure, (tuple, list)) else [structure]
        structure = _to_plain(pytree.tree_unflatten(flat, out_spec))
    return PartitionedModel(parts=tuple(parts), dag=dag, input_names=tuple(n.name for n in placeholders),
                            input_defaults=defaults, output_spec=OutputSpec(structure), producer=producer)


def _to_plain(x: Any) -> Any:
    if isinstance(x, ValueRef):
        return x
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_to_plain(v) for v in x))
    if isinstance(x, tuple):
        return tuple(_to_plain(v) for v in x)
    if isinstance(x, list):
        return [_to_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    return x
