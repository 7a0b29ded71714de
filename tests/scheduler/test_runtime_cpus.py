"""Runtime on several named CPU executors (``cpu:0``, ``cpu:1``): a plan split across them
serves the unpartitioned model's outputs, each executor in its own actor process."""
from __future__ import annotations

import os

import pytest
import torch

from scheduler.runtime import Runtime

CPUS = ["cpu:0", "cpu:1"]


@pytest.fixture(scope="module")
def tiny():
    import graphs.models as M

    torch.manual_seed(0)
    model = M.pangu_embedded("tiny")
    return model, M.example_inputs(model, batch=1, seq_len=16)


def _ref(model, *x):
    with torch.no_grad():
        return model(*x)


@pytest.mark.ray
@pytest.mark.parametrize("policy", ["pipeline", "round-robin"])
def test_split_across_two_cpu_executors_serves_the_model(ray_session, tiny, policy):
    ray = ray_session
    model, x = tiny
    vocab = model.config.vocab
    with Runtime(model, x, devices=CPUS, policy=policy) as rt:
        assert rt.devices == tuple(CPUS)
        assert {p.device for p in rt.partitioned.parts} == set(CPUS)  # both hold partitions
        assert len(rt.partitioned.parts) >= 2
        assert all(rt._actor_kwargs(d)["threads"] == 1 for d in CPUS)  # each process: 1 thread
        inputs = [((x[0] + k) % vocab,) for k in range(6)]
        outs = rt.map(inputs, timeout=120)
        for xi, y in zip(inputs, outs):
            torch.testing.assert_close(y, _ref(model, *xi))

        health = {d: ray.get(rt._actors[d].health.remote(), timeout=30) for d in CPUS}
        pids = {d: h["pid"] for d, h in health.items()}
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        for d, h in health.items():
            assert h["device"] == d and h["kind"] == "cpu" and h["errors"] == 0
            assert set(h["loaded"]) == {p.id for p in rt.partitioned.parts if p.device == d}
            assert h["runs"] > 0

        ms = rt.measurements()
        assert {m.device for m in ms} == set(CPUS)
        assert not any(m.simulated for m in ms)  # real executors: measured wall time
        st = rt.stats()
        assert st.completed == len(inputs) and st.failed == 0
        assert st.busy_simulated == {} and st.energy_per_request is None


@pytest.mark.ray
def test_cpu_and_cpu_0_are_two_executors(ray_session, tiny):
    ray = ray_session
    model, x = tiny
    with Runtime(model, x, devices=["cpu", "cpu:0"], policy="round-robin") as rt:
        torch.testing.assert_close(rt.run(*x, timeout=60), _ref(model, *x))
        pings = [ray.get(rt._actors[d].ping.remote(), timeout=30) for d in ("cpu", "cpu:0")]
        assert [p["device"] for p in pings] == ["cpu", "cpu:0"]
        assert pings[0]["pid"] != pings[1]["pid"]
