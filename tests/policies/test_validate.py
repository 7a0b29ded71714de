"""policies.validate: each check catches its violation, with an exact message."""
from __future__ import annotations

import dataclasses

import networkx as nx
import pytest

import policies
from executors.devices import Cluster, DeviceSpec
from policies import validate
from policies.abstract import TableCostModel
from policies.errors import InvalidPlan
from policies.plan import Plan


@pytest.fixture
def case():
    g = nx.DiGraph([("a", "b")])
    g.add_node("c")
    for n in g:
        g.nodes[n]["bytes_out"] = 10
    cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 2, "y": 2}, "c": {"x": 3}}, {("a", "b"): 4})
    c = Cluster.from_specs([DeviceSpec(d, "cpu", {"float32": 1e9}, 1e9, 25) for d in ("x", "y")])
    good = Plan(assignment={"a": "y", "b": "x", "c": "x"}, order={"x": ("c", "b"), "y": ("a",)},
                start={"a": 0, "b": 6, "c": 0}, finish={"a": 2, "b": 8, "c": 3}, makespan=8)
    return g, c, cm, good


def _with(plan, **kw):
    return dataclasses.replace(plan, **kw)


def test_valid_plan_has_no_problems(case):
    g, c, cm, good = case
    assert validate(good, g, c, cm) == []


def test_policy_plan_is_valid(case):
    g, c, cm, _ = case
    assert validate(policies.get("heft").place(g, c, cm), g, c, cm) == []


def test_unplaced_and_unknown_nodes(case):
    g, c, cm, good = case
    bad = _with(good, assignment={"a": "y", "b": "x", "z": "x"}, order={"x": ("z", "b"), "y": ("a",)})
    probs = validate(bad, g, c, cm, raise_=False)
    assert "node 'c' is not placed" in probs
    assert "plan places 'z', which is not a node of the graph" in probs


def test_unknown_device(case):
    g, c, cm, good = case
    bad = _with(good, assignment={**good.assignment, "c": "w"}, order={"x": ("b",), "y": ("a",), "w": ("c",)})
    probs = validate(bad, g, c, cm, raise_=False)
    assert "node 'c' is on 'w', which is not a device of the cluster (devices: x, y)" in probs
    assert "order names device 'w', which is not in the cluster (devices: x, y)" in probs


def test_order_inconsistent_with_assignment(case):
    g, c, cm, good = case
    bad = _with(good, order={"x": ("c", "b", "a"), "y": ("a",)})
    probs = validate(bad, g, c, cm, raise_=False)
    assert probs == ["node 'a' is in the order of 'x' but assigned to 'y'",
                     "node 'a' appears more than once in the orders ('x' and 'y')",
                     "device 'x': order is not sorted by start ('b' at 6 before 'a' at 0)"]
    bad = _with(good, order={"x": ("c",), "y": ("a",)})
    assert validate(bad, g, c, cm, raise_=False) == ["node 'b' (on 'x') is missing from the device orders"]


def test_order_not_sorted(case):
    g, c, cm, good = case
    bad = _with(good, order={"x": ("b", "c"), "y": ("a",)})
    assert validate(bad, g, c, cm, raise_=False) == [
        "device 'x': order is not sorted by start ('b' at 6 before 'c' at 0)"]


def test_wrong_duration(case):
    g, c, cm, good = case
    bad = _with(good, finish={**good.finish, "c": 2.5})
    assert validate(bad, g, c, cm, raise_=False) == [
        "node 'c' on 'x' lasts 2.5, but the cost model says 3"]


def test_precedence_and_transfer(case):
    g, c, cm, good = case
    bad = _with(good, start={**good.start, "b": 5}, finish={**good.finish, "b": 7}, makespan=7)
    assert validate(bad, g, c, cm, raise_=False) == [
        "edge 'a'->'b': 'b' starts at 5 before its data is ready at 6 (finish of 'a' 2 + transfer 4)"]


def test_overlap(case):
    g, c, cm, good = case
    bad = _with(good, start={**good.start, "c": 4}, finish={**good.finish, "c": 7})
    assert validate(bad, g, c, cm, raise_=False) == ["device 'x': 'b' starts at 6 before 'c' finishes at 7"]


def test_makespan(case):
    g, c, cm, good = case
    assert validate(_with(good, makespan=9), g, c, cm, raise_=False) == [
        "makespan is 9 but the last node finishes at 8"]


def test_unsupported_device(case):
    g, c, cm, good = case
    bad = _with(good, assignment={**good.assignment, "c": "y"}, order={"x": ("b",), "y": ("c", "a")},
                start={**good.start, "c": 0, "a": 3}, finish={**good.finish, "c": 3, "a": 5})
    probs = validate(bad, g, c, cm, raise_=False)
    assert "node 'c' is on 'y', which cannot run it" in probs


def test_memory_capacity(case):
    g, c, cm, _ = case
    # all three on x (30 bytes > 25); a valid timing otherwise
    p = Plan(assignment={n: "x" for n in g}, order={"x": ("a", "b", "c")}, start={"a": 0, "b": 1, "c": 3},
             finish={"a": 1, "b": 3, "c": 6}, makespan=6)
    assert validate(p, g, c, cm, raise_=False) == ["device 'x' holds 30 bytes, over its capacity 25 by 5"]
    assert validate(p, g, c, cm, memory=False) == []


def test_latency_bound_in_options(case):
    g, c, cm, good = case
    assert validate(_with(good, options={"latency_bound": 7.0}), g, c, cm, raise_=False) == [
        "makespan 8 exceeds the latency_bound 7 by 1"]


def test_non_finite_times(case):
    g, c, cm, good = case
    bad = _with(good, finish={**good.finish, "c": float("nan")})
    assert "node 'c' has a non-finite time (start 0, finish nan)" in validate(bad, g, c, cm, raise_=False)


def test_raises_listing_every_problem(case):
    g, c, cm, good = case
    bad = _with(good, finish={**good.finish, "c": 2.5}, makespan=9)
    with pytest.raises(InvalidPlan, match="invalid plan: node 'c' on 'x' lasts 2.5.*; makespan is 9") as e:
        validate(bad, g, c, cm)
    assert len(e.value.problems) == 2


def test_tolerance(case):
    g, c, cm, good = case
    near = _with(good, makespan=8 + 1e-12)
    assert validate(near, g, c, cm) == []
    assert validate(near, g, c, cm, tol=0.0, raise_=False) != []
