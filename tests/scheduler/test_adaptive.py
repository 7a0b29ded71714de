"""Adaptive loop: drift detection, health, re-plan controller, lossless plan switching."""
from __future__ import annotations

import heapq
import math
import random

import networkx as nx
import numpy as np
import pytest

from executors.devices import Cluster
from graphs.errors import UnknownNameError
from policies.abstract import RelatedMachines
from policies.calibrated import CalibratedCostModel
from scheduler.adaptive import (AdaptiveEvent, DriftDetector, HealthTracker, ReplanController,
                                VersionLedger)
from scheduler.errors import AdaptiveError, PlanSwitchError


# ------------------------------------------------------------------------ drift
class TestDriftDetector:
    def test_noise_within_threshold_never_fires(self):
        rng = np.random.default_rng(7)
        det = DriftDetector(threshold=0.25)
        alarms = 0
        for i in range(6000):
            key = ("npu", "gpu", "cpu")[i % 3]
            pred = float(rng.uniform(1e-3, 1.0))
            alarms += det.observe(key, pred, pred * float(rng.uniform(0.9, 1.1))) is not None
        assert alarms == 0 and det.alarms() == {}
        assert all(det.samples(k) == 2000 for k in ("npu", "gpu", "cpu"))

    def test_gaussian_noise_with_rare_outliers_does_not_fire(self):
        rng = np.random.default_rng(3)
        det = DriftDetector(threshold=0.25)
        ratios = np.exp(rng.normal(0.0, 0.05, 5000))
        ratios[rng.choice(5000, 10, replace=False)] = 8.0  # isolated 8x spikes (GC, preemption)
        fired = [det.observe("d", 1.0, float(r)) for r in ratios]
        assert sum(a is not None for a in fired) == 0

    def test_sustained_3x_fires_within_the_bound(self):
        rng = np.random.default_rng(11)
        det = DriftDetector(threshold=0.25)
        for _ in range(500):
            assert det.observe("npu", 0.01, 0.01 * float(rng.uniform(0.9, 1.1))) is None
        bound = det.samples_to_detect(3.0 * 0.9)  # the worst noisy sample of the change
        assert bound == 3
        for n in range(1, bound + 1):
            alarm = det.observe("npu", 0.01, 0.03 * float(rng.uniform(0.9, 1.1)))
            if alarm is not None:
                break
        assert alarm is not None, f"no alarm within {bound} samples of a 3x change"
        assert alarm.direction == "slower" and alarm.run == n
        assert 2.7 <= alarm.ratio <= 3.3  # the change's size, not diluted by the 500 before

    def test_hand_computed_detection_delay(self):
        # k = log 1.25 = 0.2231; a 1.5x ratio adds log 1.5 - k = 0.1823 per sample;
        # h * k = 0.8926 is crossed at the 5th sample (5 * 0.1823 = 0.912)
        det = DriftDetector(threshold=0.25, h=4.0, clip=3.0, min_samples=1)
        assert det.samples_to_detect(1.5) == 5
        got = [det.observe("x", 2.0, 3.0) for _ in range(6)]
        assert [a is not None for a in got] == [False] * 4 + [True, False]  # latched after
        assert got[4].statistic == pytest.approx(5 * (math.log(1.5) - math.log(1.25)))

    def test_faster_direction_and_ratio_estimate(self):
        det = DriftDetector(threshold=0.25)
        alarm = next(a for a in (det.observe("gpu", 3.0, 1.0) for _ in range(10)) if a)
        assert alarm.direction == "faster" and alarm.ratio == pytest.approx(1 / 3)

    def test_ratio_at_the_threshold_never_fires(self):
        det = DriftDetector(threshold=0.25)
        assert det.samples_to_detect(1.25) is None and det.samples_to_detect(0.8) is None
        assert all(det.observe("d", 1.0, 1.249) is None for _ in range(3000))

    def test_one_huge_outlier_cannot_fire(self):
        det = DriftDetector(threshold=0.25, min_samples=1)
        assert det.observe("d", 1.0, 1e6) is None
        assert det.state("d")["up"] == pytest.approx(2 * math.log(1.25))  # clipped to (clip-1)*k

    def test_min_samples_delays_the_alarm(self):
        det = DriftDetector(threshold=0.25, min_samples=8)
        got = [det.observe("d", 1.0, 5.0) is not None for _ in range(8)]
        assert got == [False] * 7 + [True]

    def test_reset_rearms(self):
        det = DriftDetector(threshold=0.25)
        assert any(det.observe("d", 1.0, 3.0) for _ in range(5))
        assert det.alarm("d") is not None
        det.reset("d")
        assert det.alarm("d") is None and det.samples("d") == 0
        assert any(det.observe("d", 1.0, 3.0) for _ in range(5))

    @pytest.mark.parametrize("kw, match", [
        ({"threshold": 0}, r"threshold must be a finite number > 0.0, got 0"),
        ({"clip": 1.0}, r"clip must be a finite number > 1.0, got 1.0"),
        ({"min_samples": 0}, r"min_samples must be an int >= 1, got 0"),
        ({"alpha": 1.5}, r"alpha must be a finite number > 0.0 and <= 1.0, got 1.5"),
    ])
    def test_bad_parameters(self, kw, match):
        with pytest.raises(AdaptiveError, match=match):
            DriftDetector(**kw)

    def test_bad_measurement(self):
        with pytest.raises(AdaptiveError, match=r"measured must be a finite number > 0.0, got nan"):
            DriftDetector().observe("d", 1.0, float("nan"))


# ----------------------------------------------------------------------- health
class TestHealthTracker:
    def test_consecutive_failures_then_probe(self):
        h = HealthTracker(["a", "b"], max_failures=3)
        assert not h.failure("a", "timeout") and h.state("a") == "suspect" and h.healthy("a")
        assert h.success("a") and h.state("a") == "healthy"  # a success clears suspicion
        assert [h.failure("a", "timeout") for _ in range(3)] == [False, False, True]
        assert h.failed() == ("a",) and h.reason("a") == "timeout" and not h.healthy("a")
        assert not h.success("a") and h.state("a") == "failed"  # a late result is no probe
        assert h.recovered("a") and h.failed() == ()

    def test_mark_failed_and_unknown_device(self):
        h = HealthTracker(["a"])
        assert h.mark_failed("a", "actor died") and not h.mark_failed("a")
        with pytest.raises(UnknownNameError, match=r"unknown device 'z'; valid choices: a"):
            h.state("z")
        with pytest.raises(AdaptiveError, match="at least one device"):
            HealthTracker([])


# ------------------------------------------------------------------- controller
def _chain(n=6):
    g = nx.DiGraph()
    for i in range(n):
        g.add_node(i, cost=1.0, kind="matmul")
    for i in range(n - 1):
        g.add_edge(i, i + 1, data=0.0)
    return g


def _controller(**kw):
    g = _chain()
    cluster = Cluster.from_names(["npu", "gpu", "cpu"])
    cm = RelatedMachines({"npu": 8.0, "gpu": 4.0, "cpu": 1.0}, bandwidth=1.0)
    clock = kw.pop("clock", None) or _Clock()
    return ReplanController(g, cluster, "heft", cm, clock=clock, **kw), clock


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class TestReplanController:
    def test_initial_plan_and_calibrated_model(self):
        c, _ = _controller()
        assert c.current.version == 0 and set(c.current.assignment.values()) == {"npu"}
        assert isinstance(c.cost_model, CalibratedCostModel)

    def test_noise_does_not_replan_and_feeds_calibration(self):
        c, clock = _controller(cooldown=0.0)
        rng = random.Random(0)
        for i in range(600):
            clock.t = i * 0.01
            c.observe("npu", (i % 6,), 0.125 * rng.uniform(0.9, 1.1))
        assert c.due() is None and c.events() == []
        assert len(c.records()) == 600
        assert c.cost_model.online["npu"] == pytest.approx(1.0, abs=0.1)

    def test_sustained_slowdown_replans_on_the_corrected_model(self):
        c, clock = _controller(cooldown=0.0)
        for i in range(3):
            c.observe("npu", (0,), 0.125)
        # npu becomes 40x slower: 5 s a node, slower than cpu (1 s)
        for i in range(3):
            clock.t = 1.0 + i
            c.observe("npu", (i,), 5.0)
        reason = c.due()
        assert reason == "drift: npu 40x slower"
        v = c.replan()
        assert v.version == 1 and "npu" not in set(v.assignment.values())
        assert v.scales["npu"] == pytest.approx(40.0)  # anchored on the alarm, not the EWMA lag
        assert [e.kind for e in c.events()] == ["drift", "replan"]
        assert c.due() is None and c.detector.alarms() == {}
        # the new version's prediction matches the slowed device: no new alarm
        for i in range(50):
            assert c.observe("npu", (0,), 5.0) is None

    def test_unchanged_placement_is_skipped_and_rebaselined(self):
        c, _ = _controller(cooldown=0.0)
        for _ in range(5):
            c.observe("npu", (0,), 0.125 * 1.6)  # slower, still the fastest device
        assert c.due().startswith("drift: npu 1.6x slower")
        assert c.replan() is None and c.current.version == 0
        assert c.events()[-1].kind == "replan-skipped"
        assert all(c.observe("npu", (0,), 0.2) is None for _ in range(100))

    def test_cooldown_rate_limits_drift_replans(self):
        c, clock = _controller(cooldown=10.0)
        for _ in range(5):
            c.observe("npu", (0,), 0.125 * 1.6)
        c.replan()
        clock.t = 1.0
        for _ in range(5):
            c.observe("npu", (0,), 0.2 * 3)
        assert c.detector.alarms() and c.due() is None  # alarm latched, cool-down running
        clock.t = 10.5
        assert c.due().startswith("drift: npu")

    def test_failure_replans_without_the_device_and_recovery_readmits_it(self):
        c, _ = _controller(cooldown=100.0)
        assert c.device_failed("npu", "actor died") and not c.device_failed("npu")
        assert c.due() == "failure: npu (actor died)"  # no cool-down for failures
        v1 = c.replan()
        assert v1.excluded == ("npu",) and v1.devices == ("gpu", "cpu")
        assert set(v1.assignment.values()) == {"gpu"}
        assert c.device_recovered("npu") and c.due() == "recovery: npu"
        v2 = c.replan()
        assert v2.version == 2 and set(v2.assignment.values()) == {"npu"} and v2.excluded == ()
        kinds = [e.kind for e in c.events()]
        assert kinds == ["failure", "replan", "recovery", "replan"]
        assert all(isinstance(e, AdaptiveEvent) for e in c.events())

    def test_consecutive_call_failures(self):
        c, _ = _controller()
        assert [c.call_failed("gpu", "timeout") for _ in range(3)] == [False, False, True]
        assert c.health.failed() == ("gpu",)

    def test_stale_version_measurements_skip_the_detector(self):
        c, _ = _controller(cooldown=0.0)
        for _ in range(10):
            assert c.observe("npu", (0,), 5.0, version=7) is None
        assert c.detector.samples("npu") == 0 and len(c.records()) == 10

    def test_all_devices_failed(self):
        c, _ = _controller()
        for d in ("npu", "gpu", "cpu"):
            c.device_failed(d)
        with pytest.raises(PlanSwitchError, match=r"no healthy device left to re-plan on: all of npu, gpu, cpu"):
            c.replan()
        assert c.due() is None and c.current.version == 0  # no retry spin; plan kept
        assert c.events()[-1].kind == "replan-skipped"
        c.device_recovered("cpu")
        v = c.replan()
        assert v.devices == ("cpu",) and set(v.assignment.values()) == {"cpu"}

    def test_bad_arguments(self):
        with pytest.raises(AdaptiveError, match=r"cluster must be an executors.devices.Cluster, got list"):
            ReplanController(_chain(), ["a"], "heft", RelatedMachines({"a": 1.0}))
        with pytest.raises(UnknownNameError, match=r"unknown policy 'nope'"):
            ReplanController(_chain(), Cluster.from_names(["a"]), "nope", RelatedMachines({"a": 1.0}))
        with pytest.raises(AdaptiveError, match=r"cooldown must be a finite number >= 0.0, got -1"):
            _controller(cooldown=-1)
        with pytest.raises(UnknownNameError, match=r"unknown adaptive event kind 'x'"):
            AdaptiveEvent(0.0, "x", 0)


# ----------------------------------------------------------------------- ledger
class TestVersionLedger:
    def test_mixing_and_duplicates_are_errors(self):
        led = VersionLedger()
        led.admit(1)
        led.publish(1)
        with pytest.raises(PlanSwitchError, match=r"request 1 answered by plan v1 but pinned to v0"):
            led.complete(1, 1)
        led.complete(1, 0)
        with pytest.raises(PlanSwitchError, match=r"request 1 completed twice"):
            led.complete(1, 0)
        with pytest.raises(PlanSwitchError, match=r"request 1 was admitted twice"):
            led.admit(1)
        with pytest.raises(PlanSwitchError, match=r"not newer than the current v1"):
            led.publish(1)

    def test_retire_waits_for_the_last_request(self):
        led = VersionLedger()
        retired = []
        led.on_retire.append(retired.append)
        led.admit("a"), led.admit("b")
        led.publish(1)
        led.complete("a", 0)
        assert retired == [] and led.in_flight(0) == 1
        assert led.repin("b") == 1 and retired == [0]  # b retried on v1: v0 drained
        led.complete("b", 1)
        led.publish(2)
        assert retired == [0, 1]  # v1 had nothing in flight

    def test_fake_dispatcher_thousands_of_requests_no_loss(self):
        """A virtual-time stream over a fake dispatcher: requests arrive, run their stages
        on the devices of their pinned version, re-plans publish new versions, a device
        dies (its in-flight attempts are retried on the newest version), old versions are
        unloaded when retired. Every request must finish exactly once, on the version it
        was pinned to, which must still be loaded."""
        rng = random.Random(42)
        led = VersionLedger()
        devices_of = {0: ("npu", "gpu", "cpu")}
        loaded = {0}
        led.on_retire.append(lambda v: loaded.discard(v))
        dead: set[str] = set()
        ev: list = []
        seq = 0

        def push(t, *item):
            nonlocal seq
            heapq.heappush(ev, (t, seq, item))
            seq += 1

        n = 3000
        for rid in range(n):
            push(rid * 0.01, "arrive", rid)
        for t in (5.0, 12.0, 20.0):
            push(t, "replan")
        push(9.0, "kill", "gpu")
        push(16.0, "revive", "gpu")
        attempt: dict[int, int] = {}
        answers: dict[int, list] = {}
        while ev:
            t, _, item = heapq.heappop(ev)
            kind = item[0]
            if kind == "arrive":
                rid = item[1]
                v = led.admit(rid)
                attempt[rid] = 0
                push(t + rng.uniform(0.05, 0.5), "finish", rid, v, 0)
            elif kind == "replan" or kind == "revive":
                if kind == "revive":
                    dead.discard(item[1])
                new = led.current + 1
                devices_of[new] = tuple(d for d in ("npu", "gpu", "cpu") if d not in dead)
                loaded.add(new)  # deploy first, then switch
                led.publish(new)
            elif kind == "kill":
                dead.add(item[1])
                new = led.current + 1
                devices_of[new] = tuple(d for d in ("npu", "gpu", "cpu") if d not in dead)
                loaded.add(new)
                led.publish(new)
            elif kind == "finish":
                _, rid, v, a = item
                if a != attempt[rid]:
                    continue  # an older attempt's late event
                if set(devices_of[v]) & dead:  # the attempt touched a dead device: retry
                    attempt[rid] += 1
                    v2 = led.repin(rid)
                    push(t + rng.uniform(0.05, 0.5), "finish", rid, v2, attempt[rid])
                    continue
                assert v in loaded, f"request {rid} finished on unloaded v{v}"
                led.complete(rid, v)
                answers.setdefault(rid, []).append(v)
        assert sorted(answers) == list(range(n))  # none lost
        assert all(len(vs) == 1 for vs in answers.values())  # none duplicated
        fin = led.finished()
        assert all(fin[r] == answers[r][0] for r in range(n))  # single version each
        s = led.summary()
        assert s["in_flight"] == 0 and s["failed"] == 0 and s["attempts"] > 0
        assert led.current == 5 and loaded == {5} and s["retired"] == [0, 1, 2, 3, 4]
        assert sum(s["served"].values()) == n and len(s["served"]) >= 4


# ------------------------------------------------------------- on the Runtime
TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]
NPU, GPU = TRIO[0], TRIO[1]


@pytest.fixture(scope="module")
def tiny():
    import torch

    import graphs.models as M

    torch.manual_seed(0)
    model = M.pangu_embedded("tiny").eval()
    xs = [(torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(i)),) for i in range(5)]
    with torch.no_grad():
        refs = [model(*x) for x in xs]
    return model, xs, refs


def _runtime(tiny, **kw):
    from scheduler.runtime import Runtime

    model, xs, _ = tiny
    kw.setdefault("adaptive", {"cooldown": 0.0, "hang_timeout": 1.0, "probe_interval": 0.1})
    return Runtime(model, xs[0], devices=TRIO, policy="pipeline",
                   policy_options={"objective": "throughput"}, max_in_flight=16, **kw)


def _check_answers(futs, refs, timeout=120):
    import torch

    versions = {}
    for rid_hint, (i, f) in enumerate(futs):
        y = f.result(timeout=timeout)
        torch.testing.assert_close(y, refs[i], rtol=0, atol=0)
        versions[f.request] = f.plan_version
    return versions


def _wait_for(pred, timeout=20.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.ray
@pytest.mark.slow
class TestAdaptiveRuntime:
    def test_replans_under_load_lose_and_duplicate_nothing(self, ray_session, tiny, caplog, tmp_path):
        """3000 requests while the plan changes at least three times (a device marked
        failed, then recovered by the probe, then the NPU throttled 3x): every request id
        is answered exactly once, correctly, by one plan version, and the events show up
        in stats, the trace and the log."""
        import json
        import logging
        import threading
        import time

        _, xs, refs = tiny
        caplog.set_level(logging.INFO, logger="hetsched")
        rt = _runtime(tiny)
        try:
            assert rt.plan_version == 0 and NPU in rt.plan.assignment.values()
            stop = threading.Event()

            def chaos():
                steps = [lambda: rt.controller.device_failed(GPU, "test: marked failed"),
                         lambda: rt.set_slowdown(NPU, 3.0)]
                for step in steps:
                    v = rt.plan_version
                    step()
                    # wait for the re-plan to land (a recovery of GPU follows the failure)
                    _wait_for(lambda: rt.plan_version > v or stop.is_set(), 20)
                    time.sleep(0.3)

            th = threading.Thread(target=chaos)
            th.start()
            futs = [(k % len(xs), rt.submit(*xs[k % len(xs)])) for k in range(3000)]
            versions = _check_answers(futs, refs)
            stop.set()
            th.join()
            ledger = rt._adaptive.ledger
            assert sorted(versions) == sorted(ledger.finished())  # each id answered once
            assert len(versions) == 3000 and ledger.finished() == versions  # one version each
            s = ledger.summary()
            assert s["in_flight"] == 0 and s["failed"] == 0
            assert len(s["served"]) >= 3  # answers came from at least three plan versions
            st = rt.stats()
            assert st.completed == 3000 and st.failed == 0
            assert st.replans >= 3 and st.plan_version == rt.plan_version >= 3
            kinds = [e.kind for e in st.events]
            assert {"failure", "recovery", "drift", "replan", "deployed", "retired"} <= set(kinds)
            recs = rt.requests()
            assert all(r.version == versions[r.request] for r in recs)
            drift = next(e for e in st.events if e.kind == "drift")
            assert drift.device == NPU and drift.data["ratio"] == pytest.approx(3.0)
            doc = rt.write_trace(tmp_path / "t.json")
            cats = {e.get("cat") for e in doc["traceEvents"]}
            assert "adaptive" in cats
            json.dumps(doc)
            logged = [r.getMessage() for r in caplog.records if r.name == "hetsched"]
            assert any("adaptive replan" in m for m in logged)
            assert any("adaptive drift" in m and NPU in m for m in logged)
        finally:
            rt.shutdown()

    def test_killed_device_is_excluded_then_readmitted_and_a_hang_is_detected(self, ray_session, tiny):
        import time

        _, xs, refs = tiny
        rt = _runtime(tiny, pace=2.0)
        try:
            futs = [(k % 5, rt.submit(*xs[k % 5])) for k in range(40)]
            rt.inject_failure(GPU, "kill", seconds=1.0)
            futs += [(k % 5, rt.submit(*xs[k % 5])) for k in range(400)]
            _check_answers(futs, refs)
            v1 = next(v for v in rt.versions if v.excluded)
            assert v1.excluded == (GPU,) and GPU not in v1.plan.assignment.values()
            assert _wait_for(lambda: any(e.kind == "recovery" for e in rt.adaptive_events()), 30)
            assert _wait_for(lambda: GPU in rt.plan.assignment.values(), 30)
            v = rt.plan_version
            # the re-admitted device serves again, without a spurious second failure
            _check_answers([(k % 5, rt.submit(*xs[k % 5])) for k in range(50)], refs)
            assert [e.kind for e in rt.adaptive_events()].count("failure") == 1
            # a device that stops answering is declared failed and its requests move on
            t0 = time.time()
            rt.inject_failure(GPU, "hang", seconds=3.0)
            futs = [(k % 5, rt.submit(*xs[k % 5])) for k in range(200)]
            _check_answers(futs, refs)
            hang = [e for e in rt.adaptive_events() if e.kind == "failure" and e.time >= t0]
            assert hang and "stopped answering" in hang[0].detail and rt.plan_version > v
            s = rt._adaptive.ledger.summary()
            assert s["failed"] == 0 and s["in_flight"] == 0 and s["finished"] == 690
        finally:
            rt.shutdown()

    def test_static_runtime_refuses_adaptive_calls(self, ray_session, tiny):
        from scheduler.errors import RuntimeConfigError
        from scheduler.runtime import Runtime

        model, xs, refs = tiny
        with pytest.raises(AdaptiveError, match=r"unknown adaptive option\(s\) 'tresh'"):
            Runtime(model, xs[0], devices=TRIO, adaptive={"tresh": 1})
        rt = Runtime(model, xs[0], devices=["sim:edge-cpu-a76"])
        try:
            with pytest.raises(RuntimeConfigError, match=r"replan\(\) needs an adaptive runtime"):
                rt.replan()
            with pytest.raises(RuntimeConfigError, match=r"inject_failure\(\) needs an adaptive"):
                rt.inject_failure("sim:edge-cpu-a76")
            rt.set_slowdown("sim:edge-cpu-a76", 2.0)  # the knob works on static runtimes too
            import torch

            torch.testing.assert_close(rt.run(*xs[1]), refs[1])
            assert rt.plan_version == 0 and rt.versions == () and rt.adaptive_events() == []
            assert rt.measurements()[-1].duration == pytest.approx(2.0 * rt.predicted[0])
        finally:
            rt.shutdown()

    def test_bad_failure_mode(self, ray_session, tiny):
        rt = _runtime(tiny)
        try:
            with pytest.raises(UnknownNameError, match=r"unknown failure mode 'melt'; valid choices: crash, hang, kill"):
                rt.inject_failure(NPU, "melt")
            with pytest.raises(AdaptiveError, match=r"mode 'hang' needs seconds"):
                rt.inject_failure(NPU, "hang")
        finally:
            rt.shutdown()


# ------------------------------------------------------- simulation knobs (no Ray)
class TestSimulationKnobs:
    def _ex(self):
        import torch.fx

        from executors.devices import DeviceSpec
        from executors.simulated import SimulatedExecutor
        from graphs.partition import Partition

        ex = SimulatedExecutor(DeviceSpec("sim:toy", "npu", {"float32": 1e12}, 1e11, 8e9))
        gm = torch.fx.symbolic_trace(lambda x: (x * 2,))
        ex.load(Partition(0, "sim:toy", gm, ("x",), ("mul",)), predicted=0.5)
        return ex

    def test_slowdown_scales_the_reported_time(self):
        import time

        import torch

        ex = self._ex()
        assert ex.run(0, torch.ones(2)).duration == 0.5
        ex.set_slowdown(3.0)
        r = ex.run(0, torch.ones(2))
        assert r.duration == 1.5 and torch.equal(r.outputs[0], torch.full((2,), 2.0))
        t0 = time.time()
        ex.set_slowdown(schedule=[(0.0, 2.0), (100.0, 4.0)], origin=t0)
        assert ex.slowdown(t0 + 50) == 2.0 and ex.slowdown(t0 + 150) == 4.0
        assert ex.slowdown(t0 - 1) == 1.0 and ex.health()["slowdown"] == 2.0

    def test_bad_knob_values(self):
        from executors.errors import ExecutorError

        ex = self._ex()
        with pytest.raises(ExecutorError, match=r"slowdown factor must be a finite number > 0, got 0"):
            ex.set_slowdown(0)
        with pytest.raises(ExecutorError, match=r"slowdown schedule must be \[\(seconds, factor\), \.\.\.\]"):
            ex.set_slowdown(schedule=[1, 2])
        with pytest.raises(ExecutorError, match=r"hang seconds must be a number >= 0, got -1"):
            ex.hang(-1)

    def test_hang_holds_runs_until_it_ends(self):
        import time

        import torch

        ex = self._ex()
        ex.hang(0.3)
        t = time.perf_counter()
        r = ex.run(0, torch.ones(1))
        assert time.perf_counter() - t >= 0.28 and r.duration == 0.5
        t = time.perf_counter()
        ex.wait_hang()
        assert time.perf_counter() - t < 0.05  # over
