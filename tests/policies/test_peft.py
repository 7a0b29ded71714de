"""PEFT (Arabnejad & Barbosa 2014): the optimistic cost table by hand, and look-ahead."""
from __future__ import annotations

import networkx as nx
import pytest

import policies
from executors.devices import Cluster
from policies import validate
from policies.abstract import TableCostModel
from policies.peft import PEFT, optimistic_cost_table
from policies.schedule import ScheduleContext


def test_oct_by_hand():
    # chain a -> b -> c, mean transfer 2 per edge
    g = nx.DiGraph([("a", "b"), ("b", "c")])
    cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 2, "y": 4}, "c": {"x": 3, "y": 1}},
                        {("a", "b"): 2, ("b", "c"): 2})
    oct_ = optimistic_cost_table(ScheduleContext(g, Cluster.from_names(["x", "y"]), cm))
    # OCT(b,x) = min(3, 1+2) = 3; OCT(b,y) = min(3+2, 1) = 1
    # OCT(a,x) = min(3+2, 1+4+2) = 5; OCT(a,y) = min(3+2+2, 1+4) = 5
    assert oct_.tolist() == [[5.0, 5.0], [3.0, 1.0], [0.0, 0.0]]


def test_look_ahead_beats_heft():
    g = nx.DiGraph([("a", "b")])
    cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 10, "y": 1}}, {("a", "b"): 5})
    c = Cluster.from_names(["x", "y"])
    heft = policies.get("heft").place(g, c, cm)
    peft = PEFT().place(g, c, cm)
    # HEFT puts a on x (finish 1), then b on y after the transfer: 1 + 5 + 1
    assert heft.makespan == 7.0
    # PEFT sees OCT(a, x) = 6 > OCT(a, y) = 1 and keeps both on y: 2 + 1
    assert dict(peft.assignment) == {"a": "y", "b": "y"} and peft.makespan == 3.0
    validate(peft, g, c, cm)


def test_unsupported_device_is_never_chosen():
    g = nx.DiGraph([("a", "b"), ("a", "c")])
    cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"y": 9}, "c": {"x": 1, "y": 1}},
                        {("a", "b"): 1, ("a", "c"): 1})
    c = Cluster.from_names(["x", "y"])
    p = PEFT().place(g, c, cm)
    assert p.assignment["b"] == "y"
    validate(p, g, c, cm)


def test_registered():
    assert policies.available()["peft"].startswith("PEFT: optimistic-cost-table")
    with pytest.raises(policies.PolicyError, match="does not serve objective 'energy'"):
        PEFT(objective="energy")
