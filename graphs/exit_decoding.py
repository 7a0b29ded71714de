"""Decoding with token-level early exits: lossy (CALM-style) and lossless self-speculation.

:class:`ExitDecoderShard` is a :class:`graphs.decoding.DecoderShard` (KV caches per
sequence, batched steps, ragged lengths) that also carries the exit heads and gates of a
:class:`policies.gating.token_exit.TokenExits`. It is the whole decoder, or one of a chain
of shards (typically two: the *shallow path*, blocks up to an exit, on one device, and the
deep layers on another): every shard evaluates the exits inside its layers, and what
crosses to the next shard is an :class:`ExitState` or a :class:`DraftState`. Greedy only.

**Lossy exit** (:meth:`ExitDecoderShard.exit_part`; Schuster et al., "Confident Adaptive
Language Modeling", NeurIPS 2022). The token walks the layers; at each exit the head
proposes a token and the gate scores it; a token whose score reaches the exit's threshold
is emitted there and skips the deeper layers (an exit whose threshold is ``inf`` is not
evaluated at all). The skipped layers still need this position's keys and values for the
tokens after it: they are filled from the exited hidden state copied forward (CALM's state
propagation): layer ``j``'s key and value are ``k_proj``/``v_proj`` of
``input_layernorm_j(h_exit)``, rotated, one matrix product for all skipped layers of a
shard (the norms' weights folded into a stacked projection), a few percent of a layer. The
copy is an approximation: later tokens attend to keys the full model would have computed
differently, so the agreement measured while generating can be lower than the
teacher-forced agreement the calibration certified (the benchmark reports both).

**Self-speculation** (:meth:`ExitDecoderShard.draft_part` then
:meth:`ExitDecoderShard.verify_part`; Elhoushi et al., "LayerSkip", ACL 2024). The shallow
path (layers up to the draft exit and its head) drafts tokens one by one while the gate is
confident (at most ``max_draft``); the deep layers then verify every drafted position in
one pass over the hidden states the drafts left at the exit layer (the shallow layers'
keys and values of those positions are already the full model's: same tokens, same
weights), and the longest prefix of drafts equal to the full model's greedy tokens is kept,
plus the full model's token after it. The output is the full model's greedy output, token
for token (up to the float rounding of a ``T``-token pass against ``T`` one-token passes;
the tests check equality). A round with ``d`` drafts runs the deep layers on ``d``
positions (the last emitted token's and the first ``d - 1`` drafts') and emits
``min(accepted + 1, d)`` tokens: when all ``d`` drafts are right the last one is emitted
unprocessed and the next round starts from it.

**Cache lengths.** A round leaves drafted positions in the caches of the shards before the
last; every call may pass ``lengths`` (each sequence's confirmed positions: prompt +
tokens emitted - 1) and the shard cuts its caches back to them first. The last shard cuts
its own at once.

**Work.** Each call appends what it computed to ``info["work"]`` when given
(``("embed", rows)``, ``("layers", lo, hi, batch, T)``, ``("head", rows)``,
``("fill", layers, rows)``, ``("lm_head", rows)``): a simulated device prices it with its cost model.

Example:
    >>> import torch
    >>> from graphs.models import decoder
    >>> from graphs.decoding import generate_local
    >>> from policies.gating.token_exit import TokenExits
    >>> m = decoder("tiny-llama")
    >>> ex = TokenExits(m, layers=[1], shortlist=torch.arange(m.config.vocab))
    >>> shard = ExitDecoderShard(m, ex)
    >>> out, info = shard.generate([1, 2, 3], 12, mode="speculative", gate="max_softmax", threshold=0.0)
    >>> out == generate_local(m, [1, 2, 3], 12), info["rounds"] < 12
    (True, True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .decoding import DecoderShard, DecodingError, SequenceKV, _layer_step, block_names, check_prompt
from .models import _rotate_half

__all__ = ["ExitDecoderShard", "ExitState", "DraftState", "EXIT_MODES", "ExitStepInfo"]

#: Decode modes of :class:`ExitDecoderShard`: ``full`` (no exits), ``lossy``, ``speculative``.
EXIT_MODES = ("full", "lossy", "speculative")


def ExitStepInfo(num_exits: int) -> dict:
    """Counters one exit-decoding call returns (summed by the engine into the runtime's stats).

    Example:
        >>> sorted(ExitStepInfo(2))[:4]
        ['accepted', 'draft_passes', 'drafted', 'evaluated']
    """
    return dict(tokens=0, exits=[0] * num_exits, evaluated=[0] * num_exits, drafted=0, accepted=0, rounds=0,
                draft_passes=0, verify_positions=0, verify_rows=0)


@dataclass
class ExitState:
    """What a lossy step passes to the next shard: per sequence the hidden state
    ``(B, 1, hidden)`` (after this shard's layers, or at the exit it left by), the token it
    exited with (-1: none yet) and the exit's index (-1: none).

    Example:
        >>> s = ExitState(torch.zeros(2, 1, 4), torch.tensor([7, -1]), torch.tensor([0, -1]))
        >>> s.batch
        2
    """

    hidden: torch.Tensor
    tokens: torch.Tensor
    exit_at: torch.Tensor

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class DraftState:
    """What drafting passes to the shards that verify: the hidden states at the draft exit
    of the ``d`` positions ``(B, d, hidden)``, the drafts ``(B, d)``, how many of them
    count per sequence ``(B,)`` and the position each sequence's round started at.

    Example:
        >>> s = DraftState(torch.zeros(1, 3, 4), torch.tensor([[5, 6, 7]]), torch.tensor([2]), [10])
        >>> s.batch, s.d
        (1, 3)
    """

    hidden: torch.Tensor
    drafts: torch.Tensor
    n_draft: torch.Tensor
    starts: list

    @property
    def batch(self) -> int:
        return int(self.drafts.shape[0])

    @property
    def d(self) -> int:
        return int(self.drafts.shape[1])


class ExitDecoderShard(DecoderShard):
    """Blocks ``start..stop-1`` of a decoder with token exits (see the module docstring).

    Args:
        model: the :class:`graphs.models.Decoder`.
        exits: its :class:`policies.gating.token_exit.TokenExits` (heads, gates, thresholds).
        start, stop: the block range (default: the whole decoder).
        id: the shard id in an executor.

    Example:
        >>> import torch
        >>> from graphs.models import decoder
        >>> from policies.gating.token_exit import TokenExits
        >>> m = decoder("tiny-llama")
        >>> s = ExitDecoderShard(m, TokenExits(m, layers=[1], shortlist=torch.arange(16)))
        >>> s.blocks[0], s.blocks[-1], s.exit_layers, (s.lo, s.hi)
        ('embed_tokens', 'lm_head', (1,), (0, 2))
    """

    def __init__(self, model: Any, exits: Any, start: int = 0, stop: int | None = None, id: int = 0):
        n = len(block_names(model.config))
        super().__init__(model, start, n if stop is None else stop, id=id)
        if exits.config != model.config:
            raise DecodingError(f"the exits were built for config {exits.config.name!r}, the model is "
                                f"{model.config.name!r}")
        self.exits = exits
        self.exit_layers = tuple(exits.layers)
        c = self.config
        # the global layers hosted: [lo, hi)
        self.lo = self.layer_ids[0] if self.layer_ids else (0 if self.first else c.num_layers)
        self.hi = self.lo + len(self.layers)
        # per exit: the stacked k/v projections of this shard's layers after it, input norm folded in
        self._fill_w: list = []
        self._fill_b: list = []
        self._fill_from: list[int] = []
        for k in self.exit_layers:
            a = max(k, self.lo)
            ws, bs = [], []
            for j in range(a, self.hi):
                layer = self.layers[j - self.lo]
                att, w = layer.self_attn, layer.input_layernorm.weight
                for proj in (att.k_proj, att.v_proj):
                    ws.append(proj.weight * w[None, :])
                    bs.append(proj.bias if proj.bias is not None else torch.zeros(proj.out_features))
            self._fill_from.append(a)
            self._fill_w.append(torch.cat(ws).detach().contiguous() if ws else None)
            self._fill_b.append(torch.cat(bs).detach() if bs else None)
        self._eps = [layer.input_layernorm.eps or torch.finfo(torch.float32).eps for layer in self.layers]

    # ------------------------------------------------------------ pieces
    def _layers(self, x, a: int, b: int, caches: Sequence[SequenceKV], starts: Sequence[int], cos, sin,
                work: list | None):
        """Global layers ``a..b-1`` (hosted here) over ``x``."""
        for j in range(a, b):
            x = _layer_step(self.layers[j - self.lo], x, cos, sin, caches, j - self.lo, starts)
        if work is not None and b > a:
            work.append(("layers", a, b, int(x.shape[0]), int(x.shape[1])))
        return x

    def _fill(self, e: int, h: torch.Tensor, caches: Sequence[SequenceKV], starts: Sequence[int], cos, sin,
              work: list | None) -> None:
        """CALM state propagation: keys/values of this shard's layers after exit ``e`` from ``h`` ``(A, 1, hidden)``."""
        w = self._fill_w[e]
        if w is None or h.shape[0] == 0:
            return
        c = self.config
        a = self._fill_from[e]
        n = self.hi - a
        hn = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self._eps[a - self.lo])
        kv = F.linear(hn[:, 0], w, self._fill_b[e]).view(h.shape[0], n, 2, c.num_kv_heads, c.head_dim)
        k = kv[:, :, 0]  # (A, n, K, d)
        cs, sn = cos[:, 0, 0][:, None, None], sin[:, 0, 0][:, None, None]  # (A, 1, 1, d)
        k = k * cs + _rotate_half(k) * sn
        v = kv[:, :, 1]
        for i, (cache, s0) in enumerate(zip(caches, starts)):
            for j in range(n):
                cache.k[a - self.lo + j][:, s0] = k[i, j]
                cache.v[a - self.lo + j][:, s0] = v[i, j]
        if work is not None:
            work.append(("fill", n, int(h.shape[0])))

    def _head(self, x: torch.Tensor, work: list | None) -> torch.Tensor:
        if work is not None:
            work.append(("lm_head", int(x.shape[0] * x.shape[1])))
        return self.lm_head(self.norm(x))

    def _set_lengths(self, caches: Sequence[SequenceKV], lengths: Sequence[int] | None) -> None:
        if lengths is None:
            return
        for kv, n in zip(caches, lengths):
            n = int(n)
            if not 0 <= n <= kv.length:
                raise DecodingError(f"cache length {n} asked, the cache holds {kv.length} positions")
            kv.length = n

    def _exits_here(self) -> list[int]:
        return [e for e, k in enumerate(self.exit_layers) if self.lo < k <= self.hi]

    # ------------------------------------------------------------ lossy
    @torch.no_grad()
    def exit_part(self, x: torch.Tensor | ExitState, caches: Sequence[SequenceKV], gate: str,
                  thresholds: Sequence[float], info: dict | None = None, trace: list | None = None,
                  lengths: Sequence[int] | None = None) -> torch.Tensor | ExitState:
        """One lossy step of this shard for ``B`` sequences. The first shard takes the last
        tokens ``(B,)``, the others the previous shard's :class:`ExitState`; the last shard
        returns the next tokens ``(B,)``, the others an :class:`ExitState`. ``trace`` gets,
        per sequence, the index of the exit it left by (``len(exit_layers)``: none)."""
        work = None if info is None else info.setdefault("work", [])
        self._set_lengths(caches, lengths)
        starts = [kv.length for kv in caches]
        for kv in caches:
            kv.reserve(1)
        if self.first:
            b = int(x.shape[0])
            h = self.embed_tokens(x[:, None])
            if work is not None:
                work.append(("embed", b))
            out = torch.full((b,), -1, dtype=torch.long)
            where = torch.full((b,), -1, dtype=torch.long)
            hid = h.clone()
        else:
            b = x.batch
            out, where, hid = x.tokens.clone(), x.exit_at.clone(), x.hidden.clone()
            h = x.hidden
        cos, sin = self._rope(starts, 1, hid.device, hid.dtype)
        done = out >= 0
        for e in range(len(self.exit_layers)):  # sequences that left earlier: fill this shard's layers
            idx = (where == e).nonzero()[:, 0]
            if len(idx):
                self._fill(e, hid[idx], [caches[i] for i in idx.tolist()], [starts[i] for i in idx.tolist()],
                           cos[idx], sin[idx], work)
        rows = (~done).nonzero()[:, 0]
        x_ = h[rows]
        cs, st = [caches[i] for i in rows.tolist()], [starts[i] for i in rows.tolist()]
        cs_, sn_ = cos[rows], sin[rows]
        at = self.lo
        for e in self._exits_here():
            if not len(rows):
                break
            k = self.exit_layers[e]
            if not math.isfinite(thresholds[e]) and thresholds[e] > 0:
                continue  # an exit that never fires is not evaluated
            x_ = self._layers(x_, at, k, cs, st, cs_, sn_, work)
            at = k
            lg = self.exits.head_logits(e, x_[:, 0])
            ok = self.exits.scores(gate, e, x_[:, 0], lg) >= thresholds[e]
            if work is not None:
                work.append(("head", int(x_.shape[0])))
            if info is not None:
                info["evaluated"][e] += int(x_.shape[0])
            if bool(ok.any()):
                idx = ok.nonzero()[:, 0]
                out[rows[idx]] = self.exits.tokens(lg[idx])
                where[rows[idx]] = e
                hid[rows[idx]] = x_[idx]
                self._fill(e, x_[idx], [cs[i] for i in idx.tolist()], [st[i] for i in idx.tolist()], cs_[idx],
                           sn_[idx], work)
                if info is not None:
                    info["exits"][e] += int(idx.numel())
                keep = (~ok).nonzero()[:, 0]
                x_, rows, cs_, sn_ = x_[keep], rows[keep], cs_[keep], sn_[keep]
                cs = [cs[i] for i in keep.tolist()]
                st = [st[i] for i in keep.tolist()]
        if len(rows):
            x_ = self._layers(x_, at, self.hi, cs, st, cs_, sn_, work)
            if self.last:
                out[rows] = self._head(x_, work)[:, -1].argmax(-1)
            else:
                hid[rows] = x_
        for kv in caches:
            kv.length += 1
        if not self.last:
            return ExitState(hid, out, where)
        if trace is not None:
            n = len(self.exit_layers)
            trace.extend(int(w) if w >= 0 else n for w in where.tolist())
        return out

    def exit_step(self, tokens: torch.Tensor, caches: Sequence[SequenceKV], gate: str,
                  thresholds: Sequence[float], info: dict | None = None, trace: list | None = None,
                  lengths: Sequence[int] | None = None) -> torch.Tensor:
        """One lossy decode step on the whole decoder (this shard must be it): next tokens ``(B,)``."""
        if not (self.first and self.last):
            raise DecodingError("exit_step needs the whole decoder in one shard; chain exit_part across shards")
        return self.exit_part(tokens, caches, gate, thresholds, info, trace, lengths)

    # ------------------------------------------------------------ speculation
    @torch.no_grad()
    def draft_part(self, tokens: torch.Tensor, caches: Sequence[SequenceKV], gate: str, threshold: float,
                   max_draft: int, limits: Sequence[int], exit_index: int = 0, info: dict | None = None,
                   trace: list | None = None, lengths: Sequence[int] | None = None) -> DraftState | list[list[int]]:
        """Draft on the shallow path (this shard: the first, holding exit ``exit_index``); a
        shard that is the whole decoder verifies at once and returns each sequence's new
        tokens (1 to ``limits[i]`` of them), otherwise the :class:`DraftState` goes on."""
        if not self.first:
            raise DecodingError("draft_part runs on the first shard (the shallow path)")
        k = self.exit_layers[exit_index]
        if not self.lo <= k <= self.hi:
            raise DecodingError(f"the draft exit after layer {k} is not in this shard (layers {self.lo}..{self.hi - 1})")
        work = None if info is None else info.setdefault("work", [])
        self._set_lengths(caches, lengths)
        b = tokens.shape[0]
        starts = [kv.length for kv in caches]
        d_max = max(1, min(int(max_draft), max(int(x) for x in limits)))
        for kv in caches:
            kv.reserve(d_max)
        cur = tokens
        states, drafts = [], []
        n_draft = torch.full((b,), d_max, dtype=torch.long)
        alive = torch.ones(b, dtype=torch.bool)
        lim = torch.tensor([max(1, int(x)) for x in limits])
        for i in range(d_max):
            x = self.embed_tokens(cur[:, None])
            if work is not None:
                work.append(("embed", int(b)))
            pos = [s + i for s in starts]
            cos, sin = self._rope(pos, 1, x.device, x.dtype)
            x = self._layers(x, 0, k, caches, pos, cos, sin, work)
            states.append(x)
            lg = self.exits.head_logits(exit_index, x[:, 0])
            if work is not None:
                work.append(("head", int(b)))
            a = self.exits.tokens(lg)
            drafts.append(a)
            stop = alive & ((self.exits.scores(gate, exit_index, x[:, 0], lg) < threshold) | (lim <= i + 1))
            n_draft[stop] = i + 1
            alive &= ~stop
            if not bool(alive.any()):
                break
            cur = a
        for kv, s in zip(caches, starts):  # positions drafted so far in this shard's layers
            kv.length = s + len(states)
        state = DraftState(torch.cat(states, 1), torch.stack(drafts, 1), n_draft, starts)
        if info is not None:
            info["draft_passes"] += state.d * b
        if self.hi > k or self.last:
            return self.verify_part(state, caches, info=info, trace=trace, _from=k)
        return state

    @torch.no_grad()
    def verify_part(self, state: DraftState, caches: Sequence[SequenceKV], info: dict | None = None,
                    trace: list | None = None, lengths: Sequence[int] | None = None,
                    _from: int | None = None) -> DraftState | list[list[int]]:
        """Run this shard's layers (from ``_from``, default its first) over the drafted
        positions; the last shard picks the accepted prefix, cuts its caches back and returns
        each sequence's new tokens."""
        work = None if info is None else info.setdefault("work", [])
        a = self.lo if _from is None else _from
        if _from is None:
            self._set_lengths(caches, lengths)
            for kv in caches:
                kv.reserve(state.d)
        starts = state.starts
        d, b = state.d, state.batch
        cos, sin = self._rope(starts, d, state.hidden.device, state.hidden.dtype)
        h = self._layers(state.hidden, a, self.hi, caches, starts, cos, sin, work)
        for kv, s in zip(caches, starts):
            kv.length = s + d
        if not self.last:
            return DraftState(h, state.drafts, state.n_draft, starts)
        g = self._head(h, work).argmax(-1)  # (B, d): the full model's token after each position
        out: list[list[int]] = []
        for r in range(b):
            n = int(state.n_draft[r])
            m = int((state.drafts[r, :n] == g[r, :n]).long().cumprod(0).sum())
            toks = state.drafts[r, :m].tolist() + ([int(g[r, m])] if m < n else [])
            caches[r].length = starts[r] + len(toks)
            out.append(toks)
            if trace is not None:
                trace.append((d, n, m))
            if info is not None:
                info["drafted"] += n
                info["accepted"] += m
        if info is not None:
            info["rounds"] += 1
            info["verify_positions"] += d * b
            info["verify_rows"] += b
        return out

    def speculate(self, tokens: torch.Tensor, caches: Sequence[SequenceKV], gate: str, threshold: float,
                  max_draft: int, limits: Sequence[int], exit_index: int = 0, info: dict | None = None,
                  trace: list | None = None, lengths: Sequence[int] | None = None) -> list[list[int]]:
        """One self-speculative round on the whole decoder (this shard must be it); returns
        each sequence's new tokens. ``trace`` gets ``(positions verified, drafts, accepted)``."""
        if not (self.first and self.last):
            raise DecodingError("speculate needs the whole decoder in one shard; chain draft_part and "
                                "verify_part across shards")
        return self.draft_part(tokens, caches, gate, threshold, max_draft, limits, exit_index, info, trace, lengths)

    # ------------------------------------------------------------ whole sequences (local)
    @torch.no_grad()
    def generate(self, prompt: Sequence[int], max_new_tokens: int, mode: str = "lossy", gate: str = "learned",
                 threshold: float | Sequence[float] | None = None, max_draft: int = 6,
                 exit_index: int = 0, trace: list | None = None) -> tuple[list[int], dict]:
        """Greedy generation of one sequence in this process (the reference the runtime is
        tested against); returns ``(tokens, counters)``. This shard must be the whole decoder.

        ``threshold``: the per-exit thresholds (lossy) or the draft threshold (speculative);
        None takes the calibrated ones of the exits' ``gate`` (for lossy, those certified on
        generated text).
        """
        ids = check_prompt(self.config, prompt, max_new_tokens)
        if mode not in EXIT_MODES:
            raise DecodingError(f"unknown exit mode {mode!r}; valid: {', '.join(EXIT_MODES)}")
        self.exits.check_gate(gate)
        info = ExitStepInfo(len(self.exit_layers))
        kv = self.new_cache(len(ids) + max_new_tokens + max_draft)
        out = [int(self(torch.tensor([ids]), [kv]).argmax(-1))]
        while len(out) < max_new_tokens:
            last = torch.tensor([out[-1]])
            if mode == "full":
                out.append(int(self(last[:, None], [kv]).argmax(-1)))
            elif mode == "lossy":
                th = self.exits.lossy.get(gate, self.exits.thresholds[gate]) if threshold is None else threshold
                out.append(int(self.exit_step(last, [kv], gate, list(th), info, trace)[0]))
            else:
                th = self.exits.single[gate][exit_index] if threshold is None else float(threshold)
                out.extend(self.speculate(last, [kv], gate, th, max_draft, [max_new_tokens - len(out)],
                                          exit_index, info, trace)[0])
        info["tokens"] = len(out) - 1
        info.pop("work", None)
        return out[:max_new_tokens], info
