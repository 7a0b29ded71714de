"""Tests of policies.search: never worse than its seed, deterministic under an evaluation
cap, improves HEFT on communication-heavy graphs, respects memory and op support."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policies
from executors.devices import Cluster, DeviceSpec
from graphs.synthetic import edge_times, heterogeneous_times, layered
from policies.abstract import TableCostModel
from policies.errors import InfeasiblePlacement, PolicyError
from policies.exact import Problem, topo_by
from policies.search import LocalSearch, Search, improve_plan
from policies.validate import validate


def random_instance(seed: int, n: int, m: int, ccr: float = 2.0, beta: float = 1.0, power=False):
    g = layered(n, ccr=ccr, seed=seed)
    devs = [f"d{j}" for j in range(m)]
    pw = {d: (5.0 + 3 * j, 1.0 + j) for j, d in enumerate(devs)} if power else None
    cm = TableCostModel(heterogeneous_times(g, devs, beta=beta, seed=seed), edge_times(g),
                        devices=devs, power=pw)
    return g, Cluster.from_names(devs), cm


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 25), m=st.integers(1, 4),
       ccr=st.floats(0.1, 8.0), seeds=st.sampled_from([("heft",), ("cpop",), ("heft", "peft", "cpop", "mct")]))
def test_never_worse_than_its_seed(seed, n, m, ccr, seeds):
    g, c, cm = random_instance(seed, n, m, ccr)
    plan = Search(max_evals=300, time_budget=30, seeds=seeds, seed=seed).place(g, c, cm)
    validate(plan, g, c, cm)
    best_seed = min(policies.get(s).place(g, c, cm).makespan for s in seeds)
    assert plan.makespan <= best_seed + 1e-9
    assert plan.info["seed_value"] == pytest.approx(best_seed)
    if plan.info["source"] == "search":
        assert plan.makespan < best_seed


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 15), m=st.integers(2, 3))
def test_energy_never_worse_than_its_seed(seed, n, m):
    g, c, cm = random_instance(seed, n, m, power=True)
    plan = Search(objective="energy", max_evals=200, time_budget=30, seeds=("heft", "mct")).place(g, c, cm)
    validate(plan, g, c, cm)
    seeds = [policies.get(s, objective="energy").place(g, c, cm).energy for s in ("heft", "mct")]
    assert plan.energy <= min(seeds) + 1e-9
    assert plan.energy == pytest.approx(cm.energy(g, plan))


def test_deterministic_with_an_evaluation_cap():
    g, c, cm = random_instance(3, 20, 3, ccr=4.0)
    a = Search(max_evals=400, time_budget=60, seed=5).place(g, c, cm)
    b = Search(max_evals=400, time_budget=60, seed=5).place(g, c, cm)
    assert dict(a.assignment) == dict(b.assignment) and a.makespan == b.makespan
    assert a.info["evaluations"] == 400


def test_deterministic_on_a_larger_graph():
    # incremental evaluation (resumed runs, early cut-offs) must not make the search
    # depend on anything but the seed and the evaluation cap
    g, c, cm = random_instance(7, 300, 4, ccr=2.0)
    runs = [Search(max_evals=3000, time_budget=120, seed=1).place(g, c, cm) for _ in range(2)]
    for plan in runs:
        validate(plan, g, c, cm)
        assert plan.info["evaluations"] == 3000
    assert dict(runs[0].assignment) == dict(runs[1].assignment)
    assert dict(runs[0].start) == dict(runs[1].start) and runs[0].makespan == runs[1].makespan


@pytest.mark.parametrize("seed, n, m, integer_times", [(0, 60, 3, False), (1, 150, 4, False), (2, 40, 3, True)])
def test_early_cutoffs_do_not_change_the_search(monkeypatch, seed, n, m, integer_times):
    # a candidate stopped early must be one that full scheduling would have rejected too
    from policies.schedule import IncrementalSchedule

    g, c, cm = random_instance(seed, n, m, ccr=3.0)
    if integer_times:  # ties and zero-length nodes
        cm = TableCostModel({v: {d: float(round(cm.node_time(g, v, d) / 5)) for d in c.names} for v in g},
                            {e: cm.edge_time(g, *e, "d0", "d1") for e in g.edges}, devices=list(c.names))
    problem = Problem(g, c, cm)
    heft = policies.get("heft").place(g, c, cm)
    assign = [problem.devices.index(heft.assignment[v]) for v in problem.nodes]
    prio = topo_by(problem, [heft.start[v] for v in problem.nodes])

    def run():
        ls = LocalSearch(problem, max_evals=2000, time_budget=120, seed=seed)
        return ls.improve(assign, prio), ls.accepted

    pruned = run()
    full = IncrementalSchedule.makespan
    monkeypatch.setattr(IncrementalSchedule, "makespan",
                        lambda self, prio, assign, k=0, *args, **kw: full(self, prio, assign, k))
    assert run() == pruned


def test_the_plan_is_no_worse_than_the_key_the_search_ranked_it_by():
    # the search ranks append-only schedules; the plan is its answer scheduled with insertion
    g, c, cm = random_instance(11, 120, 3, ccr=3.0)
    problem = Problem(g, c, cm)
    heft = policies.get("heft").place(g, c, cm)
    assign = [problem.devices.index(heft.assignment[v]) for v in problem.nodes]
    prio = topo_by(problem, [heft.start[v] for v in problem.nodes])
    key, best_assign, best_prio = LocalSearch(problem, max_evals=2000, time_budget=120).improve(assign, prio)
    appended = problem.ctx.makespan_indices(best_prio, best_assign, insertion=False)
    assert key[2] == appended
    assert problem.schedule(best_assign, best_prio).makespan <= appended
    plan = improve_plan(problem, heft, "heft", {"max_evals": 2000}, 120)
    assert plan.makespan <= min(key[2], heft.makespan)


def test_improves_heft_on_communication_heavy_graphs():
    # high CCR and heterogeneity: HEFT's greedy choices pay many transfers
    ratios = []
    for seed in range(4):
        g, c, cm = random_instance(seed, 20, 3, ccr=5.0, beta=1.5)
        heft = policies.get("heft").place(g, c, cm).makespan
        plan = Search(max_evals=1500, time_budget=60, seeds=("heft",)).place(g, c, cm)
        validate(plan, g, c, cm)
        ratios.append(plan.makespan / heft)
    assert max(ratios) <= 1.0
    assert np.mean(ratios) < 0.95


def test_finds_the_optimum_on_the_heft_example():
    import os

    from policies.abstract import graph_from_table

    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                        "heft_paper_example.json")
    cm = TableCostModel.from_json(path)
    g = graph_from_table(path)
    c = Cluster.from_names(cm.devices)
    plan = Search(max_evals=3000, time_budget=60, seeds=("heft",)).place(g, c, cm)
    validate(plan, g, c, cm)
    assert plan.info["seed_value"] == 80.0
    assert plan.makespan == 73.0  # the MILP's proven optimum (tests/policies/test_exact.py)


def test_stops_early_at_the_critical_path_bound():
    # independent nodes, each fastest on its own device: the bound (max time) is reachable
    g = nx.DiGraph()
    g.add_nodes_from("ab")
    cm = TableCostModel({"a": {"x": 1.0, "y": 5.0}, "b": {"x": 5.0, "y": 1.0}}, {})
    plan = Search(time_budget=30, seeds=("round-robin",)).place(g, Cluster.from_names(["x", "y"]), cm)
    assert plan.makespan == 1.0
    assert plan.decide_time < 5.0


class TestConstraints:
    def test_respects_memory_capacity(self):
        g, _, cm0 = random_instance(1, 12, 2, ccr=4.0)
        for v in g:
            g.nodes[v]["param_bytes"] = 10
        c = Cluster.from_specs([DeviceSpec(d, "cpu", {"float32": 1e9}, 1e9, 70.0) for d in ("d0", "d1")])
        plan = Search(max_evals=500, time_budget=60).place(g, c, cm0)
        validate(plan, g, c, cm0)
        assert max(plan.memory.values()) <= 70.0

    def test_memory_shortfall(self):
        g = nx.DiGraph()
        g.add_nodes_from([("a", {"param_bytes": 6}), ("b", {"param_bytes": 6})])
        c = Cluster.from_specs([DeviceSpec("x", "cpu", {"float32": 1e9}, 1e9, 8.0)])
        cm = TableCostModel({"a": {"x": 1}, "b": {"x": 1}}, {})
        with pytest.raises(InfeasiblePlacement, match="needs 4 more bytes") as e:
            Search().place(g, c, cm)
        assert e.value.shortfall == pytest.approx(4.0)

    def test_only_moves_nodes_to_devices_that_run_them(self):
        g, c, cm0 = random_instance(2, 15, 3, ccr=3.0)
        table = {v: {d: cm0.node_time(g, v, d) for d in c.names} for v in g}
        for v in list(g)[::2]:
            del table[v]["d1"]  # even nodes cannot run on d1
        cm = TableCostModel(table, {e: cm0.edge_time(g, *e, "d0", "d1") for e in g.edges}, devices=list(c.names))
        plan = Search(max_evals=500, time_budget=60).place(g, c, cm)
        validate(plan, g, c, cm)
        assert all(plan.assignment[v] != "d1" for v in list(g)[::2])

    def test_latency_bound(self):
        g, c, cm = random_instance(0, 10, 2)
        plan = Search(max_evals=300, time_budget=60).place(g, c, cm)
        with pytest.raises(InfeasiblePlacement, match="above latency_bound") as e:
            Search(max_evals=300, time_budget=60, latency_bound=plan.makespan / 10).place(g, c, cm)
        assert e.value.shortfall > 0

    def test_energy_under_a_latency_bound(self):
        g, c, cm = random_instance(5, 12, 3, power=True)
        fast = Search(max_evals=300, time_budget=60).place(g, c, cm)
        bound = fast.makespan * 1.2
        plan = Search(objective="energy", latency_bound=bound, max_evals=300, time_budget=60).place(g, c, cm)
        validate(plan, g, c, cm)
        assert plan.makespan <= bound + 1e-9


@pytest.mark.parametrize("opts, msg", [
    ({"time_budget": 0}, "time_budget must be a number of seconds > 0, got 0"),
    ({"max_evals": 0}, "max_evals must be None or an int >= 1, got 0"),
    ({"objective": "throughput"}, "does not serve objective 'throughput'; it serves: latency, energy"),
])
def test_bad_options(opts, msg):
    with pytest.raises(PolicyError, match=msg):
        Search(**opts)


def test_unknown_seed_policy_is_named():
    g, c, cm = random_instance(0, 4, 2)
    with pytest.raises(Exception, match="unknown policy 'nope'"):
        Search(seeds=("nope",)).place(g, c, cm)


def test_energy_needs_power():
    g, c, cm = random_instance(0, 4, 2)
    with pytest.raises(PolicyError, match="power"):
        LocalSearch(Problem(g, c, cm), objective="energy")


def tight_packing():
    """Five independent nodes whose only fit on two 10-byte devices is {A, E} | {B, C, D};
    every greedy classic fills x with A and B first and then has no room for E."""
    sizes = {"A": (5, 10), "B": (4, 9), "C": (3, 8), "D": (3, 7), "E": (5, 6)}  # bytes, time on x
    g = nx.DiGraph()
    for v, (b, _) in sizes.items():
        g.add_node(v, param_bytes=b)
    cm = TableCostModel({v: {"x": t, "y": 10 * t} for v, (_, t) in sizes.items()}, {})
    c = Cluster.from_specs([DeviceSpec(d, "cpu", {"float32": 1e9}, 1e9, 10.0) for d in ("x", "y")])
    return g, c, cm


def test_repairs_a_start_that_does_not_fit_when_every_seed_fails():
    g, c, cm = tight_packing()
    for name in ("heft", "peft", "cpop", "mct"):
        with pytest.raises(InfeasiblePlacement):
            policies.get(name).place(g, c, cm)
    plan = Search(max_evals=500, time_budget=60).place(g, c, cm)
    validate(plan, g, c, cm)
    assert plan.info["seed"] is None and plan.info["source"] == "search"
    # the only packings: {B, C, D} on x and {A, E} on y (160) or the reverse (240)
    assert {frozenset(plan.nodes_on("x")), frozenset(plan.nodes_on("y"))} == {frozenset("AE"), frozenset("BCD")}
    assert plan.makespan in (160.0, 240.0)
