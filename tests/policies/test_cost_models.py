"""Cost models: roofline, related machines, tables, calibrated -- hand-computed times."""
from __future__ import annotations

import json
import os
import random

import networkx as nx
import numpy as np
import pytest

from executors.devices import Cluster, DeviceSpec, LinkSpec
from graphs.opgraph import OpGraph
from policies.abstract import RelatedMachines, TableCostModel, graph_from_table
from policies.calibrated import CalibratedCostModel, Measurement, as_measurement, error_summary
from policies.cost import CostModel
from policies.errors import CostModelError
from policies.plan import Plan
from policies.roofline import RooflineCostModel

HEFT_JSON = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                         "heft_paper_example.json")


def dev(name="d", flops=None, bw=1e9, launch=1e-6, kinds=None, power=(0.0, 0.0)):
    return DeviceSpec(name, "cpu", flops or {"float32": 1e9}, mem_bandwidth=bw, mem_capacity=1e9,
                      launch_overhead=launch, supported_kinds=kinds, active_power=power[0],
                      idle_power=power[1])


@pytest.fixture
def g():
    g = OpGraph()
    g.add_node("x", kind="input", flops=0, bytes_in=0, bytes_out=1000, dtype="float32")
    g.add_node("w", kind="param", flops=0, bytes_in=0, bytes_out=4000, dtype="float32")
    g.add_node("mm", kind="matmul", flops=2_000_000, bytes_in=1000, bytes_out=1000, dtype="float32")
    g.add_node("add", kind="elementwise", flops=1000, bytes_in=500_000, bytes_out=500_000,
               dtype="float32")
    g.add_node("half", kind="matmul", flops=2_000_000, bytes_in=1000, bytes_out=1000, dtype="float16")
    g.add_node("rs", kind="view", target="aten.reshape.default", flops=0, bytes_in=8000,
               bytes_out=8000, dtype="float32")
    g.add_node("cat", kind="view", target="aten.cat.default", flops=0, bytes_in=100_000,
               bytes_out=100_000, dtype="float32")
    g.add_node("grp", kind="group", kinds=("matmul", "norm"), members=("a", "b", "c"),
               flops=3_000_000, bytes_in=10_000, bytes_out=0, dtype="float32")
    g.add_node("attn", kind="attention", flops=1_000, bytes_in=10, bytes_out=10, dtype="float32")
    g.add_node("out", kind="output", flops=0, bytes_in=1000, bytes_out=0, dtype="float32")
    g.add_edge("x", "mm", bytes=1000)
    g.add_edge("mm", "add", bytes=1_000_000)
    g.add_edge("add", "out")  # no bytes: pricing it must fail loudly
    return g


class TestRoofline:
    def test_hand_computed_node_times(self, g):
        m = RooflineCostModel(Cluster.from_specs([dev(flops={"float32": 1e9, "float16": 4e9})]))
        # compute-bound: 1 us + max(2e6 / 1e9, 2e3 / 1e9) = 1 us + 2 ms
        assert m.node_time(g, "mm", "d") == pytest.approx(0.002001)
        # memory-bound: 1 us + max(1e3 / 1e9, 1e6 / 1e9) = 1 us + 1 ms
        assert m.node_time(g, "add", "d") == pytest.approx(0.001001)
        # peak for the node's dtype: 2e6 / 4e9 = 0.5 ms
        assert m.node_time(g, "half", "d") == pytest.approx(0.000501)
        # a metadata view costs one launch; a copying view also its bytes
        assert m.node_time(g, "rs", "d") == pytest.approx(1e-6)
        assert m.node_time(g, "cat", "d") == pytest.approx(1e-6 + 2e5 / 1e9)
        # a group launches each member: 3 us + 3e6 / 1e9
        assert m.node_time(g, "grp", "d") == pytest.approx(0.003003)
        for n in ("x", "w", "out"):
            assert m.node_time(g, n, "d") == 0.0

    def test_time_matrix_matches_node_time(self, g):
        c = Cluster.from_specs([dev("a", flops={"float32": 1e9, "float16": 4e9}),
                                dev("b", flops={"float32": 5e9}, bw=2e10, launch=5e-6,
                                    kinds={"matmul", "elementwise", "view"})])
        m = RooflineCostModel(c)
        T = m.time_matrix(g)
        for i, n in enumerate(g.nodes):
            for j, d in enumerate(c.names):
                want = m.node_time(g, n, d) if m.supports(g, n, d) else np.inf
                assert T[i, j] == pytest.approx(want)
        nodes = list(g.nodes)
        # b lacks attention and norm (a member kind of the group); inputs are always fine
        assert np.isinf(T[nodes.index("attn"), 1]) and np.isinf(T[nodes.index("grp"), 1])
        assert T[nodes.index("x"), 1] == 0.0 and not m.supports(g, "attn", "b")

    def test_time_matrix_vectorised_on_a_large_graph(self):
        rng = random.Random(0)
        g = OpGraph()
        kinds = ["matmul", "elementwise", "view", "norm", "input", "attention"]
        for i in range(1500):
            g.add_node(i, kind=rng.choice(kinds), flops=rng.randrange(0, 10**7),
                       bytes_in=rng.randrange(0, 10**6), bytes_out=rng.randrange(0, 10**6),
                       dtype=rng.choice(["float32", "bfloat16"]), target="aten.x")
        c = Cluster.from_specs([dev("a"), dev("b", flops={"bfloat16": 2e10, "float32": 1e10}, bw=5e9)])
        m = RooflineCostModel(c)
        T = m.time_matrix(g)
        ref = CostModel.time_matrix(m, g)  # the generic loop over node_time
        np.testing.assert_allclose(T, ref)

    def test_transfers(self, g):
        c = Cluster.from_specs([dev("a"), dev("b")], links={("a", "b"): LinkSpec(1e8, 1e-5)})
        m = RooflineCostModel(c)
        assert m.transfer_time(1e6, "a", "b") == pytest.approx(1e-5 + 1e6 / 1e8)
        assert m.transfer_time(1e6, "b", "a") == pytest.approx(0.01001)  # symmetric link
        assert m.edge_time(g, "mm", "add", "a", "b") == pytest.approx(1e-5 + 1e6 / 1e8)
        assert m.edge_time(g, "mm", "add", "a", "a") == 0.0
        with pytest.raises(CostModelError, match=r"edge 'add'->'out' has no 'bytes' attribute"):
            m.edge_time(g, "add", "out", "a", "b")

    def test_no_link_and_no_default(self):
        c = Cluster.from_specs([dev("a"), dev("b")], default_link=None)
        with pytest.raises(CostModelError, match=r"no link between devices 'a' and 'b'"):
            RooflineCostModel(c).transfer_time(1.0, "a", "b")

    def test_cluster_without_specs(self):
        with pytest.raises(CostModelError, match=r"needs device specs; devices without one: P1, P2"):
            RooflineCostModel(Cluster.from_names(["P1", "P2"]))

    def test_power(self):
        c = Cluster.from_specs([dev("a", power=(10.0, 2.0)), dev("b")])
        m = RooflineCostModel(c)
        assert m.power("a") == (10.0, 2.0) and m.power("b") is None
        p = Plan({"mm": "a"}, {"a": ("mm",)}, {"mm": 0.0}, {"mm": 2.0}, makespan=3.0)
        # 10 W x 2 s busy + 2 W x 1 s idle
        assert m.energy(OpGraph(), p) == pytest.approx(22.0)


class TestRelatedMachines:
    def test_hand_computed(self):
        g = nx.DiGraph()
        g.add_node(1, cost=12.0)
        g.add_node(2, cost=4.0)
        g.add_edge(1, 2, data=10.0)
        m = RelatedMachines({"f": 4.0, "s": 2.0}, bandwidth={("f", "s"): 5.0}, latency=0.5)
        assert m.node_time(g, 1, "f") == 3.0 and m.node_time(g, 1, "s") == 6.0
        assert m.edge_time(g, 1, 2, "s", "f") == 0.5 + 10.0 / 5.0
        assert m.edge_time(g, 1, 2, "f", "f") == 0.0
        assert m.time_matrix(g).tolist() == [[3.0, 6.0], [1.0, 2.0]]

    @pytest.mark.parametrize("speed", [0, -1.0])
    def test_bad_speed_names_device(self, speed):
        with pytest.raises(CostModelError, match=rf"speed of device 'gpu' must be a finite number > 0, got {speed}"):
            RelatedMachines({"cpu": 1.0, "gpu": speed})

    def test_bad_bandwidth_names_pair(self):
        with pytest.raises(CostModelError, match=r"bandwidth between 'a' and 'b' must be a finite number > 0, got 0"):
            RelatedMachines({"a": 1.0, "b": 1.0}, bandwidth={("a", "b"): 0})
        with pytest.raises(CostModelError, match=r"bandwidth must be a finite number > 0, got -2"):
            RelatedMachines({"a": 1.0}, bandwidth=-2)

    def test_missing_pair_and_attributes(self):
        g = nx.DiGraph([("u", "v")])
        m = RelatedMachines({"a": 1.0, "b": 1.0, "c": 1.0}, bandwidth={("a", "b"): 1.0})
        with pytest.raises(CostModelError, match=r"node 'u' has no 'cost' attribute"):
            m.node_time(g, "u", "a")
        with pytest.raises(CostModelError, match=r"edge 'u'->'v' has no 'data' attribute"):
            m.edge_time(g, "u", "v", "a", "b")
        with pytest.raises(CostModelError, match=r"no bandwidth given between devices 'a' and 'c'"):
            m.transfer_time(1.0, "a", "c")
        with pytest.raises(CostModelError, match=r"unknown device 'z'; devices: a, b, c"):
            m.transfer_time(1.0, "a", "z")


class TestTable:
    def test_heft_paper_example(self):
        m = TableCostModel.from_json(HEFT_JSON)
        g = graph_from_table(HEFT_JSON)
        assert m.devices == ("P1", "P2", "P3")
        assert g.number_of_nodes() == 10 and g.number_of_edges() == 15
        assert g.graph["published"]["HEFT makespan"] == 80
        assert m.node_time(g, "1", "P3") == 9.0 and m.node_time(g, "10", "P2") == 7.0
        assert m.edge_time(g, "1", "2", "P1", "P2") == 18.0
        assert m.edge_time(g, "1", "2", "P2", "P2") == 0.0
        # HEFT's upward rank of the exit task is its mean time: (21 + 7 + 16) / 3
        assert m.time_matrix(g, ["10"]).mean() == pytest.approx(44 / 3)

    def test_unsupported_and_missing(self):
        g = nx.DiGraph([("a", "b")])
        m = TableCostModel({"a": {"x": 1.0, "y": 2.0}, "b": {"x": 3.0}}, {}, power={"x": (5.0, 1.0)})
        assert m.time_matrix(g).tolist() == [[1.0, 2.0], [3.0, np.inf]]
        assert m.power("x") == (5.0, 1.0) and m.power("y") is None
        with pytest.raises(CostModelError, match=r"node 'b' has no time on device 'y'; it has times on: x"):
            m.node_time(g, "b", "y")
        with pytest.raises(CostModelError, match=r"edge 'a'->'b' has no time in the edge table"):
            m.edge_time(g, "a", "b", "x", "y")
        with pytest.raises(CostModelError, match=r"node 'c' has no row in the time table"):
            m.node_time(g, "c", "x")

    def test_bad_json(self, tmp_path):
        d = json.load(open(HEFT_JSON))
        d["node_time"]["3"] = [1, 2]
        with pytest.raises(CostModelError, match=r"node_time\['3'\] must be a list of 3 times"):
            TableCostModel.from_json(d)
        del d["edge_time"]
        with pytest.raises(CostModelError, match=r"missing field 'edge_time'"):
            graph_from_table(d)
        with pytest.raises(CostModelError, match=r"edge_time key '1-2' is not of the form 'u->v'"):
            TableCostModel.from_json({"processors": ["P"], "node_time": {"1": [1]}, "edge_time": {"1-2": 1}})
        with pytest.raises(CostModelError, match=r"node_time\['a'\]\['x'\] must be a number >= 0, got -1"):
            TableCostModel({"a": {"x": -1}}, {})


def synthetic_graph(n=40, seed=1):
    """A chain of nodes with related-machine costs and kinds."""
    rng = random.Random(seed)
    g = nx.DiGraph()
    for i in range(n):
        g.add_node(i, cost=rng.uniform(1e-4, 1e-2), kind=rng.choice(["matmul", "norm", "view"]))
        if i:
            g.add_edge(i - 1, i, data=1.0)
    return g


class TestCalibrated:
    def base(self):
        return RelatedMachines({"cpu": 1.0, "npu": 2.0})

    def test_recovers_factor_two_on_one_device(self):
        g = synthetic_graph()
        base = self.base()
        meas = [(i, "cpu", 2.0 * base.node_time(g, i, "cpu")) for i in g]
        meas += [(i, "npu", base.node_time(g, i, "npu")) for i in g]
        m = CalibratedCostModel(base).fit(g, meas)
        for k in ("matmul", "norm", "view"):
            assert m.factor("cpu", k) == pytest.approx(2.0, rel=1e-4)
            assert m.factor("npu", k) == pytest.approx(1.0, rel=1e-4)
        assert m.op_overhead["cpu"] == pytest.approx(0.0, abs=1e-8)
        assert m.node_time(g, 3, "cpu") == pytest.approx(2 * base.node_time(g, 3, "cpu"), rel=1e-4)
        r = m.report()
        assert r["n"] == 80 and r["within_15"] == 1.0 and r["p90"] < 1e-3

    def test_recovers_per_kind_factors_and_partition_overhead(self):
        g = synthetic_graph(60)
        base = self.base()
        f = {"matmul": 3.0, "norm": 1.5, "view": 0.5}
        true = lambda nodes: sum(f[g.nodes[n]["kind"]] * base.node_time(g, n, "cpu") for n in nodes) + 2e-3
        parts, i, rng = [], 0, random.Random(2)
        while i < 60:
            k = rng.randint(1, 6)
            parts.append(tuple(range(i, min(i + k, 60))))
            i += k
        m = CalibratedCostModel(base).fit(g, [(p, "cpu", true(p)) for p in parts])
        for k, v in f.items():
            assert m.factor("cpu", k) == pytest.approx(v, rel=1e-3)
        assert m.partition_overhead["cpu"] == pytest.approx(2e-3, rel=1e-3)
        # node_time has no partition term; predict() of a group adds it once
        assert m.predict((0, 1), "cpu", g) == pytest.approx(true((0, 1)), rel=1e-3)
        assert m.predict(0, "cpu", g) == pytest.approx(true((0,)) - 2e-3, rel=1e-3)
        T = m.time_matrix(g, [0, 1, 2])
        assert T[:, 0] == pytest.approx([m.node_time(g, n, "cpu") for n in (0, 1, 2)])

    def test_save_and_load(self, tmp_path):
        g = synthetic_graph()
        base = self.base()
        m = CalibratedCostModel(base).fit(g, [(i, "cpu", 3.0 * base.node_time(g, i, "cpu") + 1e-4) for i in g])
        m.update((1, 2), "cpu", 0.05)
        p = tmp_path / "cal.json"
        m.save(p)
        back = CalibratedCostModel.load(p, base, g)
        assert back.to_dict() == m.to_dict()
        assert back.time_matrix(g).tolist() == m.time_matrix(g).tolist()
        assert back.predict((1, 2), "cpu") == m.predict((1, 2), "cpu", g)

    def test_load_rejects_foreign_devices(self, tmp_path):
        d = CalibratedCostModel(self.base()).to_dict()
        d["factors"] = {"tpu": {"matmul": 2.0}}
        with pytest.raises(CostModelError, match=r"calibration names device\(s\) \['tpu'\] the base model lacks"):
            CalibratedCostModel.from_dict(d, self.base())

    def test_online_update_is_exponentially_weighted(self):
        g = nx.DiGraph()
        g.add_node("a", cost=1.0, kind="matmul")
        m = CalibratedCostModel(RelatedMachines({"cpu": 1.0}), g, alpha=0.25)
        # predicted 1, measured 2: g = 0.75 + 0.25 * 2 = 1.25
        assert m.update("a", "cpu", 2.0) == pytest.approx(-0.5)
        assert m.node_time(g, "a", "cpu") == pytest.approx(1.25)
        # predicted 1.25, measured 2: g = 1.25 * (0.75 + 0.25 * 1.6) = 1.4375
        m.update("a", "cpu", 2.0)
        assert m.online["cpu"] == pytest.approx(1.4375)
        for _ in range(60):
            m.update("a", "cpu", 2.0)
        assert m.node_time(g, "a", "cpu") == pytest.approx(2.0, rel=1e-6)  # converges
        assert len(m.online_log) == 62

    def test_errors(self):
        g = synthetic_graph(3)
        m = CalibratedCostModel(self.base())
        with pytest.raises(CostModelError, match=r"measurement names node 99, which is not in the graph"):
            m.fit(g, [(99, "cpu", 1.0)])
        with pytest.raises(CostModelError, match=r"unknown device 'gpu'; devices: cpu, npu"):
            m.fit(g, [(1, "gpu", 1.0)])
        with pytest.raises(CostModelError, match=r"measured seconds must be a finite number > 0, got 0"):
            m.fit(g, [(1, "cpu", 0)])
        with pytest.raises(CostModelError, match=r"no graph: pass graph="):
            m.update(1, "cpu", 1.0)
        with pytest.raises(CostModelError, match=r"base must be a policies.cost.CostModel"):
            CalibratedCostModel("roofline")

    def test_measurement_forms(self):
        assert as_measurement({"nodes": ["a"], "device": "d", "seconds": 1.0}) == \
            Measurement(("a",), "d", 1.0, partition=True)
        assert as_measurement(("a", "d", 1.0)).partition is False
        s = error_summary([1.0, 1.2, 0.5, 1.1], [1.0, 1.0, 1.0, 1.0])
        assert s["median"] == pytest.approx(0.15) and s["within_15"] == 0.5  # errors 0, .2, .5, .1
        assert s["max"] == pytest.approx(0.5)


def test_calibrated_recovers_a_power_law():
    """measured = 2 * s * (base / s) ** 0.8 per node -> factor 2, exponent 0.8."""
    g = synthetic_graph(50, seed=3)
    base = RelatedMachines({"cpu": 1.0})
    times = {n: base.node_time(g, n, "cpu") for n in g}
    s = float(np.median(list(times.values())))
    meas = [(n, "cpu", 2.0 * s * (t / s) ** 0.8) for n, t in times.items()]
    m = CalibratedCostModel(base, overheads=False).fit(g, meas)
    for k in ("matmul", "norm", "view"):
        assert m.factor("cpu", k) == pytest.approx(2.0, rel=1e-3)
        assert m.exponents["cpu"][k] == pytest.approx(0.8, rel=1e-3)
    assert m.report()["p90"] < 1e-3
    lin = CalibratedCostModel(base, overheads=False, exponents=False).fit(g, meas)
    assert lin.exponents["cpu"]["matmul"] == 1.0 and lin.report()["p90"] > 0.05


def test_roofline_on_captured_coarse_graphs():
    """Coarsening keeps the launch count; the vectorised matrix equals the per-node loop."""
    from executors.profiles import cluster
    from graphs.capture import capture
    from graphs.models import example_inputs, pangu_embedded
    from policies.roofline import launches

    m = pangu_embedded("tiny", device="meta")
    x = example_inputs(m, seq_len=8)
    ops = capture(m, x)
    layers = capture(m, x, granularity="layer")
    n_ops = sum(launches(a) for _, a in ops.nodes(data=True))
    assert sum(launches(a) for _, a in layers.nodes(data=True)) == n_ops
    model = RooflineCostModel(cluster(["edge-cpu-a76", "jetson-orin-nx"]))
    for g in (ops, layers):
        T = model.time_matrix(g)
        np.testing.assert_allclose(T, CostModel.time_matrix(model, g))
        assert np.isfinite(T).all() and (T >= 0).all()
    # every op pays at least the launch overhead: the op-graph total is >= launches * 10 us
    assert model.time_matrix(ops)[:, 0].sum() >= n_ops * 10e-6


class TestVectorisedMatricesAgreeWithScalarCalls:
    """The vectorised time/edge matrices equal the per-element methods (the default loops)."""

    def _graph(self):
        from graphs import synthetic
        return synthetic.layered(60, ccr=2.0, seed=3)

    def test_related_machines_edge_matrix(self):
        from policies.abstract import RelatedMachines
        from policies.cost import CostModel
        g = self._graph()
        m = RelatedMachines({"a": 1.0, "b": 2.0, "c": 0.5},
                            bandwidth={("a", "b"): 2.0, ("a", "c"): 1.0, ("b", "c"): 4.0}, latency=0.3)
        np.testing.assert_allclose(m.edge_time_matrix(g), CostModel.edge_time_matrix(m, g))
        np.testing.assert_allclose(m.time_matrix(g), CostModel.time_matrix(m, g))

    def test_table_matrices(self):
        from graphs import synthetic
        from policies.abstract import TableCostModel
        from policies.cost import CostModel
        g = self._graph()
        table = synthetic.heterogeneous_times(g, ["x", "y", "z"], beta=1.0, seed=1)
        del table[next(iter(table))]["y"]  # one unsupported entry -> inf
        edges = {(u, v): float(a["data"]) for u, v, a in g.edges(data=True)}
        m = TableCostModel(table, edges)
        np.testing.assert_array_equal(m.time_matrix(g), CostModel.time_matrix(m, g))
        assert np.isinf(m.time_matrix(g)).sum() == 1
        np.testing.assert_allclose(m.edge_time_matrix(g), CostModel.edge_time_matrix(m, g))
