"""A certificate over a window of new inputs: the loss *counted* over the next ``m`` inputs
stays within the budget with probability at least ``1 - delta`` (the population
certificate bounds only its mean; a finite window adds its own sampling noise).

:func:`window_test` is what ``calibrate_*(..., window=m)`` tests each threshold with;
:func:`window_levels` says how ``delta`` is spent.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from graphs.errors import UnknownNameError

from .bounds import RISKS, CalibrationError, _check_counts, _check_unit, _discordance_upper, _net_tail, upper_bound

__all__ = ["WINDOW_LEVELS", "window_levels", "window_budget", "window_test"]


WINDOW_LEVELS = 16  # exceedance levels of a window certificate (see window_levels)


@functools.lru_cache(maxsize=256)
def window_levels(delta: float, n: int, window: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The levels ``u`` of a window certificate and the level ``rho`` each is tested at.

    Over a window of new inputs the loss exceeds the budget with some probability ``g(t)``
    for threshold ``t`` (the window's own sampling noise). A threshold passes when, for
    every ``l``, "``g(t) > u[l]``" is rejected at level ``rho[l]``. Fixed-sequence testing
    then gives ``P(window loss > budget) = E[g(returned t)] <= u[0] + sum_l (u[l+1] - u[l])
    * rho[l]`` (``u[-1]`` followed by 1): the first threshold in the sequence with
    ``g > u[l]`` passes with probability at most ``rho[l]``, and the returned one has
    ``g > u[l]`` only if that one passed. ``u`` are ``WINDOW_LEVELS`` normal quantiles
    evenly spaced from ``delta / 10`` to 0.75; ``rho[l] = Phi(-c - r z(u[l]))``, the shape
    a normal model gives (``r = sqrt(n / window)``, the window's noise against the
    calibration data's), with ``c`` set by bisection so that the bound is exactly at most
    ``delta``. The bound itself is exact; only the allocation uses the normal shape. It
    depends on ``delta``, ``n`` and ``window``, never on the data.

    Example:
        >>> u, rho = window_levels(0.1, 5000, 5000)
        >>> len(u), u[0] + sum((b - a) * p for a, b, p in zip(u, u[1:] + (1.0,), rho)) <= 0.1
        (16, True)
    """
    _check_unit("delta", delta)
    _check_window(window)
    if n <= 0:
        raise CalibrationError(f"need at least one calibration sample; got n={n}")
    from scipy.stats import norm

    u = norm.cdf(np.linspace(norm.ppf(delta / 10), norm.ppf(0.75), WINDOW_LEVELS))
    z, r, width = norm.ppf(u), math.sqrt(n / window), np.diff(np.append(u, 1.0))

    def bound(c: float) -> float:
        return float(u[0] + (width * norm.cdf(-c - r * z)).sum())

    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if bound(mid) <= delta else (mid, hi)
    rho = norm.cdf(-hi - r * z)
    return tuple(float(v) for v in u), tuple(float(v) for v in rho)


def _check_window(window, method: str = "clopper-pearson") -> None:
    if window is None:
        return
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise CalibrationError(f"window must be a positive whole number of inputs, or None for the "
                               f"population risk; got {window!r}")
    if method != "clopper-pearson":
        raise CalibrationError(f"a window certificate is built on the exact tests; method must be "
                               f"'clopper-pearson' with window={window}, got {method!r}")


def _allowed(window: int, budget: float) -> int:
    """The most losses a window of ``window`` inputs may count within ``budget``."""
    return math.floor(budget * window + 1e-9)


@functools.lru_cache(maxsize=1 << 14)
def window_budget(window: int, budget: float, u: float) -> float:
    """The highest 0/1 loss rate at which the loss counted over ``window`` new inputs exceeds
    ``budget`` with probability at most ``u`` (binomial; bisection, rounded down).

    Example:
        >>> b = window_budget(5000, 0.005, 0.05)
        >>> 0.003 < b < 0.005  # the window's own noise takes part of the budget
        True
    """
    from scipy.special import bdtrc

    t = _allowed(window, budget)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bdtrc(t, window, mid) <= u else (lo, mid)
    return lo


# discordances the net window boundary is computed at (geometric, 0.35 % apart), and its cache
_PSI_GRID = np.geomspace(1e-6, 1.0, 4001)
_WINDOW_MEANS: dict = {}


def _window_means(psi: np.ndarray, window: int, budget: float, u: np.ndarray) -> np.ndarray:
    """Net rates at or below the boundary ``mu_u(psi)`` of "the net loss over ``window``
    inputs exceeds ``budget`` with probability more than ``u``" at discordance ``psi`` (so
    the null there is ``mu > mu_u``): a normal guess, lowered until the exact tail is at
    most ``u`` (every returned value is checked); ``inf`` where even all-harm stays within."""
    from scipy.stats import norm

    t = _allowed(window, budget)
    within = 1.0 - u
    out = np.full(psi.shape, np.inf)
    some = _net_tail(t, window, psi[:, None], psi) < within  # all-harm can exceed: a null exists
    if not some.any():
        return out
    p, w = psi[some], within[some]
    step = np.sqrt(p / window)
    mu = np.clip((t + 0.5) / window - norm.ppf(w) * step, -p, p)
    ok = np.zeros(p.shape, dtype=bool)
    for _ in range(200):
        ok = _net_tail(t, window, mu[:, None], p) >= w
        if ok.all():
            break
        mu = np.where(ok, mu, np.maximum(mu - 0.25 * step, -p))
    mu = np.where(ok, mu, -p)  # all help never exceeds the budget
    out[some] = mu
    return out


def _cached_window_means(idx: np.ndarray, u: np.ndarray, window: int, budget: float) -> np.ndarray:
    """:func:`_window_means` at ``_PSI_GRID[idx]``, computed once per point and level."""
    keys = [(window, budget, float(v), int(i)) for v, i in zip(u, idx)]
    miss = [j for j, key in enumerate(keys) if key not in _WINDOW_MEANS]
    if miss:
        if len(_WINDOW_MEANS) > 1 << 20:
            _WINDOW_MEANS.clear()
        fresh = _window_means(_PSI_GRID[idx[miss]], window, budget, u[miss])
        _WINDOW_MEANS.update((keys[j], float(v)) for j, v in zip(miss, fresh))
    return np.array([_WINDOW_MEANS[key] for key in keys])


def window_test(harm: int, help_: int, n: int, budget: float, window: int, delta: float = 0.1,
                kind: str = "net", grid: int = 8) -> bool:
    """Whether ``harm`` and ``help_`` out of ``n`` calibration samples certify that the loss
    counted over ``window`` new inputs (drawn independently from the same distribution)
    exceeds ``budget`` with probability at most ``delta``.

    Each level of :func:`window_levels` is a composite null, "``P(window loss > budget) >
    u``": for the harm (or disagreement) rate, a rate above :func:`window_budget`, tested by
    Clopper-Pearson; for the net loss, the net rates above the boundary ``mu_u(psi)`` at
    each discordance ``psi``, tested as :func:`net_p_value` does (the tail of harm minus
    help at the boundary maximised over ``grid`` points of a ``1 - rho/100``
    Clopper-Pearson set for ``psi``, plus ``rho/100``).

    Example:
        >>> window_test(0, 0, 5000, 0.0044, window=5000)  # no loss at all
        True
        >>> from policies.gating.bounds import net_p_value
        >>> net_p_value(30, 20, 5000, 0.0044) <= 0.1, window_test(30, 20, 5000, 0.0044, 5000)
        (True, False)
    """
    _check_counts(harm, help_, n)
    _check_unit("delta", delta)
    _check_window(window)
    if window is None:
        raise CalibrationError("window_test needs a window; use net_p_value for the population risk")
    if kind not in RISKS:
        raise UnknownNameError("risk", kind, RISKS)
    us, rhos = window_levels(float(delta), int(n), int(window))
    if min(rhos) <= 0.0:  # a level tested at 0 can never be rejected
        return False
    if kind != "net":
        return all(upper_bound(harm, n, rho) <= window_budget(window, float(budget), u) for u, rho in zip(us, rhos))
    d, g = harm + help_, max(2, grid)
    pts, uu, rr = [], [], []
    for u, rho in zip(us, rhos):
        # the null at level u needs a discordance above the rate at which even all-harm windows
        # exceed the budget with probability u (the tail grows with the net rate)
        lo = window_budget(window, float(budget), u)
        psi_u = _discordance_upper(d, n, rho / 100)
        if psi_u > lo:  # else the null is outside the confidence set (excluded with error <= rho / 100)
            pts.append(np.linspace(lo, psi_u, g))
            uu.append(np.full(g, u))
            rr.append(np.full(g, rho))
    if not pts:
        return True
    U, R = np.concatenate(uu), np.concatenate(rr)
    # each point rounded up to a fixed geometric grid: the maximum is then over a slightly wider
    # set (still containing the confidence set), and the boundaries there are cached across calls
    idx = np.minimum(np.searchsorted(_PSI_GRID, np.concatenate(pts)), len(_PSI_GRID) - 1)
    P = _PSI_GRID[idx]
    mu = _cached_window_means(idx, U, window, float(budget))
    null = np.isfinite(mu)
    if not null.any():
        return True
    tail = _net_tail(harm - help_, n, mu[null][:, None], P[null])
    return bool((tail + R[null] / 100 <= R[null]).all())
