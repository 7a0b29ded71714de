"""The discrete-event simulator: hand-built plans, errors, streams, and agreement with an
independent list scheduler on random graphs."""
from __future__ import annotations

import json
import math
import os
import random

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executors.devices import Cluster
from graphs.errors import CyclicGraphError
from policies.cost import plan_energy
from policies.plan import Plan
from scheduler.errors import DeadlockError, PlanMismatchError, SchedulerError, SimulationError
from scheduler.simulate import (bottleneck_bound, periodic_arrivals, poisson_arrivals, simulate,
                                simulate_stream)
from tests.scheduler._plans import TableCost, TinyCost, chain_graph, manual_plan, reference_schedule

HEFT_JSON = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "heft_paper_example.json")


# ------------------------------------------------------------------------ fixtures
def heft_example():
    """The HEFT paper's DAG, cost table, and its published HEFT schedule (Fig. 3a)."""
    if not os.path.exists(HEFT_JSON):
        pytest.skip("shared/data/heft_paper_example.json not present")
    with open(HEFT_JSON) as f:
        data = json.load(f)
    procs = data["processors"]
    g = nx.DiGraph()
    nt = {}
    for t, row in data["node_time"].items():
        g.add_node(int(t))
        nt[int(t)] = dict(zip(procs, row))
    et = {}
    for e, c in data["edge_time"].items():
        u, v = (int(x) for x in e.split("->"))
        g.add_edge(u, v)
        et[(u, v)] = c
    order = {"P1": (2, 8), "P2": (4, 6, 9, 10), "P3": (1, 3, 5, 7)}
    assignment = {n: d for d, ns in order.items() for n in ns}
    return g, TableCost(nt, et), manual_plan(assignment, order)


def gap_case():
    """a(cpu) -> b(gpu) -> c(cpu); d(cpu) independent but ordered after c.

    cpu order (a, c, d), gpu speed 2. a [0,2]; a->b moves 4 -> b ready 6, runs [6,7.5];
    b->c moves 1 -> c [8.5,9.5]; d must follow c: [9.5,11.5]. cpu idles over [2, 8.5].
    """
    g = nx.DiGraph()
    for n, c in {"a": 2, "b": 3, "c": 1, "d": 2}.items():
        g.add_node(n, cost=c)
    g.add_edge("a", "b", data=4)
    g.add_edge("b", "c", data=1)
    plan = manual_plan({"a": "cpu", "b": "gpu", "c": "cpu", "d": "cpu"}, {"cpu": ("a", "c", "d"), "gpu": ("b",)})
    return g, plan, TinyCost({"cpu": 1.0, "gpu": 2.0}, power={"cpu": (10.0, 1.0), "gpu": (20.0, 2.0)})


# ------------------------------------------------------------------ hand-built plans
class TestSimulateHandBuilt:
    def test_heft_paper_schedule_reproduces_published_times(self):
        g, cm, plan = heft_example()
        r = simulate(g, plan, cm)
        expect = {1: (0, 9), 3: (9, 28), 4: (18, 26), 5: (28, 38), 2: (27, 40), 6: (26, 42),
                  7: (38, 49), 9: (56, 68), 8: (57, 62), 10: (73, 80)}
        assert {n: (r.start[n], r.finish[n]) for n in g} == expect
        assert r.makespan == 80
        assert dict(r.busy) == {"P1": 18, "P2": 43, "P3": 49}
        assert r.utilisation["P3"] == pytest.approx(49 / 80)
        assert r.energy is None  # the table model knows no power
        assert dict(r.memory) == {"P1": 0, "P2": 0, "P3": 0}  # abstract graph: no bytes

    def test_transfer_delays_and_idle_gap_from_device_order(self):
        g, plan, cm = gap_case()
        r = simulate(g, plan, cm)
        assert dict(r.start) == {"a": 0, "b": 6, "c": 8.5, "d": 9.5}
        assert dict(r.finish) == {"a": 2, "b": 7.5, "c": 9.5, "d": 11.5}
        assert r.makespan == 11.5
        assert dict(r.busy) == {"cpu": 5.0, "gpu": 1.5}
        assert r.utilisation["cpu"] == pytest.approx(5 / 11.5)
        assert [(t.u, t.v, t.src, t.dst, t.start, t.end) for t in r.transfers] == [
            ("a", "b", "cpu", "gpu", 2.0, 6.0), ("b", "c", "gpu", "cpu", 7.5, 8.5)]

    def test_energy_active_plus_idle_over_makespan(self):
        g, plan, cm = gap_case()
        r = simulate(g, plan, cm)
        # cpu: 10 W * 5 s busy + 1 W * 6.5 s idle; gpu: 20 W * 1.5 s + 2 W * 10 s
        assert r.energy == pytest.approx(56.5 + 50.0)
        same = Plan(plan.assignment, plan.order, r.start, r.finish, r.makespan)
        assert r.energy == pytest.approx(plan_energy(cm, same))

    def test_link_contention_serialises_transfers_per_link(self):
        g = nx.DiGraph()
        for n in "abc":
            g.add_node(n, cost=1.0)
        g.add_edge("a", "b", data=2.0)
        g.add_edge("a", "c", data=2.0)
        cm = TinyCost({"cpu": 1.0, "gpu": 1.0, "npu": 1.0})
        same_link = manual_plan({"a": "cpu", "b": "gpu", "c": "gpu"}, {"cpu": ("a",), "gpu": ("b", "c")})
        free = simulate(g, same_link, cm)
        assert (free.start["b"], free.start["c"], free.makespan) == (3.0, 4.0, 5.0)
        busy = simulate(g, same_link, cm, link_contention=True)
        # a->b occupies cpu->gpu over [1, 3], a->c waits for it: [3, 5]
        assert [(t.start, t.end) for t in busy.transfers] == [(1.0, 3.0), (3.0, 5.0)]
        assert (busy.start["b"], busy.start["c"], busy.makespan) == (3.0, 5.0, 6.0)
        two_links = manual_plan({"a": "cpu", "b": "gpu", "c": "npu"}, {"cpu": ("a",), "gpu": ("b",), "npu": ("c",)})
        assert simulate(g, two_links, cm, link_contention=True).makespan == 4.0

    def test_cluster_devices_without_nodes_reported_idle(self):
        g, plan, cm = gap_case()
        r = simulate(g, plan, cm, cluster=Cluster.from_names(["cpu", "gpu", "npu"]))
        assert r.busy["npu"] == 0.0 and r.utilisation["npu"] == 0.0
        assert r.energy == pytest.approx(106.5)  # unused devices draw nothing, as in plan_energy

    def test_max_deviation_reports_disagreement_with_plan(self):
        g, plan, cm = gap_case()
        r = simulate(g, plan, cm)
        assert r.max_deviation(plan) == 11.5  # the manual plan predicts all zeros
        assert not r.agrees_with(plan)
        exact = Plan(plan.assignment, plan.order, r.start, r.finish, r.makespan)
        assert r.max_deviation(exact) == 0.0 and r.agrees_with(exact)


class TestMemory:
    def graph(self, edge_bytes=True):
        g = nx.DiGraph()
        g.add_node("a", cost=1, param_bytes=100, bytes_out=10)
        g.add_node("b", cost=1, param_bytes=50, bytes_out=20)
        g.add_node("c", cost=1, param_bytes=0, bytes_out=5)
        g.add_edge("a", "b", data=0, **({"bytes": 10} if edge_bytes else {}))
        g.add_edge("a", "c", data=1, **({"bytes": 10} if edge_bytes else {}))
        plan = manual_plan({"a": "cpu", "b": "cpu", "c": "gpu"}, {"cpu": ("a", "b"), "gpu": ("c",)})
        return g, plan, TinyCost({"cpu": 1.0, "gpu": 1.0})

    @pytest.mark.parametrize("edge_bytes", [True, False])
    def test_peak_hand_computed(self, edge_bytes):
        # a [0,1], b [1,2] on cpu; a->c moves [1,2]; c [2,3] on gpu.
        # cpu: params 150; a's 10 B live [0,2], b's 20 B (a result) live [1,3] -> peak 30.
        # gpu: the 10 B copy lives [1,3], c's 5 B [2,3] -> peak 15.
        g, plan, cm = self.graph(edge_bytes)
        r = simulate(g, plan, cm)
        assert r.makespan == 3
        assert dict(r.memory) == {"cpu": 180.0, "gpu": 15.0}

    def test_transfer_keeps_source_copy_alive(self):
        # with a slow link (a->c takes 4: [1,5]) a's output stays on cpu until 5,
        # b's result lives [1,5] too: peak still 30, and the gpu copy 10 + 5
        g, plan, cm = self.graph()
        g.edges["a", "c"]["data"] = 4
        g.add_node("d", cost=1, param_bytes=0, bytes_out=7)  # runs on cpu [2,3] after b
        plan = manual_plan({"a": "cpu", "b": "cpu", "c": "gpu", "d": "cpu"},
                           {"cpu": ("a", "b", "d"), "gpu": ("c",)})
        r = simulate(g, plan, cm)
        assert r.makespan == 6  # c [5, 6]
        # cpu over [2,3]: a 10 (transfer still running) + b 20 + d 7 = 37
        assert r.memory["cpu"] == 150 + 37
        assert r.memory["gpu"] == 15

    def test_stream_counts_parameters_once(self):
        g, plan, cm = self.graph()
        s = simulate_stream(g, plan, cm, [0.0, 0.0])
        assert s.completion == (3.0, 5.0)
        assert s.memory["cpu"] == 180.0  # activations of two requests never exceed 30 B here


class TestErrors:
    def test_deadlock_names_the_cycle(self):
        g = nx.DiGraph([("a", "b"), ("c", "d")])
        for n in g:
            g.nodes[n]["cost"] = 1
        # d waits for c (data), c waits for b (gpu order), b for a (data), a for d (cpu order)
        plan = manual_plan({"a": "cpu", "d": "cpu", "b": "gpu", "c": "gpu"}, {"cpu": ("d", "a"), "gpu": ("b", "c")})
        with pytest.raises(DeadlockError, match=r"deadlock: .*'a' \(cpu\) -\[data\]-> 'b' \(gpu\)") as ei:
            simulate(g, plan, TinyCost({"cpu": 1, "gpu": 1}))
        assert set(ei.value.cycle) == {"a", "b", "c", "d"}
        assert isinstance(ei.value, SchedulerError)

    def test_successor_before_predecessor_on_one_device(self):
        g = chain_graph([1, 1])
        plan = manual_plan({0: "cpu", 1: "cpu"}, {"cpu": (1, 0)})
        with pytest.raises(DeadlockError, match=r"order on cpu"):
            simulate_stream(g, plan, TinyCost({"cpu": 1}), [0.0])

    def test_cyclic_graph(self):
        g = nx.DiGraph([(0, 1), (1, 0)])
        nx.set_node_attributes(g, 1.0, "cost")
        with pytest.raises(CyclicGraphError, match="cycle"):
            simulate(g, manual_plan({0: "x", 1: "x"}, {"x": (0, 1)}), TinyCost({"x": 1}))

    @pytest.mark.parametrize("assignment, order, match", [
        ({0: "cpu"}, {"cpu": (0,)}, r"node\(s\) not in the plan's assignment: 1"),
        ({0: "cpu", 1: "cpu", 9: "cpu"}, {"cpu": (0, 1, 9)}, r"not in the graph: 9"),
        ({0: "cpu", 1: "gpu"}, {"cpu": (0,)}, r"device 'gpu', which has no entry in plan.order; devices in plan.order: 'cpu'"),
        ({0: "cpu", 1: "cpu"}, {"cpu": (0,)}, r"node 1 is assigned to 'cpu' but missing from plan.order\['cpu'\]"),
        ({0: "cpu", 1: "cpu"}, {"cpu": (0, 1, 1)}, r"lists node 1 twice"),
        ({0: "cpu", 1: "gpu"}, {"cpu": (0, 1), "gpu": ()}, r"lists node 1, but the assignment puts it on 'gpu'"),
    ])
    def test_plan_mismatch(self, assignment, order, match):
        g = chain_graph([1, 1])
        with pytest.raises(PlanMismatchError, match=match):
            simulate(g, manual_plan(assignment, order), TinyCost({"cpu": 1, "gpu": 1}))

    def test_device_not_in_cluster(self):
        g = chain_graph([1])
        with pytest.raises(PlanMismatchError, match=r"device 'tpu', which is not in the cluster; devices: cpu, gpu"):
            simulate(g, manual_plan({0: "tpu"}, {"tpu": (0,)}), TinyCost({"tpu": 1}), Cluster.from_names(["cpu", "gpu"]))

    def test_unusable_times(self):
        g = chain_graph([1, 1], data=[1])
        plan = manual_plan({0: "cpu", 1: "gpu"}, {"cpu": (0,), "gpu": (1,)})
        g.nodes[1]["cost"] = math.inf
        with pytest.raises(SimulationError, match=r"node_time of node 1 on device 'gpu' is inf"):
            simulate(g, plan, TinyCost({"cpu": 1, "gpu": 1}))
        g.nodes[1]["cost"] = 1
        with pytest.raises(SimulationError, match=r"edge_time of edge 0->1 from 'cpu' to 'gpu' is -1.0"):
            simulate(g, plan, TinyCost({"cpu": 1, "gpu": 1}, bandwidth=-1))

    def test_bad_inputs(self):
        g, plan, cm = gap_case()
        with pytest.raises(SimulationError, match="plan must be a policies.plan.Plan, got dict"):
            simulate(g, {}, cm)
        with pytest.raises(SimulationError, match="cost_model must be a policies.cost.CostModel, got str"):
            simulate(g, plan, "roofline")
        with pytest.raises(SimulationError, match="graph has no nodes"):
            simulate(nx.DiGraph(), plan, cm)
        with pytest.raises(SimulationError, match=r"arrival 1 \(0.5\) is before arrival 0 \(1.0\)"):
            simulate_stream(g, plan, cm, [1.0, 0.5])
        with pytest.raises(SimulationError, match="arrivals is empty"):
            simulate_stream(g, plan, cm, [])
        with pytest.raises(SimulationError, match="arrival 0 is nan"):
            simulate_stream(g, plan, cm, [math.nan])
        with pytest.raises(SimulationError, match="max_in_flight must be None or an int >= 1, got 0"):
            simulate_stream(g, plan, cm, [0.0], max_in_flight=0)


# -------------------------------------------------------------------------- streams
def pipeline():
    """a (cpu, 2) -> b (gpu, 3), transfer 1: the gpu is the bottleneck, 3 per request."""
    g = chain_graph([2.0, 3.0], data=[1.0])
    plan = manual_plan({0: "cpu", 1: "gpu"}, {"cpu": (0,), "gpu": (1,)})
    return g, plan, TinyCost({"cpu": 1.0, "gpu": 1.0}, power={"cpu": (4.0, 1.0), "gpu": (6.0, 2.0)})


class TestStream:
    def test_one_request_equals_single(self):
        g, cm, plan = heft_example()
        single = simulate(g, plan, cm)
        s = simulate_stream(g, plan, cm, [0.0])
        assert {n: s.start[(0, n)] for n in g} == dict(single.start)
        assert {n: s.finish[(0, n)] for n in g} == dict(single.finish)
        assert s.latency == (single.makespan,) and s.span == single.makespan
        assert s.throughput == 1 / 80 and s.p50 == s.p99 == 80
        assert dict(s.busy) == dict(single.busy)

    def test_one_late_request_equals_single_shifted(self):
        g, plan, cm = TestMemory().graph()
        for n in g:
            g.nodes[n]["cost"] = {"a": 2.0, "b": 1.0, "c": 1.5}[n]
        cm = TinyCost({"cpu": 1.0, "gpu": 2.0}, power={"cpu": (3.0, 1.0), "gpu": (5.0, 0.5)})
        single = simulate(g, plan, cm)
        s = simulate_stream(g, plan, cm, [5.0])
        assert s.latency == (single.makespan,)
        assert {n: s.start[(0, n)] - 5.0 for n in g} == dict(single.start)
        assert s.energy == pytest.approx(single.energy) and s.energy_per_request == s.energy
        assert dict(s.memory) == dict(single.memory)
        assert dict(s.utilisation) == pytest.approx(dict(single.utilisation))

    def test_pipelining_all_at_once(self):
        # cpu runs a_k over [2k, 2k+2]; b_k is ready at 2k+3 but the gpu frees at 3k+3,
        # so b_k runs [3k+3, 3k+6]: completions 6, 9, 12, 15
        g, plan, cm = pipeline()
        s = simulate_stream(g, plan, cm, [0.0] * 4)
        assert s.completion == (6.0, 9.0, 12.0, 15.0)
        assert [s.start[(k, 0)] for k in range(4)] == [0, 2, 4, 6]
        assert [s.start[(k, 1)] for k in range(4)] == [3, 6, 9, 12]
        assert s.throughput == pytest.approx(4 / 15)
        assert s.p50 == pytest.approx(10.5)  # between 9 and 12
        assert s.p95 == pytest.approx(12 + 0.85 * 3)  # rank 0.95 * 3 = 2.85
        assert s.percentile(100) == 15
        assert dict(s.utilisation) == pytest.approx({"cpu": 8 / 15, "gpu": 12 / 15})
        # energy over the span: cpu 4*8 + 1*7, gpu 6*12 + 2*3
        assert s.energy == pytest.approx(39 + 78) and s.energy_per_request == pytest.approx(117 / 4)
        assert bottleneck_bound(g, plan, cm) == 3.0
        assert s.throughput < 1 / bottleneck_bound(g, plan, cm)

    def test_throughput_approaches_bottleneck_bound(self):
        g, plan, cm = pipeline()
        s = simulate_stream(g, plan, cm, [0.0] * 200)
        assert s.throughput == pytest.approx(200 / (3 * 200 + 3))
        assert s.throughput == pytest.approx(1 / 3, rel=0.01)

    def test_periodic_arrivals_at_bottleneck_rate_no_queueing(self):
        g, plan, cm = pipeline()
        s = simulate_stream(g, plan, cm, periodic_arrivals(3.0, 5))
        assert s.latency == (6.0,) * 5
        assert s.throughput == pytest.approx(5 / (12 + 6))

    def test_overload_latency_grows(self):
        g, plan, cm = pipeline()
        s = simulate_stream(g, plan, cm, periodic_arrivals(1.0, 5))
        assert s.latency == tuple(2.0 * k + 6 for k in range(5))  # b_k finishes 3k+6, arrives k

    def test_closed_loop_one_in_flight_is_sequential(self):
        g, plan, cm = pipeline()
        s = simulate_stream(g, plan, cm, [0.0] * 3, max_in_flight=1)
        assert s.admitted == (0.0, 6.0, 12.0)
        assert s.completion == (6.0, 12.0, 18.0)
        assert s.latency == (6.0, 12.0, 18.0)
        s2 = simulate_stream(g, plan, cm, [0.0] * 3, max_in_flight=2)
        assert s2.admitted == (0.0, 0.0, 6.0) and s2.completion == (6.0, 9.0, 12.0)

    def test_dispatch_prefers_older_request(self):
        # a -> b on cpu, a -> c on gpu. At t=1 the cpu may run b0 or a1: it runs b0.
        g = nx.DiGraph([("a", "b"), ("a", "c")])
        for n in g:
            g.nodes[n]["cost"] = 1.0
        g.edges["a", "c"]["data"] = 0.5
        plan = manual_plan({"a": "cpu", "b": "cpu", "c": "gpu"}, {"cpu": ("a", "b"), "gpu": ("c",)})
        s = simulate_stream(g, plan, TinyCost({"cpu": 1, "gpu": 1}), [0.0, 0.0])
        assert (s.start[(0, "b")], s.start[(1, "a")], s.start[(1, "b")]) == (1, 2, 3)
        assert (s.start[(0, "c")], s.start[(1, "c")]) == (1.5, 3.5)
        assert s.completion == (2.5, 4.5)

    def test_transfers_carry_request_ids(self):
        g, plan, cm = pipeline()
        s = simulate_stream(g, plan, cm, [0.0, 0.0])
        assert [(t.request, t.start, t.end) for t in s.transfers] == [(0, 2.0, 3.0), (1, 4.0, 5.0)]


class TestArrivals:
    def test_periodic(self):
        assert periodic_arrivals(2.0, 3, start=1.0) == (1.0, 3.0, 5.0)

    def test_poisson_mean_gap_and_seed(self):
        a = poisson_arrivals(5.0, 4000, seed=3)
        gaps = np.diff((0.0,) + a)
        assert gaps.min() > 0
        assert gaps.mean() == pytest.approx(0.2, rel=0.06)  # 6 standard errors of 0.2/sqrt(4000)
        assert a == poisson_arrivals(5.0, 4000, seed=3) and a != poisson_arrivals(5.0, 4000, seed=4)

    def test_errors(self):
        with pytest.raises(SimulationError, match="rate must be a finite number > 0.*got 0"):
            poisson_arrivals(0, 3)
        with pytest.raises(SimulationError, match="number of requests must be an int >= 1, got 2.5"):
            periodic_arrivals(1.0, 2.5)
        with pytest.raises(SimulationError, match="period must be a finite number >= 0.*got -1"):
            periodic_arrivals(-1, 2)


# ---------------------------------------------------------------- random graph checks
@st.composite
def random_case(draw):
    n = draw(st.integers(1, 12))
    ndev = draw(st.integers(1, 3))
    devices = ["cpu", "gpu", "npu"][:ndev]
    g = nx.DiGraph()
    for i in range(n):
        g.add_node(i, cost=draw(st.floats(0.0, 10.0, allow_nan=False)))
    p = draw(st.floats(0.0, 0.6))
    rng = random.Random(draw(st.integers(0, 2**31)))
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < p:
                g.add_edge(i, j, data=rng.uniform(0.0, 5.0))
    assignment = {i: devices[draw(st.integers(0, ndev - 1))] for i in range(n)}
    speeds = {d: draw(st.floats(0.25, 4.0)) for d in devices}
    # a random topological order as the scheduling priority
    indeg = {i: g.in_degree(i) for i in g}
    avail = [i for i in g if indeg[i] == 0]
    prio = []
    while avail:
        i = avail.pop(rng.randrange(len(avail)))
        prio.append(i)
        for j in g.successors(i):
            indeg[j] -= 1
            if indeg[j] == 0:
                avail.append(j)
    return g, assignment, TinyCost(speeds, bandwidth=draw(st.floats(0.5, 2.0))), prio


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case(), st.booleans())
def test_property_simulated_times_equal_plan(case, insertion):
    g, assignment, cm, prio = case
    plan = reference_schedule(g, assignment, cm, prio, insertion=insertion)
    r = simulate(g, plan, cm)
    assert r.makespan == pytest.approx(plan.makespan, rel=1e-9, abs=1e-12)
    assert r.agrees_with(plan), r.max_deviation(plan)
    s = simulate_stream(g, plan, cm, [0.0])
    assert s.latency[0] == r.makespan
    assert all(s.start[(0, n)] == r.start[n] for n in g)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case(), st.integers(2, 4), st.floats(0.0, 3.0), st.booleans())
def test_property_stream_schedule_is_valid(case, nreq, gap, contention):
    g, assignment, cm, prio = case
    plan = reference_schedule(g, assignment, cm, prio)
    arrivals = periodic_arrivals(gap, nreq)
    s = simulate_stream(g, plan, cm, arrivals, link_contention=contention)
    eps = 1e-9
    arrive = {(t.request, t.u, t.v): t.end for t in s.transfers}
    for r in range(nreq):
        for n in g:
            assert s.start[(r, n)] >= arrivals[r] - eps
            assert s.finish[(r, n)] == pytest.approx(s.start[(r, n)] + cm.node_time(g, n, assignment[n]))
            for u in g.predecessors(n):
                ready = s.finish[(r, u)] if assignment[u] == assignment[n] else arrive[(r, u, n)]
                assert s.start[(r, n)] >= ready - eps
        for d, ns in plan.order.items():  # the plan's order holds within each request
            for a, b in zip(ns, ns[1:]):
                assert s.start[(r, b)] >= s.finish[(r, a)] - eps
        assert s.completion[r] == max(s.finish[(r, n)] for n in g)
    for d in plan.order:  # a device runs one node at a time
        runs = sorted((s.start[k], s.finish[k]) for k in s.start if assignment[k[1]] == d)
        assert all(b[0] >= a[1] - eps for a, b in zip(runs, runs[1:]))
    if contention:  # a link carries one transfer at a time
        by_link = {}
        for t in s.transfers:
            by_link.setdefault((t.src, t.dst), []).append((t.start, t.end))
        for spans in by_link.values():
            spans.sort()
            assert all(b[0] >= a[1] - eps for a, b in zip(spans, spans[1:]))
    bound = bottleneck_bound(g, plan, cm)
    if bound > 0:
        assert s.throughput <= (1 + 1e-9) / bound


def test_large_layered_graph_agrees_with_reference():
    rng = random.Random(7)
    g = nx.DiGraph()
    layers = [[(k, i) for i in range(rng.randint(5, 40))] for k in range(100)]
    for layer in layers:
        for n in layer:
            g.add_node(n, cost=rng.uniform(1, 10))
    for a, b in zip(layers, layers[1:]):
        for v in b:
            for u in rng.sample(a, min(len(a), 3)):
                g.add_edge(u, v, data=rng.uniform(0, 4))
    devs = ["cpu", "gpu", "npu"]
    assignment = {n: rng.choice(devs) for n in g}
    cm = TinyCost({"cpu": 1.0, "gpu": 3.0, "npu": 2.0})
    plan = reference_schedule(g, assignment, cm, insertion=True)
    r = simulate(g, plan, cm)
    assert g.number_of_nodes() > 1500
    assert r.agrees_with(plan)


def test_agrees_with_registered_heft_policy():
    import policies

    if "heft" not in policies.available():
        pytest.skip("policies.heft is not written yet")
    g, cm, _ = heft_example()
    plan = policies.get("heft").place(g, Cluster.from_names(["P1", "P2", "P3"]), cm)
    r = simulate(g, plan, cm)
    assert r.agrees_with(plan)
    assert r.makespan == 80


LIST_POLICIES = ("heft", "cpop", "peft", "mct", "met", "round-robin", "single")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case(), st.sampled_from(LIST_POLICIES))
def test_property_registered_list_policies_agree(case, name):
    import policies

    abstract = pytest.importorskip("policies.abstract")
    if name not in policies.available():
        pytest.skip(f"policy {name!r} is not registered yet")
    g, _, tiny, _ = case
    cm = abstract.RelatedMachines(tiny.speed, bandwidth=tiny.bandwidth)
    plan = policies.get(name).place(g, Cluster.from_names(list(tiny.speed)), cm)
    r = simulate(g, plan, cm)
    assert r.agrees_with(plan), (name, r.max_deviation(plan))
