"""``Runtime``: capture, place, partition, deploy on Ray actors, and serve requests.

:class:`Runtime` ties the packages together::

    model + example inputs --graphs.capture--> OpGraph --policy.place--> Plan
      --graphs.partition--> partitions --one ExecutorActor per device--> Ray
      submit(*inputs) -> Future  (scheduler.dispatch.Dispatcher over the partition DAG)

Devices are named: real ones ``cpu`` (or several executors on the host CPU: ``cpu:0``,
``cpu:1``, ...), ``cuda:0``, ``npu:0``; simulated ones ``sim:<profile>`` with a built-in
profile name (:func:`executors.profiles.available`) or a profile file path
(:mod:`scheduler.cluster` builds their specs and links). Without ``devices`` the runtime
uses the real devices :func:`executors.detect` finds. Without ``ray_address`` (or
``RAY_ADDRESS``) it starts an embedded local Ray bound to 127.0.0.1, or reuses the Ray
already initialised in this process (and then leaves it running at :meth:`Runtime.shutdown`).

Inputs are checked at submit against the example inputs' signature
(:class:`~scheduler.signature.InputSignature`): count, type, dtype, rank and every
dimension not declared dynamic. A bad input raises
:class:`~scheduler.errors.InputSignatureError` at once and
never reaches an actor, so the runtime keeps serving the others.

Example (a real run starts Ray, so it is not a doctest here; see tests/scheduler)::

    import torch, graphs.models as M
    from scheduler import Runtime
    model = M.pangu_embedded("tiny")
    x = M.example_inputs(model, batch=1, seq_len=16)
    with Runtime(model, x, devices=["sim:atlas-200i-a2", "sim:jetson-orin-nx",
                                     "sim:edge-cpu-a76"]) as rt:
        y = rt.run(*x)                      # synchronous
        futs = [rt.submit(*x) for _ in range(8)]   # pipelined
        print(rt.stats().latency_p50, rt.plan.policy)
        rt.write_trace("trace.json"); rt.write_gantt("gantt.png", time="simulated")
"""
from __future__ import annotations

import concurrent.futures as cf
import math
import os
import threading
import time
from typing import Any, Hashable, Iterable, Mapping, Sequence

import torch

# the device and signature names moved out of this module stay importable from it
from .cluster import DEVICE_FORMS, _init_loopback_ray, _parse_device, build_cluster, host_spec
from .dispatch import Dispatcher, Stage
from .errors import RuntimeClosedError, RuntimeConfigError
from .runtime_adaptive import RuntimeAdaptive
from .runtime_generation import RuntimeGeneration
from .runtime_reporting import TIME_BASES, RuntimeReporting  # noqa: F401  (TIME_BASES: old import path)
from .signature import InputSignature, TensorSpec, embedding_index_bounds
from .stats import StatsRecorder

__all__ = ["Runtime", "InputSignature", "TensorSpec", "DEVICE_FORMS", "host_spec", "build_cluster"]



def _own_storage(x: Any) -> Any:
    """A tensor that is a view into a larger storage (a slice of a dataset, say) is copied:
    pickling it for Ray would ship the whole storage with every request."""
    if isinstance(x, torch.Tensor) and x.device.type != "meta":
        if x.untyped_storage().nbytes() > x.numel() * x.element_size():
            return x.clone()
    return x


# ---------------------------------------------------------------------------- Runtime
class Runtime(RuntimeGeneration, RuntimeAdaptive, RuntimeReporting):
    """Capture, place, partition and deploy a model on Ray actors, then serve requests.

    Args:
        model: the ``torch.nn.Module`` to serve (evaluated in inference mode).
        example_inputs: a tensor or a tuple of tensors: the shapes it is captured and
            placed for, and the signature submitted inputs must match.
        devices: device names (see :data:`DEVICE_FORMS`); None: :func:`executors.detect`.
        policy: a policy name from :func:`policies.available` or a ``Policy`` instance.
        gate: early exits (see :mod:`scheduler.gated`): a :class:`policies.gating.Gate` at
            ``exit_depth``, or a :class:`policies.gating.Cascade`; the model must be an exit
            model (:class:`graphs.vision.ExitModel`). Easy requests return the exit head's
            logits from the shallow partition; the others continue on the deep path.
            For a :class:`graphs.models.Decoder`, a
            :class:`policies.gating.token_exit.TokenExits` instead: token-level early exit
            in :meth:`generate` (``exit_mode`` lossy or speculative, see
            :mod:`graphs.exit_decoding`); ``submit`` then runs the full model.
        ray_address: join this Ray cluster (also ``RAY_ADDRESS``); None: local Ray.
        granularity: capture granularity, ``"op" | "module" | "layer"``.
        cost_model: a :class:`policies.cost.CostModel`; default ``RooflineCostModel``.
        max_in_flight: requests in flight at once (backpressure beyond).
        max_group: request coalescing: under load, up to this many queued requests share
            one actor call per partition (each still runs on its own, with its own result
            and measurements), so Ray's per-call cost is paid once per group; a request
            that arrives while the runtime is idle goes at once. 1 turns coalescing off.
        group_work: seconds of expected work one coalesced call may carry (default 10 ms):
            a group grows only while its members' predicted, then measured, wall time in
            the slowest partition stays under it, so coalescing helps short calls and
            leaves long ones (where Ray's per-call cost is small) alone.
        freeze_gc: once deployed, collect and then freeze the driver's heap and each executor
            actor's (``gc.freeze()``, once per process; see :mod:`executors.process`), so
            that full garbage collections, which walk every object torch and Ray hold (a
            0.1-0.2 s stall here), stay off the request path. False leaves the collector alone.
        submit_timeout: seconds :meth:`submit` may block on backpressure (None: forever)
            before raising :class:`~scheduler.errors.SubmitTimeout`.
        request_timeout: seconds a request may take (None: no limit) before its future
            gets :class:`~scheduler.errors.RequestTimeout`.
        pace: real seconds slept per simulated second on ``sim:`` devices (None: no
            pacing, results come as fast as the CPU computes them).
        trace: False, True (keep events for :meth:`write_trace`), or a path: a Chrome
            trace written at :meth:`shutdown`.
        dynamic_dims: input index -> dimensions that may vary between requests.
        policy_options: options for a policy given by name.
        max_retries: retries of a request after an executor or actor failure.
        max_restarts: Ray restarts of a dead executor actor.
        recovery_timeout: seconds to wait for a dead actor to come back before the requests
            that need it fail with :class:`~scheduler.errors.RequestFailed`.
        history: measurements and request records kept for stats and traces.
        timing_only: run ``sim:`` devices on meta tensors (no real output; for sizes that do
            not fit here); results are then meta tensors.
        executor_options: extra keyword arguments for every executor.
        exit_depth: the depth of a single ``gate`` (number of stages before its exit).
        adaptive: False (a fixed plan), True, a dict of options or a
            :class:`scheduler.adaptive.AdaptiveConfig`: calibrate the cost model online from
            every measured partition call, detect drift and failed devices, re-plan with the
            same policy and switch plans without losing a request (plans are versioned:
            requests in flight finish on the version they were admitted to). See
            :meth:`replan`, :meth:`versions`, :meth:`adaptive_events`, and the simulation
            knobs :meth:`set_slowdown` and :meth:`inject_failure`.
        generation: for a :class:`graphs.models.Decoder`, how generation is placed and run
            (a :class:`scheduler.generation.GenerationConfig` or a dict of its fields; None:
            the defaults): :meth:`generate`, :meth:`submit_generate` and
            :meth:`generate_stream` run prefill and decode steps through decoder shards
            placed for ``phase``, each executor keeping the KV caches of its layers. See
            :mod:`scheduler.generation`. Other models: must be None.

    Raises:
        RuntimeConfigError: a bad option value (the message names it and the choices).
        graphs.errors.UnknownNameError: an unknown device form, policy or granularity.
        NotImplementedError: a gate that cannot serve (oracle, patience).

    A runtime deploys on Ray, so serving is shown in the module docstring (and run in
    tests/scheduler), not here. What it will deploy can be previewed without Ray: the same
    capture, policy and partition steps, on the same cluster and cost model:

    Example:
        >>> from graphs.capture import capture
        >>> from graphs.partition import partition
        >>> from policies import get
        >>> from policies.roofline import RooflineCostModel
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
        >>> x = torch.randn(4, 64)
        >>> cluster = build_cluster(["sim:atlas-200i-a2", "sim:edge-cpu-a76"])
        >>> graph = capture(model, (x,), granularity="layer")
        >>> plan = get("heft").place(graph, cluster, RooflineCostModel(cluster))
        >>> pm = partition(graph, plan.assignment)  # what Runtime(model, x, devices=...) deploys
        >>> set(pm.devices) <= set(cluster.names), torch.allclose(pm(x), model(x))
        (True, True)
        >>> Runtime(model, x, devices=["sim:atlas-200i-a2", "sim:atlas-200i-a2"])  # checked first
        Traceback (most recent call last):
        ...
        scheduler.errors.RuntimeConfigError: device(s) listed twice: sim:atlas-200i-a2
    """

    def __init__(self, model: torch.nn.Module, example_inputs: Any,
                 devices: Sequence[str] | None = None, policy: Any = "heft", gate: Any = None,
                 ray_address: str | None = None, *, granularity: str = "layer",
                 cost_model: Any = None, max_in_flight: int = 32,
                 submit_timeout: float | None = None, request_timeout: float | None = None,
                 pace: float | None = None, trace: bool | str | os.PathLike = False,
                 dynamic_dims: Mapping[int, Iterable[int]] | None = None,
                 policy_options: Mapping[str, Any] | None = None, max_retries: int = 3,
                 max_restarts: int = 4, recovery_timeout: float = 30.0, history: int = 100_000,
                 timing_only: bool = False,
                 executor_options: Mapping[str, Any] | None = None,
                 exit_depth: int | None = None, adaptive: Any = False, max_group: int = 16,
                 group_work: float = 10e-3, freeze_gc: bool = True, generation: Any = None):
        self._closed = True  # until fully deployed: shutdown() then cleans up what exists
        self._actors: dict[str, Any] = {}
        self._owns_ray = False
        self._dispatcher: Dispatcher | None = None
        self._adaptive = None  # scheduler.adaptive.AdaptiveLoop when adaptive
        self._generation = None  # scheduler.generation_service.GenerationService for a decoder
        if adaptive is not False and adaptive is not None:
            from .adaptive import AdaptiveConfig

            adaptive = AdaptiveConfig.coerce(adaptive)
            if gate is not None:
                raise NotImplementedError(
                    "adaptive=... with gate=...: re-planning a gated (early-exit) model is not "
                    "implemented; use one or the other")
        self._check_options(model, max_in_flight, submit_timeout, request_timeout, pace,
                            max_retries, max_restarts, history, trace, max_group)
        if not (isinstance(group_work, (int, float)) and not isinstance(group_work, bool)
                and math.isfinite(group_work) and group_work > 0):
            raise RuntimeConfigError(
                f"group_work must be a finite number of seconds > 0, got {group_work!r}")
        if not (isinstance(recovery_timeout, (int, float)) and not isinstance(recovery_timeout, bool)
                and math.isfinite(recovery_timeout) and recovery_timeout > 0):
            raise RuntimeConfigError(
                f"recovery_timeout must be a finite number of seconds > 0, got {recovery_timeout!r}")
        # token ids outside an embedding's table are refused at submit, not in an actor
        self.signature = InputSignature(example_inputs, dynamic_dims, allow_meta=bool(timing_only),
                                        index_bounds=embedding_index_bounds(model))
        self.example_inputs = ((example_inputs,) if isinstance(example_inputs, torch.Tensor)
                               else tuple(example_inputs))
        self.pace = pace
        self.timing_only = bool(timing_only)
        self._trace_path = None if isinstance(trace, bool) else os.fspath(trace)
        self._lock = threading.Lock()

        # devices and cluster
        if devices is None:
            from executors import detect

            devices = detect()
        if isinstance(devices, str) or not isinstance(devices, (list, tuple)) or not devices:
            raise RuntimeConfigError(
                f"devices must be a non-empty list of device names, got {devices!r}; "
                f"valid forms: {', '.join(DEVICE_FORMS)}")
        devices = tuple(devices)
        for d in devices:
            _parse_device(d)
        if timing_only and not all(d.startswith("sim:") for d in devices):
            raise RuntimeConfigError(
                f"timing_only runs only on simulated devices (sim:<profile>); got "
                f"{', '.join(d for d in devices if not d.startswith('sim:'))}")
        dup = sorted({d for d in devices if devices.count(d) > 1})
        if dup:
            raise RuntimeConfigError(f"device(s) listed twice: {', '.join(dup)}")
        self.devices = devices
        self.cluster = build_cluster(devices)

        # capture, cost model, plan, partitions
        from graphs.capture import capture
        from graphs.partition import partition

        model.eval()
        self.model = model
        from policies.gating.token_exit import TokenExits

        self.token_exits = gate if isinstance(gate, TokenExits) else None
        if self.token_exits is not None:  # token exits act in generation; submit() runs the full model
            from graphs.models import Decoder

            if not isinstance(model, Decoder) or timing_only:
                raise RuntimeConfigError(
                    f"token exits (TokenExits) act in generation: they need a graphs.models.Decoder served "
                    f"without timing_only; got a {type(model).__name__}{' with timing_only' if timing_only else ''}")
            if exit_depth is not None:
                raise RuntimeConfigError("exit_depth does not apply to token exits (their layers are "
                                         f"{self.token_exits.layers}); leave it None")
            gate = None
        if gate is None and exit_depth is not None:
            raise RuntimeConfigError("exit_depth goes with gate=...; got no gate")
        if gate is not None:
            from .gated import gate_points

            gate_points(model, gate, exit_depth)  # bad gate configuration fails before any work
        self.gate = gate
        if cost_model is None:
            from policies.roofline import RooflineCostModel

            cost_model = RooflineCostModel(self.cluster)
        else:
            from policies.cost import CostModel

            if not isinstance(cost_model, CostModel):
                raise RuntimeConfigError(
                    f"cost_model must be a policies.cost.CostModel, got {type(cost_model).__name__}")
        self.cost_model = cost_model
        self.policy = self._policy(policy, policy_options)
        if gate is None:
            self.graph = capture(model, self.example_inputs, granularity=granularity)
            self.plan = self.policy.place(self.graph, self.cluster, self.cost_model)
            self.partitioned = partition(self.graph, self.plan.assignment)
        else:
            from .gated import build_gated

            self.graph, self.plan, self.partitioned = build_gated(
                model, self.example_inputs, gate, exit_depth, self.cluster, self.cost_model,
                self.policy, granularity)
        self.predicted = {p.id: self._predict(p) for p in self.partitioned.parts}
        self._transfer, self._sim_dag = self._transfers()
        gen_plan = self._plan_generation(model, generation, gate)

        # Ray and actors
        self._max_restarts = max_restarts
        self._recovery_timeout = recovery_timeout
        self._executor_options = dict(executor_options or {})
        self._freeze_gc = bool(freeze_gc)
        self._init_ray(ray_address)
        pm = self.partitioned
        gated = gate is not None
        self.recorder = StatsRecorder(history=history, pace=pace, gated=gated,
                                      full_flops=pm.full_flops if gated else None)
        power = {d: self.cost_model.power(d) for d in self.devices}
        if gated:
            out_names, assemble = pm.output_names, pm.assemble
        else:
            out_names = pm.output_spec.names
            assemble = lambda vals: pm.output_spec.build(dict(zip(out_names, vals)))  # noqa: E731
        try:
            self._deploy()
            if adaptive:
                from .adaptive import AdaptiveLoop

                self._adaptive = AdaptiveLoop(self, adaptive)
            self._dispatcher = Dispatcher(
                [Stage(p.id, p.device, p.inputs, p.outputs) for p in pm.parts], self._actors,
                pm.input_names, out_names, assemble,
                self.recorder, dag=self._sim_dag, transfer=self._transfer_time, power=power,
                max_in_flight=max_in_flight, submit_timeout=submit_timeout,
                request_timeout=request_timeout, max_retries=max_retries, recover=self._recover,
                exits=pm.exits if gated else (),
                flops={p.id: float(p.flops) for p in pm.parts} if gated else None,
                ledger=self._adaptive.ledger if self._adaptive else None, max_group=max_group,
                call_wall=self._call_wall(self.predicted), group_work=group_work)
            if self._adaptive:
                self._adaptive.attach(self._dispatcher)
            if gen_plan is not None:
                from .generation_service import GenerationService

                self._generation = GenerationService(
                    model, *gen_plan, self._actors, power=power, max_retries=max_retries,
                    recovery_timeout=recovery_timeout, exits=self.token_exits)
            if self._freeze_gc:
                from executors.process import freeze_gc_once

                freeze_gc_once()
        except BaseException:
            self.shutdown(wait=False)  # kill what was deployed; stop Ray if we started it
            raise
        self._closed = False

    # ------------------------------------------------------------------ setup
    def _plan_generation(self, model: torch.nn.Module, generation: Any, gate: Any) -> tuple | None:
        """(config, plan, graph, stages, shards) of generation for a decoder, else None."""
        from graphs.models import Decoder

        if not isinstance(model, Decoder) or gate is not None or self.timing_only:
            if generation is not None:
                raise RuntimeConfigError(
                    f"generation=... needs a graphs.models.Decoder model served without a gate and "
                    f"not timing_only; got a {type(model).__name__}")
            return None
        from .generation_service import GenerationConfig, plan_generation

        cfg = GenerationConfig.coerce(generation)
        plan, graph, stages, shards = plan_generation(model, self.cluster, self.cost_model, self.policy, cfg,
                                                      exits=self.token_exits)
        self._gen_stages = stages
        return cfg, plan, graph, stages, shards

    def _call_wall(self, predicted: Mapping[int, float], parts: Iterable[Any] | None = None
                   ) -> dict[int, float | None]:
        """Expected wall seconds of one request's call of each partition, for the
        dispatcher's group sizes: a paced simulated device sleeps ``pace`` x its predicted
        time, a real device takes its predicted time; an unpaced simulated device's time is
        the host's compute, unknown until measured (None)."""
        parts = {p.id: p for p in (self.partitioned.parts if parts is None else parts)}
        out: dict[int, float | None] = {}
        for pid, t in predicted.items():
            sim = parts[pid].device.startswith("sim:")
            out[pid] = (t * self.pace if self.pace else None) if sim else t
        return out

    @staticmethod
    def _check_options(model, max_in_flight, submit_timeout, request_timeout, pace,
                       max_retries, max_restarts, history, trace, max_group=1) -> None:
        if not isinstance(model, torch.nn.Module):
            raise RuntimeConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")

        def positive_int(name, v):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise RuntimeConfigError(f"{name} must be an int >= 1, got {v!r}")

        def seconds(name, v, allow_zero=False):
            if v is None:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (v == 0 and not allow_zero):
                raise RuntimeConfigError(
                    f"{name} must be None or a finite number of seconds {'>=' if allow_zero else '>'} 0, "
                    f"got {v!r}")

        positive_int("max_in_flight", max_in_flight)
        positive_int("max_group", max_group)
        positive_int("history", history)
        seconds("submit_timeout", submit_timeout, allow_zero=True)
        seconds("request_timeout", request_timeout)
        seconds("pace", pace)
        for name, v in (("max_retries", max_retries), ("max_restarts", max_restarts)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise RuntimeConfigError(f"{name} must be an int >= 0, got {v!r}")
        if not isinstance(trace, (bool, str, os.PathLike)):
            raise RuntimeConfigError(f"trace must be a bool or a file path, got {type(trace).__name__}")

    def _policy(self, policy: Any, options: Mapping[str, Any] | None):
        import policies
        from policies.base import Policy

        if isinstance(policy, Policy):
            if options:
                raise RuntimeConfigError("policy_options apply to a policy given by name; "
                                         "configure the Policy instance instead")
            return policy
        if isinstance(policy, str):
            return policies.get(policy, **dict(options or {}))
        raise RuntimeConfigError(
            f"policy must be a policy name or a policies.base.Policy, got {type(policy).__name__}; "
            f"valid names: {', '.join(policies.available())}")

    def _predict(self, part) -> float:
        return part.predicted(self.graph, self.cost_model)

    def _transfers(self, plan=None, pm=None):
        """Partition-level transfer seconds (the slowest OpGraph edge crossing each
        partition edge, as links are contention-free in the simulator) and a DAG with a
        virtual source (model inputs) and sink (model output) for simulated makespans."""
        import networkx as nx

        g = self.graph
        plan = self.plan if plan is None else plan
        pm = self.partitioned if pm is None else pm
        # a node's output leaves from the last partition holding its ops and enters the
        # first partition holding its consumer's (a coarse node's ops may span partitions)
        first: dict[Hashable, int] = {}
        last: dict[Hashable, int] = {}
        for p in pm.parts:  # ids are a topological order
            for n in p.nodes:
                first.setdefault(n, p.id)
                last[n] = p.id
        src, snk = "__inputs__", "__output__"
        dag = nx.DiGraph()
        dag.add_nodes_from([src, snk, *range(len(pm.parts))])
        dag.add_edges_from(pm.dag.edges)
        times: dict[tuple, float] = {}
        for u, v in g.edges:
            pu, pv = last.get(u, src), first.get(v, snk)
            if pu == pv or (pu == src and pv == snk):
                continue
            if pu != src and pv != snk and pu > pv:
                continue  # both ends span partitions; the data flows within the later ones
            du = pm.parts[pu].device if pu != src else plan.assignment.get(u)
            dv = pm.parts[pv].device if pv != snk else plan.assignment.get(v)
            if du is None or dv is None:
                continue
            t = self.cost_model.edge_time(g, u, v, du, dv) if du != dv else 0.0
            dag.add_edge(pu, pv)
            times[(pu, pv)] = max(times.get((pu, pv), 0.0), t)
        for p in range(len(pm.parts)):
            if dag.in_degree(p) == 0:
                dag.add_edge(src, p)
            if dag.out_degree(p) == 0:
                dag.add_edge(p, snk)
        return times, dag

    def _transfer_time(self, u: Hashable, v: Hashable) -> float:
        return self._transfer.get((u, v), 0.0)

    def _init_ray(self, address: str | None) -> None:
        """Join the cluster at ``address`` (or ``RAY_ADDRESS``) after probing that it answers
        (:func:`~scheduler.cluster.probe_ray_address`), or start an embedded Ray of our own
        (never a cluster found on this machine); a Ray already initialised here is reused.
        Sets ``_joined``: whether the Ray is a cluster we joined (see :meth:`_deploy`)."""
        import ray

        from executors.serialization import register

        from .cluster import check_client_support, probe_ray_address

        source = "ray_address" if address else "RAY_ADDRESS"
        address = address or os.environ.get("RAY_ADDRESS") or None
        self._joined = False
        if not ray.is_initialized():
            if address:
                check_client_support(address)
                probe_ray_address(address, source=source)
                ray.init(address=address, log_to_driver=False, configure_logging=False)
                self._joined = True
            else:
                _init_loopback_ray(num_cpus=max(2, len(self.devices)),
                                   resources=self._sim_resources())
            self._owns_ray = True
        else:  # reused: a cluster if it has more than this machine's node
            self._joined = sum(1 for n in ray.nodes() if n.get("Alive")) > 1
        register()  # tensors travel as NumPy arrays, not torch.save archives

    def _sim_resources(self) -> dict[str, float]:
        try:
            from executors.ray_actor import sim_resource
        except ImportError:
            return {}
        out = {}
        for d in self.devices:
            if d.startswith("sim:"):
                r = sim_resource(d)
                if r:
                    out[r] = out.get(r, 0) + 1
        return out

    def _actor_kwargs(self, device: str) -> dict[str, Any]:
        kw = dict(self._executor_options)
        kw.setdefault("threads", 1)
        kw.setdefault("freeze_gc", self._freeze_gc)
        if device.startswith("sim:"):
            # the runtime passes each partition's predicted seconds at load, so the actor
            # needs the spec (a profile file may not exist on a remote node) but no cost model
            kw.setdefault("spec", self.cluster.spec(device))
            kw.setdefault("pace", self.pace)
            if self.timing_only:
                kw.setdefault("timing_only", True)
        return kw

    def _deploy(self) -> None:
        import ray
        from executors.ray_actor import ExecutorActor, actor_options

        from .cluster import DEPLOY_TIMEOUT, actor_demand, check_placeable, warn_unpinned_sim

        used = {p.device for p in self.partitioned.parts}
        used |= {s.device for s in getattr(self, "_gen_stages", ())}
        used = sorted(used, key=self.devices.index)
        # an actor asking for a resource no node has is queued forever, not refused: check
        # every device before creating any actor
        res = ray.cluster_resources()
        nodes = ray.nodes()
        options = {d: dict(actor_options(d, cluster_resources=res)) for d in used}
        check_placeable({d: actor_demand(o) for d, o in options.items()}, nodes)
        warn_unpinned_sim(used, res, joined=getattr(self, "_joined", False),
                          n_nodes=sum(1 for n in nodes if n.get("Alive")))
        for d in used:
            opts = options[d]
            opts.setdefault("max_restarts", self._max_restarts)
            opts.setdefault("max_task_retries", 0)
            self._actors[d] = ExecutorActor.options(**opts).remote(d, **self._actor_kwargs(d))
        loads = {p.device: [] for p in self.partitioned.parts}
        for p in self.partitioned.parts:
            loads[p.device].append(self._actors[p.device].load.remote(p, self.predicted[p.id]))
        refs = [r for rs in loads.values() for r in rs]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=DEPLOY_TIMEOUT)
        if pending:  # resources another job holds, a node gone, a load that hangs
            late = [d for d, rs in loads.items() if set(pending) & set(rs)]
            raise RuntimeConfigError(
                f"executor actors for {', '.join(late)} did not start and load their "
                f"partitions within {DEPLOY_TIMEOUT:g} s; other jobs may hold the resources "
                f"they need (free now: {ray.available_resources()})")
        ray.get(refs)

    def _recover(self) -> None:
        """Bring every actor back with its partitions loaded (called before a retry)."""
        import ray

        if self._adaptive is not None:
            return self._adaptive.recover()  # version-aware; marks dead devices failed

        with self._lock:
            for d, actor in self._actors.items():
                deadline = time.monotonic() + self._recovery_timeout
                while True:
                    try:
                        loaded = set(ray.get(actor.loaded.remote(), timeout=self._recovery_timeout))
                        break
                    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)  # restarting
                missing = [p for p in self.partitioned.parts if p.device == d and p.id not in loaded]
                if missing:
                    ray.get([actor.load.remote(p, self.predicted[p.id]) for p in missing], timeout=60)

    # --------------------------------------------------------------- serving
    def submit(self, *inputs: Any, request_timeout: float | None = None) -> cf.Future:
        """Submit one request; the future's result is the model's output (same pytree).

        Blocks while ``max_in_flight`` requests are in flight (backpressure), raising
        :class:`~scheduler.errors.SubmitTimeout` after ``submit_timeout`` seconds.
        ``future.cancel()`` before completion cancels the request: the future is cancelled
        and its slot freed at once; calls already sent to actors run to their end and their
        results are dropped (see :mod:`scheduler.dispatch` for why they are not ray.cancel'ed).
        ``request_timeout`` (seconds) overrides the runtime's for this request.

        Raises:
            InputSignatureError: the inputs do not match the example inputs' signature.
            RuntimeClosedError: the runtime was shut down.
        """
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down; create a new Runtime to submit")
        self.signature.check(inputs)
        values = self.partitioned.bind(*(_own_storage(x) for x in inputs))
        if request_timeout is not None:
            self._check_options(self.model, 1, None, request_timeout, None, 0, 0, 1, False)
        return self._dispatcher.submit(tuple(values[n] for n in self.partitioned.input_names),
                                       request_timeout=request_timeout)

    def run(self, *inputs: Any, timeout: float | None = None) -> Any:
        """Submit one request and wait for its result (``timeout`` seconds at most)."""
        return self.submit(*inputs).result(timeout=timeout)

    def map(self, inputs: Iterable[Sequence[Any]], timeout: float | None = None) -> list:
        """Results of many requests, pipelined (each item is one request's input tuple)."""
        futs = [self.submit(*x) for x in inputs]
        return [f.result(timeout=timeout) for f in futs]

    # -------------------------------------------------------------- lifecycle
    @property
    def closed(self) -> bool:
        """True after :meth:`shutdown`."""
        return self._closed

    def shutdown(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Stop serving: wait for requests in flight (``wait``) or fail them, kill the
        actors, and stop Ray if this runtime started it. Idempotent and thread-safe: a
        second caller waits for the first one's shutdown to end."""
        # one lock per runtime, made on first use (dict.setdefault is atomic), so that a
        # shutdown while __init__ is still deploying finds one too
        with self.__dict__.setdefault("_shutdown_lock", threading.RLock()):
            self._shutdown(wait, timeout)

    def _shutdown(self, wait: bool, timeout: float | None) -> None:
        import ray

        if self._adaptive is not None:
            self._adaptive.stop()
        if self._generation is not None:
            self._generation.close(wait=wait and not self._closed, timeout=timeout)
        d = self._dispatcher
        if d is not None and not d._closed:
            if wait and not self._closed:
                d.drain(timeout)
            d.close(cancel=True)
        self._closed = True
        if self._trace_path and d is not None:
            try:
                self.write_trace(self._trace_path)
            except Exception:  # noqa: BLE001 - never fail a shutdown over a trace
                pass
        actors = list(self._actors.values())
        self._actors.clear()
        if ray.is_initialized():  # after Ray's own shutdown (interpreter exit) they are gone
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001
                    pass
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def close(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """The same as :meth:`shutdown` (the name files and sockets use)."""
        self.shutdown(wait, timeout)

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not self._closed:
                self.shutdown(wait=False)
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._dispatcher.in_flight} in flight"
        return (f"Runtime({self.graph.name!r}, devices={list(self.devices)}, "
                f"policy={self.plan.policy!r}, partitions={len(self.partitioned)}, {state})")
