"""``search``: iterated local search that improves the best heuristic plan under a time budget.

The search starts from the best plan of several list heuristics (HEFT, PEFT, CPOP, MCT by
default) and explores assignments with the shared engine's precomputed context. It is
an iterated local search (Lourenço, Martin & Stützle, *Iterated local search*, Handbook
of Metaheuristics, 2003) over the neighbourhoods used for DAG scheduling local search
(Wu, Shu & Gu, *Efficient local search for DAG scheduling*, IEEE TPDS 12(6), 2001;
Kwok & Ahmad's survey, ACM CSUR 31(4), 1999):

1. **re-assign a critical node**: move a node of the current critical path (the chain of
   nodes and device predecessors that sets the makespan) to another device;
2. **pair move**: put both ends of an edge touching the critical path on one device
   (removes a transfer: the move that matters when communication is expensive);
3. **re-assign any node**, then **swap** the devices of two nodes;
4. **priority move**: move one node elsewhere in the priority list, within its window
   between its last predecessor and first successor.

A move is accepted only if it improves the objective (first improvement). After each
accepted move the priority list is reset to the start-time order of the new
assignment's schedule *with insertion* (so the gaps insertion fills are kept when
appending in that order), unless that makes the append-only schedule longer. At a
local optimum the best solution is *kicked* (a few random re-assignments) and the
descent restarts; the best solution ever seen is kept. The search stops at the time
budget, at ``max_evals`` evaluations, after ``max(100, 20 n)`` kicks in a row without a
new best, or when the makespan meets the critical-path lower bound.

**Evaluation.** A candidate is ranked by its *append-only* schedule (``insertion=False``:
each node after the last one on its device) in the current priority order, computed by
:class:`policies.schedule.IncrementalSchedule`. A move leaves the schedule before the
first changed position as it was, so the run resumes there from saved per-device state
(O(devices) to restore, where insertion's gap lists would cost O(nodes)); and, for the
latency objective, the run stops as soon as a node's finish plus the longest path after
it in the current schedule shows that the candidate cannot beat the current solution.
Both shortcuts give exactly the full run's makespan for every candidate that can win,
so they change nothing in the search's path (deterministic under ``max_evals`` and
``seed``). The answer is then scheduled with insertion in its order, which starts no
node later than appending does, so the plan is no worse than the value it was ranked by.
The returned plan is never worse than the seed: the final plan and the seed's plan are
compared by the same key (:func:`~policies.exact.plan_key` on the two plans), and when
nothing better is found the seed itself is returned.

Objectives: ``latency`` (makespan) and ``energy`` (per request, :meth:`CostModel.energy`'s
model), both under an optional ``latency_bound`` (violations are minimised first).
Memory capacity is respected move by move; nodes only move to devices that can run them
(so ``strict`` changes nothing: there is never a fallback to make).

Options: ``time_budget`` (seconds, default 1.0), ``max_evals`` (candidate evaluations,
default None: unlimited; with it and ``seed`` the search is deterministic), ``seed``
(random seed, default 0), ``seeds`` (heuristic policies to start from).

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> g = nx.DiGraph([("a", "b"), ("a", "c")])
    >>> cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 2, "y": 2}, "c": {"x": 2, "y": 2}},
    ...                     {("a", "b"): 1, ("a", "c"): 1})
    >>> plan = Search(max_evals=50, seeds=("heft",)).place(g, Cluster.from_names(["x", "y"]), cm)
    >>> plan.makespan, plan.info["seed_value"] >= plan.makespan
    (4.0, True)
"""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, Sequence

import networkx as nx
import numpy as np

from executors.devices import Cluster

from .base import Policy, register
from .cost import CostModel
from .errors import InfeasiblePlacement, PolicyError
from .exact import Problem, best_seed, check_memory, plan_key, plan_objective, topo_by, with_energy
from .plan import Plan
from .schedule import IncrementalSchedule

_FREE = {"respect_memory": False}  # memory is tracked by the search itself


class _Stop(Exception):
    """The evaluation budget is spent."""


class LocalSearch:
    """The search state over one :class:`~policies.exact.Problem` (see the module docstring).

    ``improve(assign, prio)`` returns the best ``(key, assign, prio)`` found; keys compare
    lexicographically: (bytes over memory capacity, latency-bound violation, objective,
    makespan), so a start that does not fit the memory is repaired first. The makespan
    is that of the append-only schedule (see the module docstring).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 1}}, {("a", "b"): 5})
        >>> ls = LocalSearch(Problem(g, Cluster.from_names(["x", "y"]), cm), max_evals=20)
        >>> key, assign, prio = ls.improve([0, 1], [0, 1])   # from 1 + 5 + 1 = 7 ...
        >>> key[2], assign                                    # ... to both on y: 2 + 1
        (3.0, [1, 1])
    """

    def __init__(self, problem: Problem, *, objective: str = "latency",
                 latency_bound: float | None = None, time_budget: float = 1.0,
                 max_evals: int | None = None, seed: int = 0, kick_size: int = 3,
                 patience: int | None = None):
        if objective not in ("latency", "energy"):
            raise PolicyError(f"search serves objectives latency, energy; got {objective!r}")
        if objective == "energy" and problem.power is None:
            raise PolicyError("objective 'energy' needs a cost model that knows device power; "
                              "this one returns None from power()")
        self.p = problem
        self.objective = objective
        self.bound = latency_bound
        self.deadline = time.perf_counter() + float(time_budget)
        self.max_evals = max_evals
        self.rng = random.Random(seed)
        self.kick_size = kick_size
        self.evals = 0
        self.accepted = 0
        self.kicks = 0
        # stop after this many kicks in a row without a new best
        self.patience = max(100, 20 * problem.n) if patience is None else patience
        self.allowed = [problem.allowed(i) for i in range(problem.n)]
        self.cap = problem.cap.tolist()
        self.limited = bool(np.isfinite(problem.cap).any())
        self.mem = problem.mem.tolist()
        # candidates are evaluated append-only, resumed from the first changed position of
        # the current solution (the evaluator's base; see the module docstring)
        self.inc = IncrementalSchedule(problem.ctx)
        self._prio: list[int] = list(problem.order)

    # ---------------------------------------------------------------- evaluation
    def key(self, assign: Sequence[int], prio: Sequence[int], *, k: int = 0,
            loads: Sequence[float] | None = None, beat: tuple | None = None,
            moved_until: int | None = None, moved: Sequence[int] | None = None,
            rebase: bool = False) -> tuple:
        """Objective key of ``assign`` scheduled append-only in ``prio`` order (counts one
        evaluation).

        ``k``: ``prio`` and ``assign`` equal the evaluator's base before position ``k``
        (the schedule resumes there). ``loads``: the per-device resident bytes of
        ``assign``, when the caller knows them. ``beat``: only whether the key is below
        ``beat`` matters; a key that cannot be may come back as a lower bound (still
        ``>= beat``) without being scheduled to the end; ``moved_until`` (the last position
        where ``prio`` or ``assign`` differs from the base's) and ``moved`` (the nodes that
        differ) tighten that bound (see :meth:`IncrementalSchedule.makespan`).
        ``rebase``: make ``(prio, assign)`` the evaluator's new base.
        """
        if self.max_evals is not None and self.evals >= self.max_evals:
            raise _Stop
        if time.perf_counter() > self.deadline:
            raise _Stop
        self.evals += 1
        spill = self._spill(assign, loads)
        if rebase:
            mk = self.inc.rebase(prio, assign)
        else:
            cutoff = np.inf
            if beat is not None and self.objective == "latency":
                # (spill, over, mk, mk) with over non-decreasing in mk: at equal spill only
                # mk < beat's makespan can win
                if spill > beat[0]:
                    return (spill, np.inf, np.inf, np.inf)
                if spill == beat[0]:
                    cutoff = beat[3]
            mk = self.inc.makespan(prio, assign, k, cutoff, moved_until, moved)
        return self._key(assign, mk, spill)

    def _spill(self, assign: Sequence[int], loads: Sequence[float] | None = None) -> float:
        """Bytes over capacity: only a start without a feasible seed has any."""
        if not self.limited:
            return 0.0
        if loads is None:
            loads = self._loads(assign)
        return sum(max(x - c, 0.0) for x, c in zip(loads, self.cap))

    def _key(self, assign: Sequence[int], mk: float, spill: float | None = None) -> tuple:
        if spill is None:
            spill = self._spill(assign)
        over = 0.0 if self.bound is None else max(mk - self.bound, 0.0)
        if self.objective == "energy":
            return (spill, over, self.p.energy(assign, mk), mk)
        return (spill, over, mk, mk)

    def _loads(self, assign: Sequence[int]) -> list[float]:
        loads = [0.0] * self.p.m
        mem = self.mem
        for i, d in enumerate(assign):
            loads[d] += mem[i]
        return loads

    def _moved(self, loads: list[float], *changes: tuple[int, int, int]) -> list[float] | None:
        """``loads`` after moving each ``(node, from, to)``; None when memory is unlimited."""
        if not self.limited:
            return None
        out = list(loads)
        mem = self.mem
        for i, a, b in changes:
            out[a] -= mem[i]
            out[b] += mem[i]
        return out

    def _fits(self, loads, i, frm, to) -> bool:
        return loads[to] + self.p.mem[i] <= self.p.cap[to]

    def _replay(self, assign: list[int]) -> list[int]:
        """A priority for ``assign``: the start-time order of its schedule *with insertion*
        in the current order. Appending in that order starts no node later than insertion
        did, so gaps that insertion fills are kept by the append-only evaluation."""
        st, _, _ = self.p.ctx.times_indices(self._prio, assign, insertion=True, options=_FREE)
        # a successor starts no earlier than its predecessor finishes, and the sort is
        # stable: ties keep the current (topological) order, so this is topological
        return sorted(self._prio, key=st.__getitem__)

    def _base_schedule(self, assign: list[int]) -> tuple[list[float], list[float], dict]:
        """(start, finish, order per device) of the evaluator's base, ``assign`` appended in
        the current order."""
        order: dict[int, list[int]] = {d: [] for d in range(self.p.m)}
        for i in self._prio:  # appended: a device's order is the priority order
            order[assign[i]].append(i)
        return self.inc.start, self.inc.finish, order

    def critical(self, assign: Sequence[int], st, fi, order) -> list[int]:
        """Nodes of the critical path of a schedule (from the last finisher backwards)."""
        p = self.p
        m, Cto = p.m, p.ctx._Cto
        prev_on = {}
        for d, ns in order.items():
            for a, b in zip(ns, ns[1:]):
                prev_on[b] = a
        v = max(range(p.n), key=fi.__getitem__)
        path = [v]
        seen = {v}
        while True:
            s = st[v]
            nxt = None
            Cv = Cto[assign[v]]
            for u, e in p.preds[v]:
                if abs(fi[u] + Cv[e * m + assign[u]] - s) <= 1e-9 * max(1.0, abs(s)):
                    nxt = u
                    break
            if nxt is None and v in prev_on and abs(fi[prev_on[v]] - s) <= 1e-9 * max(1.0, abs(s)):
                nxt = prev_on[v]
            if nxt is None or nxt in seen:
                return path
            path.append(nxt)
            seen.add(nxt)
            v = nxt

    # ---------------------------------------------------------------- search
    def improve(self, assign: Sequence[int], prio: Sequence[int]) -> tuple[tuple, list[int], list[int]]:
        """Search from ``assign`` / ``prio`` (indices) and return the best (key, assign, prio)."""
        cur = list(assign)
        self._prio = list(prio)
        try:
            cur_key = self.key(cur, self._prio)
        except _Stop:
            return self._key(cur, self.inc.makespan(self._prio, cur)), cur, self._prio
        self.best = (cur_key, list(cur), list(self._prio))
        lb = self.p.ctx.critical_path_bound() if self.objective == "latency" else -np.inf
        stale = 0
        try:
            while True:
                before = self.best[0]
                cur_key, cur = self._descend(cur_key, cur)
                best = self.best
                if best[0] < before:
                    stale = 0
                else:
                    stale += 1
                self.kicks += 1
                if best[0][0] == 0 and best[0][1] == 0 and best[0][2] <= lb * (1 + 1e-12):
                    break  # provably optimal: the critical-path bound is met
                if stale >= self.patience:
                    break
                # kick from the best solution
                cur = list(best[1])
                self._prio = list(best[2])
                loads = self._loads(cur)
                movable = [i for i in range(self.p.n) if len(self.allowed[i]) > 1]
                if not movable:
                    break
                for i in self.rng.sample(movable, min(self.kick_size, len(movable))):
                    to = self.rng.choice(self.allowed[i])
                    if to != cur[i] and self._fits(loads, i, cur[i], to):
                        loads[cur[i]] -= self.p.mem[i]
                        loads[to] += self.p.mem[i]
                        cur[i] = to
                cur_key = self.key(cur, self._prio)
        except _Stop:
            pass
        return self.best

    def _descend(self, cur_key: tuple, cur: list[int]) -> tuple[tuple, list[int]]:
        """First-improvement descent through the neighbourhoods until none improves.

        Neighbourhoods, in order (the first improving move is taken, then the order
        restarts): re-assign a critical node; move both ends of an edge touching the
        critical path onto one device; re-assign any other node; swap two nodes' devices;
        move a node in the priority list.
        """
        p, rng = self.p, self.rng
        while True:
            prio = self._replay(cur)
            k = self.key(cur, prio, rebase=True)
            if k <= cur_key:
                self._prio, cur_key = prio, k
                if k < self.best[0]:
                    self.best = (k, list(cur), list(prio))
            else:  # keep the order, and make it the base again
                self.inc.rebase(self._prio, cur)
            st, fi, order = self._base_schedule(cur)
            loads = self._loads(cur)
            crit = self.critical(cur, st, fi, order)
            rng.shuffle(crit)
            cset = set(crit)
            rest = [i for i in range(p.n) if i not in cset]
            rng.shuffle(rest)
            found = None
            for moves in (self._singles(cur, loads, crit), self._pairs(cur, loads, cset),
                          self._singles(cur, loads, rest), self._swaps(cur, loads, crit),
                          self._prio_moves(cur, loads)):
                for cand, cand_prio, at, until, moved, cand_loads in moves:
                    k = self.key(cand, cand_prio, k=at, loads=cand_loads, beat=cur_key,
                                 moved_until=until, moved=moved)
                    if k < cur_key:
                        found = (cand, cand_prio, k)
                        break
                if found:
                    break
            if not found:
                return cur_key, cur
            cur, self._prio, cur_key = found
            self.accepted += 1
            if cur_key < self.best[0]:  # kept at once: the budget may end mid-descent
                self.best = (cur_key, list(cur), list(self._prio))

    # Each neighbourhood yields (candidate assignment, its priority, the first position
    # where it differs from the evaluator's base, the last such position, the nodes that
    # differ, its loads or None).
    def _singles(self, cur, loads, nodes):
        pos = self.inc.pos
        for i in nodes:
            for to in self.allowed[i]:
                if to != cur[i] and self._fits(loads, i, cur[i], to):
                    cand = list(cur)
                    cand[i] = to
                    yield cand, self._prio, pos[i], pos[i], (i,), self._moved(loads, (i, cur[i], to))

    def _pairs(self, cur, loads, cset):
        # both ends of an edge onto one device: removes a transfer, which a single move
        # cannot do when moving one end alone costs more than it saves
        p, pos = self.p, self.inc.pos
        pairs = [(u, v) for u, v in p.edges if u in cset or v in cset]
        self.rng.shuffle(pairs)
        for u, v in pairs:
            for to in self.allowed[u]:
                if (cur[u] == to and cur[v] == to) or to not in self.allowed[v]:
                    continue
                extra = (p.mem[u] if cur[u] != to else 0.0) + (p.mem[v] if cur[v] != to else 0.0)
                if loads[to] + extra > p.cap[to]:
                    continue
                cand = list(cur)
                cand[u] = cand[v] = to
                yield (cand, self._prio, min(pos[u], pos[v]), max(pos[u], pos[v]), (u, v),
                       self._moved(loads, (u, cur[u], to), (v, cur[v], to)))

    def _swaps(self, cur, loads, crit):
        p, rng, pos = self.p, self.rng, self.inc.pos
        for _ in range(min(4 * p.n, p.n * (p.n - 1) // 2)):
            i = rng.choice(crit) if crit and rng.random() < 0.5 else rng.randrange(p.n)
            j = rng.randrange(p.n)
            a, b = cur[i], cur[j]
            if a == b or b not in self.allowed[i] or a not in self.allowed[j]:
                continue
            if (loads[a] + p.mem[j] - p.mem[i] > p.cap[a]
                    or loads[b] + p.mem[i] - p.mem[j] > p.cap[b]):
                continue
            cand = list(cur)
            cand[i], cand[j] = b, a
            yield (cand, self._prio, min(pos[i], pos[j]), max(pos[i], pos[j]), (i, j),
                   self._moved(loads, (i, a, b), (j, b, a)))

    def _prio_moves(self, cur, loads):
        p, rng = self.p, self.rng
        pos = self.inc.pos  # positions in self._prio
        for _ in range(2 * p.n):
            v = rng.randrange(p.n)
            lo = max((pos[u] for u, _ in p.preds[v]), default=-1) + 1
            hi = min((pos[w] for w, _ in p.succs[v]), default=p.n) - 1
            if hi <= lo:
                continue
            new = rng.randint(lo, hi)
            if new == pos[v]:
                continue
            cand_prio = list(self._prio)
            del cand_prio[pos[v]]
            cand_prio.insert(new, v)
            yield (cur, cand_prio, min(pos[v], new), max(pos[v], new), (v,),
                   None if not self.limited else loads)


@register
class Search(Policy):
    """Iterated local search from the best heuristic plan (see the module docstring).

    Options: ``time_budget`` (seconds, default 1.0), ``max_evals`` (cap on evaluations,
    for deterministic runs), ``seed`` (of the kicks), ``seeds`` (the heuristics whose best
    plan it starts from).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 2, "y": 4}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 5}, "d": {"x": 3, "y": 1}}
        >>> cm = TableCostModel(t, {("a", "b"): 3, ("a", "c"): 0, ("b", "d"): 1, ("c", "d"): 3})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = Search(seeds=("heft",), max_evals=300).place(g, c, cm)
        >>> p.info["seed_value"], p.makespan, p.info["source"]  # HEFT's 9 improved to the optimum
        (9.0, 8.0, 'search')
    """

    name = "search"
    description = "iterated local search (re-assign, swap, priority moves) seeded by the best heuristic"
    objectives = ("latency", "energy")
    option_defaults = {"time_budget": 1.0, "max_evals": None, "seed": 0,
                       "seeds": ("heft", "peft", "cpop", "mct", "single")}

    def __init__(self, **options: Any):
        super().__init__(**options)
        tb = self.options["time_budget"]
        if isinstance(tb, bool) or not isinstance(tb, (int, float)) or not tb > 0:
            raise PolicyError(f"search: time_budget must be a number of seconds > 0, got {tb!r}")
        me = self.options["max_evals"]
        if me is not None and (isinstance(me, bool) or not isinstance(me, int) or me < 1):
            raise PolicyError(f"search: max_evals must be None or an int >= 1, got {me!r}")

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        t0 = time.perf_counter()
        opts = self.options
        problem = Problem(graph, cluster, cost_model, respect_memory=opts["respect_memory"])
        if opts["respect_memory"]:
            check_memory(problem)
        seed_plan, seed_name = best_seed(graph, cluster, cost_model, opts["seeds"], opts,
                                         deadline=t0 + 0.5 * float(opts["time_budget"]))
        budget = max(float(opts["time_budget"]) - (time.perf_counter() - t0), 1e-3)
        return improve_plan(problem, seed_plan, seed_name, opts, budget, policy=self.name)


def improve_plan(problem: Problem, seed_plan: Plan | None, seed_name: str | None,
                 options: dict[str, Any], time_budget: float, policy: str = "search") -> Plan:
    """Run :class:`LocalSearch` from ``seed_plan`` and return the better of it and the seed.

    ``info`` records ``seed`` (policy name), ``seed_value``, ``evaluations``,
    ``improvements`` and ``source`` (``"search"`` or the seed's name when it was kept).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> from policies.exact import best_seed
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 1}}, {("a", "b"): 5})
        >>> c = Cluster.from_names(["x", "y"])
        >>> seed, name = best_seed(g, c, cm, ["heft"], {})
        >>> improve_plan(Problem(g, c, cm), seed, name, {"max_evals": 50}, 1.0).makespan
        3.0
    """
    objective = options.get("objective", "latency")
    bound = options.get("latency_bound")
    if seed_plan is None:
        # no heuristic could place it (memory): largest nodes first, each on the fastest
        # device with room left (else the one with most room); the search repairs the rest
        room = problem.cap.copy()
        assign = [0] * problem.n
        for i in sorted(range(problem.n), key=lambda i: -problem.mem[i]):
            able = [d for d in range(problem.m) if np.isfinite(problem.T[i, d])]
            fit = [d for d in able if room[d] >= problem.mem[i]]
            d = min(fit, key=lambda d: problem.T[i, d]) if fit else max(able, key=lambda d: room[d])
            assign[i] = d
            room[d] -= problem.mem[i]
        prio = list(problem.order)
    else:
        assign = [problem.devices.index(seed_plan.assignment[v]) for v in problem.nodes]
        prio = topo_by(problem, [seed_plan.start[v] for v in problem.nodes])
    ls = LocalSearch(problem, objective=objective, latency_bound=bound, time_budget=time_budget,
                     max_evals=options.get("max_evals"), seed=options.get("seed", 0))
    key, best_assign, best_prio = ls.improve(assign, prio)
    # the search ranked append-only schedules; the plan is the same assignment and order
    # scheduled with insertion, which starts no node later (so it is no worse than ``key``)
    plan = with_energy(problem.schedule(best_assign, best_prio, options), problem.graph,
                       problem.cost_model)
    source = "search"
    if seed_plan is not None and plan_key(seed_plan, objective, bound) <= plan_key(plan, objective, bound):
        plan, source = seed_plan, seed_name
    if bound is not None and plan.makespan > bound * (1 + 1e-9):
        raise InfeasiblePlacement(
            f"{policy}: best plan found has makespan {plan.makespan:.6g}, above latency_bound="
            f"{bound!r} by {plan.makespan - bound:.6g}", shortfall=plan.makespan - bound)
    info = {"seed": seed_name,
            "seed_value": None if seed_plan is None else plan_objective(seed_plan, objective),
            "evaluations": ls.evals, "improvements": ls.accepted, "source": source}
    return dataclasses.replace(plan, policy=policy, info=info)
