"""Replaying generation in virtual time: prefill + decode steps with growing KV caches.

:func:`simulate_generation` replays what :class:`scheduler.generation.GenerationEngine`
does on a shard chain, without running anything: ``batch`` sequences of ``prompt_len``
tokens each prefill (one chain walk per sequence), then decode ``new_tokens - 1`` steps (the
first token comes from the prefill) in ``lanes`` micro-batches that follow each other down
the chain. Every call of a shard is priced exactly as a simulated executor prices it
(:func:`executors.simulated.shard_step_time`: the cost model's time of the shard's blocks
in :func:`graphs.decoding.step_graph` at the step's batch, new tokens and mean context), and
the hidden state between two devices pays the cost model's transfer time. A device runs
one call at a time; a call starts when its input has arrived and its device is free.

So the simulated devices' reported busy time in a runtime run of the same workload equals
the replay's busy time (the test checks it), and the replay gives tokens/s and tokens/J of
a split before any device exists.

Simplifications (stated, not hidden): prefills all come before the first decode step (the
engine interleaves them as prompts arrive); the driver's own time and Ray's per-call cost
are not modelled (they are host costs, not device time).

Example:
    >>> from executors.devices import Cluster
    >>> from executors import profiles
    >>> from graphs.models import get_config
    >>> from policies.roofline import RooflineCostModel
    >>> cl = Cluster.from_specs([profiles.load("atlas-200i-a2", name="sim:npu")])
    >>> r = simulate_generation(get_config("small"), [("sim:npu", 0, 7)], RooflineCostModel(cl),
    ...                         prompt_len=16, new_tokens=8)
    >>> r.tokens, r.decode_steps
    (8, 7)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from graphs.decoding import block_names

__all__ = ["GenerationSimResult", "simulate_generation"]


@dataclass(frozen=True)
class GenerationSimResult:
    """What a replay of generation predicts (seconds, joules).

    Example:
        >>> r = GenerationSimResult(tokens=16, sequences=2, prefill_time=0.5, decode_time=1.75,
        ...                         decode_steps=7, busy={"sim:npu": 2.0}, energy=8.0)
        >>> r.makespan, r.decode_tokens_per_s, r.tokens_per_joule  # 14 decode tokens in 1.75 s
        (2.25, 8.0, 2.0)
    """

    tokens: int  # tokens generated over all sequences
    sequences: int  # sequences generated (each one's first token comes from its prefill)
    prefill_time: float  # seconds from start until every prefill is done
    decode_time: float  # seconds of the decode phase (after the prefills)
    decode_steps: int  # decode walks of the chain per micro-batch lane, summed over lanes
    busy: Mapping[str, float]  # device -> busy seconds
    energy: float | None  # joules over the whole run (None without power figures)
    calls: tuple = field(default=(), repr=False)  # (kind, device, shard start, start, end, batch)

    @property
    def makespan(self) -> float:
        """Seconds of the whole run."""
        return self.prefill_time + self.decode_time

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode-phase tokens (all but each sequence's first) per second."""
        n = self.tokens - self.sequences
        return n / self.decode_time if self.decode_time > 0 else float("nan")

    @property
    def tokens_per_joule(self) -> float | None:
        """Generated tokens per joule of the whole run."""
        return None if not self.energy else self.tokens / self.energy


def simulate_generation(config: Any, stages: Sequence[tuple[str, int, int]], cost_model: Any, *,
                        prompt_len: int, new_tokens: int, batch: int = 1, lanes: int | None = None,
                        itemsize: int = 4) -> GenerationSimResult:
    """Replay ``batch`` sequences of generation on ``stages`` (``(device, start, stop)`` block
    ranges, as :func:`graphs.decoding.shard_ranges` returns). See the module docstring.

    Example:
        >>> from executors import profiles
        >>> from graphs.models import get_config
        >>> from policies.roofline import RooflineCostModel
        >>> cl = profiles.cluster(["atlas-200i-a2", "edge-cpu-a76"])
        >>> chain = [("atlas-200i-a2", 0, 3), ("edge-cpu-a76", 3, 5)]  # tiny: embed, 2 layers | norm, head
        >>> r = simulate_generation(get_config("tiny"), chain, RooflineCostModel(cl),
        ...                         prompt_len=16, new_tokens=8, batch=2)
        >>> r.tokens, r.sequences, r.decode_steps, sorted(r.busy)  # 7 steps in each of 2 lanes
        (16, 2, 14, ['atlas-200i-a2', 'edge-cpu-a76'])
        >>> len(r.calls) == 2 * (2 + r.decode_steps)  # every walk calls both shards
        True
    """
    from executors.simulated import shard_step_time

    if not stages:
        raise ValueError("simulate_generation needs at least one stage")
    names = block_names(config)
    for what, v, lo in (("prompt_len", prompt_len, 1), ("new_tokens", new_tokens, 1), ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{what} must be an int >= {lo}, got {v!r}")
    lanes = lanes or len({d for d, _, _ in stages})
    free: dict[str, float] = {}
    busy: dict[str, float] = {}
    calls: list[tuple] = []
    hidden = config.hidden * itemsize

    def walk(kind: str, t0: float, b: int, t: int, ctx: int) -> float:
        ready = t0
        prev = None
        for dev, lo, hi in stages:
            if prev is not None and prev != dev:
                # the norm's output is the last position only; before it, every new token's
                ready += cost_model.transfer_time(b * (t if lo < len(names) - 1 else 1) * hidden,
                                                  prev, dev)
            d = shard_step_time(cost_model, dev, (config, names[lo:hi]), batch=b, new_tokens=t,
                                context=ctx, itemsize=itemsize)
            start = max(ready, free.get(dev, 0.0))
            end = start + d
            free[dev] = end
            busy[dev] = busy.get(dev, 0.0) + d
            calls.append((kind, dev, lo, start, end, b))
            ready = end
            prev = dev
        return ready

    prefill_end = 0.0
    for _ in range(batch):
        prefill_end = max(prefill_end, walk("prefill", 0.0, 1, prompt_len, 0))
    sizes = [len(r) for r in _split(batch, min(lanes, batch))]
    done = [prefill_end] * len(sizes)
    steps = 0
    for j in range(1, new_tokens):
        for m, b in enumerate(sizes):
            done[m] = walk("decode", done[m], b, 1, prompt_len + j - 1)
            steps += 1
    end = max(done)
    energy = None
    powers = {d: cost_model.power(d) for d in busy}
    if all(powers.values()):
        energy = sum(powers[d][0] * b + powers[d][1] * max(end - b, 0.0) for d, b in busy.items())
    return GenerationSimResult(tokens=batch * new_tokens, sequences=batch, prefill_time=prefill_end,
                               decode_time=end - prefill_end, decode_steps=steps, busy=busy,
                               energy=energy, calls=tuple(calls))


def _split(n: int, k: int) -> list[range]:
    size = math.ceil(n / k)
    return [range(i, min(i + size, n)) for i in range(0, n, size)]
