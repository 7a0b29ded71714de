"""Replaying token-exit decoding on placed devices in virtual time (tok/s, tok/J).

The runtime runs exit decoding on one real device (:mod:`graphs.exit_decoding`); to see
what it would give on an edge NPU beside a GPU before either exists, :func:`replay_exits`
prices a *trace* of exit decisions with the cost model: the shallow path (embedding,
layers ``0..k-1`` and the exit head with its gate) on ``shallow_device``, the deep layers,
the norm and ``lm_head`` on ``deep_device``, the hidden state crossing between them at the
cost model's transfer time. Every piece is priced as a simulated executor prices an exit call's work
(:func:`executors.simulated.price_exit_work`). A device runs one thing at a time; an operation starts when its input has
arrived and its device is free (batch 1: the chain is sequential, except that the deep
device's KV fill after an exit overlaps the next token's shallow pass).

Traces: ``"full"``: ``n`` tokens through the same chain without exits; ``"lossy"``: per token the exit taken (0: the exit, 1:
the full model); ``"speculative"``: per round ``(shallow passes, drafts, accepted)``, as
:meth:`graphs.exit_decoding.ExitDecoderShard.speculate` records them. A trace comes from
a real generation (then the replay is a simulation of that run) or from teacher-forced
decisions on held-out text (:func:`predict_trace`; a prediction).

Example:
    >>> from executors import profiles
    >>> from executors.devices import Cluster
    >>> from graphs.models import get_config
    >>> from policies.roofline import RooflineCostModel
    >>> cm = RooflineCostModel(Cluster.from_specs([profiles.load("atlas-200i-a2", name="sim:npu")]))
    >>> c = get_config("tiny-llama")
    >>> full = replay_exits(c, cm, "sim:npu", "sim:npu", 1, 64, "full", 8, context=16)
    >>> lossy = replay_exits(c, cm, "sim:npu", "sim:npu", 1, 64, "lossy", [0] * 8, context=16)
    >>> full.tokens == lossy.tokens == 8, lossy.time < full.time
    (True, True)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["ExitReplay", "replay_exits", "predict_trace"]


@dataclass(frozen=True)
class ExitReplay:
    """What a replay gives: tokens, seconds, busy seconds per device, joules.

    Example:
        >>> r = ExitReplay(tokens=10, time=0.5, busy={"sim:npu": 0.5}, energy=2.0)
        >>> r.tokens_per_s, r.tokens_per_joule
        (20.0, 5.0)
    """

    tokens: int
    time: float
    busy: Mapping[str, float]
    energy: float | None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.time if self.time > 0 else float("nan")

    @property
    def tokens_per_joule(self) -> float | None:
        return None if not self.energy else self.tokens / self.energy


def replay_exits(config: Any, cost_model: Any, shallow_device: str, deep_device: str, exit_layer: int,
                 shortlist: int, mode: str, trace: Any, *, context: int = 64, itemsize: int = 2) -> ExitReplay:
    """Replay ``trace`` (see the module docstring) of ``mode`` with the exit after
    ``exit_layer`` layers and a ``shortlist``-token head; ``context``: the mean cached
    positions of a step."""
    from executors.simulated import price_exit_work

    c = config
    k, L, h = int(exit_layer), c.num_layers, c.hidden

    def price(work: list, device: str) -> float:
        return price_exit_work(cost_model, device, c, work, context, shortlist, itemsize)

    shallow = price([("embed", 1), ("layers", 0, k, 1, 1), ("head", 1)], shallow_device)
    fill = price([("fill", L - k, 1)], deep_device)
    front = price([("embed", 1), ("layers", 0, k, 1, 1)], shallow_device)  # no exit head: plain decoding
    deep_t: dict[int, float] = {}

    def deep(t: int) -> float:
        if t not in deep_t:
            deep_t[t] = price([("layers", k, L, 1, t), ("lm_head", t)], deep_device)
        return deep_t[t]

    def xfer(nbytes: float, src: str, dst: str) -> float:
        return 0.0 if src == dst else float(cost_model.transfer_time(nbytes, src, dst))

    busy = dict.fromkeys((shallow_device, deep_device), 0.0)
    free = dict.fromkeys((shallow_device, deep_device), 0.0)
    now = 0.0
    tokens = 0

    def run(dev: str, dur: float, ready: float) -> float:
        start = max(ready, free[dev])
        free[dev] = start + dur
        busy[dev] += dur
        return start + dur

    if mode == "full":  # the same chain without exits
        for _ in range(int(trace)):
            now = run(shallow_device, front, now)
            t = run(deep_device, deep(1), now + xfer(h * itemsize, shallow_device, deep_device))
            now = t + xfer(8, deep_device, shallow_device)
            tokens += 1
    elif mode == "lossy":
        for e in trace:
            now = run(shallow_device, shallow, now)
            if int(e) == 0:  # exited: the deep layers' KV fill overlaps the next token
                run(deep_device, fill, now + xfer(h * itemsize, shallow_device, deep_device))
            else:
                t = run(deep_device, deep(1), now + xfer(h * itemsize, shallow_device, deep_device))
                now = t + xfer(8, deep_device, shallow_device)
            tokens += 1
    elif mode == "speculative":
        for d, n, m in trace:
            for _ in range(int(d)):
                now = run(shallow_device, shallow, now)
            t = run(deep_device, deep(int(d)), now + xfer(int(d) * h * itemsize, shallow_device, deep_device))
            now = t + xfer(8 * int(d), deep_device, shallow_device)
            tokens += min(int(m) + 1, int(n))
    else:
        raise ValueError(f"unknown mode {mode!r}; valid: full, lossy, speculative")
    end = max([now, *free.values()])
    energy = None
    powers = {d: cost_model.power(d) for d in busy}
    if all(powers.values()):
        energy = sum(powers[d][0] * b + powers[d][1] * max(end - b, 0.0) for d, b in busy.items())
    return ExitReplay(tokens, end, dict(busy), energy)


def predict_trace(mode: str, scores: Sequence[float], agree: Sequence[bool], seq: Sequence[int],
                  threshold: float, max_draft: int = 6) -> list:
    """The trace teacher-forced decisions predict: positions of each sequence in order,
    ``scores`` (the gate's) and ``agree`` (the exit's token equals the full model's).
    Lossy: exit where the score reaches ``threshold``. Speculative: drafts continue while
    the score reaches it (at most ``max_draft``); a round's accepted drafts are the
    leading agreeing ones.

    Example:
        >>> predict_trace("lossy", [0.9, 0.1], [True, False], [0, 0], 0.5)
        [0, 1]
        >>> predict_trace("speculative", [0.9, 0.9, 0.1, 0.9], [True, True, False, True], [0, 0, 0, 0], 0.5)
        [(3, 3, 2), (1, 1, 1)]
    """
    s, a, q = np.asarray(scores, float), np.asarray(agree, bool), np.asarray(seq)
    if mode == "lossy":
        return [0 if x >= threshold else 1 for x in s]
    out = []
    for sid in np.unique(q):
        idx = np.nonzero(q == sid)[0]
        i = 0
        while i < len(idx):
            n = 0
            while i + n < len(idx) and n < max_draft:
                n += 1
                if s[idx[i + n - 1]] < threshold:
                    break
            ok = a[idx[i:i + n]]
            m = int(np.cumprod(ok).sum())
            out.append((n, n, m))
            i += min(m + 1, n)
    return out
