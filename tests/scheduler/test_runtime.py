"""Runtime: signature checks, statistics, and serving the tiny model on a simulated trio."""
from __future__ import annotations

import json
import threading
import time

import networkx as nx
import pytest
import torch

from graphs.errors import UnknownNameError
from scheduler.errors import (InputSignatureError, RequestFailed, RequestTimeout, RuntimeClosedError,
                              SubmitTimeout)
from scheduler.runtime import InputSignature, Runtime, build_cluster
from scheduler.stats import (CallRecord, RequestRecord, StatsRecorder, dag_makespan, percentile,
                             request_energy)

TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]


# ----------------------------------------------------------------- no Ray needed
class TestInputSignature:
    def test_matching_inputs_pass(self):
        sig = InputSignature((torch.zeros(2, 8, dtype=torch.long), torch.ones(3)))
        assert sig.check((torch.ones(2, 8, dtype=torch.long), torch.zeros(3))) is None
        assert sig.describe() == "(int64[2, 8], float32[3])"

    def test_dynamic_dimension_may_vary_static_may_not(self):
        sig = InputSignature(torch.zeros(1, 8, dtype=torch.long), dynamic_dims={0: [-1]})
        sig.check((torch.zeros(1, 3, dtype=torch.long),))
        with pytest.raises(InputSignatureError, match=r"dimension 0 is 4, expected 1"):
            sig.check((torch.zeros(4, 3, dtype=torch.long),))
        with pytest.raises(InputSignatureError, match=r"dynamic dimension 1 is 0"):
            sig.check((torch.zeros(1, 0, dtype=torch.long),))

    def test_static_mismatch_suggests_dynamic_dims(self):
        sig = InputSignature((torch.zeros(1, 8),))
        with pytest.raises(InputSignatureError, match=r"dynamic_dims=\{0: \[1\]\}"):
            sig.check((torch.zeros(1, 9),))


class TestStats:
    def test_percentile_interpolates(self):
        assert percentile([3.0, 1.0, 2.0], 50) == 2.0
        assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
        with pytest.raises(ValueError, match="percentile q"):
            percentile([1.0], 101)

    def test_dag_makespan_hand_computed(self):
        g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
        # a=1; b at 1+.2 -> 3.2; c at 1+.2 -> 2.2; d waits for b: 3.2+.2=3.4 -> 4.4
        assert dag_makespan(g, {"a": 1, "b": 2, "c": 1, "d": 1}, lambda u, v: 0.2) == pytest.approx(4.4)

    def test_request_energy_matches_plan_energy_formula(self):
        # a: 2 W * 1 s busy + 0.5 W * 1 s idle = 2.5; b: 1 W * 2 s = 2 -> 4.5
        assert request_energy({"a": 1.0, "b": 2.0}, 2.0, {"a": (2.0, 0.5), "b": (1.0, 0.0)}) == 4.5
        assert request_energy({"a": 1.0}, 2.0, {"a": None}) is None

    def test_summary_busy_and_utilisation(self):
        rec = StatsRecorder(pace=2.0)
        for r in range(4):
            rec.add_submit(r)
            rec.add_measurement(CallRecord(r, 0, 0, "d", r, 0.25, 0.5, True))
            rec.add_request(RequestRecord(r, float(r), r + 1.0, "completed", sim_makespan=0.25, energy=1.0))
        rec.add_request(RequestRecord(9, 0.0, 4.0, "timeout"))
        s = rec.summary(in_flight=3)
        assert (s.count, s.completed, s.timed_out, s.in_flight) == (5, 4, 1, 3)
        assert s.window == 4.0 and s.throughput == 1.0
        assert s.busy_wall["d"] == 2.0 and s.utilisation_wall["d"] == 0.5
        assert s.busy_simulated["d"] == 1.0 and s.utilisation_simulated["d"] == 0.5  # 1 / (4 / 2)
        assert s.latency_p50 == 1.0 and s.energy_per_request == 1.0

    def test_history_bounds_memory(self):
        rec = StatsRecorder(history=10)
        for r in range(100):
            rec.add_request(RequestRecord(r, 0.0, 1.0, "completed"))
            rec.add_measurement(CallRecord(r, 0, 0, "d", 0.0, 1.0, 1.0, False))
        assert len(rec.requests()) == 10 and len(rec.measurements()) == 10
        assert rec.summary().completed == 100 and rec.summary().measurements == 100

    def test_unknown_status_rejected(self):
        with pytest.raises(ValueError, match="unknown request status 'done'"):
            StatsRecorder().add_request(RequestRecord(0, 0.0, 1.0, "done"))


class TestBuildCluster:
    def test_sim_devices_get_profiles_and_links(self):
        c = build_cluster(TRIO)
        assert c.names == tuple(TRIO)
        assert [c.spec(d).kind for d in TRIO] == ["npu", "gpu", "cpu"]
        assert c.link(TRIO[0], TRIO[2]) is not None

    def test_unknown_form_lists_valid_forms(self):
        with pytest.raises(UnknownNameError, match=r"unknown device 'tpu:0'.*sim:<profile"):
            build_cluster(["tpu:0"])


# -------------------------------------------------------------------- with Ray
@pytest.fixture(scope="module")
def tiny():
    import graphs.models as M

    torch.manual_seed(0)
    model = M.pangu_embedded("tiny")
    x = M.example_inputs(model, batch=1, seq_len=16)
    return model, x


@pytest.fixture(scope="module")
def rt(ray_session, tiny):
    model, x = tiny
    with Runtime(model, x, devices=TRIO, policy="heft") as r:
        yield r


def _ref(model, *x):
    with torch.no_grad():
        return model(*x)


@pytest.mark.ray
class TestServing:
    def test_plan_uses_several_devices_and_partitions(self, rt):
        assert len(rt.partitioned) >= 2
        assert len({p.device for p in rt.partitioned.parts}) >= 2
        assert rt.plan.policy == "heft"

    def test_run_equals_model(self, rt, tiny):
        model, x = tiny
        torch.testing.assert_close(rt.run(*x, timeout=60), _ref(model, *x))

    def test_pipelined_requests_each_get_their_own_result(self, rt, tiny):
        model, x = tiny
        gen = torch.Generator().manual_seed(1)
        xs = [(torch.randint(0, 256, x[0].shape, generator=gen),) for _ in range(12)]
        futs = [rt.submit(*xi) for xi in xs]
        for xi, f in zip(xs, futs):
            torch.testing.assert_close(f.result(timeout=60), _ref(model, *xi))

    def test_simulated_makespan_agrees_with_simulate(self, rt, tiny):
        from scheduler.simulate import simulate

        model, x = tiny
        rt.run(*x, timeout=60)
        sim = simulate(rt.graph, rt.plan, rt.cost_model)
        rec = rt.requests()[-1]
        assert rec.sim_makespan == pytest.approx(sim.makespan, rel=0.05)
        # the measured durations are what the executors reported, summed per device
        ms = [m for m in rt.measurements() if m.request == rec.request]
        assert {m.partition for m in ms} == set(range(len(rt.partitioned)))
        assert all(m.simulated for m in ms)
        if sim.energy is not None:
            assert rec.energy == pytest.approx(sim.energy, rel=0.05)

    def test_stats_fields(self, rt, tiny):
        model, x = tiny
        rt.map([x] * 4, timeout=60)
        s = rt.stats()
        assert s.completed >= 4 and s.failed == 0 and s.in_flight == 0
        assert 0 < s.latency_p50 <= s.latency_p95 <= s.latency_p99
        assert s.throughput > 0
        used = {p.device for p in rt.partitioned.parts}
        assert set(s.busy_wall) == used and set(s.busy_simulated) == used
        # simulated busy time = runs x the predicted seconds of each partition
        per_req = {d: sum(rt.predicted[p.id] for p in rt.partitioned.parts if p.device == d) for d in used}
        n = s.measurements // len(rt.partitioned)
        for d in used:
            assert s.busy_simulated[d] == pytest.approx(per_req[d] * n, rel=1e-6)

    def test_on_measurement_hook(self, rt, tiny):
        model, x = tiny
        got = []
        rt.on_measurement(got.append)
        rt.run(*x, timeout=60)
        deadline = time.time() + 5
        while len(got) < len(rt.partitioned) and time.time() < deadline:
            time.sleep(0.01)
        assert sorted(m.partition for m in got) == list(range(len(rt.partitioned)))
        rt._dispatcher.on_measurement.remove(got.append)

    def test_trace_and_gantt(self, rt, tiny, tmp_path):
        model, x = tiny
        rt.run(*x, timeout=60)
        rt.write_trace(tmp_path / "t.json")
        xs = [e for e in json.load(open(tmp_path / "t.json"))["traceEvents"] if e["ph"] == "X"]
        assert len(xs) == len(rt.measurements())
        assert {e["name"] for e in xs} == {f"p{p.id}" for p in rt.partitioned.parts}
        sim_events = rt.events("simulated")
        # in simulated time each event lasts its simulated duration
        ms = sorted(rt.measurements(), key=lambda m: m.start)
        assert [round(e.duration, 12) for e in sim_events] == [round(m.duration, 12) for m in ms]
        n = rt.write_gantt(tmp_path / "g.png", time="simulated")
        assert n == len(ms) and (tmp_path / "g.png").stat().st_size > 1000
        with pytest.raises(UnknownNameError, match="unknown time base 'cpu'"):
            rt.events("cpu")

    def test_bad_input_rejected_while_serving(self, rt, tiny):
        model, x = tiny
        fut = rt.submit(*x)
        with pytest.raises(InputSignatureError, match="dtype float32, expected int64"):
            rt.submit(x[0].float())
        torch.testing.assert_close(fut.result(timeout=60), _ref(model, *x))


@pytest.fixture(scope="module")
def paced(ray_session, tiny):
    """Simulated time x100 in real time: one request takes ~0.13 s of wall time."""
    model, x = tiny
    with Runtime(model, x, devices=TRIO, pace=100.0, max_in_flight=2, submit_timeout=0.05) as r:
        yield r


@pytest.mark.ray
class TestLifecycle:
    def test_requests_overlap_across_devices(self, paced, tiny):
        model, x = tiny
        paced.reset_stats()
        futs = [paced.submit(*x) for _ in range(2)]
        for f in futs:
            f.result(timeout=60)
        ms = paced.measurements()
        r0, r1 = sorted({m.request for m in ms})[:2]
        end0 = max(m.start + m.wall for m in ms if m.request == r0)
        start1 = min(m.start for m in ms if m.request == r1)
        assert start1 < end0  # request 1 ran on one device while request 0 still ran on another

    def test_backpressure_raises_after_submit_timeout(self, paced, tiny):
        model, x = tiny
        futs = [paced.submit(*x) for _ in range(2)]
        t = time.perf_counter()
        with pytest.raises(SubmitTimeout, match="2 requests in flight"):
            paced.submit(*x)
        assert time.perf_counter() - t >= 0.04
        for f in futs:
            f.result(timeout=60)
        paced.run(*x, timeout=60)  # slots were freed

    def test_request_timeout_frees_slot(self, paced, tiny):
        model, x = tiny
        before = paced.stats().timed_out
        f = paced.submit(*x, request_timeout=0.01)
        with pytest.raises(RequestTimeout, match="did not finish within"):
            f.result(timeout=30)
        assert paced.stats().timed_out == before + 1
        torch.testing.assert_close(paced.run(*x, timeout=60), _ref(model, *x))

    def test_cancel_frees_slot_and_others_complete(self, paced, tiny):
        model, x = tiny
        before = paced.stats().cancelled
        f1 = paced.submit(*x)
        f2 = paced.submit(*x)
        assert f2.cancel()
        deadline = time.time() + 10
        while paced.stats().cancelled == before and time.time() < deadline:
            time.sleep(0.01)
        assert paced.stats().cancelled == before + 1
        torch.testing.assert_close(f1.result(timeout=60), _ref(model, *x))
        torch.testing.assert_close(paced.run(*x, timeout=60), _ref(model, *x))
        assert paced._dispatcher.drain(10) and paced.stats().in_flight == 0

    def test_paced_simulated_utilisation(self, paced, tiny):
        model, x = tiny
        paced._dispatcher.drain(10)
        paced.reset_stats()
        paced.map([x] * 2, timeout=60)  # max_in_flight=2
        s = paced.stats()
        assert s.utilisation_simulated and all(0 < u <= 1.05 for u in s.utilisation_simulated.values())


@pytest.fixture(scope="module")
def coalescing(ray_session, tiny):
    """Paced (x20) so that a burst queues and coalesces into groups of up to 8 (group_work
    raised: by default calls this long are not coalesced)."""
    model, x = tiny
    with Runtime(model, x, devices=TRIO, pace=20.0, max_in_flight=64, max_group=8,
                 group_work=10.0) as r:
        yield r


def _past_the_check(rt, *inputs):
    """Submit without the submit-time input check (to exercise a partition that raises)."""
    values = rt.partitioned.bind(*inputs)
    return rt._dispatcher.submit(tuple(values[n] for n in rt.partitioned.input_names))


@pytest.mark.ray
class TestCoalescing:
    def test_a_burst_coalesces_and_each_request_gets_its_own_result(self, coalescing, tiny):
        from scheduler.simulate import simulate

        model, x = tiny
        coalescing.reset_stats()
        gen = torch.Generator().manual_seed(3)
        xs = [(torch.randint(0, 256, x[0].shape, generator=gen),) for _ in range(24)]
        bad = 13
        xs[bad] = (torch.full_like(x[0], 10_000),)  # token ids past the vocabulary
        with pytest.raises(InputSignatureError, match="out of range"):
            coalescing.submit(*xs[bad])  # refused at submit; past that check it fails in the actor:
        futs = [coalescing.submit(*xi) if i != bad else _past_the_check(coalescing, *xi)
                for i, xi in enumerate(xs)]
        for i, (xi, f) in enumerate(zip(xs, futs)):
            if i == bad:
                with pytest.raises(RequestFailed, match=r"after 1 attempt\(s\).*(index|Index)"):
                    f.result(timeout=60)
            else:
                torch.testing.assert_close(f.result(timeout=60), _ref(model, *xi))
        s = coalescing.stats()
        assert s.completed == 23 and s.failed == 1 and s.retried == 0
        assert 1 < s.group_size <= 8  # requests did share calls, never more than max_group
        # every completed request has its own measurement of every partition, and its own
        # simulated makespan equal to simulate's
        sim = simulate(coalescing.graph, coalescing.plan, coalescing.cost_model).makespan
        ms = coalescing.measurements()
        for rec in coalescing.requests():
            if rec.status == "completed":
                assert sorted(m.partition for m in ms if m.request == rec.request) == \
                    list(range(len(coalescing.partitioned)))
                assert rec.sim_makespan == pytest.approx(sim, rel=0.05)

    def test_cancel_and_timeout_inside_a_group_leave_the_rest_alone(self, coalescing, tiny):
        model, x = tiny
        coalescing._dispatcher.drain(30)
        before = coalescing.stats()
        futs = [coalescing.submit(*x) for _ in range(10)]
        late = coalescing.submit(*x, request_timeout=0.01)
        assert futs[6].cancel()
        with pytest.raises(RequestTimeout):
            late.result(timeout=30)
        for i, f in enumerate(futs):
            if i != 6:
                torch.testing.assert_close(f.result(timeout=60), _ref(model, *x))
        assert coalescing._dispatcher.drain(30)
        after = coalescing.stats()
        assert after.completed == before.completed + 9 and after.cancelled == before.cancelled + 1
        assert after.timed_out == before.timed_out + 1 and after.in_flight == 0
        assert coalescing._dispatcher._pending == []

    def test_groups_are_capped_by_the_work_one_call_carries(self, ray_session, tiny):
        model, x = tiny
        with Runtime(model, x, devices=TRIO, pace=200.0) as r:
            slowest = max(r.predicted[p.id] for p in r.partitioned.parts) * 200.0
            assert slowest > 10e-3 and r._dispatcher.group_cap() == 1  # long calls: alone
            futs = [r.submit(*x) for _ in range(6)]
            for f in futs:
                torch.testing.assert_close(f.result(timeout=60), _ref(model, *x))
            assert r.stats().group_size == 1.0
        with Runtime(model, x, devices=TRIO, pace=200.0, group_work=4 * slowest) as r:
            assert r._dispatcher.group_cap() == 4
        with Runtime(model, x, devices=TRIO) as r:  # unpaced: the host's time, once measured
            assert r._dispatcher.group_cap() == 16  # nothing measured yet
            r.map([x] * 8, timeout=60)
            r._dispatcher.flush()
            w = max(r._dispatcher._wall.values())
            assert r._dispatcher.group_cap() == max(1, min(16, int(10e-3 / w)))

    def test_max_group_one_sends_every_request_alone(self, ray_session, tiny):
        model, x = tiny
        with Runtime(model, x, devices=TRIO[:2], pace=20.0, max_group=1) as r:
            futs = [r.submit(*x) for _ in range(6)]
            for f in futs:
                torch.testing.assert_close(f.result(timeout=60), _ref(model, *x))
            assert r.stats().group_size == 1.0


@pytest.mark.ray
def test_context_manager_shuts_down_but_keeps_shared_ray(ray_session, tiny):
    model, x = tiny
    with Runtime(model, x, devices=["sim:edge-cpu-a76"], policy="single") as r:
        torch.testing.assert_close(r.run(*x, timeout=60), _ref(model, *x))
        done = threading.Event()
        r.submit(*x).add_done_callback(lambda f: done.set())
    assert r.closed and done.is_set()  # shutdown waited for the request in flight
    with pytest.raises(RuntimeClosedError, match="shut down"):
        r.submit(*x)
    assert ray_session.is_initialized()


@pytest.mark.ray
def test_detected_real_cpu_dynamic_length_and_trace_file(ray_session, tiny, tmp_path):
    model, x = tiny
    path = tmp_path / "trace.json"
    with Runtime(model, x, devices=None, policy="single", dynamic_dims={0: [1]}, trace=path) as r:
        assert r.devices == ("cpu",)  # executors.detect() on this CPU-only machine
        short = (x[0][:, :7],)
        torch.testing.assert_close(r.run(*short, timeout=60), _ref(model, *short))
        torch.testing.assert_close(r.run(*x, timeout=60), _ref(model, *x))
        ms = r.measurements()
        assert ms and not any(m.simulated for m in ms)  # a real executor measures wall time
        assert r.stats().busy_simulated == {} and r.stats().energy_per_request is None
    events = [e for e in json.load(open(path))["traceEvents"] if e["ph"] == "X"]
    assert len(events) == len(ms)


_EMBEDDED = r"""
import os, torch, ray
os.environ.pop("RAY_ADDRESS", None)
from scheduler.runtime import Runtime
m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
x = torch.randn(2, 4)
assert not ray.is_initialized()
with Runtime(m, (x,), devices=["sim:atlas-200i-a2", "sim:edge-cpu-a76"], policy="round-robin") as rt:
    assert ray.is_initialized()
    node = ray.nodes()[0]
    res = ray.cluster_resources()
    torch.testing.assert_close(rt.run(x, timeout=60), m(x))
    print("IP", node["NodeManagerAddress"], "RES", res.get("sim_atlas-200i-a2"), res.get("sim_edge-cpu-a76"))
    print("GCS", ray._private.worker.global_worker.node.gcs_address.split(":")[0])
    # a second runtime simulating the same devices on the same Ray deploys and serves too
    with Runtime(m, (x,), devices=["sim:atlas-200i-a2", "sim:edge-cpu-a76"], policy="round-robin") as rt2:
        torch.testing.assert_close(rt2.run(x, timeout=60), m(x))
        print("SECOND OK")
print("AFTER", ray.is_initialized())
"""


@pytest.mark.ray
@pytest.mark.slow
def test_embedded_ray_on_loopback_started_and_stopped():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = root
    out = subprocess.run([sys.executable, "-c", _EMBEDDED], capture_output=True, text=True,
                         timeout=240, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "IP 127.0.0.1 RES 1.0 1.0" in out.stdout  # loopback, one custom resource per sim device
    assert "GCS 127.0.0.1" in out.stdout
    assert "SECOND OK" in out.stdout  # devices' resources mark placement, not a one-runtime limit
    assert "AFTER False" in out.stdout  # the runtime stopped the Ray it started


class _Fixed:
    """A policy that places by a given assignment rule (through the shared engine)."""

    def __new__(cls, rule):
        from policies.base import Policy
        from policies.schedule import list_schedule

        class Fixed(Policy):
            name = "fixed-for-test"
            description = "assignment given by the test"

            def _place(self, graph, cluster, cost_model):
                order = list(nx.topological_sort(graph))
                return list_schedule(graph, cluster, cost_model, order,
                                     assignment={n: rule(n) for n in graph.nodes})

        return Fixed()


@pytest.mark.ray
def test_coarse_nodes_spanning_partitions_keep_the_sim_dag_acyclic_and_their_time(ray_session, tiny):
    """(root) on one device, the layers on another: the root group's ops run before and
    after the layers, which splits a layer's ops over several partitions. Each partition is charged its
    share of the node's time, and the partition DAG used for simulated makespans stays
    acyclic."""
    model, x = tiny
    cpu, gpu = "sim:edge-cpu-a76", "sim:jetson-orin-nx"
    policy = _Fixed(lambda n: cpu if n == "(root)" else gpu)
    with Runtime(model, x, devices=[cpu, gpu], policy=policy, granularity="layer") as rt:
        spans = {n for p in rt.partitioned.parts for n in p.nodes
                 if sum(n in q.nodes for q in rt.partitioned.parts) > 1}
        assert spans, "the test needs a node whose ops span partitions"
        for n in spans:
            assert sum(p.shares[n] for p in rt.partitioned.parts if n in p.nodes) == pytest.approx(1.0)
        assert nx.is_directed_acyclic_graph(rt._sim_dag)
        total = sum(rt.cost_model.node_time(rt.graph, n, rt.plan.assignment[n]) for n in rt.graph.nodes)
        assert sum(rt.predicted.values()) == pytest.approx(total)
        assert rt.predicted_makespan > 0
        torch.testing.assert_close(rt.run(*x, timeout=60), model(*x))


def test_a_view_into_a_large_tensor_is_sent_as_its_own_small_copy():
    """Slices of a dataset are views: pickled as they are, each request would carry the
    whole storage to the actors."""
    import pickle

    from scheduler.runtime import _own_storage

    data = torch.randn(1000, 64)
    view = data[3:4]
    own = _own_storage(view)
    torch.testing.assert_close(own, view)
    assert len(pickle.dumps(own)) < len(pickle.dumps(view)) / 100
    whole = torch.randn(1, 64)
    assert _own_storage(whole) is whole  # no copy when the tensor owns its storage
