"""HEFT on the published example (Topcuoglu, Hariri, Wu 2002, fig. 2 / fig. 4a) and edge cases."""
from __future__ import annotations

import os

import networkx as nx
import pytest

import policies
from executors.devices import Cluster
from policies import validate
from policies.abstract import TableCostModel, graph_from_table
from policies.errors import PolicyError
from policies.heft import HEFT, rank_order, upward_rank
from policies.schedule import ScheduleContext
from tests.conftest import SHARED_DATA

EXAMPLE = os.path.join(SHARED_DATA, "heft_paper_example.json")


@pytest.fixture(scope="module")
def paper():
    g = graph_from_table(EXAMPLE)
    cm = TableCostModel.from_json(EXAMPLE)
    return g, Cluster.from_names(cm.devices), cm


def test_upward_ranks_match_the_paper(paper):
    ctx = ScheduleContext(*paper)
    ranks = dict(zip(ctx.nodes, upward_rank(ctx).tolist()))
    published = {"1": 108.0, "2": 77.0, "3": 80.0, "4": 80.0, "5": 69.0, "6": 63.333, "7": 42.667,
                 "8": 35.667, "9": 44.333, "10": 14.667}
    assert ranks == pytest.approx(published, abs=1e-3)


def test_makespan_80_as_published(paper):
    g, c, cm = paper
    p = policies.get("heft").place(g, c, cm)
    assert p.makespan == 80.0 == g.graph["published"]["HEFT makespan"]
    validate(p, g, c, cm)


def test_schedule_matches_figure_4a(paper):
    g, c, cm = paper
    p = HEFT().place(g, c, cm)
    fig = {"1": ("P3", 0, 9), "3": ("P3", 9, 28), "4": ("P2", 18, 26), "2": ("P1", 27, 40),
           "5": ("P3", 28, 38), "6": ("P2", 26, 42), "9": ("P2", 56, 68), "7": ("P3", 38, 49),
           "8": ("P1", 57, 62), "10": ("P2", 73, 80)}
    assert {n: (p.assignment[n], p.start[n], p.finish[n]) for n in fig} == fig
    assert p.order["P3"] == ("1", "3", "5", "7")


def test_deterministic(paper):
    a, b = HEFT().place(*paper), HEFT().place(*paper)
    assert dict(a.assignment) == dict(b.assignment) and dict(a.start) == dict(b.start)


def test_zero_costs_keep_a_topological_priority():
    # every node and edge costs 0: all ranks tie, the tie-break must still be topological
    g = nx.DiGraph([(5, 3), (3, 1), (1, 4), (5, 4), (2, 0)])
    cm = TableCostModel({n: {"x": 0.0, "y": 0.0} for n in g}, {e: 0.0 for e in g.edges})
    c = Cluster.from_names(["x", "y"])
    ctx = ScheduleContext(g, c, cm)
    prio = rank_order(ctx, upward_rank(ctx))
    assert ctx.priority_indices(prio)  # raises unless topological
    p = HEFT().place(g, c, cm)
    assert p.makespan == 0.0
    validate(p, g, c, cm)


def test_insertion_option(paper):
    g, c, cm = paper
    p = HEFT(insertion=False).place(g, c, cm)
    assert p.info["insertion"] is False and p.options["insertion"] is False
    validate(p, g, c, cm)


def test_energy_objective_trades_time_for_energy():
    g = nx.DiGraph([("a", "b")])
    t = {"a": {"gpu": 1.0, "npu": 1.08}, "b": {"gpu": 1.0, "npu": 1.08}}
    cm = TableCostModel(t, {("a", "b"): 0.5}, power={"gpu": (300.0, 30.0), "npu": (15.0, 3.0)})
    c = Cluster.from_names(["gpu", "npu"])
    lat = HEFT().place(g, c, cm)
    en = HEFT(objective="energy").place(g, c, cm)
    assert lat.makespan == 2.0 and lat.energy == pytest.approx(600.0)
    # both on npu: 2.16 s at 15 W
    assert set(en.assignment.values()) == {"npu"} and en.energy == pytest.approx(32.4)
    assert en.makespan == pytest.approx(2.16)
    validate(en, g, c, cm)


def test_throughput_objective_rejected():
    with pytest.raises(PolicyError, match="policy 'heft' does not serve objective 'throughput'; it serves: latency, energy"):
        HEFT(objective="throughput")
