"""graphs.io rejects bad numbers and names (hardening item 12): negative or non-finite
costs, a cost-annotated node without ``bytes_out``, an unknown dtype, a string where a
number belongs, each a GraphFormatError naming the node, the field, the value and the
valid range or choices."""
from __future__ import annotations

import json
import math

import pytest

from graphs import GraphFormatError, from_json, load, to_json
from graphs.opgraph import COST_ATTRS, DTYPES, OpGraph


def envelope(nodes, edges=()):
    return json.dumps({"format": "hetsched.opgraph", "version": 1, "graph": {"granularity": "op"},
                       "nodes": list(nodes), "edges": list(edges)})


def node(**changes):
    attrs = {"kind": "matmul", "flops": 2000, "bytes_in": 64, "bytes_out": 32, "param_bytes": 16,
             "dtype": "float32"}
    attrs.update(changes)
    return {"id": "mm", "attrs": {k: v for k, v in attrs.items() if v is not _DROP}}


_DROP = object()
INF = {"__float__": "inf"}
NAN = {"__float__": "nan"}


class TestCostNumbers:
    @pytest.mark.parametrize("field", COST_ATTRS)
    def test_negative(self, field):
        with pytest.raises(GraphFormatError,
                           match=rf"node 'mm': field '{field}' = -5 is out of range; it must be a finite number >= 0"):
            from_json(envelope([node(**{field: -5})]))

    @pytest.mark.parametrize("field", ["flops", "bytes_out", "param_bytes"])
    @pytest.mark.parametrize("value, shown", [(INF, "inf"), (NAN, "nan"), ({"__float__": "-inf"}, "-inf")])
    def test_non_finite(self, field, value, shown):
        with pytest.raises(GraphFormatError, match=rf"node 'mm': field '{field}' = {shown} is out of range; "
                                                   r"it must be a finite number >= 0"):
            from_json(envelope([node(**{field: value})]))

    def test_string_flops_names_the_node(self):
        with pytest.raises(GraphFormatError, match=r"nodes\[0\]: node 'mm': field 'flops' = '2000' \(str\) is not "
                                                   r"a number; it must be a finite number >= 0"):
            from_json(envelope([node(flops="2000")]))

    def test_bool_is_not_a_number(self):
        with pytest.raises(GraphFormatError, match=r"field 'bytes_in' = True \(bool\) is not a number"):
            from_json(envelope([node(bytes_in=True)]))

    def test_missing_bytes_out(self):
        with pytest.raises(GraphFormatError, match=r"node 'mm': field 'bytes_out' is missing \(the node has flops, "
                                                   r"bytes_in, param_bytes\).*finite number >= 0"):
            from_json(envelope([node(bytes_out=_DROP)]))

    def test_null_cost_is_allowed(self):
        g = from_json(envelope([node(param_bytes=None)]))
        assert g.nodes["mm"]["param_bytes"] is None

    def test_node_without_costs_needs_no_bytes_out(self):
        g = from_json(envelope([{"id": 0, "attrs": {"kind": "input", "cost": 3.0}}]))
        assert g.nodes[0]["cost"] == 3.0

    def test_edge_bytes(self):
        nodes = [{"id": "a", "attrs": {}}, {"id": "b", "attrs": {}}]
        with pytest.raises(GraphFormatError, match=r"edges\[0\] \(edge 'a' -> 'b'\): field 'bytes' = -1 is out of "
                                                   r"range; it must be a finite number >= 0"):
            from_json(envelope(nodes, [{"source": "a", "target": "b", "attrs": {"bytes": -1}}]))

    def test_load_checks_too(self, tmp_path):
        p = tmp_path / "g.json"
        p.write_text(envelope([node(flops=-1.5)]))
        with pytest.raises(GraphFormatError, match=r"node 'mm': field 'flops' = -1.5 is out of range"):
            load(p)


class TestDtype:
    def test_unknown_dtype_lists_choices(self):
        with pytest.raises(GraphFormatError, match=r"node 'mm': field 'dtype' = 'float99' is not a known dtype; "
                                                   r"valid dtypes: bfloat16, .*float32.*\(or null\)"):
            from_json(envelope([node(dtype="float99")]))

    def test_null_dtype_is_allowed(self):
        assert from_json(envelope([node(dtype=None)])).nodes["mm"]["dtype"] is None

    def test_dtypes_match_torch(self):
        torch = pytest.importorskip("torch")
        names = {str(getattr(torch, n)).replace("torch.", "") for n in dir(torch)
                 if isinstance(getattr(torch, n), torch.dtype)}
        assert {"float32", "float16", "bfloat16", "int64", "bool"} <= set(DTYPES)
        assert set(DTYPES) <= names


class TestRoundTripStillWorks:
    def test_captured_graph_round_trips(self, graph_1b):
        h = from_json(to_json(graph_1b))
        assert h.number_of_nodes() == graph_1b.number_of_nodes()

    def test_phase_graph_round_trips(self):
        from graphs.models import get_config
        from policies.phase import phase_graphs

        for g in phase_graphs(get_config("smollm2-135m")).values():
            assert list(from_json(to_json(g)).nodes) == list(g.nodes)

    def test_writer_output_with_bad_value_is_refused_on_read(self):
        g = OpGraph(name="x")
        g.add_node("a", kind="matmul", flops=math.inf, bytes_out=1)
        with pytest.raises(GraphFormatError, match="field 'flops' = inf is out of range"):
            from_json(to_json(g))
