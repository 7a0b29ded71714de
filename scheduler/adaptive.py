"""The adaptive loop: calibrate online, detect drift and failures, re-plan, switch plans
without losing a request.

Four small pieces, each testable on its own (no Ray, no model needed), which
:class:`AdaptiveLoop` wires into a :class:`scheduler.Runtime` built with
``adaptive=True`` (or an :class:`AdaptiveConfig`):

* :class:`DriftDetector` -- fed one ``measured / predicted`` ratio at a time per key (a
  device, or a ``(device, op kind)`` pair), it raises a :class:`DriftAlarm` when the ratio
  *stays* off beyond a relative ``threshold``. It is a two-sided CUSUM test on the log
  ratio (Page, "Continuous inspection schemes", Biometrika 41, 1954; the Page-Hinkley
  form used for concept drift, Gama et al., "A survey on concept drift adaptation", ACM
  Computing Surveys 46(4), 2014). See the class docstring for the parameters and the
  guarantees they give.
* :class:`HealthTracker` -- consecutive failures or timeouts of a device make it
  ``failed``; a successful recovery probe makes it ``healthy`` again.
* :class:`ReplanController` -- owns the calibrated cost model (a
  :class:`policies.calibrated.CalibratedCostModel`: every measured partition time is fed to
  its exponentially weighted online correction), the detector and the health tracker; it
  decides *when* to re-plan (drift alarm after a cool-down, a failure or a recovery at
  once) and re-plans with the current policy on the updated model, excluding failed
  devices (:meth:`executors.devices.Cluster.without`). Each plan is a numbered
  :class:`PlanVersion`.
* :class:`VersionLedger` -- the bookkeeping that makes a plan switch lossless: every
  request is pinned to the plan version current at its admission and completes exactly
  once, on that version (a retry after a device failure re-pins the whole request to the
  newest version: one attempt never mixes plans); a version is retired once no request
  pinned to it is in flight, so its partitions can be unloaded.

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
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

from .errors import AdaptiveError, PlanSwitchError

__all__ = ["AdaptiveConfig", "AdaptiveEvent", "AdaptiveLoop", "DriftAlarm", "DriftDetector",
           "EVENT_KINDS", "FAILURE_MODES", "HEALTH_STATES", "HealthTracker", "PlanVersion",
           "ReplanController", "UID_STRIDE", "VersionLedger", "logger"]

#: The logger every adaptive event goes to.
logger = logging.getLogger("hetsched")

#: Kinds of :class:`AdaptiveEvent`.
EVENT_KINDS = ("drift", "failure", "recovery", "replan", "replan-skipped", "deployed", "retired")
#: States of a device in :class:`HealthTracker`.
HEALTH_STATES = ("healthy", "suspect", "failed")


def _number(name: str, v: Any, *, low: float | None = None, low_open: bool = False,
            high: float | None = None) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        rng = ("" if low is None else (f"> {low}" if low_open else f">= {low}")) + \
              ("" if high is None else f" and <= {high}")
        raise AdaptiveError(f"{name} must be a finite number {rng.strip()}, got {v!r}")
    return float(v)


def _count(name: str, v: Any, low: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise AdaptiveError(f"{name} must be an int >= {low}, got {v!r}")
    return v


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


# ------------------------------------------------------------------------- drift
@dataclass(frozen=True)
class DriftAlarm:
    """A sustained change of one key's ``measured / predicted`` ratio."""

    key: Hashable  # what drifted: a device name or a (device, op kind) pair
    direction: str  # "slower" (measured above prediction) or "faster"
    ratio: float  # estimated measured / predicted since the change began (geometric mean)
    samples: int  # samples of this key since the detector was last reset
    run: int  # samples since the change began (the CUSUM's current run)
    statistic: float  # the CUSUM statistic that crossed the decision interval
    time: float  # when the alarm fired (the ``now`` given to observe, else time.time())


@dataclass
class _KeyState:
    n: int = 0  # samples since reset
    level: float = 0.0  # EWMA of the log ratio
    up: float = 0.0  # CUSUM statistic for "slower"
    down: float = 0.0  # CUSUM statistic for "faster"
    up_run: int = 0  # samples in the current "slower" run
    up_sum: float = 0.0  # sum of log ratios in it
    down_run: int = 0
    down_sum: float = 0.0
    alarm: DriftAlarm | None = None  # latched until reset


class DriftDetector:
    """Two-sided CUSUM on ``x = log(measured / predicted)``, one per key.

    With the allowance ``k = log(1 + threshold)``, each sample moves two statistics::

        S+ <- max(0, S+ + min(x, c) - k)          (measured slower than predicted)
        S- <- max(0, S- + min(-x, c) - k)         (measured faster)

    where ``c = clip * k`` bounds what one sample can add, and an alarm fires when either
    statistic exceeds the decision interval ``h * k`` and the key has at least
    ``min_samples`` samples. An alarm latches: the key fires again only after
    :meth:`reset` (the controller resets after a re-plan, against the new predictions).

    What the parameters guarantee:

    * Noise within the threshold never fires: a sample with ``|x| <= k`` (a ratio within
      ``[1 / (1 + threshold), 1 + threshold]``) cannot increase either statistic.
    * One outlier never fires, whatever its size: it adds at most ``(clip - 1) * k``,
      below ``h * k`` as long as ``clip - 1 < h`` (the defaults: 2 vs 4).
    * A sustained ratio ``r`` with ``|log r| > k`` fires after exactly
      :meth:`samples_to_detect` samples of the change (at least ``min_samples`` in all).

    Args:
        threshold: relative deviation tolerated (0.25: ratios within -20 % .. +25 %).
        h: decision interval, in multiples of ``k``.
        clip: the most one sample counts, in multiples of ``k`` (robustness to outliers).
        min_samples: samples a key needs before it may fire.
        alpha: weight of the newest sample in the smoothed ratio :meth:`ratio` reports.

    Example:
        >>> d = DriftDetector(threshold=0.25, h=4.0, clip=3.0)
        >>> d.samples_to_detect(3.0)
        3
        >>> d.observe("gpu", 2.0, 20.0) is None      # one 10x outlier does not fire
        True
    """

    def __init__(self, threshold: float = 0.25, *, h: float = 4.0, clip: float = 3.0,
                 min_samples: int = 3, alpha: float = 0.2):
        self.threshold = _number("threshold", threshold, low=0.0, low_open=True)
        self.h = _number("h", h, low=0.0, low_open=True)
        self.clip = _number("clip", clip, low=1.0, low_open=True)
        self.min_samples = _count("min_samples", min_samples)
        self.alpha = _number("alpha", alpha, low=0.0, low_open=True, high=1.0)
        self.k = math.log1p(self.threshold)
        self._state: dict[Hashable, _KeyState] = {}
        self._lock = threading.Lock()

    def samples_to_detect(self, ratio: float) -> int | None:
        """Samples of a sustained ``ratio`` after which the alarm fires (on a key that
        already has ``min_samples``); None when the ratio is within the threshold.

        Example:
            >>> DriftDetector(threshold=0.25).samples_to_detect(1.1) is None
            True
        """
        x = abs(math.log(_number("ratio", ratio, low=0.0, low_open=True)))
        step = min(x, self.clip * self.k) - self.k
        if step <= 1e-12:
            return None
        return math.floor(self._limit() / step) + 1

    def _limit(self) -> float:
        # the decision interval, a hair above h * k so that a sum landing on it exactly
        # (e.g. two clipped samples with h = 2 * (clip - 1)) does not fire by rounding
        return self.h * self.k * (1 + 1e-9)

    def observe(self, key: Hashable, predicted: float, measured: float,
                now: float | None = None) -> DriftAlarm | None:
        """Feed one measurement of ``key``; return the alarm if this sample fired one.

        Raises:
            AdaptiveError: ``predicted`` or ``measured`` is not a finite number > 0.
        """
        p = _number("predicted", predicted, low=0.0, low_open=True)
        m = _number("measured", measured, low=0.0, low_open=True)
        x = math.log(m / p)
        c = self.clip * self.k
        with self._lock:
            s = self._state.setdefault(key, _KeyState())
            s.n += 1
            s.level = x if s.n == 1 else (1 - self.alpha) * s.level + self.alpha * x
            s.up = s.up + min(x, c) - self.k
            if s.up <= 0:
                s.up, s.up_run, s.up_sum = 0.0, 0, 0.0
            else:
                s.up_run += 1
                s.up_sum += x
            s.down = s.down + min(-x, c) - self.k
            if s.down <= 0:
                s.down, s.down_run, s.down_sum = 0.0, 0, 0.0
            else:
                s.down_run += 1
                s.down_sum += x
            if s.alarm is not None or s.n < self.min_samples:
                return None
            limit = self._limit()
            if s.up > limit:
                s.alarm = DriftAlarm(key, "slower", math.exp(s.up_sum / s.up_run), s.n, s.up_run,
                                     s.up, time.time() if now is None else now)
            elif s.down > limit:
                s.alarm = DriftAlarm(key, "faster", math.exp(s.down_sum / s.down_run), s.n,
                                     s.down_run, s.down, time.time() if now is None else now)
            return s.alarm

    def ratio(self, key: Hashable) -> float:
        """The smoothed ``measured / predicted`` of ``key`` (1.0 for an unseen key)."""
        with self._lock:
            s = self._state.get(key)
            return 1.0 if s is None else math.exp(s.level)

    def alarm(self, key: Hashable) -> DriftAlarm | None:
        """The latched alarm of ``key``, if any."""
        with self._lock:
            s = self._state.get(key)
            return None if s is None else s.alarm

    def alarms(self) -> dict[Hashable, DriftAlarm]:
        """Every latched alarm, by key."""
        with self._lock:
            return {k: s.alarm for k, s in self._state.items() if s.alarm is not None}

    def samples(self, key: Hashable) -> int:
        """Samples of ``key`` since its last reset."""
        with self._lock:
            s = self._state.get(key)
            return 0 if s is None else s.n

    def keys(self) -> tuple:
        """Keys seen since the last full reset."""
        with self._lock:
            return tuple(self._state)

    def reset(self, key: Hashable | None = None) -> None:
        """Forget ``key`` (None: every key), alarm included."""
        with self._lock:
            if key is None:
                self._state.clear()
            else:
                self._state.pop(key, None)

    def state(self, key: Hashable) -> dict[str, Any]:
        """A snapshot of ``key``'s statistics (for stats and tests)."""
        with self._lock:
            s = self._state.get(key, _KeyState())
            return {"samples": s.n, "ratio": math.exp(s.level), "up": s.up, "down": s.down,
                    "alarm": s.alarm}


# ------------------------------------------------------------------------ health
class HealthTracker:
    """Per-device health from call outcomes and probes.

    A device is ``healthy`` until a call fails or times out; it is ``suspect`` after fewer
    than ``max_failures`` consecutive failures and ``failed`` at ``max_failures`` (or at
    once through :meth:`mark_failed`, e.g. an actor that died for good). One success of
    a ``suspect`` device makes it ``healthy``; a ``failed`` device comes back only through
    :meth:`recovered` (a successful recovery probe), so a stray late result cannot
    re-admit it.

    Example:
        >>> h = HealthTracker(["npu", "gpu"], max_failures=2)
        >>> h.failure("npu", "timeout"), h.state("npu")
        (False, 'suspect')
        >>> h.failure("npu", "timeout"), h.failed()
        (True, ('npu',))
        >>> h.recovered("npu"), h.state("npu")
        (True, 'healthy')
    """

    def __init__(self, devices: Iterable[str], *, max_failures: int = 3):
        self.max_failures = _count("max_failures", max_failures)
        self._lock = threading.Lock()
        self._state: dict[str, str] = {}
        self._fails: dict[str, int] = {}
        self._reason: dict[str, str] = {}
        for d in devices:
            self._state[d] = "healthy"
            self._fails[d] = 0
        if not self._state:
            raise AdaptiveError("HealthTracker needs at least one device; got none")

    def _check(self, device: str) -> None:
        if device not in self._state:
            from graphs.errors import UnknownNameError

            raise UnknownNameError("device", device, self._state)

    @property
    def devices(self) -> tuple[str, ...]:
        """The tracked devices, in the order given."""
        return tuple(self._state)

    def state(self, device: str) -> str:
        """``"healthy"``, ``"suspect"`` or ``"failed"``."""
        self._check(device)
        return self._state[device]

    def healthy(self, device: str) -> bool:
        """True unless the device is ``failed`` (a suspect device still takes work)."""
        return self.state(device) != "failed"

    def failed(self) -> tuple[str, ...]:
        """The failed devices, in tracking order."""
        with self._lock:
            return tuple(d for d, s in self._state.items() if s == "failed")

    def reason(self, device: str) -> str | None:
        """Why the device last failed or became suspect."""
        self._check(device)
        return self._reason.get(device)

    def success(self, device: str) -> bool:
        """Record a successful call; True if a suspect device became healthy again."""
        self._check(device)
        with self._lock:
            self._fails[device] = 0
            if self._state[device] == "suspect":
                self._state[device] = "healthy"
                return True
            return False

    def failure(self, device: str, reason: str = "") -> bool:
        """Record a failed or timed-out call; True if the device just became ``failed``."""
        self._check(device)
        with self._lock:
            if self._state[device] == "failed":
                return False
            self._fails[device] += 1
            self._reason[device] = reason
            if self._fails[device] >= self.max_failures:
                self._state[device] = "failed"
                return True
            self._state[device] = "suspect"
            return False

    def mark_failed(self, device: str, reason: str = "") -> bool:
        """Mark a device failed at once; True if it was not failed before."""
        self._check(device)
        with self._lock:
            was = self._state[device]
            self._state[device] = "failed"
            self._fails[device] = max(self._fails[device], self.max_failures)
            self._reason[device] = reason
            return was != "failed"

    def recovered(self, device: str) -> bool:
        """A recovery probe succeeded: the device is healthy again; True if it had failed."""
        self._check(device)
        with self._lock:
            was = self._state[device]
            self._state[device] = "healthy"
            self._fails[device] = 0
            return was == "failed"

    def snapshot(self) -> dict[str, str]:
        """device -> state."""
        with self._lock:
            return dict(self._state)


# ------------------------------------------------------------------ events, plans
@dataclass(frozen=True)
class AdaptiveEvent:
    """One thing the adaptive loop saw or did."""

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
    """A numbered plan and why it was made."""

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


# ------------------------------------------------------------------------ ledger
class VersionLedger:
    """Which plan version each request runs on; exactly-once, single-version completion.

    The dispatcher calls :meth:`admit` when a request enters (pinning it to the current
    version), :meth:`repin` when a failed attempt is retried (the whole request moves to
    the newest version, as a new attempt), and :meth:`complete` / :meth:`fail` when it
    ends. :meth:`publish` makes a new version current; a non-current version whose last
    request ended is *retired* (the ``on_retire`` callbacks run, outside the lock, so its
    partitions can be unloaded).

    Example:
        >>> led = VersionLedger()
        >>> led.admit("r1")
        0
        >>> led.publish(1)
        >>> led.admit("r2"), led.in_flight(0), led.in_flight(1)
        (1, 1, 1)
        >>> led.complete("r1", 0); led.retired
        (0,)
        >>> led.complete("r1", 0)
        Traceback (most recent call last):
        ...
        scheduler.errors.PlanSwitchError: request 'r1' completed twice (first on v0, again on v0)
    """

    def __init__(self, version: int = 0, *, history: int | None = None):
        self._lock = threading.Lock()
        self.current = int(version)
        self._pinned: dict[Hashable, int] = {}  # in flight: request -> version
        self._attempts: dict[Hashable, int] = {}
        self._done: dict[Hashable, int] | deque = {}  # finished request -> version
        self._count: dict[int, int] = {self.current: 0}
        self._served: dict[int, int] = {}
        self._retired: list[int] = []
        self._failed = 0
        self._repins = 0
        self.on_retire: list[Callable[[int], None]] = []

    @property
    def retired(self) -> tuple[int, ...]:
        """Versions retired so far, in order."""
        with self._lock:
            return tuple(self._retired)

    def publish(self, version: int) -> None:
        """Make ``version`` current (it must be newer)."""
        retire = []
        with self._lock:
            if version <= self.current:
                raise PlanSwitchError(f"plan version {version} is not newer than the current v{self.current}")
            old = self.current
            self.current = int(version)
            self._count.setdefault(self.current, 0)
            if self._count.get(old, 0) == 0:
                retire.append(self._retire(old))
        self._run_retire(retire)

    def admit(self, request: Hashable) -> int:
        """Pin a new request to the current version; returns it."""
        with self._lock:
            if request in self._pinned or request in self._done:
                raise PlanSwitchError(f"request {request!r} was admitted twice")
            v = self.current
            self._pinned[request] = v
            self._attempts[request] = 1
            self._count[v] = self._count.get(v, 0) + 1
            return v

    def version_of(self, request: Hashable) -> int:
        """The version an in-flight request is pinned to."""
        with self._lock:
            try:
                return self._pinned[request]
            except KeyError:
                raise PlanSwitchError(f"request {request!r} is not in flight") from None

    def repin(self, request: Hashable) -> int:
        """A failed attempt of ``request`` is retried: pin it to the current version."""
        retire = []
        with self._lock:
            if request not in self._pinned:
                raise PlanSwitchError(f"request {request!r} is not in flight; cannot retry it")
            old = self._pinned[request]
            new = self.current
            self._attempts[request] += 1
            self._repins += 1
            if new != old:
                self._pinned[request] = new
                self._count[new] = self._count.get(new, 0) + 1
                self._count[old] -= 1
                if self._count[old] == 0 and old != self.current:
                    retire.append(self._retire(old))
        self._run_retire(retire)
        return new

    def complete(self, request: Hashable, version: int) -> None:
        """``request`` produced its answer, computed entirely on plan ``version``."""
        self._end(request, version, ok=True)

    def fail(self, request: Hashable) -> None:
        """``request`` ended without an answer (error, timeout, cancel)."""
        self._end(request, None, ok=False)

    def _end(self, request: Hashable, version: int | None, ok: bool) -> None:
        retire = []
        with self._lock:
            if request in self._done:
                raise PlanSwitchError(f"request {request!r} completed twice (first on "
                                      f"v{self._done[request]}, again on v{version})")
            if request not in self._pinned:
                raise PlanSwitchError(f"request {request!r} completed but was never admitted")
            pinned = self._pinned.pop(request)
            if ok and version != pinned:
                self._pinned[request] = pinned
                raise PlanSwitchError(f"request {request!r} answered by plan v{version} but pinned to "
                                      f"v{pinned}: plans must not mix within a request")
            self._done[request] = pinned
            if ok:
                self._served[pinned] = self._served.get(pinned, 0) + 1
            else:
                self._failed += 1
            self._count[pinned] -= 1
            if self._count[pinned] == 0 and pinned != self.current:
                retire.append(self._retire(pinned))
        self._run_retire(retire)

    def _retire(self, version: int) -> int:
        self._retired.append(version)
        return version

    def _run_retire(self, versions: list[int]) -> None:
        for v in versions:
            for cb in list(self.on_retire):
                cb(v)

    def in_flight(self, version: int | None = None) -> int:
        """Requests in flight on ``version`` (None: all)."""
        with self._lock:
            if version is None:
                return len(self._pinned)
            return self._count.get(version, 0)

    def finished(self) -> dict[Hashable, int]:
        """Finished request -> the version it was pinned to at the end."""
        with self._lock:
            return dict(self._done)

    def summary(self) -> dict[str, Any]:
        """Counts: admitted, completed per version, failed, in flight, retries re-pinned."""
        with self._lock:
            return {"current": self.current, "in_flight": len(self._pinned),
                    "finished": len(self._done), "failed": self._failed,
                    "served": dict(self._served), "retired": list(self._retired),
                    "attempts": self._repins}


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

    Not a doctest: it needs a deployed runtime (see tests/scheduler/test_adaptive.py).
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
