"""CPOP on the published example (Topcuoglu, Hariri, Wu 2002, fig. 4b): makespan 86."""
from __future__ import annotations

import os

import networkx as nx
import pytest

import policies
from executors.devices import Cluster
from policies import validate
from policies.abstract import TableCostModel, graph_from_table
from policies.cpop import CPOP, critical_path
from policies.heft import downward_rank, upward_rank
from policies.schedule import ScheduleContext
from tests.conftest import SHARED_DATA

EXAMPLE = os.path.join(SHARED_DATA, "heft_paper_example.json")


@pytest.fixture(scope="module")
def paper():
    g = graph_from_table(EXAMPLE)
    cm = TableCostModel.from_json(EXAMPLE)
    return g, Cluster.from_names(cm.devices), cm


def test_makespan_86_as_published(paper):
    g, c, cm = paper
    p = policies.get("cpop").place(g, c, cm)
    assert p.makespan == 86.0 == g.graph["published"]["CPOP makespan"]
    validate(p, g, c, cm)


def test_critical_path_and_its_processor(paper):
    g, c, cm = paper
    ctx = ScheduleContext(g, c, cm)
    prio = upward_rank(ctx) + downward_rank(ctx)
    cp = [ctx.nodes[i] for i in critical_path(ctx, prio)]
    assert cp == ["1", "2", "9", "10"]
    assert [prio[ctx.index[n]] for n in cp] == pytest.approx([108.0] * 4)
    p = CPOP().place(g, c, cm)
    # P2 runs the CP in 16 + 19 + 12 + 7 = 54, less than P1 (66) and P3 (63)
    assert p.info["cp_device"] == "P2" and all(p.assignment[n] == "P2" for n in cp)


def test_cp_device_that_cannot_run_a_cp_node_falls_back():
    g = nx.DiGraph([("a", "b"), ("b", "c")])
    cm = TableCostModel({"a": {"x": 1, "y": 5}, "b": {"y": 5}, "c": {"x": 1, "y": 5}},
                        {("a", "b"): 1, ("b", "c"): 1})
    c = Cluster.from_names(["x", "y"])
    p = CPOP().place(g, c, cm)
    assert p.info["cp_device"] == "y"  # the only device that runs the whole path
    assert dict(p.assignment) == {"a": "y", "b": "y", "c": "y"} and p.makespan == 15.0
    validate(p, g, c, cm)
