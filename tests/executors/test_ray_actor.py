"""executors.ray_actor: one executor per device in a Ray actor; tensors flow as object refs."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

from executors.errors import ExecutorError
from executors.ray_actor import SIM_RESOURCE_SHARE, ExecutorActor, ExecutorHost, actor_options, sim_resource
from graphs.opgraph import OpGraph
from graphs.partition import partition

pytestmark = pytest.mark.ray


class TwoOut(nn.Module):
    """Partition 0 exports two values; the cpu partition needs both, the jetson one only one."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        g = torch.relu(h)
        y = self.b(g) * h
        return self.c(g) + y


@pytest.fixture(scope="module")
def pm():
    torch.manual_seed(0)
    gm = fx.symbolic_trace(TwoOut())
    g = OpGraph(granularity="op", module=gm)
    kinds = {"placeholder": "input", "output": "output"}
    for n in gm.graph.nodes:
        g.add_node(n.name, kind=kinds.get(n.op, "other"), flops=1, members=(n.name,))
    dev = {"a": "sim:atlas-200i-a2", "relu": "sim:atlas-200i-a2", "b": "cpu", "mul": "cpu",
           "c": "sim:jetson-orin-nx", "add": "cpu"}
    out = partition(g, dev)
    # add joins the cpu region of b and mul: no cycle, since c depends only on partition 0
    assert out.devices == ("sim:atlas-200i-a2", "sim:jetson-orin-nx", "cpu")
    return gm, out


def test_actor_options():
    assert actor_options("cpu") == {"num_cpus": 0}
    assert actor_options("cuda:3", num_cpus=1) == {"num_cpus": 1, "num_gpus": 1}
    assert actor_options("npu:0") == {"num_cpus": 0, "resources": {"NPU": 1}}
    assert sim_resource("sim:a/b c") == "sim_a_b_c"
    assert actor_options("sim:x", cluster_resources={"sim_x": 2.0}) == {"num_cpus": 0, "resources": {"sim_x": SIM_RESOURCE_SHARE}}
    assert actor_options("sim:x", cluster_resources={"CPU": 2.0}) == {"num_cpus": 0}


def test_host_in_process_errors():
    h = ExecutorHost("cpu", threads=None)
    with pytest.raises(ExecutorError, match=r"partition 5 is not loaded; loaded partitions: \(none\)"):
        h.run(5)


@pytest.fixture(scope="module")
def actors(ray_session, pm):
    """One actor per device, started once for this module (actor start-up dominates)."""
    ray = ray_session
    _, model = pm
    out = {}
    for d in sorted(set(model.devices)):
        kw = {"pace": 1.0} if d == "sim:jetson-orin-nx" else {}
        out[d] = ExecutorActor.options(**actor_options(d)).remote(d, **kw)
    yield out
    for a in out.values():
        ray.kill(a)


def test_actor_round_trip_and_split_refs(ray_session, pm, actors):
    ray = ray_session
    gm, model = pm
    ray.get([actors[p.device].load.remote(p, 0.01) for p in model.parts])
    assert ray.get(actors["cpu"].ping.remote())["device"] == "cpu"
    xs = [torch.randn(3, 4), torch.randn(3, 4)]
    # a group of two requests; every output column is its own object ref; refs go actor to
    # actor, never through ray.get here
    refs = {"x": ray.put(xs)}
    metas = []
    for p in model.parts:
        n = len(p.outputs)
        out = actors[p.device].run_group.options(num_returns=n + 1).remote(
            p.id, (("req", 7), ("req", 8)), None, 0, *(refs[i] for i in p.inputs))
        assert len(out) == n + 1
        refs.update(zip(p.outputs, out[:n]))
        metas.append(out[n])
    assert len(model.parts[0].outputs) == 2  # h and g travel as two separate objects
    metas = ray.get(metas)
    for p, col in zip(model.parts, metas):
        assert [m.request for m in col] == [("req", 7), ("req", 8)]
        for m in col:
            assert m.outputs == () and m.partition == p.id and m.device == p.device
            assert m.simulated == p.device.startswith("sim:")
            if m.simulated:
                assert m.duration == 0.01
    columns = {name: ray.get(refs[name]) for name in model.output_spec.names}
    for j, x in enumerate(xs):  # each request's result equals its own local run
        with torch.no_grad():
            torch.testing.assert_close(
                model.output_spec.build({k: v[j] for k, v in columns.items()}), gm(x))
    x = xs[0]
    # run() ships the whole result, outputs included, equal to the local run
    r = ray.get(actors[model.parts[0].device].run.remote(0, x))
    local = model.parts[0].module(x)
    for a, b in zip(r.outputs, local):
        torch.testing.assert_close(a, b)
    h = ray.get(actors["cpu"].health.remote())
    assert h["loaded"] == (2,) and h["runs"] == 2 and h["device"] == "cpu"
    with pytest.raises(ExecutorError, match=r"partition 0 is not loaded; loaded partitions: 2"):
        ray.get(actors["cpu"].run.remote(0, x))
    ray.get(actors["cpu"].unload.remote(2))
    assert ray.get(actors["cpu"].loaded.remote()) == ()


def test_run_group_isolates_a_failing_request_and_honours_select():
    from executors.ray_actor import ExecutorHost, MemberError
    from graphs.partition import Partition

    h = ExecutorHost("cpu")
    gm = torch.fx.symbolic_trace(lambda x: (x.view(2, 2) * 2,))
    h.load(Partition(0, "cpu", gm, ("x",), ("mul",)))
    gm2 = torch.fx.symbolic_trace(lambda y: (y + 1,))
    h.load(Partition(1, "cpu", gm2, ("y",), ("add",)))
    xs = [torch.ones(4), torch.ones(3), torch.zeros(4)]  # the second cannot be viewed as 2x2
    out, meta = h.run_group(0, ("a", "b", "c"), None, 0, xs)
    torch.testing.assert_close(out[0], torch.full((2, 2), 2.0))
    torch.testing.assert_close(out[2], torch.zeros(2, 2))
    assert isinstance(out[1], MemberError) and meta[1] is out[1]
    assert out[1].summary.startswith("cpu: partition 0 failed: RuntimeError: shape '[2, 2]' is invalid")
    assert [m.request for m in (meta[0], meta[2])] == ["a", "c"]
    # a later partition passes the error on, and runs only the selected positions
    out2, meta2 = h.run_group(1, ("a", "b", "c"), (1, 2), 0, out)
    assert out2[0] is None and meta2[0] is None  # not selected
    assert isinstance(out2[1], MemberError) and out2[1].message == out[1].message
    torch.testing.assert_close(out2[2], torch.ones(2, 2))
    assert h.executor.health()["runs"] == 3  # a, c, then c again: the failed one did not run
    # a skip column (an exit's decisions): true members are not run, an error passes on
    out3, meta3 = h.run_group(1, ("a", "b", "c"), None, 1, [True, out[1], False], out)
    assert out3[0] is None and meta3[0] is None
    assert isinstance(out3[1], MemberError)
    torch.testing.assert_close(out3[2], torch.ones(2, 2))
    assert h.executor.health()["runs"] == 4
    with pytest.raises(ExecutorError, match="partition 5 is not loaded"):
        h.run_group(5, ("a",), None, 0, [torch.ones(1)])


def test_ping_answers_while_a_paced_run_is_busy(ray_session, pm, actors):
    ray = ray_session
    _, model = pm
    p = model.parts[0]
    a = actors["sim:jetson-orin-nx"]  # built with pace=1.0
    ray.get(a.load.remote(p, 1.0))  # one simulated second, slept in real time
    busy = a.run.remote(p.id, torch.randn(2, 4))
    ping = a.ping.remote()
    ready, _ = ray.wait([ping], timeout=0.8)
    assert ready == [ping]  # the control group answers during the run
    assert not ray.wait([busy], timeout=0)[0]
    r = ray.get(busy)
    assert r.duration == 1.0 and r.wall >= 1.0
    ray.get(a.unload.remote(p.id))


def test_kept_columns_pass_between_calls_and_a_lost_one_is_state_lost():
    from executors.errors import ExecutorStateLost
    from executors.ray_actor import ExecutorHost, Kept
    from graphs.partition import Partition

    h = ExecutorHost("cpu")
    h.load(Partition(0, "cpu", torch.fx.symbolic_trace(lambda x: (x * 3, x.sum() > 0)), ("x",), ("h", "go")))
    h.load(Partition(1, "cpu", torch.fx.symbolic_trace(lambda h: (h + 1,)), ("h",), ("y",)))
    xs = [torch.ones(2), -torch.ones(2)]
    # the first call keeps h (not shipped: only the next call reads it) and ships go
    h_col, go_col, meta = h.run_group(0, ("a", "b"), None, 0, xs, keep=("k", ("h",), ("h",)))
    assert h_col is None and [bool(g) for g in go_col] == [True, False]
    y, meta2 = h.run_group(1, ("a", "b"), None, 1, go_col, Kept("k", "h"), drop="k")
    assert y[0] is None  # its gate passed: not run
    torch.testing.assert_close(y[1], -torch.ones(2) * 3 + 1)
    assert meta2[0] is None and meta2[1].request == "b"
    with pytest.raises(ExecutorStateLost, match="'h' an earlier call left here is gone"):
        h.run_group(1, ("a", "b"), None, 0, Kept("k", "h"))  # dropped after its last reader
