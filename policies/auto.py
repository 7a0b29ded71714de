"""``auto``: a portfolio of policies run within one time budget; the best plan wins.

No single scheduling heuristic dominates on every graph (the portfolio argument of
algorithm selection: Rice, *The algorithm selection problem*, Advances in Computers 15,
1976; for DAG scheduling, the SAGA benchmark's finding that every classic heuristic loses
badly on some instances: Coleman & Krishnamachari, 2023). ``auto`` therefore runs:

1. the classic list heuristics (``classics``, default HEFT, PEFT, CPOP, MCT, MET) and, for
   ``objective="throughput"``, the ``pipeline`` DP;
2. when the graph has at most ``exact_max_nodes`` nodes: a short ``search`` from the best
   plan (a good incumbent tightens the MILP), then ``exact`` (the MILP) bounded by
   the best plan so far, with ``exact_share`` of the remaining budget;
3. ``search`` (``search-2`` after the MILP) from the best plan so far with the rest of the
   budget, skipped when the MILP proved its plan optimal.

Classics after the first are skipped (``{"skipped": "time budget"}``) once half the budget
is spent. It returns the best plan by the objective (a latency-bound violation counts first) with
``info["members"]`` recording each member's value, time and status (or the error that
stopped it) and ``info["winner"]`` the member whose plan was kept. For ``throughput``,
a plan without a pipeline period is valued at its makespan (one request at a time).

Example:
    >>> import networkx as nx
    >>> from executors.devices import Cluster
    >>> from policies.abstract import TableCostModel
    >>> g = nx.DiGraph([("a", "b"), ("a", "c")])
    >>> cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 2, "y": 2}, "c": {"x": 2, "y": 2}},
    ...                     {("a", "b"): 1, ("a", "c"): 1})
    >>> plan = Auto(time_budget=2.0).place(g, Cluster.from_names(["x", "y"]), cm)
    >>> plan.makespan, plan.info["members"]["exact"]["status"]
    (4.0, 'optimal')
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import networkx as nx

from executors.devices import Cluster

from .base import Policy, get, register
from .cost import CostModel
from .errors import InfeasiblePlacement, PolicyError
from .exact import Problem, check_memory, plan_key, plan_objective, solve_exact, with_energy
from .plan import Plan
from .search import improve_plan


@register
class Auto(Policy):
    """Portfolio of classics, ``exact`` (small graphs) and ``search`` within ``time_budget``.

    Options: ``time_budget`` (seconds, default 5.0), ``classics`` (policy names run first),
    ``exact_max_nodes`` (default 30), ``exact_share`` (fraction of the budget left after
    the classics given to the MILP, default 0.5), ``seed`` (for the search), ``max_evals``
    (cap on the search's evaluations, for deterministic runs). See the module docstring.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        >>> t = {"a": {"x": 2, "y": 4}, "b": {"x": 4, "y": 2}, "c": {"x": 3, "y": 5}, "d": {"x": 3, "y": 1}}
        >>> cm = TableCostModel(t, {("a", "b"): 3, ("a", "c"): 0, ("b", "d"): 1, ("c", "d"): 3})
        >>> c = Cluster.from_names(["x", "y"])
        >>> p = Auto(time_budget=1.0, classics=("heft", "met"), max_evals=300).place(g, c, cm)
        >>> p.makespan, p.info["members"]["heft"]["value"], p.info["members"]["exact"]["status"]
        (8.0, 9.0, 'optimal')
    """

    name = "auto"
    description = "portfolio: classics, exact MILP on small graphs, then local search; best plan wins"
    objectives = ("latency", "energy", "throughput")
    option_defaults = {"time_budget": 5.0, "classics": ("heft", "peft", "cpop", "mct", "met", "single"),
                       "exact_max_nodes": 30, "exact_share": 0.5, "seed": 0, "max_evals": None}

    def __init__(self, **options: Any):
        super().__init__(**options)
        tb = self.options["time_budget"]
        if isinstance(tb, bool) or not isinstance(tb, (int, float)) or not tb > 0:
            raise PolicyError(f"auto: time_budget must be a number of seconds > 0, got {tb!r}")
        share = self.options["exact_share"]
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise PolicyError(f"auto: exact_share must be a number in [0, 1], got {share!r}")
        from .base import available

        names = available()
        bad = [c for c in self.options["classics"] if c not in names or c in ("auto", "exact", "search")]
        if bad:
            raise PolicyError(f"auto: classics {bad!r} are not classic policies; choose from "
                              f"{', '.join(n for n in names if n not in ('auto', 'exact', 'search'))}")

    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        t0 = time.perf_counter()
        opts = self.options
        objective = opts["objective"]
        bound = opts["latency_bound"]
        deadline = t0 + float(opts["time_budget"])
        members: dict[str, dict[str, Any]] = {}
        plans: dict[str, Plan] = {}
        common = {k: opts[k] for k in ("strict", "respect_memory")}

        def record(name: str, fn) -> None:
            t = time.perf_counter()
            try:
                plan = with_energy(fn(), graph, cost_model)
            except InfeasiblePlacement as e:
                members[name] = {"error": str(e), "time": time.perf_counter() - t}
                return
            plans[name] = plan
            members[name] = {"value": plan_objective(plan, objective), "makespan": plan.makespan,
                             "time": time.perf_counter() - t}
            if "status" in plan.info:
                members[name]["status"] = plan.info["status"]
                members[name]["gap"] = plan.info.get("gap")

        classics = list(opts["classics"]) + (["pipeline"] if objective == "throughput" else [])
        for k, name in enumerate(classics):
            if k and plans and time.perf_counter() > t0 + 0.5 * float(opts["time_budget"]):
                members[name] = {"skipped": "time budget"}
                continue
            pol = get(name, **common)
            kw = dict(common, objective=objective) if objective in type(pol).objectives else common
            record(name, lambda name=name, kw=kw: get(name, **kw).place(graph, cluster, cost_model))

        def best() -> tuple[str, Plan] | tuple[None, None]:
            if not plans:
                return None, None
            return min(plans.items(), key=lambda kv: plan_key(kv[1], objective, bound))

        if objective in ("latency", "energy"):
            problem = Problem(graph, cluster, cost_model, respect_memory=opts["respect_memory"])
            if not plans and opts["respect_memory"]:
                check_memory(problem)  # every classic failed: say why, with the shortfall
            mopts = dict(opts, mip_rel_gap=1e-7, threads=1)
            sopts = dict(opts, seed=opts["seed"])
            small = graph.number_of_nodes() <= opts["exact_max_nodes"] and opts["exact_share"] > 0
            proved = False
            if small:
                # a short search first: a better incumbent tightens every big-M of the MILP
                left = deadline - time.perf_counter()
                if left > 0.01:
                    inc_name, inc = best()
                    record("search", lambda: improve_plan(problem, inc, inc_name, sopts,
                                                          left * (1 - opts["exact_share"]) / 2))
                left = deadline - time.perf_counter()
                if left > 0.05:
                    inc_name, inc = best()
                    record("exact", lambda: solve_exact(problem, inc, inc_name, mopts,
                                                        max(left * opts["exact_share"], 0.05)))
                    proved = "exact" in plans and plans["exact"].info["status"] == "optimal"
            left = deadline - time.perf_counter()
            if not proved and left > 0.01:
                inc_name, inc = best()
                record("search-2" if small else "search",
                       lambda: improve_plan(problem, inc, inc_name, dict(sopts, seed=opts["seed"] + 1), left))
        winner, plan = best()
        if plan is None:
            raise InfeasiblePlacement(
                "auto: no member of the portfolio found a feasible plan: "
                + "; ".join(f"{k}: {v.get('error')}" for k, v in members.items()))
        if bound is not None and plan.makespan > bound * (1 + 1e-9):
            raise InfeasiblePlacement(
                f"auto: best plan ({winner}) has makespan {plan.makespan:.6g}, above latency_bound="
                f"{bound!r} by {plan.makespan - bound:.6g}", shortfall=plan.makespan - bound)
        info = dict(plan.info)
        info.update(members=members, winner=winner)
        return dataclasses.replace(plan, policy=self.name, info=info)
