"""Early exits in the Runtime: the shallow path is its own partition with the gate beside
it; easy requests return the exit head's logits and never touch the deep path's devices;
hard ones continue from the hidden state (no recomputation)."""
from __future__ import annotations

import pytest
import torch

from graphs.vision import ExitCNN, ExitViT
from policies.gating import Cascade, EntropyGate, MaxSoftmaxGate, OracleGate, PatienceGate, run_gated
from scheduler import Runtime
from scheduler.errors import RuntimeConfigError

pytestmark = pytest.mark.ray

TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return ExitCNN().eval()


@pytest.fixture(scope="module")
def xs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 1, 28, 28, generator=g) for _ in range(12)]


def _exit_ref(model, x, depth):
    with torch.inference_mode():
        return model.exit_logits(model.forward_until(x, depth), depth)


def _serve_and_check(rt, model, gate, xs, **kw) -> list[int]:
    """Submit ``xs`` at once; every answer and exit depth must equal local ``run_gated``.
    Returns the exit depths (0: the full model)."""
    futs = [rt.submit(x) for x in xs]
    for x, f in zip(xs, futs):
        ref = run_gated(model, gate, x, **kw)
        torch.testing.assert_close(f.result(timeout=60), ref.logits)
        assert f.exit_depth == int(ref.exit_depth)
    return [f.exit_depth for f in futs]


def _partitions_run(rt) -> list[list[int]]:
    """The sorted partition ids each request ran (from the measurements), sorted."""
    ran: dict = {}
    for m in rt.measurements():
        ran.setdefault(m.request, []).append(m.partition)
    return sorted(sorted(v) for v in ran.values())


def test_threshold_zero_every_request_exits_on_the_shallow_device_only(ray_session, cnn, xs):
    # round-robin spreads the combined graph, so the deep path lands on other devices
    with Runtime(cnn, xs[0], devices=TRIO, policy="round-robin", gate=MaxSoftmaxGate(0.0),
                 exit_depth=1) as rt:
        seg = rt.partitioned.parts[0]
        deep_devices = {p.device for p in rt.partitioned.parts[1:]}
        assert deep_devices - {seg.device}, "test needs the deep path on another device"
        futs = [rt.submit(x) for x in xs]
        for x, f in zip(xs, futs):
            torch.testing.assert_close(f.result(timeout=60), _exit_ref(cnn, x, 1))
            assert f.exit_depth == 1
        st = rt.stats()
        assert st.exit_rate == 1.0 and dict(st.exits) == {"exit@1": len(xs)}
        # the devices touched are the shallow partition's only
        assert {m.device for m in rt.measurements()} == {seg.device}
        assert {m.partition for m in rt.measurements()} == {seg.id}
        full = rt.partitioned.full_flops
        assert st.compute_saved == pytest.approx(1 - rt.partitioned.segment_flops[0] / full)
        assert 0 < st.compute_saved < 1


def test_threshold_above_one_no_request_exits_and_results_equal_the_model(ray_session, cnn, xs):
    with Runtime(cnn, xs[0], devices=TRIO, gate=MaxSoftmaxGate(2.0), exit_depth=2) as rt:
        futs = [rt.submit(x) for x in xs[:6]]
        for x, f in zip(xs, futs):
            with torch.inference_mode():
                torch.testing.assert_close(f.result(timeout=60), cnn(x))
            assert f.exit_depth == 0
        st = rt.stats()
        assert st.exit_rate == 0.0 and dict(st.exits) == {"full": 6}
        # every partition ran once per request: the deep path did not recompute the shallow one
        per_request = {}
        for m in rt.measurements():
            per_request.setdefault(m.request, []).append(m.partition)
        assert all(sorted(v) == list(range(len(rt.partitioned.parts))) for v in per_request.values())
        # the ungated cost is paid plus the exit head and gate
        assert st.compute_saved < 0


def test_mixed_routing_matches_the_gates_own_decisions(ray_session, cnn, xs):
    with torch.inference_mode():
        conf = torch.cat([_exit_ref(cnn, x, 1).softmax(1).amax(1) for x in xs])
    thr = float(conf.median())
    gate = MaxSoftmaxGate(thr)
    # paced so that the burst queues: requests travel in groups, and a group splits at the
    # gate (its easy members finish, its hard ones go on together)
    with Runtime(cnn, xs[0], devices=TRIO, policy="round-robin", gate=gate, exit_depth=1,
                 pace=500.0, group_work=1.0) as rt:
        seg = rt.partitioned.parts[0]
        assert {p.device for p in rt.partitioned.parts[1:]} - {seg.device}, \
            "test needs deep partitions on another device"
        paths = _serve_and_check(rt, cnn, gate, xs, depth=1)
        assert 0 < sum(1 for p in paths if p) < len(xs)
        st = rt.stats()
        assert st.group_size > 1
        # hard requests went on to the deep path's devices after the driver saw the gate
        assert rt._dispatcher.continued >= 1
        # every request ran the segment once, and the hard ones the deep path once
        every = list(range(len(rt.partitioned.parts)))
        assert _partitions_run(rt) == sorted([0] if p else every for p in paths)
        assert st.exit_rate == pytest.approx(sum(1 for p in paths if p) / len(xs))
        assert set(st.latency_by_path) == {"exit@1", "full"}


def test_deep_path_on_the_shallow_device_goes_on_inside_the_actor(ray_session, cnn, xs):
    """With the whole model on one device, a group's deep call is sent with its shallow one
    (filtered by the gate's decisions, the hidden state kept in the actor): no second phase
    from the driver, every partition run once per request that needs it, results as
    run_gated."""
    with torch.inference_mode():
        conf = torch.cat([_exit_ref(cnn, x, 1).softmax(1).amax(1) for x in xs])
    gate = MaxSoftmaxGate(float(conf.median()))
    with Runtime(cnn, xs[0], devices=["sim:atlas-200i-a2"], gate=gate, exit_depth=1,
                 pace=500.0, group_work=1.0) as rt:
        assert len({p.device for p in rt.partitioned.parts}) == 1
        paths = _serve_and_check(rt, cnn, gate, xs, depth=1)
        assert 0 < sum(1 for p in paths if p) < len(xs)
        assert rt._dispatcher.continued == 0 and rt.stats().group_size > 1
        every = list(range(len(rt.partitioned.parts)))
        assert _partitions_run(rt) == sorted([0] if p else every for p in paths)
        st = rt.stats()
        assert st.exit_rate == pytest.approx(sum(1 for p in paths if p) / len(xs))
        # compute saved counts only what ran: easy requests the segment, hard ones all
        seg, full = rt.partitioned.segment_flops[0], rt.partitioned.full_flops
        used = sum(seg if p else seg + rt.partitioned.deep_flops for p in paths)
        assert st.compute_saved == pytest.approx(1 - used / (len(xs) * full), rel=1e-6)


def test_cascade_leaves_at_the_first_passing_exit(ray_session):
    torch.manual_seed(0)
    vit = ExitViT(depth=3).eval()
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(1, 1, 28, 28, generator=g) for _ in range(12)]
    with torch.inference_mode():
        c1 = torch.cat([_exit_ref(vit, x, 1).softmax(1).amax(1) for x in xs])
    cascade = Cascade({1: MaxSoftmaxGate(float(c1.quantile(0.7))), 2: EntropyGate(-1.5)})
    with Runtime(vit, xs[0], devices=TRIO[:2], gate=cascade) as rt:
        assert [e.depth for e in rt.partitioned.exits] == [1, 2]
        futs = [rt.submit(x) for x in xs]
        for x, f in zip(xs, futs):
            ref = run_gated(vit, cascade, x)
            torch.testing.assert_close(f.result(timeout=60), ref.logits)
            assert f.exit_depth == int(ref.exit_depth)
        assert len({f.exit_depth for f in futs}) >= 2, "thresholds should route requests differently"


def test_a_cascade_on_one_device_decides_every_exit_without_a_round_trip(ray_session):
    torch.manual_seed(0)
    vit = ExitViT(depth=3).eval()
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(1, 1, 28, 28, generator=g) for _ in range(16)]
    with torch.inference_mode():
        c1 = torch.cat([_exit_ref(vit, x, 1).softmax(1).amax(1) for x in xs])
        c2 = torch.cat([_exit_ref(vit, x, 2).softmax(1).amax(1) for x in xs])
    cascade = Cascade({1: MaxSoftmaxGate(float(c1.quantile(0.7))),
                       2: MaxSoftmaxGate(float(c2.quantile(0.5)))})
    with Runtime(vit, xs[0], devices=["sim:jetson-orin-nx"], gate=cascade, pace=200.0,
                 group_work=100.0) as rt:
        paths = _serve_and_check(rt, vit, cascade, xs)
        assert len(set(paths)) == 3, "thresholds should use every path"
        assert rt._dispatcher.continued == 0 and rt.stats().group_size > 1
        # each request ran the segments up to where it left (all, if it did not), once each
        want = {1: [0], 2: [0, 1], 0: list(range(len(rt.partitioned.parts)))}
        assert _partitions_run(rt) == sorted(want[p] for p in paths)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(gate=MaxSoftmaxGate(0.5)), RuntimeConfigError, r"needs exit_depth"),
    (dict(gate=MaxSoftmaxGate(0.5), exit_depth=7), RuntimeConfigError, r"no exit head at depth 7"),
    (dict(exit_depth=1), RuntimeConfigError, r"exit_depth goes with gate"),
    (dict(gate="max_softmax", exit_depth=1), RuntimeConfigError, r"gate must be a policies.gating.Gate"),
    (dict(gate=OracleGate(), exit_depth=1), NotImplementedError, r"needs the labels"),
    (dict(gate=PatienceGate(2), exit_depth=1), NotImplementedError, r"earlier exits"),
    (dict(gate=Cascade({1: MaxSoftmaxGate(0.5)}), exit_depth=1), RuntimeConfigError, r"Cascade names"),
])
def test_bad_gate_configuration_is_a_clear_error_before_any_work(cnn, kwargs, err, match):
    with pytest.raises(err, match=match):
        Runtime(cnn, torch.randn(1, 1, 28, 28), devices=TRIO, **kwargs)


def test_gate_needs_an_exit_model():
    with pytest.raises(RuntimeConfigError, match=r"needs an exit model .* is not an exit model; wrap it"):
        Runtime(torch.nn.Linear(4, 2), torch.randn(1, 4), devices=TRIO, gate=MaxSoftmaxGate(0.5),
                exit_depth=1)


def test_the_reference_decoder_exits_on_its_next_token_confidence(ray_session):
    """Decoder layers need the rotary tables: segments run through the exit model's own
    forward_until / run_stages; the gate decides on the last position's logits."""
    from graphs.models import example_inputs, pangu_embedded
    from policies.gating import attach_exits

    torch.manual_seed(0)
    dm = attach_exits(pangu_embedded("tiny"), [1]).eval()
    ids, = example_inputs(dm.model, seq_len=8)
    g = torch.Generator().manual_seed(3)
    reqs = [torch.randint(0, dm.num_classes, ids.shape, generator=g) for _ in range(8)]
    with torch.inference_mode():
        conf = [float(dm.exit_logits(dm.forward_until(r, 1), 1)[:, -1].softmax(-1).amax()) for r in reqs]
    thr = sorted(conf)[len(conf) // 2]
    with Runtime(dm, (ids,), devices=TRIO[:2], gate=MaxSoftmaxGate(thr), exit_depth=1) as rt:
        futs = [rt.submit(r) for r in reqs]
        for r, c, f in zip(reqs, conf, futs):
            out = f.result(timeout=60)
            with torch.inference_mode():
                ref = dm.exit_logits(dm.forward_until(r, 1), 1) if c >= thr else dm(r)
            assert f.exit_depth == (1 if c >= thr else 0)
            torch.testing.assert_close(out, ref)


def test_the_text_classifier_with_a_padding_mask_runs_gated_equal_to_local(ray_session):
    """A state that carries a padding mask: the first segment makes (hidden, mask), later
    segments and the deep path read the mask from it; every request's answer and exit equal
    local run_gated, with the parts spread over two devices."""
    from graphs.text import ExitTextClassifier
    from policies.gating import Cascade, run_gated

    torch.manual_seed(0)
    m = ExitTextClassifier(dim=32, heads=4, depth=3, max_len=16, num_classes=4).eval()
    g = torch.Generator().manual_seed(5)
    reqs = []
    for _ in range(10):
        ids = torch.zeros(1, 16, dtype=torch.long)
        k = int(torch.randint(1, 17, (1,), generator=g))
        ids[0, :k] = torch.randint(1, 257, (k,), generator=g)
        reqs.append(ids)
    with torch.inference_mode():
        conf = torch.stack([m.exit_logits(m.forward_until(r, 1), 1).softmax(-1).amax() for r in reqs])
    thr = float(conf.sort().values[4:6].mean())
    gates = Cascade({1: MaxSoftmaxGate(thr), 2: MaxSoftmaxGate(thr)})
    refs = [run_gated(m, gates, r) for r in reqs]
    assert len({int(r.exit_depth) for r in refs}) > 1  # a mixed routing
    with Runtime(m, (reqs[0],), devices=TRIO[:2], gate=gates) as rt:
        assert len(rt.partitioned.parts) >= 3
        futs = [rt.submit(r) for r in reqs]
        for ref, f in zip(refs, futs):
            torch.testing.assert_close(f.result(timeout=60), ref.logits)
            assert f.exit_depth == int(ref.exit_depth)
