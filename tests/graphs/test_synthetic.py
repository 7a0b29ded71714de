"""Synthetic task-graph generators: shape, determinism, CCR, heterogeneity, bad parameters."""
from __future__ import annotations

import math

import networkx as nx
import pytest

from graphs import synthetic
from graphs.errors import GraphError


class TestLayered:
    def test_shape_and_attributes(self):
        g = synthetic.layered(100, shape=1.0, out_degree=3, ccr=0.5, seed=7)
        assert g.number_of_nodes() == 100 and nx.is_directed_acyclic_graph(g)
        assert g.graph["params"]["height"] == 10  # round(sqrt(100) / 1.0)
        assert all("cost" in a for _, a in g.nodes(data=True))
        assert all("data" in a for _, _, a in g.edges(data=True))
        assert all(u < v for u, v in g.edges)  # nodes numbered in a topological order

    def test_levels_follow_shape(self):
        tall = synthetic.layered(64, shape=0.5, seed=1)
        wide = synthetic.layered(64, shape=2.0, seed=1)
        assert tall.graph["params"]["height"] == 16 and wide.graph["params"]["height"] == 4
        assert nx.dag_longest_path_length(tall) == 15 and nx.dag_longest_path_length(wide) == 3

    def test_every_lower_node_has_a_parent(self):
        g = synthetic.layered(50, seed=2)
        sources = [n for n in g if g.in_degree(n) == 0]
        # only the first level has no parents; nodes are numbered level by level
        assert sources == list(range(len(sources)))

    def test_out_degree_mean(self):
        g = synthetic.layered(400, shape=1.0, out_degree=2, seed=3)
        inner = [n for n in g if g.out_degree(n) > 0]
        mean = sum(g.out_degree(n) for n in inner) / len(inner)
        assert 1.5 < mean < 3.0  # 1..3 children, plus extra parents added for orphans

    @pytest.mark.parametrize("ccr", [0.0, 0.1, 1.0, 10.0])
    def test_ccr_is_exact(self, ccr):
        g = synthetic.layered(40, ccr=ccr, seed=4)
        assert synthetic.mean_data(g) == pytest.approx(ccr * synthetic.mean_cost(g))

    def test_costs_within_heft_range(self):
        g = synthetic.layered(200, mean_cost=5.0, seed=5)  # spread 2: uniform in [0, 10]
        costs = [a["cost"] for _, a in g.nodes(data=True)]
        assert min(costs) >= 0 and max(costs) <= 10 and 4 < sum(costs) / len(costs) < 6

    def test_deterministic_and_seeded(self):
        a, b = synthetic.layered(30, seed=9), synthetic.layered(30, seed=9)
        assert list(a.edges(data=True)) == list(b.edges(data=True))
        assert list(a.nodes(data=True)) == list(b.nodes(data=True))
        assert list(synthetic.layered(30, seed=10).edges) != list(a.edges)

    def test_one_node(self):
        g = synthetic.layered(1)
        assert g.number_of_nodes() == 1 and g.number_of_edges() == 0


class TestFamilies:
    def test_fork_join(self):
        g = synthetic.fork_join(4, 3, spread=0, ccr=2.0)
        assert g.number_of_nodes() == 1 + 3 * 5 and g.number_of_edges() == 3 * 8
        assert [n for n in g if g.in_degree(n) == 0] == [0] and [n for n in g if g.out_degree(n) == 0] == [15]
        assert {a["cost"] for _, a in g.nodes(data=True)} == {10.0}
        assert {a["data"] for _, _, a in g.edges(data=True)} == {20.0}

    def test_chain(self):
        g = synthetic.chain(5, seed=1)
        assert list(g.edges) == [(0, 1), (1, 2), (2, 3), (3, 4)]
        assert all(5.0 <= a["cost"] <= 15.0 for _, a in g.nodes(data=True))  # spread 1

    def test_trees(self):
        o = synthetic.out_tree(4, 3)
        i = synthetic.in_tree(4, 3)
        assert o.number_of_nodes() == i.number_of_nodes() == 1 + 3 + 9 + 27
        assert max(d for _, d in o.in_degree()) == 1 and max(d for _, d in i.out_degree()) == 1
        assert all(u < v for u, v in i.edges) and all(u < v for u, v in o.edges)
        assert [n for n in i if i.out_degree(n) == 0] == [39]

    def test_graph_records_parameters(self):
        g = synthetic.fork_join(2, seed=3, ccr=0.5)
        assert g.graph["generator"] == "fork_join"
        assert g.graph["params"] == {"width": 2, "depth": 1, "seed": 3, "mean_cost": 10.0, "spread": 1.0, "ccr": 0.5}


class TestHeterogeneity:
    def test_beta_range(self):
        g = synthetic.chain(200, spread=0)
        t = synthetic.heterogeneous_times(g, ["x", "y", "z"], beta=1.0, seed=1)
        vals = [v for row in t.values() for v in row.values()]
        assert min(vals) >= 5.0 and max(vals) <= 15.0  # 10 * [1 - 0.5, 1 + 0.5]
        assert max(vals) - min(vals) > 8  # actually spread over the range

    def test_beta_zero_is_homogeneous_and_seeded(self):
        g = synthetic.layered(10, seed=1)
        t = synthetic.heterogeneous_times(g, ["x", "y"], beta=0.0)
        assert all(row["x"] == row["y"] == g.nodes[n]["cost"] for n, row in t.items())
        assert synthetic.heterogeneous_times(g, ["x", "y"], 1.0, 3) == synthetic.heterogeneous_times(g, ["x", "y"], 1.0, 3)

    def test_feeds_a_table_cost_model(self):
        from policies.abstract import TableCostModel

        g = synthetic.chain(3, spread=0, ccr=1.0)
        cm = TableCostModel(synthetic.heterogeneous_times(g, ["x", "y"], 0.0), synthetic.edge_times(g, 2.0))
        assert cm.edge_time(g, 0, 1, "x", "y") == 5.0 and cm.node_time(g, 2, "y") == 10.0


@pytest.mark.parametrize("call, match", [
    (lambda: synthetic.layered(0), "n must be an integer >= 1, got 0"),
    (lambda: synthetic.layered(5.5), "n must be an integer >= 1, got 5.5"),
    (lambda: synthetic.layered(10, ccr=-1), "ccr must be a finite number >= 0, got -1"),
    (lambda: synthetic.layered(10, ccr=math.inf), "ccr must be a finite number >= 0, got inf"),
    (lambda: synthetic.layered(10, shape=0), "shape must be a finite number > 0, got 0"),
    (lambda: synthetic.layered(10, out_degree=0), "out_degree must be an integer >= 1, got 0"),
    (lambda: synthetic.layered(10, mean_cost=0), "mean_cost must be a finite number > 0, got 0"),
    (lambda: synthetic.layered(10, spread=3), "spread must be a finite number >= 0 and <= 2, got 3"),
    (lambda: synthetic.layered(10, seed="x"), "seed must be an integer, got 'x'"),
    (lambda: synthetic.fork_join(0), "width must be an integer >= 1, got 0"),
    (lambda: synthetic.fork_join(2, 0), "depth must be an integer >= 1, got 0"),
    (lambda: synthetic.chain(-1), "n must be an integer >= 1, got -1"),
    (lambda: synthetic.out_tree(0), "depth must be an integer >= 1, got 0"),
    (lambda: synthetic.in_tree(2, 0), "branching must be an integer >= 1, got 0"),
    (lambda: synthetic.heterogeneous_times(synthetic.chain(2), ["x"], beta=2.5), "beta must be a finite number >= 0 and <= 2, got 2.5"),
    (lambda: synthetic.heterogeneous_times(synthetic.chain(2), []), "devices must name at least one device"),
    (lambda: synthetic.heterogeneous_times(synthetic.chain(2), ["x", "x"]), "devices must be distinct"),
    (lambda: synthetic.heterogeneous_times(nx.DiGraph([(1, 2)]), ["x"]), "node 1 has no 'cost' attribute"),
    (lambda: synthetic.edge_times(synthetic.chain(2), 0), "bandwidth must be a finite number > 0, got 0"),
])
def test_bad_parameters(call, match):
    with pytest.raises(GraphError, match=match):
        call()
