"""Exit gates behind one interface, cascades of gated exits, and gated execution.

A gate looks at the shallow path's output -- the hidden state after an exit's depth and the
exit head's logits -- and scores how far the exit's answer can be trusted (higher = more
confident). It exits a sample when its score reaches its calibrated ``threshold``
(:mod:`policies.gating.calibrate`); an uncalibrated gate has ``threshold = inf`` and never
exits.

Gates (:func:`available_gates`, :func:`make_gate`):

* ``max_softmax`` -- the largest softmax probability (Hendrycks and Gimpel, ICLR 2017;
  the classic early-exit confidence threshold).
* ``entropy`` -- minus the entropy of the softmax (BranchyNet, Teerapittayanon et al. 2016).
* ``patience`` -- how many consecutive earlier exits agree with this exit's prediction
  (PABEE: Zhou et al., "BERT Loses Patience", NeurIPS 2020); for cascades of exits.
* ``learned`` -- :class:`LearnedGate`, a small MLP on pooled hidden features plus softmax
  statistics, trained without labels by self-distillation: the target is whether the exit
  agrees with the full model (cf. the learned exit policies of Chen et al. 2020 and
  "Learning to Stop" / the gate networks of Wang et al., SkipNet, ECCV 2018).
* ``oracle`` -- exits exactly when the exit's prediction equals the label. It needs labels,
  so it is a *ceiling for evaluation only*, never a deployable gate.

A :class:`Cascade` holds one gate per exit depth and exits each sample at the first exit
whose gate passes; :func:`run_gated` executes a model that way: the shallow stages run, the
gate decides, exited samples return the exit head's logits, and the rest continue from the
hidden state where the shallow path left off (no recomputation).
"""
from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from graphs.errors import UnknownNameError
from graphs.vision import ExitModel

from ..errors import PolicyError

__all__ = ["GatingError", "Gate", "MaxSoftmaxGate", "EntropyGate", "PatienceGate", "LearnedGate",
           "OracleGate", "Cascade", "GatedOutput", "available_gates", "make_gate", "pool_hidden",
           "softmax_stats", "run_gated", "gate_flops"]


class GatingError(PolicyError):
    """A gate was used wrongly (missing labels or history, wrong shapes, untrained)."""


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise GatingError(f"exit logits must have shape (batch, classes>=2); got {tuple(logits.shape)}")


def softmax_stats(logits: torch.Tensor) -> torch.Tensor:
    """``(batch, 3)``: max probability, top-1 minus top-2 margin, entropy of the softmax.

    Example:
        >>> softmax_stats(torch.tensor([[0.0, 0.0]])).tolist()
        [[0.5, 0.0, 0.6931471824645996]]
    """
    _check_logits(logits)
    return _stats(logits.softmax(1))


def _stats(p: torch.Tensor) -> torch.Tensor:
    top = p.topk(2, dim=1).values
    ent = -(p * p.clamp_min(1e-12).log()).sum(1)
    return torch.stack([top[:, 0], top[:, 0] - top[:, 1], ent], dim=1)


def pool_hidden(hidden: torch.Tensor) -> torch.Tensor:
    """A fixed-size ``(batch, features)`` summary of a hidden state, whatever its layout.

    Feature maps ``(B, C, H, W)``: channel means, channel maxima and a 2x2 average-pooled
    map. Token sequences ``(B, N, D)``: token mean and token max. ``(B, F)``: unchanged.

    Example:
        >>> tuple(pool_hidden(torch.zeros(2, 8, 7, 7)).shape), tuple(pool_hidden(torch.zeros(2, 16, 64)).shape)
        ((2, 48), (2, 128))
    """
    if hidden.dim() == 4:
        return torch.cat([hidden.mean((2, 3)), hidden.amax((2, 3)),
                          F.adaptive_avg_pool2d(hidden, 2).flatten(1)], dim=1)
    if hidden.dim() == 3:
        return torch.cat([hidden.mean(1), hidden.amax(1)], dim=1)
    if hidden.dim() == 2:
        return hidden
    raise GatingError(f"hidden state must be (B, C, H, W), (B, N, D) or (B, F); got {tuple(hidden.shape)}")


class Gate:
    """Base class: ``scores`` (higher = more confident), ``threshold``, ``decide``.

    Subclasses implement :meth:`scores`. ``previous`` is the list of earlier exits' logits
    (for patience); ``labels`` is only for the oracle.

    Example:
        >>> g = MaxSoftmaxGate(threshold=0.9)
        >>> g.decide(None, torch.tensor([[5.0, 0.0], [0.1, 0.0]])).tolist()
        [True, False]
    """

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False

    def __init__(self, threshold: float = math.inf):
        self.threshold = float(threshold)

    def scores(self, hidden: torch.Tensor | None, exit_logits: torch.Tensor, *,
               previous: Sequence[torch.Tensor] | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch,)`` confidence that the exit's answer can be trusted (higher = more)."""
        raise NotImplementedError

    def decide(self, hidden: torch.Tensor | None, exit_logits: torch.Tensor, *,
               previous: Sequence[torch.Tensor] | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch,)`` bool: True where the sample exits (score >= threshold)."""
        return self.scores(hidden, exit_logits, previous=previous, labels=labels) >= self.threshold

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold:.4g})"


class MaxSoftmaxGate(Gate):
    """Score = the largest softmax probability of the exit (Hendrycks and Gimpel, 2017).

    Example:
        >>> MaxSoftmaxGate().scores(None, torch.tensor([[0.0, 0.0]])).tolist()
        [0.5]
    """

    name = "max_softmax"

    def scores(self, hidden, exit_logits, *, previous=None, labels=None):
        _check_logits(exit_logits)
        return exit_logits.softmax(1).amax(1)


class EntropyGate(Gate):
    """Score = minus the softmax entropy of the exit (BranchyNet's criterion).

    Example:
        >>> [round(v, 4) for v in EntropyGate().scores(None, torch.tensor([[0.0, 0.0]])).tolist()]
        [-0.6931]
    """

    name = "entropy"

    def scores(self, hidden, exit_logits, *, previous=None, labels=None):
        _check_logits(exit_logits)
        logp = exit_logits.log_softmax(1)
        return (logp.exp() * logp).sum(1)


class PatienceGate(Gate):
    """Score = how many consecutive earlier exits (nearest first) predict the same class.

    Zhou et al., "BERT Loses Patience: Fast and Robust Inference with Early Exit", NeurIPS
    2020. A threshold of ``p`` exits once ``p`` earlier exits in a row agree. The first exit
    has no history and scores 0.

    Example:
        >>> a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> PatienceGate().scores(None, a, previous=[a, b, a, a]).tolist()
        [2.0]
    """

    name = "patience"

    def scores(self, hidden, exit_logits, *, previous=None, labels=None):
        pred = exit_logits.argmax(1)
        count = torch.zeros_like(pred, dtype=torch.float32)
        alive = torch.ones_like(pred, dtype=torch.bool)
        for prev in reversed(list(previous or [])):
            alive &= prev.argmax(1) == pred
            count += alive.float()
        return count


class OracleGate(Gate):
    """EVALUATION-ONLY CEILING: exits exactly when the exit's prediction equals the label.

    It reads the labels, which a deployed system never has; use it only to show the best
    any gate could do with the same exits.

    Example:
        >>> OracleGate().decide(None, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), labels=torch.tensor([0, 1])).tolist()
        [True, False]
    """

    name = "oracle"
    needs_labels = True

    def __init__(self, threshold: float = 0.5):
        super().__init__(threshold)

    def scores(self, hidden, exit_logits, *, previous=None, labels=None):
        if labels is None:
            raise GatingError("the oracle gate needs labels (it is an evaluation-only ceiling)")
        return (exit_logits.argmax(1) == labels).float()


class LearnedGate(Gate, nn.Module):
    """A small MLP that reads the shallow path's hidden features and predicts agreement.

    Input: :func:`pool_hidden` of the hidden state, the exit's softmax probabilities and
    :func:`softmax_stats` (:meth:`fit` trains on standardised features and then folds the
    standardisation into the first layer, so inference pays nothing for it). Output
    (:meth:`scores`): the log-odds that the exit's prediction equals the full model's. Trained by
    :meth:`fit` on unlabeled inputs with binary cross-entropy against that agreement
    (self-distillation; no labels are used).

    Example:
        >>> g = LearnedGate(feature_dim=48, num_classes=10)
        >>> s = g.scores(torch.randn(3, 8, 7, 7), torch.randn(3, 10))
        >>> tuple(s.shape), bool(((torch.sigmoid(s) > 0) & (torch.sigmoid(s) < 1)).all())
        ((3,), True)
    """

    name = "learned"

    def __init__(self, feature_dim: int, num_classes: int = 10, width: int = 64,
                 threshold: float = math.inf):
        nn.Module.__init__(self)
        Gate.__init__(self, threshold)
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.net = nn.Sequential(nn.Linear(feature_dim + num_classes + 3, width), nn.ReLU(),
                                 nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

    def inputs(self, hidden: torch.Tensor, exit_logits: torch.Tensor) -> torch.Tensor:
        """The MLP's input: standardised pooled features, softmax, softmax statistics."""
        f = pool_hidden(hidden)
        if f.shape[1] != self.feature_dim:
            raise GatingError(f"pooled hidden features have {f.shape[1]} values; this gate was built "
                              f"for feature_dim={self.feature_dim}")
        if exit_logits.shape != (f.shape[0], self.num_classes):
            raise GatingError(f"exit logits shape {tuple(exit_logits.shape)} != ({f.shape[0]}, "
                              f"{self.num_classes})")
        p = exit_logits.softmax(1)
        return torch.cat([f, p, _stats(p)], 1)

    def logit(self, hidden: torch.Tensor, exit_logits: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid score ``(batch,)``."""
        return self.net(self.inputs(hidden, exit_logits)).squeeze(1)

    def scores(self, hidden, exit_logits, *, previous=None, labels=None):
        """The log-odds that the exit agrees with the full model (monotone in the probability;
        log-odds keep confident scores apart where a float32 sigmoid would round them to 1)."""
        if hidden is None:
            raise GatingError("the learned gate reads the hidden state; got hidden=None")
        with torch.no_grad():
            return self.logit(hidden, exit_logits)

    def forward(self, hidden: torch.Tensor, exit_logits: torch.Tensor) -> torch.Tensor:
        return self.scores(hidden, exit_logits)

    def fit(self, hiddens: torch.Tensor, exit_logits: torch.Tensor, final_logits: torch.Tensor,
            epochs: int = 30, lr: float = 3e-3, batch_size: int = 512, seed: int = 0,
            holdout: float = 0.2) -> "LearnedGate":
        """Self-distillation: fit P(exit argmax == full-model argmax) by binary cross-entropy.

        ``hiddens`` are the hidden states (or already pooled features) of unlabeled inputs;
        ``exit_logits`` and ``final_logits`` the exit's and the full model's outputs on them.
        The MLP trains on ``1 - holdout`` of them; its log-odds are then Platt-scaled on the
        held-out rest (Platt, 1999), so that gates at different exits output comparable,
        not over-confident, log-odds (a cascade shares one threshold across them).
        """
        if not 0.0 <= holdout < 1.0:
            raise GatingError(f"holdout must be in [0, 1); got {holdout!r}")
        n = exit_logits.shape[0]
        if final_logits.shape != exit_logits.shape or hiddens.shape[0] != n:
            raise GatingError(f"fit needs matching batches: hiddens {tuple(hiddens.shape)}, exit logits "
                              f"{tuple(exit_logits.shape)}, final logits {tuple(final_logits.shape)}")
        x = self.inputs(hiddens, exit_logits).detach()
        target = (exit_logits.argmax(1) == final_logits.argmax(1)).float()
        # train on standardised pooled features, then fold the standardisation into the first layer
        f = self.feature_dim
        mean, std = x[:, :f].mean(0), x[:, :f].std(0).clamp_min(1e-4)
        x = torch.cat([(x[:, :f] - mean) / std, x[:, f:]], 1)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        for m in self.net:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        perm = torch.randperm(n, generator=g)
        n_hold = int(holdout * n)
        hold, fit_idx = perm[:n_hold], perm[n_hold:]
        x, target, x_hold, t_hold = x[fit_idx], target[fit_idx], x[hold], target[hold]
        n = x.shape[0]
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=1e-4)
        self.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                loss = F.binary_cross_entropy_with_logits(self.net(x[idx]).squeeze(1), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            first = self.net[0]
            first.bias -= first.weight[:, :f] @ (mean / std)
            first.weight[:, :f] /= std
        self.eval()
        if n_hold:
            with torch.no_grad():
                z = self.net(torch.cat([x_hold[:, :f] * std + mean, x_hold[:, f:]], 1)).squeeze(1)
            ab = torch.tensor([1.0, 0.0], requires_grad=True)
            popt = torch.optim.LBFGS([ab], max_iter=100)

            def closure():
                popt.zero_grad()
                loss = F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], t_hold)
                loss.backward()
                return loss
            popt.step(closure)
            a, b = ab.detach()
            if a > 0:  # a non-positive slope would invert the ranking: keep the raw scores then
                last = self.net[-1]
                with torch.no_grad():
                    last.weight *= a
                    last.bias.mul_(a).add_(b)
        return self


_GATES: dict[str, type[Gate]] = {g.name: g for g in
                                 (MaxSoftmaxGate, EntropyGate, PatienceGate, LearnedGate, OracleGate)}


def available_gates() -> list[str]:
    """Names of the gates :func:`make_gate` builds.

    Example:
        >>> available_gates()
        ['entropy', 'learned', 'max_softmax', 'oracle', 'patience']
    """
    return sorted(_GATES)


def make_gate(name: str, **kwargs) -> Gate:
    """Build a gate by name.

    Example:
        >>> make_gate("entropy", threshold=-0.1)
        EntropyGate(threshold=-0.1)
        >>> make_gate("softmax")
        Traceback (most recent call last):
        ...
        graphs.errors.UnknownNameError: unknown gate 'softmax'; valid choices: entropy, learned, max_softmax, oracle, patience
    """
    if name not in _GATES:
        raise UnknownNameError("gate", name, _GATES)
    return _GATES[name](**kwargs)


def gate_flops(gate: Gate, hidden: torch.Tensor, exit_logits: torch.Tensor) -> int:
    """FLOPs the gate spends on one sample, counted with FlopCounterMode (matmuls only).

    Example:
        >>> gate_flops(MaxSoftmaxGate(), torch.zeros(1, 4), torch.zeros(1, 10))
        0
    """
    if gate.needs_labels:
        return 0
    with FlopCounterMode(display=False) as fc:
        gate.scores(hidden[:1], exit_logits[:1], previous=None)
    return int(fc.get_total_flops())


class Cascade:
    """One gate per exit depth; a sample leaves at the first exit whose gate passes.

    Example:
        >>> c = Cascade({1: MaxSoftmaxGate(0.9), 2: MaxSoftmaxGate(0.6)})
        >>> c.depths
        [1, 2]
        >>> c.set_threshold(0.7).gates[2].threshold
        0.7
    """

    def __init__(self, gates: dict[int, Gate]):
        if not gates:
            raise GatingError("a cascade needs at least one (depth -> gate) entry")
        self.gates = {int(d): g for d, g in sorted(gates.items())}

    @property
    def depths(self) -> list[int]:
        """Exit depths in order."""
        return list(self.gates)

    def set_threshold(self, threshold: float) -> "Cascade":
        """Give every gate the same threshold (a calibrated shared threshold)."""
        for g in self.gates.values():
            g.threshold = float(threshold)
        return self

    def check(self, model: ExitModel) -> None:
        """Raise :class:`GatingError` if a gate sits at a depth where ``model`` has no exit."""
        bad = [d for d in self.depths if d not in model.exit_depths]
        if bad:
            raise GatingError(f"cascade gates at depths {bad} but the model's exits are at {model.exit_depths}")

    def __repr__(self) -> str:
        return f"Cascade({self.gates})"


class GatedOutput(tuple):
    """``(logits (B, classes), exit_depth (B,) long; 0 = went through the full model)``."""

    @property
    def logits(self) -> torch.Tensor:
        return self[0]

    @property
    def exit_depth(self) -> torch.Tensor:
        return self[1]


@torch.inference_mode()
def run_gated(model: ExitModel, gates: Cascade | Gate, x: torch.Tensor, depth: int | None = None,
              labels: torch.Tensor | None = None) -> GatedOutput:
    """Run ``model`` with early exits decided by ``gates``; hard samples continue without recomputation.

    ``gates`` is a :class:`Cascade`, or a single gate used at ``depth``. Returns the
    per-sample logits (the exit head's output for exited samples, the full model's for the
    rest) and the depth each sample left at (0 = full model).

    Example:
        >>> from graphs.vision import ExitCNN
        >>> m = ExitCNN().eval()
        >>> out = run_gated(m, MaxSoftmaxGate(threshold=0.0), torch.randn(3, 1, 28, 28), depth=1)
        >>> out.exit_depth.tolist()  # threshold 0: everything exits at the first gate
        [1, 1, 1]
    """
    if isinstance(gates, Gate):
        if depth is None:
            raise GatingError("a single gate needs the exit depth it sits at (depth=...)")
        gates = Cascade({depth: gates})
    gates.check(model)
    model._check_input(x)
    b = x.shape[0]
    if b == 1:  # one request: no gathers or scatters, just return at the first passing exit
        h, done, previous = x, 0, []
        for d, gate in gates.gates.items():
            h = model.run_stages(h, done, d)
            done = d
            e = model.exit_logits(h, d)
            if bool(gate.decide(h, e, previous=previous, labels=labels)):
                return GatedOutput((e, torch.tensor([d])))
            previous.append(e)
        return GatedOutput((model.forward_from(h, done), torch.tensor([0])))
    logits = torch.empty(b, model.num_classes)
    where = torch.zeros(b, dtype=torch.long)
    active = torch.arange(b)
    h, done, previous = x, 0, []
    for d, gate in gates.gates.items():
        h = model.run_stages(h, done, d)
        done = d
        e = model.exit_logits(h, d)
        lab = labels[active] if labels is not None else None
        go = gate.decide(h, e, previous=previous, labels=lab)
        logits[active[go]] = e[go]
        where[active[go]] = d
        keep = ~go
        active, h, e = active[keep], h[keep], e[keep]
        previous = [p[keep] for p in previous] + [e]
        if active.numel() == 0:
            return GatedOutput((logits, where))
    logits[active] = model.forward_from(h, done)
    return GatedOutput((logits, where))

