"""A Ray actor hosting one executor per device, and the resources it asks Ray for.

:class:`ExecutorActor` builds its executor *inside* the actor process from the device
name (:func:`executors.factory.create`), so no CUDA or NPU object ever crosses processes;
partitions (picklable fx modules) are shipped to it once with ``load``. Requests then call
``run`` or ``run_group`` with Ray object refs as arguments: Ray resolves them in the actor,
fetching each value straight from the process that produced it, so activations flow
actor-to-actor without passing through the driver.

``run_group`` runs a partition for a *group* of requests in one actor call (request
coalescing: Ray's per-call cost is paid once per group, not once per request). Each
argument is a *column*, a list with one value per request of the group, and each output
comes back as its own column (a Ray object), followed by a column of metadata-only
:class:`~executors.base.ExecutionResult` records; call it with
``.options(num_returns=len(partition.outputs) + 1)`` so that a consumer on another device
fetches only the columns it needs. Every request runs on its own (no tensors are stacked),
so its result is exactly what a call of its own gives; one whose run raises gets a
:class:`~executors.base.MemberError` in its place, which later partitions pass on, and the
rest of the group is unaffected.

Resources (:func:`actor_options`): ``cuda:N`` asks for ``num_gpus=1`` and ``npu:N`` for the
``NPU`` resource Ray reports for Ascend devices; inside the actor the one visible device is
index 0, which the actor maps to. ``sim:<profile>`` asks for the custom resource
``sim_<profile>`` (see :func:`sim_resource`) only when the cluster declares it (a local
embedded Ray gets it from ``ray.init(resources={"sim_atlas-200i-a2": 1})``, which is what
the Runtime does), so a simulated device can be pinned to a node; it asks for a small share
(:data:`SIM_RESOURCE_SHARE`), so several runtimes can simulate the same device on one
Ray. Every actor asks for
``num_cpus=0`` by default (three simulated devices fit on a 2-core machine) and sets
``torch.set_num_threads(threads)`` (default 1) in its process.

Consecutive calls of one group on this device pass values in process: a call may keep
output columns here (``keep=``) and a later one names them with :class:`Kept` instead of an
object ref. The Runtime does so for an early exit's shallow path followed by the deep
path's partitions on the same device: the second call has no Ray dependency, so it is
sent at once and runs right after the first (calls from one caller run in order), while
the first call's gate decisions already travel back.

Generation: ``load_shard`` ships a :class:`graphs.decoding.DecoderShard` (the weights of
its blocks) to the actor once; each prefill or decode step is then one call
``actor.step.options(num_returns=2).remote(shard_id, seq_ids, x, ...)`` that returns two
objects, the output (hidden states for the next shard's actor, or logits / sampled token
ids from the last shard) and a :class:`~executors.base.StepMeta`. The next shard's step
takes the first object ref as its ``x``, so a step's hidden state flows actor to actor
while the KV caches stay in the actors that hold the layers (see
:meth:`executors.base.Executor.step`). ``free`` drops finished sequences' caches; an actor
that restarted has none, and its steps raise :class:`~executors.errors.ExecutorStateLost`
so the caller prefills again.

Concurrency: ``load``/``run``/``run_group``/``unload`` and ``load_shard``/``step``/``free``/
``unload_shard`` run one at a time (a device runs one partition or step at a time, in
arrival order, so a ``free`` sent after a step runs after it); ``ping``, ``health``,
``loaded`` and ``kv_stats`` are in a separate ``control`` concurrency group, so a liveness
check answers while a long partition is running.

Example:
    >>> actor_options("cuda:1")
    {'num_cpus': 0, 'num_gpus': 1}
    >>> actor_options("npu:0")
    {'num_cpus': 0, 'resources': {'NPU': 1}}
    >>> actor_options("sim:atlas-200i-a2", cluster_resources={"sim_atlas-200i-a2": 1.0})
    {'num_cpus': 0, 'resources': {'sim_atlas-200i-a2': 0.01}}
    >>> actor_options("sim:atlas-200i-a2", cluster_resources={"CPU": 2.0})
    {'num_cpus': 0}
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

import ray

from .base import ExecutionResult, MemberError, MetaColumn, StepMeta

__all__ = ["ExecutorActor", "ExecutorHost", "Kept", "MemberError", "actor_options",
           "sim_resource", "SIM_RESOURCE_SHARE"]


#: Fraction of a simulated device's custom resource one executor actor requests.
SIM_RESOURCE_SHARE = 0.01

#: Groups whose kept columns an actor holds at most (older ones were abandoned).
_KEEP_LIMIT = 1024


@dataclass(frozen=True)
class Kept:
    """Stands for a column an earlier ``run_group`` call of the same group left in the
    actor (``keep=``): consecutive calls on one device pass values in process, so a call
    that depends on the one before it has no Ray dependency to wait for.

    Example:
        >>> Kept(3, "hidden")
        Kept(key=3, name='hidden')
    """

    key: Any
    name: str


def sim_resource(device_name: str) -> str:
    """The custom Ray resource name for a simulated device: ``sim:x`` -> ``sim_x``.

    Example:
        >>> sim_resource("sim:atlas-200i-a2")
        'sim_atlas-200i-a2'
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", device_name)


def actor_options(device_name: str, *, num_cpus: float = 0,
                  cluster_resources: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Ray options for the actor hosting ``device_name`` (see the module docstring).

    ``cluster_resources`` defaults to ``ray.cluster_resources()`` when Ray is initialised;
    it decides whether a simulated device's custom resource is requested.

    Example:
        >>> actor_options("cuda:0"), actor_options("cpu:1", num_cpus=1)
        ({'num_cpus': 0, 'num_gpus': 1}, {'num_cpus': 1})
        >>> actor_options("sim:jetson-orin-nx", cluster_resources={"sim_jetson-orin-nx": 1.0})
        {'num_cpus': 0, 'resources': {'sim_jetson-orin-nx': 0.01}}
    """
    opts: dict[str, Any] = {"num_cpus": num_cpus}
    head, _, _ = device_name.partition(":")
    if head == "cuda":
        opts["num_gpus"] = 1
    elif head == "npu":
        opts["resources"] = {"NPU": 1}
    elif head == "sim":
        if cluster_resources is None and ray.is_initialized():
            cluster_resources = ray.cluster_resources()
        res = sim_resource(device_name)
        if cluster_resources and cluster_resources.get(res, 0) > 0:
            # a small fraction: the resource says *where* a simulated device may live, not how
            # many runtimes may simulate it at once (several Runtimes share one Ray)
            opts["resources"] = {res: SIM_RESOURCE_SHARE}
    return opts


class ExecutorHost:
    """The actor's body (also usable in-process): one executor built from a device name.

    Example:
        >>> h = ExecutorHost("cpu")
        >>> h.ping()["device"]
        'cpu'
    """

    def __init__(self, device_name: str, *, cost_model: Any = None, threads: int | None = 1,
                 freeze_gc: bool = False, **kw: Any):
        from .factory import create
        from .serialization import register

        register()  # the outputs this actor returns travel as NumPy arrays (see there)
        self._threads = None if threads is None else int(threads)
        self._pin_threads()
        head = device_name.partition(":")[0]
        if head in ("cuda", "npu") and "local_index" not in kw:
            kw["local_index"] = _local_index(head)
        self.executor = create(device_name, cost_model=cost_model, **kw)
        self.device = device_name
        self._keep: dict[Any, dict[str, list]] = {}  # columns kept between calls (run_group)
        if freeze_gc:  # keep full collections off this long-lived process's requests
            from .process import freeze_gc_once

            freeze_gc_once()

    def _pin_threads(self) -> None:
        """Set torch's thread count in the calling thread. Ray runs actor methods on its own
        threads, and OpenMP's thread count is a per-thread setting: without this, a method's
        thread ran with the process default (OMP_NUM_THREADS=1 under Ray) -- measured here,
        a SmolLM2 decode step took 35.5 ms in the actor against 31.4 ms in process."""
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)

    def load(self, partition: Any, predicted: float | None = None) -> int:
        """Load a partition; returns its id."""
        self.executor.load(partition, predicted)
        return int(partition.id)

    def run(self, partition_id: int, *args: Any, request: Any = None) -> ExecutionResult:
        """Run a loaded partition; the result carries the outputs."""
        self._pin_threads()
        return self.executor.run(partition_id, *args, request=request)

    def run_group(self, partition_id: int, requests: tuple, select: tuple | None,
                  n_skip: int, *columns: Any, keep: tuple | None = None,
                  drop: Any = None) -> Any:
        """Run a loaded partition once for each request of a group (see the module docstring).

        ``requests`` are the group's request ids; ``columns`` are ``n_skip`` *skip columns*
        (an early exit's gate decisions: a request whose value is true in any of them has
        left, and is not run) followed by the partition's inputs in order, each a list with
        one value per request, or a :class:`Kept` placeholder for a column an earlier call
        of the group left in this actor; ``select`` lists the positions to consider (None:
        all). A request not run gets ``None``. ``keep=(key, names, hidden)`` leaves the
        output columns ``names`` in this actor under ``key`` for a later call (``hidden``:
        those of them not shipped back, ``None`` in their place); ``drop`` forgets what was
        kept under that key once this call has read it.

        Returns ``(*output columns, meta column)`` (a :class:`~executors.base.MetaColumn`;
        alone when the partition has no outputs). A partition that is not loaded, or a kept
        column that is gone, fails the whole call with
        :class:`~executors.errors.ExecutorStateLost` (a restarted actor: the runtime
        retries); any other failure fails only its request, whose outputs become a
        :class:`~executors.base.MemberError`.

        Example:
            >>> import torch, torch.fx
            >>> from graphs.partition import Partition
            >>> h = ExecutorHost("cpu")
            >>> gm = torch.fx.symbolic_trace(lambda x: (x + 1,))
            >>> h.load(Partition(0, "cpu", gm, ("x",), ("add",)))
            0
            >>> out, meta = h.run_group(0, (7, 8), None, 0, [torch.zeros(1), torch.ones(1)],
            ...                         keep=("g1", ("add",), ("add",)))
            >>> out, [m.request for m in meta]
            (None, [7, 8])
            >>> h.run_group(0, (7, 8), None, 1, [True, False], Kept("g1", "add"), drop="g1")[0]
            [None, tensor([3.])]
        """
        self._pin_threads()
        outputs = self.executor.partition(partition_id).outputs
        n_out, n = len(outputs), len(requests)
        columns = tuple(self._kept(c) if isinstance(c, Kept) else c for c in columns)
        skips, columns = columns[:n_skip], columns[n_skip:]
        outs: list[list] = [[None] * n for _ in range(n_out)]
        metas: list = [None] * n
        flags = (self.executor.kind == "sim", not getattr(self.executor, "timing_only", False))
        for i in (range(n) if select is None else select):
            gates = [col[i] for col in skips]
            err = next((a for a in gates if isinstance(a, MemberError)), None)
            if err is None and any(bool(a) for a in gates):
                continue  # it left at an exit: nothing to run
            args = [col[i] for col in columns]
            err = err or next((a for a in args if isinstance(a, MemberError)), None)
            if err is None:
                try:
                    r = self.executor.run(partition_id, *args, request=requests[i])
                except Exception as e:  # noqa: BLE001 - this request fails, the group goes on
                    err = MemberError(str(e) if str(e).startswith(self.device)
                                      else f"{self.device}: {type(e).__name__}: {e}")
                else:
                    for col, o in zip(outs, r.outputs):
                        col[i] = o
                    metas[i] = (r.start, r.duration, r.wall)
                    flags = (r.simulated, r.computed)
                    continue
            for col in outs:
                col[i] = err
            metas[i] = err
        if drop is not None:
            self._keep.pop(drop, None)
        shipped: list = list(outs)
        if keep is not None:
            key, names, hidden = keep
            kept = self._keep.setdefault(key, {})
            for j, name in enumerate(outputs):
                if name in names:
                    kept[name] = outs[j]
                if name in hidden:
                    shipped[j] = None
            while len(self._keep) > _KEEP_LIMIT:  # abandoned groups (a failure upstream)
                self._keep.pop(next(iter(self._keep)))
        meta = MetaColumn(self.device, int(partition_id), flags[0], flags[1], tuple(requests),
                          tuple(metas))
        return (*shipped, meta) if n_out else meta

    def _kept(self, ref: "Kept") -> list:
        try:
            return self._keep[ref.key][ref.name]
        except KeyError:
            from .errors import ExecutorStateLost

            raise ExecutorStateLost(
                f"{self.device}: the column {ref.name!r} an earlier call left here is gone "
                f"(the actor restarted?)") from None

    def unload(self, partition_id: int) -> None:
        """Unload a partition."""
        self.executor.unload(partition_id)

    # ------------------------------------------------------------ generation
    def load_shard(self, shard: Any, predicted: float | None = None) -> int:
        """Host a decoder shard; returns its id (see :meth:`executors.base.Executor.load_shard`)."""
        self.executor.load_shard(shard, predicted)
        return int(shard.id)

    def step(self, shard_id: int, seq_ids: tuple, x: Any, *, reserve: tuple | None = None,
             sample: tuple | None = None, all_logits: bool = False, steps: int = 1,
             exit: dict | None = None) -> tuple[Any, StepMeta]:
        """One step of a hosted shard: ``(output, StepMeta)``; call it with
        ``.options(num_returns=2)`` so the output and the meta are separate objects (see
        :meth:`executors.base.Executor.step`).

        Example:
            >>> import torch
            >>> from graphs.decoding import DecoderShard
            >>> from graphs.models import decoder
            >>> h = ExecutorHost("cpu")
            >>> h.load_shard(DecoderShard(decoder("tiny"), 0, 5, id=3))
            3
            >>> out, meta = h.step(3, (1,), torch.tensor([[5, 6]]), reserve=(4,))
            >>> out.shape, meta.shard, h.kv_stats()["sequences"], h.free((1,)) > 0
            (torch.Size([1, 256]), 3, 1, True)
        """
        self._pin_threads()
        return self.executor.step(shard_id, seq_ids, x, reserve=reserve, sample=sample,
                                  all_logits=all_logits, steps=steps, exit=exit)

    def free(self, seq_ids: tuple) -> int:
        """Drop these sequences' caches in every hosted shard; returns the bytes freed."""
        return self.executor.free(seq_ids)

    def unload_shard(self, shard_id: int) -> int:
        """Forget a hosted shard and its caches; returns the cache bytes freed."""
        return self.executor.unload_shard(shard_id)

    @ray.method(concurrency_group="control")
    def kv_stats(self) -> dict[str, Any]:
        """The KV caches held here (see :meth:`executors.base.Executor.kv_stats`)."""
        return self.executor.kv_stats()

    @ray.method(concurrency_group="control")
    def loaded(self) -> tuple[int, ...]:
        """Ids of the loaded partitions."""
        getattr(self.executor, "wait_hang", lambda: None)()  # an injected hang
        return self.executor.loaded()

    @ray.method(concurrency_group="control")
    def health(self) -> dict[str, Any]:
        """The executor's health snapshot plus the actor's process id."""
        h = self.executor.health()
        h["pid"] = os.getpid()
        return h

    @ray.method(concurrency_group="control")
    def set_slowdown(self, factor: float = 1.0, *, schedule: Any = None,
                     origin: float | None = None) -> None:
        """Simulation knob: see :meth:`executors.simulated.SimulatedExecutor.set_slowdown`."""
        self._sim_only("set_slowdown").set_slowdown(factor, schedule=schedule, origin=origin)

    @ray.method(concurrency_group="control")
    def hang(self, seconds: float) -> None:
        """Fault injection: the actor stops answering (runs, ``ping``, ``loaded``) for
        ``seconds`` from now (simulated devices; returns at once)."""
        self._sim_only("hang").hang(seconds)

    def _sim_only(self, what: str) -> Any:
        if not hasattr(self.executor, "set_slowdown"):
            from .errors import ExecutorError

            raise ExecutorError(f"{what} is a simulation knob of sim:<profile> devices; device "
                                f"{self.device!r} runs a {type(self.executor).__name__}")
        return self.executor

    @ray.method(concurrency_group="control")
    def ping(self) -> dict[str, Any]:
        """Cheap liveness check: device, process id and wall clock."""
        getattr(self.executor, "wait_hang", lambda: None)()  # an injected hang
        return {"device": self.device, "pid": os.getpid(), "time": time.time()}


def _local_index(head: str) -> int | None:
    """Index of the one accelerator Ray gave this actor (0 after Ray's visibility mask)."""
    try:
        if not ray.is_initialized():
            return None
        ids = ray.get_runtime_context().get_accelerator_ids()
        key = "GPU" if head == "cuda" else "NPU"
        return 0 if ids.get(key) else None
    except Exception:
        return None


#: The Ray actor class: ``ExecutorActor.options(**actor_options(name)).remote(name, ...)``.
ExecutorActor = ray.remote(concurrency_groups={"control": 1})(ExecutorHost)
