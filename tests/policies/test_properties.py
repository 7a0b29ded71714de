"""Properties over 1000+ random DAGs: every plan of every policy in the engine's modules
passes ``policies.validate`` (memory-constrained clusters and unsupported ops included),
never beats the critical-path lower bound, and bad input gives a clear error."""
from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policies
from executors.devices import Cluster, DeviceSpec
from executors.errors import DeviceSpecError
from graphs import synthetic
from graphs.errors import CyclicGraphError, UnknownNameError
from policies import validate
from policies.abstract import RelatedMachines, TableCostModel
from policies.cost import CostModel
from policies.errors import CostModelError, InfeasiblePlacement, PolicyError
from policies.schedule import ScheduleContext

POLICIES = ("single", "round-robin", "met", "mct", "heft", "cpop", "peft")
ENERGY = ("mct", "heft")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def dags(draw, max_n: int = 30):
    """A graph of 5..max_n nodes from one of the synthetic families (or a raw random DAG)."""
    family = draw(st.sampled_from(["layered", "fork_join", "chain", "in_tree", "out_tree", "random"]))
    ccr = draw(st.sampled_from([0.0, 0.1, 1.0, 5.0]))
    seed = draw(st.integers(0, 10_000))
    spread = draw(st.sampled_from([0.0, 1.0, 2.0]))
    kw = dict(ccr=ccr, seed=seed, spread=spread)
    if family == "layered":
        g = synthetic.layered(draw(st.integers(5, max_n)), shape=draw(st.sampled_from([0.5, 1.0, 2.0])),
                              out_degree=draw(st.integers(1, 4)), **kw)
    elif family == "fork_join":
        g = synthetic.fork_join(draw(st.integers(1, 6)), draw(st.integers(1, 4)), **kw)
    elif family == "chain":
        g = synthetic.chain(draw(st.integers(5, max_n)), **kw)
    elif family in ("in_tree", "out_tree"):
        g = getattr(synthetic, family)(draw(st.integers(2, 4)), draw(st.integers(1, 3)), **kw)
    else:
        n = draw(st.integers(5, max_n))
        p = draw(st.sampled_from([0.05, 0.2, 0.5]))
        import random

        r = random.Random(seed)
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        g.add_edges_from((i, j) for i in range(n) for j in range(i + 1, n) if r.random() < p)
        for i in g:
            g.nodes[i]["cost"] = r.uniform(0, 20) if spread else 10.0
        for u, v in g.edges:
            g.edges[u, v]["data"] = r.uniform(0, 20) * ccr
    return g


@st.composite
def problems(draw, unsupported: bool = False):
    g = draw(dags())
    m = draw(st.integers(1, 4))
    devs = [f"d{j}" for j in range(m)]
    beta = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    seed = draw(st.integers(0, 1000))
    table = synthetic.heterogeneous_times(g, devs, beta=beta, seed=seed)
    if unsupported and m > 1:
        import random

        r = random.Random(seed)
        for n, row in table.items():
            for d in r.sample(devs, r.randint(0, m - 1)):  # keep at least one device
                del row[d]
    power = {d: (float(10 + 40 * j), float(1 + j)) for j, d in enumerate(devs)}
    bw = draw(st.sampled_from([0.5, 1.0, 4.0]))
    cm = TableCostModel(table, synthetic.edge_times(g, bandwidth=bw), devices=devs, power=power)
    return g, devs, cm


def _check(plan, g, c, cm, ctx):
    validate(plan, g, c, cm)
    assert plan.makespan >= ctx.critical_path_bound() * (1 - 1e-9) - 1e-9


@settings(max_examples=500, **SETTINGS)
@given(problems())
def test_every_policy_gives_a_valid_plan(prob):
    from scheduler.simulate import simulate  # the engine's timing semantics are the simulator's

    g, devs, cm = prob
    c = Cluster.from_names(devs)
    ctx = ScheduleContext(g, c, cm)
    for name in POLICIES:
        p = policies.get(name).place(g, c, cm)
        _check(p, g, c, cm, ctx)
        assert simulate(g, p, cm, c).max_deviation(p) <= 1e-9 * max(1.0, p.makespan)
        assert p.energy is not None
        if len(devs) == 1:  # one device, no transfers, no idle time: the sum of the times
            assert p.makespan == pytest.approx(sum(cm.node_time(g, n, devs[0]) for n in g))
    for name in ENERGY:
        p = policies.get(name, objective="energy").place(g, c, cm)
        _check(p, g, c, cm, ctx)


def _mem_cluster(devs, caps):
    return Cluster.from_specs([DeviceSpec(d, "cpu", {"float32": 1e9}, 1e9, cap) for d, cap in zip(devs, caps)])


@settings(max_examples=350, **SETTINGS)
@given(problems(), st.data())
def test_memory_constrained_clusters(prob, data):
    g, devs, cm = prob
    for n in g:
        g.nodes[n]["bytes_out"] = data.draw(st.integers(1, 100))
    total = sum(cm.node_memory(g, n) for n in g)
    fracs = data.draw(st.lists(st.floats(0.05, 1.0), min_size=len(devs), max_size=len(devs)))
    big = data.draw(st.integers(0, len(devs) - 1))
    feasible = data.draw(st.booleans())
    if feasible:  # one device holds everything: a greedy never runs out
        caps = [total * f for f in fracs]
        caps[big] = total
    else:  # together they hold less than the graph needs
        caps = [max(total * f / (len(devs) + 1), 1e-3) for f in fracs]
    c = _mem_cluster(devs, caps)
    ctx = ScheduleContext(g, c, cm)
    for name in POLICIES:
        if feasible:
            p = policies.get(name).place(g, c, cm)
            _check(p, g, c, cm, ctx)
            assert all(p.memory[d] <= cap * (1 + 1e-12) for d, cap in zip(devs, caps))
        else:
            with pytest.raises(InfeasiblePlacement, match="short by") as e:
                policies.get(name).place(g, c, cm)
            assert e.value.shortfall > 0


@settings(max_examples=200, **SETTINGS)
@given(problems(unsupported=True), st.booleans())
def test_unsupported_ops(prob, strict):
    g, devs, cm = prob
    c = Cluster.from_names(devs)
    ctx = ScheduleContext(g, c, cm)
    for name in POLICIES:
        try:
            p = policies.get(name, strict=strict).place(g, c, cm)
        except InfeasiblePlacement as e:
            # only an explicit assignment (single, round-robin) can hit an unsupported device
            assert strict and name in ("single", "round-robin") and "cannot run it" in str(e)
            continue
        _check(p, g, c, cm, ctx)
        if name not in ("single", "round-robin"):
            assert "fallbacks" not in p.info


# ------------------------------------------------------------------ bad input, every policy
@pytest.fixture
def small():
    g = synthetic.fork_join(2, 1, spread=0)
    return g, Cluster.from_names(["a", "b"]), RelatedMachines({"a": 1.0, "b": 2.0}, bandwidth=1.0)


@pytest.mark.parametrize("name", POLICIES)
class TestBadInput:
    def test_cyclic_graph(self, name, small):
        _, c, cm = small
        g = nx.DiGraph([(0, 1), (1, 2), (2, 0)])
        with pytest.raises(CyclicGraphError, match="graph has a cycle: 0 -> 1 -> 2 -> 0"):
            policies.get(name).place(g, c, cm)

    def test_missing_cost_attribute(self, name, small):
        g, c, cm = small
        del g.nodes[1]["cost"]
        with pytest.raises(CostModelError, match="node 1 has no 'cost' attribute"):
            policies.get(name).place(g, c, cm)

    def test_missing_data_attribute(self, name, small):
        g, c, cm = small
        del g.edges[0, 1]["data"]
        with pytest.raises(CostModelError, match="edge 0->1 has no 'data' attribute"):
            policies.get(name).place(g, c, cm)

    def test_empty_graph(self, name, small):
        _, c, cm = small
        with pytest.raises(PolicyError, match="graph has no nodes"):
            policies.get(name).place(nx.DiGraph(), c, cm)

    def test_unknown_option(self, name):
        with pytest.raises(PolicyError, match=f"unknown option\\(s\\) 'colour' for policy '{name}'; valid options: .*strict"):
            policies.get(name, colour="red")

    def test_unknown_objective(self, name):
        with pytest.raises(UnknownNameError, match="unknown objective 'speed'; valid choices: energy, latency, throughput"):
            policies.get(name, objective="speed")

    def test_zero_speed_surfaces_through_place(self, name, small):
        g, c, _ = small

        class LazySpeed(CostModel):
            """Checks speeds when pricing, as a calibrated model fitted to zero would."""
            devices = ("a", "b")
            speed = {"a": 1.0, "b": 0.0}

            def node_time(self, graph, node, device):
                if self.speed[device] <= 0:
                    raise CostModelError(f"speed of device {device!r} must be > 0, got {self.speed[device]!r}")
                return graph.nodes[node]["cost"] / self.speed[device]

            def edge_time(self, graph, u, v, src, dst):
                return 0.0

        with pytest.raises(CostModelError, match="speed of device 'b' must be > 0, got 0.0"):
            policies.get(name).place(g, c, LazySpeed())

    def test_impossible_memory(self, name):
        g = synthetic.chain(3, spread=0)
        for n in g:
            g.nodes[n]["param_bytes"] = 50
        c = _mem_cluster(["a", "b"], [30, 20])
        cm = RelatedMachines({"a": 1.0, "b": 1.0})
        with pytest.raises(InfeasiblePlacement, match="short by at least 20 bytes") as e:
            policies.get(name).place(g, c, cm)
        assert e.value.shortfall == 20


def test_zero_speed_and_bandwidth_rejected_by_the_cost_model():
    with pytest.raises(CostModelError, match="speed of device 'a' must be a finite number > 0, got 0"):
        RelatedMachines({"a": 0})
    with pytest.raises(CostModelError, match="bandwidth must be a finite number > 0, got 0"):
        RelatedMachines({"a": 1}, bandwidth=0)


def test_cluster_with_no_device():
    with pytest.raises(DeviceSpecError, match="a cluster needs at least one device; got none"):
        Cluster.from_names([])


def test_unknown_policy():
    with pytest.raises(UnknownNameError, match="unknown policy 'hfet'; valid choices: .*heft"):
        policies.get("hfet")

