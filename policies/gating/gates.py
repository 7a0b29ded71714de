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
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from graphs.errors import UnknownNameError
from graphs.exits import ExitModel, check_adapter, hidden_of, select_state

from ..errors import PolicyError

__all__ = ["GatingError", "Gate", "MaxSoftmaxGate", "EntropyGate", "PatienceGate", "LearnedGate",
           "OracleGate", "Cascade", "GatedOutput", "available_gates", "make_gate", "pool_hidden",
           "softmax_stats", "run_gated", "gate_flops", "decision_inputs"]


class GatingError(PolicyError):
    """A gate was used wrongly (missing labels or history, wrong shapes, untrained).

    Example:
        >>> OracleGate().scores(None, torch.zeros(1, 2))
        Traceback (most recent call last):
        ...
        policies.gating.gates.GatingError: the oracle gate needs labels (it is an evaluation-only ceiling)
    """


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


def pool_hidden(hidden: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A fixed-size ``(batch, features)`` summary of a hidden state, whatever its layout.

    Feature maps ``(B, C, H, W)``: channel means, channel maxima and a 2x2 average-pooled
    map. Token sequences ``(B, N, D)``: token mean and token max, over the real positions
    only when a padding ``mask`` ``(B, N)`` (True = real) is given -- so a sample's features
    do not depend on how much padding its batch added. ``(B, F)``: unchanged. ``hidden`` may
    also be a gate view ``(hidden, mask)`` (:meth:`graphs.exits.ExitModel.gate_view`).

    Example:
        >>> tuple(pool_hidden(torch.zeros(2, 8, 7, 7)).shape), tuple(pool_hidden(torch.zeros(2, 16, 64)).shape)
        ((2, 48), (2, 128))
        >>> h = torch.tensor([[[1.0], [3.0], [99.0]]])
        >>> pool_hidden(h, torch.tensor([[True, True, False]])).tolist()  # the padded 99 is ignored
        [[2.0, 3.0]]
    """
    if isinstance(hidden, tuple):
        if len(hidden) != 2 or mask is not None:
            raise GatingError("a gate view is a hidden tensor or (hidden, mask); got a tuple of "
                              f"{len(hidden)}{' and a mask' if mask is not None else ''}")
        hidden, mask = hidden
    if not isinstance(hidden, torch.Tensor):
        raise GatingError(f"hidden state must be a tensor; got {type(hidden).__name__}")
    if mask is not None:
        if hidden.dim() != 3 or mask.shape != hidden.shape[:2] or mask.dtype != torch.bool:
            raise GatingError(f"a padding mask goes with a (B, N, D) hidden state and is a (B, N) bool "
                              f"tensor; got hidden {tuple(hidden.shape)} and mask {tuple(mask.shape)} "
                              f"{mask.dtype}")
        m = mask.unsqueeze(-1)
        count = m.sum(1).clamp_min(1).to(hidden.dtype)
        mean = hidden.masked_fill(~m, 0.0).sum(1) / count
        mx = hidden.masked_fill(~m, float("-inf")).amax(1)
        return torch.cat([mean, torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))], dim=1)
    if hidden.dim() == 4:
        return torch.cat([hidden.mean((2, 3)), hidden.amax((2, 3)),
                          F.adaptive_avg_pool2d(hidden, 2).flatten(1)], dim=1)
    if hidden.dim() == 3:
        return torch.cat([hidden.mean(1), hidden.amax(1)], dim=1)
    if hidden.dim() == 2:
        return hidden
    raise GatingError(f"hidden state must be (B, C, H, W), (B, N, D) or (B, F); got {tuple(hidden.shape)}")


def decision_inputs(view: Any, logits: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """What a gate decides on: for a language model's ``(B, T, V)`` logits, the last position
    (the next token) and the hidden state there; anything else unchanged.

    Example:
        >>> v, l = decision_inputs(torch.zeros(2, 5, 8), torch.zeros(2, 5, 100))
        >>> tuple(v.shape), tuple(l.shape)
        ((2, 8), (2, 100))
    """
    if logits.dim() != 3:
        return view, logits
    if isinstance(view, tuple):  # (hidden, mask): the last real position is the last position
        view = view[0]
    if isinstance(view, torch.Tensor) and view.dim() == 3:
        view = view[:, -1]
    return view, logits[:, -1]


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

    Input: :func:`pool_hidden` of the hidden state (masked, for padded sequences),
    standardised by a separate, bounded step (below); the exit's softmax probabilities
    (the ``top_k`` largest, sorted, when there are more classes than ``top_k``); and
    :func:`softmax_stats`. Output (:meth:`scores`): the log-odds that the exit's prediction
    equals the full model's. Trained by :meth:`fit` on unlabeled inputs with binary
    cross-entropy against that agreement (self-distillation; no labels are used).

    Numerics: the standardisation is kept as its own buffers (``inv_scale``, ``shift``), never
    folded into the first layer. Each feature's scale is its standard deviation, floored at
    ``rel_floor`` x its root-mean-square, so a nearly constant feature is not magnified (a
    feature rounded to fp16 moves by at most about ``2**-11 / rel_floor`` of its scale); the
    standardised features are clipped to ``[-clip, clip]``; and the MLP is trained with
    weight decay. Scores then move by a small, bounded amount under fp16 rounding of the
    features, and a sample's score is the same alone and in any padded batch.

    Example:
        >>> g = LearnedGate(feature_dim=48, num_classes=10)
        >>> s = g.scores(torch.randn(3, 8, 7, 7), torch.randn(3, 10))
        >>> tuple(s.shape), bool(torch.isfinite(s).all())
        ((3,), True)
    """

    name = "learned"

    def __init__(self, feature_dim: int, num_classes: int = 10, width: int = 64,
                 threshold: float = math.inf, top_k: int = 64, clip: float = 5.0, rel_floor: float = 0.05):
        nn.Module.__init__(self)
        Gate.__init__(self, threshold)
        if not (isinstance(feature_dim, int) and feature_dim > 0 and isinstance(num_classes, int)
                and num_classes >= 2):
            raise GatingError(f"LearnedGate needs feature_dim >= 1 and num_classes >= 2; got "
                              f"{feature_dim!r}, {num_classes!r}")
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.n_probs = min(num_classes, top_k)
        self.clip, self.rel_floor = float(clip), float(rel_floor)
        # standardisation z = f * inv_scale + shift, i.e. (f - mean) / scale, as two buffers so
        # that inference is one fused op (addcmul) and one clamp
        self.register_buffer("inv_scale", torch.ones(feature_dim))
        self.register_buffer("shift", torch.zeros(feature_dim))
        self.net = nn.Sequential(nn.Linear(feature_dim + self.n_probs + 3, width), nn.ReLU(),
                                 nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

    def features(self, hidden: Any) -> torch.Tensor:
        """Pooled hidden features ``(batch, feature_dim)`` (accepts already pooled features)."""
        f = pool_hidden(hidden)
        if f.shape[1] != self.feature_dim:
            raise GatingError(f"pooled hidden features have {f.shape[1]} values; this gate was built "
                              f"for feature_dim={self.feature_dim}")
        return f.float()

    def inputs(self, hidden: Any, exit_logits: torch.Tensor) -> torch.Tensor:
        """The MLP's input: standardised and clipped pooled features, (top) softmax, statistics."""
        f = self.features(hidden)
        if exit_logits.shape != (f.shape[0], self.num_classes):
            raise GatingError(f"exit logits shape {tuple(exit_logits.shape)} != ({f.shape[0]}, "
                              f"{self.num_classes})")
        z = torch.addcmul(self.shift, f, self.inv_scale).clamp_(-self.clip, self.clip)
        p = exit_logits.float().softmax(1)
        probs = p if self.n_probs == self.num_classes else p.topk(self.n_probs, dim=1).values
        return torch.cat([z, probs, _stats(p)], 1)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        # the layers called directly: at batch 1 the per-module call overhead is a large share
        l0, l1, l2 = self.net[0], self.net[2], self.net[4]
        x = F.relu(F.linear(x, l0.weight, l0.bias))
        x = F.relu(F.linear(x, l1.weight, l1.bias))
        return F.linear(x, l2.weight, l2.bias).squeeze(1)

    def logit(self, hidden: Any, exit_logits: torch.Tensor) -> torch.Tensor:
        """The calibrated log-odds ``(batch,)`` (Platt's scale and offset live in the last layer)."""
        return self._mlp(self.inputs(hidden, exit_logits))

    def scores(self, hidden, exit_logits, *, previous=None, labels=None):
        """The log-odds that the exit agrees with the full model (monotone in the probability;
        log-odds keep confident scores apart where a float32 sigmoid would round them to 1)."""
        if hidden is None:
            raise GatingError("the learned gate reads the hidden state; got hidden=None")
        with torch.no_grad():
            return self.logit(hidden, exit_logits)

    def forward(self, hidden: torch.Tensor, exit_logits: torch.Tensor) -> torch.Tensor:
        return self.scores(hidden, exit_logits)

    def fit(self, hiddens: Any, exit_logits: torch.Tensor, final_logits: torch.Tensor | None,
            epochs: int = 30, lr: float = 3e-3, batch_size: int = 512, seed: int = 0,
            holdout: float = 0.2, weight_decay: float = 1e-2, *,
            agree: torch.Tensor | None = None) -> "LearnedGate":
        """Self-distillation: fit P(exit argmax == full-model argmax) by binary cross-entropy.

        ``hiddens`` are the hidden states, gate views ``(hidden, mask)`` or already pooled
        features of unlabeled inputs; ``exit_logits`` and ``final_logits`` the exit's and the
        full model's outputs on them. Fit on inputs the exit heads did not train on: on their
        own training data the heads are over-confident, and so would the gate be. ``agree``
        (0/1 per sample) replaces the argmax comparison where the exit's classes are not the
        full model's (a token exit over a shortlist of the vocabulary); ``final_logits`` is
        then None. Seeded: the
        same data and seed give the same gate. The MLP trains on ``1 - holdout`` of them; its
        log-odds are then Platt-scaled on the held-out rest (Platt, 1999), so that gates at
        different exits output comparable, not over-confident, log-odds.
        """
        if not 0.0 <= holdout < 1.0:
            raise GatingError(f"holdout must be in [0, 1); got {holdout!r}")
        n = exit_logits.shape[0]
        f = self.features(hiddens).detach()
        ref = agree if final_logits is None else final_logits
        if ref is None or f.shape[0] != n or (final_logits is not None and final_logits.shape != exit_logits.shape) \
                or (final_logits is None and tuple(agree.shape) != (n,)):
            raise GatingError(f"fit needs matching batches: {f.shape[0]} hidden states, exit logits "
                              f"{tuple(exit_logits.shape)}, final logits or agreement "
                              f"{None if ref is None else tuple(ref.shape)}")
        if n < 2:
            raise GatingError(f"fit needs at least 2 samples; got {n}")
        target = (agree.float() if final_logits is None
                  else (exit_logits.argmax(1) == final_logits.argmax(1)).float())
        with torch.no_grad():
            mean, rms = f.mean(0), f.pow(2).mean(0).sqrt()
            scale = torch.maximum(f.std(0), self.rel_floor * rms).clamp_min(1e-6)
            self.inv_scale.copy_(1.0 / scale)
            self.shift.copy_(-mean / scale)
        x = self.inputs(f, exit_logits).detach()
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for m in self.net:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        perm = torch.randperm(n, generator=g)
        n_hold = int(holdout * n)
        hold, fit_idx = perm[:n_hold], perm[n_hold:]
        x, target, x_hold, t_hold = x[fit_idx], target[fit_idx], x[hold], target[hold]
        n = x.shape[0]
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                loss = F.binary_cross_entropy_with_logits(self.net(x[idx]).squeeze(1), target[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.eval()
        if n_hold:
            with torch.no_grad():
                z = self.net(x_hold).squeeze(1)
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
                last = self.net[-1]  # a positive scalar scale and an offset: exact, no magnification
                with torch.no_grad():
                    last.weight.mul_(a)
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

    def set_threshold(self, threshold: float | Sequence[float]) -> "Cascade":
        """Give every gate the same threshold (a calibrated shared threshold), or each gate its
        own (one per exit, in depth order, as :func:`policies.gating.calibrate_exits` gives).

        Example:
            >>> c = Cascade({1: MaxSoftmaxGate(), 2: MaxSoftmaxGate()}).set_threshold([0.9, 0.6])
            >>> [g.threshold for g in c.gates.values()]
            [0.9, 0.6]
        """
        values = [threshold] * len(self.gates) if isinstance(threshold, (int, float)) else list(threshold)
        if len(values) != len(self.gates):
            raise GatingError(f"{len(values)} thresholds for a cascade of {len(self.gates)} exits; give one "
                              "per exit or one shared value")
        for g, t in zip(self.gates.values(), values):
            g.threshold = float(t)
        return self

    def check(self, model: ExitModel) -> None:
        """Raise :class:`GatingError` if a gate sits at a depth where ``model`` has no exit."""
        bad = [d for d in self.depths if d not in model.exit_depths]
        if bad:
            raise GatingError(f"cascade gates at depths {bad} but the model's exits are at {model.exit_depths}")

    def __repr__(self) -> str:
        return f"Cascade({self.gates})"


class GatedOutput(tuple):
    """``(logits (B, classes), exit_depth (B,) long; 0 = went through the full model)``.

    Example:
        >>> out = GatedOutput((torch.zeros(2, 3), torch.tensor([1, 0])))
        >>> tuple(out.logits.shape), out.exit_depth.tolist()
        ((2, 3), [1, 0])
    """

    @property
    def logits(self) -> torch.Tensor:
        return self[0]

    @property
    def exit_depth(self) -> torch.Tensor:
        return self[1]


@torch.inference_mode()
def run_gated(model: ExitModel, gates: Cascade | Gate, x: Any, depth: int | None = None,
              labels: torch.Tensor | None = None) -> GatedOutput:
    """Run ``model`` with early exits decided by ``gates``; hard samples continue without recomputation.

    ``model`` is any :class:`graphs.exits.ExitModel` (its adapter checks the input and runs
    the stem); ``gates`` is a :class:`Cascade`, or a single gate used at ``depth``. Gates
    read :meth:`~graphs.exits.ExitModel.gate_view` of the state (so padded positions are
    masked out) and, for a language model's ``(B, T, V)`` logits, decide on the last
    position (:func:`decision_inputs`). Returns the per-sample logits (the exit head's
    output for exited samples, the full model's for the rest) and the depth each sample
    left at (0 = full model).

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
    check_adapter(model)
    gates.check(model)
    model.check_input(x)
    state = model.embed(x)
    b = hidden_of(state).shape[0]

    def decide(gate, state, e, previous, lab):
        view, de = decision_inputs(model.gate_view(state), e)
        return gate.decide(view, de, previous=previous, labels=lab), de

    if b == 1:  # one request: no gathers or scatters, just return at the first passing exit
        done, previous = 0, []
        for d, gate in gates.gates.items():
            state = model.run_stages(state, done, d)
            done = d
            e = model.exit_logits(state, d)
            go, de = decide(gate, state, e, previous, labels)
            if bool(go):
                return GatedOutput((e, torch.tensor([d])))
            previous.append(de)
        return GatedOutput((model.forward_from(state, done), torch.tensor([0])))
    logits = None
    where = torch.zeros(b, dtype=torch.long)
    active = torch.arange(b)
    done, previous = 0, []
    for d, gate in gates.gates.items():
        state = model.run_stages(state, done, d)
        done = d
        e = model.exit_logits(state, d)
        if logits is None:
            logits = e.new_empty((b, *e.shape[1:]))
        lab = labels[active] if labels is not None else None
        go, de = decide(gate, state, e, previous, lab)
        logits[active[go]] = e[go]
        where[active[go]] = d
        keep = ~go
        active, state = active[keep], select_state(state, keep)
        previous = [p[keep] for p in previous] + [de[keep]]
        if active.numel() == 0:
            return GatedOutput((logits, where))
    logits[active] = model.forward_from(state, done)
    return GatedOutput((logits, where))
