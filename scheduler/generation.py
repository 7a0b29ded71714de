"""Token generation through placed decoder shards: sessions, KV caches, continuous batching.

:class:`GenerationEngine` drives generation for a :class:`scheduler.Runtime` whose model is
a :class:`graphs.models.Decoder`. The decoder's blocks are placed for a phase
(:mod:`policies.phase`) and cut into shards, maximal runs of consecutive blocks on one
device (:func:`graphs.decoding.shard_ranges`); each device's executor actor hosts its
shards and keeps their KV caches, per sequence (``Executor.step``). A sequence is a
session:

* **prefill**: the prompt walks the shard chain once; each shard allocates the sequence's
  cache (room for prompt + ``max_new_tokens`` positions) and the last shard samples the
  first token;
* **decode**: each step walks the chain with one token per sequence; only the new token's
  hidden state (``hidden * 4`` bytes) crosses between devices, never a cache;
* the sequence ends at ``max_new_tokens`` or a stop token; it ends early when it fails, is
  cancelled or times out; in every case its caches are freed on every actor.

**What is batched.** Decode steps of the sequences in flight run as one batched call per
shard (continuous batching: a sequence joins the next step once its prefill is done and
leaves as soon as it finishes; no step waits for a batch to fill). The linear layers and the
MLP run on the whole batch (each weight is read once per step, which is what makes decode
cheaper per token in a batch); attention runs per sequence over its own cache (ragged
lengths, no padding). With several shards, the sequences are split into ``lanes``
micro-batches (one per device of the chain by default) that follow each other down the
chain, so the devices work as a pipeline: a micro-batch leaves with its share of the
sequences (``ceil(active / lanes)``), or with whatever is ready when no other decode step
is in flight. Prefills are not batched: each prompt is its own call (one
sequence, ``T`` = prompt length), interleaved with the decode steps.

**Multi-step decoding.** When the whole decoder is one shard (one device), a decode call
runs ``steps_per_call`` steps (4 by default) in the actor, each feeding back the token
the step before sampled, so Ray's round trip (a few ms here, against a 30 ms step of
SmolLM2 on this CPU) is paid once per 4 tokens. Tokens then stream in groups of up to 4;
a new sequence's prefill waits for at most the call in progress; a call never runs past
any member's ``max_new_tokens``, and tokens after a stop token are dropped.

**Sampling** happens in the last shard's actor (only token ids travel back), with
:class:`graphs.sampling.SamplingParams` per sequence; it is deterministic for a seed, alone
or in a batch.

**Failures.** A step that fails because an actor died or lost its state (a restarted
actor has no shards and no caches) is retried: the engine waits for the actor to answer
(``recovery_timeout``), reloads its shards, frees what the sequences left elsewhere and
prefills them again with prompt + the tokens generated so far, so a retried sequence
continues exactly where it was (greedy or seeded sampling give the same continuation).
After ``max_retries`` the request fails with :class:`~scheduler.errors.RequestFailed`
naming the device; a step that raises for another reason fails its sequences at once.
Other sequences keep going.

Example (needs Ray, so not a doctest; see tests/scheduler/test_generation.py)::

    from graphs.models import decoder, example_inputs
    from scheduler import Runtime
    m = decoder("tiny")
    with Runtime(m, example_inputs(m, seq_len=8), devices=["cpu"]) as rt:
        r = rt.generate([1, 2, 3], max_new_tokens=16)
        print(r.tokens, r.decode_tokens_per_s)
        for tok in rt.generate_stream([4, 5], max_new_tokens=8):
            print(tok)
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import math
import queue
import threading
import time
from typing import Any, Iterator, Mapping, Sequence

import torch

from .errors import RequestFailed, RequestTimeout, RuntimeClosedError, RuntimeConfigError
from .generation_types import (PHASES, GenerationConfig, GenerationResult,  # noqa: F401  (re-exported)
                               GenerationStats, GenStage)

__all__ = ["GenerationConfig", "GenerationResult", "GenerationFuture", "GenerationStats",
           "GenStage", "GenerationEngine", "PHASES"]


class GenerationFuture(cf.Future):
    """A future of a :class:`GenerationResult`; :meth:`cancel` stops a running generation
    (its caches are freed), unlike a plain ``concurrent.futures.Future``.

    Example:
        >>> from graphs.models import decoder
        >>> from graphs.sampling import SamplingParams
        >>> from policies import HEFT
        >>> from policies.roofline import RooflineCostModel
        >>> from scheduler.cluster import build_cluster
        >>> from scheduler.generation_service import plan_generation
        >>> model, cluster = decoder("tiny"), build_cluster(["sim:edge-cpu-a76"])
        >>> _, _, stages, shards = plan_generation(model, cluster, RooflineCostModel(cluster), HEFT(),
        ...                                        GenerationConfig())
        >>> engine = GenerationEngine(stages, {}, shards, GenerationConfig(), model_config=model.config)
        >>> fut = engine.submit([1, 2, 3], 4, SamplingParams(), (), None)  # not loaded: nothing runs yet
        >>> fut.sequence_id, fut.done()
        (1, False)
        >>> fut.cancel(), fut.cancelled()  # the engine is told to drop the sequence
        (True, True)
    """

    def __init__(self, engine: "GenerationEngine", sid: int):
        super().__init__()
        self._engine = engine
        self.sequence_id = sid

    def cancel(self) -> bool:
        ok = super().cancel()
        if ok:
            self._engine._post(("cancel", self.sequence_id))
        return ok


_END = object()


class _Seq:
    __slots__ = ("sid", "prompt", "out", "max_new", "sampling", "stops", "future", "stream",
                 "deadline", "t0", "t_first", "retries", "state", "cache_on", "dead", "exit_mode")

    def __init__(self, sid, prompt, max_new, sampling, stops, future, stream, deadline, exit_mode="full"):
        self.sid = sid
        self.prompt = prompt
        self.out: list[int] = []
        self.max_new = max_new
        self.sampling = sampling
        self.stops = stops
        self.future = future
        self.stream = stream
        self.deadline = deadline
        self.t0 = time.perf_counter()
        self.t_first: float | None = None
        self.retries = 0
        self.state = "waiting"  # waiting (needs prefill) | ready (needs decode) | busy
        self.cache_on = False
        self.dead = False  # finished while a step was in flight
        self.exit_mode = exit_mode  # "full", "lossy" or "speculative" (graphs.exit_decoding)


class GenerationEngine:
    """Runs generation on loaded shards (see the module docstring); the Runtime owns it.

    Args:
        stages: the shard chain, in block order.
        actors: device -> executor actor handle (shards are loaded by :meth:`load`).
        shards: stage id -> the :class:`graphs.decoding.DecoderShard` to load.
        config: the :class:`GenerationConfig`.
        power: device -> (active, idle) watts or None, for energy.
        transfer: (src, dst, bytes) -> seconds, the cost model's transfer time (for the
            simulated timeline of steps).
        max_retries, recovery_timeout: see the module docstring.
        tokenizer: optional, to decode the result's text.

    :meth:`load` ships the shards to the executor actors (Ray); before that the engine
    only queues requests.

    Example:
        >>> from graphs.models import decoder
        >>> from graphs.sampling import SamplingParams
        >>> from policies import HEFT
        >>> from policies.roofline import RooflineCostModel
        >>> from scheduler.cluster import build_cluster
        >>> from scheduler.generation_service import plan_generation
        >>> model, cluster = decoder("tiny"), build_cluster(["sim:edge-cpu-a76"])
        >>> _, _, stages, shards = plan_generation(model, cluster, RooflineCostModel(cluster), HEFT(),
        ...                                        GenerationConfig())
        >>> engine = GenerationEngine(stages, {}, shards, GenerationConfig(max_batch=4),
        ...                           model_config=model.config)
        >>> engine.lanes, engine.in_flight, engine.stats().generated_tokens  # one device: one lane
        (1, 0, 0)
        >>> fut = engine.submit([5, 6], 8, SamplingParams(), (), None)
        >>> engine.in_flight
        1
        >>> engine.close()
    """

    def __init__(self, stages: Sequence[GenStage], actors: Mapping[str, Any], shards: Mapping[int, Any],
                 config: GenerationConfig, *, model_config: Any, power: Mapping[str, Any] | None = None,
                 max_retries: int = 3, recovery_timeout: float = 30.0, tokenizer: Any = None,
                 exits: Mapping[str, Any] | None = None):
        self.stages = tuple(stages)
        self.actors = dict(actors)
        self.shards = dict(shards)
        self.config = config
        self.model_config = model_config
        self.power = dict(power or {})
        self.max_retries = max_retries
        self.recovery_timeout = recovery_timeout
        self.tokenizer = tokenizer
        self.exits = dict(exits) if exits else None  # token-exit settings (GenerationService)
        self._devices = tuple(dict.fromkeys(s.device for s in self.stages))
        self.lanes = config.lanes or len(self._devices)
        self._inbox: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._seqs: dict[int, _Seq] = {}
        self._waiting: collections.deque[int] = collections.deque()  # admitted, need prefill
        self._backlog: collections.deque[int] = collections.deque()  # not admitted yet
        self._ready: collections.deque[int] = collections.deque()
        self._inflight: dict[int, tuple] = {}  # batch id -> (kind, sids, out_ref, meta_refs)
        self._batch_ids = itertools.count()
        self._pids: dict[str, int] = {}
        self._free_refs: list = []  # frees sent, not known to be done
        self._open: set[int] = set()  # sequence ids submitted and not ended (any thread)
        self._closed = False
        self._lock = threading.Lock()
        self._reset_stats()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load every shard on its device's actor (blocking) and remember the actors' pids."""
        import ray

        refs = [self.actors[s.device].load_shard.remote(self.shards[s.id]) for s in self.stages]
        ray.get(refs)
        for d in self._devices:
            self._pids[d] = ray.get(self.actors[d].ping.remote())["pid"]
        self._thread = threading.Thread(target=self._loop, name="hetsched-generate", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Fail what is pending with :class:`RuntimeClosedError`, free caches, stop the loop."""
        if self._closed:
            return
        self._closed = True
        self._post(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------ API
    def submit(self, prompt: Sequence[int], max_new_tokens: int, sampling: Any, stop_ids: Sequence[int],
               timeout: float | None, stream: bool = False, exit_mode: str = "full") -> GenerationFuture:
        """Queue one sequence; returns its future (see :meth:`scheduler.Runtime.generate`)."""
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down; it accepts no more generation requests")
        sid = next(self._ids)
        fut = GenerationFuture(self, sid)
        q = queue.Queue() if stream else None
        deadline = None if timeout is None else time.perf_counter() + timeout
        seq = _Seq(sid, list(prompt), max_new_tokens, sampling, frozenset(stop_ids), fut, q, deadline, exit_mode)
        fut._stream = q  # type: ignore[attr-defined]
        with self._lock:
            self._open.add(sid)
        self._post(("new", seq))
        return fut

    def stream(self, fut: GenerationFuture) -> Iterator[int]:
        """Yield the tokens of ``fut``'s sequence as they come (raises its error, if any)."""
        q = getattr(fut, "_stream", None)
        if q is None:
            raise RuntimeConfigError("this generation was not started with stream=True")
        while True:
            item = q.get()
            if item is _END:
                break
            yield item
        fut.result()  # raises the sequence's error, if it failed

    def stats(self) -> GenerationStats:
        """A snapshot of the counters (see :class:`GenerationStats`)."""
        with self._lock:
            s = dict(self._st)
            busy = dict(self._busy)
            steps = tuple(self._steps)
        wall = (s["t_last"] - s["t_first"]) if s["t_first"] is not None and s["t_last"] else 0.0
        span = max(wall, max(busy.values(), default=0.0))
        energy = None
        if busy and all(self.power.get(d) for d in busy):
            energy = sum(self.power[d][0] * b + self.power[d][1] * max(span - b, 0.0) for d, b in busy.items())
        return GenerationStats(
            requests=s["done"], failed=s["failed"], prompt_tokens=s["prompt"], generated_tokens=s["gen"],
            prefill_calls=s["prefills"], decode_steps=s["steps"],
            mean_decode_batch=s["step_members"] / s["steps"] if s["steps"] else 0.0, wall=wall,
            busy=busy, energy=energy, simulated=s["simulated"], kv_bytes_peak=s["kv_peak"],
            retries=s["retries"], steps=steps, exit=self._exit_summary())

    def reset_stats(self) -> None:
        """Zero the counters (sequences in flight keep going)."""
        with self._lock:
            self._reset_stats()

    def _reset_stats(self) -> None:
        self._st = dict(done=0, failed=0, prompt=0, gen=0, prefills=0, steps=0, step_members=0,
                        t_first=None, t_last=0.0, simulated=False, kv_peak=0, retries=0)
        self._busy: dict[str, float] = {}
        self._steps: collections.deque = collections.deque(maxlen=100_000)
        self._exit_counts: dict[str, dict] = {}  # mode -> summed ExitStepInfo counters

    def _exit_summary(self) -> dict | None:
        """Per exit mode used: tokens, exit rate per exit layer, draft acceptance, tokens per
        full-model pass and the share of decode FLOPs saved against the model without exits."""
        if not self._exit_counts or not self.exits:
            return None
        from policies.gating.token_exit import exit_compute

        return {mode: exit_compute(mode, c, self.exits) for mode, c in self._exit_counts.items()}

    @property
    def in_flight(self) -> int:
        """Sequences submitted and not ended."""
        return len(self._open)

    # ------------------------------------------------------------ the loop
    def _post(self, ev: tuple) -> None:
        self._inbox.put(ev)

    def _loop(self) -> None:
        while True:
            timeout = self._next_deadline()
            try:
                ev = self._inbox.get(timeout=timeout)
            except queue.Empty:
                ev = None
            try:
                if ev is not None:
                    if ev[0] == "stop":
                        self._shutdown()
                        return
                    self._handle(ev)
                    while True:  # drain what else is queued before issuing
                        try:
                            ev = self._inbox.get_nowait()
                        except queue.Empty:
                            break
                        if ev[0] == "stop":
                            self._shutdown()
                            return
                        self._handle(ev)
                self._expire()
                self._issue()
            except Exception as e:  # noqa: BLE001 - the loop must survive; fail what it touched
                for sid in list(self._seqs):
                    self._fail(sid, RequestFailed(f"generation engine error: {type(e).__name__}: {e}", e))

    def _next_deadline(self) -> float | None:
        ds = [s.deadline for s in self._seqs.values() if s.deadline is not None]
        if not ds:
            return None
        return max(0.0, min(ds) - time.perf_counter()) + 1e-3

    def _handle(self, ev: tuple) -> None:
        kind, arg = ev
        if kind == "new":
            seq: _Seq = arg
            self._seqs[seq.sid] = seq
            with self._lock:
                if self._st["t_first"] is None:
                    self._st["t_first"] = seq.t0
            if seq.max_new == 0:
                self._finish(seq.sid, "length")
                return
            self._backlog.append(seq.sid)
        elif kind == "cancel":
            if arg in self._seqs:
                self._fail(arg, cf.CancelledError())
        elif kind == "done":
            self._done(arg)

    def _expire(self) -> None:
        now = time.perf_counter()
        for sid, s in list(self._seqs.items()):
            if s.deadline is not None and now >= s.deadline:
                self._fail(sid, RequestTimeout(
                    f"generation of sequence {sid} did not finish within its timeout "
                    f"({len(s.out)} of {s.max_new} tokens generated)"))

    # ------------------------------------------------------------ issuing
    def _admitted(self) -> int:
        return len(self._seqs) - len(self._backlog)

    def _issue(self) -> None:
        while self._backlog and self._admitted() < self.config.max_batch:
            self._waiting.append(self._backlog.popleft())
        while self._waiting:
            sid = self._waiting.popleft()
            if sid in self._seqs:
                self._issue_prefill(self._seqs[sid])
        decode_busy = sum(1 for k, *_ in self._inflight.values() if k == "decode")
        if not self._ready:
            return
        active = len(self._ready) + sum(len(v[1]) for v in self._inflight.values() if v[0] == "decode")
        size = min(self.config.max_batch, max(1, math.ceil(active / self.lanes)))
        # a lane leaves with a full share of the active sequences, or with what is ready when
        # no decode step is in flight (nothing else will come back to fill it)
        while self._ready and decode_busy < self.lanes and (len(self._ready) >= size or decode_busy == 0):
            sids, other = [], []
            mode = None
            while self._ready and len(sids) < size:
                sid = self._ready.popleft()
                if sid in self._seqs:
                    m = self._seqs[sid].exit_mode
                    if mode is None or m == mode:  # a decode call runs one exit mode
                        mode = m
                        sids.append(sid)
                    else:
                        other.append(sid)
            self._ready.extendleft(reversed(other))
            if sids:
                self._issue_decode([self._seqs[s] for s in sids])
                decode_busy += 1

    def _chain(self, kind: str, seqs: list[_Seq], x: torch.Tensor, reserve: tuple | None,
               steps: int = 1, exit: dict | None = None) -> None:
        sids = tuple(s.sid for s in seqs)
        ref: Any = x
        metas = []
        last = len(self.stages) - 1
        for i, st in enumerate(self.stages):
            kw: dict[str, Any] = {}
            if reserve is not None:
                kw["reserve"] = reserve
            if exit is not None:  # every shard of the chain takes part in exit decoding
                kw.update(exit=exit, steps=steps)
            elif i == last:
                kw["sample"] = tuple((s.sampling, len(s.out)) for s in seqs)
                if steps > 1:
                    kw["steps"] = steps
            ref, meta = self.actors[st.device].step.options(num_returns=2).remote(st.id, sids, ref, **kw)
            metas.append(meta)
        bid = next(self._batch_ids)
        for s in seqs:
            s.state = "busy"
            s.cache_on = True
        self._inflight[bid] = (kind, sids, ref, metas)
        ref.future().add_done_callback(lambda _f, b=bid: self._post(("done", b)))

    def _issue_prefill(self, s: _Seq) -> None:
        ids = s.prompt + s.out  # after a failure: continue where the sequence was
        with self._lock:
            self._st["prompt"] += len(ids)
            self._st["prefills"] += 1
        x = torch.tensor([ids], dtype=torch.long)
        self._chain("prefill", [s], x, (len(s.prompt) + s.max_new,))

    def _issue_decode(self, seqs: list[_Seq]) -> None:
        x = torch.tensor([[s.out[-1]] for s in seqs], dtype=torch.long)
        steps = 1
        mode = seqs[0].exit_mode
        if mode != "full":  # lossy steps or speculative rounds, each sequence within its budget
            e = self.exits
            exit = dict(mode=mode, gate=e["gate"], thresholds=e["thresholds"], threshold=e["threshold"],
                        max_draft=e["max_draft"], exit_index=e["exit_index"],
                        limits=tuple(s.max_new - len(s.out) for s in seqs),
                        lengths=tuple(len(s.prompt) + len(s.out) - 1 for s in seqs))
            # the whole decoder on one device: several steps (rounds) per call; a chain: one
            steps = self.config.steps_per_call if len(self.stages) == 1 else 1
            with self._lock:
                self._st["steps"] += 1
                self._st["step_members"] += len(seqs)
            self._chain("decode", seqs, x, None, steps, exit)
            return
        if len(self.stages) == 1:  # multi-step: within every member's budget
            steps = max(1, min(self.config.steps_per_call, *(s.max_new - len(s.out) for s in seqs)))
        with self._lock:
            self._st["steps"] += steps
            self._st["step_members"] += steps * len(seqs)
        self._chain("decode", seqs, x, None, steps)

    # ------------------------------------------------------------ completions
    def _done(self, bid: int) -> None:
        import ray

        kind, sids, ref, metas = self._inflight.pop(bid)
        try:
            toks = ray.get(ref)
        except Exception as e:  # noqa: BLE001
            self._batch_failed(kind, sids, e)
            return
        try:
            ms = ray.get(metas)
        except Exception:  # noqa: BLE001 - stats only
            ms = []
        self._record(kind, ms)
        now = time.perf_counter()
        rows = toks.tolist() if toks.dim() == 2 else [[t] for t in toks.tolist()]
        for sid, row in zip(sids, rows):
            s = self._seqs.get(sid)
            if s is None or s.dead:
                continue
            end = None
            for tok in row:  # a multi-step call's tokens after a stop are dropped
                if tok < 0:  # padding of an exit call's shorter rows
                    break
                s.out.append(int(tok))
                if s.t_first is None:
                    s.t_first = now
                if s.stream is not None:
                    s.stream.put(int(tok))
                with self._lock:
                    self._st["gen"] += 1
                    self._st["t_last"] = now
                if int(tok) in s.stops:
                    end = "stop"
                elif len(s.out) >= s.max_new:
                    end = "length"
                if end:
                    break
            if end:
                self._finish(sid, end)
            else:
                s.state = "ready"
                self._ready.append(sid)

    def _record(self, kind: str, ms: list) -> None:
        with self._lock:
            for m in ms:
                self._busy[m.device] = self._busy.get(m.device, 0.0) + m.duration
                self._st["simulated"] = self._st["simulated"] or bool(m.simulated)
                self._st["kv_peak"] = max(self._st["kv_peak"], int(m.kv_bytes))
                self._steps.append((kind, m.device, m.start, m.duration, m.batch, m.shard))
                if getattr(m, "exit", None):
                    acc = self._exit_counts.setdefault(m.exit.get("mode", "?"), {})
                    for k, v in m.exit.items():
                        if isinstance(v, list):
                            acc[k] = [a + b for a, b in zip(acc.get(k, [0] * len(v)), v)]
                        elif isinstance(v, (int, float)):
                            acc[k] = acc.get(k, 0) + v

    def _batch_failed(self, kind: str, sids: tuple, err: BaseException) -> None:
        from .dispatch import _is_infrastructure

        devices = self._recover() if _is_infrastructure(err) else None
        for sid in sids:
            s = self._seqs.get(sid)
            if s is None or s.dead:
                continue
            if devices is None:
                self._fail(sid, RequestFailed(f"generation step ({kind}) of sequence {sid} failed: "
                                              f"{type(err).__name__}: {err}", err))
            elif isinstance(devices, str):
                self._fail(sid, RequestFailed(
                    f"generation of sequence {sid} failed: executor actor of device {devices!r} "
                    f"did not come back within {self.recovery_timeout:g} s ({type(err).__name__})", err))
            elif s.retries >= self.max_retries:
                self._fail(sid, RequestFailed(
                    f"generation of sequence {sid} failed after {s.retries} retries: "
                    f"{type(err).__name__}: {err}", err))
            else:
                self._restart(s)

    def _restart(self, s: _Seq) -> None:
        s.retries += 1
        with self._lock:
            self._st["retries"] += 1
        self._free([s.sid])
        s.state = "waiting"
        self._waiting.append(s.sid)

    def _recover(self) -> set[str] | str:
        """Wait for every device's actor to answer; reload shards where the actor restarted
        (its pid changed) and restart the sequences whose caches it held. Returns the
        devices reloaded, or the name of a device that did not come back."""
        import ray

        reloaded: set[str] = set()
        deadline = time.perf_counter() + self.recovery_timeout
        for d in self._devices:
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return d
                try:
                    pid = ray.get(self.actors[d].ping.remote(), timeout=min(left, 5.0))["pid"]
                    break
                except Exception:  # noqa: BLE001 - restarting or dead: try until the deadline
                    time.sleep(0.2)
            if pid != self._pids.get(d):
                try:
                    ray.get([self.actors[d].load_shard.remote(self.shards[s.id])
                             for s in self.stages if s.device == d], timeout=max(left, 1.0))
                except Exception:  # noqa: BLE001
                    return d
                self._pids[d] = pid
                reloaded.add(d)
        if reloaded:  # every sequence with a cache on a reloaded device lost it
            for s in list(self._seqs.values()):
                if s.state == "ready" and s.cache_on:
                    self._ready.remove(s.sid)
                    self._restart(s)
        return reloaded

    # ------------------------------------------------------------ endings
    def _free(self, sids: list[int]) -> None:
        refs = []
        for d in self._devices:
            try:
                refs.append(self.actors[d].free.remote(tuple(sids)))
            except Exception:  # noqa: BLE001 - a dead actor holds nothing
                pass
        with self._lock:
            self._free_refs.extend(refs)
            if len(self._free_refs) > 256:  # forget the frees that are done
                import ray

                done, rest = ray.wait(self._free_refs, num_returns=len(self._free_refs), timeout=0,
                                      fetch_local=False)
                self._free_refs = rest

    def frees_done(self, timeout: float = 30.0) -> None:
        """Wait until every cache free sent so far has run on its actor (a free queues behind
        the steps already sent to that actor)."""
        import ray

        with self._lock:
            refs, self._free_refs = self._free_refs, []
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)

    def _finish(self, sid: int, reason: str) -> None:
        s = self._seqs.pop(sid)
        if s.cache_on:
            self._free([sid])
        now = time.perf_counter()
        text = None
        if self.tokenizer is not None:
            try:
                text = self.tokenizer.decode(s.out)
            except Exception:  # noqa: BLE001
                text = None
        res = GenerationResult(tuple(s.out), len(s.prompt), reason,
                               (s.t_first or now) - s.t0, now - s.t0, s.retries, text)
        with self._lock:
            self._st["done"] += 1
            self._open.discard(sid)
        if s.stream is not None:
            s.stream.put(_END)
        if not s.future.done():
            s.future.set_result(res)

    def _fail(self, sid: int, err: BaseException) -> None:
        s = self._seqs.pop(sid, None)
        if s is None:
            return
        s.dead = True
        if s.state == "ready":
            try:
                self._ready.remove(sid)
            except ValueError:
                pass
        for dq in (self._waiting, self._backlog):
            try:
                dq.remove(sid)
            except ValueError:
                pass
        if s.cache_on:
            self._free([sid])
        with self._lock:
            self._st["failed"] += 1
            self._open.discard(sid)
        if s.stream is not None:
            s.stream.put(_END)
        if not s.future.done():
            s.future.set_exception(err)

    def _shutdown(self) -> None:
        for sid in list(self._seqs):
            self._fail(sid, RuntimeClosedError("the runtime shut down before this generation finished"))
