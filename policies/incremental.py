"""Incremental list scheduling: makespans of assignments near a base one, resumed mid-schedule.

:class:`IncrementalSchedule` is what the local searches (:mod:`policies.search`) evaluate
moves with: a move changes one or two nodes, so the schedule before the first change is the
base's and only the rest is scheduled again (see the class docstring).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .schedule import ScheduleContext

__all__ = ["IncrementalSchedule"]

_INF = math.inf


class IncrementalSchedule:
    """Append-only makespans of assignments near a *base* one, resumed mid-schedule.

    A local search changes one or two nodes' devices (or one node's place in the
    priority list) at a time. With ``insertion=False`` (each node appended after the last
    one on its device) the schedule of the nodes before the first changed position is the
    base's, and the whole state of the engine at a position is the finish of the nodes
    before it plus, per device, the finish of its last node. :meth:`rebase` schedules the
    base once and saves that per-device state at every position (O(n m) floats);
    :meth:`makespan` copies the base's finish times, restores the state at the first
    changed position in O(m) and schedules only the rest. (With insertion the state is
    each device's list of busy intervals, which cannot be restored this cheaply; a caller
    can re-schedule its final answer with insertion, which starts no node later.)

    An optional ``cutoff`` stops a run as soon as the makespan provably reaches it, which
    is how a search discards a candidate that cannot beat the current one without
    scheduling it to the end. The bound is a node's finish plus the longest path after it.
    After the last position where a candidate differs from the base, every node keeps
    its device, its successors' devices and its next node on its device (the nodes
    before it come first), so the longest path in the base's schedule graph (:attr:`tail`:
    precedence edges with the base's transfer times and device-order edges, node times
    on the base's devices) bounds the rest exactly as in the base: a node finishing later
    than the base's makespan minus its tail makes the candidate no better. Before that
    position the fastest times and free transfers give a weaker bound. And with a
    ``cutoff`` not above the base's makespan, a node of the base's critical chain
    (:attr:`critical`: each starts exactly when the previous one's data arrives or the
    previous one on its device ends) that finishes no earlier than in the base ends the
    run: every later node of the chain then finishes no earlier either (float addition
    is monotone, and a device's finishes never decrease along the priority order), the
    last at the base's makespan, provided no node of the chain from there on changed
    device or place. That stops the many candidates that leave the critical path alone
    after a few nodes, where the tail bound (shrunk against round-off) would never quite
    reach the cutoff.

    Assignments must need no fallback (every node on a device that can run it); memory
    is not checked here. Times equal :meth:`ScheduleContext.makespan_indices` with
    ``insertion=False`` exactly (the same loop, the same float operations).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> from policies.schedule import ScheduleContext
        >>> g = nx.DiGraph([("a", "b"), ("b", "c")])
        >>> cm = TableCostModel({v: {"x": 1, "y": 2} for v in "abc"}, {("a", "b"): 5, ("b", "c"): 5})
        >>> ctx = ScheduleContext(g, Cluster.from_names(["x", "y"]), cm)
        >>> inc = IncrementalSchedule(ctx)
        >>> inc.rebase([0, 1, 2], [0, 0, 0])      # all on x
        3.0
        >>> inc.makespan([0, 1, 2], [0, 0, 1], 2)  # c moved to y: resume at position 2
        9.0
        >>> inc.makespan([0, 1, 2], [0, 0, 1], 2, cutoff=3.0) >= 3.0   # cannot beat 3
        True
    """

    def __init__(self, context: ScheduleContext):
        self.ctx = context
        n, m = len(context.nodes), len(context.devices)
        self.prio: list[int] = []          # base priority (node indices)
        self.assign: list[int] = []        # base assignment (device index per node)
        self.pos: list[int] = [0] * n      # position of each node in the base priority
        self.start: list[float] = [0.0] * n   # base start per node, seconds
        self.finish: list[float] = [0.0] * n  # base finish per node, seconds
        self.makespan_value = 0.0          # base makespan, seconds
        self.tail: list[float] = [0.0] * n    # per node, seconds after its finish (see above)
        self.critical: list[int] = []      # one critical chain of the base, node indices in order
        self._gate: list[float] = [_INF] * n  # base finish of the chain's nodes, inf elsewhere
        self._snaps: list[tuple[float, list[float]]] = [(0.0, [0.0] * m)]

    def rebase(self, prio: Sequence[int], assign: Sequence[int]) -> float:
        """Schedule ``assign`` in ``prio`` order (node indices, a topological order) as the
        new base, save the state at every position, and return its makespan."""
        ctx = self.ctx
        n, m = len(ctx.nodes), len(ctx.devices)
        self.prio, self.assign = list(prio), list(assign)
        for k, i in enumerate(self.prio):
            self.pos[i] = k
        finish, start = [0.0] * n, [0.0] * n
        snaps: list = []
        self.makespan_value = ctx._append(self.prio, self.assign, 0, n, finish, [0.0] * m, 0.0,
                                          _INF, None, start, snaps)
        self.start, self.finish, self._snaps = start, finish, snaps
        # longest path after each node in the base's schedule graph: edges to successors
        # (with the base's transfer times) and to the next node on the same device, node
        # times on the base's devices; shrunk like ScheduleContext._tail_bound
        T, Cto, a = ctx._T, ctx._Cto, self.assign
        tail = [0.0] * n
        nxt = [-1] * m  # per device, the next node on it (in priority order)
        for i in reversed(self.prio):
            ai = a[i]
            t = 0.0
            q = nxt[ai]
            if q >= 0:
                t = T[q][ai] + tail[q]
            for q, e in ctx.succs[i]:
                aq = a[q]
                x = Cto[aq][e * m + ai] + T[q][aq] + tail[q]
                if x > t:
                    t = x
            tail[i] = t
            nxt[ai] = i
        self.tail = [t * (1 - 1e-9) for t in tail]
        # a critical chain, from the last finisher back: each node starts exactly when the
        # previous one's data arrives or the previous one on its device ends
        gate = [_INF] * n
        chain: list[int] = []
        if n:
            prev_on = [-1] * n
            seen = [-1] * m
            for i in self.prio:
                prev_on[i] = seen[a[i]]
                seen[a[i]] = i
            v = max(self.prio, key=finish.__getitem__)
            while v >= 0:
                chain.append(v)
                gate[v] = finish[v]
                s, av, nxt = start[v], a[v], -1
                for q, e in ctx.preds[v]:
                    if finish[q] + Cto[av][e * m + a[q]] == s:
                        nxt = q
                        break
                else:
                    q = prev_on[v]
                    if q >= 0 and finish[q] == s:
                        nxt = q
                v = nxt if s > 0 else -1
        self.critical, self._gate = chain[::-1], gate
        return self.makespan_value

    def makespan(self, prio: Sequence[int], assign: Sequence[int], k: int = 0,
                 cutoff: float = _INF, moved_until: int | None = None,
                 moved: Sequence[int] | None = None) -> float:
        """Append-only makespan of ``assign`` taken in ``prio`` order, which must equal the
        base's (order and devices) at positions before ``k``; ``k=0`` needs no base.

        With a ``cutoff``, a result ``>= cutoff`` may be a lower bound of the makespan
        rather than the makespan itself (the run stopped early); below it, it is exact.
        ``moved_until``: the last position at which ``prio`` or ``assign`` differs from the
        base (a re-assigned node's position, the far end of a moved node's old and new
        positions); after it the base's :attr:`tail` bounds the rest. None: not known.
        ``moved``: the nodes whose device or place differs from the base's (None: not
        known); when none of them but one re-assigned at position ``k`` is on the
        critical chain, the chain also bounds the run before ``moved_until``.
        """
        ctx = self.ctx
        n = len(ctx.nodes)
        if k:
            mk, last = self._snaps[k]
            last = list(last)
            finish = self.finish[:]
        else:
            mk, last, finish = 0.0, [0.0] * len(ctx.devices), [0.0] * n
        if cutoff == _INF or moved_until is None or moved_until >= n - 1:
            return ctx._append(prio, assign, k, n, finish, last, mk, cutoff, None, None, None)
        mid = max(k, moved_until + 1)
        base = self.makespan_value
        gate = self._gate if cutoff <= base else ctx._nogate
        if mid > k:
            loose = ctx._tail_bound()
            # the node at position k itself may have changed: no gate there
            mk = ctx._append(prio, assign, k, k + 1, finish, last, mk, cutoff,
                             (loose, ctx._nogate, base), None, None)
            if mk >= cutoff:
                return mk
            if mid > k + 1:
                # a chain node after it that finishes no earlier than in the base still
                # bounds the run if the chain from there on is intact: none of its nodes
                # re-assigned or re-ordered (the one at position k comes before them)
                g = ctx._nogate
                if moved is not None and gate is self._gate and all(
                        gate[x] == _INF or (prio[k] == x == self.prio[k]) for x in moved):
                    g = gate
                mk = ctx._append(prio, assign, k + 1, mid, finish, last, mk, cutoff,
                                 (loose, g, base), None, None)
                if mk >= cutoff:
                    return mk
        return ctx._append(prio, assign, mid, n, finish, last, mk, cutoff, (self.tail, gate, base),
                           None, None)
