"""A simulated device: real results computed on the CPU, the simulated device's time reported.

:class:`SimulatedExecutor` stands in for hardware that is not here (an Ascend NPU, a
Jetson, a datacenter GPU described by a profile). It runs each partition on the CPU, so
its outputs are the real ones, and reports as ``duration`` the seconds the simulated
device would take, as predicted by a cost model. The Runtime computes that prediction
(the sum of ``cost_model.node_time`` over the partition's op-graph nodes on this device)
and passes it to :meth:`SimulatedExecutor.load`; an executor built with ``graph`` and
``cost_model`` computes it itself, and without either it falls back to a roofline
estimate from the partition's totals and the :class:`~executors.devices.DeviceSpec`.

Pacing: with ``pace`` set, each run takes at least ``pace * duration`` real seconds (the
executor sleeps for the rest), so several simulated devices working at once overlap
like real ones would (``pace=1.0`` is real time, ``pace=10`` ten times slower).

Timing-only mode (``timing_only=True``) runs the partition on meta tensors: shapes
propagate, nothing is computed and no weights are needed, so configurations too large
for this machine can still be scheduled and timed. Its results say ``computed=False``.

Generation: a decoder shard's step (:meth:`~executors.base.Executor.step`) is computed on
the CPU too, and reports as its duration the cost model's time of the shard's blocks for
that step, :func:`shard_step_time`: the blocks of :func:`graphs.decoding.step_graph` for
the step's batch, new tokens and mean cached context, priced on this device. The
scheduler's simulator prices steps with the same function, so the two agree. Slowdown,
hangs and pacing apply to steps exactly as to partition runs.

Example:
    >>> import torch, torch.fx
    >>> from executors.devices import DeviceSpec
    >>> from graphs.partition import Partition
    >>> spec = DeviceSpec("sim:toy", "npu", {"float32": 1e12}, 1e11, 8e9)
    >>> ex = SimulatedExecutor(spec)
    >>> gm = torch.fx.symbolic_trace(lambda x: (x + 1,))
    >>> ex.load(Partition(0, "sim:toy", gm, ("x",), ("add",)), predicted=0.25)
    >>> r = ex.run(0, torch.zeros(2))
    >>> r.outputs, r.duration, r.simulated
    ((tensor([1., 1.]),), 0.25, True)
"""
from __future__ import annotations

import copy
import itertools
import time
from collections import OrderedDict
from typing import Any, Sequence

import torch

from .base import Executor, _Loaded, map_tensors
from .devices import DeviceSpec
from .errors import ExecutorError

__all__ = ["SimulatedExecutor", "roofline_estimate", "shard_step_time", "to_meta"]

#: (batch, new tokens, context, ...) step prices a simulated executor keeps (LRU).
_STEP_CACHE = 4096


def roofline_estimate(partition: Any, spec: DeviceSpec, dtype: str = "float32") -> float:
    """Seconds for ``partition`` on ``spec`` from its totals alone (Williams et al.,
    "Roofline", CACM 2009): ``launch + max(flops / peak, bytes / bandwidth)``, where bytes
    are the partition's inputs, outputs and parameters.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> spec = DeviceSpec("d", "gpu", {"float32": 1e9}, 1e9, 1e9, launch_overhead=0.5)
        >>> roofline_estimate(NS(flops=2e9, bytes_in=0, bytes_out=0, param_bytes=1e9), spec)
        2.5
    """
    flops = float(getattr(partition, "flops", 0) or 0)
    nbytes = sum(float(getattr(partition, a, 0) or 0) for a in ("bytes_in", "bytes_out", "param_bytes"))
    return spec.launch_overhead + max(flops / spec.flops_for(dtype), nbytes / spec.mem_bandwidth)


def to_meta(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose parameters and buffers are meta tensors (no memory, no data);
    ``module`` itself is returned when it holds no real tensors.

    Example:
        >>> to_meta(torch.nn.Linear(2, 2)).weight.device
        device(type='meta')
    """
    tensors = [t for t in itertools.chain(module.parameters(), module.buffers()) if t.device.type != "meta"]
    if not tensors:
        return module
    memo: dict[int, Any] = {}
    for t in tensors:
        meta = t.detach().to("meta")
        memo[id(t)] = torch.nn.Parameter(meta, requires_grad=t.requires_grad) \
            if isinstance(t, torch.nn.Parameter) else meta
    return copy.deepcopy(module, memo)


def shard_step_time(cost_model: Any, device: str, shard: Any, batch: int, new_tokens: int,
                    context: int, itemsize: int = 4, *, all_logits: bool = False) -> float:
    """Seconds one step of ``shard``'s blocks takes on ``device`` under ``cost_model``.

    ``shard`` is a :class:`graphs.decoding.DecoderShard` or a ``(config, blocks)`` pair;
    ``batch`` sequences each add ``new_tokens`` tokens after ``context`` cached positions
    (the batch's mean, rounded). The price is the sum of ``cost_model.node_time`` over the
    shard's blocks in :func:`graphs.decoding.step_graph` of that step: what a
    :class:`SimulatedExecutor` reports for the step, and what a simulator should charge.

    Example:
        >>> from executors.profiles import cluster
        >>> from graphs.models import get_config
        >>> from policies.roofline import RooflineCostModel
        >>> cm = RooflineCostModel(cluster(["atlas-200i-a2"]))
        >>> c = get_config("tiny")
        >>> t = shard_step_time(cm, "atlas-200i-a2", (c, ("layers.0",)), 1, 1, 7)
        >>> t == shard_step_time(cm, "atlas-200i-a2", (c, ("layers.0",)), 1, 1, 7.2)
        True
    """
    from graphs.decoding import step_graph

    config, blocks = (shard.config, shard.blocks) if hasattr(shard, "blocks") else shard
    g = step_graph(config, batch=int(batch), new_tokens=int(new_tokens), context=int(round(context)),
                   itemsize=int(itemsize), all_logits=all_logits)
    return float(sum(cost_model.node_time(g, b, device) for b in blocks))


def price_exit_work(cost_model: Any, device: str, config: Any, work: Sequence[tuple], context: float,
                    shortlist: int, itemsize: int = 4) -> float:
    """Seconds ``work`` (what :mod:`graphs.exit_decoding` reports a call computed) takes on
    ``device``: runs of layers as :func:`shard_step_time` prices them (batch, new tokens),
    the final norm and ``lm_head`` per row, an exit head (adapter + shortlist rows + gate)
    and the KV fill of skipped layers as matmul nodes of their FLOPs and weight bytes.

    Example:
        >>> from executors.profiles import cluster
        >>> from graphs.models import get_config
        >>> from policies.roofline import RooflineCostModel
        >>> cm = RooflineCostModel(cluster(["atlas-200i-a2"]))
        >>> c = get_config("tiny-llama")
        >>> one = price_exit_work(cm, "atlas-200i-a2", c, [("layers", 0, 2, 1, 1)], 8, 64)
        >>> one == shard_step_time(cm, "atlas-200i-a2", (c, ("layers.0", "layers.1")), 1, 1, 8)
        True
    """
    from graphs.opgraph import OpGraph

    c = config
    h = c.hidden
    dtype = {2: "float16", 4: "float32"}.get(itemsize, "float32")

    def node(name: str, flops: float, nbytes: float) -> float:
        g = OpGraph(granularity="layer", name=name)
        g.add_node(name, op="group", target=name, module=name, layer=None, members=(name,), kinds={"matmul": 2},
                   dtype=dtype, state_bytes=0, kind="matmul", flops=flops, param_bytes=nbytes, bytes_in=nbytes,
                   bytes_out=0)
        return float(cost_model.node_time(g, name, device))

    total = 0.0
    for w in work:
        if w[0] == "layers":
            _, a, b, batch, t = w
            total += shard_step_time(cost_model, device, (c, tuple(f"layers.{j}" for j in range(a, b))), batch, t,
                                     context, itemsize)
        elif w[0] == "embed":
            total += shard_step_time(cost_model, device, (c, ("embed_tokens",)), w[1], 1, context, itemsize)
        elif w[0] == "lm_head":
            total += shard_step_time(cost_model, device, (c, ("norm", "lm_head")), w[1], 1, context, itemsize)
        elif w[0] == "head":
            rows = w[1]
            total += node("exit_head", rows * (2.0 * h * (h + shortlist) + 2.0 * (h + 67) * 64),
                          (h * h + shortlist * h) * itemsize)
        elif w[0] == "fill":
            n, rows = w[1], w[2]
            kvw = n * 2 * c.num_kv_heads * c.head_dim * h
            total += node("kv_fill", rows * 2.0 * kvw, kvw * itemsize)
        else:
            raise ValueError(f"unknown exit work {w[0]!r}; valid: embed, layers, lm_head, head, fill")
    return total


class _SpecRoofline:
    """The roofline of a lone :class:`DeviceSpec`, for a simulated executor without a cost
    model: ``launches * launch_overhead + max(flops / peak, bytes / bandwidth)`` per node."""

    def __init__(self, spec: DeviceSpec):
        self.spec = spec

    def node_time(self, graph: Any, node: Any, device: str) -> float:
        a, spec = graph.nodes[node], self.spec
        n = sum(a.get("kinds", {}).values()) or 1
        return n * spec.launch_overhead + max(float(a.get("flops", 0)) / spec.flops_for(a.get("dtype", "float32")),
                                              (float(a.get("bytes_in", 0)) + float(a.get("bytes_out", 0)))
                                              / spec.mem_bandwidth)


class SimulatedExecutor(Executor):
    """Computes on the CPU, reports the simulated device's predicted time (module docstring).

    Parameters:
        spec: the simulated device; the executor reports ``spec.name`` as its device.
        cost_model: a :class:`policies.cost.CostModel` pricing ``graph``'s nodes on
            ``spec.name``; used with ``graph`` when :meth:`load` gets no ``predicted``.
        pace: real seconds slept per simulated second (None: no pacing, return at once).
        timing_only: run on meta tensors; results have ``computed=False``.
        graph: the OpGraph the partitions' ``nodes`` belong to (optional; see above).
        threads: ``torch.set_num_threads`` for the process (None leaves it alone).

    Example:
        >>> import torch, torch.fx
        >>> from graphs.partition import Partition
        >>> spec = DeviceSpec("sim:npu", "npu", {"float32": 1e12}, 1e11, 8e9)
        >>> ex = SimulatedExecutor(spec, timing_only=True)  # shapes only, nothing computed
        >>> gm = torch.fx.symbolic_trace(lambda x: (x @ x,))
        >>> ex.load(Partition(0, "sim:npu", gm, ("x",), ("matmul",)), predicted=0.002)
        >>> ex.set_slowdown(3.0)  # a throttled device: three times the predicted time
        >>> r = ex.run(0, torch.ones(512, 512))
        >>> round(r.duration, 6), r.computed, r.outputs[0].shape, r.outputs[0].device
        (0.006, False, torch.Size([512, 512]), device(type='meta'))
    """

    kind = "sim"

    def __init__(self, spec: DeviceSpec, cost_model: Any = None, *, pace: float | None = None,
                 timing_only: bool = False, graph: Any = None, threads: int | None = None,
                 slowdown: Any = None):
        if not isinstance(spec, DeviceSpec):
            raise ExecutorError(f"SimulatedExecutor needs an executors.devices.DeviceSpec, got {type(spec).__name__}")
        if pace is not None and (not isinstance(pace, (int, float)) or pace < 0):
            raise ExecutorError(f"pace must be real seconds per simulated second (>= 0) or None, got {pace!r}")
        super().__init__(spec.name)
        self.spec = spec
        self.cost_model = cost_model
        self.pace = None if pace is None else float(pace)
        self.timing_only = bool(timing_only)
        self.graph = graph
        if threads is not None:
            torch.set_num_threads(int(threads))
        self._slowdown: list[tuple[float, float]] = [(0.0, 1.0)]  # (seconds after origin, factor)
        self._slowdown_origin = time.time()
        self._hang_until = 0.0  # wall clock until which the device does not answer
        self._step_prices: OrderedDict[tuple, float] = OrderedDict()  # LRU: step key -> seconds
        if isinstance(slowdown, (int, float)):
            self.set_slowdown(slowdown)
        elif slowdown is not None:
            self.set_slowdown(schedule=slowdown)

    def predict(self, partition: Any) -> float:
        """Seconds for ``partition`` here: :meth:`graphs.partition.Partition.predicted` on this device
        when this executor has a graph and a cost model, else :func:`roofline_estimate`."""
        if self.cost_model is not None and self.graph is not None and getattr(partition, "nodes", ()):
            return partition.predicted(self.graph, self.cost_model, self.device)
        return roofline_estimate(partition, self.spec)

    def load(self, partition: Any, predicted: float | None = None) -> None:
        """Load ``partition``; ``predicted`` (seconds on this device) is what every run reports
        as its duration (default: :meth:`predict`)."""
        super().load(partition, predicted)
        entry = self._parts[int(partition.id)]
        if entry.predicted is None:
            entry.predicted = self.predict(partition)

    def _prepare(self, partition: Any) -> Any:
        return to_meta(partition.module) if self.timing_only else partition.module

    def _run_entry(self, entry: _Loaded, args: tuple) -> tuple[tuple, float | None, bool]:
        self.wait_hang()
        t0 = time.perf_counter()
        if self.timing_only:
            args = map_tensors(args, lambda t: t if t.device.type == "meta" else torch.empty_like(t, device="meta"))
        else:
            args = map_tensors(args, lambda t: t if t.device.type == "cpu" else t.cpu())
        with torch.no_grad():
            try:
                outs = tuple(entry.prepared(*args))
            except NotImplementedError as e:
                if self.timing_only:
                    raise ExecutorError(f"{self.device}: partition {entry.partition.id} cannot run on meta "
                                        f"tensors (timing-only mode): {e}") from e
                raise
        return outs, self._paced(float(entry.predicted or 0.0), t0), not self.timing_only

    def _paced(self, predicted: float, t0: float) -> float:
        """The duration a run or step predicted at ``predicted`` seconds reports: slowed down
        by :meth:`slowdown` and, with ``pace``, slept out from ``t0`` (``perf_counter``)."""
        duration = predicted * self.slowdown()
        if self.pace:
            rest = self.pace * duration - (time.perf_counter() - t0)
            if rest > 0:
                time.sleep(rest)
        return duration

    # ------------------------------------------------------------ generation
    def step_time(self, shard: Any, batch: int, new_tokens: int, context: int,
                  all_logits: bool = False) -> float:
        """Nominal seconds of one step of ``shard`` here (:func:`shard_step_time` with this
        executor's cost model, or the spec's roofline without one; no slowdown), memoised."""
        itemsize = next(shard.parameters()).element_size()
        key = (shard.config, shard.blocks, int(batch), int(new_tokens), int(round(context)), itemsize,
               bool(all_logits))
        t = self._step_prices.get(key)
        if t is None:
            cm = self.cost_model if self.cost_model is not None else _SpecRoofline(self.spec)
            t = shard_step_time(cm, self.device, shard, batch, new_tokens, context, itemsize,
                                all_logits=all_logits)
            self._step_prices[key] = t
            if len(self._step_prices) > _STEP_CACHE:
                self._step_prices.popitem(last=False)
        else:
            self._step_prices.move_to_end(key)
        return t

    def _prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return to_meta(module) if self.timing_only else module

    def _cost(self) -> Any:
        """The cost model that prices this device (its own roofline without one)."""
        return self.cost_model if self.cost_model is not None else _SpecRoofline(self.spec)

    def _exit_duration(self, shard: Any, work: list, context: float) -> float | None:
        """Token-exit decoding computes on the host; its device time is the cost model's price
        of the work it reports (:func:`price_exit_work`), slowed down and paced as any step."""
        t0 = time.perf_counter()
        itemsize = next(shard.parameters()).element_size()
        t = price_exit_work(self._cost(), self.device, shard.config, work, context,
                            int(shard.exits.shortlist.numel()), itemsize)
        return self._paced(t, t0)

    def _step_entry(self, entry: Any, x: torch.Tensor, caches: list, all_logits: bool,
                    sample: Sequence[tuple] | None) -> tuple[torch.Tensor, float | None]:
        self.wait_hang()
        t0 = time.perf_counter()
        b, t = int(x.shape[0]), int(x.shape[1])
        context = sum(kv.length for kv in caches) / max(b, 1)
        if self.timing_only and x.device.type != "meta":
            x = torch.empty_like(x, device="meta")
        out, _ = super()._step_entry(entry, x, caches, all_logits, sample)
        return out, self._paced(self.step_time(entry.shard, b, t, context, all_logits), t0)

    # ----------------------------------------------- simulation knobs (fault injection)
    def set_slowdown(self, factor: float = 1.0, *, schedule: Any = None,
                     origin: float | None = None) -> None:
        """Make the simulated device ``factor`` times slower from now on (1.0: nominal), as
        a throttling device or a second tenant would; or follow ``schedule``, a list of
        ``(seconds after origin, factor)`` steps (``origin``: wall clock, default now;
        before the first step the factor is 1). Every run reports (and, with ``pace``,
        sleeps) ``factor`` times its predicted duration.

        Example:
            >>> ex = SimulatedExecutor(DeviceSpec("sim:d", "npu", {"float32": 1e12}, 1e11, 8e9))
            >>> ex.set_slowdown(schedule=[(0.0, 1.0), (3600.0, 3.0)])
            >>> ex.slowdown(), ex.slowdown(at=ex._slowdown_origin + 3601)
            (1.0, 3.0)
        """
        if schedule is None:
            steps = [(0.0, factor)]
        else:
            try:
                steps = sorted((float(t), f) for t, f in schedule)
            except (TypeError, ValueError):
                raise ExecutorError(f"{self.device}: slowdown schedule must be [(seconds, factor), ...], "
                                    f"got {schedule!r}") from None
        for t, f in steps:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0 or f == float("inf"):
                raise ExecutorError(f"{self.device}: slowdown factor must be a finite number > 0, got {f!r}")
        self._slowdown = [(t, float(f)) for t, f in steps]
        self._slowdown_origin = time.time() if origin is None else float(origin)

    def slowdown(self, at: float | None = None) -> float:
        """The slowdown factor in force at wall clock ``at`` (default now)."""
        t = (time.time() if at is None else at) - self._slowdown_origin
        factor = 1.0
        for start, f in self._slowdown:
            if t >= start:
                factor = f
        return factor

    def hang(self, seconds: float) -> None:
        """Fault injection: stop answering for ``seconds`` from now. Returns at once; runs
        that start meanwhile wait until the hang is over (a run already going finishes),
        and so does :meth:`wait_hang` (the actor's ``ping`` and ``loaded`` call it)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise ExecutorError(f"{self.device}: hang seconds must be a number >= 0, got {seconds!r}")
        self._hang_until = max(self._hang_until, time.time() + float(seconds))

    def wait_hang(self) -> None:
        """Block while an injected hang lasts (see :meth:`hang`)."""
        while True:
            rest = self._hang_until - time.time()
            if rest <= 0:
                return
            time.sleep(min(rest, 0.05))

    def _execute(self, prepared: Any, args: tuple) -> tuple:  # pragma: no cover - _run_entry overrides
        return tuple(prepared(*args))

    def health(self) -> dict[str, Any]:
        h = super().health()
        h.update(slowdown=self.slowdown())
        h.update(pace=self.pace, timing_only=self.timing_only, profile=self.spec.description or self.spec.name)
        return h
