"""scheduler.tables: plans, stats and simulation results as dicts, rows, frames and text."""
from __future__ import annotations

import json
import sys
import types

import networkx as nx
import pytest

from policies.cost import CostModel
from policies.plan import Plan
from scheduler.errors import MissingDependencyError, SchedulerError
from scheduler.simulate import simulate, simulate_stream
from scheduler.stats import RequestRecord, StatsRecorder
from scheduler.tables import (ROOT_LABEL, ROOT_NOTE, column_header, compare_rows, device_rows,
                              format_table, format_value, node_label, node_rows, nodes_label,
                              partition_rows, sim_rows, stats_rows, to_dict, to_frame)


class Unit(CostModel):
    """Every node 1 s, every transfer 0.5 s; 10 W active, 1 W idle."""

    def node_time(self, g, n, d):
        return 1.0

    def edge_time(self, g, u, v, s, t):
        return 0.0 if s == t else 0.5

    def power(self, d):
        return (10.0, 1.0)


@pytest.fixture
def case():
    g = nx.DiGraph([("a", "b"), ("a", "c")])
    for n in g:
        g.nodes[n].update(kind="matmul", flops=100, param_bytes=8, bytes_out=4)
    plan = Plan({"a": "cpu", "b": "cpu", "c": "gpu"}, {"cpu": ("a", "b"), "gpu": ("c",)},
                {"a": 0.0, "b": 1.0, "c": 1.5}, {"a": 1.0, "b": 2.0, "c": 2.5}, 2.5,
                energy=7.0, memory={"cpu": 24.0, "gpu": 16.0}, policy="manual")
    return g, plan


class TestToDict:
    def test_plan_round_trips_through_json(self, case):
        _, plan = case
        d = to_dict(plan)
        assert Plan.from_dict(json.loads(json.dumps(d))) == plan

    def test_stream_result_is_plain(self, case):
        g, plan = case
        r = simulate_stream(g, plan, Unit(), [0.0, 0.0])
        d = to_dict(r)
        assert type(d["busy"]) is dict and d["busy"] == {"cpu": 4.0, "gpu": 2.0}
        assert d["completion"] == r.completion
        assert d["start"][(1, "a")] == r.start[(1, "a")]

    def test_runtime_stats(self):
        rec = StatsRecorder()
        rec.add_request(RequestRecord(0, 0.0, 0.5, "completed"))
        d = to_dict(rec.summary())
        assert d == rec.summary().as_dict()
        assert d["completed"] == 1 and type(d["busy_wall"]) is dict

    def test_rejects_non_results(self):
        with pytest.raises(SchedulerError, match="got int"):
            to_dict(3)


class TestRows:
    def test_node_rows_hand_computed(self, case):
        g, plan = case
        rows = node_rows(plan, g)
        assert [r["node"] for r in rows] == ["a", "b", "c"]
        assert rows[2] == {"node": "c", "device": "gpu", "start_s": 1.5, "finish_s": 2.5, "time_s": 1.0,
                           "kind": "matmul", "flops": 100, "memory_bytes": 12}

    def test_device_rows_hand_computed(self, case):
        _, plan = case
        rows = {r["device"]: r for r in device_rows(plan)}
        assert rows["cpu"]["busy_s"] == 2.0 and rows["cpu"]["utilisation"] == pytest.approx(0.8)
        assert rows["gpu"]["nodes"] == 1 and rows["gpu"]["memory_bytes"] == 16.0

    def test_device_rows_with_cluster_lists_unused_devices(self, case):
        from executors.devices import Cluster, DeviceSpec

        _, plan = case
        specs = [DeviceSpec(n, "cpu", {"float32": 1e9}, 1e9, 1e6) for n in ("cpu", "gpu", "spare")]
        rows = device_rows(plan, Cluster.from_specs(specs))
        assert [r["device"] for r in rows] == ["cpu", "gpu", "spare"]
        assert rows[2]["nodes"] == 0 and rows[2]["capacity_bytes"] == 1e6

    def test_sim_rows_match_the_simulation(self, case):
        g, plan = case
        r = simulate(g, plan, Unit())
        rows = {x["device"]: x for x in sim_rows(r)}
        assert rows["cpu"]["busy_s"] == 2.0 and rows["cpu"]["utilisation"] == pytest.approx(0.8)

    def test_compare_rows(self, case):
        _, plan = case
        (row,) = compare_rows({"mine": plan})
        assert row == {"policy": "mine", "makespan_s": 2.5, "period_s": None, "energy_j": 7.0,
                       "devices": "cpu, gpu", "decide_s": 0.0}

    def test_partition_rows_of_a_real_partition(self):
        import torch
        import graphs
        from graphs.partition import partition

        m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        g = graphs.capture(m, (torch.randn(1, 4),), granularity="op")
        compute = [n for n in g if g.nodes[n]["kind"] not in ("input", "output", "param")]
        assign = {n: ("a" if i < 2 else "b") for i, n in enumerate(compute)}
        assign.update({n: "a" for n in g if n not in assign})
        pm = partition(g, assign)
        rows = partition_rows(pm, {p.id: 0.1 * (p.id + 1) for p in pm.parts})
        assert [r["device"] for r in rows] == list(pm.devices)
        assert sum(r["flops"] for r in rows) == sum(p.flops for p in pm.parts)
        assert rows[-1]["predicted_s"] == pytest.approx(0.1 * len(rows))

    def test_stats_rows(self):
        s = types.SimpleNamespace(busy_wall={"a": 1.0}, utilisation_wall={"a": 0.5},
                                  busy_simulated={"b": 2.0}, utilisation_simulated={})
        assert stats_rows(s) == [
            {"device": "a", "busy_wall_s": 1.0, "utilisation_wall": 0.5, "busy_simulated_s": None,
             "utilisation_simulated": None},
            {"device": "b", "busy_wall_s": None, "utilisation_wall": None, "busy_simulated_s": 2.0,
             "utilisation_simulated": None}]


class TestFrame:
    def test_without_pandas_says_how_to_install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
        with pytest.raises(MissingDependencyError, match="pip install pandas"):
            to_frame([{"a": 1}])

    def test_builds_a_frame_with_columns_in_first_seen_order(self, monkeypatch):
        calls = []
        fake = types.ModuleType("pandas")
        fake.DataFrame = lambda rows, columns: calls.append((rows, columns)) or "frame"
        monkeypatch.setitem(sys.modules, "pandas", fake)
        assert to_frame([{"b": 1}, {"a": 2, "b": 3}]) == "frame"
        assert calls == [([{"b": 1}, {"a": 2, "b": 3}], ["b", "a"])]

    def test_real_pandas(self, case):
        pd = pytest.importorskip("pandas")
        _, plan = case
        df = to_frame(device_rows(plan))
        assert isinstance(df, pd.DataFrame) and list(df["device"]) == ["cpu", "gpu"]


class TestFormat:
    @pytest.mark.parametrize("col, v, text", [
        ("t_s", 0.0, "0 s"), ("t_s", 2.5, "2.500 s"), ("t_s", 2.5e-3, "2.500 ms"),
        ("t_s", 2.5e-6, "2.50 us"), ("m_bytes", 1023, "1023 B"), ("m_bytes", 1536, "1.50 KiB"),
        ("utilisation_wall", 0.125, "12.5%"), ("flops", 999, "999 FLOP"),
        ("flops", 1.5e12, "1.5 TFLOP"), ("e_j", 0.5, "500.000 mJ"), ("e_j", 2.0, "2.000 J"),
        ("r_per_s", 12.5, "12.5/s"), ("n", 3, "3"), ("n", None, "-"), ("name", "x", "x"),
        ("x", float("nan"), "-"), ("ok", True, "True"),
    ])
    def test_format_value(self, col, v, text):
        assert format_value(col, v) == text

    def test_table_aligns_columns(self):
        text = format_table([{"device": "npu", "n": 1}, {"device": "c", "n": 22}])
        assert text.splitlines() == ["device  n", "------  --", "npu     1", "c       22"]

    def test_unknown_column(self):
        with pytest.raises(SchedulerError, match="'nope' are in no row; columns present: a"):
            format_table([{"a": 1}], ["nope"])


class TestHeaders:
    """Table headers name the quantity; the cells carry the unit; row keys keep it."""

    def test_headers_drop_the_unit_the_cells_carry(self, case):
        _, plan = case
        rows = device_rows(plan)
        assert "busy_s" in rows[0] and "memory_bytes" in rows[0]  # rows (and JSON) keep raw SI keys
        head, _, first, _ = format_table(rows, ["device", "busy_s", "memory_bytes"]).splitlines()
        assert head.split() == ["device", "busy", "memory"]
        assert first.split() == ["cpu", "2.000", "s", "24", "B"]

    def test_compare_and_partition_headers(self, case):
        _, plan = case
        head = format_table(compare_rows({"mine": plan}), ["policy", "makespan_s", "energy_j"]).splitlines()[0]
        assert head.split() == ["policy", "makespan", "energy"]
        part = types.SimpleNamespace(id=0, device="npu", nodes=("a",), flops=10, param_bytes=4,
                                     bytes_in=8, bytes_out=8)
        rows = partition_rows(types.SimpleNamespace(parts=(part,)), {0: 0.001})
        head = format_table(rows, ["partition", "param_bytes", "out_bytes", "predicted_s"]).splitlines()[0]
        assert head.split() == ["partition", "params", "output", "predicted"]

    @pytest.mark.parametrize("col, head", [
        ("busy_s", "busy"), ("energy_per_token_j", "energy_per_token"), ("capacity_bytes", "capacity"),
        ("tokens_per_s", "tokens"), ("in_bytes", "input"), ("utilisation_wall", "utilisation_wall"),
        ("flops", "flops"), ("_s", "_s"), ("device", "device"),
    ])
    def test_column_header(self, col, head):
        assert column_header(col) == head

    def test_bytes_use_the_shared_helper(self):
        from graphs.units import format_bytes

        for v in (0, 1023, 1536, 942_538_752, 3 * 2 ** 40):
            assert format_value("memory_bytes", v) == format_bytes(v)


class TestNodeLabel:
    def test_root_group_is_named_and_explained(self):
        assert node_label(None, "(root)") == ROOT_LABEL == "(model-level ops)"
        assert node_label(None, "(root)#2") == "(model-level ops #2)"
        assert ROOT_NOTE.startswith(ROOT_LABEL) and "outside any submodule" in ROOT_NOTE

    def test_exit_segments_say_what_they_hold(self):
        g = nx.DiGraph([("input", "exit@1"), ("exit@1", "exit@3"), ("exit@3", "model.stages.3")])
        g.nodes["exit@1"]["exit_depth"], g.nodes["exit@3"]["exit_depth"] = 1, 3
        assert node_label(g, "exit@1") == "exit@1 (stages.0 + exit head + gate)"
        assert node_label(g, "exit@3") == "exit@3 (stages.1-2 + exit head + gate)"
        assert node_label(g, "model.stages.3") == "model.stages.3"

    def test_a_wrapper_group_is_named_by_its_module(self):
        g = nx.DiGraph()
        g.add_node("model", op="group", module="model.head")
        g.add_node("layers.0", op="group", module="layers.0")
        g.add_node("lm_head", op="call_module", module="lm_head.sub")  # not a group: kept
        assert [node_label(g, n) for n in g] == ["model.head", "layers.0", "lm_head"]

    def test_partition_rows_label_only_with_a_graph(self):
        part = types.SimpleNamespace(id=0, device="npu", nodes=("(root)", "embed_tokens"), flops=1,
                                     param_bytes=0, bytes_in=0, bytes_out=0)
        pm = types.SimpleNamespace(parts=(part,))
        assert partition_rows(pm)[0]["nodes"] == "(root), embed_tokens"  # JSON keeps node ids
        assert partition_rows(pm, graph=nx.DiGraph())[0]["nodes"] == "(model-level ops), embed_tokens"
        assert nodes_label([f"layers.{k}" for k in range(5)]) == "layers.0, layers.1, ... layers.4 (5)"
