"""Tests of policies.auto: the portfolio returns the best of its members and records them."""
from __future__ import annotations

import os
import random

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policies
from executors.devices import Cluster, DeviceSpec
from graphs.synthetic import chain, edge_times, heterogeneous_times, layered
from policies.abstract import TableCostModel, graph_from_table
from policies.auto import Auto
from policies.errors import InfeasiblePlacement, PolicyError
from policies.validate import validate

HEFT_JSON = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                         "heft_paper_example.json")


def instance(n, m=3, seed=0, ccr=3.0, power=False):
    g = layered(n, ccr=ccr, seed=seed)
    devs = [f"d{j}" for j in range(m)]
    pw = {d: (4.0 + 4 * j, 1.0) for j, d in enumerate(devs)} if power else None
    cm = TableCostModel(heterogeneous_times(g, devs, beta=1.5, seed=seed), edge_times(g),
                        devices=devs, power=pw)
    return g, Cluster.from_names(devs), cm


def test_heft_example_is_solved_to_optimality():
    cm = TableCostModel.from_json(HEFT_JSON)
    g = graph_from_table(HEFT_JSON)
    c = Cluster.from_names(cm.devices)
    plan = Auto(time_budget=20, max_evals=2000).place(g, c, cm)
    validate(plan, g, c, cm)
    assert plan.makespan == pytest.approx(73.0)
    members = plan.info["members"]
    assert members["heft"]["value"] == 80.0 and members["cpop"]["value"] == 86.0
    assert members["exact"]["status"] == "optimal"
    assert "search-2" not in members  # the MILP proved optimality: no second search


@pytest.mark.parametrize("n, objective", [(12, "latency"), (45, "latency"), (12, "energy")])
def test_returns_the_best_member(n, objective):
    g, c, cm = instance(n, power=objective == "energy", seed=n)
    plan = Auto(time_budget=3, objective=objective, max_evals=800).place(g, c, cm)
    validate(plan, g, c, cm)
    members = plan.info["members"]
    values = {k: v["value"] for k, v in members.items() if "value" in v}
    winner = plan.info["winner"]
    value = plan.makespan if objective == "latency" else plan.energy
    assert value == pytest.approx(min(values.values()))
    assert values[winner] == pytest.approx(value)
    assert {"heft", "peft", "cpop", "mct", "met", "search"} <= set(members)
    assert ("exact" in members) == (n <= 30)
    # the classics' values are what the classics give on their own
    heft = policies.get("heft", objective=objective).place(g, c, cm)
    assert members["heft"]["value"] == pytest.approx(heft.makespan if objective == "latency" else cm.energy(g, heft))
    assert value <= members["heft"]["value"] + 1e-9


def test_throughput_includes_the_pipeline_dp():
    g = chain(6, ccr=0.3, seed=2)
    devs = ["x", "y", "z"]
    cm = TableCostModel(heterogeneous_times(g, devs, beta=1.5, seed=2), edge_times(g))
    c = Cluster.from_names(devs)
    plan = Auto(objective="throughput", time_budget=2).place(g, c, cm)
    validate(plan, g, c, cm)
    members = plan.info["members"]
    assert "pipeline" in members and "exact" not in members
    pipe = policies.get("pipeline").place(g, c, cm)
    assert members["pipeline"]["value"] == pytest.approx(pipe.period)
    # one-at-a-time plans are valued at their makespan; on this chain the split wins
    assert plan.period <= min(v["value"] for v in members.values() if "value" in v) + 1e-9
    assert plan.info["winner"] == "pipeline"
    assert plan.period == pytest.approx(pipe.period)


def test_memory_infeasible_reports_the_shortfall():
    g = nx.DiGraph()
    g.add_nodes_from([(v, {"param_bytes": 5}) for v in "abc"])
    c = Cluster.from_specs([DeviceSpec(d, "cpu", {"float32": 1e9}, 1e9, 8.0) for d in ("x", "y")])
    cm = TableCostModel({v: {"x": 1, "y": 1} for v in "abc"}, {})
    with pytest.raises(InfeasiblePlacement, match="needs 2 more bytes") as e:
        Auto(time_budget=1).place(g, c, cm)
    assert e.value.shortfall == pytest.approx(2.0)


def test_latency_bound_below_everything():
    g, c, cm = instance(8)
    with pytest.raises(InfeasiblePlacement, match="above latency_bound") as e:
        Auto(time_budget=2, latency_bound=1e-3, max_evals=200).place(g, c, cm)
    assert e.value.shortfall > 0


@pytest.mark.parametrize("opts, msg", [
    ({"time_budget": -1}, "time_budget must be a number of seconds > 0, got -1"),
    ({"exact_share": 2}, r"exact_share must be a number in \[0, 1\], got 2"),
    ({"classics": ("heft", "exact")}, r"classics \['exact'\] are not classic policies"),
    ({"classics": ("nope",)}, r"classics \['nope'\] are not classic policies; choose from"),
])
def test_bad_options(opts, msg):
    with pytest.raises(PolicyError, match=msg):
        Auto(**opts)


def test_registered():
    assert {"auto", "exact", "search", "pipeline"} <= set(policies.available())
    assert isinstance(policies.get("auto"), Auto)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 14), m=st.integers(1, 3),
       unsupported=st.booleans(), tight_memory=st.booleans())
def test_valid_and_no_worse_than_any_classic(seed, n, m, unsupported, tight_memory):
    rng = random.Random(seed)
    g = layered(n, ccr=rng.choice([0.1, 1.0, 5.0]), seed=seed)
    devs = [f"d{j}" for j in range(m)]
    table = heterogeneous_times(g, devs, beta=1.0, seed=seed)
    if unsupported and m > 1:
        for row in table.values():
            for d in rng.sample(devs, rng.randint(0, m - 1)):
                del row[d]
    cm = TableCostModel(table, edge_times(g), devices=devs)
    for v in g:
        g.nodes[v]["bytes_out"] = rng.randint(1, 10)
    total = sum(cm.node_memory(g, v) for v in g)
    caps = [total * rng.uniform(0.4, 1.0) if tight_memory else total for _ in devs]
    caps[0] = total if not tight_memory else caps[0]
    c = Cluster.from_specs([DeviceSpec(d, "cpu", {"float32": 1e9}, 1e9, cap) for d, cap in zip(devs, caps)])
    try:
        plan = Auto(time_budget=1.0, max_evals=150).place(g, c, cm)
    except InfeasiblePlacement as e:
        assert tight_memory and e.shortfall > 0
        return
    validate(plan, g, c, cm)
    for name in ("heft", "peft", "cpop", "mct", "met"):
        try:
            other = policies.get(name).place(g, c, cm)
        except InfeasiblePlacement:
            continue
        assert plan.makespan <= other.makespan + 1e-9, name


def test_finds_the_only_good_packing_when_every_classic_fails():
    from tests.policies.test_search import tight_packing

    g, c, cm = tight_packing()
    plan = Auto(time_budget=5, max_evals=300).place(g, c, cm)
    validate(plan, g, c, cm)
    assert all("error" in plan.info["members"][n] for n in ("heft", "peft", "cpop", "mct", "met"))
    # {B, C, D} on x: 9 + 8 + 7 = 24; {A, E} on y: 100 + 60 = 160 (the reverse is 240)
    assert plan.makespan == 160.0
    assert plan.info["winner"] == "exact"
