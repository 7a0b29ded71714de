"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

A :class:`SamplingParams` says how one sequence picks its tokens. :func:`sample` applies
the params of each sequence of a batch to its row of logits. Sampling is deterministic for
a given ``seed``: the random draw of step ``n`` of a sequence comes from a generator seeded
with ``(seed, n)`` alone, so the same prompt and seed give the same tokens whether the
sequence ran alone or in a batch, on one device or split over several.

Example:
    >>> import torch
    >>> logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    >>> sample(logits, [SamplingParams(), SamplingParams()], [0, 0]).tolist()
    [1, 0]
    >>> p = SamplingParams(temperature=1.0, top_k=2, seed=7)
    >>> sample(logits[:1], [p], [0]).tolist() == sample(logits[:1], [p], [0]).tolist()
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import GraphError

__all__ = ["SamplingParams", "SamplingError", "sample"]


class SamplingError(GraphError, ValueError):
    """Bad sampling parameters (the message names the value and the valid range).

    Example:
        >>> SamplingParams(temperature=-1.0)
        Traceback (most recent call last):
        ...
        graphs.sampling.SamplingError: temperature must be a finite number >= 0 (0: greedy), got -1.0
    """


@dataclass(frozen=True)
class SamplingParams:
    """How a sequence picks its next token.

    ``temperature == 0`` is greedy (argmax; ties go to the lowest id). Otherwise logits are
    divided by ``temperature``, cut to the ``top_k`` most likely tokens (0: no cut) and to
    the smallest set whose probability reaches ``top_p`` (1.0: no cut), and one token is
    drawn with a generator seeded by ``(seed, step)``; ``seed=None`` draws from a fresh
    random seed chosen when the params are made.

    Example:
        >>> SamplingParams(temperature=0.7, top_p=0.9, seed=1).greedy
        False
        >>> SamplingParams(top_p=0)
        Traceback (most recent call last):
        ...
        graphs.sampling.SamplingError: top_p must be in (0, 1], got 0
    """

    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # keep the k most likely tokens; 0: all
    top_p: float = 1.0  # nucleus: smallest set with this much probability; 1.0: all
    seed: int | None = None  # generator seed for non-greedy sampling

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise SamplingError(f"temperature must be a finite number >= 0 (0: greedy), got {t!r}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise SamplingError(f"top_k must be an int >= 0 (0: no cut), got {k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {p!r}")
        if self.seed is None and t > 0:
            object.__setattr__(self, "seed", int(torch.randint(0, 2**62, ()).item()))
        elif self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise SamplingError(f"seed must be an int or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """Whether this picks the argmax."""
        return self.temperature == 0


def _draw(row: torch.Tensor, p: SamplingParams, step: int) -> int:
    logits = row.float() / p.temperature
    if p.top_k and p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sp, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < p.top_p  # the token that crosses top_p stays
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sp[keep])
    g = torch.Generator().manual_seed((int(p.seed) * 1_000_003 + int(step)) % (2**63 - 1))
    return int(torch.multinomial(probs / probs.sum(), 1, generator=g).item())


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], steps: Sequence[int]) -> torch.Tensor:
    """Next token id of each row of ``logits`` (``(batch, vocab)``): row ``i`` with
    ``params[i]`` at generation step ``steps[i]`` (0 for the first generated token).

    Returns a ``(batch,)`` int64 tensor. See the module docstring for determinism.

    Example:
        >>> logits = torch.tensor([[1.0, 5.0, 2.0, 4.0], [1.0, 5.0, 2.0, 4.0]])
        >>> top2 = SamplingParams(temperature=1.0, top_k=2, seed=3)  # draws token 1 or 3 only
        >>> tokens = [sample(logits, [SamplingParams(), top2], [s, s]).tolist() for s in range(6)]
        >>> {t[0] for t in tokens}, {t[1] for t in tokens} <= {1, 3}  # greedy row: always 1
        ({1}, True)
        >>> tokens == [sample(logits, [SamplingParams(), top2], [s, s]).tolist() for s in range(6)]
        True
    """
    if logits.dim() != 2 or logits.shape[0] != len(params) or len(params) != len(steps):
        raise SamplingError(f"sample needs logits (batch, vocab) with one params and one step per "
                            f"row; got logits {tuple(logits.shape)}, {len(params)} params, "
                            f"{len(steps)} steps")
    out = torch.argmax(logits, dim=-1)
    for i, (p, s) in enumerate(zip(params, steps)):
        if not p.greedy:
            out[i] = _draw(logits[i], p, s)
    return out.to(torch.long)
