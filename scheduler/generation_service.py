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


def plan_generation(model: Any, cluster: Any, cost_model: Any, policy: Any, config: GenerationConfig,
                    exits: Any = None) -> tuple[Any, Any, tuple[GenStage, ...], dict[int, Any]]:
    """Place ``model``'s blocks for ``config.phase`` (:func:`policies.phase.place_phase`) and
    cut them into shards: ``(plan, graph, stages, shards)``.

    With token ``exits`` (:class:`policies.gating.token_exit.TokenExits`) the policy places
    two partitions of the decode step graph: the shallow path (embedding and the layers up
    to the drafting exit, ``config.draft_exit``, with the exit heads and gates) and the deep
    layers with the norm and ``lm_head``; each becomes a
    :class:`graphs.exit_decoding.ExitDecoderShard` (one, the whole decoder, when both land
    on one device).

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
    if exits is not None:
        return _plan_exits(model, cluster, cost_model, policy, config, exits, itemsize)
    plan, graph, _ = place_phase(policy, c, cluster, cost_model, config.phase,
                                 prompt_len=min(config.prompt_len, config.max_context - 1),
                                 new_tokens=config.new_tokens, max_batch=config.max_batch,
                                 max_context=config.max_context, itemsize=itemsize)
    stages, shards = [], {}
    ranges = shard_ranges(c, plan.assignment)
    for i, (dev, lo, hi) in enumerate(ranges):
        sid = 1000 + i  # apart from the fx partitions' ids on the same executors
        shard = DecoderShard(model, lo, hi, id=sid)
        stages.append(GenStage(sid, dev, lo, hi, shard.blocks))
        shards[sid] = shard
    return plan, graph, tuple(stages), shards


def _contract(g: Any, groups: dict[str, Sequence[str]]) -> Any:
    """A chain graph of ``groups`` (name -> consecutive nodes of ``g``), costs summed."""
    from collections import Counter

    from graphs.opgraph import OpGraph

    out = OpGraph(granularity="layer", name=f"{g.name}:exit-partitions")
    out.graph.update(g.graph)
    names = list(groups)
    for name in names:
        members = list(groups[name])
        attrs = [g.nodes[n] for n in members]
        kinds: Counter = Counter()
        for a in attrs:
            kinds.update(a.get("kinds", {}))
        out.add_node(name, op="group", kind="group", target=name, module=name, layer=None, members=tuple(members),
                     kinds=dict(kinds), dtype=attrs[-1].get("dtype", "float32"),
                     **{k: sum(a.get(k, 0) for a in attrs) for k in ("flops", "bytes_in", "bytes_out",
                                                                        "param_bytes", "state_bytes")})
    for u, v in zip(names, names[1:]):
        last, first = groups[u][-1], groups[v][0]
        out.add_edge(u, v, bytes=g.edges[last, first]["bytes"])
    return out


def _draft_index(exits: Any, config: GenerationConfig) -> int:
    """``config.draft_exit`` checked against the exits and made non-negative."""
    n = exits.num_exits
    j = config.draft_exit
    if isinstance(j, bool) or not isinstance(j, int) or not -n <= j < n:
        raise RuntimeConfigError(f"generation draft_exit {j!r} is not an exit index of exits at layers "
                                 f"{exits.layers}; valid: {-n}..{n - 1}")
    return j % n


def _plan_exits(model: Any, cluster: Any, cost_model: Any, policy: Any, config: GenerationConfig, exits: Any,
                itemsize: int) -> tuple[Any, Any, tuple[GenStage, ...], dict[int, Any]]:
    """Token exits: the policy places two partitions, the shallow path (the blocks up to
    the drafting exit, with the exit heads and gates) and the deep layers (to ``lm_head``),
    on the decode step graph. One device for both: one shard; two devices: two."""
    from graphs.decoding import block_names
    from graphs.exit_decoding import ExitDecoderShard
    from policies.phase import phase_graphs

    c = model.config
    cut = exits.layers[_draft_index(exits, config)] + 1  # block index after the exit's layer
    names = block_names(c)
    g = phase_graphs(c, prompt_len=min(config.prompt_len, config.max_context - 1), new_tokens=config.new_tokens,
                     max_batch=config.max_batch, max_context=config.max_context, itemsize=itemsize)["decode"]
    g2 = _contract(g, {"shallow": names[:cut], "deep": names[cut:]})
    plan = policy.place(g2, cluster, cost_model)
    a, b = plan.assignment["shallow"], plan.assignment["deep"]
    if a == b:
        parts = [(a, 0, len(names))]
    else:
        parts = [(a, 0, cut), (b, cut, len(names))]
    stages, shards = [], {}
    for i, (dev, lo, hi) in enumerate(parts):
        shard = ExitDecoderShard(model, exits, lo, hi, id=1000 + i)
        stages.append(GenStage(1000 + i, dev, lo, hi, shard.blocks))
        shards[1000 + i] = shard
    return plan, g2, tuple(stages), shards


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
                 power: Mapping[str, Any], max_retries: int, recovery_timeout: float, exits: Any = None):
        self.model = model
        self.config = config
        self.plan, self.graph, self.stages = plan, graph, tuple(stages)
        self._shards = dict(shards)
        self._actors = actors
        self._power = dict(power)
        self._max_retries, self._recovery_timeout = max_retries, recovery_timeout
        self.tokenizer = getattr(model, "tokenizer", None)
        self.exits = exits
        self._exit_settings = self._exit_config(exits, config) if exits is not None else None
        self._engine: GenerationEngine | None = None
        self._lock = threading.Lock()

    def engine(self) -> GenerationEngine:
        """The engine, started (shards loaded on their actors) on first use."""
        with self._lock:
            if self._engine is None:
                eng = GenerationEngine(self.stages, {s.device: self._actors[s.device] for s in self.stages},
                                       self._shards, self.config, model_config=self.model.config,
                                       power=self._power, max_retries=self._max_retries,
                                       recovery_timeout=self._recovery_timeout, tokenizer=self.tokenizer,
                                       exits=self._exit_settings)
                eng.load()
                self._engine = eng
            return self._engine

    def submit(self, prompt: Any, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop: Sequence[int] | None = None,
               timeout: float | None = None, stream: bool = False, exit_mode: str | None = None
               ) -> GenerationFuture:
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
        mode = self._exit_mode(exit_mode, temperature)
        return self.engine().submit(ids, max_new_tokens, sampling, stop, timeout, stream=stream, exit_mode=mode)

    @staticmethod
    def _exit_config(exits: Any, config: GenerationConfig) -> dict[str, Any]:
        """The engine's token-exit settings from the exits and the generation config (checked)."""
        from policies.gating.token_exit import token_costs

        gate = exits.check_gate(config.exit_gate)
        n = exits.num_exits
        j = _draft_index(exits, config)
        if gate not in exits.thresholds:
            raise RuntimeConfigError(f"the exits have no calibrated thresholds for gate {gate!r}; calibrated: "
                                     f"{', '.join(exits.thresholds) or 'none'} (train them with train_token_exits)")
        th = config.draft_threshold
        th = exits.single[gate][j] if th is None else float(th)
        ths = config.exit_thresholds
        if ths is None:  # the cascade certified on generated text, else the teacher-forced one
            ths = exits.lossy.get(gate, exits.thresholds[gate])
        elif len(ths) != n or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in ths):
            raise RuntimeConfigError(f"generation exit_thresholds needs one number per exit (layers "
                                     f"{exits.layers}); got {ths!r}")
        return dict(gate=gate, thresholds=tuple(float(t) for t in ths), threshold=th, max_draft=config.max_draft,
                    exit_index=j, layers=tuple(exits.layers),
                    costs=token_costs(exits.config, exits.layers, int(exits.shortlist.numel())))

    def _exit_mode(self, exit_mode: str | None, temperature: float) -> str:
        from graphs.exit_decoding import EXIT_MODES

        mode = (self.config.exit_mode if self.exits is not None else "full") if exit_mode is None else exit_mode
        if mode not in EXIT_MODES:
            raise RuntimeConfigError(f"exit_mode {mode!r} is unknown; valid: {', '.join(EXIT_MODES)}")
        if mode != "full" and self.exits is None:
            raise RuntimeConfigError(f"exit_mode {mode!r} needs token exits: build the Runtime with "
                                     f"gate=TokenExits (policies.gating.token_exit)")
        if mode != "full" and temperature != 0:
            raise RuntimeConfigError(f"exit_mode {mode!r} decodes greedily (temperature 0); sampling with "
                                     f"exits is not implemented: pass temperature=0 or exit_mode='full'")
        return mode

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
