"""Re-plan control: *when* to re-plan, and the numbered plan versions it makes.

:class:`ReplanController` owns the calibrated cost model (a
:class:`policies.calibrated.CalibratedCostModel`: every measured partition time is fed to
its exponentially weighted online correction), a :class:`scheduler.drift.DriftDetector`
and a :class:`scheduler.health.HealthTracker`; it decides when to re-plan (a drift alarm
after a cool-down, a failure or a recovery at once) and re-plans with the current policy on
the updated model, excluding failed devices (:meth:`executors.devices.Cluster.without`).
Each plan is a numbered :class:`PlanVersion`; everything the controller sees or does is an
:class:`AdaptiveEvent`, kept in order and logged on the ``"hetsched"`` logger.

Example:
    >>> ev = AdaptiveEvent(0.0, "failure", 0, "npu", "timeout")
    >>> ev.kind in EVENT_KINDS, ev.device, dict(ev.data)
    (True, 'npu', {})
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Hashable, Mapping, Sequence

from .adaptive_checks import _count, _number
from .drift import DriftAlarm, DriftDetector
from .errors import AdaptiveError, PlanSwitchError
from .health import HealthTracker

__all__ = ["AdaptiveEvent", "EVENT_KINDS", "PlanVersion", "ReplanController", "logger"]

#: The logger every adaptive event goes to.
logger = logging.getLogger("hetsched")

#: Kinds of :class:`AdaptiveEvent`.
EVENT_KINDS = ("drift", "failure", "recovery", "replan", "replan-skipped", "deployed", "retired")


# ------------------------------------------------------------------ events, plans
@dataclass(frozen=True)
class AdaptiveEvent:
    """One thing the adaptive loop saw or did.

    Example:
        >>> ev = AdaptiveEvent(12.5, "drift", 0, "npu", "3x slower", {"ratio": 3.0})
        >>> ev.kind, ev.device, ev.data["ratio"]
        ('drift', 'npu', 3.0)
        >>> AdaptiveEvent(12.5, "drfit", 0)
        Traceback (most recent call last):
        ...
        graphs.errors.UnknownNameError: unknown adaptive event kind 'drfit'...
    """

    time: float  # wall clock (time.time()) or the controller's clock, seconds
    kind: str  # one of EVENT_KINDS
    version: int  # plan version current when it happened (the new one for replan/deployed)
    device: str | None = None  # the device concerned, if one
    detail: str = ""  # human-readable
    data: Mapping[str, Any] = field(default_factory=dict)  # numbers: ratio, decide_time, ...

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            from graphs.errors import UnknownNameError

            raise UnknownNameError("adaptive event kind", self.kind, EVENT_KINDS)
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))


@dataclass(frozen=True)
class PlanVersion:
    """A numbered plan and why it was made.

    Example:
        >>> import networkx as nx
        >>> import policies
        >>> from executors.devices import Cluster
        >>> from policies.abstract import RelatedMachines
        >>> g = nx.DiGraph([("a", "b")]); nx.set_node_attributes(g, 1.0, "cost")
        >>> nx.set_edge_attributes(g, 0.0, "data")
        >>> cluster = Cluster.from_names(["fast", "slow"])
        >>> model = RelatedMachines({"fast": 4.0, "slow": 1.0})
        >>> plan = policies.get("heft").place(g, cluster, model)
        >>> pv = PlanVersion(0, plan, cluster.names, (), "initial", 0.0)
        >>> pv.version, pv.reason, dict(pv.assignment)
        (0, 'initial', {'a': 'fast', 'b': 'fast'})
    """

    version: int  # 0 for the initial plan, then 1, 2, ...
    plan: Any  # policies.plan.Plan
    devices: tuple[str, ...]  # the devices the policy could use (failed ones excluded)
    excluded: tuple[str, ...]  # devices left out because they had failed
    reason: str  # "initial", "drift: ...", "failure: ...", "recovery: ..."
    created: float  # clock time it was made, seconds
    scales: Mapping[str, float] = field(default_factory=dict)  # device -> online correction used

    @property
    def assignment(self) -> Mapping:
        """The plan's node -> device mapping."""
        return self.plan.assignment


# --------------------------------------------------------------------- controller
class ReplanController:
    """Decide when to re-plan and make the new plan (see the module docstring).

    Args:
        graph: the op graph being served.
        cluster: every device (:class:`executors.devices.Cluster`), failed ones included.
        policy: a :class:`policies.base.Policy` (or a name for :func:`policies.get`).
        cost_model: the planning model; wrapped in a
            :class:`policies.calibrated.CalibratedCostModel` unless it is one already.
        detector: the drift detector (default ``DriftDetector()``), keyed by device.
        health: the health tracker (default one over ``cluster.names``).
        cooldown: seconds after a re-plan before a drift alarm may trigger another one
            (failures and recoveries re-plan at once).
        clock: time source for cool-downs and events (default ``time.time``).
        initial_plan: the plan already in service (default: the policy places now).
        history: (predicted, measured) records kept.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import RelatedMachines
        >>> g = nx.DiGraph([("a", "b")]); nx.set_node_attributes(g, 1.0, "cost")
        >>> nx.set_edge_attributes(g, 0.0, "data")
        >>> c = ReplanController(g, Cluster.from_names(["fast", "slow"]), "heft",
        ...                      RelatedMachines({"fast": 4.0, "slow": 1.0}), cooldown=0.0)
        >>> sorted(set(c.current.assignment.values()))
        ['fast']
        >>> for _ in range(5): _ = c.observe("fast", ("a",), 5.0)    # 'fast' now 20x slower
        >>> c.due()
        'drift: fast 20x slower'
        >>> v = c.replan(); v.version, sorted(set(v.assignment.values()))
        (1, ['slow'])
    """

    def __init__(self, graph: Any, cluster: Any, policy: Any, cost_model: Any, *,
                 detector: DriftDetector | None = None, health: HealthTracker | None = None,
                 cooldown: float = 1.0, clock: Callable[[], float] = time.time,
                 initial_plan: Any = None, history: int = 10_000):
        import policies
        from executors.devices import Cluster
        from policies.base import Policy
        from policies.calibrated import CalibratedCostModel
        from policies.cost import CostModel

        if not isinstance(cluster, Cluster):
            raise AdaptiveError(f"cluster must be an executors.devices.Cluster, got {type(cluster).__name__}")
        if isinstance(policy, str):
            policy = policies.get(policy)
        if not isinstance(policy, Policy):
            raise AdaptiveError(f"policy must be a policy name or a policies.base.Policy, got "
                                f"{type(policy).__name__}; names: {', '.join(policies.available())}")
        if not isinstance(cost_model, CostModel):
            raise AdaptiveError(f"cost_model must be a policies.cost.CostModel, got {type(cost_model).__name__}")
        if not isinstance(cost_model, CalibratedCostModel):
            cost_model = CalibratedCostModel(cost_model, graph, overheads=False)
        elif cost_model.graph is None:
            cost_model.graph = graph
        self.graph = graph
        self.cluster = cluster
        self.policy = policy
        self.cost_model = cost_model
        self.detector = detector if detector is not None else DriftDetector()
        self.health = health if health is not None else HealthTracker(cluster.names)
        self.cooldown = _number("cooldown", cooldown, low=0.0)
        self.clock = clock
        self._lock = threading.RLock()
        self._events: list[AdaptiveEvent] = []
        self._records: deque = deque(maxlen=_count("history", history))
        self._pending: list[str] = []  # reasons for failures / recoveries not yet re-planned
        if initial_plan is None:
            initial_plan = policy.place(graph, cluster, cost_model)
        self._versions: list[PlanVersion] = [PlanVersion(0, initial_plan, cluster.names, (), "initial",
                                                         clock(), dict(cost_model.online))]
        self._scale_at_plan: dict[str, float] = dict(cost_model.online)
        self._last_replan = -math.inf

    # ------------------------------------------------------------------ views
    @property
    def current(self) -> PlanVersion:
        """The newest plan version."""
        with self._lock:
            return self._versions[-1]

    @property
    def versions(self) -> tuple[PlanVersion, ...]:
        """Every plan version made, oldest first."""
        with self._lock:
            return tuple(self._versions)

    def events(self) -> list[AdaptiveEvent]:
        """Every event so far, oldest first."""
        with self._lock:
            return list(self._events)

    def records(self) -> list[tuple]:
        """``(time, version, device, predicted, measured)`` of the last measurements, where
        ``predicted`` is what the plan version's model predicted."""
        with self._lock:
            return list(self._records)

    def event(self, kind: str, device: str | None = None, detail: str = "",
              version: int | None = None, **data: Any) -> AdaptiveEvent:
        """Record (and log) an event; returns it."""
        with self._lock:
            ev = AdaptiveEvent(self.clock(), kind, self.current.version if version is None else version,
                               device, detail, data)
            self._events.append(ev)
        level = logging.WARNING if kind in ("failure", "drift") else logging.INFO
        logger.log(level, "adaptive %s (plan v%d)%s%s", kind, ev.version,
                   f" {device}:" if device else ":", f" {detail}" if detail else "")
        return ev

    # ---------------------------------------------------------------- feeding
    def predicted(self, device: str, nodes: Sequence[Hashable]) -> float:
        """Seconds the current plan version's model predicted for ``nodes`` on ``device``
        (the model as it was when the version was made, before later online updates)."""
        cm = self.cost_model
        now = cm.predict(list(nodes), device)
        g_now = cm.online.get(device, 1.0)
        return now * self._scale_at_plan.get(device, 1.0) / g_now

    def observe(self, device: str, nodes: Sequence[Hashable], measured: float, *,
                version: int | None = None, now: float | None = None) -> DriftAlarm | None:
        """Feed one measured partition call: ``nodes`` ran on ``device`` in ``measured``
        seconds under plan ``version`` (default: the current one).

        The measurement always updates the calibrated model; it reaches the drift detector
        (against the version's prediction) only when it belongs to the current version.
        Returns a new alarm, if this measurement fired one.
        """
        from policies.errors import CostModelError

        self.health.success(device)
        m = _number("measured", measured, low=0.0, low_open=True)
        with self._lock:
            cur = self.current.version
            if version is not None and version != cur:
                stale = True
            else:
                stale = False
            try:
                pred = self.predicted(device, nodes)
                self.cost_model.update(list(nodes), device, m)
            except CostModelError:
                return None  # nothing to price (a partition of free nodes only)
            log = self.cost_model.online_log
            if len(log) > 2 * self._records.maxlen:  # bound the model's own log too
                del log[:-self._records.maxlen]
            if not (pred > 0 and math.isfinite(pred)):
                return None
            t = self.clock() if now is None else now
            self._records.append((t, cur if version is None else version, device, pred, m))
            if stale:
                return None
            alarm = self.detector.observe(device, pred, m, now=t)
        if alarm is not None:
            self.event("drift", device, f"{alarm.ratio:.3g}x {alarm.direction} than predicted "
                       f"after {alarm.run} samples", ratio=alarm.ratio, samples=alarm.run)
        return alarm

    def device_failed(self, device: str, reason: str = "") -> bool:
        """A device failed (its actor died for good, stopped answering, ...): re-plan
        without it at the next :meth:`due`. True if it was not failed before."""
        if self.health.mark_failed(device, reason):
            with self._lock:
                self._pending.append(f"failure: {device}" + (f" ({reason})" if reason else ""))
            self.event("failure", device, reason)
            return True
        return False

    def call_failed(self, device: str, reason: str = "") -> bool:
        """One call on ``device`` failed or timed out; True if that made it ``failed``."""
        if self.health.failure(device, reason):
            with self._lock:
                self._pending.append(f"failure: {device}" + (f" ({reason})" if reason else ""))
            self.event("failure", device, reason)
            return True
        return False

    def device_recovered(self, device: str) -> bool:
        """A failed device answers again: re-plan to use it at the next :meth:`due`."""
        if self.health.recovered(device):
            with self._lock:
                self._pending.append(f"recovery: {device}")
            self.event("recovery", device)
            return True
        return False

    # --------------------------------------------------------------- deciding
    def due(self, now: float | None = None) -> str | None:
        """Why a re-plan is due now (None: not due): a failure or recovery at once, a
        drift alarm once ``cooldown`` seconds have passed since the last re-plan."""
        t = self.clock() if now is None else now
        with self._lock:
            if self._pending:
                return "; ".join(self._pending)
            alarms = self.detector.alarms()
            alarms = {k: a for k, a in alarms.items() if self.health.healthy(k)} \
                if alarms else alarms
            if alarms and t - self._last_replan >= self.cooldown:
                return "drift: " + ", ".join(f"{k} {a.ratio:.3g}x {a.direction}"
                                             for k, a in sorted(alarms.items(), key=lambda kv: str(kv[0])))
            return None

    def replan(self, reason: str | None = None, now: float | None = None) -> PlanVersion | None:
        """Make the next plan version: fold the drift estimates into the calibrated model,
        exclude failed devices, and place with the policy.

        Returns the new version, or None when the placement is unchanged (then the
        detector is re-baselined on the updated model and a ``replan-skipped`` event is
        recorded, so the same drift does not fire again).

        Raises:
            PlanSwitchError: every device has failed.
        """
        from policies.errors import PolicyError

        t = self.clock() if now is None else now
        with self._lock:
            reason = reason or self.due(t) or "requested"
            cm = self.cost_model
            for key, alarm in self.detector.alarms().items():
                if isinstance(key, str) and key in self.cluster:
                    # the alarm's ratio is against the version's prediction: anchor on it
                    cm.online[key] = self._scale_at_plan.get(key, 1.0) * alarm.ratio
            failed = self.health.failed()
            try:
                if len(failed) == len(self.cluster):
                    raise PlanSwitchError(f"no healthy device left to re-plan on: all of "
                                          f"{', '.join(self.cluster.names)} have failed")
                cluster = self.cluster.without(*failed) if failed else self.cluster
                try:
                    plan = self.policy.place(self.graph, cluster, cm)
                except PolicyError as e:
                    raise PlanSwitchError(f"re-plan on {', '.join(cluster.names)} failed: {e}") from e
            except PlanSwitchError as e:
                # keep serving on the current plan; try again after the cool-down or when
                # health changes, not on every check
                self._pending.clear()
                self._last_replan = t
                self.detector.reset()
                self.event("replan-skipped", None, f"{reason}; {e}")
                raise
            self._pending.clear()
            self._last_replan = t
            self._scale_at_plan = dict(cm.online)
            self.detector.reset()
            cur = self.current
            if dict(plan.assignment) == dict(cur.plan.assignment) and cluster.names == cur.devices:
                self.event("replan-skipped", None, f"{reason}; placement unchanged",
                           decide_time=plan.decide_time)
                return None
            v = PlanVersion(cur.version + 1, plan, cluster.names, failed, reason, t, dict(cm.online))
            self._versions.append(v)
        self.event("replan", None, f"v{cur.version} -> v{v.version}: {reason}", version=v.version,
                   decide_time=plan.decide_time, devices=list(cluster.names))
        return v

    def step(self, now: float | None = None) -> PlanVersion | None:
        """:meth:`replan` if :meth:`due`, else None."""
        reason = self.due(now)
        return None if reason is None else self.replan(reason, now)
