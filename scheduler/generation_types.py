"""The records of generation: its configuration, the shard chain, results and counters.

Plain frozen dataclasses shared by :mod:`scheduler.generation` (the engine),
:mod:`scheduler.generation_service` (what the Runtime delegates to) and their callers.

Example:
    >>> GenerationConfig(max_batch=2).max_context
    512
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from policies.phase import PHASES

from .errors import RuntimeConfigError

__all__ = ["GenerationConfig", "GenStage", "GenerationResult", "GenerationStats", "PHASES"]


def _posint(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise RuntimeConfigError(f"generation {name} must be an int >= {lo}, got {v!r}")
    return v


@dataclass(frozen=True)
class GenerationConfig:
    """How a runtime places and runs generation.

    Example:
        >>> GenerationConfig(max_batch=4, phase="decode").max_batch
        4
        >>> GenerationConfig(phase="train")
        Traceback (most recent call last):
        ...
        scheduler.errors.RuntimeConfigError: generation phase 'train' is unknown; valid: prefill, decode, mix
    """

    max_batch: int = 8  # sequences resident at once (KV cache reserved for each); more wait
    max_context: int = 512  # positions per sequence the plan reserves KV cache for
    phase: str = "mix"  # what the placement optimises: "prefill", "decode" or "mix"
    prompt_len: int = 128  # workload mix: typical prompt, tokens
    new_tokens: int = 128  # workload mix: typical output, tokens
    lanes: int | None = None  # decode micro-batches in flight (None: one per device of the chain)
    steps_per_call: int = 4  # decode steps one call runs when the whole decoder is one shard
    # token exits (a Runtime given gate=TokenExits; see graphs.exit_decoding)
    exit_mode: str = "speculative"  # default per request: "full", "lossy" or "speculative"
    exit_gate: str = "learned"  # which of the exits' calibrated gates decides
    max_draft: int = 6  # speculative: most tokens drafted per round
    draft_exit: int = -1  # speculative: index of the exit that drafts (-1: the deepest)
    draft_threshold: float | None = None  # speculative: gate score to keep drafting (None: calibrated)
    exit_thresholds: tuple | None = None  # lossy: per-exit thresholds (None: the cascade certified for lossy)

    def __post_init__(self) -> None:
        _posint("max_batch", self.max_batch)
        _posint("max_context", self.max_context, 2)
        _posint("prompt_len", self.prompt_len)
        _posint("new_tokens", self.new_tokens, 0)
        if self.lanes is not None:
            _posint("lanes", self.lanes)
        _posint("steps_per_call", self.steps_per_call)
        _posint("max_draft", self.max_draft)
        from graphs.exit_decoding import EXIT_MODES

        if self.exit_mode not in EXIT_MODES:
            raise RuntimeConfigError(f"generation exit_mode {self.exit_mode!r} is unknown; valid: "
                                     f"{', '.join(EXIT_MODES)}")
        if self.phase not in PHASES:
            raise RuntimeConfigError(f"generation phase {self.phase!r} is unknown; valid: {', '.join(PHASES)}")

    @classmethod
    def coerce(cls, value: Any) -> "GenerationConfig":
        """``None``/``True`` -> defaults; a dict -> its fields; a GenerationConfig as is."""
        if value is None or value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            bad = sorted(set(value) - set(cls.__dataclass_fields__))
            if bad:
                raise RuntimeConfigError(f"unknown generation option(s) {', '.join(bad)}; valid: "
                                         f"{', '.join(cls.__dataclass_fields__)}")
            return cls(**value)
        raise RuntimeConfigError(f"generation must be a GenerationConfig, a dict or None, got "
                                 f"{type(value).__name__}")


@dataclass(frozen=True)
class GenStage:
    """One shard of the chain: blocks ``start..stop-1`` on ``device``, loaded as ``id``.

    Example:
        >>> from graphs.decoding import block_names
        >>> from graphs.models import get_config
        >>> names = block_names(get_config("tiny"))
        >>> st = GenStage(1000, "sim:npu", 1, 3, tuple(names[1:3]))
        >>> st.blocks, st.stop - st.start
        (('layers.0', 'layers.1'), 2)
    """

    id: int  # shard id in its executor
    device: str  # device name (an executor actor)
    start: int  # first block index (graphs.decoding.block_names)
    stop: int  # one past the last block index
    blocks: tuple[str, ...]  # block names


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation.

    Example:
        >>> r = GenerationResult((5, 6, 7), 3, "length", 0.5, 1.5, 0)
        >>> r.decode_tokens_per_s
        2.0
    """

    tokens: tuple[int, ...]  # generated token ids (prompt excluded)
    prompt_len: int  # tokens in the prompt
    finish_reason: str  # "length" (max_new_tokens reached) or "stop" (a stop token came)
    ttft: float  # seconds from submit to the first token
    latency: float  # seconds from submit to the last token
    retries: int  # times the sequence was prefilled again after a failure
    text: str | None = None  # decoded text, when the runtime has a tokenizer

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first per second of decoding (``(n - 1) / (latency - ttft)``)."""
        n = len(self.tokens) - 1
        span = self.latency - self.ttft
        return n / span if n > 0 and span > 0 else float("nan")


@dataclass(frozen=True)
class GenerationStats:
    """Counters of a runtime's generation since it started (or ``reset``).

    ``busy`` and ``energy`` count what the devices reported: measured seconds on real
    devices, the cost model's seconds on simulated ones (``simulated`` says which).

    Example:
        >>> s = GenerationStats(requests=4, failed=0, prompt_tokens=64, generated_tokens=128,
        ...                     prefill_calls=4, decode_steps=32, mean_decode_batch=3.9, wall=2.0,
        ...                     busy={"sim:npu": 1.5}, energy=32.0, simulated=True,
        ...                     kv_bytes_peak=1 << 20, retries=0)
        >>> s.tokens_per_s, s.tokens_per_joule
        (64.0, 4.0)
    """

    requests: int  # finished (completed) sequences
    failed: int  # sequences that failed, timed out or were cancelled
    prompt_tokens: int  # tokens prefilled (retries included)
    generated_tokens: int  # tokens generated
    prefill_calls: int  # prefill walks of the chain
    decode_steps: int  # decode walks of the chain (each a batch)
    mean_decode_batch: float  # sequences per decode step
    wall: float  # seconds from the first submit to the last token
    busy: Mapping[str, float]  # device -> seconds of work reported
    energy: float | None  # joules (busy at active power, the rest idle), None without power
    simulated: bool  # whether busy/energy are simulated-device times
    kv_bytes_peak: int  # largest KV cache bytes one actor reported
    retries: int  # sequences re-prefilled after a failure
    steps: tuple = field(default=(), repr=False)  # (kind, device, start, duration, batch) per call
    exit: Mapping[str, Any] | None = None  # per exit mode used: policies.gating.token_exit.exit_compute

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per wall second."""
        return self.generated_tokens / self.wall if self.wall > 0 else float("nan")

    @property
    def tokens_per_joule(self) -> float | None:
        """Generated tokens per joule (None without power figures)."""
        return None if not self.energy else self.generated_tokens / self.energy
