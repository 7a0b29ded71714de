"""Drift detection: does a device (or any key) *stay* slower or faster than the cost model
predicts?

:class:`DriftDetector` is fed one ``measured / predicted`` ratio at a time per key (a
device, or a ``(device, op kind)`` pair) and raises a :class:`DriftAlarm` when the ratio
stays off beyond a relative ``threshold``. It is a two-sided CUSUM test on the log ratio
(Page, "Continuous inspection schemes", Biometrika 41, 1954; the Page-Hinkley form used for
concept drift, Gama et al., "A survey on concept drift adaptation", ACM Computing Surveys
46(4), 2014). See the class docstring for the parameters and the guarantees they give.
The :class:`scheduler.replan.ReplanController` feeds it per device and re-plans on its
alarms.

Example:
    >>> det = DriftDetector(threshold=0.25)
    >>> [det.observe("npu", 1.0, 1.05) for _ in range(20)].count(None)   # noise: no alarm
    20
    >>> det.observe("npu", 1.0, 3.0), det.observe("npu", 1.0, 3.0)      # 3x slower: 2 samples
    (None, None)
    >>> det.observe("npu", 1.0, 3.0).direction                          # ... the 3rd fires
    'slower'
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Hashable

from .adaptive_checks import _count, _number

__all__ = ["DriftAlarm", "DriftDetector"]


@dataclass(frozen=True)
class DriftAlarm:
    """A sustained change of one key's ``measured / predicted`` ratio.

    Example:
        >>> d = DriftDetector(threshold=0.25)
        >>> a = [d.observe("gpu", 1.0, 3.0, now=10.0) for _ in range(3)][-1]
        >>> a.key, a.direction, round(a.ratio, 2), a.samples, a.run, a.time
        ('gpu', 'slower', 3.0, 3, 3, 10.0)
    """

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
