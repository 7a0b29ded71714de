"""graphs.coarsen: sums preserved, members partition the op graph, always a DAG."""
from __future__ import annotations

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from graphs import CyclicGraphError, GraphError, OpGraph, UnknownNameError, capture, coarsen
from graphs.coarsen import ROOT_GROUP, group_key

COST_ATTRS = ("flops", "bytes_in", "bytes_out", "param_bytes")


def check_coarse(c: OpGraph, g: OpGraph) -> None:
    assert nx.is_directed_acyclic_graph(c)
    assert c.graph.get("module") is g.graph.get("module")
    for attr in COST_ATTRS:
        assert c.total(attr) == g.total(attr), attr
    owner = {}
    for n, a in c.nodes(data=True):
        assert sum(a["kinds"].values()) == len(a["members"])
        for m in a["members"]:
            assert m not in owner, f"{m} in {owner.get(m)} and {n}"
            owner[m] = n
        if a["op"] == "group":
            for attr in COST_ATTRS:
                assert a[attr] == sum(g.nodes[m][attr] for m in a["members"])
            kinds = {g.nodes[m]["kind"] for m in a["members"]}
            assert a["kind"] == (kinds.pop() if len(kinds) == 1 else "group")
    assert set(owner) == set(g.nodes)
    # a coarse edge exists exactly where op edges cross groups; bytes lie between the
    # largest crossing tensor and the sum of all crossing edges
    crossing: dict = {}
    for u, v, e in g.edges(data=True):
        if owner[u] != owner[v]:
            crossing.setdefault((owner[u], owner[v]), []).append(e["bytes"])
    assert set(crossing) == set(c.edges)
    for (a, b), sizes in crossing.items():
        assert max(sizes) <= c.edges[a, b]["bytes"] <= sum(sizes)


class TestReferenceModel:
    @pytest.mark.parametrize("granularity", ["module", "layer"])
    def test_1b(self, graph_1b, granularity):
        check_coarse(coarsen(graph_1b, granularity), graph_1b)

    @pytest.mark.parametrize("granularity", ["module", "layer"])
    def test_tiny(self, graph_tiny, granularity):
        check_coarse(coarsen(graph_tiny, granularity), graph_tiny)

    def test_1b_layer_nodes(self, graph_1b):
        c = coarsen(graph_1b, "layer")
        layers = [n for n in c if str(n).startswith("layers.")]
        assert layers == [f"layers.{i}" for i in range(26)]
        others = set(c) - set(layers)
        assert others == {"input_ids", ROOT_GROUP, "embed_tokens", "norm", "lm_head", "output"}
        a = c.nodes["layers.7"]
        assert a["kind"] == "group" and a["op"] == "group" and a["layer"] == "layers.7"
        assert a["kinds"]["matmul"] == 7 and a["kinds"]["attention"] == 1
        assert a["shape"] == (1, 128, 1536) and a["module"] == "layers.7"
        assert c.nodes["lm_head"]["kind"] == "matmul"
        # the layers form a chain; the residual stream moves 128 x 1536 floats between them
        assert c.edges["layers.6", "layers.7"]["bytes"] == 128 * 1536 * 4
        assert c.nodes["layers.7"]["flops"] == c.nodes["layers.8"]["flops"]

    def test_1b_module_nodes(self, graph_1b):
        c = coarsen(graph_1b, "module")
        assert {"layers.3.self_attn", "layers.3.mlp", "layers.3.input_layernorm"} <= set(c)
        mlp = c.nodes["layers.3.mlp"]
        assert mlp["kinds"] == {"activation": 1, "elementwise": 1, "matmul": 3}
        assert mlp["param_bytes"] == 3 * 1536 * 6144 * 4
        # the block's own ops (two residual adds) are split around the MLP to stay acyclic
        first, second = c.nodes["layers.3"], c.nodes["layers.3#1"]
        assert first["kinds"] == second["kinds"] == {"elementwise": 1}
        g = graph_1b
        assert g.nodes[first["members"][0]]["target"] == g.nodes[second["members"][0]]["target"] == "operator.add"
        assert nx.has_path(c, "layers.3", "layers.3.mlp") and nx.has_path(c, "layers.3.mlp", "layers.3#1")

    def test_op_granularity_is_identity(self, graph_tiny):
        assert coarsen(graph_tiny, "op") is graph_tiny


class RootAroundChild(nn.Module):
    """Root ops before and after a child: grouping the root's ops naively makes a cycle."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x) * 2) + 1


class TestCycles:
    def test_split_keeps_a_dag(self):
        g = capture(RootAroundChild(), torch.randn(2, 4))
        naive = nx.quotient_graph(g, lambda u, v: group_key(g.nodes[u], "module") is not None
                                  and group_key(g.nodes[u], "module") == group_key(g.nodes[v], "module"))
        assert not nx.is_directed_acyclic_graph(naive)  # the case is real
        c = coarsen(g, "module")
        check_coarse(c, g)
        assert c.nodes[ROOT_GROUP]["members"] == ("mul",)
        assert c.nodes[ROOT_GROUP + "#1"]["members"] == ("add",)
        assert list(nx.topological_sort(c)) == ["x", "a", ROOT_GROUP, "b", ROOT_GROUP + "#1", "output"]

    @settings(max_examples=60, deadline=None)
    @given(st.data())
    def test_random_groupings_stay_acyclic(self, data):
        n = data.draw(st.integers(2, 14))
        g = OpGraph(granularity="op", name="rand")
        for i in range(n):
            module = data.draw(st.sampled_from(["layers.0.p", "layers.0.q", "layers.0",
                                                "layers.1.p", "x", "y.z", ""]))
            layer = module[:8] if module.startswith("layers.") else None
            g.add_node(i, kind=data.draw(st.sampled_from(["matmul", "view"])), flops=i + 1,
                       bytes_in=1, bytes_out=2, param_bytes=3, module=module, layer=layer,
                       members=(i,))
        for j in range(1, n):
            for i in data.draw(st.sets(st.integers(0, j - 1), max_size=3)):
                g.add_edge(i, j, bytes=data.draw(st.integers(0, 9)))
        for gran in ("module", "layer"):
            check_coarse(coarsen(g, gran), g)


class TestErrors:
    def test_unknown_granularity(self, graph_tiny):
        with pytest.raises(UnknownNameError, match="unknown granularity 'block'; valid choices: layer, module, op"):
            coarsen(graph_tiny, "block")

    def test_coarse_input(self, graph_tiny):
        with pytest.raises(GraphError, match="coarsen needs an op-granularity graph, got granularity 'layer'"):
            coarsen(coarsen(graph_tiny, "layer"), "module")

    def test_cyclic_input(self):
        g = OpGraph(granularity="op", name="loop")
        g.add_edges_from([("a", "b"), ("b", "a")])
        with pytest.raises(CyclicGraphError, match="graph 'loop' has a cycle"):
            coarsen(g, "layer")
