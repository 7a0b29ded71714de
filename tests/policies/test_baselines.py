"""Baselines on a hand-computed diamond a -> {b, c} -> d, devices x and y, transfers 1.

Times:   a    b    c    d
   x     2    3    4    2
   y     4    1    3    5
Topological order a, b, c, d (networkx's, deterministic for this insertion order).
"""
from __future__ import annotations

import networkx as nx
import pytest

import policies
from executors.devices import Cluster, DeviceSpec
from graphs.errors import UnknownNameError
from policies import validate
from policies.abstract import TableCostModel
from policies.errors import InfeasiblePlacement, PolicyError


@pytest.fixture
def diamond():
    g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    cm = TableCostModel({"a": {"x": 2, "y": 4}, "b": {"x": 3, "y": 1}, "c": {"x": 4, "y": 3},
                         "d": {"x": 2, "y": 5}}, {e: 1 for e in g.edges})
    return g, Cluster.from_names(["x", "y"]), cm


def _place(name, case, **opts):
    g, c, cm = case
    p = policies.get(name, **opts).place(g, c, cm)
    validate(p, g, c, cm)
    return p


class TestSingle:
    def test_default_device_has_least_total_time(self, diamond):
        p = _place("single", diamond)  # x total 11 < y total 13
        assert set(p.assignment.values()) == {"x"} and p.makespan == 11.0
        assert p.order["x"] == ("a", "b", "c", "d") and p.policy == "single"

    def test_named_device(self, diamond):
        p = _place("single", diamond, device="y")
        assert set(p.assignment.values()) == {"y"} and p.makespan == 13.0

    def test_unknown_device(self, diamond):
        with pytest.raises(UnknownNameError, match="unknown device 'z'; valid choices: x, y"):
            _place("single", diamond, device="z")

    def test_prefers_a_device_that_runs_everything(self):
        g = nx.DiGraph([("a", "b")])
        cm = TableCostModel({"a": {"x": 1, "y": 5}, "b": {"y": 5}}, {("a", "b"): 1})
        p = _place("single", (g, Cluster.from_names(["x", "y"]), cm))
        assert set(p.assignment.values()) == {"y"} and p.makespan == 10.0

    def test_too_big_for_every_device(self):
        g = nx.DiGraph()
        g.add_node("a", param_bytes=100)
        c = Cluster.from_specs([DeviceSpec("x", "cpu", {"float32": 1e9}, 1e9, 60)])
        cm = TableCostModel({"a": {"x": 1}}, {})
        with pytest.raises(InfeasiblePlacement, match="short by at least 40 bytes"):
            policies.get("single").place(g, c, cm)


def test_round_robin(diamond):
    p = _place("round-robin", diamond)
    # a->x [0,2], b->y [3,4], c->x [2,6], d->y ready max(4, 6+1) = 7, [7,12]
    assert dict(p.assignment) == {"a": "x", "b": "y", "c": "x", "d": "y"}
    assert dict(p.start) == {"a": 0, "b": 3, "c": 2, "d": 7} and p.makespan == 12.0


def test_met(diamond):
    p = _place("met", diamond)
    # each on its fastest device; c waits for y to free at 4 (no insertion), d ready at 7+1
    assert dict(p.assignment) == {"a": "x", "b": "y", "c": "y", "d": "x"}
    assert dict(p.start) == {"a": 0, "b": 3, "c": 4, "d": 8} and p.makespan == 10.0


def test_mct(diamond):
    p = _place("mct", diamond)
    # b: x finishes 5, y 4 -> y; c: x 6, y 7 -> x; d: x 6+2 = 8, y 7+5 = 12 -> x
    assert dict(p.assignment) == {"a": "x", "b": "y", "c": "x", "d": "x"}
    assert p.makespan == 8.0


def test_mct_energy_objective():
    g = nx.DiGraph([("a", "b")])
    cm = TableCostModel({"a": {"big": 1.0, "little": 1.05}, "b": {"big": 1.0, "little": 1.05}},
                        {("a", "b"): 0.5}, power={"big": (50.0, 5.0), "little": (5.0, 1.0)})
    c = Cluster.from_names(["big", "little"])
    lat = policies.get("mct").place(g, c, cm)
    en = policies.get("mct", objective="energy").place(g, c, cm)
    assert set(lat.assignment.values()) == {"big"} and lat.energy == pytest.approx(100.0)
    assert set(en.assignment.values()) == {"little"} and en.energy == pytest.approx(10.5)
    assert en.objective == "energy"


@pytest.mark.parametrize("name", ["single", "round-robin", "met"])
def test_energy_rejected_where_not_served(name):
    with pytest.raises(PolicyError, match=f"policy '{name}' does not serve objective 'energy'; it serves: latency"):
        policies.get(name, objective="energy")


def test_descriptions_registered():
    av = policies.available()
    for name in ("single", "round-robin", "met", "mct"):
        assert av[name] and "\n" not in av[name]
