"""The :class:`scheduler.Runtime`'s adaptive methods (plan versions, re-planning, fault and
slowdown injection), mixed into the Runtime; the loop behind them is
:class:`scheduler.adaptive.AdaptiveLoop` (``self._adaptive``).
"""
from __future__ import annotations

from typing import Any

from .errors import RuntimeConfigError

__all__ = ["RuntimeAdaptive"]


class RuntimeAdaptive:
    """Adaptive re-planning as seen from the Runtime (everything is inert unless
    ``Runtime(..., adaptive=True)``).

    Example:
        >>> from scheduler.runtime import Runtime
        >>> issubclass(Runtime, RuntimeAdaptive), callable(Runtime.replan)
        (True, True)
    """

    # --------------------------------------------------------------- adaptive
    def _need_adaptive(self, what: str):
        if self._adaptive is None:
            raise RuntimeConfigError(f"{what} needs an adaptive runtime: build it with "
                                     f"Runtime(..., adaptive=True)")
        return self._adaptive

    @property
    def plan_version(self) -> int:
        """The current plan version (0: the initial plan; always 0 unless adaptive)."""
        return 0 if self._adaptive is None else self._adaptive.version

    @property
    def versions(self) -> tuple:
        """Every plan version made (:class:`scheduler.adaptive.PlanVersion`), oldest first;
        empty unless adaptive."""
        return () if self._adaptive is None else self._adaptive.controller.versions

    @property
    def controller(self):
        """The :class:`scheduler.adaptive.ReplanController` (None unless adaptive)."""
        return None if self._adaptive is None else self._adaptive.controller

    def replan(self, reason: str = "requested"):
        """Re-plan now with the policy on the calibrated model, excluding failed devices,
        and deploy the new version if the placement changed (returns it, else None)."""
        return self._need_adaptive("replan()").replan(reason)

    def adaptive_events(self) -> list:
        """Drift alarms, failures, recoveries, re-plans, deployments and retirements
        (:class:`scheduler.adaptive.AdaptiveEvent`), oldest first; empty unless adaptive."""
        return [] if self._adaptive is None else self._adaptive.controller.events()

    def set_slowdown(self, device: str, factor: float = 1.0, *, schedule: Any = None,
                     origin: float | None = None) -> None:
        """Simulation knob: make simulated ``device`` ``factor`` times slower from now on, or
        follow ``schedule`` (``[(seconds after origin, factor), ...]``, ``origin`` a wall
        clock time, default now); see :meth:`executors.simulated.SimulatedExecutor.set_slowdown`.
        The actor takes it at once (its ``control`` group), even while partitions run."""
        import ray

        self.cluster.check(device)
        actor = self._actors.get(device)
        if actor is None:
            raise RuntimeConfigError(f"device {device!r} runs no executor actor (the plan does not "
                                     f"use it); devices with actors: {', '.join(sorted(self._actors))}")
        ray.get(actor.set_slowdown.remote(factor, schedule=schedule, origin=origin))

    def inject_failure(self, device: str, mode: str = "kill", seconds: float | None = None) -> None:
        """Fault injection (adaptive runtimes): ``"kill"`` ``device``'s actor for good (the
        device stays unavailable for ``seconds``, None: for ever), ``"crash"`` it (Ray
        restarts it), or make it ``"hang"`` (stop answering) for ``seconds``."""
        self._need_adaptive("inject_failure()").inject_failure(device, mode, seconds)

