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
from typing import Any, Callable

import networkx as nx
import torch
from torch import nn

from graphs.exits import state_tensors
from policies.gating.gates import decision_inputs

from .errors import RuntimeConfigError

#: Gates that need inputs a serving runtime does not have (labels, earlier exits' logits).
_UNSERVABLE = {"oracle": "it needs the labels (an evaluation ceiling, not a serving gate)",
               "patience": "it needs the logits of earlier exits inside one partition"}


@dataclass(frozen=True)
class ExitPoint:
    """Where a request may leave: after stage index ``stage`` of the dispatcher's list.

    Example:
        >>> ExitPoint(stage=0, depth=1, logits="exit@1.e", go="exit@1.go").depth
        1
    """

    stage: int  # index into the dispatcher's stages of the segment partition
    depth: int  # exit depth in the model (number of stages run)
    logits: str  # value name of the exit logits
    go: str  # value name of the gate's decision (0-d bool tensor)


@dataclass(frozen=True)
class GatedPartitions:
    """What the Runtime deploys for a gated model (duck-types the parts of
    :class:`graphs.partition.PartitionedModel` the Runtime uses); :func:`build_gated` makes it.

    Example:
        >>> from graphs.vision import ExitCNN
        >>> from policies import get
        >>> from policies.gating import MaxSoftmaxGate
        >>> from policies.roofline import RooflineCostModel
        >>> from scheduler.cluster import build_cluster
        >>> cluster = build_cluster(["sim:atlas-200i-a2"])
        >>> _, _, pm = build_gated(ExitCNN().eval(), (torch.zeros(1, 1, 28, 28),), MaxSoftmaxGate(0.5), 1,
        ...                        cluster, RooflineCostModel(cluster), get("heft"), "layer")
        >>> [e.depth for e in pm.exits], pm.segment_flops[0] < pm.full_flops, len(pm) >= 2
        ([1], True, True)
    """

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
    """The gate as one op: ``decide(view, logits).all()`` (a 0-d bool tensor).

    Called as ``(logits, hidden)`` or ``(logits, hidden, mask)``: the gate reads the exit
    model's gate view (the mask of a padded batch included) and, for a language model's
    ``(B, T, V)`` logits, decides on the last position
    (:func:`policies.gating.decision_inputs`). Captured as a leaf module, so gates with
    Python checks inside stay fx-traceable and the segment stays a plain, picklable
    ``GraphModule``; its FLOPs are still counted.
    """

    def __init__(self, gate: Any):
        super().__init__()
        self.gate = gate

    def forward(self, logits: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        view, logits = decision_inputs(hidden if mask is None else (hidden, mask), logits)
        return self.gate.decide(view, logits).all()


def _view_args(model: Any, state: Any) -> tuple:
    view = model.gate_view(state)
    return view if isinstance(view, tuple) else (view,)


class ExitSegment(nn.Module):
    """Stages ``(start, depth]`` of an exit model, its exit head at ``depth`` and the gate.

    The first segment (``start == 0``) takes the model's input and returns
    ``(*state, exit_logits, go)``: every tensor of the state (the hidden and its extras, e.g.
    a padding mask). A later one takes the state tensors and returns
    ``(hidden, exit_logits, go)``: the extras pass through unchanged, so the next part reads
    them from the first segment. ``go`` is a 0-d bool tensor, True when the gate passes every
    sample of the batch. Inputs are checked by the Runtime (at submit) and by
    :func:`build_gated` (the example), not inside the captured code.

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

    def forward(self, x: torch.Tensor, extra1: Any = None, extra2: Any = None, extra3: Any = None):
        # fixed arity (fx cannot trace *args): the state's extras, up to MAX_EXTRAS of them
        if self.start == 0:  # from the model's input: the stem (embeddings, patches, ...)
            state = self.model.run_stages(self.model.embed(x), 0, self.depth)
        else:
            state = self.model.run_stages(_state(x, extra1, extra2, extra3), self.start, self.depth)
        e = self.model.exit_logits(state, self.depth)
        go = self.gate(e, *_view_args(self.model, state))
        out = state_tensors(state) if self.start == 0 else state_tensors(state)[:1]
        return (*out, e, go)


class DeepPath(nn.Module):
    """``forward_from(state, depth)``: the rest of an exit model after ``depth`` stages
    (called with the state's tensors).

    Example:
        >>> from graphs.vision import ExitCNN
        >>> m = ExitCNN().eval()
        >>> x = torch.randn(2, 1, 28, 28)
        >>> torch.allclose(DeepPath(m, 1)(m.forward_until(x, 1)), m(x), atol=1e-5)
        True
    """

    def __init__(self, model: nn.Module, depth: int):
        super().__init__()
        self.model = model
        self.depth = depth

    def forward(self, hidden: torch.Tensor, extra1: Any = None, extra2: Any = None,
                extra3: Any = None) -> torch.Tensor:
        return self.model.forward_from(_state(hidden, extra1, extra2, extra3), self.depth)


#: How many extras (beyond the hidden) a state may carry through the gated Runtime's parts.
MAX_EXTRAS = 3


def _state(hidden: Any, *extras: Any) -> Any:
    given = tuple(t for t in extras if t is not None)
    return (hidden, *given) if given else hidden


def gate_points(model: nn.Module, gate: Any, exit_depth: int | None) -> list[tuple[int, Any]]:
    """``[(depth, gate), ...]`` from a Gate (+ ``exit_depth``) or a Cascade; checks both.

    Raises :class:`RuntimeConfigError` naming what is wrong and the valid choices.

    Example:
        >>> from graphs.vision import ExitCNN
        >>> from policies.gating import MaxSoftmaxGate
        >>> gate_points(ExitCNN(), MaxSoftmaxGate(0.9), 2)
        [(2, MaxSoftmaxGate(threshold=0.9))]
        >>> gate_points(ExitCNN(), MaxSoftmaxGate(0.9), 5)
        Traceback (most recent call last):
        ...
        scheduler.errors.RuntimeConfigError: no exit head at depth 5; the model's exits are at [1, 2, 3]
    """
    from policies.gating import Cascade, Gate

    from graphs.exits import ExitAdapterError, check_adapter

    try:
        check_adapter(model)
    except ExitAdapterError as e:
        raise RuntimeConfigError(f"gate needs an exit model (graphs.exits.ExitModel): {e}") from None
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

    Example:
        >>> from graphs.vision import ExitCNN
        >>> from policies import get
        >>> from policies.gating import MaxSoftmaxGate
        >>> from policies.roofline import RooflineCostModel
        >>> from scheduler.cluster import build_cluster
        >>> cluster = build_cluster(["sim:atlas-200i-a2", "sim:edge-cpu-a76"])
        >>> graph, plan, pm = build_gated(ExitCNN().eval(), (torch.zeros(1, 1, 28, 28),), MaxSoftmaxGate(0.5),
        ...                               2, cluster, RooflineCostModel(cluster), get("heft"), "layer")
        >>> "exit@2" in graph, plan.assignment["exit@2"] in cluster.names, pm.exits[0].depth
        (True, True, 2)
    """
    from graphs.capture import capture
    from graphs.opgraph import OpGraph
    from graphs.partition import partition

    points = gate_points(model, gate, exit_depth)
    if len(example_inputs) != 1:
        raise RuntimeConfigError(f"a gated model takes one input tensor, got {len(example_inputs)}")
    x = example_inputs[0]
    model.check_input(x)  # the segments' captured code does not check its input
    with torch.inference_mode():
        full_graph = capture(model, (x,), granularity="layer")
    full_flops = full_graph.total("flops")

    # capture each segment (one partition each) and the deep path; ``state`` holds the
    # example tensors of the state after the last segment (hidden first, then the extras)
    seg_graphs, inputs, start, state = [], (x,), 0, None
    for d, g in points:
        seg = ExitSegment(model, start, d, g).eval()
        sg = capture(seg, inputs, granularity="op", name=f"exit@{d}", leaf_modules=(GateDecision,))
        seg_graphs.append((d, sg))
        with torch.inference_mode():
            out = seg(*inputs)[:-2]
        state = out if state is None else (out[0], *state[1:])
        if len(state) > 1 + MAX_EXTRAS:
            raise RuntimeConfigError(f"{type(model).__name__}'s state carries {len(state) - 1} extras; the "
                                     f"gated Runtime passes at most {MAX_EXTRAS}")
        inputs, start = state, d
    deep_graph = capture(DeepPath(model, start).eval(), state, granularity=granularity,
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
        ins = [a for n, a in sg.nodes(data=True) if a.get("kind") == "input"]
        combined.add_node(
            name, kind="group", op="group", target=f"stages and exit head and gate up to depth {d}",
            flops=sg.total("flops"), bytes_in=sg.total("bytes_in"),
            bytes_out=sum(a.get("bytes_out", 0) for _, a in sg.nodes(data=True) if a.get("kind") == "output"),
            param_bytes=sg.total("param_bytes"), shape=(), dtype=ins[0].get("dtype", "float32"),
            module="", layer=None, members=tuple(sg.nodes), kinds=sg.kinds(), exit_depth=d)
        # this segment's inputs (the model's input, or the state)
        combined.add_edge(prev, name, bytes=int(sum(a.get("bytes_out", 0) for a in ins)))
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
    state_names, model_inputs = None, None  # value names of the state after the last segment
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
            if len(spm.input_names) != len(state_names):  # pragma: no cover - the state's tensors
                raise RuntimeConfigError(f"exit segment at depth {d} takes {len(spm.input_names)} inputs; "
                                         f"the state has {len(state_names)} tensors")
            ren.update(zip(spm.input_names, state_names))
            dag.add_edge(k - 1, k)
            if len(state_names) > 1:
                dag.add_edge(0, k)  # the state's extras come from the first segment
        names = [ren[n] for n in spm.output_spec.names]
        if len(names) < 3:  # pragma: no cover - (*state, e, go)
            raise RuntimeConfigError("an exit segment must return (*state, logits, go)")
        e_name, go_name = names[-2], names[-1]
        state_names = tuple(names[:-2]) if k == 0 else (names[0], *state_names[1:])
        parts.append(dataclasses.replace(p, id=k, inputs=tuple(ren[n] for n in p.inputs),
                                         outputs=tuple(ren[n] for n in p.outputs),
                                         nodes=(f"exit@{d}",)))
        dag.add_node(k)
        exits.append(ExitPoint(stage=k, depth=d, logits=e_name, go=go_name))
        seg_flops.append(sg.total("flops"))
    K = len(parts)
    dpm = partition(deep_graph, {n: plan.assignment[n] for n in deep_graph.nodes if n in plan.assignment})
    ren = {n: f"deep.{n}" for p in dpm.parts for n in (*p.inputs, *p.outputs)}
    ren.update(zip(dpm.input_names, state_names))
    for p in dpm.parts:
        parts.append(dataclasses.replace(p, id=K + p.id, inputs=tuple(ren[n] for n in p.inputs),
                                         outputs=tuple(ren[n] for n in p.outputs)))
        dag.add_node(K + p.id)
        if any(n in p.inputs for n in dpm.input_names):
            dag.add_edge(K - 1, K + p.id)
            if len(state_names) > 1:
                dag.add_edge(0, K + p.id)  # the state's extras come from the first segment
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
