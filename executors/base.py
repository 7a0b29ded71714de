"""The executor interface: load a partition, run it, report the result and what was measured.

An :class:`Executor` hosts the partitions placed on one device. Its core is three methods,
:meth:`Executor.load`, :meth:`Executor.run` and :meth:`Executor.unload`; everything else
(:meth:`~Executor.loaded`, :meth:`~Executor.health`) is bookkeeping on top. A run returns
an :class:`ExecutionResult`, a frozen dataclass that says what was computed, where, when
and how long it took, so the scheduler never needs to call back into the executor.

Subclasses implement two hooks: ``_prepare(partition)`` (make the partition's module
ready on the device, e.g. move it there) and ``_execute(prepared, args)`` (run it and
return a tuple of outputs as CPU tensors).

Generation (see ``DESIGN.md``, "Generation"): an executor also hosts *decoder shards*
(:class:`graphs.decoding.DecoderShard`, loaded with :meth:`Executor.load_shard`) and keeps,
per shard, the KV cache of every sequence that runs through it. :meth:`Executor.step`
runs one prefill or decode step of a batch of sequences on a shard: only the new tokens'
ids or hidden states come in and go out, the caches stay here until :meth:`Executor.free`
drops them. A step returns its output (a CPU tensor: hidden states, logits or sampled token
ids) and a :class:`StepMeta`. The device move is one hook, ``_prepare_module(module)``
(identity on the CPU; accelerators copy the module to their device), and the caches live
wherever the prepared module's parameters do.

Example:
    >>> from executors.cpu import CPUExecutor
    >>> ex = CPUExecutor()
    >>> ex.run(3)
    Traceback (most recent call last):
    ...
    executors.errors.ExecutorStateLost: cpu: partition 3 is not loaded; loaded partitions: (none)
"""
from __future__ import annotations

import operator
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch

from .errors import ExecutorError, ExecutorStateLost

__all__ = ["ExecutionResult", "Executor", "MemberError", "MetaColumn", "StepMeta", "map_tensors"]


@dataclass(frozen=True)
class ExecutionResult:
    """What one run of one partition produced and measured.

    Example:
        >>> r = ExecutionResult(outputs=(1,), device="cpu", partition=0, start=0.0,
        ...                     duration=0.5, wall=0.5)
        >>> r.outputs, r.end
        ((1,), 0.5)
    """

    outputs: tuple  # the partition's outputs in Partition.outputs order (CPU or meta tensors)
    device: str  # device name of the executor that ran it
    partition: int  # partition id
    start: float  # wall clock (time.time()) when the run began, seconds
    duration: float  # seconds the device took: measured for real devices, predicted for simulated ones
    wall: float  # seconds actually spent in run() (pacing sleep included)
    simulated: bool = False  # True when duration is a simulated device's time
    computed: bool = True  # False in timing-only mode: outputs are meta tensors, no values
    request: Any = None  # the request id given to run(), echoed back

    @property
    def end(self) -> float:
        """``start + duration`` (wall clock seconds)."""
        return self.start + self.duration


@dataclass(frozen=True)
class StepMeta:
    """What one generation step of one shard measured (see :meth:`Executor.step`).

    Example:
        >>> m = StepMeta(device="cpu", shard=0, start=10.0, duration=0.25, wall=0.25,
        ...              simulated=False, batch=2, new_tokens=1, context=30, kv_bytes=4096,
        ...              sequences=2)
        >>> m.end, m.tokens
        (10.25, 2)
    """

    device: str  # device name of the executor that ran the step
    shard: int  # shard id
    start: float  # wall clock (time.time()) when the step began, seconds
    duration: float  # seconds the device took: measured for real devices, cost-model time for simulated ones
    wall: float  # seconds actually spent in step() (pacing sleep included)
    simulated: bool  # True when duration is a simulated device's time
    batch: int  # sequences in the step
    new_tokens: int  # tokens each sequence added (T; the prompt for a prefill; steps of a multi-step call)
    context: int  # sum over the batch of the cached positions before the step
    kv_bytes: int  # bytes of all KV caches this executor holds after the step (every shard)
    sequences: int  # live sequences on this executor after the step (with a cache in any shard)
    exit: dict | None = None  # token-exit counters of the call (graphs.exit_decoding.ExitStepInfo), if any

    @property
    def end(self) -> float:
        """``start + duration`` (wall clock seconds)."""
        return self.start + self.duration

    @property
    def tokens(self) -> int:
        """Token positions the step processed: ``batch * new_tokens``."""
        return self.batch * self.new_tokens


@dataclass(frozen=True)
class MemberError:
    """Stands in for one request's outputs when its run of a partition failed inside a
    group call (see :meth:`executors.ray_actor.ExecutorHost.run_group`): the other requests
    of the group are unaffected, and later partitions pass it on instead of running.

    Example:
        >>> e = MemberError("sim:x: partition 2 failed: IndexError: index out of range")
        >>> e.summary, type(e.exception()).__name__
        ('sim:x: partition 2 failed: IndexError: index out of range', 'ExecutorError')
    """

    message: str

    @property
    def summary(self) -> str:
        """The message's first non-empty line (what failed; tracebacks and notes follow it)."""
        lines = [ln.strip() for ln in self.message.splitlines() if ln.strip()]
        return lines[0] if lines else "error"

    def exception(self) -> ExecutorError:
        """The failure as an :class:`~executors.errors.ExecutorError`."""
        return ExecutorError(self.message)


@dataclass(frozen=True)
class MetaColumn:
    """What one group call of a partition measured, compactly (it travels with every call):
    per request of the group a row ``(start, duration, wall)``, ``None`` (not run) or a
    :class:`MemberError`. Indexing gives the request's :class:`ExecutionResult` (without
    outputs), ``None`` or the error.

    Example:
        >>> col = MetaColumn("cpu", 3, False, True, ("a", "b"), ((1.0, 0.5, 0.5), None))
        >>> col[0].request, col[0].end, col[1], len(col)
        ('a', 1.5, None, 2)
    """

    device: str
    partition: int
    simulated: bool
    computed: bool
    requests: tuple
    rows: tuple

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> "ExecutionResult | MemberError | None":
        row = self.rows[i]
        if row is None or isinstance(row, MemberError):
            return row
        start, duration, wall = row
        return ExecutionResult((), self.device, self.partition, start, duration, wall,
                               self.simulated, self.computed, self.requests[i])


def map_tensors(x: Any, fn) -> Any:
    """Apply ``fn`` to every tensor in a nested tuple / list / dict, rebuilding the rest.

    Example:
        >>> map_tensors((torch.ones(1), [2, {"a": torch.zeros(1)}]), lambda t: t + 1)
        (tensor([2.]), [2, {'a': tensor([1.])}])
    """
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(map_tensors(v, fn) for v in x))
    if isinstance(x, tuple):
        return tuple(map_tensors(v, fn) for v in x)
    if isinstance(x, list):
        return [map_tensors(v, fn) for v in x]
    if isinstance(x, dict):
        return {k: map_tensors(v, fn) for k, v in x.items()}
    return x


@dataclass
class _Loaded:
    partition: Any  # graphs.partition.Partition
    prepared: Any  # what _prepare returned (the module on the device)
    predicted: float | None  # seconds the cost model predicts for one run, if given
    runs: int = 0
    busy: float = 0.0  # sum of durations, seconds


@dataclass
class _Shard:
    shard: Any  # graphs.decoding.DecoderShard as given to load_shard
    prepared: Any  # the shard module on the device (what _prepare_module returned)
    predicted: float | None  # seconds the cost model predicts for one step, if given (health only)
    caches: dict = field(default_factory=dict)  # sequence id -> graphs.decoding.SequenceKV
    steps: int = 0
    busy: float = 0.0  # sum of step durations, seconds


def _cache_bytes(caches: Any) -> int:
    # list() snapshots a dict's values at once (under the GIL), so a control-group call
    # (kv_stats, health) reading while a step adds caches never sees the dict change size
    return sum(kv.nbytes for kv in list(caches))


class Executor(ABC):
    """Runs partitions and decoder shards on one device (see the module docstring).

    Attributes:
        device: the device name this executor reports (``"cpu"``, ``"cuda:0"``, ``"sim:x"``).
        kind: ``"cpu"``, ``"cuda"``, ``"npu"`` or ``"sim"``.

    Example:
        >>> import torch, torch.fx
        >>> from executors.cpu import CPUExecutor
        >>> from graphs.partition import Partition
        >>> ex = CPUExecutor()
        >>> ex.load(Partition(7, "cpu", torch.fx.symbolic_trace(lambda x: (x - 1,)), ("x",), ("sub",)))
        >>> ex.loaded(), ex.run(7, torch.ones(1)).outputs
        ((7,), (tensor([0.]),))
        >>> ex.health()["runs"]
        1
        >>> ex.unload(7); ex.loaded()
        ()
    """

    kind: ClassVar[str] = ""

    def __init__(self, device: str):
        self.device = device
        self._parts: dict[int, _Loaded] = {}
        self._runs = 0
        self._errors = 0
        self._last_error: str | None = None
        self._busy = 0.0
        self._shards: dict[int, _Shard] = {}
        self._steps = 0

    # ------------------------------------------------------------------ core
    def load(self, partition: Any, predicted: float | None = None) -> None:
        """Make ``partition`` (a :class:`graphs.partition.Partition`) runnable here.

        ``predicted`` is the cost model's seconds for one run on this device (the Runtime
        computes it); real executors keep it for :meth:`health`, the simulated one reports
        it as the duration. Loading an id again replaces the partition.
        """
        for attr in ("id", "module", "inputs", "outputs"):
            if not hasattr(partition, attr):
                raise ExecutorError(f"{self.device}: load() needs a graphs.partition.Partition; "
                                    f"{type(partition).__name__} has no {attr!r}")
        if predicted is not None and (not isinstance(predicted, (int, float)) or predicted < 0):
            raise ExecutorError(f"{self.device}: predicted must be seconds >= 0 or None, got {predicted!r}")
        try:
            prepared = self._prepare(partition)
        except ExecutorError:
            raise
        except Exception as e:
            raise ExecutorError(f"{self.device}: could not load partition {partition.id}: {e}") from e
        self._parts[int(partition.id)] = _Loaded(partition, prepared,
                                                 None if predicted is None else float(predicted))

    def run(self, partition_id: int, *args: Any, request: Any = None) -> ExecutionResult:
        """Run loaded partition ``partition_id`` on ``args`` (its inputs, in order)."""
        entry = self._entry(partition_id)
        p = entry.partition
        if len(args) != len(p.inputs):
            raise ExecutorError(f"{self.device}: partition {partition_id} takes {len(p.inputs)} inputs "
                                f"({', '.join(p.inputs) or 'none'}), got {len(args)}")
        start = time.time()
        t0 = time.perf_counter()
        try:
            outputs, duration, computed = self._run_entry(entry, args)
        except Exception as e:
            self._errors += 1
            self._last_error = f"partition {partition_id}: {type(e).__name__}: {e}"
            if isinstance(e, ExecutorError):
                raise
            raise ExecutorError(f"{self.device}: partition {partition_id} failed: {type(e).__name__}: {e}") from e
        wall = time.perf_counter() - t0
        if duration is None:
            duration = wall
        entry.runs += 1
        entry.busy += duration
        self._runs += 1
        self._busy += duration
        return ExecutionResult(outputs=tuple(outputs), device=self.device, partition=int(partition_id),
                               start=start, duration=float(duration), wall=wall,
                               simulated=self.kind == "sim", computed=computed, request=request)

    def partition(self, partition_id: int) -> Any:
        """The loaded partition ``partition_id``; raises :class:`ExecutorError` ("is not
        loaded") when it is not."""
        return self._entry(partition_id).partition

    def unload(self, partition_id: int) -> None:
        """Forget partition ``partition_id`` and free what it held on the device."""
        self._entry(partition_id)
        del self._parts[int(partition_id)]

    # ------------------------------------------------------------ generation
    def load_shard(self, shard: Any, predicted: float | None = None) -> None:
        """Host ``shard`` (a :class:`graphs.decoding.DecoderShard`) under its ``id``.

        ``predicted`` is the cost model's seconds for one step, kept for :meth:`health`.
        Loading an id again replaces the shard and drops the caches it held.

        Example:
            >>> from executors.cpu import CPUExecutor
            >>> from graphs.decoding import DecoderShard
            >>> from graphs.models import decoder
            >>> ex = CPUExecutor()
            >>> ex.load_shard(DecoderShard(decoder("tiny"), 0, 5, id=1))
            >>> ex.shards()
            (1,)
        """
        from graphs.decoding import DecoderShard

        if not isinstance(shard, DecoderShard):
            raise ExecutorError(f"{self.device}: load_shard() needs a graphs.decoding.DecoderShard, got "
                                f"{type(shard).__name__}; partitions go to load()")
        if predicted is not None and (isinstance(predicted, bool) or not isinstance(predicted, (int, float))
                                      or predicted < 0):
            raise ExecutorError(f"{self.device}: predicted must be seconds >= 0 or None, got {predicted!r}")
        try:
            prepared = self._prepare_module(shard)
        except ExecutorError:
            raise
        except Exception as e:
            raise ExecutorError(f"{self.device}: could not load shard {shard.id} "
                                f"({shard.blocks[0]}..{shard.blocks[-1]}): {e}") from e
        self._shards[int(shard.id)] = _Shard(shard, prepared, None if predicted is None else float(predicted))

    def step(self, shard_id: int, seq_ids: Sequence[int], x: torch.Tensor, *,
             reserve: Sequence[int] | None = None, sample: Sequence[tuple] | None = None,
             all_logits: bool = False, steps: int = 1, exit: dict | None = None) -> tuple[torch.Tensor, StepMeta]:
        """One prefill or decode step of the sequences ``seq_ids`` on shard ``shard_id``.

        Parameters:
            shard_id: a shard loaded with :meth:`load_shard`.
            seq_ids: one id per row of ``x``, all different.
            x: token ids ``(B, T)`` int64 for a shard that starts with the embedding, hidden
                states ``(B, T, hidden)`` otherwise (on any device; moved here).
            reserve: these sequences start anew here (prefill): each gets a fresh cache with
                room for ``reserve[i]`` positions (its final length, so nothing is ever copied),
                replacing any cache of that id in this shard. Without it every sequence must
                already have a cache in this shard.
            sample: last shard only: one ``(SamplingParams, step index)`` per sequence; the step
                then returns the sampled token ids ``(B,)`` int64 (:func:`graphs.sampling.sample`)
                instead of logits.
            all_logits: last shard only: logits of every new position ``(B, T, vocab)`` instead
                of the last one's ``(B, vocab)``.
            steps: with ``sample``, on a shard that is the whole decoder: run this many steps
                in this call, each feeding back the token the one before sampled (multi-step
                decoding: one call, and so one Ray round trip, per ``steps`` tokens); returns
                the token ids ``(B, steps)``. The caller keeps ``steps`` within every
                sequence's reserved room and drops what follows a stop token.
            exit: decode with token exits on a :class:`graphs.exit_decoding.ExitDecoderShard`
                (greedy): ``{"mode": "lossy" | "speculative", "gate": name, "thresholds":
                per-exit (lossy), "threshold": the draft threshold, "max_draft", "exit_index"
                (speculative), "limits": tokens each sequence may still emit, "lengths": its
                confirmed cache positions}``. The first shard takes each sequence's last token
                ``(B, 1)``, the others the state the shard before returned
                (:class:`graphs.exit_decoding.ExitState` or ``DraftState``); a shard that is
                the whole decoder runs ``steps`` lossy steps or speculative rounds, each
                sequence within its limit, a shard of a chain its part of one. The last shard
                returns the token ids ``(B, n)`` padded with -1 (rows emit different numbers
                of tokens); the counters are in ``meta.exit``.

        Returns:
            ``(output, meta)``: the output as a CPU tensor (hidden states ``(B, T, hidden)``,
            logits or token ids) and a :class:`StepMeta`.

        Raises:
            ExecutorStateLost: the shard is not loaded, or a sequence has no cache in it
                (the actor restarted?): the caller prefills the sequence again.
            ExecutorError: bad arguments, or the step failed (its sequences then have no
                cache in this shard any more: a retry prefills them again).

        Example:
            >>> import torch
            >>> from executors.cpu import CPUExecutor
            >>> from graphs.decoding import DecoderShard
            >>> from graphs.models import decoder
            >>> ex = CPUExecutor()
            >>> ex.load_shard(DecoderShard(decoder("tiny"), 0, 5))
            >>> logits, meta = ex.step(0, (7,), torch.tensor([[1, 2, 3]]), reserve=(8,))
            >>> logits.shape, meta.batch, meta.new_tokens, meta.context, meta.sequences
            (torch.Size([1, 256]), 1, 3, 0, 1)
            >>> _, meta = ex.step(0, (7,), torch.tensor([[4]]))
            >>> meta.context, ex.free([7]) == meta.kv_bytes, ex.kv_stats()["sequences"]
            (3, True, 0)
        """
        entry = self._shard_entry(shard_id)
        shard = entry.shard
        if exit is not None:
            seq_ids = tuple(int(v) for v in seq_ids)
            self._check_exit(shard, x, reserve, sample, all_logits, exit, len(seq_ids), steps)
        else:
            seq_ids, reserve, sample = self._check_step(shard, seq_ids, x, reserve, sample, all_logits)
        if exit is None and steps != 1 and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
                                            or sample is None or not (shard.first and shard.last)):
            raise ExecutorError(f"{self.device}: steps={steps!r} needs an int >= 1, sample=, and a shard "
                                f"that is the whole decoder (this one: {shard.blocks[0]}..{shard.blocks[-1]})")
        if reserve is None:
            caches = []
            for s in seq_ids:
                kv = entry.caches.get(s)
                if kv is None:
                    raise ExecutorStateLost(f"{self.device}: no KV cache for sequence {s} in shard "
                                            f"{shard.id} (actor restarted?); prefill it again with reserve=")
                caches.append(kv)
        else:
            caches = [entry.prepared.new_cache(r) for r in reserve]
        context = sum(kv.length for kv in caches)
        start = time.time()
        t0 = time.perf_counter()
        info = None
        try:
            if exit is not None:
                out, info = self._exit_entry(entry, x, caches, exit, steps)
                duration = self._exit_duration(shard, info.pop("work", []), context / max(len(seq_ids), 1))
            elif steps == 1:
                out, duration = self._step_entry(entry, x, caches, all_logits, sample)
            else:
                toks, duration = [], 0.0
                for j in range(steps):
                    tok, d = self._step_entry(entry, x, caches, False,
                                              tuple((p, int(i) + j) for p, i in sample))
                    toks.append(tok)
                    duration = None if d is None or duration is None else duration + d
                    x = tok[:, None]
                out = torch.stack(toks, dim=1)
        except Exception as e:
            self._errors += 1
            self._last_error = f"shard {shard.id}: {type(e).__name__}: {e}"
            if reserve is None:  # caches in an unknown state: the next step must prefill again
                for s in seq_ids:
                    entry.caches.pop(s, None)
            if isinstance(e, ExecutorError):
                raise
            raise ExecutorError(f"{self.device}: shard {shard.id} ({shard.blocks[0]}..{shard.blocks[-1]}) "
                                f"step failed: {type(e).__name__}: {e}") from e
        wall = time.perf_counter() - t0
        if reserve is not None:
            entry.caches.update(zip(seq_ids, caches))
        if duration is None:
            duration = wall
        entry.steps += 1
        entry.busy += duration
        self._steps += 1
        self._busy += duration
        kv = self.kv_stats()
        meta = StepMeta(device=self.device, shard=shard.id, start=start, duration=float(duration), wall=wall,
                        simulated=self.kind == "sim", batch=len(seq_ids),
                        new_tokens=(steps if exit is not None or steps != 1 else int(x.shape[1])),
                        context=int(context), kv_bytes=kv["bytes"], sequences=kv["sequences"], exit=info)
        return out, meta

    def _check_exit(self, shard: Any, x: Any, reserve: Any, sample: Any, all_logits: bool,
                    exit: Any, batch: int, steps: int) -> None:
        from graphs.exit_decoding import EXIT_MODES

        where = f"{self.device}: exit step of shard {shard.id}"
        if not hasattr(shard, "draft_part"):
            raise ExecutorError(f"{where}: exit= needs a graphs.exit_decoding.ExitDecoderShard, this shard is a "
                                f"{type(shard).__name__}")
        if not isinstance(exit, dict) or exit.get("mode") not in EXIT_MODES[1:]:
            raise ExecutorError(f"{where}: exit must be a dict with mode in {EXIT_MODES[1:]}; got {exit!r}")
        if reserve is not None or sample is not None or all_logits:
            raise ExecutorError(f"{where}: an exit step decodes; it takes no reserve=, sample= or all_logits")
        if shard.first and not (isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == 1
                                and x.dtype == torch.long):
            raise ExecutorError(f"{where}: x must be each sequence's last token (B, 1) int64")
        if not shard.first and not hasattr(x, "batch"):
            raise ExecutorError(f"{where}: x must be the previous shard's ExitState or DraftState, got "
                                f"{type(x).__name__}")
        if (x.shape[0] if isinstance(x, torch.Tensor) else x.batch) != batch:
            raise ExecutorError(f"{where}: {batch} sequence ids for a batch of "
                                f"{x.shape[0] if isinstance(x, torch.Tensor) else x.batch}")
        for key in ("limits", "lengths"):
            if len(exit.get(key, ())) != batch:
                raise ExecutorError(f"{where}: exit[{key!r}] needs one value per sequence ({batch})")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 \
                or (steps != 1 and not (shard.first and shard.last)):
            raise ExecutorError(f"{where}: steps={steps!r} must be an int >= 1, and 1 unless the shard is the "
                                f"whole decoder")

    def _exit_entry(self, entry: Any, x: Any, caches: list, exit: dict, steps: int) -> tuple[Any, dict]:
        """Run the exit decoding of this shard (see :meth:`step`): ``(output, counters)``. The
        whole decoder runs ``steps`` lossy steps or speculative rounds and returns the token
        ids padded with -1; a shard of a chain runs its part of one step or round and returns
        the state for the next shard, or (the last) the tokens."""
        from graphs.exit_decoding import ExitStepInfo

        module = entry.prepared
        param = next(module.parameters())
        if isinstance(x, torch.Tensor):
            x = x.to(param.device)
        elif x.hidden.device != param.device:
            x.hidden = x.hidden.to(param.device)
        info = ExitStepInfo(len(module.exit_layers))
        info["mode"] = mode = exit["mode"]
        lengths = [int(v) for v in exit["lengths"]]
        args = (exit["gate"], exit["thresholds"]) if mode == "lossy" else None
        with torch.no_grad():
            if not (module.first and module.last):
                if mode == "lossy":
                    out = module.exit_part(x[:, 0] if module.first else x, caches, *args, info=info,
                                           lengths=lengths)
                    rows = [[t] for t in out.tolist()] if module.last else None
                elif module.first:
                    out = module.draft_part(x[:, 0], caches, exit["gate"], exit["threshold"], exit["max_draft"],
                                            exit["limits"], exit.get("exit_index", 0), info=info, lengths=lengths)
                    rows = out if module.last else None
                else:
                    out = module.verify_part(x, caches, info=info, lengths=lengths)
                    rows = out if module.last else None
                if rows is None:
                    return out, info
            else:
                b = x.shape[0]
                rows = [[] for _ in range(b)]
                limits = [int(v) for v in exit["limits"]]
                last = x[:, 0].clone()
                for step in range(steps):
                    act = [i for i in range(b) if limits[i] > 0]
                    if not act:
                        break
                    idx = torch.tensor(act)
                    cs = [caches[i] for i in act]
                    lens = [lengths[i] for i in act] if step == 0 else None
                    if mode == "lossy":
                        new = [[t] for t in module.exit_step(last[idx], cs, *args, info, lengths=lens).tolist()]
                    else:
                        new = module.speculate(last[idx], cs, exit["gate"], exit["threshold"], exit["max_draft"],
                                               [limits[i] for i in act], exit.get("exit_index", 0), info,
                                               lengths=lens)
                    for i, r in zip(act, new):
                        rows[i].extend(r)
                        limits[i] -= len(r)
                        last[i] = r[-1]
        n = max(len(r) for r in rows)
        out = torch.full((len(rows), n), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        info["tokens"] = sum(len(r) for r in rows)
        return out, info

    def _exit_duration(self, shard: Any, work: list, context: float) -> float | None:
        """Seconds the device took for an exit call's ``work`` (None: the measured wall time)."""
        return None

    def free(self, seq_ids: Sequence[int]) -> int:
        """Drop the caches of ``seq_ids`` in every shard here; returns the bytes freed.
        Unknown ids are ignored, so freeing twice is harmless."""
        ids = {int(s) for s in seq_ids}
        freed = 0
        for entry in list(self._shards.values()):
            for s in ids:
                kv = entry.caches.pop(s, None)
                if kv is not None:
                    freed += kv.nbytes
        return freed

    def unload_shard(self, shard_id: int) -> int:
        """Forget shard ``shard_id`` and its caches; returns the cache bytes freed."""
        entry = self._shard_entry(shard_id)
        del self._shards[int(shard_id)]
        return _cache_bytes(entry.caches.values())

    def shards(self) -> tuple[int, ...]:
        """Ids of the loaded shards, sorted."""
        return tuple(sorted(list(self._shards)))

    def kv_stats(self) -> dict[str, Any]:
        """The KV caches held here: ``{"sequences": live sequences, "bytes": total bytes,
        "per_shard": {shard id: {"sequences": n, "bytes": b}}}``."""
        per, live = {}, set()
        for sid, entry in sorted(list(self._shards.items())):
            caches = list(entry.caches.items())
            live.update(s for s, _ in caches)
            per[sid] = {"sequences": len(caches), "bytes": _cache_bytes(kv for _, kv in caches)}
        return {"sequences": len(live), "bytes": sum(p["bytes"] for p in per.values()), "per_shard": per}

    # ------------------------------------------------------------- bookkeeping
    def loaded(self) -> tuple[int, ...]:
        """Ids of the loaded partitions, sorted."""
        return tuple(sorted(self._parts))

    def health(self) -> dict[str, Any]:
        """A snapshot: device, kind, loaded ids, run, step and error counts, busy seconds
        (runs and steps), per partition its runs, mean duration and predicted seconds, the
        KV caches held (``kv_bytes``, ``sequences``) and per shard its blocks, steps, mean
        step duration, predicted seconds, sequences and cache bytes."""
        kv = self.kv_stats()
        return {
            "device": self.device, "kind": self.kind, "ok": True, "loaded": self.loaded(),
            "runs": self._runs, "errors": self._errors, "last_error": self._last_error,
            "busy": self._busy, "steps": self._steps,
            "partitions": {pid: {"runs": e.runs, "mean": (e.busy / e.runs if e.runs else None),
                                 "predicted": e.predicted} for pid, e in sorted(self._parts.items())},
            "kv_bytes": kv["bytes"], "sequences": kv["sequences"],
            "shards": {sid: {"blocks": (e.shard.blocks[0], e.shard.blocks[-1]), "steps": e.steps,
                             "mean": (e.busy / e.steps if e.steps else None), "predicted": e.predicted,
                             **kv["per_shard"][sid]}
                       for sid, e in sorted(list(self._shards.items()))},
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.device!r}, loaded={self.loaded()})"

    # ------------------------------------------------------------------ hooks
    def _lookup(self, table: dict, key: Any, what: str) -> Any:
        """``table[int(key)]``, or :class:`ExecutorStateLost` naming what is loaded (a
        restarted actor has nothing: the caller reloads and retries)."""
        try:
            return table[int(key)]
        except (KeyError, TypeError, ValueError):
            ids = ", ".join(map(str, sorted(table))) or "(none)"
            raise ExecutorStateLost(f"{self.device}: {what} {key!r} is not loaded; "
                                    f"loaded {what}s: {ids}") from None

    def _entry(self, partition_id: int) -> _Loaded:
        return self._lookup(self._parts, partition_id, "partition")

    def _shard_entry(self, shard_id: int) -> _Shard:
        return self._lookup(self._shards, shard_id, "shard")

    def _check_step(self, shard: Any, seq_ids: Any, x: Any, reserve: Any, sample: Any,
                    all_logits: bool) -> tuple[tuple, tuple | None, tuple | None]:
        """Validated ``(seq_ids, reserve, sample)`` of a :meth:`step` call."""
        where = f"{self.device}: step of shard {shard.id}"
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ExecutorError(f"{where}: x must be a tensor (batch, T[, hidden]), got "
                                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        try:
            ids = tuple(int(s) for s in seq_ids)
        except (TypeError, ValueError):
            raise ExecutorError(f"{where}: seq_ids must be ints, got {seq_ids!r}") from None
        if len(ids) != x.shape[0] or len(set(ids)) != len(ids):
            raise ExecutorError(f"{where}: needs one distinct sequence id per row of x; got "
                                f"{len(ids)} ids {ids[:8]} for {x.shape[0]} rows")
        if reserve is not None:
            try:
                caps = tuple(operator.index(r) for r in reserve)
            except TypeError:
                caps = ()
            if len(caps) != len(ids) or any(r < x.shape[1] for r in caps):
                raise ExecutorError(f"{where}: reserve must give one capacity >= T = {x.shape[1]} "
                                    f"per sequence ({len(ids)}), got {reserve!r}")
            reserve = caps
        if (sample is not None or all_logits) and not shard.last:
            raise ExecutorError(f"{where}: sample/all_logits need the shard that ends with lm_head; "
                                f"this one ends with {shard.blocks[-1]}")
        if sample is not None:
            sample = tuple(sample)
            if all_logits or len(sample) != len(ids) or any(not isinstance(p, tuple) or len(p) != 2
                                                            for p in sample):
                raise ExecutorError(f"{where}: sample must give one (SamplingParams, step index) per "
                                    f"sequence ({len(ids)}), without all_logits; got {sample!r}")
        return ids, reserve, sample

    def _step_entry(self, entry: _Shard, x: torch.Tensor, caches: list, all_logits: bool,
                    sample: tuple | None) -> tuple[torch.Tensor, float | None]:
        """(output as a CPU tensor, duration or None for the measured wall time)."""
        from graphs.sampling import sample as sample_tokens

        module = entry.prepared
        param = next(module.parameters(), None)
        x = x if param is None or x.device == param.device else x.to(param.device)
        with torch.no_grad():
            out = module(x, caches, all_logits=all_logits)
            if not module.layers:  # no cache to fill: keep the positions counted all the same
                for kv in caches:
                    kv.length += x.shape[1]
            if out.device.type != "meta":
                out = out.cpu()
            self._synchronize()
            if sample is not None:
                if out.device.type == "meta":
                    raise ExecutorError(f"{self.device}: cannot sample in timing-only mode (no logits "
                                        f"are computed); step the last shard without sample=")
                out = sample_tokens(out, [params for params, _ in sample], [int(i) for _, i in sample])
        return out, None

    def _prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Return ``module`` ready to run on this device (a shard). On the CPU its tensors are
        copied into this process's own memory: a shard that came through Ray's object store
        is deserialised zero-copy, its weights left in the shared-memory store's mapping,
        where a decode step (which streams every weight) ran about 10% slower here."""
        for t in (*module.parameters(), *module.buffers()):
            if not t.is_meta:
                t.data = t.data.clone()
        return module

    def _synchronize(self) -> None:
        """Wait for the device's queued work (no-op on the CPU)."""

    def _run_entry(self, entry: _Loaded, args: tuple) -> tuple[tuple, float | None, bool]:
        """(outputs, duration or None for the measured wall time, computed)."""
        with torch.no_grad():
            outs = self._execute(entry.prepared, args)
        return outs, None, True

    @abstractmethod
    def _prepare(self, partition: Any) -> Any:
        """Return what :meth:`_execute` runs (typically the module, on the device)."""

    @abstractmethod
    def _execute(self, prepared: Any, args: tuple) -> tuple:
        """Run ``prepared`` on ``args``; return the outputs as a tuple of CPU tensors."""
