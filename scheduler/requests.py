"""Records of the dispatcher (:mod:`scheduler.dispatch`): a partition call (:class:`Stage`),
a request in flight (:class:`_Request`), a group of requests that share actor calls
(:class:`_Group`), the partition calls of one plan version (:class:`_Route`), and the test
that tells a retryable infrastructure failure from an ordinary one
(:func:`_is_infrastructure`).

They hold state only; every transition happens in :class:`scheduler.dispatch.Dispatcher`
under its lock.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One partition call of a request.

    Example:
        >>> Stage(pid=0, device="cpu", inputs=("x",), outputs=("y",)).outputs
        ('y',)
    """

    pid: int  # partition id (as loaded on the device's actor)
    device: str  # device name; the key of the actor that runs it
    inputs: tuple[str, ...]  # value names it consumes, in argument order
    outputs: tuple[str, ...]  # value names it returns, in return order


@dataclass(eq=False)
class _Request:
    rid: int
    inputs: tuple  # the model inputs (kept for retries)
    future: cf.Future
    submitted: float  # time.time()
    deadline: float | None  # time.monotonic() deadline
    attempt: int = 0
    state: str = "running"
    group: "_Group | None" = None  # the group carrying the current attempt (None: not issued)
    meta_refs: list = field(default_factory=list)  # (pid, ObjectRef of the group's meta records, slot)
    exit_depth: int = 0  # depth the request left at; 0 = the full model
    version: int = 0  # plan version of the current attempt (every call of it runs on it)


@dataclass(eq=False)
class _Group:
    """Requests that travel together: one actor call per partition carries all of them."""

    members: tuple  # _Request records; a member's index here is its slot in every column
    version: int  # plan version (every member's)
    values: dict = field(default_factory=dict)  # value name -> ObjectRef or inline column
    select: tuple | None = None  # slots still going on (None: all)
    cursor: int = 0  # index of the next stage to issue (phases with exits)
    pending: dict = field(default_factory=dict)  # part (gate index j, or "out") -> refs awaited
    got: dict = field(default_factory=dict)  # (part, index) -> fetched column
    gates: tuple = ()  # the ExitPoints of the current phase, in order
    decided: int = 0  # how many of them the driver has decided on
    ahead: bool = False  # the phase also ran the rest of the model for its gates' hard members
    dead: bool = False  # finished, or abandoned for a retry: its events are ignored

    def live(self) -> list[tuple[int, "_Request"]]:
        """(slot, request) of the members this group still carries (caller holds the lock)."""
        slots = range(len(self.members)) if self.select is None else self.select
        return [(s, self.members[s]) for s in slots
                if self.members[s].group is self and self.members[s].state == "running"]


@dataclass
class _Route:
    """The partition calls of one plan version (see :meth:`Dispatcher.add_version`)."""

    stages: tuple  # Stage records in a topological order
    stage_of: dict  # pid -> Stage
    uses: dict  # value name -> number of stages reading it
    dag: Any = None  # partition DAG (pids) for a request's simulated makespan
    transfer: Any = None  # transfer(u, v) seconds between partitions
    retired: bool = False  # drained and unloaded; kept for late measurements

    @functools.cached_property
    def window(self) -> int:
        """Groups in flight at once before new requests wait to be coalesced: two per
        device (one running on each device, one queued behind it)."""
        return 2 * max(1, len({s.device for s in self.stages}))


def _uses(stages) -> dict:
    uses: dict[str, int] = {}
    for st in stages:
        for n in st.inputs:
            uses[n] = uses.get(n, 0) + 1
    return uses



def _is_infrastructure(err: BaseException) -> bool:
    """True for failures a retry can fix: a dead or restarting actor, a lost object, a
    worker crash, or a restarted actor that lacks its partitions (the executor's "is not
    loaded" error). A partition that raised (bad values, a bug) is not retried."""
    try:
        import ray.exceptions as rex
    except Exception:  # pragma: no cover
        return False
    infra = (rex.RayActorError, rex.ObjectLostError, rex.WorkerCrashedError)
    from executors.errors import ExecutorError, ExecutorStateLost

    cause = err
    for _ in range(4):
        if isinstance(cause, infra) or isinstance(cause, ExecutorStateLost):
            return True
        if isinstance(cause, ExecutorError) and "is not loaded" in str(cause):
            return True
        nxt = getattr(cause, "cause", None) or cause.__cause__
        if nxt is None or nxt is cause:
            break
        cause = nxt
    return False


__all__ = ["Stage"]
