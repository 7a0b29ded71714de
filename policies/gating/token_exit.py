"""Early exit for generated tokens: exit heads on a frozen decoder, per-token gates, calibration.

The gate of :mod:`policies.gating` decides per *input*; a decoder emits one token per step,
and most tokens a small LLM emits are easy. :class:`TokenExits` adds to a
:class:`graphs.models.Decoder`:

* **exit heads** after chosen layers (by default 1/4, 1/2 and 3/4 of the depth). A head is
  a trainable RMSNorm and a square adapter (initialised to the identity: the "logit lens")
  in front of the decoder's own, frozen output matrix restricted to a **shortlist** of the
  ``shortlist`` tokens the full model predicts most often on the training text. The full
  ``lm_head`` of SmolLM2-135M reads 49152 x 576 weights (about 3 ms per token on this CPU,
  a tenth of a decode step), so a full-vocabulary head at every exit would cost more than
  an exit saves; the shortlist head reads a sixth of them. A token outside the shortlist
  cannot be produced by an exit: the gate learns to refuse there, and the calibration
  counts it as a disagreement.
* heads **trained by self-distillation** on the frozen backbone: the target is the full
  model's next-token distribution (renormalised over the shortlist; cross-entropy against
  it, i.e. the KL divergence up to a constant) at every position of text made of prompts
  and the model's own greedy continuations (:func:`collect`).
* **gates** per exit that predict whether the exit's token equals the full model's: the
  baselines ``max_softmax`` and ``entropy`` read the head's distribution; ``learned`` (a
  :class:`policies.gating.LearnedGate`) reads the hidden state and the head's confidence,
  fitted on text the heads did not train on.
* **calibration** of per-exit thresholds to a target token agreement with the full model
  on held-out text (Learn-then-Test over a path of threshold vectors,
  :func:`policies.gating.calibrate.calibrate_exits`, with the *disagreement* risk and the
  FLOPs of leaving at each exit as costs), certified at level ``1 - delta``. Teacher-forced
  (every position sees the full model's own prefix and caches) for the tables and the
  drafting thresholds; for lossy decoding the cascade is certified again on *generated*
  text (``lossy``): after an exit the skipped layers' keys and values are copied, and the
  tokens after it agree less often than teacher forcing says.

The certificates treat the calibration tokens as exchangeable; tokens of one sequence are
correlated, so the guarantee is optimistic (the benchmark reports how often the budget
held on halves of held-out prompts).

Four disjoint splits of the prompts: ``train`` (heads), ``gate`` (learned gates), ``val``
(calibration) and ``test`` (held out: nothing trains or calibrates on it).
:func:`fortune_prompts` cuts prompts from the English fortune files that Debian's
``fortunes`` package ships (split by a hash of the text, as :mod:`graphs.textdata` does).

How the exits are used while generating (CALM-style lossy exit, LayerSkip-style lossless
self-speculation) is :mod:`graphs.exit_decoding`; :meth:`scheduler.Runtime.generate` runs
both.

Example:
    >>> from graphs.models import decoder
    >>> m = decoder("tiny-llama")
    >>> ex = TokenExits(m, layers=[1], shortlist=torch.arange(64))
    >>> h = torch.randn(3, m.config.hidden)
    >>> logits = ex.head_logits(0, h)
    >>> tuple(logits.shape), ex.tokens(logits).max() < 64
    ((3, 64), tensor(True))
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .calibrate import Calibration, CalibrationWarning, calibrate_exits, calibrate_threshold, upper_bound
from .gates import GatingError, LearnedGate

__all__ = ["TokenExitConfig", "TokenExits", "TokenData", "TOKEN_GATES", "default_layers",
           "fortune_prompts", "greedy_continue", "collect", "train_token_exits", "load_or_train_token_exits",
           "token_costs", "exit_compute", "evaluate_token_exits", "lossy_disagreement", "DEFAULT_CACHE"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CACHE = os.path.join(ROOT, ".cache", "token_exit")
#: Gates a :class:`TokenExits` carries per exit (``oracle`` is evaluation only: it reads the answer).
TOKEN_GATES = ("max_softmax", "entropy", "learned")
SPLITS = ("train", "gate", "val", "test")
#: Part of the cache key: bump it when training or calibration changes what they produce.
CACHE_VERSION = 2


def default_layers(num_layers: int) -> tuple[int, ...]:
    """Exits after 1/4, 1/2 and 3/4 of the layers (distinct, within 1..num_layers-1).

    Example:
        >>> default_layers(30), default_layers(2)
        ((8, 15, 22), (1,))
    """
    return tuple(sorted({min(max(1, round(num_layers * f)), num_layers - 1) for f in (0.25, 0.5, 0.75)}))


@dataclass(frozen=True)
class TokenExitConfig:
    """What :func:`train_token_exits` builds and on how much text.

    Example:
        >>> TokenExitConfig(layers=(4, 8)).layers
        (4, 8)
        >>> TokenExitConfig(budget=0)
        Traceback (most recent call last):
        ...
        policies.gating.gates.GatingError: budget must be in (0, 1] (the disagreement with the full model allowed); got 0
    """

    layers: tuple[int, ...] = ()  # exit after this many layers; () = default_layers
    shortlist: int = 8192  # tokens an exit head can produce
    prompt_tokens: int = 32  # tokens per prompt
    new_tokens: int = 32  # greedy continuation per prompt (the model's own text)
    prompts: tuple[tuple[str, int], ...] = (("train", 384), ("gate", 128), ("val", 256), ("test", 96))
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 512
    gen_batch: int = 16  # sequences per batched greedy step while collecting
    budget: float = 0.02  # disagreement with the full model allowed (1 - target agreement)
    delta: float = 0.1  # the certificate holds with probability >= 1 - delta
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
            raise GatingError(f"budget must be in (0, 1] (the disagreement with the full model allowed); "
                              f"got {self.budget!r}")
        if not 0 < self.delta < 1:
            raise GatingError(f"delta must be in (0, 1); got {self.delta!r}")
        for name in ("shortlist", "prompt_tokens", "new_tokens", "epochs", "batch_size", "gen_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise GatingError(f"{name} must be an int >= 1; got {v!r}")
        bad = [s for s, _ in self.prompts if s not in SPLITS]
        if bad:
            raise GatingError(f"unknown prompt split(s) {bad}; valid: {', '.join(SPLITS)}")


class TokenExitHead(nn.Module):
    """RMSNorm + square adapter (identity at init) + the decoder's output rows of the shortlist."""

    def __init__(self, norm: nn.RMSNorm, hidden: int):
        super().__init__()
        self.norm = nn.RMSNorm(hidden, eps=norm.eps)
        with torch.no_grad():
            self.norm.weight.copy_(norm.weight)
        self.adapter = nn.Linear(hidden, hidden)
        with torch.no_grad():
            self.adapter.weight.copy_(torch.eye(hidden))
            self.adapter.bias.zero_()

    def forward(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.adapter(self.norm(h)), weight)


class TokenExits(nn.Module):
    """Exit heads and gates for a decoder (see the module docstring).

    ``layers[j]``: exit ``j`` reads the hidden state after that many layers.
    ``shortlist``: the token ids the heads produce (a 1-D integer tensor). The gates are
    set by :func:`train_token_exits`; ``thresholds[gate]`` the calibrated per-exit
    thresholds for the cascade of all exits (teacher-forced), ``lossy[gate]`` the cascade's
    thresholds certified on generated text (what lossy decoding uses), ``single[gate][j]``
    exit ``j``'s threshold when it is the only exit (what self-speculation drafts with),
    ``calibration`` the certificates.

    Example:
        >>> from graphs.models import decoder
        >>> ex = TokenExits(decoder("tiny-llama"), layers=[1], shortlist=torch.arange(8))
        >>> ex.layers, ex.num_exits, ex.gate_names()
        ((1,), 1, ('max_softmax', 'entropy'))
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], shortlist: torch.Tensor):
        super().__init__()
        c = model.config
        layers = tuple(layers)
        bad = [k for k in layers if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < c.num_layers]
        if bad or not layers or len(set(layers)) != len(layers) or list(layers) != sorted(layers):
            raise GatingError(f"exit layers {list(layers)!r} invalid for a {c.num_layers}-layer decoder; "
                              f"give increasing layer counts in 1..{c.num_layers - 1}")
        shortlist = torch.as_tensor(shortlist, dtype=torch.long)
        if shortlist.dim() != 1 or shortlist.numel() < 2 or int(shortlist.min()) < 0 \
                or int(shortlist.max()) >= c.vocab or shortlist.unique().numel() != shortlist.numel():
            raise GatingError(f"shortlist must be >= 2 distinct token ids in [0, {c.vocab - 1}]")
        self.config = c
        self.layers = layers
        self.heads = nn.ModuleList(TokenExitHead(model.norm, c.hidden) for _ in layers)
        self.register_buffer("shortlist", shortlist)
        # the shortlist's rows of the frozen output matrix (not saved: taken from the model)
        self.register_buffer("out_weight", model.lm_head.weight.detach()[shortlist].clone(), persistent=False)
        self.gates = nn.ModuleDict()  # "learned" -> ModuleList of LearnedGate, when fitted
        self.thresholds: dict[str, tuple[float, ...]] = {}
        self.single: dict[str, tuple[float, ...]] = {}
        self.lossy: dict[str, tuple[float, ...]] = {}
        self.calibration: dict[str, Any] = {}
        self.report: dict[str, Any] = {}

    @property
    def num_exits(self) -> int:
        return len(self.layers)

    def gate_names(self) -> tuple[str, ...]:
        """The gates available: ``max_softmax``, ``entropy`` and ``learned`` once fitted."""
        return ("max_softmax", "entropy") + (("learned",) if "learned" in self.gates else ())

    def check_gate(self, gate: str) -> str:
        if gate not in self.gate_names():
            raise GatingError(f"unknown token gate {gate!r}; valid: {', '.join(self.gate_names())}")
        return gate

    def head_logits(self, j: int, h: torch.Tensor) -> torch.Tensor:
        """Exit ``j``'s logits over the shortlist for hidden states ``(..., hidden)``."""
        return self.heads[j](h, self.out_weight)

    def tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """Token ids of the shortlist logits' argmax."""
        return self.shortlist[logits.argmax(-1)]

    def scores(self, gate: str, j: int, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Gate ``gate``'s confidence at exit ``j`` (higher: more likely to agree), ``(batch,)``."""
        if gate == "max_softmax":
            return logits.float().softmax(-1).amax(-1)
        if gate == "entropy":
            p = logits.float().log_softmax(-1)
            return (p.exp() * p).sum(-1)  # minus the entropy
        if gate == "learned" and "learned" in self.gates:
            return self.gates["learned"][j].logit(h, logits)
        raise GatingError(f"unknown token gate {gate!r}; valid: {', '.join(self.gate_names())}")

    def extra_repr(self) -> str:
        return f"layers={self.layers}, shortlist={self.shortlist.numel()}, gates={self.gate_names()}"


# ------------------------------------------------------------------ text
def fortune_prompts(tokenizer: Any, split: str, n: int, tokens: int, root: str | None = None) -> list[list[int]]:
    """``n`` prompts of exactly ``tokens`` token ids cut from the English fortunes of ``split``.

    Fortunes of at least ``tokens`` tokens, in a fixed order (by a hash of the text); a
    fortune belongs to one split only (:func:`graphs.textdata.split_of`).

    Raises:
        graphs.datasets.DatasetError: the fortune files are not installed, or too few.

    Example:
        >>> class Bytes:  # any tokenizer with encode()
        ...     def encode(self, text): return list(text.encode())
        >>> fortune_prompts(Bytes(), "val", 2, 16, root="/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        graphs.datasets.DatasetError: the English fortune files are not installed ...
    """
    from graphs.textdata import DatasetError, _hash, language_files, normalise, read_fortunes, split_of

    if split not in SPLITS:
        raise GatingError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    files = language_files("en", root)
    if not files:
        raise DatasetError("the English fortune files are not installed (Debian package 'fortunes'; "
                           "`make data` installs it, or set HETSCHED_FORTUNES)")
    texts = sorted({normalise(e) for f in files for e in read_fortunes(f)}, key=lambda t: _hash(t, "tokexit"))
    out = []
    for t in texts:
        if split_of(t) != split or len(t) < 3 * tokens:
            continue
        ids = tokenizer.encode(t)
        if len(ids) >= tokens:
            out.append(ids[:tokens])
            if len(out) == n:
                return out
    raise DatasetError(f"only {len(out)} English fortunes of the {split} split have {tokens} tokens; "
                       f"{n} asked")


@torch.no_grad()
def greedy_continue(model: nn.Module, prompts: Sequence[Sequence[int]], new_tokens: int,
                    batch: int = 16) -> list[list[int]]:
    """The full model's greedy continuation of each prompt (batched, with KV caches).

    Prompts of one batch must have the same length (they are prefilled together).

    Example:
        >>> from graphs.decoding import generate_local
        >>> from graphs.models import decoder
        >>> m = decoder("tiny-llama")
        >>> out = greedy_continue(m, [[1, 2, 3], [4, 5, 6]], 5)
        >>> out == [generate_local(m, [1, 2, 3], 5), generate_local(m, [4, 5, 6], 5)]
        True
    """
    from graphs.decoding import DecoderShard, block_names

    shard = DecoderShard(model, 0, len(block_names(model.config)))
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch):
        group = [list(p) for p in prompts[i:i + batch]]
        if len({len(p) for p in group}) != 1:
            raise GatingError("greedy_continue batches prompts of equal length; got lengths "
                              f"{sorted({len(p) for p in group})}")
        caches = [shard.new_cache(len(group[0]) + new_tokens) for _ in group]
        x = torch.tensor(group, dtype=torch.long)
        cont: list[list[int]] = [[] for _ in group]
        for _ in range(new_tokens):
            tok = shard(x, caches).argmax(-1)
            for r, t in zip(cont, tok.tolist()):
                r.append(t)
            x = tok[:, None]
        out.extend(cont)
    return out


@dataclass
class TokenData:
    """Per position of some text: the hidden state after each exit layer, the full model's
    final normed hidden state and next token, whether the position is a generated one
    (``decode``: it predicts a token of the model's own continuation), and its sequence.

    Example:
        >>> d = TokenData(torch.zeros(4, 2, 8), torch.zeros(4, 8), torch.zeros(4, dtype=torch.long),
        ...               torch.tensor([False, True, True, True]), torch.tensor([0, 0, 1, 1]))
        >>> d.n, d.subset(d.decode).n
        (4, 3)
    """

    hidden: torch.Tensor  # (N, exits, hidden)
    final: torch.Tensor  # (N, hidden), after the final norm
    teacher: torch.Tensor  # (N,) the full model's greedy next token
    decode: torch.Tensor  # (N,) bool
    seq: torch.Tensor  # (N,) sequence index

    @property
    def n(self) -> int:
        return int(self.teacher.shape[0])

    def subset(self, mask: torch.Tensor) -> "TokenData":
        return TokenData(self.hidden[mask], self.final[mask], self.teacher[mask], self.decode[mask], self.seq[mask])


@torch.no_grad()
def collect(model: nn.Module, sequences: Sequence[Sequence[int]], prompt_len: int, layers: Sequence[int],
            batch: int = 16) -> TokenData:
    """Run the full model over ``sequences`` (prompt + continuation, equal lengths) and keep,
    per position, what :class:`TokenData` holds.

    Example:
        >>> from graphs.models import decoder
        >>> m = decoder("tiny-llama")
        >>> d = collect(m, [[1, 2, 3, 4], [5, 6, 7, 8]], prompt_len=2, layers=[1])
        >>> d.n, tuple(d.hidden.shape), d.decode.tolist()[:4]
        (8, (8, 1, 64), [False, True, True, True])
        >>> bool((d.teacher == m(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])).argmax(-1).reshape(-1)).all())
        True
    """
    hs: dict[int, torch.Tensor] = {}
    hooks = [model.layers[k - 1].register_forward_hook(lambda _m, _i, o, k=k: hs.__setitem__(k, o))
             for k in layers]
    hooks.append(model.norm.register_forward_hook(lambda _m, _i, o: hs.__setitem__(-1, o)))
    parts = []
    try:
        for i in range(0, len(sequences), batch):
            x = torch.tensor([list(s) for s in sequences[i:i + batch]], dtype=torch.long)
            logits = model(x)
            b, t = x.shape
            parts.append((torch.stack([hs[k] for k in layers], 2).reshape(b * t, len(layers), -1),
                          hs[-1].reshape(b * t, -1), logits.argmax(-1).reshape(-1),
                          (torch.arange(t) >= prompt_len - 1).repeat(b),
                          (torch.arange(b) + i).repeat_interleave(t)))
    finally:
        for h in hooks:
            h.remove()
    return TokenData(*(torch.cat(p) for p in zip(*parts)))


# ------------------------------------------------------------------ costs
def token_costs(config: Any, layers: Sequence[int], shortlist: int, context: int = 64) -> dict[str, float]:
    """FLOPs of one decode token's pieces (batch 1 at ``context``): ``layer`` (one decoder
    layer), ``head`` (an exit head), ``gate`` (a learned gate, about), ``kv_fill`` (the keys
    and values of one skipped layer from a copied hidden state), ``lm_head``, ``full`` (every
    layer and the lm_head), and ``exit`` / ``cascade``: the cost of a token leaving at each
    exit alone / in the cascade of all exits, then the full model's (with the heads it ran).

    Example:
        >>> from graphs.models import get_config
        >>> c = token_costs(get_config("smollm2-135m"), (8, 15, 22), 8192)
        >>> round(c["lm_head"] / c["layer"], 1), len(c["cascade"])
        (7.8, 4)
    """
    from graphs.decoding import block_work

    c = config
    layer = float(block_work(c, "layers.0", batch=1, new_tokens=1, context=context)["flops"])
    lm_head = 2.0 * c.hidden * c.vocab
    head = 2.0 * c.hidden * c.hidden + 2.0 * c.hidden * shortlist
    gate = 2.0 * ((c.hidden + 67) * 64 + 64 * 64 + 64) + 4.0 * shortlist
    kv_fill = 2.0 * c.hidden * 2 * c.num_kv_heads * c.head_dim
    L = c.num_layers
    full = L * layer + lm_head
    cascade, ran = [], 0.0
    for k in layers:
        ran += head + gate
        cascade.append(k * layer + ran + (L - k) * kv_fill)
    cascade.append(full + ran)
    single = [[k * layer + head + gate + (L - k) * kv_fill, full + head + gate] for k in layers]
    return dict(layer=layer, head=head, gate=gate, kv_fill=kv_fill, lm_head=lm_head, full=full,
                cascade=cascade, exit=single)


def exit_compute(mode: str, counts: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """Summarise the counters of exit decoding (:func:`graphs.exit_decoding.ExitStepInfo`,
    summed) in ``mode``: tokens, exit rate per exit layer (lossy), draft acceptance
    (speculative), tokens per full-model pass (a pass of the deep layers) and the share of
    decode FLOPs saved against decoding the same tokens without exits (negative: more).

    ``settings``: ``layers``, ``costs`` (:func:`token_costs`), ``exit_index`` (speculative).

    Example:
        >>> from graphs.models import get_config
        >>> st = dict(layers=(1,), costs=token_costs(get_config("tiny-llama"), (1,), 64))
        >>> r = exit_compute("lossy", dict(tokens=10, exits=[4], evaluated=[10]), st)
        >>> r["exit_rate"], r["tokens_per_full_pass"]
        ({1: 0.4}, 1.667)
    """
    c = settings["costs"]
    layers = tuple(settings["layers"])
    tokens = int(counts.get("tokens", 0))
    out: dict[str, Any] = dict(tokens=tokens)
    if tokens == 0:
        return out
    full = c["full"]
    L = round((c["full"] - c["lm_head"]) / c["layer"])
    if mode == "lossy":
        exits, ev = list(counts.get("exits", [])), list(counts.get("evaluated", []))
        flops = sum(n * (c["head"] + c["gate"]) for n in ev)
        flops += sum(n * (k * c["layer"] + (L - k) * c["kv_fill"]) for n, k in zip(exits, layers))
        passes = tokens - sum(exits)
        flops += passes * full
        out.update(exit_rate={k: round(n / tokens, 4) for k, n in zip(layers, exits)})
    else:
        k = layers[int(settings.get("exit_index", 0))]
        flops = counts.get("draft_passes", 0) * (k * c["layer"] + c["head"] + c["gate"])
        flops += counts.get("verify_positions", 0) * ((L - k) * c["layer"] + c["lm_head"])
        passes = counts.get("verify_rows", 0)
        drafted = counts.get("drafted", 0)
        out.update(drafted=drafted, accepted=counts.get("accepted", 0),
                   draft_acceptance=round(counts.get("accepted", 0) / drafted, 4) if drafted else None)
    out.update(full_passes=passes, tokens_per_full_pass=round(tokens / passes, 3) if passes else None,
               compute_saved=round(1 - flops / (tokens * full), 4))
    return out


# ------------------------------------------------------------------ training
def _shortlist(teacher: torch.Tensor, size: int, vocab: int) -> torch.Tensor:
    counts = torch.bincount(teacher, minlength=vocab)
    order = torch.argsort(counts, descending=True, stable=True)
    return order[:min(size, vocab)].sort().values


def _fit_heads(ex: TokenExits, data: TokenData, cfg: TokenExitConfig) -> list[float]:
    W = ex.out_weight
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam([p for h in ex.heads for p in h.parameters()], lr=cfg.lr)
    losses = []
    n = data.n
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            with torch.no_grad():
                target = F.linear(data.final[idx], W).softmax(-1)  # renormalised over the shortlist
            loss = 0.0
            for j, head in enumerate(ex.heads):
                logp = head(data.hidden[idx, j], W).log_softmax(-1)
                loss = loss - (target * logp).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        losses.append(tot / n / ex.num_exits)
    return losses


@torch.no_grad()
def exit_outputs(ex: TokenExits, data: TokenData, gate: str, chunk: int = 4096
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores ``(exits, N)``, agreement ``(exits, N)`` bool) of every exit on ``data``.

    Example:
        >>> from graphs.models import decoder
        >>> m = decoder("tiny-llama")
        >>> ex = TokenExits(m, layers=[1], shortlist=torch.arange(256))
        >>> s, a = exit_outputs(ex, collect(m, [[1, 2, 3, 4]], 2, [1]), "max_softmax")
        >>> tuple(s.shape), a.dtype
        ((1, 4), torch.bool)
    """
    scores, agree = [], []
    for j in range(ex.num_exits):
        s, a = [], []
        for i in range(0, data.n, chunk):
            h = data.hidden[i:i + chunk, j]
            lg = ex.head_logits(j, h)
            a.append(ex.tokens(lg) == data.teacher[i:i + chunk])
            s.append(ex.scores(gate, j, h, lg) if gate != "oracle" else a[-1].float())
        scores.append(torch.cat(s))
        agree.append(torch.cat(a))
    return torch.stack(scores), torch.stack(agree)


def _fit_gates(ex: TokenExits, data: TokenData, cfg: TokenExitConfig) -> None:
    gates = nn.ModuleList()
    with torch.no_grad():
        lgs = [ex.head_logits(j, data.hidden[:, j]) for j in range(ex.num_exits)]
    for j in range(ex.num_exits):
        gate = LearnedGate(feature_dim=ex.config.hidden, num_classes=int(ex.shortlist.numel()))
        agree = (ex.tokens(lgs[j]) == data.teacher).float()
        gate.fit(data.hidden[:, j], lgs[j], None, agree=agree, seed=cfg.seed + j, epochs=20)
        gates.append(gate)
    ex.gates["learned"] = gates


def _calibrate(ex: TokenExits, data: TokenData, cfg: TokenExitConfig) -> None:
    costs = token_costs(ex.config, ex.layers, int(ex.shortlist.numel()))
    for gate in ex.gate_names():
        s, a = exit_outputs(ex, data, gate)
        losses = [(~x).long() for x in a]
        # the greedy path only: the token-exit results in docs/benchmarks.md were measured with it
        # (choosing between it and a shared threshold, calibrate_exits' default, is not yet measured here)
        cal = calibrate_exits(list(s), losses, cfg.budget, costs["cascade"], cfg.delta, grid=60, seed=cfg.seed,
                              sequences=("path",))
        ex.thresholds[gate] = tuple(float(t) for t in cal.thresholds)
        singles = [calibrate_threshold(s[j], losses[j], cfg.budget, cfg.delta) for j in range(ex.num_exits)]
        ex.single[gate] = tuple(float(c.threshold) for c in singles)
        ex.calibration[gate] = {"cascade": _cal_dict(cal), "single": [_cal_dict(c) for c in singles]}


@torch.no_grad()
def lossy_disagreement(model: nn.Module, ex: TokenExits, prompts: Sequence[Sequence[int]], new_tokens: int,
                       gate: str, thresholds: Sequence[float], batch: int = 32) -> tuple[torch.Tensor, float]:
    """Generate from ``prompts`` (equal lengths) in lossy mode and return, per generated
    token after the first (which the prefill's full pass makes), 1 where it differs from
    the full model's greedy token after the same prefix, and the share of those tokens that
    left by an exit.

    Example:
        >>> from graphs.models import decoder
        >>> m = decoder("tiny-llama")
        >>> ex = TokenExits(m, layers=[1], shortlist=torch.arange(256))
        >>> loss, rate = lossy_disagreement(m, ex, [[1, 2, 3], [4, 5, 6]], 6, "max_softmax", [float("inf")])
        >>> int(loss.sum()), len(loss), rate  # nothing exits: the full model's own tokens
        (0, 10, 0.0)
    """
    from graphs.exit_decoding import ExitDecoderShard, ExitStepInfo

    shard = ExitDecoderShard(model, ex)
    losses, exited, total = [], 0, 0
    for i in range(0, len(prompts), batch):
        group = [list(p) for p in prompts[i:i + batch]]
        caches = [shard.new_cache(len(group[0]) + new_tokens) for _ in group]
        tok = shard(torch.tensor(group, dtype=torch.long), caches).argmax(-1)
        out = [tok]
        info = ExitStepInfo(ex.num_exits)
        for _ in range(new_tokens - 1):
            tok = shard.exit_step(tok, caches, gate, list(thresholds), info)
            out.append(tok)
        gen = torch.stack(out, 1)  # (B, new_tokens)
        seq = torch.cat([torch.tensor(group, dtype=torch.long), gen], 1)
        full = model(seq)[:, len(group[0]):-1].argmax(-1)  # the full model after each emitted prefix
        losses.append((full != gen[:, 1:]).long().reshape(-1))
        exited += sum(info["exits"])
        total += gen[:, 1:].numel()
    return torch.cat(losses), exited / max(total, 1)


def _calibrate_lossy(ex: TokenExits, model: nn.Module, prompts: list, val: TokenData, cfg: TokenExitConfig,
                     say: Any) -> None:
    """Certify the cascade's thresholds on *generated* text (what lossy decoding sees: after an
    exit the skipped layers' keys and values are copied, so later tokens' agreement can fall
    below the teacher-forced one). Learn-then-Test: a seeded 30 % of the val prompts proposes
    candidate vectors (teacher-forced calibration at 1/8, 1/4, 1/2 and 1 x the budget, from
    the most conservative); the other prompts generate with each candidate in turn, and a
    candidate is certified when the Clopper-Pearson bound on its generated disagreement is
    within the budget; the sequence stops at the first that is not."""
    costs = token_costs(ex.config, ex.layers, int(ex.shortlist.numel()))
    n = len(prompts)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7)).tolist()
    learn, test = sorted(perm[:max(1, int(0.3 * n))]), sorted(perm[max(1, int(0.3 * n)):])
    part = val.subset(torch.isin(val.seq, torch.tensor(learn)) & val.decode)
    test_prompts = [prompts[i] for i in test]
    for gate in ex.gate_names():
        s, a = exit_outputs(ex, part, gate)
        losses = [(~x).long() for x in a]
        cands = []
        for f in (0.125, 0.25, 0.5, 1.0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CalibrationWarning)
                c = calibrate_exits(list(s), losses, cfg.budget * f, costs["cascade"], cfg.delta, grid=60,
                                    seed=cfg.seed, sequences=("path",))
            v = tuple(float(t) for t in c.thresholds)
            if c.certified and v not in cands:
                cands.append(v)
        best, record = tuple(math.inf for _ in ex.layers), dict(n=0, risk=None, ucb=None, exit_rate=0.0,
                                                                  candidates=len(cands), tested=0, prompts=test)
        for v in cands:
            loss, rate = lossy_disagreement(model, ex, test_prompts, cfg.new_tokens, gate, v, cfg.gen_batch * 2)
            ucb = upper_bound(int(loss.sum()), len(loss), cfg.delta)
            record["tested"] += 1
            if ucb > cfg.budget:
                break
            best = v
            record.update(n=len(loss), risk=float(loss.float().mean()), ucb=ucb, exit_rate=rate)
        ex.lossy[gate] = best
        ex.calibration[gate]["lossy"] = record
        got = "nothing" if record["ucb"] is None else f"disagreement <= {record['ucb']:.4f}"
        say(f"lossy ({gate}): {record['tested']} of {len(cands)} candidates generated, certified {got}")


def _cal_dict(c: Calibration) -> dict:
    d = {k: v for k, v in asdict(c).items() if isinstance(v, (int, float, str, bool, tuple, list, type(None)))}
    return d


def train_token_exits(model: nn.Module, prompts: Mapping[str, Sequence[Sequence[int]]],
                      cfg: TokenExitConfig = TokenExitConfig(), log: Any = None) -> TokenExits:
    """Build and train :class:`TokenExits` for ``model`` (frozen) on the ``train`` prompts,
    fit the learned gates on ``gate``, calibrate on ``val``; ``test`` is not touched.

    ``prompts``: split -> prompts (lists of token ids of ``cfg.prompt_tokens`` each). Each
    prompt is continued greedily by the model (``cfg.new_tokens``); every position of
    prompt and continuation trains the heads, the continuation's positions (what the model
    sees while generating) fit the gates and calibrate them. ``report`` keeps the timings,
    the heads' loss per epoch and the shortlist's coverage.

    Example:
        >>> from graphs.models import decoder
        >>> m = decoder("tiny-llama")
        >>> g = torch.Generator().manual_seed(0)
        >>> cfg = TokenExitConfig(layers=(1,), shortlist=64, prompt_tokens=4, new_tokens=4, epochs=1, budget=0.5,
        ...                       prompts=(("train", 8), ("gate", 8), ("val", 16)))
        >>> prompts = {s: torch.randint(0, 256, (n, 4), generator=g).tolist() for s, n in cfg.prompts}
        >>> ex = train_token_exits(m, prompts, cfg)
        >>> ex.gate_names(), len(ex.thresholds["learned"]), len(ex.report["head_loss"])
        (('max_softmax', 'entropy', 'learned'), 1, 1)
    """
    say = log or (lambda *_: None)
    layers = tuple(cfg.layers) or default_layers(model.config.num_layers)
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    data = {}
    for split in ("train", "gate", "val"):
        ps = list(prompts.get(split, ()))
        if not ps:
            raise GatingError(f"train_token_exits needs prompts of the {split!r} split")
        cont = greedy_continue(model, ps, cfg.new_tokens, cfg.gen_batch)
        data[split] = collect(model, [p + c for p, c in zip(ps, cont)], cfg.prompt_tokens, layers, cfg.gen_batch)
        say(f"{split}: {len(ps)} prompts, {data[split].n} positions ({time.perf_counter() - t0:.0f} s)")
    t1 = time.perf_counter()
    short = _shortlist(data["train"].teacher, cfg.shortlist, model.config.vocab)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        ex = TokenExits(model, layers, short)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        losses = _fit_heads(ex, data["train"], cfg)
    t2 = time.perf_counter()
    say(f"heads: loss per epoch {[round(x, 3) for x in losses]} ({t2 - t1:.0f} s)")
    ex.eval()
    _fit_gates(ex, data["gate"].subset(data["gate"].decode), cfg)
    val = data["val"].subset(data["val"].decode)
    _calibrate(ex, val, cfg)
    _calibrate_lossy(ex, model, list(prompts["val"]), data["val"], cfg, say)
    t3 = time.perf_counter()
    cover = float(torch.isin(val.teacher, ex.shortlist).float().mean())
    ex.report = dict(collect_s=t1 - t0, heads_s=t2 - t1, gates_s=t3 - t2, head_loss=losses,
                     shortlist_coverage_val=cover, positions={k: v.n for k, v in data.items()},
                     config=asdict(cfg))
    say(f"gates + calibration ({t3 - t2:.0f} s); shortlist covers {cover:.1%} of val tokens")
    return ex


def load_or_train_token_exits(model: nn.Module, prompts: Mapping[str, Sequence[Sequence[int]]],
                              cfg: TokenExitConfig = TokenExitConfig(), cache_dir: str | None = None,
                              log: Any = None) -> TokenExits:
    """:func:`train_token_exits`, cached under a hash of :data:`CACHE_VERSION`, the config, the
    model's weights and the prompts (``cache_dir``, default ``.cache/token_exit``).

    Example:
        >>> import tempfile
        >>> from graphs.models import decoder
        >>> m, d = decoder("tiny-llama"), tempfile.mkdtemp()
        >>> cfg = TokenExitConfig(layers=(1,), shortlist=64, prompt_tokens=4, new_tokens=4, epochs=1, budget=0.5,
        ...                       prompts=(("train", 8), ("gate", 8), ("val", 16)))
        >>> prompts = {s: [[(7 * i + j) % 256 for j in range(4)] for i in range(n)] for s, n in cfg.prompts}
        >>> a = load_or_train_token_exits(m, prompts, cfg, cache_dir=d)
        >>> b = load_or_train_token_exits(m, prompts, cfg, cache_dir=d)  # loaded, not trained
        >>> "cached" in b.report, a.thresholds == b.thresholds
        (True, True)
    """
    from .train import fingerprint

    cache_dir = cache_dir or DEFAULT_CACHE
    key = fingerprint(CACHE_VERSION, repr(asdict(cfg)), model,
                      repr({k: [list(p) for p in v] for k, v in sorted(prompts.items())}))
    path = os.path.join(cache_dir, f"{model.config.name}-{key}.pt")
    layers = tuple(cfg.layers) or default_layers(model.config.num_layers)
    if os.path.exists(path):
        blob = torch.load(path, weights_only=False)
        ex = TokenExits(model, layers, blob["shortlist"])
        if blob.get("learned"):
            ex.gates["learned"] = nn.ModuleList(
                LearnedGate(feature_dim=model.config.hidden, num_classes=int(ex.shortlist.numel()))
                for _ in layers)
        ex.load_state_dict(blob["state_dict"])
        ex.thresholds, ex.single, ex.lossy = blob["thresholds"], blob["single"], blob["lossy"]
        ex.calibration, ex.report = blob["calibration"], dict(blob["report"], cached=path)
        return ex.eval()
    ex = train_token_exits(model, prompts, cfg, log)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(dict(shortlist=ex.shortlist, state_dict=ex.state_dict(), learned="learned" in ex.gates,
                    thresholds=ex.thresholds, single=ex.single, lossy=ex.lossy, calibration=ex.calibration,
                    report=ex.report), tmp)
    os.replace(tmp, path)
    return ex


# ------------------------------------------------------------------ evaluation
def evaluate_token_exits(ex: TokenExits, data: TokenData, gate: str, thresholds: Sequence[float],
                         exits: Sequence[int] | None = None, *, outputs: tuple | None = None,
                         rows: torch.Tensor | None = None) -> dict[str, float]:
    """Teacher-forced: the share of ``data``'s positions whose token a cascade of ``exits``
    (default all) at ``thresholds`` produces that equals the full model's, the exit rate
    per exit, and the FLOPs saved against the model without exits (heads and gates run,
    and the skipped layers' KV fill, counted).

    ``gate="oracle"`` exits wherever the exit's token is right (thresholds ignored): the
    ceiling for that set of exits. ``outputs``: :func:`exit_outputs` of ``data`` for this
    gate, computed once for many evaluations; ``rows``: evaluate only these positions.

    Example:
        >>> from graphs.models import decoder
        >>> m = decoder("tiny-llama")
        >>> ex = TokenExits(m, layers=[1], shortlist=torch.arange(256))
        >>> d = TokenData(torch.randn(5, 1, 64), torch.randn(5, 64), torch.arange(5), torch.ones(5, dtype=torch.bool),
        ...               torch.zeros(5, dtype=torch.long))
        >>> r = evaluate_token_exits(ex, d, "max_softmax", [float("inf")])
        >>> r["agreement"], r["exit_rate"], r["saved"] < 0  # nothing exits; the head still ran
        (1.0, 0.0, True)
    """
    exits = list(range(ex.num_exits)) if exits is None else list(exits)
    s, a = exit_outputs(ex, data, gate) if outputs is None else outputs
    s, a = s[exits], a[exits]
    if rows is not None:
        s, a = s[:, rows], a[:, rows]
    layers = [ex.layers[j] for j in exits]
    costs = token_costs(ex.config, layers, int(ex.shortlist.numel()))
    t = torch.tensor([0.5] * len(exits) if gate == "oracle" else list(thresholds), dtype=s.dtype)[:, None]
    passed = s >= t
    first = torch.where(passed.any(0), passed.float().argmax(0), torch.tensor(len(exits)))
    n = int(s.shape[1])
    agree_rows = torch.cat([a, torch.ones(1, n, dtype=torch.bool)])
    agreement = float(agree_rows[first, torch.arange(n)].float().mean())
    cost = torch.tensor(costs["cascade"], dtype=torch.float64)[first].mean()
    return dict(agreement=agreement, saved=float(1 - cost / costs["full"]),
                exit_rate=float((first < len(exits)).float().mean()),
                per_exit=[float((first == j).float().mean()) for j in range(len(exits))])
