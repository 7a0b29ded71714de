"""The adaptive loop: calibrate online, detect drift and failures, re-plan, switch plans
without losing a request.

Four small pieces, each testable on its own (no Ray, no model needed) and each in its own
module, which :class:`AdaptiveLoop` wires into a :class:`scheduler.Runtime` built with
``adaptive=True`` (or an :class:`AdaptiveConfig`):

* :class:`DriftDetector` (:mod:`scheduler.drift`) -- fed one ``measured / predicted`` ratio
  at a time per key (a device, or a ``(device, op kind)`` pair), it raises a
  :class:`DriftAlarm` when the ratio *stays* off beyond a relative ``threshold``: a
  two-sided CUSUM test on the log ratio (Page, Biometrika 41, 1954).
* :class:`HealthTracker` (:mod:`scheduler.health`) -- consecutive failures or timeouts of a
  device make it ``failed``; a successful recovery probe makes it ``healthy`` again.
* :class:`ReplanController` (:mod:`scheduler.replan`) -- owns the calibrated cost model, the
  detector and the health tracker; it decides *when* to re-plan (drift alarm after a
  cool-down, a failure or a recovery at once) and re-plans with the current policy on the
  updated model, excluding failed devices. Each plan is a numbered :class:`PlanVersion`.
* :class:`VersionLedger` (:mod:`scheduler.version_ledger`) -- the bookkeeping that makes a
  plan switch lossless: every request is pinned to the plan version current at its
  admission and completes exactly once, on that version; a version is retired once no
  request pinned to it is in flight, so its partitions can be unloaded.

This module holds the knobs (:class:`AdaptiveConfig`) and the runtime's loop
(:class:`AdaptiveLoop`), and re-exports the pieces above, so ``from scheduler.adaptive
import DriftDetector`` (and every other name it ever defined) keeps working.

Every event (drift, failure, recovery, re-plan, deploy, retire) is an
:class:`AdaptiveEvent`, kept by the controller, logged on the ``"hetsched"`` logger, and
shown in ``Runtime.stats().events`` and in the runtime's trace (row ``"adaptive"``).

Known limits: drift is detected per device from partition-level measurements (the
detector takes any key, e.g. ``(device, op kind)``, but partitions mix kinds); a device
that a re-plan stops using is no longer measured, so it is not re-admitted if it becomes
fast again (failed devices are probed and re-admitted).

Example:
    >>> det = DriftDetector(threshold=0.25)
    >>> [det.observe("npu", 1.0, 1.05) for _ in range(20)].count(None)   # noise: no alarm
    20
    >>> alarms = [det.observe("npu", 1.0, 3.0) for _ in range(4)]        # 3x slower
    >>> [a is not None for a in alarms], alarms[2].direction, round(alarms[2].ratio, 2)
    ([False, False, True, False], 'slower', 3.0)
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

from .adaptive_checks import _count, _number
from .drift import DriftAlarm, DriftDetector, _KeyState  # noqa: F401  (re-exported)
from .errors import AdaptiveError, PlanSwitchError
from .health import HEALTH_STATES, HealthTracker
from .replan import EVENT_KINDS, AdaptiveEvent, PlanVersion, ReplanController, logger
from .version_ledger import VersionLedger

__all__ = ["AdaptiveConfig", "AdaptiveEvent", "AdaptiveLoop", "DriftAlarm", "DriftDetector",
           "EVENT_KINDS", "FAILURE_MODES", "HEALTH_STATES", "HealthTracker", "PlanVersion",
           "ReplanController", "UID_STRIDE", "VersionLedger", "logger"]


# ------------------------------------------------------------------------ config
@dataclass(frozen=True)
class AdaptiveConfig:
    """Knobs of the runtime's adaptive loop (``Runtime(..., adaptive=AdaptiveConfig(...))``,
    or ``adaptive=True`` for these defaults, or a dict of some of them).

    Example:
        >>> AdaptiveConfig.coerce({"threshold": 0.5}).threshold
        0.5
        >>> AdaptiveConfig.coerce({"treshold": 0.5})
        Traceback (most recent call last):
        ...
        scheduler.errors.AdaptiveError: unknown adaptive option(s) 'treshold'; valid options: ...
    """

    threshold: float = 0.25  # relative drift tolerated before an alarm (DriftDetector)
    h: float = 4.0  # CUSUM decision interval, multiples of log(1 + threshold)
    clip: float = 3.0  # the most one sample counts, multiples of log(1 + threshold)
    min_samples: int = 3  # samples per device before it may alarm (after each re-plan)
    cooldown: float = 1.0  # seconds between drift-triggered re-plans
    max_failures: int = 3  # consecutive failed calls that mark a device failed
    interval: float = 0.02  # seconds between checks of the adaptive thread
    hang_timeout: float = 2.0  # seconds a liveness ping may stay unanswered (device hung)
    probe_interval: float = 0.5  # seconds between recovery probes of a failed device
    probe_timeout: float = 2.0  # seconds a probe (start an actor, ping it) may take

    def __post_init__(self) -> None:
        for f in ("threshold", "h", "cooldown", "interval", "hang_timeout", "probe_interval",
                  "probe_timeout"):
            _number(f, getattr(self, f), low=0.0, low_open=f != "cooldown")
        _number("clip", self.clip, low=1.0, low_open=True)
        _count("min_samples", self.min_samples)
        _count("max_failures", self.max_failures)

    @classmethod
    def coerce(cls, value: Any) -> "AdaptiveConfig":
        """An :class:`AdaptiveConfig` from ``True``, a config, or a dict of options."""
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            names = [f.name for f in dataclasses.fields(cls)]
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise AdaptiveError(f"unknown adaptive option(s) {', '.join(map(repr, unknown))}; "
                                    f"valid options: {', '.join(names)}")
            return cls(**value)
        raise AdaptiveError(f"adaptive must be False, True, an AdaptiveConfig or a dict of its "
                            f"options, got {type(value).__name__}")

    def detector(self) -> "DriftDetector":
        """The drift detector these knobs describe."""
        return DriftDetector(self.threshold, h=self.h, clip=self.clip, min_samples=self.min_samples)


# ------------------------------------------------------------ the runtime's loop
#: Partition ids of plan version ``v`` on the actors are ``v * UID_STRIDE + position``, so
#: the partitions of two live versions never collide on one actor.
UID_STRIDE = 100_000
#: Failure modes :meth:`AdaptiveLoop.inject_failure` (``Runtime.inject_failure``) knows.
FAILURE_MODES = ("kill", "crash", "hang")


@dataclass
class _Deployment:
    version: int
    plan: Any  # policies.plan.Plan
    partitioned: Any  # graphs.partition.PartitionedModel (partition ids 0..n-1)
    offset: int  # uid = offset + partition id
    predicted: dict  # uid -> seconds (the executors' model: what simulated devices report)
    transfer: dict  # (uid, uid) -> seconds
    dag: Any  # networkx DiGraph over uids plus "__inputs__" / "__output__"
    devices: tuple  # devices its partitions run on


class AdaptiveLoop:
    """The :class:`scheduler.Runtime`'s adaptive part (``Runtime(..., adaptive=True)``).

    It owns a :class:`ReplanController` (planning on a
    :class:`policies.calibrated.CalibratedCostModel` that wraps the runtime's cost model,
    which stays untouched: simulated devices keep reporting their own times from it) and
    the :class:`VersionLedger` the dispatcher pins requests with, and runs one thread,
    ``hetsched-adapt``, that every ``config.interval`` seconds

    * re-plans when the controller says so and deploys the new version: partitions loaded
      on the actors under fresh ids (:data:`UID_STRIDE`), then the dispatcher switches;
      requests in flight finish on the version they were admitted to;
    * unloads a retired version's partitions once its last request is done;
    * pings the devices in use while requests are in flight, and declares a device failed
      when its actor died for good or a ping stays unanswered for ``config.hang_timeout``
      seconds; the requests stuck on it restart, whole, on the new version;
    * probes failed devices every ``config.probe_interval`` seconds (a ping, or a fresh
      actor for a dead one) and re-plans to use a device that answers again.

    Measurements feed the controller from the dispatcher's completion thread; a failed
    partition call reaches it through the dispatcher's retry path (the ``recover`` hook:
    :meth:`recover`), which also re-plans at once when a device died.

    The thread, deploys and probes need a deployed, Ray-backed runtime (see
    tests/scheduler/test_adaptive.py); making the loop only reads the runtime's graph,
    cluster, policy, cost model, plan and partitions, so a stand-in shows what it sets up.

    Example:
        >>> import networkx as nx
        >>> from types import SimpleNamespace as NS
        >>> from executors.devices import Cluster
        >>> from policies.abstract import RelatedMachines
        >>> g = nx.DiGraph([("a", "b")]); nx.set_node_attributes(g, 1.0, "cost")
        >>> nx.set_edge_attributes(g, 0.0, "data")
        >>> rt = NS(graph=g, cluster=Cluster.from_names(["fast", "slow"]), policy="heft",
        ...         cost_model=RelatedMachines({"fast": 4.0, "slow": 1.0}), plan=None,
        ...         devices=("fast", "slow"), predicted={0: 0.5}, _transfer={}, _sim_dag=None,
        ...         partitioned=NS(parts=[NS(id=0, nodes=("a", "b"), device="fast")]))
        >>> loop = AdaptiveLoop(rt, AdaptiveConfig(max_failures=2))
        >>> loop.version, loop.deployment(0).devices, loop.controller.health.max_failures
        (0, ('fast',), 2)
    """

    def __init__(self, runtime: Any, config: AdaptiveConfig):
        from policies.calibrated import CalibratedCostModel

        self.rt = runtime
        self.config = config
        planning = CalibratedCostModel(runtime.cost_model, runtime.graph, overheads=False)
        self.controller = ReplanController(
            runtime.graph, runtime.cluster, runtime.policy, planning, detector=config.detector(),
            health=HealthTracker(runtime.devices, max_failures=config.max_failures),
            cooldown=config.cooldown, initial_plan=runtime.plan)
        self.ledger = VersionLedger(0)
        self._retire_q: deque = deque()
        self.ledger.on_retire.append(self._retire_q.append)
        self._lock = threading.RLock()  # one re-plan / deploy / probe at a time
        pm = runtime.partitioned
        self._deployments: dict[int, _Deployment] = {0: _Deployment(
            0, runtime.plan, pm, 0, dict(runtime.predicted), dict(runtime._transfer),
            runtime._sim_dag, tuple(sorted({p.device for p in pm.parts})))}
        self._nodes: dict[int, tuple] = {p.id: tuple(p.nodes) for p in pm.parts}
        self._down_until: dict[str, float] = {}  # injected outages: device -> wall clock
        self._pings: dict[str, tuple] = {}  # device -> (liveness ping ref, wall clock sent, actor)
        self._last_probe = 0.0
        self._probes: dict[str, tuple] = {}  # device -> (ping ref, wall clock sent)
        self._last_watch = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hetsched-adapt", daemon=True)

    # ------------------------------------------------------------- wiring
    def attach(self, dispatcher: Any) -> None:
        """Hook into the dispatcher and start the thread."""
        dispatcher.on_measurement.append(self._measured)
        # measurements reach the detector within ~0.1 s even when the dispatcher never idles
        dispatcher.max_flush_delay = 0.1
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (the runtime is shutting down)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    @property
    def version(self) -> int:
        """The current plan version."""
        return self.ledger.current

    def deployment(self, version: int) -> _Deployment | None:
        """What version ``version`` deployed (kept after it retires, without its modules)."""
        return self._deployments.get(version)

    def _measured(self, m: Any) -> None:
        nodes = self._nodes.get(m.partition)
        if nodes and m.duration > 0:
            self.controller.observe(m.device, nodes, m.duration, version=m.version)

    # -------------------------------------------------------------- thread
    def _run(self) -> None:
        while not self._stop.wait(self.config.interval):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - keep adapting; the error goes to the log
                logger.exception("adaptive loop step failed")

    def tick(self, now: float | None = None) -> None:
        """One pass of the thread: retire, watch for hangs, probe, re-plan if due."""
        now = time.time() if now is None else now
        self._retire()
        if now - self._last_watch >= 0.05:
            self._last_watch = now
            self._watchdog(now)
        if now - self._last_probe >= self.config.probe_interval:
            self._last_probe = now
            self._probe_failed(now)
        self.step()

    def step(self) -> PlanVersion | None:
        """Re-plan and deploy now if the controller says a re-plan is due (a re-plan that
        finds no feasible placement is logged and the current plan stays)."""
        with self._lock:
            if self.rt._dispatcher is None or self.rt._dispatcher._closed:
                return None
            try:
                pv = self.controller.step()
            except PlanSwitchError as e:
                logger.error("adaptive re-plan failed, keeping plan v%d: %s", self.version, e)
                return None
            if pv is None:
                return None
            self.deploy(pv)
            failed = self.controller.health.failed()
            if failed:  # requests stuck on a failed device start over on the new plan
                self.rt._dispatcher.reroute(failed)
            return pv

    def replan(self, reason: str = "requested") -> PlanVersion | None:
        """Re-plan now (whatever the detector says) and deploy the result if it differs."""
        with self._lock:
            pv = self.controller.replan(reason)
            if pv is not None:
                self.deploy(pv)
            return pv

    # -------------------------------------------------------------- deploy
    def _actor(self, device: str, fresh: bool = False) -> Any:
        from executors.ray_actor import ExecutorActor, actor_options

        rt = self.rt
        if fresh or device not in rt._actors:
            opts = dict(actor_options(device))
            opts.setdefault("max_restarts", rt._max_restarts)
            opts.setdefault("max_task_retries", 0)
            rt._actors[device] = ExecutorActor.options(**opts).remote(device, **rt._actor_kwargs(device))
        return rt._actors[device]

    def deploy(self, pv: PlanVersion) -> None:
        """Load ``pv``'s partitions on the actors, then switch the dispatcher to it."""
        import ray

        from graphs.partition import partition

        from .dispatch import Stage

        rt = self.rt
        t0 = time.time()
        with self._lock:
            pm = partition(rt.graph, pv.plan.assignment)
            off = pv.version * UID_STRIDE
            parts = [dataclasses.replace(p, id=off + p.id) for p in pm.parts]
            predicted = {q.id: rt._predict(q) for q in parts}
            times, dag = rt._transfers(pv.plan, pm)
            uid = (lambda n: n + off if isinstance(n, int) else n)
            times = {(uid(a), uid(b)): t for (a, b), t in times.items()}
            import networkx as nx

            dag = nx.relabel_nodes(dag, uid, copy=True)
            devices = tuple(sorted({q.device for q in parts}))
            ray.get([self._actor(q.device).load.remote(q, predicted[q.id]) for q in parts],
                    timeout=max(60.0, rt._recovery_timeout))
            self._nodes.update({q.id: tuple(q.nodes) for q in parts})
            self._deployments[pv.version] = _Deployment(pv.version, pv.plan, pm, off, predicted,
                                                        times, dag, devices)
            d = rt._dispatcher
            d.add_version(pv.version, [Stage(q.id, q.device, q.inputs, q.outputs) for q in parts],
                          dag=dag, transfer=lambda u, v, t=times: t.get((u, v), 0.0),
                          call_wall=rt._call_wall(predicted, parts))
            rt.plan, rt.partitioned, rt.predicted = pv.plan, pm, predicted
            rt._transfer, rt._sim_dag = times, dag
            d.switch(pv.version)
        self.controller.event("deployed", None, f"v{pv.version}: {len(parts)} partition(s) on "
                              f"{', '.join(devices)}", version=pv.version, seconds=time.time() - t0)

    def _retire(self) -> None:
        rt = self.rt
        while self._retire_q:
            v = self._retire_q.popleft()
            if v == self.ledger.current:
                continue
            try:
                stages = rt._dispatcher.retire_version(v)
            except PlanSwitchError:
                self._retire_q.append(v)  # a retry re-pinned onto it meanwhile: later
                return
            for st in stages:
                actor = rt._actors.get(st.device)
                if actor is not None:
                    try:
                        actor.unload.remote(st.pid)
                    except Exception:  # noqa: BLE001 - a dead actor holds nothing
                        pass
            dep = self._deployments.get(v)
            if dep is not None:
                dep.partitioned = None  # drop the modules; keep the timing data for traces
            self.controller.event("retired", None, f"v{v}: {len(stages)} partition(s) unloaded",
                                  version=v)

    # ------------------------------------------------------- health, probes
    def _watchdog(self, now: float) -> None:
        """Liveness pings, one in flight per healthy device of a live version while
        requests are in flight: an actor that died for good fails its device at once; a
        ping unanswered for ``config.hang_timeout`` seconds means the device stopped
        answering. Pings run in the actor's ``control`` concurrency group
        (:mod:`executors.ray_actor`), so a healthy actor answers while it is busy."""
        import ray
        import ray.exceptions as rex

        rt = self.rt
        d = rt._dispatcher
        if d is None:
            return
        live = [self._deployments[v] for v in d.versions() if v in self._deployments]
        busy = d.in_flight > 0
        for dev in sorted({x for dep in live for x in dep.devices}):
            if not self.controller.health.healthy(dev):
                self._pings.pop(dev, None)
                continue
            actor = rt._actors.get(dev)
            pending = self._pings.get(dev)
            if pending is not None and pending[2] is not actor:
                del self._pings[dev]  # a ping to a replaced actor says nothing
                pending = None
            if pending is None:
                if busy and actor is not None:
                    self._pings[dev] = (actor.ping.remote(), now, actor)
                continue
            ref, sent, _ = pending
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                del self._pings[dev]
                try:
                    ray.get(ref)
                except rex.ActorDiedError:
                    self.controller.device_failed(dev, "its actor died and cannot restart")
                except Exception:  # noqa: BLE001 - restarting: the retry path reloads it
                    pass
            elif now - sent > self.config.hang_timeout:
                del self._pings[dev]
                self.controller.device_failed(
                    dev, f"stopped answering: no reply to a ping for {now - sent:.1f} s")

    def _probe_failed(self, now: float) -> None:
        """Non-blocking recovery probes: one ping in flight per failed device; a dead
        actor is replaced by a fresh one, which the next probe pings."""
        import ray
        import ray.exceptions as rex

        for dev in self.controller.health.failed():
            if now < self._down_until.get(dev, 0.0):
                continue
            pending = self._probes.get(dev)
            if pending is None:
                actor = self.rt._actors.get(dev)
                if actor is None:
                    actor = self._actor(dev, fresh=True)
                self._probes[dev] = (actor.ping.remote(), now)
                continue
            ref, since = pending
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                if now - since > self.config.probe_timeout:
                    del self._probes[dev]  # still hung or starting: ask again next time
                continue
            del self._probes[dev]
            try:
                ray.get(ref)
            except rex.ActorDiedError:
                self._actor(dev, fresh=True)  # the device's actor is gone: start a new one
                continue
            except Exception:  # noqa: BLE001 - restarting or unavailable: probe again
                continue
            self._pings.pop(dev, None)
            self.controller.device_recovered(dev)

    def recover(self) -> None:
        """The dispatcher's retry hook: find which devices of live versions are alive,
        reload partitions a restarted actor lost, mark dead ones failed, and re-plan and
        deploy at once if that made a re-plan due."""
        import ray
        import ray.exceptions as rex

        rt = self.rt
        with self._lock:
            live = [self._deployments[v] for v in rt._dispatcher.versions() if v in self._deployments]
            devices = sorted({dev for dep in live for dev in dep.devices})
            for dev in devices:
                if not self.controller.health.healthy(dev):
                    continue
                actor = rt._actors.get(dev)
                deadline = time.monotonic() + self.config.hang_timeout
                loaded = None
                while actor is not None:
                    try:
                        loaded = set(ray.get(actor.loaded.remote(), timeout=self.config.probe_timeout))
                        break
                    except rex.ActorDiedError:
                        self.controller.device_failed(dev, "its actor died and cannot restart")
                        break
                    except (rex.GetTimeoutError, rex.RayActorError):
                        if time.monotonic() > deadline:
                            self.controller.device_failed(dev, "did not come back after a failure")
                            break
                        time.sleep(0.05)  # restarting
                if loaded is None:
                    continue
                missing = [(dataclasses.replace(p, id=dep.offset + p.id), dep) for dep in live
                           if dep.partitioned is not None for p in dep.partitioned.parts
                           if p.device == dev and dep.offset + p.id not in loaded]
                if missing:
                    ray.get([actor.load.remote(q, dep.predicted[q.id]) for q, dep in missing], timeout=60)
            self.step()

    # ---------------------------------------------------------- fault knobs
    def inject_failure(self, device: str, mode: str = "kill", seconds: float | None = None) -> None:
        """Fault injection on a device's actor (see :data:`FAILURE_MODES`): ``"kill"`` it
        for good, the device staying unavailable for ``seconds`` (None: for ever);
        ``"crash"`` it so that Ray restarts it (its partitions are reloaded on the retry
        path); ``"hang"``: it stops answering for ``seconds`` (simulated devices)."""
        import ray

        rt = self.rt
        if mode not in FAILURE_MODES:
            from graphs.errors import UnknownNameError

            raise UnknownNameError("failure mode", mode, FAILURE_MODES)
        rt.cluster.check(device)
        actor = rt._actors.get(device)
        if actor is None:
            raise AdaptiveError(f"device {device!r} runs no executor actor (no plan used it yet); "
                                f"devices with actors: {', '.join(sorted(rt._actors)) or '(none)'}")
        if seconds is not None:
            _number("seconds", seconds, low=0.0)
        if mode == "hang":
            if seconds is None:
                raise AdaptiveError("mode 'hang' needs seconds (how long the device stops answering)")
            actor.hang.remote(float(seconds))
        elif mode == "kill":
            self._down_until[device] = math.inf if seconds is None else time.time() + seconds
            ray.kill(actor, no_restart=True)
        else:
            ray.kill(actor, no_restart=False)
        logger.warning("adaptive fault injected: %s %s%s", mode, device,
                       "" if seconds is None else f" for {seconds:g} s")
