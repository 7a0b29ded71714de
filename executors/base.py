"""The executor interface: load a partition, run it, report the result and what was measured.

An :class:`Executor` hosts the partitions placed on one device. Its core is three methods,
:meth:`Executor.load`, :meth:`Executor.run` and :meth:`Executor.unload`; everything else
(:meth:`~Executor.loaded`, :meth:`~Executor.health`) is bookkeeping on top. A run returns
an :class:`ExecutionResult`, a frozen dataclass that says what was computed, where, when
and how long it took, so the scheduler never needs to call back into the executor.

Subclasses implement two hooks: ``_prepare(partition)`` (make the partition's module
ready on the device, e.g. move it there) and ``_execute(prepared, args)`` (run it and
return a tuple of outputs as CPU tensors).

Example:
    >>> from executors.cpu import CPUExecutor
    >>> ex = CPUExecutor()
    >>> ex.run(3)
    Traceback (most recent call last):
    ...
    executors.errors.ExecutorStateLost: cpu: partition 3 is not loaded; loaded partitions: (none)
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .errors import ExecutorError, ExecutorStateLost

__all__ = ["ExecutionResult", "Executor", "MemberError", "MetaColumn", "map_tensors"]


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


class Executor(ABC):
    """Runs partitions on one device (see the module docstring).

    Attributes:
        device: the device name this executor reports (``"cpu"``, ``"cuda:0"``, ``"sim:x"``).
        kind: ``"cpu"``, ``"cuda"``, ``"npu"`` or ``"sim"``.
    """

    kind: ClassVar[str] = ""

    def __init__(self, device: str):
        self.device = device
        self._parts: dict[int, _Loaded] = {}
        self._runs = 0
        self._errors = 0
        self._last_error: str | None = None
        self._busy = 0.0

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

    # ------------------------------------------------------------- bookkeeping
    def loaded(self) -> tuple[int, ...]:
        """Ids of the loaded partitions, sorted."""
        return tuple(sorted(self._parts))

    def health(self) -> dict[str, Any]:
        """A snapshot: device, kind, loaded ids, run and error counts, busy seconds,
        and per partition its runs, mean duration and predicted seconds."""
        return {
            "device": self.device, "kind": self.kind, "ok": True, "loaded": self.loaded(),
            "runs": self._runs, "errors": self._errors, "last_error": self._last_error,
            "busy": self._busy,
            "partitions": {pid: {"runs": e.runs, "mean": (e.busy / e.runs if e.runs else None),
                                 "predicted": e.predicted} for pid, e in sorted(self._parts.items())},
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.device!r}, loaded={self.loaded()})"

    # ------------------------------------------------------------------ hooks
    def _entry(self, partition_id: int) -> _Loaded:
        try:
            return self._parts[int(partition_id)]
        except (KeyError, TypeError, ValueError):
            ids = ", ".join(map(str, self.loaded())) or "(none)"
            raise ExecutorStateLost(f"{self.device}: partition {partition_id!r} is not loaded; "
                                    f"loaded partitions: {ids}") from None

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
