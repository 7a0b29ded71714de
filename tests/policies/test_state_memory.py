"""Resident state (a decoder layer's KV cache, ``state_bytes``) counts against device memory."""
from __future__ import annotations

import networkx as nx
import pytest

import policies
from executors.devices import Cluster, DeviceSpec
from graphs.decoding import step_graph
from graphs.models import get_config
from policies.abstract import TableCostModel
from policies.errors import InfeasiblePlacement
from policies.roofline import RooflineCostModel
from scheduler.simulate import simulate

CFG = get_config("tiny")
KV = 64 * 1024  # positions of KV cache per layer: 16 MiB per tiny layer (float32)


def _graph(kv_positions: int = KV):
    return step_graph(CFG, new_tokens=1, context=100, kv_positions=kv_positions)


def _cluster(capacity: float) -> Cluster:
    fast = DeviceSpec("fast", "gpu", {"float32": 1e12}, 1e11, capacity)
    slow = DeviceSpec("slow", "cpu", {"float32": 1e10}, 1e10, capacity)
    return Cluster.from_specs([fast, slow])


def _memory(g, cm) -> float:
    return sum(cm.node_memory(g, n) for n in g)


class TestNodeMemory:
    def test_counts_parameters_output_and_state(self):
        g = _graph()
        cm = TableCostModel({n: {"x": 1.0} for n in g}, {})
        a = g.nodes["layers.1"]
        assert a["state_bytes"] == 2 * CFG.num_kv_heads * CFG.head_dim * KV * 4 == 16 * 2**20
        assert cm.node_memory(g, "layers.1") == a["param_bytes"] + a["bytes_out"] + a["state_bytes"]
        assert cm.node_memory(g, "lm_head") == g.nodes["lm_head"]["param_bytes"] + g.nodes["lm_head"]["bytes_out"]

    def test_absent_or_none_state_is_zero(self):
        g = nx.DiGraph()
        g.add_node("a", param_bytes=3, bytes_out=4)
        g.add_node("b", param_bytes=3, bytes_out=4, state_bytes=None)
        cm = TableCostModel({"a": {"x": 1.0}, "b": {"x": 1.0}}, {})
        assert cm.node_memory(g, "a") == cm.node_memory(g, "b") == 7.0


class TestPlacement:
    def test_heft_spreads_layers_when_the_cache_does_not_fit_one_device(self):
        g = _graph()
        state = g.nodes["layers.0"]["state_bytes"]
        # room for everything but one layer's cache on either device
        cap = _memory(g, RooflineCostModel(_cluster(1.0))) - state / 2
        cluster = _cluster(cap)
        cm = RooflineCostModel(cluster)
        # without a cache the whole step runs on the fast device
        assert set(policies.get("heft").place(_graph(0), cluster, cm).assignment.values()) == {"fast"}
        plan = policies.get("heft").place(g, cluster, cm)
        layers = {plan.assignment[f"layers.{i}"] for i in range(CFG.num_layers)}
        assert layers == {"fast", "slow"}
        for d in ("fast", "slow"):
            on = [n for n, x in plan.assignment.items() if x == d]
            assert plan.memory[d] == pytest.approx(sum(cm.node_memory(g, n) for n in on))
            assert plan.memory[d] <= cap
        assert policies.validate(plan, g, cluster, cm, raise_=False) == []

    def test_heft_fails_when_the_cache_fits_nowhere(self):
        g = _graph()
        cluster = _cluster(g.nodes["layers.0"]["state_bytes"] / 2)
        with pytest.raises(InfeasiblePlacement, match=r"node 'layers.0' \(.* bytes\) fits on no device that "
                                                       r"can run it: memory is short by at least"):
            policies.get("heft").place(g, cluster, RooflineCostModel(cluster))


def test_simulated_peak_memory_counts_state_as_resident():
    g, g0 = _graph(), _graph(0)
    cluster = _cluster(1e12)
    cm = RooflineCostModel(cluster)
    plan = policies.get("heft").place(g0, cluster, cm)
    with_kv, without = simulate(g, plan, cm, cluster).memory, simulate(g0, plan, cm, cluster).memory
    for d in ("fast", "slow"):
        state = sum(g.nodes[n]["state_bytes"] for n, x in plan.assignment.items() if x == d)
        assert with_kv[d] == pytest.approx(without[d] + state)
    assert with_kv["fast"] - without["fast"] == CFG.num_layers * g.nodes["layers.0"]["state_bytes"]
