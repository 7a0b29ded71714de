"""Early exits in the Runtime: the shallow path as its own partition, the gate beside it.

:func:`build_gated` turns an exit model (the interface of :class:`graphs.vision.ExitModel`:
``stages``, ``exits``, ``forward_until``/``forward_from``) and a gate (a
:class:`policies.gating.Gate` at one depth, or a :class:`policies.gating.Cascade`) into:

* one **segment** per exit depth ``d_k``: stages ``(d_{k-1}, d_k]``, the exit head and
  the gate, captured as one graph and deployed as **one partition**. It returns the hidden
  state, the exit logits and the gate's decision (a 0-d bool tensor: the request exits
  when the gate passes every sample in it);
* the **deep path** ``forward_from(hidden, d_K)``, captured at the Runtime's granularity
  and split by the policy like any model.

Placement: the policy places one combined graph, where each segment is a single node
(its costs are its members' sums) in front of the deep path's nodes. So the policy decides
where the shallow path runs (typically the most efficient device) knowing that hard
requests continue from there. A request that exits never touches the deep partitions'
devices; one that continues sends only the hidden state (an object ref, actor to actor) to
the deep path, which continues where the shallow path left off (no recomputation).

Example (needs Ray; see :class:`scheduler.Runtime`)::

    from graphs.vision import ExitCNN
    from policies.gating import MaxSoftmaxGate
    rt = Runtime(ExitCNN().eval(), torch.randn(1, 1, 28, 28), devices=["sim:host-cpu"],
                 gate=MaxSoftmaxGate(0.9), exit_depth=1)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import networkx as nx
import torch
from torch import nn

from .errors import RuntimeConfigError

#: Gates that need inputs a serving runtime does not have (labels, earlier exits' logits).
_UNSERVABLE = {"oracle": "it needs the labels (an evaluation ceiling, not a serving gate)",
               "patience": "it needs the logits of earlier exits inside one partition"}


@dataclass(frozen=True)
class ExitPoint:
    """Where a request may leave: after stage index ``stage`` of the dispatcher's list."""

    stage: int  # index into the dispatcher's stages of the segment partition
    depth: int  # exit depth in the model (number of stages run)
    logits: str  # value name of the exit logits
    go: str  # value name of the gate's decision (0-d bool tensor)


@dataclass(frozen=True)
class GatedPartitions:
    """What the Runtime deploys for a gated model (duck-types the parts of
    :class:`graphs.partition.PartitionedModel` the Runtime uses)."""

    parts: tuple  # graphs.partition.Partition, segments first, ids 0..n-1 in topological order
    dag: nx.DiGraph  # partition ids, edges where values flow
    input_names: tuple[str, ...]  # the model's input value names
    output_names: tuple[str, ...]  # value names of the deep path's output
    assemble: Callable[[tuple], Any]  # builds the full model's output from output_names' values
    exits: tuple[ExitPoint, ...]  # one per segment, in order
    segment_flops: tuple[int, ...]  # FLOPs of each segment partition (stages + exit head + gate)
    deep_flops: int  # FLOPs of the deep path
    full_flops: int  # FLOPs of the plain model's forward (what an ungated request costs)

    def __len__(self) -> int:
        """Number of partitions (as :class:`graphs.partition.PartitionedModel`)."""
        return len(self.parts)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(p.device for p in self.parts)

    def bind(self, *inputs: Any) -> dict[str, Any]:
        """Map the request's input (one tensor) to the first segment's input name."""
        if len(inputs) != len(self.input_names):
            raise RuntimeConfigError(f"a gated model takes {len(self.input_names)} input(s), got {len(inputs)}")
        return dict(zip(self.input_names, inputs))


class GateDecision(nn.Module):
    """The gate as one op: ``decide(hidden, logits).all()`` (a 0-d bool tensor).

    Captured as a leaf module, so gates with Python checks inside stay fx-traceable and the
    segment stays a plain, picklable ``GraphModule``; its FLOPs are still counted.
    """

    def __init__(self, gate: Any):
        super().__init__()
        self.gate = gate

    def forward(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 3:  # a language model: decide on the next token (last position)
            hidden, logits = hidden[:, -1:], logits[:, -1]
        return self.gate.decide(hidden, logits).all()


class ExitSegment(nn.Module):
    """Stages ``(start, depth]`` of an exit model, its exit head at ``depth`` and the gate.

    ``forward(x) -> (hidden, exit_logits, go)`` where ``go`` is a 0-d bool tensor, True when
    the gate passes every sample of the batch.

    Example:
        >>> from graphs.vision import ExitCNN
        >>> from policies.gating import MaxSoftmaxGate
        >>> seg = ExitSegment(ExitCNN().eval(), 0, 1, MaxSoftmaxGate(0.0))
        >>> h, e, go = seg(torch.randn(2, 1, 28, 28))
        >>> tuple(e.shape), bool(go)
        ((2, 10), True)
    """

    def __init__(self, model: nn.Module, start: int, depth: int, gate: Any):
        super().__init__()
        self.model = model
        self.start, self.depth = start, depth
        self.gate = GateDecision(gate)

    def forward(self, x: torch.Tensor):
        if self.start == 0:  # from the model's input (embeddings, patches, ...)
            h = self.model.forward_until(x, self.depth)
        else:
            h = self.model.run_stages(x, self.start, self.depth)
        e = self.model.exit_logits(h, self.depth)
        return h, e, self.gate(h, e)


class DeepPath(nn.Module):
    """``forward_from(hidden, depth)``: the rest of an exit model after ``depth`` stages."""

    def __init__(self, model: nn.Module, depth: int):
        super().__init__()
        self.model = model
        self.depth = depth

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from(hidden, self.depth)


def gate_points(model: nn.Module, gate: Any, exit_depth: int | None) -> list[tuple[int, Any]]:
    """``[(depth, gate), ...]`` from a Gate (+ ``exit_depth``) or a Cascade; checks both.

    Raises :class:`RuntimeConfigError` naming what is wrong and the valid choices.
    """
    from policies.gating import Cascade, Gate

    for attr in ("stages", "exits", "forward_until", "forward_from", "run_stages", "exit_logits"):
        if not hasattr(model, attr):
            raise RuntimeConfigError(
                f"gate needs an exit model (stages, exits, forward_until, forward_from: see "
                f"graphs.vision.ExitModel); {type(model).__name__} has no {attr!r}")
    if isinstance(gate, Cascade):
        if exit_depth is not None:
            raise RuntimeConfigError("exit_depth goes with a single Gate; a Cascade names its depths")
        points = list(gate.gates.items())
    elif isinstance(gate, Gate):
        if exit_depth is None:
            raise RuntimeConfigError(
                f"a single gate needs exit_depth=...; the model's exits are at {list(model.exit_depths)}")
        points = [(exit_depth, gate)]
    else:
        raise RuntimeConfigError(
            f"gate must be a policies.gating.Gate (with exit_depth) or a Cascade, got {type(gate).__name__}")
    valid = list(model.exit_depths)
    for d, g in points:
        if isinstance(d, bool) or not isinstance(d, int) or d not in valid:
            raise RuntimeConfigError(f"no exit head at depth {d!r}; the model's exits are at {valid}")
        why = _UNSERVABLE.get(getattr(g, "name", ""))
        if why or getattr(g, "needs_labels", False):
            raise NotImplementedError(
                f"the {type(g).__name__} cannot run inside the Runtime: "
                f"{why or 'it needs labels'}; use max_softmax, entropy or learned")
    if sorted(d for d, _ in points) != [d for d, _ in points]:
        raise RuntimeConfigError("cascade depths must increase")
    if points[-1][0] >= model.num_stages:
        raise RuntimeConfigError(f"an exit at depth {points[-1][0]} leaves no deep path; "
                                 f"use depths below {model.num_stages}")
    return points


def build_gated(model: nn.Module, example_inputs: tuple, gate: Any, exit_depth: int | None,
                cluster: Any, cost_model: Any, policy: Any, granularity: str):
    """Capture the segments and the deep path, place them with ``policy``, and partition.

    Returns ``(graph, plan, GatedPartitions)``: ``graph`` is the combined OpGraph the plan
    is for (each segment one node named ``exit@<depth>``).
    """
    from graphs.capture import capture
    from graphs.opgraph import OpGraph
    from graphs.partition import partition

    points = gate_points(model, gate, exit_depth)
    if len(example_inputs) != 1:
        raise RuntimeConfigError(f"a gated model takes one input tensor, got {len(example_inputs)}")
    x = example_inputs[0]
    with torch.inference_mode():
        full_graph = capture(model, (x,), granularity="layer")
    full_flops = full_graph.total("flops")

    # capture each segment (one partition each) and the deep path
    seg_graphs, hidden, start = [], x, 0
    for d, g in points:
        seg = ExitSegment(model, start, d, g).eval()
        sg = capture(seg, (hidden,), granularity="op", name=f"exit@{d}",
                     leaf_modules=(GateDecision,))
        seg_graphs.append((d, sg))
        with torch.inference_mode():
            hidden = seg(hidden)[0]
        start = d
    deep_graph = capture(DeepPath(model, start).eval(), (hidden,), granularity=granularity,
                         name=f"{type(model).__name__}[{start}:]")

    # the combined graph the policy places
    combined = OpGraph(granularity=deep_graph.granularity, name=f"gated {type(model).__name__}")
    deep_inputs = [n for n, a in deep_graph.nodes(data=True) if a.get("kind") == "input"]
    in_name = "input"
    while in_name in deep_graph:
        in_name = "_" + in_name
    combined.add_node(in_name, kind="input", op="placeholder", target=in_name, flops=0, bytes_in=0,
                      bytes_out=x.numel() * x.element_size(), param_bytes=0, shape=tuple(x.shape),
                      dtype=str(x.dtype).replace("torch.", ""), module="", layer=None, members=(in_name,))
    prev = in_name
    for d, sg in seg_graphs:
        name = f"exit@{d}"
        if name in deep_graph:
            raise RuntimeConfigError(f"node name {name!r} clashes with a node of the deep path")
        h_out = next(a for n, a in sg.nodes(data=True) if a.get("kind") == "input")
        combined.add_node(
            name, kind="group", op="group", target=f"stages and exit head and gate up to depth {d}",
            flops=sg.total("flops"), bytes_in=sg.total("bytes_in"),
            bytes_out=sum(a.get("bytes_out", 0) for _, a in sg.nodes(data=True) if a.get("kind") == "output"),
            param_bytes=sg.total("param_bytes"), shape=(), dtype=h_out.get("dtype", "float32"),
            module="", layer=None, members=tuple(sg.nodes), kinds=sg.kinds(), exit_depth=d)
        combined.add_edge(prev, name, bytes=int(h_out.get("bytes_out", 0)))  # this segment's input
        prev = name
    for n, a in deep_graph.nodes(data=True):
        if n not in deep_inputs:
            combined.add_node(n, **a)
    for u, v, a in deep_graph.edges(data=True):
        if u in deep_inputs:
            combined.add_edge(prev, v, **a)
        elif v not in deep_inputs:
            combined.add_edge(u, v, **a)
    combined.graph["module"] = deep_graph.module

    plan = policy.place(combined, cluster, cost_model)

    # partitions: each segment one partition, then the deep path's partitions
    parts, exits, dag, seg_flops = [], [], nx.DiGraph(), []
    prev_hidden, model_inputs = None, None
    for k, (d, sg) in enumerate(seg_graphs):
        dev = plan.assignment[f"exit@{d}"]
        spm = partition(sg, {n: dev for n in sg.nodes})
        if len(spm.parts) != 1:  # pragma: no cover - one device gives one region
            raise RuntimeConfigError(f"exit segment at depth {d} split into {len(spm.parts)} partitions")
        p = spm.parts[0]
        ren = {n: f"exit@{d}.{n}" for n in (*p.inputs, *p.outputs)}
        if k == 0:
            model_inputs = tuple(ren[n] for n in spm.input_names)
        else:
            ren[spm.input_names[0]] = prev_hidden
            dag.add_edge(k - 1, k)
        if len(spm.output_spec.names) != 3:  # pragma: no cover - (h, e, go) are three tensors
            raise RuntimeConfigError("an exit segment must return (hidden, logits, go)")
        h_name, e_name, go_name = (ren[n] for n in spm.output_spec.names)
        parts.append(dataclasses.replace(p, id=k, inputs=tuple(ren[n] for n in p.inputs),
                                         outputs=tuple(ren[n] for n in p.outputs),
                                         nodes=(f"exit@{d}",)))
        dag.add_node(k)
        exits.append(ExitPoint(stage=k, depth=d, logits=e_name, go=go_name))
        seg_flops.append(sg.total("flops"))
        prev_hidden = h_name
    K = len(parts)
    dpm = partition(deep_graph, {n: plan.assignment[n] for n in deep_graph.nodes if n in plan.assignment})
    ren = {n: f"deep.{n}" for p in dpm.parts for n in (*p.inputs, *p.outputs)}
    ren[dpm.input_names[0]] = prev_hidden
    for p in dpm.parts:
        parts.append(dataclasses.replace(p, id=K + p.id, inputs=tuple(ren[n] for n in p.inputs),
                                         outputs=tuple(ren[n] for n in p.outputs)))
        dag.add_node(K + p.id)
        if dpm.input_names[0] in p.inputs:
            dag.add_edge(K - 1, K + p.id)
    for u, v, a in dpm.dag.edges(data=True):
        dag.add_edge(K + u, K + v, **a)
    spec = dpm.output_spec
    out_names = tuple(ren.get(n, n) for n in spec.names)
    return combined, plan, GatedPartitions(
        parts=tuple(parts), dag=dag, input_names=model_inputs, output_names=out_names,
        assemble=lambda vals, spec=spec: spec.build(dict(zip(spec.names, vals))),
        exits=tuple(exits), segment_flops=tuple(seg_flops), deep_flops=deep_graph.total("flops"),
        full_flops=full_flops)


__all__ = ["build_gated", "gate_points", "ExitSegment", "DeepPath", "ExitPoint", "GatedPartitions"]
