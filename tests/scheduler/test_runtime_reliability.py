"""Runtime reliability: bad inputs and bad configurations get clear errors while the runtime
keeps serving; an executor actor killed mid-stream is restarted and every request still
completes exactly once with the right result."""
from __future__ import annotations

import math
import threading
from collections import Counter

import pytest
import torch

from graphs.errors import UnknownNameError
from policies.errors import PolicyError
from scheduler.errors import InputSignatureError, RequestFailed, RuntimeConfigError
from scheduler.runtime import Runtime

TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]


@pytest.fixture(scope="module")
def tiny():
    import graphs.models as M

    torch.manual_seed(0)
    model = M.pangu_embedded("tiny")
    return model, M.example_inputs(model, batch=1, seq_len=16)


def _ref(model, *x):
    with torch.no_grad():
        return model(*x)


# ------------------------------------------------------------- bad configuration
class _NotACostModel:
    pass


BAD_CONFIGS = [
    # (id, kwargs overriding the good ones, error type, message pattern)
    ("model-not-module", {"model": lambda x: x}, RuntimeConfigError, "model must be a torch.nn.Module"),
    ("example-not-tensor", {"example_inputs": [1, 2]}, RuntimeConfigError, r"example_inputs\[0\] is a int"),
    ("example-empty", {"example_inputs": ()}, RuntimeConfigError, "non-empty tuple of tensors"),
    ("devices-empty", {"devices": []}, RuntimeConfigError, "non-empty list of device names"),
    ("devices-string", {"devices": "cpu"}, RuntimeConfigError, "non-empty list of device names"),
    ("device-unknown-form", {"devices": ["tpu:0"]}, UnknownNameError, r"unknown device 'tpu:0'.*cuda:<N>"),
    ("device-not-string", {"devices": [3]}, RuntimeConfigError, "device name must be a non-empty string, got 3"),
    ("device-duplicate", {"devices": TRIO + TRIO[:1]}, RuntimeConfigError, "listed twice: sim:atlas-200i-a2"),
    ("sim-profile-unknown", {"devices": ["sim:no-such-board"]}, UnknownNameError, "no-such-board"),
    ("policy-unknown", {"policy": "fastest-ever"}, UnknownNameError, r"unknown policy 'fastest-ever'.*heft"),
    ("policy-bad-type", {"policy": 42}, RuntimeConfigError, "policy must be a policy name or a policies.base.Policy"),
    ("policy-option-unknown", {"policy_options": {"speed": 11}}, PolicyError, "unknown option.*'speed'"),
    ("max-in-flight-zero", {"max_in_flight": 0}, RuntimeConfigError, "max_in_flight must be an int >= 1, got 0"),
    ("max-in-flight-float", {"max_in_flight": 2.5}, RuntimeConfigError, "max_in_flight must be an int >= 1, got 2.5"),
    ("max-group-zero", {"max_group": 0}, RuntimeConfigError, "max_group must be an int >= 1, got 0"),
    ("group-work-negative", {"group_work": -1.0}, RuntimeConfigError, "group_work must be a finite number of seconds > 0, got -1.0"),
    ("submit-timeout-negative", {"submit_timeout": -1}, RuntimeConfigError, "submit_timeout must be None or"),
    ("request-timeout-zero", {"request_timeout": 0}, RuntimeConfigError, "request_timeout must be None or"),
    ("pace-nan", {"pace": math.nan}, RuntimeConfigError, "pace must be None or a finite number"),
    ("max-retries-negative", {"max_retries": -1}, RuntimeConfigError, "max_retries must be an int >= 0"),
    ("max-restarts-string", {"max_restarts": "x"}, RuntimeConfigError, "max_restarts must be an int >= 0"),
    ("history-zero", {"history": 0}, RuntimeConfigError, "history must be an int >= 1"),
    ("recovery-timeout-zero", {"recovery_timeout": 0}, RuntimeConfigError, "recovery_timeout must be"),
    ("trace-bad-type", {"trace": 5}, RuntimeConfigError, "trace must be a bool or a file path"),
    ("granularity-unknown", {"granularity": "block"}, UnknownNameError, "unknown granularity 'block'"),
    ("cost-model-bad-type", {"cost_model": _NotACostModel()}, RuntimeConfigError,
     "cost_model must be a policies.cost.CostModel, got _NotACostModel"),
    ("dynamic-dims-bad-input", {"dynamic_dims": {3: [1]}}, RuntimeConfigError, "dynamic_dims names input 3"),
    ("dynamic-dims-bad-dim", {"dynamic_dims": {0: [5]}}, RuntimeConfigError, r"dynamic_dims\[0\] names dimension 5"),
    ("gate-on-a-model-without-exits", {"gate": object()}, RuntimeConfigError,
     r"gate needs an exit model .* is not an exit model; wrap it with graphs.exits.LayeredExits"),
]


@pytest.mark.parametrize("name,override,err,match", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_configuration_is_a_clear_error(tiny, name, override, err, match):
    import ray

    model, x = tiny
    kw = {"model": model, "example_inputs": x, "devices": TRIO, **override}
    was_up = ray.is_initialized()
    with pytest.raises(err, match=match):
        Runtime(**kw)
    assert ray.is_initialized() == was_up  # nothing started for a rejected configuration


def test_at_least_twenty_kinds_of_bad_configuration():
    assert len(BAD_CONFIGS) >= 20


# --------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def rt(ray_session, tiny):
    model, x = tiny
    with Runtime(model, x, devices=TRIO, pace=20.0, max_in_flight=8, recovery_timeout=60) as r:
        yield r


def _bad_inputs(x):
    ids = x[0]
    return [
        ("none", (), "expected 1 input"),
        ("two", (ids, ids), "expected 1 input.*got 2"),
        ("list", (ids.tolist(),), "expected a torch.Tensor int64\\[1, 16\\], got list"),
        ("numpy", (ids.numpy(),), "got ndarray"),
        ("None", (None,), "got NoneType"),
        ("int", (3,), "got int"),
        ("float32", (ids.float(),), "dtype float32, expected int64"),
        ("int32", (ids.int(),), "dtype int32, expected int64"),
        ("rank1", (ids[0],), "rank 1 .*expected rank 2"),
        ("rank3", (ids[None],), "rank 3 .*expected rank 2"),
        ("batch2", (ids.repeat(2, 1),), "dimension 0 is 2, expected 1"),
        ("seq17", (torch.zeros(1, 17, dtype=torch.long),), "dimension 1 is 17, expected 16"),
        ("meta", (torch.empty(1, 16, dtype=torch.long, device="meta"),), "meta tensor"),
    ]


@pytest.mark.ray
def test_bad_inputs_rejected_and_runtime_keeps_serving(rt, tiny):
    model, x = tiny
    bad = _bad_inputs(x)
    good = rt.submit(*x)  # in flight while the bad ones are rejected
    for name, inputs, match in bad:
        with pytest.raises(InputSignatureError, match=match):
            rt.submit(*inputs)
    with pytest.raises(RuntimeConfigError, match="request_timeout must be None or"):
        rt.submit(*x, request_timeout=-1)
    torch.testing.assert_close(good.result(timeout=60), _ref(model, *x))
    torch.testing.assert_close(rt.run(*x, timeout=60), _ref(model, *x))
    s = rt.stats()
    assert s.failed == 0 and s.in_flight == 0
    assert len(bad) + 1 + len(BAD_CONFIGS) >= 20 + 20


# ------------------------------------------------------------------ actor failure
@pytest.mark.ray
def test_actor_killed_mid_stream_every_request_completes_once(rt, tiny):
    import ray

    model, x = tiny
    gen = torch.Generator().manual_seed(7)
    xs = [(torch.randint(0, 256, x[0].shape, generator=gen),) for _ in range(24)]
    refs = [_ref(model, *xi) for xi in xs]
    rt._dispatcher.drain(30)
    rt.reset_stats()
    done = Counter()
    lock = threading.Lock()

    def count(i):
        def cb(_f):
            with lock:
                done[i] += 1
        return cb

    victim = max(rt._actors, key=lambda d: sum(rt.predicted[p.id] for p in rt.partitioned.parts
                                               if p.device == d))
    pid_before = ray.get(rt._actors[victim].ping.remote())["pid"]
    futs = []
    for i, xi in enumerate(xs):
        f = rt.submit(*xi)
        f.add_done_callback(count(i))
        futs.append(f)
        if i == 8:
            ray.kill(rt._actors[victim], no_restart=False)
    for f, r in zip(futs, refs):
        torch.testing.assert_close(f.result(timeout=120), r)
    assert all(done[i] == 1 for i in range(len(xs)))
    s = rt.stats()
    assert s.completed == len(xs) and s.failed == 0 and s.retried >= 1
    rids = [r.request for r in rt.requests()]
    assert len(rids) == len(set(rids)) == len(xs)  # each request finished exactly once
    assert ray.get(rt._actors[victim].ping.remote())["pid"] != pid_before  # restarted
    torch.testing.assert_close(rt.run(*x, timeout=60), _ref(model, *x))


def _wait_dead(actor, within: float = 30.0) -> None:
    """Until calls to ``actor`` fail with a RayActorError (the kill has taken effect)."""
    import time

    import ray

    end = time.monotonic() + within
    while True:
        try:
            ray.get(actor.ping.remote(), timeout=within)
        except ray.exceptions.RayActorError:
            return
        assert time.monotonic() < end, f"the actor still answers {within:g} s after ray.kill"
        time.sleep(0.01)


@pytest.mark.ray
def test_actor_that_cannot_restart_fails_requests_clearly(ray_session, tiny):
    import ray

    model, x = tiny
    with Runtime(model, x, devices=["sim:edge-cpu-a76"], policy="single", max_restarts=0,
                 recovery_timeout=2.0) as r:
        torch.testing.assert_close(r.run(*x, timeout=60), _ref(model, *x))
        actor = r._actors["sim:edge-cpu-a76"]
        ray.kill(actor, no_restart=True)
        _wait_dead(actor)  # ray.kill is asynchronous: a call sent at once may still be served
        f = r.submit(*x)
        with pytest.raises(RequestFailed, match="recovery after .* failed"):
            f.result(timeout=60)
        assert r.stats().failed == 1


@pytest.mark.ray
def test_partition_error_fails_that_request_only_without_retry(rt, tiny):
    model, x = tiny
    rt._dispatcher.drain(30)
    before = rt.stats()
    ids = torch.full_like(x[0], 10_000)  # token ids past the vocabulary: refused at submit,
    with pytest.raises(InputSignatureError, match="out of range"):
        rt.submit(ids)
    values = rt.partitioned.bind(ids)  # and past that check, they fail in the actor
    bad = rt._dispatcher.submit(tuple(values[n] for n in rt.partitioned.input_names))
    good = rt.submit(*x)
    with pytest.raises(RequestFailed, match=r"after 1 attempt\(s\).*(index|Index)"):
        bad.result(timeout=60)
    torch.testing.assert_close(good.result(timeout=60), _ref(model, *x))
    after = rt.stats()
    assert after.failed == before.failed + 1 and after.retried == before.retried
