"""Conservative threshold calibration for early exits (Learn-then-Test fixed-sequence testing).

The quantity controlled is a per-sample 0/1 *loss of exiting*, averaged over *all* samples
(not only the exited ones), so that it bounds the accuracy lost against the full model:

* ``"harm"`` (needs labels): the sample exits and the exit is wrong where the full model is
  right. The gated accuracy is at least the full accuracy minus the harm rate.
* ``"disagreement"`` (label-free): the sample exits and the exit's prediction differs from
  the full model's. It bounds the harm rate from above.

A target "accuracy >= r x full accuracy" becomes the budget ``(1 - r) * full_accuracy``
(:func:`budget_for_ratio`). Candidate thresholds are tested from the most conservative
(highest) down; each test rejects "risk > budget" when an upper confidence bound at level
``delta`` (Clopper-Pearson exact binomial, or Hoeffding) is within the budget, and the
sequence stops at the first candidate that fails. Fixed-sequence testing controls the
family-wise error, so ``P(risk of the chosen threshold > budget) <= delta`` on new data from
the same distribution, whatever the shape of the risk curve.

References:
    Angelopoulos, Bates, Candes, Jordan and Lei, "Learn then Test: Calibrating Predictive
    Algorithms to Achieve Risk Control", arXiv:2110.01052, 2021.
    Clopper and Pearson, "The use of confidence or fiducial limits illustrated in the case of
    the binomial", Biometrika 26(4), 1934.
    Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 1963.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from graphs.errors import UnknownNameError

from ..errors import PolicyError

__all__ = ["CalibrationError", "Calibration", "BOUNDS", "RISKS", "upper_bound", "budget_for_ratio",
           "exit_losses", "calibrate_threshold", "calibrate_cascade", "cascade_route"]

BOUNDS = ("clopper-pearson", "hoeffding")
RISKS = ("harm", "disagreement")


class CalibrationError(PolicyError):
    """Calibration was asked something impossible (budget or delta out of range, bad shapes)."""


def _check_unit(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise CalibrationError(f"{name} must be in the open interval (0, 1); got {value!r}")


def upper_bound(losses: int, n: int, delta: float, method: str = "clopper-pearson") -> float:
    """A ``1 - delta`` upper confidence bound on a Bernoulli rate from ``losses`` out of ``n``.

    Example:
        >>> round(upper_bound(0, 100, 0.05), 4)  # the "rule of three": about 3/n
        0.0295
        >>> round(upper_bound(0, 100, 0.05, "hoeffding"), 4)
        0.1224
    """
    _check_unit("delta", delta)
    if method not in BOUNDS:
        raise UnknownNameError("bound", method, BOUNDS)
    if n <= 0:
        raise CalibrationError(f"need at least one calibration sample; got n={n}")
    if method == "hoeffding":
        return min(1.0, losses / n + math.sqrt(math.log(1 / delta) / (2 * n)))
    if losses >= n:
        return 1.0
    from scipy.stats import beta  # imported here: scipy.stats is slow to import
    return float(beta.ppf(1 - delta, losses + 1, n - losses))


def budget_for_ratio(full_accuracy: float, ratio: float) -> float:
    """The absolute loss budget for "accuracy >= ratio x full accuracy".

    Example:
        >>> round(budget_for_ratio(0.9, 0.995), 6)
        0.0045
    """
    _check_unit("ratio", ratio)
    if not 0.0 < full_accuracy <= 1.0:
        raise CalibrationError(f"full_accuracy must be in (0, 1]; got {full_accuracy!r}")
    return (1.0 - ratio) * full_accuracy


def exit_losses(exit_pred: torch.Tensor, final_pred: torch.Tensor, labels: torch.Tensor | None = None,
                risk: str = "harm") -> torch.Tensor:
    """The 0/1 loss each sample would incur if it exited (see module docstring).

    Example:
        >>> e, f, y = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 1]), torch.tensor([0, 2, 1, 3])
        >>> exit_losses(e, f, y).tolist(), exit_losses(e, f, risk="disagreement").tolist()
        ([0, 1, 0, 0], [0, 1, 0, 1])
    """
    if risk not in RISKS:
        raise UnknownNameError("risk", risk, RISKS)
    if exit_pred.shape != final_pred.shape:
        raise CalibrationError(f"exit_pred shape {tuple(exit_pred.shape)} != final_pred shape "
                               f"{tuple(final_pred.shape)}")
    if risk == "disagreement":
        return (exit_pred != final_pred).long()
    if labels is None:
        raise CalibrationError("risk 'harm' needs labels; use risk='disagreement' for unlabeled data")
    return ((final_pred == labels) & (exit_pred != labels)).long()


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and the evidence for it (on the calibration data)."""

    threshold: float  # exit when score >= threshold (inf: never exit)
    budget: float  # the loss budget (absolute rate over all samples)
    delta: float  # allowed probability that the true risk exceeds the budget
    method: str  # the upper bound used ("clopper-pearson" or "hoeffding")
    n: int  # calibration samples
    risk: float  # empirical risk at the threshold on the calibration data
    ucb: float  # its upper confidence bound (<= budget unless threshold is inf)
    exit_rate: float  # fraction of calibration samples that exit (at any exit)


def _candidates(scores: np.ndarray, max_candidates: int) -> np.ndarray:
    u = np.unique(scores[np.isfinite(scores)])
    if len(u) > max_candidates:
        u = np.unique(np.quantile(u, np.linspace(0, 1, max_candidates)))
    return u[::-1]  # most conservative (highest) first


def _fixed_sequence(thresholds: np.ndarray, route, n: int, budget: float, delta: float,
                    method: str) -> Calibration:
    best = Calibration(math.inf, budget, delta, method, n, 0.0, 0.0, 0.0)
    for t in thresholds:
        loss, exited = route(float(t))
        k = int(loss.sum())
        ucb = upper_bound(k, n, delta, method)
        if ucb > budget:
            break
        best = Calibration(float(t), budget, delta, method, n, k / n, ucb, float(exited.mean()))
    return best


def calibrate_threshold(scores: torch.Tensor, losses: torch.Tensor, budget: float, delta: float = 0.1,
                        method: str = "clopper-pearson", max_candidates: int = 400) -> Calibration:
    """The lowest threshold (most exits) whose risk is certified within ``budget`` for one exit.

    ``scores[i]`` is the gate's score of sample ``i`` (exit when ``>= threshold``);
    ``losses[i]`` is 1 when exiting sample ``i`` would cost accuracy (:func:`exit_losses`).

    Example:
        >>> s = torch.linspace(0, 1, 1000)
        >>> l = (s < 0.3).long()  # low-score samples are the harmful ones
        >>> c = calibrate_threshold(s, l, budget=0.05, delta=0.1)
        >>> c.ucb <= 0.05, c.risk <= 0.05, 0.2 < c.threshold < 0.3
        (True, True, True)
    """
    return calibrate_cascade([scores], [losses], budget, delta, method, max_candidates)


def cascade_route(scores: Sequence[torch.Tensor], threshold: float) -> torch.Tensor:
    """Index of the first exit whose score is ``>= threshold`` per sample (``len(scores)``: none).

    Example:
        >>> cascade_route([torch.tensor([0.9, 0.1, 0.2]), torch.tensor([0.0, 0.8, 0.3])], 0.5).tolist()
        [0, 1, 2]
    """
    k = len(scores)
    s = torch.stack([torch.as_tensor(x, dtype=torch.float64).detach() for x in scores])  # (k, n)
    passed = s >= threshold
    first = torch.where(passed.any(0), passed.double().argmax(0), torch.full_like(passed[0], k, dtype=torch.long))
    return first.long()


def calibrate_cascade(scores: Sequence[torch.Tensor], losses: Sequence[torch.Tensor], budget: float,
                      delta: float = 0.1, method: str = "clopper-pearson", max_candidates: int = 400
                      ) -> Calibration:
    """One shared threshold for a cascade of exits, certified by fixed-sequence testing.

    A sample leaves at the first exit whose score reaches the threshold
    (:func:`cascade_route`) and then incurs that exit's loss.

    Example:
        >>> s1, s2 = torch.rand(2000, generator=torch.Generator().manual_seed(0)), torch.ones(2000)
        >>> c = calibrate_cascade([s1, s2], [(s1 < 0.5).long(), torch.zeros(2000, dtype=torch.long)], 0.02)
        >>> c.ucb <= 0.02 and c.exit_rate == 1.0
        True
    """
    _check_unit("budget", budget)
    _check_unit("delta", delta)
    if method not in BOUNDS:
        raise UnknownNameError("bound", method, BOUNDS)
    if len(scores) == 0 or len(scores) != len(losses):
        raise CalibrationError(f"need one loss vector per exit's scores; got {len(scores)} score and "
                               f"{len(losses)} loss vectors")
    n = int(scores[0].shape[0])
    for s, l in zip(scores, losses):
        if s.dim() != 1 or s.shape[0] != n or l.shape != s.shape:
            raise CalibrationError(f"scores and losses must all be 1-D of length {n}; got "
                                   f"{tuple(s.shape)} and {tuple(l.shape)}")
    L = torch.stack([torch.as_tensor(l, dtype=torch.long) for l in losses] +
                    [torch.zeros(n, dtype=torch.long)])  # no loss when nothing exits

    def route(t: float):
        first = cascade_route(scores, t)
        return L.gather(0, first[None]).squeeze(0).numpy(), (first < len(scores)).numpy()

    allscores = torch.cat([torch.as_tensor(s, dtype=torch.float64).detach() for s in scores]).numpy()
    return _fixed_sequence(_candidates(allscores, max_candidates), route, n, budget, delta, method)
