"""Conservative threshold calibration for early exits (Learn-then-Test fixed-sequence testing).

The quantity controlled is a per-sample 0/1 *loss of exiting*, averaged over *all* samples
(not only the exited ones), so that it bounds the accuracy lost against the full model:

* ``"harm"`` (needs labels): the sample exits and the exit is wrong where the full model is
  right. The gated accuracy is at least the full accuracy minus the harm rate.
* ``"disagreement"`` (label-free): the sample exits and the exit's prediction differs from
  the full model's. It bounds the harm rate from above.
* ``"net"`` (needs labels): harm minus help (the sample exits and the exit is right where
  the full model is wrong), -1/0/1 per sample. Its mean is exactly the accuracy lost
  against the full model, the quantity users state as their target; certifying it rather
  than harm alone credits the samples an exit gets right that the full model gets wrong,
  which matters when deeper exits beat the last layer. It is tested exactly
  (:func:`net_p_value`, :func:`net_upper_bound`): the harm and help counts are one
  trinomial draw, and Berger and Boos's exact unconditional test of "net loss > budget"
  maximises the tail probability of harm minus help over a confidence set for the nuisance
  parameter (the discordance: the rate at which exit and full model differ in
  correctness). A union of the harm's upper and the help's lower Clopper-Pearson bounds at
  ``delta / 2`` each (:func:`net_union_bound`, the earlier method) is also valid, but adds
  two bounds' slack: 1.4 to 1.7 times the exact test's at ``delta = 0.1`` on 5000 samples
  with 40 to 380 discordant ones.

Per-exit thresholds (:func:`calibrate_exits`) follow Learn-then-Test's recipe for a
multi-dimensional parameter: one part of the calibration data *learns* an ordering of
threshold vectors (a greedy path from "nothing exits" that lowers, at each step, the exit
whose next threshold saves the most compute per unit of added risk; for the net loss the
risk counted is the mean plus the margin the test will demand at the vector's discordance,
so that a step whose harms and helps cancel in the mean but add noise the test must cover
is not taken as free), and the rest *tests*
along that fixed sequence. The ordering never sees the test part, so the fixed-sequence
guarantee holds for the chosen vector. The learning part also chooses *which*
sequence is tested: the greedy path or one threshold shared by every exit (``sequences``),
whichever certifies the cheaper vector on the learning data. The greedy path is myopic and
its steps follow small differences in the learning data; on some gates (a learned gate per
exit of the Fashion-MNIST CNN) the shared threshold carries over to new data better.

The guarantee is on the *mean* loss of new data. The loss counted over a finite window of
``m`` new inputs adds its own sampling noise, so it exceeds the budget more often than
``delta`` when the certificate is tight. ``window=m`` certifies that count instead:
``P(loss over the next m inputs > budget) <= delta`` (:func:`window_test`,
:func:`window_levels`): each threshold is tested against several levels of the window's
exceedance probability, and the fixed-sequence argument bounds the expected exceedance of
the returned threshold by ``delta``.

A target "accuracy >= r x full accuracy" becomes the budget ``(1 - r) * full_accuracy``
(:func:`budget_for_ratio`). Candidate thresholds are tested from the most conservative
(highest) down; each test rejects "risk > budget" when an upper confidence bound at level
``delta`` (Clopper-Pearson exact binomial, or Hoeffding) is within the budget (for the net
risk with Clopper-Pearson: when the exact test's p-value is at most ``delta``), and the
sequence stops at the first candidate that fails. Fixed-sequence testing controls the
family-wise error, so ``P(risk of the chosen threshold > budget) <= delta`` on new data from
the same distribution, whatever the shape of the risk curve.

The bounds and exact tests are in :mod:`policies.gating.bounds`, the window certificate in
:mod:`policies.gating.window`; this module holds the procedures and re-exports both.

References:
    Angelopoulos, Bates, Candes, Jordan and Lei, "Learn then Test: Calibrating Predictive
    Algorithms to Achieve Risk Control", arXiv:2110.01052, 2021.
    Clopper and Pearson, "The use of confidence or fiducial limits illustrated in the case of
    the binomial", Biometrika 26(4), 1934.
    Hoeffding, "Probability inequalities for sums of bounded random variables", JASA 1963.
    Berger and Boos, "P values maximised over a confidence set for the nuisance parameter",
    JASA 89(427), 1994.
    Sidik, "Exact unconditional tests for testing non-inferiority in matched-pairs
    design", Statistics in Medicine 22(2), 2003.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from graphs.errors import UnknownNameError

from .bounds import (BOUNDS, RISKS, CalibrationError, _check_unit, lower_bound, net_p_value, net_union_bound,
                     net_upper_bound, upper_bound)
from .window import WINDOW_LEVELS, _check_window, window_budget, window_levels, window_test

__all__ = ["CalibrationError", "CalibrationWarning", "Calibration", "BOUNDS", "RISKS", "upper_bound",
           "lower_bound", "net_p_value", "net_upper_bound", "net_union_bound", "budget_for_ratio", "exit_losses", "calibrate_threshold",
           "calibrate_cascade", "calibrate_exits", "cascade_route", "min_samples", "SEQUENCES",
           "window_test", "window_budget", "window_levels", "WINDOW_LEVELS"]

# calibrate_exits' candidate sequences: the greedy path of per-exit threshold vectors, and one
# threshold shared by every exit (highest first)
SEQUENCES = ("path", "shared")


class CalibrationWarning(UserWarning):
    """Nothing could be certified: the calibrated gate never exits (the message says why).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     c = calibrate_threshold(torch.rand(20), torch.zeros(20, dtype=torch.long), 0.01)
        >>> w[0].category.__name__, c.certified
        ('CalibrationWarning', False)
    """


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
    """The loss each sample would incur if it exited (see module docstring): 0/1 for
    ``"harm"`` and ``"disagreement"``; -1/0/1 for ``"net"`` (harm minus help: -1 where the
    exit is right and the full model wrong).

    Example:
        >>> e, f, y = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 1]), torch.tensor([0, 2, 1, 3])
        >>> exit_losses(e, f, y).tolist(), exit_losses(e, f, risk="disagreement").tolist()
        ([0, 1, 0, 0], [0, 1, 0, 1])
        >>> exit_losses(e, f, y, risk="net").tolist()
        [0, 1, 0, -1]
    """
    if risk not in RISKS:
        raise UnknownNameError("risk", risk, RISKS)
    if exit_pred.shape != final_pred.shape:
        raise CalibrationError(f"exit_pred shape {tuple(exit_pred.shape)} != final_pred shape "
                               f"{tuple(final_pred.shape)}")
    if risk == "disagreement":
        return (exit_pred != final_pred).long()
    if labels is None:
        raise CalibrationError(f"risk {risk!r} needs labels; use risk='disagreement' for unlabeled data")
    harm = ((final_pred == labels) & (exit_pred != labels)).long()
    if risk == "harm":
        return harm
    return harm - ((final_pred != labels) & (exit_pred == labels)).long()


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold (or one per exit) and the evidence for it (on the calibration data).

    Example:
        >>> c = calibrate_threshold(torch.linspace(0, 1, 1000), (torch.linspace(0, 1, 1000) < 0.3).long(), 0.05)
        >>> c.certified, c.kind, c.vector == (c.threshold,), c.ucb <= c.budget
        (True, 'harm', True, True)
    """

    threshold: float  # exit when score >= threshold (inf: never exit); per-exit: the first exit's
    budget: float  # the loss budget (absolute rate over all samples)
    delta: float  # allowed probability that the true risk exceeds the budget
    method: str  # the upper bound used ("clopper-pearson" or "hoeffding")
    n: int  # calibration samples the certificate rests on
    risk: float  # empirical risk at the threshold on the calibration data
    ucb: float  # its upper confidence bound (<= budget unless nothing is certified)
    exit_rate: float  # fraction of calibration samples that exit (at any exit)
    thresholds: tuple = ()  # per-exit thresholds (calibrate_exits), else ()
    kind: str = "harm"  # the risk certified: "harm", "disagreement" or "net"
    note: str = ""  # why nothing was certified, when nothing was
    sequence: str = ""  # calibrate_exits: the sequence tested ("path" or "shared"; see SEQUENCES)
    window: int | None = None  # certified over this many new inputs (None: the population risk)

    @property
    def certified(self) -> bool:
        """Whether any sample may exit (some threshold was certified)."""
        return any(math.isfinite(t) for t in (self.thresholds or (self.threshold,)))

    @property
    def vector(self) -> tuple:
        """The thresholds to route with: per exit if calibrated per exit, else the shared one."""
        return self.thresholds or (self.threshold,)


def min_samples(budget: float, delta: float, method: str = "clopper-pearson", kind: str = "harm",
                window: int | None = None) -> int:
    """The fewest calibration samples with which a zero-loss threshold is certified within
    ``budget`` for the risk ``kind`` (the net loss's exact test needs more: its null allows
    help to offset harm), over ``window`` new inputs if given.

    Example:
        >>> min_samples(0.005, 0.1), min_samples(0.005, 0.1, kind="net")
        (460, 753)
        >>> min_samples(0.005, 0.1, kind="net", window=5000) > 753  # the window's noise needs more
        True
    """
    _check_unit("budget", budget)
    _check_unit("delta", delta)
    if method not in BOUNDS:
        raise UnknownNameError("bound", method, BOUNDS)
    if kind not in RISKS:
        raise UnknownNameError("risk", kind, RISKS)
    _check_window(window, method)
    if window is None:
        if method == "hoeffding":
            return math.ceil(math.log(1 / delta) / ((0.5 if kind == "net" else 2) * budget ** 2))
        if kind != "net" or method == "clopper-pearson-union":
            return math.ceil(math.log(delta / (2 if kind == "net" else 1)) / math.log(1 - budget))
    # the exact net test and the window test: search for the fewest samples whose zero losses
    # pass (they pass from some n on: the test's margin shrinks as n grows), from a size that
    # certifies harm alone (a lower bound on both)
    lo, hi = 1, min_samples(budget, delta, method, "harm")
    while not _passes(0, 0, hi, budget, delta, method, kind, window):
        if hi > 10 ** 9:
            raise CalibrationError(f"no calibration size up to 1e9 certifies budget {budget} over a window of "
                                   f"{window} (delta {delta}); use a longer window or a larger budget")
        lo, hi = hi, 2 * hi
    while lo < hi:
        mid = (lo + hi) // 2
        if _passes(0, 0, mid, budget, delta, method, kind, window):
            hi = mid
        else:
            lo = mid + 1
    return hi


def _counts(loss: np.ndarray) -> tuple[int, int]:
    """``(harm, help)``: the losses above and below 0."""
    return int((loss > 0).sum()), int((loss < 0).sum())


def _bound(harm: int, help_: int, n: int, delta: float, method: str, kind: str) -> float:
    if kind != "net":
        return upper_bound(harm, n, delta, method)
    return net_upper_bound(harm, help_, n, delta, method)


def _passes(harm: int, help_: int, n: int, budget: float, delta: float, method: str, kind: str,
            window: int | None = None) -> bool:
    """Whether the counts reject "risk > budget" at level ``delta`` (``help_`` is 0 unless
    ``kind`` is ``"net"``; cheaper than the bound); with ``window``, whether
    :func:`window_test` certifies the loss over ``window`` new inputs."""
    if window is not None:
        return window_test(harm, help_, n, budget, window, delta, kind)
    if kind == "net" and method == "clopper-pearson":
        return net_p_value(harm, help_, n, budget, delta) <= delta
    return _bound(harm, help_, n, delta, method, kind) <= budget


def _net_margin(n: int, budget: float, delta: float, method: str, window: int | None = None):
    """``margin(psi)``: how far below the budget the net test on ``n`` samples needs a
    vector's mean loss when its discordance rate (harm plus help) is ``psi``.

    Measured on the test itself (:func:`_passes`, over ``window`` if given): at
    discordance counts ``d`` from half to 32 times ``budget * n``, the largest harm count
    ``h`` with ``(h, d - h)`` passing, found by bisection (passing is monotone in ``h`` at a
    fixed ``d``), gives ``margin = budget - (2h - d) / n``. Between those points the margin
    is interpolated in units of the loss's noise, ``sqrt(psi (1/n + 1/window))``, linearly in
    ``log psi``, and held at the end points' multiple outside them. At 5000 samples and
    budget 0.0044 (delta 0.1) the multiple falls from 3.3 to 1.4 across those points for the
    population test, and from 2.4 to 1.6 for a window of 5000 (Berger-Boos's maximum over the
    nuisance and the counts' discreteness make it larger than the normal quantile 1.28).

    Example:
        >>> margin = _net_margin(5000, 0.0044, 0.1, "clopper-pearson")
        >>> bool(margin(np.array([0.01, 0.04])).argmax() == 1)  # more discordance, more margin
        True
    """
    noise = math.sqrt(1.0 / n + (1.0 / window if window is not None else 0.0))
    counts = np.unique(np.clip(np.round(budget * n * 2.0 ** np.arange(-1, 6)), 1, n).astype(np.int64))
    log_psi, mult = [], []
    for d in counts.tolist():
        if not _passes(0, d, n, budget, delta, method, "net", window):
            rate = -d / n - 1.0 / n  # not even all-help passes: the test needs more than the whole range
        else:
            lo, hi = 0, d  # the largest harm count that passes
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if _passes(mid, d - mid, n, budget, delta, method, "net", window):
                    lo = mid
                else:
                    hi = mid - 1
            rate = (2 * lo - d) / n
        psi = d / n
        log_psi.append(math.log(psi))
        mult.append((budget - rate) / (math.sqrt(psi) * noise))

    def margin(psi: np.ndarray) -> np.ndarray:
        psi = np.asarray(psi, dtype=np.float64)
        m = np.interp(np.log(np.maximum(psi, 1e-12)), log_psi, mult)
        return m * np.sqrt(psi) * noise
    return margin


def _kind(losses: Sequence) -> str:
    return "net" if any(bool((torch.as_tensor(l) < 0).any()) for l in losses) else "harm"


def _candidates(scores: np.ndarray, max_candidates: int) -> np.ndarray:
    u = np.unique(scores[np.isfinite(scores)])
    if len(u) > max_candidates:
        u = np.unique(np.quantile(u, np.linspace(0, 1, max_candidates)))
    return u[::-1]  # most conservative (highest) first


def _uncertified(n: int, budget: float, delta: float, method: str, kind: str, first_ucb: float | None,
                 thresholds: tuple = (), window: int | None = None) -> Calibration:
    need = min_samples(budget, delta, method, kind, window)
    over = f" over a window of {window} inputs" if window is not None else ""
    if n < need:
        why = (f"not certified: with n={n} calibration samples even a threshold with zero losses is not "
               f"certified within the budget {budget:.4g}{over} (delta {delta}, {method}); at least {need} "
               "samples are needed")
    elif first_ucb is None:
        why = "not certified: no finite score to threshold"
    else:
        why = (f"not certified: the most conservative candidate threshold already has an upper bound of "
               f"{first_ucb:.4g} on the {kind} risk, above the budget {budget:.4g} (delta {delta}, "
               f"{method}); the gate's highest scores are not reliable enough, or more data is needed")
    return Calibration(math.inf, budget, delta, method, n, 0.0, 0.0, 0.0,
                       tuple(math.inf for _ in thresholds), kind, why, window=window)


def _finish(cal: Calibration, strict: bool) -> Calibration:
    if not cal.certified:
        if strict:
            raise CalibrationError(cal.note)
        warnings.warn(cal.note + "; the gate will never exit", CalibrationWarning, stacklevel=3)
    return cal


def _fixed_sequence(thresholds: Sequence, route, n: int, budget: float, delta: float,
                    method: str, kind: str, per_exit: bool = False, window: int | None = None) -> Calibration:
    best, last = None, None
    for i, t in enumerate(thresholds):
        loss, exited = route(t)
        counts = _counts(loss)
        if not _passes(*counts, n, budget, delta, method, kind, window):
            if i == 0:
                return _uncertified(n, budget, delta, method, kind, _bound(*counts, n, delta, method, kind),
                                    tuple([0] * len(t)) if per_exit else (), window)
            break
        best, last = t, (loss, exited, counts)
    if best is None:
        return _uncertified(n, budget, delta, method, kind, None, (), window)
    loss, exited, counts = last
    vec = tuple(float(v) for v in best) if per_exit else ()
    ucb = min(_bound(*counts, n, delta, method, kind), budget)  # passing means the bound is within budget
    return Calibration(vec[0] if per_exit else float(best), budget, delta, method, n,
                       float(loss.sum()) / n, ucb, float(exited.mean()), vec, kind, window=window)


def calibrate_threshold(scores: torch.Tensor, losses: torch.Tensor, budget: float, delta: float = 0.1,
                        method: str = "clopper-pearson", max_candidates: int = 400, *,
                        window: int | None = None, strict: bool = False) -> Calibration:
    """The lowest threshold (most exits) whose risk is certified within ``budget`` for one exit.

    ``scores[i]`` is the gate's score of sample ``i`` (exit when ``>= threshold``);
    ``losses[i]`` is the loss exiting sample ``i`` would cost (:func:`exit_losses`; with
    -1 entries the net risk is certified). When nothing can be certified the threshold is
    ``inf`` and ``note`` says why (a :class:`CalibrationWarning`; ``strict=True`` raises).

    Example:
        >>> s = torch.linspace(0, 1, 1000)
        >>> l = (s < 0.3).long()  # low-score samples are the harmful ones
        >>> c = calibrate_threshold(s, l, budget=0.05, delta=0.1)
        >>> c.ucb <= 0.05, c.risk <= 0.05, 0.2 < c.threshold < 0.3
        (True, True, True)
    """
    return calibrate_cascade([scores], [losses], budget, delta, method, max_candidates, window=window,
                             strict=strict)


def cascade_route(scores: Sequence[torch.Tensor], threshold: float | Sequence[float]) -> torch.Tensor:
    """Index of the first exit whose score is ``>=`` its threshold per sample (``len(scores)``: none).

    ``threshold`` is one value shared by every exit, or one per exit.

    Example:
        >>> s = [torch.tensor([0.9, 0.1, 0.2]), torch.tensor([0.0, 0.8, 0.3])]
        >>> cascade_route(s, 0.5).tolist(), cascade_route(s, [0.95, 0.25]).tolist()
        ([0, 1, 2], [2, 1, 1])
    """
    k = len(scores)
    s = torch.stack([torch.as_tensor(x, dtype=torch.float64).detach() for x in scores])  # (k, n)
    if isinstance(threshold, (int, float)):
        t = torch.full((k, 1), float(threshold), dtype=torch.float64)
    else:
        if len(threshold) != k:
            raise CalibrationError(f"{len(threshold)} thresholds for {k} exits; give one per exit or one "
                                   "shared value")
        t = torch.tensor([float(v) for v in threshold], dtype=torch.float64)[:, None]
    passed = s >= t
    first = torch.where(passed.any(0), passed.double().argmax(0), torch.full_like(passed[0], k, dtype=torch.long))
    return first.long()


def _check(scores: Sequence, losses: Sequence, budget: float, delta: float, method: str) -> int:
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
    if n == 0:
        raise CalibrationError("need at least one calibration sample; got 0")
    return n


def _loss_table(losses: Sequence, n: int) -> torch.Tensor:
    return torch.stack([torch.as_tensor(l, dtype=torch.long) for l in losses] +
                       [torch.zeros(n, dtype=torch.long)])  # no loss when nothing exits


def calibrate_cascade(scores: Sequence[torch.Tensor], losses: Sequence[torch.Tensor], budget: float,
                      delta: float = 0.1, method: str = "clopper-pearson", max_candidates: int = 400, *,
                      window: int | None = None, strict: bool = False) -> Calibration:
    """One shared threshold for a cascade of exits, certified by fixed-sequence testing.

    A sample leaves at the first exit whose score reaches the threshold
    (:func:`cascade_route`) and then incurs that exit's loss. Losses with -1 entries
    (``exit_losses(..., risk="net")``) certify the net accuracy loss.

    Example:
        >>> s1, s2 = torch.rand(2000, generator=torch.Generator().manual_seed(0)), torch.ones(2000)
        >>> c = calibrate_cascade([s1, s2], [(s1 < 0.5).long(), torch.zeros(2000, dtype=torch.long)], 0.02)
        >>> c.ucb <= 0.02 and c.exit_rate == 1.0
        True
    """
    n = _check(scores, losses, budget, delta, method)
    _check_window(window, method)
    L, kind = _loss_table(losses, n), _kind(losses)

    def route(t: float):
        first = cascade_route(scores, t)
        return L.gather(0, first[None]).squeeze(0).numpy(), (first < len(scores)).numpy()

    allscores = torch.cat([torch.as_tensor(s, dtype=torch.float64).detach() for s in scores]).numpy()
    cal = _fixed_sequence(list(_candidates(allscores, max_candidates)), route, n, budget, delta, method, kind,
                          window=window)
    return _finish(cal, strict)


def calibrate_exits(scores: Sequence[torch.Tensor], losses: Sequence[torch.Tensor], budget: float,
                    costs: Sequence[float], delta: float = 0.1, method: str = "clopper-pearson", *,
                    learn: tuple | None = None, learn_fraction: float = 0.3, grid: int = 40, seed: int = 0,
                    sequences: Sequence[str] = SEQUENCES, window: int | None = None,
                    strict: bool = False) -> Calibration:
    """One threshold per exit, certified by Learn-then-Test with a learned fixed sequence.

    ``costs[j]`` is what a sample costs when it leaves at exit ``j`` (``costs[-1]``: the
    full model; so ``len(costs) == len(scores) + 1``), e.g. counted FLOPs including the heads
    evaluated on the way. A seeded ``learn_fraction`` of the samples learns the ordering: a
    greedy path from "nothing exits" through a grid of ``grid`` score quantiles per exit,
    each step lowering the exit whose next threshold saves the most cost per unit of added
    empirical risk (for the net loss: its mean plus the margin that the test, on the samples
    that will test it and over ``window`` if given, demands at the vector's discordance).
    The other samples test the path's vectors in order (fixed-sequence
    testing); the last vector that passes is returned, certified on those samples only
    (``n`` says how many). With ``learn=(scores, losses)`` from *other* data (disjoint from
    the calibration samples, e.g. the data a learned gate was fitted on), the path is
    learned there and every calibration sample tests it.

    ``sequences`` are the candidate orderings: ``"path"`` (above) and ``"shared"`` (one
    threshold for every exit, from ``grid * k`` quantiles of the learning scores pooled,
    highest first). With more than one, the learning data choose: each is tested on them as
    it would be on the calibration data, and the one whose certified vector costs least
    there is tested on the calibration samples (ties, and learning data too few to certify
    anything, go to the first listed). The choice sees only the learning data, so the
    guarantee is that of one fixed sequence; ``sequence`` on the result says which.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> s1, s2 = torch.rand(4000, generator=g), torch.rand(4000, generator=g)
        >>> l1, l2 = (s1 < 0.6).long(), (s2 < 0.1).long()  # exit 1 is wrong below 0.6, exit 2 below 0.1
        >>> c = calibrate_exits([s1, s2], [l1, l2], 0.02, costs=[1.0, 2.0, 4.0])
        >>> c.ucb <= 0.02, 0.55 < c.thresholds[0] < 0.65, c.thresholds[1] < 0.1
        (True, True, True)
    """
    n = _check(scores, losses, budget, delta, method)
    _check_window(window, method)
    k = len(scores)
    if len(costs) != k + 1 or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in costs):
        raise CalibrationError(f"costs needs {k + 1} finite numbers (one per exit, then the full model); "
                               f"got {list(costs)!r}")
    if not 0.0 < learn_fraction < 1.0:
        raise CalibrationError(f"learn_fraction must be in (0, 1); got {learn_fraction!r}")
    if not isinstance(grid, int) or grid < 2:
        raise CalibrationError(f"grid must be an integer >= 2; got {grid!r}")
    if isinstance(sequences, str) or not sequences:
        raise CalibrationError(f"sequences must be a non-empty list of names from {SEQUENCES}; got {sequences!r}")
    for q in sequences:
        if q not in SEQUENCES:
            raise UnknownNameError("sequence", q, SEQUENCES)
    kind = _kind(losses)
    S = torch.stack([torch.as_tensor(x, dtype=torch.float64).detach() for x in scores]).numpy()  # (k, n)
    L = _loss_table(losses, n).numpy()  # (k + 1, n)
    C = np.asarray(costs, dtype=np.float64)
    if learn is not None:
        ls, ll = learn
        m = _check(ls, ll, budget, delta, method)
        if len(ls) != k:
            raise CalibrationError(f"learn has scores for {len(ls)} exits; the calibration data for {k}")
        LS = torch.stack([torch.as_tensor(x, dtype=torch.float64).detach() for x in ls]).numpy()
        LL = _loss_table(ll, m).numpy()
        St, Lt, nt = S, L, n
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
        n_learn = int(round(learn_fraction * n))
        part, test = perm[:n_learn], perm[n_learn:]
        if len(test) == 0 or len(part) == 0:
            raise CalibrationError(f"n={n} samples are too few to split into learning and testing parts")
        LS, LL = S[:, part], L[:, part]
        St, Lt, nt = S[:, test], L[:, test], len(test)
    seqs = {}
    for q in sequences:
        if q == "path":
            # for the net risk the path weighs each vector's noise by the margin the test on the
            # nt calibration samples demands (harm and disagreement: 0/1 losses, whose noise
            # follows from their mean)
            margin = _net_margin(nt, budget, delta, method, window) if kind == "net" else None
            seqs[q] = _greedy_path(LS, LL, C, grid, margin)
        else:
            seqs[q] = [(float(t),) * k for t in _candidates(LS[np.isfinite(LS)], grid * k)]
    chosen = sequences[0]
    if len(seqs) > 1:  # the learning data choose the sequence: the cheapest certified vector there
        cost = {q: _sequence_cost(seqs[q], LS, LL, C, budget, delta, method, kind, window) for q in seqs}
        chosen = min(seqs, key=lambda q: (cost[q], sequences.index(q)))
    cal = _fixed_sequence(seqs[chosen], _router(St, Lt), nt, budget, delta, method, kind, per_exit=True,
                          window=window)
    return _finish(replace(cal, sequence=chosen), strict)


def _first_exit(S: np.ndarray, t) -> np.ndarray:
    passed = S >= np.asarray(t, dtype=np.float64)[:, None]
    return np.where(passed.any(0), passed.argmax(0), S.shape[0])


def _router(S: np.ndarray, L: np.ndarray):
    """``route(t)`` for :func:`_fixed_sequence`: per-sample losses and exited flags at ``t``."""
    def route(t):
        first = _first_exit(S, t)
        return L[first, np.arange(S.shape[1])], first < S.shape[0]
    return route


def _sequence_cost(seq: list, S: np.ndarray, L: np.ndarray, C: np.ndarray, budget: float, delta: float,
                   method: str, kind: str, window: int | None = None) -> float:
    """Mean cost on ``(S, L)`` of the vector a fixed-sequence test of ``seq`` certifies there
    (the full model's cost when it certifies none)."""
    cal = _fixed_sequence(seq, _router(S, L), S.shape[1], budget, delta, method, kind, per_exit=True,
                          window=window)
    return float(C[_first_exit(S, cal.thresholds)].mean()) if cal.certified else float(C[-1])


def _greedy_path(S: np.ndarray, L: np.ndarray, C: np.ndarray, grid: int, margin=None) -> list[tuple]:
    """Threshold vectors from all-inf down, one exit lowered a grid step at a time (see above).

    The risk each step adds is the mean loss plus, with ``margin`` (a :func:`_net_margin`),
    the margin the test will demand at the vector's discordance rate: the path then ranks
    steps by what the test sees, so a step that saves compute with little net loss but many
    offsetting harms and helps (noise the test must cover) counts as riskier than its mean."""
    k, n = S.shape
    levels = []
    for j in range(k):
        finite = S[j][np.isfinite(S[j])]
        q = np.unique(np.quantile(finite, np.linspace(0, 1, grid))) if finite.size else np.array([])
        levels.append(np.concatenate([[np.inf], q[::-1]]))  # from inf down to the lowest score
    pos = [0] * k
    idx = np.arange(n)

    def evaluate(p):
        t = np.array([levels[j][p[j]] for j in range(k)])
        first = _first_exit(S, t)
        loss = L[first, idx]
        risk = float(loss.sum())
        if margin is not None:
            risk += n * float(margin(np.count_nonzero(loss) / n))
        return risk, float(C[first].sum())

    risk, cost = evaluate(pos)
    path = []
    while True:
        best = None
        for j in range(k):
            if pos[j] + 1 >= len(levels[j]):
                continue
            p = list(pos)
            p[j] += 1
            r, c = evaluate(p)
            saved, added = cost - c, r - risk
            # most cost saved per unit of added risk; risk-free savings first, largest first
            key = (0, -saved) if added <= 0 else (1, -saved / added)
            if best is None or key < best[0]:
                best = (key, p, r, c)
        if best is None:
            break
        _, pos, risk, cost = best
        path.append(tuple(float(levels[j][pos[j]]) for j in range(k)))
    return path
