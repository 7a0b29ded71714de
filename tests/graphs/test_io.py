"""graphs.io: lossless JSON round trip, malformed input, and the summary."""
from __future__ import annotations

import json
import math

import pytest

from graphs import (CyclicGraphError, GraphError, GraphFormatError, OpGraph, coarsen, from_json,
                    load, save, summary, to_json)


def assert_same(a: OpGraph, b: OpGraph) -> None:
    assert list(a.nodes) == list(b.nodes)
    for n in a:
        assert a.nodes[n] == b.nodes[n], n
        for k, v in a.nodes[n].items():
            assert type(v) is type(b.nodes[n][k]), (n, k)
    assert list(a.edges(data=True)) == list(b.edges(data=True))
    assert {k: v for k, v in a.graph.items() if k != "module"} == b.graph


def envelope(nodes, edges=(), graph=None, **extra):
    return json.dumps({"format": "hetsched.opgraph", "version": 1, "graph": graph or {},
                       "nodes": list(nodes), "edges": list(edges), **extra})


class TestRoundTrip:
    @pytest.mark.parametrize("granularity", ["op", "module", "layer"])
    def test_captured_graph(self, graph_1b, granularity):
        g = coarsen(graph_1b, granularity)
        h = from_json(to_json(g))
        assert_same(g, h)
        assert h.granularity == granularity and h.name == "1b"
        assert isinstance(h.nodes["output"]["shape"], tuple)

    def test_awkward_values(self):
        g = OpGraph(granularity="op", name="odd", extra={1: "int key", "__tuple__": 2})
        g.add_node(0, kind="input", shape=((1, 2), (3,)), layer=None, members=(0,),
                   cost=math.inf, w=float("nan"), tags=["a", ("b", None)], ok=True)
        g.add_node(("t", 1), kind="other", shape=(), layer="layers.0", kinds={"view": 2})
        g.add_edge(0, ("t", 1), bytes=0, weight=-math.inf)
        h = from_json(to_json(g))
        assert list(h.nodes) == [0, ("t", 1)]
        a = h.nodes[0]
        assert a["shape"] == ((1, 2), (3,)) and a["members"] == (0,) and a["layer"] is None
        assert a["cost"] == math.inf and math.isnan(a["w"]) and a["tags"] == ["a", ("b", None)]
        assert a["ok"] is True
        assert h.edges[0, ("t", 1)]["weight"] == -math.inf
        assert h.graph["extra"] == {1: "int key", "__tuple__": 2}
        assert h.nodes[("t", 1)]["shape"] == ()

    def test_file(self, graph_tiny, tmp_path):
        p = tmp_path / "g.json"
        save(graph_tiny, p)
        h = load(p)
        assert_same(graph_tiny, h)
        assert json.loads(p.read_text())["version"] == 1

    def test_loaded_graph_has_no_module(self, graph_tiny):
        with pytest.raises(GraphError, match="has no GraphModule"):
            from_json(to_json(graph_tiny)).module


class TestMalformed:
    def test_not_json(self):
        with pytest.raises(GraphFormatError, match="not valid JSON"):
            from_json("{nodes: ")

    def test_not_an_object(self):
        with pytest.raises(GraphFormatError, match="top level must be a JSON object, got list"):
            from_json("[]")

    def test_wrong_format(self):
        with pytest.raises(GraphFormatError, match="field 'format' must be 'hetsched.opgraph', got 'dot'"):
            from_json(json.dumps({"format": "dot"}))

    def test_bad_version(self):
        with pytest.raises(GraphFormatError, match="unsupported version 2; supported versions: 1"):
            from_json(envelope([]).replace('"version": 1', '"version": 2'))

    def test_missing_nodes(self):
        with pytest.raises(GraphFormatError, match="top level: missing field 'nodes'"):
            from_json(json.dumps({"format": "hetsched.opgraph", "version": 1, "graph": {}}))

    def test_node_without_id(self):
        with pytest.raises(GraphFormatError, match=r"nodes\[1\]: missing field 'id'"):
            from_json(envelope([{"id": "a", "attrs": {}}, {"attrs": {}}]))

    def test_duplicate_id(self):
        with pytest.raises(GraphFormatError, match=r"nodes\[1\]: duplicate node id 'a'"):
            from_json(envelope([{"id": "a", "attrs": {}}, {"id": "a", "attrs": {}}]))

    def test_unknown_kind(self):
        with pytest.raises(GraphFormatError, match=r"node 'a'\): unknown kind 'gemm'; valid kinds: input, output"):
            from_json(envelope([{"id": "a", "attrs": {"kind": "gemm"}}]))

    def test_bad_granularity(self):
        with pytest.raises(GraphFormatError, match="graph.granularity 'block' is not one of op, module, layer"):
            from_json(envelope([], graph={"granularity": "block"}))

    def test_edge_to_unknown_node(self):
        with pytest.raises(GraphFormatError, match=r"edges\[0\]: target 'zz' is not a node id"):
            from_json(envelope([{"id": "a", "attrs": {}}], [{"source": "a", "target": "zz"}]))

    def test_bad_tag(self):
        with pytest.raises(GraphFormatError, match="'__tuple__' must hold a list"):
            from_json(envelope([{"id": "a", "attrs": {"shape": {"__tuple__": 3}}}]))

    def test_cycle_is_named(self):
        nodes = [{"id": n, "attrs": {}} for n in "abc"]
        edges = [{"source": "a", "target": "b"}, {"source": "b", "target": "c"},
                 {"source": "c", "target": "b"}]
        with pytest.raises(CyclicGraphError, match="has a cycle: 'b' -> 'c' -> 'b'"):
            from_json(envelope(nodes, edges, graph={"name": "loop"}))

    def test_unserialisable_attribute(self):
        g = OpGraph(name="x")
        g.add_node("a", blob={1, 2})
        with pytest.raises(GraphFormatError, match=r"node 'a'.blob: cannot serialise a value of type set"):
            to_json(g)


class TestSummary:
    def test_reference_model(self, graph_1b):
        text = summary(graph_1b)
        lines = text.splitlines()
        assert lines[0] == (f"OpGraph '1b' (op granularity): {graph_1b.number_of_nodes()} nodes, "
                            f"{graph_1b.number_of_edges()} edges")
        assert "attention 26" in lines[1] and "matmul 183" in lines[1]
        assert f"{graph_1b.total('flops') / 1e9:.4g} GFLOPs" in lines[2]
        assert f"params {graph_1b.total('param_bytes') / 1e6:.1f} MB" in lines[2]
        heavy = [line.split()[0] for line in lines[4:]]
        assert heavy[0] == "lm_head" and len(heavy) == 5
        flops = [graph_1b.nodes[n]["flops"] for n in heavy]
        assert flops == sorted(flops, reverse=True)
        assert min(flops) == sorted(nx_flops(graph_1b), reverse=True)[4]


def nx_flops(g):
    return [a["flops"] for _, a in g.nodes(data=True)]
