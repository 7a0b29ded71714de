"""The shared list-scheduling engine: hand-computed schedules, constraints, errors."""
from __future__ import annotations

import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executors.devices import Cluster, DeviceSpec
from policies import validate
from policies.abstract import TableCostModel
from policies.errors import InfeasiblePlacement, PolicyError
from policies.schedule import IncrementalSchedule, ScheduleContext, list_schedule


def _spec(name: str, cap: float) -> DeviceSpec:
    return DeviceSpec(name, "cpu", {"float32": 1e9}, 1e9, cap)


@pytest.fixture
def gap_case():
    """a -> b with a 5-unit transfer between devices; c independent."""
    g = nx.DiGraph([("a", "b")])
    g.add_node("c")
    cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 1, "y": 1}, "c": {"x": 3, "y": 3}},
                        {("a", "b"): 5})
    return g, Cluster.from_names(["x", "y"]), cm


class TestTiming:
    def test_insertion_fills_the_idle_gap(self, gap_case):
        g, c, cm = gap_case
        p = list_schedule(g, c, cm, ["a", "b", "c"], assignment={"a": "y", "b": "x", "c": "x"})
        # b waits for a's data: 1 + 5 = 6; c (3 long) fits the gap [0, 6) before b
        assert dict(p.start) == {"a": 0.0, "b": 6.0, "c": 0.0}
        assert p.order["x"] == ("c", "b") and p.order["y"] == ("a",)
        assert p.makespan == 7.0
        validate(p, g, c, cm)

    def test_without_insertion_appends(self, gap_case):
        g, c, cm = gap_case
        p = list_schedule(g, c, cm, ["a", "b", "c"], assignment={"a": "y", "b": "x", "c": "x"},
                          insertion=False)
        assert p.start["c"] == 7.0 and p.makespan == 10.0
        assert p.order["x"] == ("b", "c")
        validate(p, g, c, cm)

    def test_gap_too_short_is_skipped(self):
        g = nx.DiGraph([("a", "b")])
        g.add_node("c")
        cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 1, "y": 1}, "c": {"x": 7, "y": 7}},
                            {("a", "b"): 5})
        p = list_schedule(g, Cluster.from_names(["x", "y"]), cm, ["a", "b", "c"],
                          assignment={"a": "y", "b": "x", "c": "x"})
        assert p.start["c"] == 7.0  # 7 does not fit in [0, 6)

    def test_eft_choice_same_device_avoids_transfer(self):
        g = nx.DiGraph([("a", "b")])
        cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"x": 3, "y": 1}}, {("a", "b"): 5})
        p = list_schedule(g, Cluster.from_names(["x", "y"]), cm, ["a", "b"])
        # a on x (first device on ties); b: x finishes 1+3=4, y finishes 1+5+1=7
        assert dict(p.assignment) == {"a": "x", "b": "x"} and p.makespan == 4.0

    def test_zero_duration_nodes_keep_precedence_order(self):
        g = nx.DiGraph([("a", "b"), ("b", "c")])
        cm = TableCostModel({"a": {"x": 0}, "b": {"x": 0}, "c": {"x": 2}}, {("a", "b"): 0, ("b", "c"): 0})
        c = Cluster.from_names(["x"])
        p = list_schedule(g, c, cm, ["a", "b", "c"])
        assert p.order["x"] == ("a", "b", "c") and p.makespan == 2.0
        validate(p, g, c, cm)

    def test_context_makespan_matches_schedule(self, gap_case):
        g, c, cm = gap_case
        ctx = ScheduleContext(g, c, cm)
        a = {"a": "y", "b": "x", "c": "x"}
        assert ctx.makespan(["a", "b", "c"], a) == ctx.schedule(["a", "b", "c"], assignment=a).makespan == 7.0
        idx = [ctx.index[n] for n in ["a", "b", "c"]]
        assert ctx.makespan_indices(idx, [ctx.dindex[a[n]] for n in ctx.nodes]) == 7.0

    def test_critical_path_bound(self, gap_case):
        g, c, cm = gap_case
        assert ScheduleContext(g, c, cm).critical_path_bound() == 3.0  # c alone; a->b = 2

    def test_plan_fields(self, gap_case):
        g, c, cm = gap_case
        p = list_schedule(g, c, cm, ["a", "b", "c"])
        assert set(p.order) == {"x", "y"} and p.energy is None
        assert dict(p.memory) == {"x": 0.0, "y": 0.0}
        for d, seq in p.order.items():
            assert [p.start[n] for n in seq] == sorted(p.start[n] for n in seq)


class TestChoose:
    def test_choose_picks_among_candidates(self, gap_case):
        g, c, cm = gap_case
        seen = {}

        def choose(node, cands):
            seen[node] = dict(cands)
            return "y"

        p = list_schedule(g, c, cm, ["a", "b", "c"], choose=choose)
        assert set(p.assignment.values()) == {"y"}
        assert seen["b"] == {"x": (6.0, 7.0), "y": (1.0, 2.0)}  # (est, eft) with a on y

    def test_choose_returning_unknown_device(self, gap_case):
        g, c, cm = gap_case
        with pytest.raises(PolicyError, match=r"choose\(\) returned 'z' for node 'a'.*\['x', 'y'\]"):
            list_schedule(g, c, cm, ["a", "b", "c"], choose=lambda n, cands: "z")


class TestBadInput:
    def test_priority_not_topological(self, gap_case):
        g, c, cm = gap_case
        with pytest.raises(PolicyError, match="not a topological order: 'b' comes before its predecessor 'a'"):
            list_schedule(g, c, cm, ["b", "a", "c"])

    def test_priority_missing_node(self, gap_case):
        g, c, cm = gap_case
        with pytest.raises(PolicyError, match=r"every node exactly once; missing \['c'\]"):
            list_schedule(g, c, cm, ["a", "b"])

    def test_priority_unknown_node(self, gap_case):
        g, c, cm = gap_case
        with pytest.raises(PolicyError, match="priority names node 'q'"):
            list_schedule(g, c, cm, ["a", "b", "q"])

    def test_assignment_unknown_device(self, gap_case):
        g, c, cm = gap_case
        from graphs.errors import UnknownNameError

        with pytest.raises(UnknownNameError, match="unknown device 'z'; valid choices: x, y"):
            list_schedule(g, c, cm, ["a", "b", "c"], assignment={"a": "z", "b": "x", "c": "x"})

    def test_assignment_incomplete(self, gap_case):
        g, c, cm = gap_case
        with pytest.raises(PolicyError, match="assignment misses 1 node"):
            list_schedule(g, c, cm, ["a", "b", "c"], assignment={"a": "x", "b": "x"})


class TestConstraints:
    def _mem_case(self, cap_x, cap_y, ty=5.0):
        g = nx.DiGraph()
        for n in ("n0", "n1", "n2"):
            g.add_node(n, bytes_out=4)
        cm = TableCostModel({n: {"x": 1, "y": ty} for n in g}, {})
        c = Cluster.from_specs([_spec("x", cap_x), _spec("y", cap_y)])
        return g, c, cm

    def test_memory_capacity_moves_nodes(self):
        g, c, cm = self._mem_case(8, 8)
        p = list_schedule(g, c, cm, ["n0", "n1", "n2"])
        assert dict(p.assignment) == {"n0": "x", "n1": "x", "n2": "y"}
        assert dict(p.memory) == {"x": 8.0, "y": 4.0} and p.makespan == 5.0
        validate(p, g, c, cm)
        free = list_schedule(g, c, cm, ["n0", "n1", "n2"], options={"respect_memory": False})
        assert free.makespan == 3.0 and dict(free.memory) == {"x": 12.0, "y": 0.0}

    def test_no_device_fits_reports_shortfall(self):
        g, c, cm = self._mem_case(3, 2)
        with pytest.raises(InfeasiblePlacement, match="memory is short by at least 1 bytes") as e:
            list_schedule(g, c, cm, ["n0", "n1", "n2"])
        assert e.value.shortfall == 1.0

    def test_assignment_overflow_falls_back_or_strict_raises(self):
        g, c, cm = self._mem_case(8, 8)
        a = {n: "x" for n in g}
        p = list_schedule(g, c, cm, ["n0", "n1", "n2"], assignment=a)
        assert p.assignment["n2"] == "y" and p.info["fallbacks"] == {"n2": "x"}
        with pytest.raises(InfeasiblePlacement, match="'n2' does not fit in the memory of device 'x': short by 4 bytes") as e:
            list_schedule(g, c, cm, ["n0", "n1", "n2"], assignment=a, options={"strict": True})
        assert e.value.shortfall == 4.0

    def test_unsupported_device_fallback_and_strict(self):
        g = nx.DiGraph([("a", "b")])
        cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"y": 2}}, {("a", "b"): 1})
        c = Cluster.from_names(["x", "y"])
        p = list_schedule(g, c, cm, ["a", "b"], assignment={"a": "x", "b": "x"})
        assert p.assignment["b"] == "y" and p.info["fallbacks"] == {"b": "x"} and p.makespan == 4.0
        validate(p, g, c, cm)
        with pytest.raises(InfeasiblePlacement, match="'b' is assigned to device 'x', which cannot run it.*that can: y"):
            list_schedule(g, c, cm, ["a", "b"], assignment={"a": "x", "b": "x"}, options={"strict": True})
        # EFT mode never picks an unsupported device
        assert list_schedule(g, c, cm, ["a", "b"]).assignment["b"] == "y"

    def test_node_no_device_can_run(self):
        g = nx.DiGraph()
        g.add_node("a")
        cm = TableCostModel({"a": {"x": float("inf"), "y": float("inf")}}, {})
        with pytest.raises(InfeasiblePlacement, match=r"no device of \['x', 'y'\] can run node 'a'"):
            list_schedule(g, Cluster.from_names(["x", "y"]), cm, ["a"])

    def test_latency_bound(self, gap_case):
        g, c, cm = gap_case
        a = {"a": "y", "b": "x", "c": "x"}
        with pytest.raises(InfeasiblePlacement, match="makespan 7 s exceeds latency_bound 5 s by 2 s") as e:
            list_schedule(g, c, cm, ["a", "b", "c"], assignment=a, options={"latency_bound": 5.0})
        assert e.value.shortfall == 2.0
        assert list_schedule(g, c, cm, ["a", "b", "c"], assignment=a, options={"latency_bound": 7.0}).makespan == 7.0

    @pytest.mark.parametrize("bound", [-1.0, "5", float("nan")])
    def test_bad_latency_bound(self, gap_case, bound):
        g, c, cm = gap_case
        with pytest.raises(PolicyError, match="latency_bound must be a number of seconds >= 0"):
            list_schedule(g, c, cm, ["a", "b", "c"], options={"latency_bound": bound})

    def test_latency_bound_through_a_policy(self, gap_case):
        import policies

        g, c, cm = gap_case
        with pytest.raises(InfeasiblePlacement, match="exceeds latency_bound 1 s by 2 s"):
            policies.get("heft", latency_bound=1.0).place(g, c, cm)


class TestEnergy:
    def _case(self):
        g = nx.DiGraph()
        g.add_node("a")
        cm = TableCostModel({"a": {"fast": 1.0, "slow": 1.05}}, {},
                            power={"fast": (100.0, 0.0), "slow": (10.0, 0.0)})
        return g, Cluster.from_names(["fast", "slow"]), cm

    def test_energy_picks_efficient_device_within_slack(self):
        g, c, cm = self._case()
        p = list_schedule(g, c, cm, ["a"], options={"objective": "energy", "energy_slack": 0.1})
        assert p.assignment["a"] == "slow" and p.energy == pytest.approx(10.5)
        tight = list_schedule(g, c, cm, ["a"], options={"objective": "energy", "energy_slack": 0.01})
        assert tight.assignment["a"] == "fast" and tight.energy == pytest.approx(100.0)

    def test_latency_objective_ignores_power(self):
        g, c, cm = self._case()
        assert list_schedule(g, c, cm, ["a"]).assignment["a"] == "fast"

    def test_energy_needs_powers(self, gap_case):
        g, c, cm = gap_case
        with pytest.raises(PolicyError, match="objective 'energy' needs device powers.*device 'x'"):
            list_schedule(g, c, cm, ["a", "b", "c"], options={"objective": "energy"})

    def test_bad_energy_slack(self):
        g, c, cm = self._case()
        with pytest.raises(PolicyError, match="energy_slack must be >= 0, got -1"):
            list_schedule(g, c, cm, ["a"], options={"objective": "energy", "energy_slack": -1})


def _tie_heavy_instance(seed: int, n: int, m: int):
    """A random DAG whose node times (0..3) and transfer times (0, 1, 5) are small integers,
    so start-time ties and zero-length nodes are common; the context and a random
    fallback-free assignment (node index -> device index) on it."""
    rng = random.Random(seed)
    g = nx.gnp_random_graph(n, 0.15, seed=seed, directed=True)
    g = nx.DiGraph([(u, v) for u, v in g.edges if u < v])
    g.add_nodes_from(range(n))
    devs = [f"d{j}" for j in range(m)]
    cm = TableCostModel({v: {d: float(rng.randint(0, 3)) for d in devs} for v in g},
                        {e: float(rng.choice([0, 1, 5])) for e in g.edges}, devices=devs)
    ctx = ScheduleContext(g, Cluster.from_names(devs), cm)
    return ctx, [rng.randrange(m) for _ in range(n)], rng


class TestFixedAssignmentPath:
    """With an assignment that needs no fallback the engine computes each node's ready
    time on its own device only; it must agree with the general loop, which a ``choose``
    that returns the assigned device goes through."""

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(seed=st.integers(0, 10_000), n=st.integers(1, 30), m=st.integers(1, 4), insertion=st.booleans())
    def test_equals_the_general_loop(self, seed, n, m, insertion):
        ctx, assign, rng = _tie_heavy_instance(seed, n, m)
        rank = {v: rng.random() for v in ctx.nodes}  # a random topological order
        names = list(nx.lexicographical_topological_sort(ctx.graph, key=rank.__getitem__))
        amap = {ctx.nodes[i]: ctx.devices[d] for i, d in enumerate(assign)}
        fast = ctx.schedule(names, assignment=amap, insertion=insertion)
        general = ctx.schedule(names, choose=lambda v, cands: amap[v], insertion=insertion)
        assert dict(fast.start) == dict(general.start) and dict(fast.finish) == dict(general.finish)
        assert dict(fast.order) == dict(general.order) and dict(fast.memory) == dict(general.memory)
        assert fast.makespan == general.makespan
        idx = [ctx.index[v] for v in names]
        assert ctx.makespan_indices(idx, assign, insertion=insertion) == general.makespan
        start, finish, mk = ctx.times_indices(idx, assign, insertion=insertion)
        assert mk == general.makespan
        assert {ctx.nodes[i]: s for i, s in enumerate(start)} == dict(general.start)
        assert {ctx.nodes[i]: f for i, f in enumerate(finish)} == dict(general.finish)

    def test_fallbacks_still_go_through_the_general_loop(self):
        g = nx.DiGraph([("a", "b")])
        cm = TableCostModel({"a": {"x": 1, "y": 1}, "b": {"y": 2}}, {("a", "b"): 1})
        ctx = ScheduleContext(g, Cluster.from_names(["x", "y"]), cm)
        assert ctx.makespan_indices([0, 1], [0, 0]) == 4.0  # b falls back to y: 1 + 1 + 2


    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(seed=st.integers(0, 10_000), n=st.integers(1, 30), m=st.integers(1, 4))
    def test_insertion_never_starts_a_node_later_than_appending(self, seed, n, m):
        # why the search may rank candidates append-only and re-schedule its answer with
        # insertion: for the same assignment and order, no node starts later
        ctx, assign, rng = _tie_heavy_instance(seed, n, m)
        rank = {v: rng.random() for v in ctx.nodes}
        prio = [ctx.index[v] for v in nx.lexicographical_topological_sort(ctx.graph, key=rank.__getitem__)]
        s_ins, f_ins, mk_ins = ctx.times_indices(prio, assign, insertion=True)
        s_app, f_app, mk_app = ctx.times_indices(prio, assign, insertion=False)
        assert all(a <= b for a, b in zip(s_ins, s_app)) and mk_ins <= mk_app


class TestIncrementalSchedule:
    def test_hand_computed(self):
        g = nx.DiGraph([("a", "b"), ("b", "c")])
        g.add_node("z")
        cm = TableCostModel({v: {"x": 1, "y": 2} for v in "abcz"},
                            {("a", "b"): 5, ("b", "c"): 5})
        ctx = ScheduleContext(g, Cluster.from_names(["x", "y"]), cm)
        inc = IncrementalSchedule(ctx)
        prio = [ctx.index[v] for v in "azbc"]
        a, z, b, c = (ctx.index[v] for v in "azbc")
        assign = [0] * 4
        assert inc.rebase(prio, assign) == 4.0  # a, z, b, c back to back on x
        assert inc.pos[b] == 2 and inc.finish[c] == 4.0
        moved = list(assign)
        moved[c] = 1  # c on y waits for b's data: b ends at 3, + 5, + 2
        assert inc.makespan(prio, moved, inc.pos[c]) == 10.0
        assert inc.makespan(prio, moved, inc.pos[c], cutoff=4.0, moved_until=inc.pos[c]) >= 4.0
        off = list(assign)
        off[z] = 1  # z off x: a, b, c back to back on x end at 3, z on y at 2
        assert inc.makespan(prio, off, inc.pos[z]) == 3.0

    @settings(max_examples=30, deadline=None, derandomize=True)
    @given(seed=st.integers(0, 10_000), n=st.integers(2, 40), m=st.integers(1, 4))
    def test_resumed_runs_equal_full_append_runs(self, seed, n, m):
        ctx, assign, rng = _tie_heavy_instance(seed, n, m)
        prio = list(ctx.topo)
        inc = IncrementalSchedule(ctx)
        base = inc.rebase(prio, assign)
        assert base == ctx.makespan_indices(prio, assign, insertion=False)
        pos = inc.pos
        for _ in range(30):
            cand, cprio = list(assign), prio
            kind = rng.choice(["move", "swap", "prio"])
            if kind == "move":
                v = rng.randrange(n)
                cand[v] = rng.randrange(m)
                k = until = pos[v]
                moved = [v]
            elif kind == "swap":
                u, v = rng.randrange(n), rng.randrange(n)
                cand[u], cand[v] = assign[v], assign[u]
                k, until = min(pos[u], pos[v]), max(pos[u], pos[v])
                moved = [u, v]
            else:
                v = rng.randrange(n)
                lo = max((pos[u] for u, _ in ctx.preds[v]), default=-1) + 1
                hi = min((pos[w] for w, _ in ctx.succs[v]), default=n) - 1
                if hi < lo:
                    continue
                new = rng.randint(lo, hi)
                cprio = list(prio)
                del cprio[pos[v]]
                cprio.insert(new, v)
                k, until = min(pos[v], new), max(pos[v], new)
                moved = [v]
            exact = ctx.makespan_indices(cprio, cand, insertion=False)
            assert inc.makespan(cprio, cand, k) == exact
            assert inc.makespan(cprio, cand, 0) == exact
            for cutoff in (base, exact, exact * 0.999, exact * 1.001 + 1e-9):
                for mu, mv in ((None, None), (until, None), (until, moved)):
                    got = inc.makespan(cprio, cand, k, cutoff=cutoff, moved_until=mu, moved=mv)
                    assert got <= exact  # a lower bound when it stopped early ...
                    if got < cutoff or exact < cutoff:
                        assert got == exact  # ... and exact below the cutoff
        assert inc.makespan(prio, assign, n - 1) == base  # the base itself, resumed at the end
