"""The :class:`scheduler.Runtime`'s generation methods (``generate``, ``submit_generate``,
``generate_stream``, their statistics and Gantt chart), mixed into the Runtime.

The engine behind them is :mod:`scheduler.generation`; the Runtime's side of placement and
request checks is :mod:`scheduler.generation_service` (``self._generation``).
"""
from __future__ import annotations

import os
from typing import Any

from .errors import RuntimeClosedError, RuntimeConfigError

__all__ = ["RuntimeGeneration"]


class RuntimeGeneration:
    """Generation through the decoder's shards (see :meth:`submit_generate`).

    Example:
        >>> from scheduler.runtime import Runtime
        >>> issubclass(Runtime, RuntimeGeneration), callable(Runtime.generate)
        (True, True)
    """

    # ------------------------------------------------------------ generation
    def _gen(self):
        if self._generation is None:
            raise RuntimeConfigError(
                f"this runtime cannot generate: its model is a {type(self.model).__name__}, not a "
                f"graphs.models.Decoder served without a gate other than token exits (or it is "
                f"timing_only)")
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down; it accepts no more generation requests")
        return self._generation

    @property
    def generation_plan(self):
        """The plan of the decoder's blocks for generation (None for other models)."""
        return None if self._generation is None else self._generation.plan

    @property
    def generation_graph(self):
        """The step graph the generation plan was made on (KV cache as ``state_bytes``)."""
        return None if self._generation is None else self._generation.graph

    @property
    def generation_stages(self) -> tuple:
        """The shard chain: :class:`scheduler.generation.GenStage` per shard, in block order."""
        return () if self._generation is None else self._generation.stages

    def prepare_generation(self) -> None:
        """Load the decoder shards on their actors now (else the first generation does)."""
        self._gen().engine()

    def submit_generate(self, prompt: Any, max_new_tokens: int = 32, **kw: Any):
        """Start generating; returns a :class:`scheduler.generation.GenerationFuture`.

        ``prompt``: token ids (a list or a 1-D integer tensor). Keywords: ``temperature``
        (0: greedy), ``top_k``, ``top_p``, ``seed``, ``stop`` (token ids that end the
        sequence; default the tokenizer's EOS when the model has one), ``timeout``
        (seconds from this call), ``exit_mode`` (with token exits, see the Runtime's ``gate``:
        ``"full"``, ``"lossy"`` or ``"speculative"``; default the generation config's).
        Bad input raises here, before anything runs.

        Example (needs Ray; see tests/scheduler/test_generation.py)::

            fut = rt.submit_generate([1, 2, 3], max_new_tokens=8, temperature=0.7, seed=1)
            print(fut.result().tokens)
        """
        return self._gen().submit(prompt, max_new_tokens, **kw)

    def generate(self, prompt: Any, max_new_tokens: int = 32, **kw: Any):
        """Generate and wait: a :class:`scheduler.generation.GenerationResult` (see
        :meth:`submit_generate` for the arguments)."""
        return self.submit_generate(prompt, max_new_tokens, **kw).result()

    def generate_stream(self, prompt: Any, max_new_tokens: int = 32, **kw: Any):
        """Generate, yielding each token id as it comes (see :meth:`submit_generate`)."""
        g = self._gen()
        fut = g.submit(prompt, max_new_tokens, stream=True, **kw)
        return g.engine().stream(fut)

    def generation_stats(self):
        """Counters of generation: tokens, steps, batch sizes, busy time, energy
        (:class:`scheduler.generation.GenerationStats`)."""
        return self._gen().stats()

    def reset_generation_stats(self) -> None:
        """Zero the generation counters."""
        self._gen().engine().reset_stats()

    def kv_stats(self) -> dict:
        """device -> KV caches its executor holds now: ``{"sequences", "bytes", "per_shard"}``."""
        return self._gen().kv_stats()

    def write_generation_gantt(self, path: str | os.PathLike, last: int = 60, **kw: Any) -> int:
        """Gantt chart (PNG) of the last ``last`` shard calls of generation (prefills and
        decode steps, on each device, in device time); returns the number of bars."""
        from .trace import TraceEvent, gantt

        steps = list(self.generation_stats().steps)[-last:]
        if not steps:
            raise RuntimeConfigError("no generation has run yet: nothing to draw")
        t0 = min(s[2] for s in steps)
        evs = [TraceEvent(f"{k} b={b}", d, st - t0, st - t0 + dur, category=k, args={"kind": k})
               for k, d, st, dur, b, _ in steps]
        kw.setdefault("title", f"{self.model.config.name}: generation, last {len(evs)} shard calls")
        return gantt(evs, path, **kw)

