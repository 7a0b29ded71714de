"""Measure a captured model's ops and partitions on this machine's CPU (the calibration source).

* :func:`measure_nodes` runs ``graph.module`` node by node with a timing
  :class:`torch.fx.Interpreter` (the ``ShapeProp`` shape: one overridden method) and
  returns the median seconds of every op-graph node (a coarse node sums its members).
* :func:`measure_partitions` splits the model into contiguous topological chunks with
  :func:`graphs.partition.partition` and times each chunk's fx submodule call: these are
  the "partitions" the runtime executes, so their times include a submodule call's own
  overhead, which per-node timings do not.

Results are plain data (dicts and :class:`PartitionTiming`), so the policies package can
fit a calibrated cost model from them without importing executors.

Example:
    >>> import torch
    >>> from graphs.capture import capture
    >>> g = capture(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()),
    ...             (torch.randn(2, 8),))
    >>> t = measure_nodes(g, (torch.randn(2, 8),), repeats=3)
    >>> sorted(t) == sorted(g.nodes) and all(s > 0 for s in t.values())
    True
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
import torch.fx as fx

from graphs.opgraph import OpGraph

from .errors import ExecutorError

__all__ = ["measure_nodes", "measure_partitions", "contiguous_chunks", "PartitionTiming", "CLOCKS"]

_DEVICELESS = ("input", "output", "param")
#: Clocks a measurement can read: wall time, or the calling thread's CPU time.
CLOCKS = ("wall", "thread")


def _clock(clock: str):
    """``time.perf_counter`` for ``"wall"``; ``time.thread_time`` for ``"thread"``.

    The thread clock counts only CPU time of the calling thread, so a shared, oversubscribed
    machine preempting the process does not inflate it; it is valid only with one torch
    thread (intra-op work then runs in the calling thread), which is checked.
    """
    if clock == "wall":
        return time.perf_counter
    if clock == "thread":
        if torch.get_num_threads() != 1:
            raise ExecutorError(f"clock='thread' needs torch.set_num_threads(1) (now "
                                f"{torch.get_num_threads()} threads): other threads' CPU time is not counted")
        return time.thread_time
    from graphs.errors import UnknownNameError

    raise UnknownNameError("clock", clock, CLOCKS)


@dataclass(frozen=True)
class PartitionTiming:
    """Measured time of one partition (an fx submodule over some op-graph nodes)."""

    nodes: tuple  # op-graph nodes it covers, in graph order
    seconds: float  # median wall seconds of one call
    flops: int  # sum of its nodes' flops
    label: Hashable = None  # the chunk label it was cut by


class _TimingInterpreter(fx.Interpreter):
    """Runs a GraphModule node by node, appending each node's wall seconds to ``times``."""

    def __init__(self, gm: fx.GraphModule, times: dict[str, list[float]], now=time.perf_counter):
        super().__init__(gm)
        self.times = times
        self.now = now

    def run_node(self, n: fx.Node) -> Any:
        t0 = self.now()
        out = super().run_node(n)
        self.times.setdefault(n.name, []).append(self.now() - t0)
        return out


def _check(graph: OpGraph, inputs: Any, device: str, repeats: int) -> tuple:
    if device != "cpu":
        raise NotImplementedError(f"measuring on device {device!r} is not implemented; "
                                  "only 'cpu' is (time other devices through their executors)")
    if not isinstance(graph, OpGraph):
        raise ExecutorError(f"graph must be an OpGraph from graphs.capture(...), got {type(graph).__name__}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ExecutorError(f"repeats must be an int >= 1, got {repeats!r}")
    gm = graph.module
    for name, p in list(gm.named_parameters()) + list(gm.named_buffers()):
        if p.device.type != "cpu":
            raise ExecutorError(f"the captured module's tensor {name!r} is on {p.device.type!r}; "
                                "measuring needs a model captured with real CPU weights (not meta)")
    inputs = inputs if isinstance(inputs, tuple) else (tuple(inputs) if isinstance(inputs, list) else (inputs,))
    return gm, inputs


def measure_nodes(graph: OpGraph, inputs: Any, repeats: int = 5, device: str = "cpu",
                  warmup: int = 1, clock: str = "wall") -> dict[Hashable, float]:
    """Median seconds of every node of ``graph`` run on ``inputs`` (one forward per repeat).

    A node's time is the time the interpreter spends in it (its op plus the interpreter's
    small per-node bookkeeping); a coarse node's time is the sum of its members'.
    ``clock`` is ``"wall"`` or ``"thread"`` (see :data:`CLOCKS`).

    Raises:
        NotImplementedError: ``device`` is not ``"cpu"``.
        executors.errors.ExecutorError: the graph has no module (JSON-loaded), its weights
            are on ``meta``, or ``repeats < 1``.
    """
    gm, inputs = _check(graph, inputs, device, repeats)
    now = _clock(clock)
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(warmup):
            _TimingInterpreter(gm, {}, now).run(*inputs)
        for _ in range(repeats):
            _TimingInterpreter(gm, times, now).run(*inputs)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {}
    for node, a in graph.nodes(data=True):
        out[node] = sum(med.get(str(m), 0.0) for m in (a.get("members") or (node,)))
    return out


def contiguous_chunks(graph: OpGraph, chunks: int) -> dict[Hashable, int]:
    """Label each compute node (not input/output/param) with one of ``chunks`` contiguous
    chunks of the graph's topological order, of near-equal node counts.

    Example:
        >>> g = OpGraph(); g.add_nodes_from(["a", "b", "c", "d"], kind="matmul")
        >>> g.add_edges_from([("a", "b"), ("b", "c"), ("c", "d")])
        >>> contiguous_chunks(g, 2)
        {'a': 0, 'b': 0, 'c': 1, 'd': 1}
    """
    import networkx as nx

    order = [n for n in nx.lexicographical_topological_sort(graph, key=str)
             if graph.nodes[n].get("kind") not in _DEVICELESS]
    if not isinstance(chunks, int) or not 1 <= chunks <= max(len(order), 1):
        raise ExecutorError(f"chunks must be an int in 1..{len(order)} (the compute nodes), got {chunks!r}")
    return {n: i * chunks // len(order) for i, n in enumerate(order)}


def measure_partitions(graph: OpGraph, inputs: Any, chunks: int | Mapping[Hashable, Hashable] = 4,
                       repeats: int = 5, device: str = "cpu", warmup: int = 1,
                       clock: str = "wall") -> list[PartitionTiming]:
    """Median seconds of each partition's submodule call.

    ``chunks`` is a number of contiguous topological chunks (:func:`contiguous_chunks`) or
    an explicit mapping compute node -> chunk label (each label must form a region that
    :func:`graphs.partition.partition` can cut; a label recurring after another label's
    nodes gives several partitions). Partitions are run in order on the model's inputs,
    each timed around its own call.

    Raises:
        NotImplementedError: ``device`` is not ``"cpu"``.
        executors.errors.ExecutorError: as :func:`measure_nodes`, or bad ``chunks``.

    Example:
        >>> import torch
        >>> from graphs.capture import capture
        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> g = capture(m, (torch.randn(2, 8),))
        >>> [p.nodes for p in measure_partitions(g, (torch.randn(2, 8),), chunks=2, repeats=2)]
        [('_0', '_1'), ('_2',)]
    """
    from graphs.partition import partition

    gm, inputs = _check(graph, inputs, device, repeats)
    now = _clock(clock)
    labels = contiguous_chunks(graph, chunks) if isinstance(chunks, int) else dict(chunks)
    assignment = {n: f"chunk{lab}" for n, lab in labels.items()}
    pm = partition(graph, assignment)
    times: list[list[float]] = [[] for _ in pm.parts]
    with torch.no_grad():
        for rep in range(warmup + repeats):
            values = pm.bind(*inputs)
            for p in pm.parts:
                args = [values[n] for n in p.inputs]
                t0 = now()
                outs = p.module(*args)
                dt = now() - t0
                values.update(zip(p.outputs, outs))
                if rep >= warmup:
                    times[p.id].append(dt)
    out = []
    for p in pm.parts:
        lab = labels.get(p.nodes[0]) if p.nodes else None
        out.append(PartitionTiming(nodes=tuple(p.nodes), seconds=statistics.median(times[p.id]),
                                   flops=int(p.flops), label=lab))
    return out
