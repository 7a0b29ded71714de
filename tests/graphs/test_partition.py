"""graphs.partition: same-device regions, the partition DAG, and numerical equivalence."""
from __future__ import annotations

import pickle
import random

import networkx as nx
import pytest
import torch
import torch.fx as fx
from torch import nn

from graphs import capture
from graphs.errors import GraphError
from graphs.models import example_inputs, pangu_embedded
from graphs.opgraph import OpGraph
from graphs.partition import OutputSpec, ValueRef, partition, regions, split_graph_module

DEVICELESS = ("input", "output", "param")


# ------------------------------------------------------------------ helpers
def fx_opgraph(gm: fx.GraphModule) -> OpGraph:
    """A minimal op-level OpGraph (the attribute contract's essentials) for a traced module."""
    g = OpGraph(granularity="op", name="test", module=gm)
    kinds = {"placeholder": "input", "output": "output", "get_attr": "param"}
    for n in gm.graph.nodes:
        g.add_node(n.name, kind=kinds.get(n.op, "other"), op=n.op, flops=1, members=(n.name,))
    for n in gm.graph.nodes:
        for a in n.all_input_nodes:
            g.add_edge(a.name, n.name, bytes=0)
    return g


def compute_nodes(g: OpGraph) -> list:
    return [n for n, a in g.nodes(data=True) if a["kind"] not in DEVICELESS]


def check_invariants(pm, g: OpGraph, assignment) -> None:
    """Properties every partitioned model must have."""
    # the DAG is acyclic, ids are a topological order, and edges match declared values
    assert nx.is_directed_acyclic_graph(pm.dag)
    assert [p.id for p in pm.parts] == list(range(len(pm.parts)))
    for u, v in pm.dag.edges:
        assert u < v
    # every partition is single-device: all its OpGraph nodes are assigned to its device
    for p in pm.parts:
        assert p.nodes, f"partition {p.id} covers no op-graph node"
        assert {assignment[n] for n in p.nodes} == {p.device}
    covered = [n for p in pm.parts for n in p.nodes]
    assert sorted(map(str, covered)) == sorted(map(str, compute_nodes(g)))
    # every fx compute node is computed by exactly one partition
    fx_nodes = [n for p in pm.parts for n in p.fx_nodes]
    assert len(fx_nodes) == len(set(fx_nodes))
    # nothing crosses a boundary undeclared: each input is a model input or an output of an
    # earlier partition; each output is used later or by the model output; the submodules'
    # signatures match the declarations
    produced = set(pm.input_names)
    needed = set(pm.output_spec.names)
    for p in pm.parts:
        needed |= set(p.inputs)
    for p in pm.parts:
        for i in p.inputs:
            assert i in produced, f"partition {p.id} reads {i!r} before anyone produces it"
        placeholders = [n for n in p.module.graph.nodes if n.op == "placeholder"]
        assert len(placeholders) == len(p.inputs)
        for o in p.outputs:
            assert o in needed, f"partition {p.id} exports unused value {o!r}"
        produced |= set(p.outputs)
        for q in pm.dag.predecessors(p.id):
            vals = pm.dag.edges[q, p.id]["values"]
            assert set(vals) == set(p.inputs) & set(pm.parts[q].outputs)
    assert set(pm.output_spec.names) <= produced


def run_checked(pm, *inputs):
    """Run part by part, feeding each only its declared inputs; check output arity."""
    values = pm.bind(*inputs)
    for p in pm.parts:
        outs = p.module(*(values[n] for n in p.inputs))
        assert isinstance(outs, tuple) and len(outs) == len(p.outputs)
        values.update(zip(p.outputs, outs))
    return pm.output_spec.build(values)


# ------------------------------------------------------------------- models
class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 4)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.relu(self.a(x)))))


class Branchy(nn.Module):
    """Parallel branches, a parameter and a buffer read by get_attr, structured output."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.register_buffer("shift", torch.arange(6.0))

    def forward(self, x, y=None):
        q, k, v = self.q(x), self.k(x), self.v(x)
        s = torch.softmax(q * k, dim=-1) * v * self.scale + self.shift
        out = s.sum(-1)
        return {"out": out, "pair": (s, x), "n": 3}


def traced(model: nn.Module):
    torch.manual_seed(0)
    gm = fx.symbolic_trace(model)
    return gm, fx_opgraph(gm)


# ------------------------------------------------------------ own models
class TestOwnModels:
    def test_all_on_one_device_is_one_partition(self):
        gm, g = traced(Chain())
        asg = {n: "cpu" for n in compute_nodes(g)}
        pm = partition(g, asg)
        assert len(pm.parts) == 1 and pm.devices == ("cpu",)
        assert pm.parts[0].inputs == ("x",) and pm.parts[0].outputs == ("c",)
        x = torch.randn(3, 8)
        torch.testing.assert_close(pm(x), gm(x))
        check_invariants(pm, g, asg)

    def test_alternating_devices_one_partition_per_op(self):
        gm, g = traced(Chain())
        nodes = compute_nodes(g)
        asg = {n: ("d0", "d1")[i % 2] for i, n in enumerate(nodes)}
        pm = partition(g, asg)
        assert len(pm.parts) == len(nodes) == 5
        assert pm.devices == ("d0", "d1", "d0", "d1", "d0")
        assert list(pm.dag.edges) == [(0, 1), (1, 2), (2, 3), (3, 4)]
        x = torch.randn(3, 8)
        torch.testing.assert_close(run_checked(pm, x), gm(x))
        check_invariants(pm, g, asg)

    def test_a_b_a_pattern_splits_the_first_device(self):
        # A(d1) -> B(d2) -> C(d1): merging A and C would make a cycle
        gm = fx.symbolic_trace(lambda x: ((x + 1) * 2) - 3)
        assert regions(gm, {"add": "d1", "mul": "d2", "sub": "d1"}) == {"add": 0, "mul": 1, "sub": 2}
        g = fx_opgraph(gm)
        pm = partition(g, {"add": "d1", "mul": "d2", "sub": "d1"})
        assert pm.devices == ("d1", "d2", "d1")
        x = torch.randn(4)
        torch.testing.assert_close(pm(x), ((x + 1) * 2) - 3)

    def test_parallel_branches_on_one_device_merge(self):
        gm, g = traced(Branchy())
        nodes = compute_nodes(g)
        asg = {n: "npu" if n in ("q", "k", "v") else "cpu" for n in nodes}
        pm = partition(g, asg)
        assert pm.devices == ("npu", "cpu")
        assert set(pm.parts[0].outputs) == {"q", "k", "v"}
        assert set(pm.dag.edges[0, 1]["values"]) == {"q", "k", "v"}
        check_invariants(pm, g, asg)

    @pytest.mark.parametrize("seed", range(6))
    def test_random_assignments_equal_the_model(self, seed):
        gm, g = traced(Branchy())
        rnd = random.Random(seed)
        asg = {n: rnd.choice(["cpu", "gpu", "npu"]) for n in compute_nodes(g)}
        pm = partition(g, asg)
        check_invariants(pm, g, asg)
        x = torch.randn(2, 6)
        out, ref = run_checked(pm, x), gm(x)
        assert set(out) == {"out", "pair", "n"} and out["n"] == 3
        torch.testing.assert_close(out, ref)

    def test_parameters_live_in_their_partition_not_in_inputs(self):
        gm, g = traced(Branchy())
        asg = {n: "a" for n in compute_nodes(g)}
        pm = partition(g, asg)
        (p,) = pm.parts
        assert p.inputs == ("x",)  # scale and shift are copied in, not passed
        assert p.param_bytes == sum(t.numel() * 4 for t in list(gm.parameters()) + list(gm.buffers()))

    def test_partitions_pickle_roundtrip(self):
        gm, g = traced(Chain())
        pm = partition(g, {n: ("a", "b")[i % 2] for i, n in enumerate(compute_nodes(g))})
        x = torch.randn(2, 8)
        values = {"x": x}
        for p in pm.parts:
            mod = pickle.loads(pickle.dumps(p.module))
            values.update(zip(p.outputs, mod(*(values[i] for i in p.inputs))))
        torch.testing.assert_close(values["c"], gm(x))

    def test_input_defaults_and_keywords(self):
        gm, g = traced(Branchy())
        pm = partition(g, {n: "a" for n in compute_nodes(g)})
        assert pm.input_names == ("x", "y")
        x = torch.randn(1, 6)
        torch.testing.assert_close(pm(x=x), gm(x))
        with pytest.raises(GraphError, match="missing input 'x'"):
            pm()
        with pytest.raises(GraphError, match="unknown input 'z'"):
            pm(x, z=1)

    def test_plan_object_is_accepted(self):
        from types import SimpleNamespace

        gm, g = traced(Chain())
        plan = SimpleNamespace(assignment={n: "cpu" for n in compute_nodes(g)})
        assert len(partition(g, plan).parts) == 1


class TestErrors:
    def test_node_without_device(self):
        gm, g = traced(Chain())
        with pytest.raises(GraphError, match=r"assignment has no device for node 'b'"):
            partition(g, {"a": "cpu", "relu": "cpu"})

    def test_unknown_node_in_assignment(self):
        gm, g = traced(Chain())
        asg = {n: "cpu" for n in compute_nodes(g)} | {"nope": "cpu"}
        with pytest.raises(GraphError, match="not in the graph, e.g. 'nope'"):
            partition(g, asg)

    def test_bad_device_name(self):
        gm, g = traced(Chain())
        asg = {n: "cpu" for n in compute_nodes(g)} | {"a": 3}
        with pytest.raises(GraphError, match="maps node 'a' to 3"):
            partition(g, asg)

    def test_graph_without_module(self):
        g = OpGraph(granularity="op")
        g.add_node("a", kind="matmul", members=("a",))
        with pytest.raises(GraphError, match="has no GraphModule"):
            partition(g, {"a": "cpu"})

    def test_not_an_opgraph(self):
        with pytest.raises(GraphError, match="needs an OpGraph"):
            partition(nx.DiGraph(), {})


class TestSplitAndSpec:
    def test_split_graph_module_is_policy_as_callable(self):
        gm = fx.symbolic_trace(lambda x: (x + 1) * 2)
        parts = split_graph_module(gm, lambda n: 0 if n.name == "add" else 1)
        assert [(r, i, o) for r, _, i, o in parts] == [(0, ("x",), ("add",)), (1, ("add",), ("mul",))]
        x = torch.randn(3)
        (a,) = parts[0][1](x)
        (m,) = parts[1][1](a)
        torch.testing.assert_close(m, (x + 1) * 2)

    def test_output_spec_rebuilds_structure(self):
        spec = OutputSpec([ValueRef("a"), (ValueRef("b"), None)])
        assert spec.build({"a": 1, "b": 2}) == [1, (2, None)]
        assert spec.names == ("a", "b")


# --------------------------------------------------------- reference models
@pytest.fixture(scope="module")
def pangu_small():
    m = pangu_embedded("small")
    x = example_inputs(m, batch=1, seq_len=8)
    with torch.no_grad():
        ref = m(*x)
    return m, x, ref, capture(m, x, granularity="layer")


@pytest.fixture(scope="module")
def pangu_tiny_layer(model_tiny, inputs_tiny):
    with torch.no_grad():
        ref = model_tiny(*inputs_tiny)
    return model_tiny, inputs_tiny, ref, capture(model_tiny, inputs_tiny, granularity="layer")


def _assignments(g: OpGraph, seed: int = 0):
    nodes = compute_nodes(g)
    rnd = random.Random(seed)
    devs = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "cpu"]
    yield "one", {n: "cpu" for n in nodes}
    yield "alternating", {n: devs[i % 2] for i, n in enumerate(nodes)}
    yield "random", {n: rnd.choice(devs) for n in nodes}


class TestReferenceModels:
    def test_tiny_op_granularity(self, model_tiny, inputs_tiny, graph_tiny):
        with torch.no_grad():
            ref = model_tiny(*inputs_tiny)
        for name, asg in _assignments(graph_tiny):
            pm = partition(graph_tiny, asg)
            check_invariants(pm, graph_tiny, asg)
            with torch.no_grad():
                torch.testing.assert_close(run_checked(pm, *inputs_tiny), ref, msg=name)
            if name == "alternating":
                assert len(pm.parts) > 20

    @pytest.mark.parametrize("which", ["tiny", "small"])
    def test_layer_granularity(self, which, pangu_tiny_layer, pangu_small):
        m, x, ref, g = pangu_tiny_layer if which == "tiny" else pangu_small
        for name, asg in _assignments(g, seed=1):
            pm = partition(g, asg)
            check_invariants(pm, g, asg)
            with torch.no_grad():
                torch.testing.assert_close(pm(*x), ref, msg=name)
            edge_bytes = [pm.dag.edges[e]["bytes"] for e in pm.dag.edges]
            assert all(b > 0 for b in edge_bytes)  # activations cross: their sizes are known

    @pytest.mark.parametrize("which", ["tiny", "small"])
    def test_every_policy_plan(self, which, pangu_tiny_layer, pangu_small):
        policies = pytest.importorskip("policies")
        from executors import profiles
        from policies.roofline import RooflineCostModel

        m, x, ref, g = pangu_tiny_layer if which == "tiny" else pangu_small
        cluster = profiles.cluster({"sim:atlas-200i-a2": "atlas-200i-a2",
                                    "sim:jetson-orin-nx": "jetson-orin-nx",
                                    "sim:edge-cpu-a76": "edge-cpu-a76"})
        cm = RooflineCostModel(cluster)
        checked: dict[tuple, str] = {}  # several policies often agree: run each split once
        for name in policies.available():
            cls = type(policies.get(name))
            budget = {k: v for k, v in {"time_budget": 0.3, "time_limit": 1.0}.items()
                      if k in cls.option_defaults}
            plan = policies.get(name, **budget).place(g, cluster, cm)
            pm = partition(g, plan)
            check_invariants(pm, g, plan.assignment)
            key = tuple(p.fx_nodes for p in pm.parts)
            if key in checked:
                continue
            checked[key] = name
            with torch.no_grad():
                torch.testing.assert_close(pm(*x), ref, msg=name)
        assert len(checked) >= 2  # at least one policy split the model (round-robin does)


def test_predicted_sums_node_times_per_partition():
    class Table:  # a duck-typed cost model: node time = flops on device d0, twice that on d1
        def node_time(self, graph, node, device):
            return graph.nodes[node]["flops"] * (1.0 if device == "d0" else 2.0)

    gm, g = traced(Chain())
    pm = partition(g, {"a": "d0", "relu": "d0", "b": "d1", "tanh": "d1", "c": "d0"})
    assert pm.devices == ("d0", "d1", "d0")
    assert pm.predicted(g, Table()) == (2.0, 4.0, 1.0)


def test_export_captured_model_partitions_pickle_and_keep_the_output_structure():
    """torch.export graphs: no guard submodule (not picklable), and the flat output tuple is
    rebuilt into the model's own output structure."""
    import pickle

    from graphs import capture, partition
    from graphs.vision import ExitCNN

    torch.manual_seed(0)
    m = ExitCNN().eval()
    x = torch.randn(2, 1, 28, 28)
    g = capture(m, (x,), granularity="op", method="export")
    nodes = [n for n, a in g.nodes(data=True) if a["kind"] not in ("input", "output", "param")]
    pm = partition(g, {n: ("a" if i % 3 else "b") for i, n in enumerate(nodes)})
    assert len(pm.parts) > 2
    for p in pm.parts:
        q = pickle.loads(pickle.dumps(p))
        assert q.outputs == p.outputs
    out = pm(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, m(x))
