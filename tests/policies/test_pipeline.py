"""Tests of policies.pipeline: the chain-splitting DP equals brute force, and the policy's
plans are valid single-request schedules with the right period and stages."""
from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executors.devices import Cluster, DeviceSpec
from graphs.errors import UnknownNameError
from graphs.synthetic import chain, edge_times, fork_join, heterogeneous_times
from policies.abstract import TableCostModel
from policies.errors import InfeasiblePlacement, PolicyError
from policies.pipeline import Pipeline, chain_order, split_chain
from policies.validate import validate


def brute_force(times, comm, objective, memory=None, capacity=None):
    """Every split into k contiguous stages and every injective device sequence."""
    n, D = times.shape
    best = np.inf
    for k in range(1, min(n, D) + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = [0, *cuts, n]
            for devs in itertools.permutations(range(D), k):
                stage_t = []
                ok = True
                for s, d in enumerate(devs):
                    a, b = bounds[s], bounds[s + 1]
                    if memory is not None and sum(memory[a:b]) > capacity[d]:
                        ok = False
                        break
                    t = times[a:b, d].sum() + (comm[a - 1, devs[s - 1], d] if s else 0.0)
                    stage_t.append(t)
                if not ok:
                    continue
                val = max(stage_t) if objective == "throughput" else sum(stage_t)
                best = min(best, val)
    return best


def stage_value(stages, times, comm, objective):
    ts = []
    prev = None
    for d, a, b in stages:
        ts.append(times[a:b + 1, d].sum() + (comm[a - 1, prev, d] if a else 0.0))
        prev = d
    return max(ts) if objective == "throughput" else sum(ts)


class TestSplitChain:
    @settings(max_examples=40, deadline=None)
    @given(seed=st.integers(0, 10_000), n=st.integers(1, 6), D=st.integers(1, 3),
           objective=st.sampled_from(["throughput", "latency"]), with_memory=st.booleans())
    def test_equals_brute_force(self, seed, n, D, objective, with_memory):
        rng = np.random.default_rng(seed)
        times = rng.integers(1, 10, size=(n, D)).astype(float)
        comm = rng.integers(0, 6, size=(max(n - 1, 0), D, D)).astype(float)
        mem = cap = None
        if with_memory:
            mem = rng.integers(1, 5, size=n).astype(float)
            cap = rng.integers(3, 12, size=D).astype(float)
        want = brute_force(times, comm, objective, mem, cap)
        if not np.isfinite(want):
            with pytest.raises(InfeasiblePlacement):
                split_chain(times, comm, objective=objective, memory=mem, capacity=cap)
            return
        stages, val = split_chain(times, comm, objective=objective, memory=mem, capacity=cap)
        assert val == pytest.approx(want)
        # the stages are contiguous, cover the chain, use distinct devices, and have that value
        assert stages[0][1] == 0 and stages[-1][2] == n - 1
        assert all(stages[i][2] + 1 == stages[i + 1][1] for i in range(len(stages) - 1))
        assert len({d for d, _, _ in stages}) == len(stages)
        assert stage_value(stages, times, comm, objective) == pytest.approx(val)
        if mem is not None:
            assert all(mem[a:b + 1].sum() <= cap[d] for d, a, b in stages)

    def test_hand_computed_balance(self):
        # layers 0,1 fast on device 0, layers 2,3 fast on device 1; transfer 0.5
        times = np.array([[1.0, 4.0], [1.0, 4.0], [4.0, 1.0], [4.0, 1.0]])
        comm = np.full((3, 2, 2), 0.5)
        assert split_chain(times, comm) == ([(0, 0, 1), (1, 2, 3)], 2.5)
        assert split_chain(times, comm, objective="latency") == ([(0, 0, 1), (1, 2, 3)], 4.5)
        # one stage only: the whole chain on one device (10 either way)
        assert split_chain(times, comm, max_stages=1)[1] == 10.0

    def test_callable_comm_equals_array(self):
        rng = np.random.default_rng(3)
        times = rng.uniform(1, 5, size=(5, 3))
        comm = rng.uniform(0, 2, size=(4, 3, 3))
        assert split_chain(times, lambda k, a, b: comm[k, a, b]) == split_chain(times, comm)

    def test_unsupported_layers_avoid_devices(self):
        times = np.array([[1.0, np.inf], [np.inf, 1.0]])
        stages, val = split_chain(times, np.zeros((1, 2, 2)), objective="latency")
        assert stages == [(0, 0, 0), (1, 1, 1)] and val == 2.0

    def test_memory_shortfall(self):
        # 3 layers of 5 bytes, two devices of 8: one stage must hold two layers: short 2
        times = np.ones((3, 2))
        with pytest.raises(InfeasiblePlacement, match="overflows by 2 bytes") as e:
            split_chain(times, np.zeros((2, 2, 2)), memory=[5, 5, 5], capacity=[8, 8])
        assert e.value.shortfall == pytest.approx(2.0)

    @pytest.mark.parametrize("kw, err, msg", [
        ({"objective": "energy"}, UnknownNameError, "unknown pipeline objective 'energy'; valid choices: latency, throughput"),
        ({"comm": np.zeros((5, 2, 2))}, PolicyError, r"comm must be an array \[n-1, D, D\]"),
        ({"times": np.ones((2, 13)), "comm": np.zeros((1, 13, 13))}, PolicyError, "at most 12 devices"),
        ({"times": -np.ones((2, 2))}, PolicyError, "times must be >= 0"),
        ({"max_stages": 0}, PolicyError, "max_stages must be >= 1"),
    ])
    def test_bad_input(self, kw, err, msg):
        args = {"times": np.ones((2, 2)), "comm": np.zeros((1, 2, 2))}
        args.update(kw)
        times, comm = args.pop("times"), args.pop("comm")
        with pytest.raises(err, match=msg):
            split_chain(times, comm, **args)


class TestPipelinePolicy:
    def _chain(self, n=6, devs=("x", "y", "z"), seed=0):
        g = chain(n, ccr=0.5, seed=seed)
        cm = TableCostModel(heterogeneous_times(g, list(devs), beta=1.5, seed=seed), edge_times(g))
        return g, Cluster.from_names(devs), cm

    @pytest.mark.parametrize("objective", ["throughput", "latency"])
    def test_chain_plan_matches_dp(self, objective):
        g, c, cm = self._chain()
        plan = Pipeline(objective=objective).place(g, c, cm)
        validate(plan, g, c, cm)
        stages = plan.info["stages"]
        # contiguous stages in chain order, distinct devices
        order = chain_order(g)
        covered = []
        for d, first, last in stages:
            seg = order[order.index(first): order.index(last) + 1]
            assert all(plan.assignment[v] == d for v in seg)
            covered += seg
        assert covered == order
        assert len({d for d, _, _ in stages}) == len(stages)
        assert plan.period == pytest.approx(max(plan.info["stage_times"]))
        if objective == "latency":
            # on a chain one request's makespan is exactly the sum of the stage times
            assert plan.makespan == pytest.approx(plan.info["dp_value"])
        else:
            assert plan.period == pytest.approx(plan.info["dp_value"])
        assert plan.throughput == pytest.approx(1 / plan.period)

    def test_throughput_period_never_above_latency_split(self):
        g, c, cm = self._chain(seed=4)
        thr = Pipeline(objective="throughput").place(g, c, cm)
        lat = Pipeline(objective="latency").place(g, c, cm)
        assert thr.period <= lat.period + 1e-9
        assert lat.makespan <= thr.makespan + 1e-9

    def test_dag_is_contracted_along_topological_order(self):
        g = fork_join(3, 2, ccr=1.0, seed=1)
        devs = ["x", "y"]
        cm = TableCostModel(heterogeneous_times(g, devs, beta=1.0, seed=1), edge_times(g))
        c = Cluster.from_names(devs)
        plan = Pipeline().place(g, c, cm)
        validate(plan, g, c, cm)
        order = chain_order(g)
        pos = [order.index(v) for v in order]
        devs_in_order = [plan.assignment[v] for v in order]
        # each device's nodes form one contiguous run of the order
        for d in set(devs_in_order):
            idx = [p for p, x in zip(pos, devs_in_order) if x == d]
            assert idx == list(range(idx[0], idx[-1] + 1))

    def test_memory_capacity_splits_the_chain(self):
        g = nx.DiGraph([("a", "b"), ("b", "c")])
        for v in g:
            g.nodes[v]["param_bytes"] = 5
        specs = [DeviceSpec(n, "cpu", {"float32": 1e9}, 1e9, 10.0) for n in ("x", "y")]
        c = Cluster.from_specs(specs)
        cm = TableCostModel({"a": {"x": 1.0, "y": 4.0}, "b": {"x": 1.0, "y": 3.0}, "c": {"x": 1.0, "y": 3.0}},
                            {e: 1.0 for e in g.edges})
        plan = Pipeline(objective="latency").place(g, c, cm)
        validate(plan, g, c, cm)
        # all on x (3) would need 15 bytes > 10: best is a,b on x, c on y: 1 + 1 + 1 + 3 = 6
        # (a on y, b,c on x: 4 + 1 + 2 = 7)
        assert plan.makespan == 6.0
        assert plan.info["stages"] == [("x", "a", "b"), ("y", "c", "c")]
        with pytest.raises(InfeasiblePlacement, match="overflows by 5 bytes"):
            Pipeline(max_stages=1).place(g, c, cm)

    def test_latency_bound(self):
        g, c, cm = self._chain()
        best = Pipeline(objective="latency").place(g, c, cm).makespan
        with pytest.raises(InfeasiblePlacement, match="exceeds latency_bound") as e:
            Pipeline(objective="latency", latency_bound=best / 2).place(g, c, cm)
        assert e.value.shortfall == pytest.approx(best / 2)

    @pytest.mark.parametrize("opts, msg", [
        ({"objective": "energy"}, "does not serve objective 'energy'; it serves: throughput, latency"),
        ({"max_stages": 0}, "max_stages must be None or an int >= 1, got 0"),
    ])
    def test_bad_options(self, opts, msg):
        with pytest.raises(PolicyError, match=msg):
            Pipeline(**opts)


def test_unsupported_layers_that_break_contiguity_are_infeasible():
    # layers alternate between the only devices that run them: x, y, x (distinct devices only)
    times = np.array([[1.0, np.inf], [np.inf, 1.0], [1.0, np.inf]])
    with pytest.raises(InfeasiblePlacement, match="contiguous stages on distinct devices runs every "
                                                  "layer.*use a policy without contiguous stages"):
        split_chain(times, np.zeros((2, 2, 2)))
