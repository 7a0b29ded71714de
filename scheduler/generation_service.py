"""The Runtime's side of generation: placing a decoder's shards for a phase, and the
service that checks generation requests and owns the engine (:mod:`scheduler.generation`).

Example (needs Ray; see tests/scheduler/test_generation.py)::

    plan, graph, stages, shards = plan_generation(model, cluster, cost_model, policy, config)
    svc = GenerationService(model, config, plan, graph, stages, shards, actors, power={},
                            max_retries=3, recovery_timeout=30.0)
    print(svc.submit([1, 2, 3], 8).result().tokens)
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Mapping, Sequence

from .errors import RuntimeConfigError
from .generation import GenerationEngine, GenerationFuture
from .generation_types import GenerationConfig, GenerationStats, GenStage

__all__ = ["plan_generation", "GenerationService"]


def plan_generation(model: Any, cluster: Any, cost_model: Any, policy: Any, config: GenerationConfig
                    ) -> tuple[Any, Any, tuple[GenStage, ...], dict[int, Any]]:
    """Place ``model``'s blocks for ``config.phase`` (:func:`policies.phase.place_phase`) and
    cut them into shards: ``(plan, graph, stages, shards)``.

    The step graphs carry the KV cache of ``max_batch`` sequences at ``max_context``
    positions on every layer node, so the plan's memory per device includes it and a
    device it does not fit is not given those layers.

    Example:
        >>> from graphs.models import decoder
        >>> from policies import HEFT
        >>> from policies.roofline import RooflineCostModel
        >>> from scheduler.cluster import build_cluster
        >>> model = decoder("tiny")
        >>> cluster = build_cluster(["sim:atlas-200i-a2", "sim:edge-cpu-a76"])
        >>> config = GenerationConfig(max_batch=2, max_context=64, prompt_len=16, new_tokens=16)
        >>> plan, graph, stages, shards = plan_generation(model, cluster, RooflineCostModel(cluster),
        ...                                                HEFT(), config)
        >>> [(s.id, s.device, s.blocks) for s in stages]  # the tiny decoder fits one shard
        [(1000, 'sim:edge-cpu-a76', ('embed_tokens', 'layers.0', 'layers.1', 'norm', 'lm_head'))]
        >>> shards[1000].blocks == stages[0].blocks
        True
    """
    from graphs.decoding import DecoderShard, shard_ranges
    from policies.phase import place_phase

    c = model.config
    p = next(model.parameters(), None)
    itemsize = p.element_size() if p is not None else 4
    if config.max_context > c.max_position:
        raise RuntimeConfigError(f"generation max_context {config.max_context} exceeds the model's "
                                 f"context of {c.max_position} positions (config {c.name!r})")
    plan, graph, _ = place_phase(policy, c, cluster, cost_model, config.phase,
                                 prompt_len=min(config.prompt_len, config.max_context - 1),
                                 new_tokens=config.new_tokens, max_batch=config.max_batch,
                                 max_context=config.max_context, itemsize=itemsize)
    stages, shards = [], {}
    for i, (dev, lo, hi) in enumerate(shard_ranges(c, plan.assignment)):
        sid = 1000 + i  # apart from the fx partitions' ids on the same executors
        shard = DecoderShard(model, lo, hi, id=sid)
        stages.append(GenStage(sid, dev, lo, hi, shard.blocks))
        shards[sid] = shard
    return plan, graph, tuple(stages), shards


class GenerationService:
    """What :class:`scheduler.Runtime` delegates its generation methods to: checks the
    requests, starts the engine on first use, and owns it until shutdown.

    Running a request needs the executor actors (Ray; see the module docstring), but a bad
    request is refused before any of them is asked:

    Example:
        >>> from graphs.models import decoder
        >>> from policies import HEFT
        >>> from policies.roofline import RooflineCostModel
        >>> from scheduler.cluster import build_cluster
        >>> model = decoder("tiny")
        >>> cluster = build_cluster(["sim:atlas-200i-a2", "sim:edge-cpu-a76"])
        >>> config = GenerationConfig(max_batch=2, max_context=64, prompt_len=16, new_tokens=16)
        >>> plan, graph, stages, shards = plan_generation(model, cluster, RooflineCostModel(cluster),
        ...                                                HEFT(), config)
        >>> svc = GenerationService(model, config, plan, graph, stages, shards, actors={}, power={},
        ...                         max_retries=3, recovery_timeout=30.0)
        >>> svc.submit(list(range(60)), max_new_tokens=8)
        Traceback (most recent call last):
        ...
        scheduler.errors.RuntimeConfigError: prompt of 60 tokens + max_new_tokens 8 = 68 positions exceeds the runtime's generation max_context 64 ...
    """

    def __init__(self, model: Any, config: GenerationConfig, plan: Any, graph: Any,
                 stages: Sequence[GenStage], shards: Mapping[int, Any], actors: Mapping[str, Any], *,
                 power: Mapping[str, Any], max_retries: int, recovery_timeout: float):
        self.model = model
        self.config = config
        self.plan, self.graph, self.stages = plan, graph, tuple(stages)
        self._shards = dict(shards)
        self._actors = actors
        self._power = dict(power)
        self._max_retries, self._recovery_timeout = max_retries, recovery_timeout
        self.tokenizer = getattr(model, "tokenizer", None)
        self._engine: GenerationEngine | None = None
        self._lock = threading.Lock()

    def engine(self) -> GenerationEngine:
        """The engine, started (shards loaded on their actors) on first use."""
        with self._lock:
            if self._engine is None:
                eng = GenerationEngine(self.stages, {s.device: self._actors[s.device] for s in self.stages},
                                       self._shards, self.config, model_config=self.model.config,
                                       power=self._power, max_retries=self._max_retries,
                                       recovery_timeout=self._recovery_timeout, tokenizer=self.tokenizer)
                eng.load()
                self._engine = eng
            return self._engine

    def submit(self, prompt: Any, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop: Sequence[int] | None = None,
               timeout: float | None = None, stream: bool = False) -> GenerationFuture:
        from graphs.decoding import check_prompt
        from graphs.sampling import SamplingParams

        ids = check_prompt(self.model.config, prompt, max_new_tokens)
        if len(ids) + max_new_tokens > self.config.max_context:
            raise RuntimeConfigError(
                f"prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} = "
                f"{len(ids) + max_new_tokens} positions exceeds the runtime's generation max_context "
                f"{self.config.max_context} (the KV cache the plan reserves per sequence); pass "
                f"generation={{'max_context': ...}} to the Runtime")
        sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if stop is None:
            eos = getattr(self.tokenizer, "eos_id", None)
            stop = () if eos is None else (eos,)
        stop = tuple(stop)
        for t in stop:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.model.config.vocab:
                raise RuntimeConfigError(f"stop token {t!r} is not a token id in [0, "
                                         f"{self.model.config.vocab - 1}]")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise RuntimeConfigError(f"timeout must be a finite number of seconds > 0 or None, got {timeout!r}")
        return self.engine().submit(ids, max_new_tokens, sampling, stop, timeout, stream=stream)

    def stats(self) -> GenerationStats:
        return self.engine().stats()

    def kv_stats(self) -> dict[str, dict]:
        """device -> the executor's KV-cache counters (sequences, bytes), once the frees of the
        sequences that ended have run."""
        import ray

        self.engine().frees_done()

        devs = list(dict.fromkeys(s.device for s in self.stages))
        return dict(zip(devs, ray.get([self._actors[d].kv_stats.remote() for d in devs])))

    def close(self, wait: bool = False, timeout: float | None = 30.0) -> None:
        """Stop the engine; with ``wait``, let the sequences in flight finish first (up to
        ``timeout`` seconds), then fail what is left with RuntimeClosedError."""
        eng = self._engine
        if eng is None:
            return
        if wait:
            deadline = None if timeout is None else time.perf_counter() + timeout
            while eng.in_flight and (deadline is None or time.perf_counter() < deadline):
                time.sleep(0.01)
        eng.close()
