"""Confidence bounds and exact tests on exit losses, the evidence calibration rests on.

* :func:`upper_bound`, :func:`lower_bound`: a Bernoulli rate's Clopper-Pearson (exact
  binomial) or Hoeffding bounds, for the harm and disagreement risks.
* :func:`net_p_value`, :func:`net_upper_bound`: the net loss (harm minus help, -1/0/1 per
  sample) by Berger and Boos's exact unconditional test on the trinomial harm and help
  counts; :func:`net_union_bound` is the looser union of two Clopper-Pearson bounds.

The procedures that use them are in :mod:`policies.gating.calibrate`; the certificate over a
window of inputs is in :mod:`policies.gating.window`.
"""
from __future__ import annotations

import math

import numpy as np

from graphs.errors import UnknownNameError

from ..errors import PolicyError

__all__ = ["CalibrationError", "BOUNDS", "RISKS", "upper_bound", "lower_bound", "net_p_value", "net_upper_bound",
           "net_union_bound"]

# "clopper-pearson-union": Clopper-Pearson, the net risk by the union bound (the earlier method)
BOUNDS = ("clopper-pearson", "clopper-pearson-union", "hoeffding")
RISKS = ("harm", "disagreement", "net")


class CalibrationError(PolicyError):
    """Calibration was asked something impossible (budget or delta out of range, bad shapes),
    or, with ``strict=True``, the budget cannot be certified with the data given.

    Example:
        >>> upper_bound(0, 100, 1.5)
        Traceback (most recent call last):
        ...
        policies.gating.bounds.CalibrationError: delta must be in the open interval (0, 1); got 1.5
    """


def _check_unit(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise CalibrationError(f"{name} must be in the open interval (0, 1); got {value!r}")


def _check_rate(n: int, delta: float, method: str) -> None:
    _check_unit("delta", delta)
    if method not in BOUNDS:
        raise UnknownNameError("bound", method, BOUNDS)
    if n <= 0:
        raise CalibrationError(f"need at least one calibration sample; got n={n}")


def upper_bound(losses: int, n: int, delta: float, method: str = "clopper-pearson") -> float:
    """A ``1 - delta`` upper confidence bound on a Bernoulli rate from ``losses`` out of ``n``.

    Example:
        >>> round(upper_bound(0, 100, 0.05), 4)  # the "rule of three": about 3/n
        0.0295
        >>> round(upper_bound(0, 100, 0.05, "hoeffding"), 4)
        0.1224
    """
    _check_rate(n, delta, method)
    if method == "hoeffding":
        return min(1.0, losses / n + math.sqrt(math.log(1 / delta) / (2 * n)))
    if losses >= n:
        return 1.0
    from scipy.stats import beta  # imported here: scipy.stats is slow to import
    return float(beta.ppf(1 - delta, losses + 1, n - losses))


def lower_bound(count: int, n: int, delta: float, method: str = "clopper-pearson") -> float:
    """A ``1 - delta`` lower confidence bound on a Bernoulli rate from ``count`` out of ``n``.

    Example:
        >>> lower_bound(0, 100, 0.05), round(lower_bound(50, 100, 0.05), 3)
        (0.0, 0.414)
    """
    _check_rate(n, delta, method)
    if method == "hoeffding":
        return max(0.0, count / n - math.sqrt(math.log(1 / delta) / (2 * n)))
    if count <= 0:
        return 0.0
    from scipy.stats import beta
    return float(beta.ppf(delta, count, n - count + 1))


def net_union_bound(harm: int, help_: int, n: int, delta: float, method: str = "clopper-pearson") -> float:
    """A ``1 - delta`` upper bound on the net loss rate (harm minus help) from counts, by a
    union bound: the harm's upper bound minus the help's lower bound, each at level
    ``delta / 2``. Valid, but looser than :func:`net_upper_bound`.

    Example:
        >>> u = net_union_bound(10, 30, 1000, 0.1)
        >>> -0.02 < u < 0.0  # 1 % harm, 3 % help: a certified gain
        True
    """
    return upper_bound(harm, n, delta / 2, method) - lower_bound(help_, n, delta / 2, method)


def _check_counts(harm: int, help_: int, n: int) -> None:
    if n <= 0:
        raise CalibrationError(f"need at least one calibration sample; got n={n}")
    if harm < 0 or help_ < 0 or harm + help_ > n:
        raise CalibrationError(f"harm {harm} and help {help_} must be counts >= 0 with harm + help <= n={n}")


def _net_tail(t: int, n: int, alpha: float, psi: np.ndarray) -> np.ndarray:
    """``P(harm - help <= t)`` out of ``n`` at each discordance ``psi`` (harm + help rate),
    the net rate as low as the null allows: ``max(alpha, -psi)``."""
    from scipy.special import bdtr, gammaln

    psi = np.clip(psi, 1e-300, 1.0)[:, None]
    theta = np.maximum(alpha, -psi)
    r = np.clip((psi + theta) / (2 * psi), 0.0, 1.0)  # P(harm | discordant)
    sd = np.sqrt(n * psi * (1 - psi))
    lo = int(max(0, np.floor((n * psi - 12 * sd).min()) - 10))
    hi = int(min(n, np.ceil((n * psi + 12 * sd).max()) + 10))
    d = np.arange(lo, hi + 1)[None, :]  # discordant counts carrying all but ~1e-30 of the mass
    with np.errstate(divide="ignore", invalid="ignore"):
        logpmf = (gammaln(n + 1) - gammaln(d + 1) - gammaln(n - d + 1) + d * np.log(psi)
                  + (n - d) * np.log1p(-np.minimum(psi, 1 - 1e-16)))
    logpmf = np.where(psi >= 1.0, np.where(d == n, 0.0, -np.inf), logpmf)
    k = np.floor((t + d) / 2)  # harm - help <= t  <=>  harm <= (t + d) / 2
    cdf = np.where(k < 0, 0.0, np.where(k >= d, 1.0, bdtr(np.clip(k, 0, None).astype(np.int64), d, r)))
    return (np.exp(logpmf) * cdf).sum(1)


def _discordance_upper(d: int, n: int, gamma: float) -> float:
    """The ``1 - gamma`` Clopper-Pearson upper bound on the discordance from ``d`` of ``n``:
    the nuisance set Berger and Boos's tests maximise over."""
    if d >= n:
        return 1.0
    from scipy.stats import beta
    return float(beta.ppf(1 - gamma, d + 1, n - d))


def net_p_value(harm: int, help_: int, n: int, budget: float, delta: float = 0.1, grid: int = 24) -> float:
    """The exact unconditional p-value of "net loss rate > ``budget``" from ``harm`` and
    ``help_`` out of ``n`` samples (small: evidence the net loss is within the budget).

    The counts are one trinomial draw; the statistic is ``harm - help``. Its lower tail at
    the null's boundary depends on the unknown discordance ``psi`` (the rate of harm or
    help), so, after Berger and Boos, the tail is maximised over a ``1 - gamma``
    Clopper-Pearson upper confidence set for ``psi`` (``gamma = delta / 100``) and
    ``gamma`` is added: a valid p-value at every level. The maximum is taken over ``grid``
    points of the set, its ends included (the tail grows with ``psi``, so it is reached at
    the upper end; tests check this).

    Example:
        >>> round(net_p_value(60, 40, 5000, 0.0044), 3)  # net 0.4 %: not below 0.44 %
        0.45
        >>> net_p_value(20, 20, 5000, 0.0044) < 0.1
        True
    """
    _check_counts(harm, help_, n)
    _check_unit("delta", delta)
    gamma = delta / 100
    psi_u = _discordance_upper(harm + help_, n, gamma)
    lo = max(budget, 0.0)  # harm - help = budget needs a discordance of at least budget
    if psi_u <= lo:  # the null is outside the confidence set: excluded with error <= gamma
        return gamma
    tail = _net_tail(harm - help_, n, float(budget), np.linspace(lo, psi_u, max(2, grid)))
    return float(min(1.0, tail.max() + gamma))


def net_upper_bound(harm: int, help_: int, n: int, delta: float, method: str = "clopper-pearson") -> float:
    """A ``1 - delta`` upper bound on the net loss rate (harm minus help) from counts.

    ``"clopper-pearson"``: the exact test's bound, the lowest rate at which
    :func:`net_p_value` rejects (bisection to 1e-7); ``"clopper-pearson-union"``:
    :func:`net_union_bound`; ``"hoeffding"``: for losses in [-1, 1]. Each holds with
    probability at least ``1 - delta``.

    Example:
        >>> u = net_upper_bound(10, 30, 1000, 0.1)
        >>> -0.02 < u < net_union_bound(10, 30, 1000, 0.1) < 0.0  # 1 % harm, 3 % help: a gain
        True
    """
    _check_unit("delta", delta)
    if method not in BOUNDS:
        raise UnknownNameError("bound", method, BOUNDS)
    _check_counts(harm, help_, n)
    if method == "hoeffding":  # losses in [-1, 1]: range 2
        return min(1.0, (harm - help_) / n + 2 * math.sqrt(math.log(1 / delta) / (2 * n)))
    if method == "clopper-pearson-union":
        return net_union_bound(harm, help_, n, delta)
    lo, hi = -1.0, 1.0
    while hi - lo > 1e-7:
        mid = (lo + hi) / 2
        if net_p_value(harm, help_, n, mid, delta) <= delta:
            hi = mid
        else:
            lo = mid
    return hi
