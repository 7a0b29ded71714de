"""Executors: the interface, CPU and simulated implementations, the factory, NPU detection."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import time

import pytest
import torch
import torch.fx as fx
from torch import nn

import executors
from executors import profiles
from executors.base import ExecutionResult
from executors.cpu import CPUExecutor
from executors.errors import DeviceUnavailableError, ExecutorError
from executors.factory import create, detect
from executors.npu import npu_available
from executors.simulated import SimulatedExecutor, roofline_estimate, to_meta
from graphs.errors import UnknownNameError
from graphs.opgraph import OpGraph
from graphs.partition import Partition, partition

DEVS = ("sim:atlas-200i-a2", "cpu")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.tanh(self.b(h)) + h), h.shape[0]


def _graph():
    torch.manual_seed(0)
    gm = fx.symbolic_trace(Net())
    g = OpGraph(granularity="op", module=gm)
    kinds = {"placeholder": "input", "output": "output", "get_attr": "param"}
    matmul = {"a", "b", "c"}
    for n in gm.graph.nodes:
        kind = kinds.get(n.op, "matmul" if n.name in matmul else "elementwise")
        g.add_node(n.name, kind=kind, op=n.op, flops=10_000 if kind == "matmul" else 100,
                   bytes_in=4096, bytes_out=1024, param_bytes=1000 if kind == "matmul" else 0,
                   dtype="float32", members=(n.name,))
    for n in gm.graph.nodes:
        for a in n.all_input_nodes:
            g.add_edge(a.name, n.name, bytes=1024)
    return gm, g


@pytest.fixture(scope="module")
def split():
    gm, g = _graph()
    # a, relu on the simulated NPU; the rest on the cpu: two partitions
    asg = {n: (DEVS[0] if n in ("a", "relu") else DEVS[1])
           for n, k in g.nodes(data="kind") if k not in ("input", "output", "param")}
    pm = partition(g, asg)
    assert pm.devices == DEVS
    return gm, g, pm


def _run_parts(execs, pm, x):
    """Run every partition on its executor, passing values along; returns model output."""
    values = pm.bind(x)
    results = []
    for p in pm.parts:
        r = execs[p.device].run(p.id, *(values[i] for i in p.inputs), request="r1")
        results.append(r)
        values.update(zip(p.outputs, r.outputs))
    return pm.output_spec.build(values), results


class TestCPUExecutor:
    def test_load_run_unload(self, split):
        gm, g, pm = split
        ex = CPUExecutor()
        for p in pm.parts:
            ex.load(p)
        assert ex.loaded() == (0, 1)
        x = torch.randn(3, 8)
        out, results = _run_parts({d: ex for d in DEVS}, pm, x)
        torch.testing.assert_close(out, gm(x))
        r = results[1]
        assert isinstance(r, ExecutionResult)
        assert (r.device, r.partition, r.request, r.simulated, r.computed) == ("cpu", 1, "r1", False, True)
        assert r.duration == r.wall and r.wall > 0
        assert abs(r.start - time.time()) < 60
        h = ex.health()
        assert h["runs"] == 2 and h["partitions"][0]["runs"] == 1 and h["errors"] == 0
        ex.unload(0)
        assert ex.loaded() == (1,)
        with pytest.raises(ExecutorError, match=r"partition 0 is not loaded; loaded partitions: 1"):
            ex.run(0, x)

    def test_unknown_partition_id(self):
        with pytest.raises(ExecutorError, match=r"cpu: partition 7 is not loaded; loaded partitions: \(none\)"):
            CPUExecutor().run(7)
        with pytest.raises(ExecutorError, match="partition 7 is not loaded"):
            CPUExecutor().unload(7)

    def test_wrong_number_of_inputs(self, split):
        _, _, pm = split
        ex = CPUExecutor()
        ex.load(pm.parts[0])
        with pytest.raises(ExecutorError, match=r"partition 0 takes 1 inputs \(x\), got 2"):
            ex.run(0, torch.ones(1, 8), torch.ones(1, 8))

    def test_load_rejects_non_partitions(self):
        with pytest.raises(ExecutorError, match="needs a graphs.partition.Partition; int has no 'id'"):
            CPUExecutor().load(3)

    def test_failures_are_wrapped_and_counted(self, split):
        _, _, pm = split
        ex = CPUExecutor()
        ex.load(pm.parts[0])
        with pytest.raises(ExecutorError, match=r"cpu: partition 0 failed: RuntimeError"):
            ex.run(0, torch.ones(2, 3))  # wrong feature size for Linear(8, 16)
        assert ex.health()["errors"] == 1


class TestSimulatedExecutor:
    def test_reports_the_cost_models_prediction(self, split):
        from policies.roofline import RooflineCostModel

        gm, g, pm = split
        cluster = profiles.cluster({DEVS[0]: "atlas-200i-a2"})
        cm = RooflineCostModel(cluster)
        ex = create(DEVS[0], cost_model=cm, graph=g)
        p = pm.parts[0]
        ex.load(p)
        expected = sum(cm.node_time(g, n, DEVS[0]) for n in p.nodes)
        assert expected > 0
        x = torch.randn(2, 8)
        r = ex.run(0, x)
        assert r.simulated and r.computed and r.device == DEVS[0]
        assert r.duration == pytest.approx(expected)
        torch.testing.assert_close(r.outputs[0], torch.relu(gm.a(x)))

    def test_predicted_at_load_wins_and_default_is_roofline(self, split):
        _, _, pm = split
        spec = profiles.load("atlas-200i-a2", name="sim:x")
        ex = SimulatedExecutor(spec)
        ex.load(pm.parts[0], predicted=0.125)
        ex.load(pm.parts[1])
        x = torch.randn(2, 8)
        r0 = ex.run(0, x)
        assert r0.duration == 0.125
        r1 = ex.run(1, *r0.outputs)
        assert r1.duration == pytest.approx(roofline_estimate(pm.parts[1], spec))
        assert ex.health()["partitions"][0]["predicted"] == 0.125

    def test_pace_sleeps_the_simulated_time(self, split):
        _, _, pm = split
        spec = profiles.load("atlas-200i-a2", name="sim:x")
        ex = SimulatedExecutor(spec, pace=2.0)
        ex.load(pm.parts[0], predicted=0.1)
        t = time.perf_counter()
        r = ex.run(0, torch.randn(2, 8))
        took = time.perf_counter() - t
        assert r.duration == 0.1
        assert 0.2 <= r.wall <= took < 0.2 + 1.0  # slept up to pace * duration

    def test_paced_devices_overlap_like_real_ones(self, split):
        _, _, pm = split
        exs = [SimulatedExecutor(profiles.load("atlas-200i-a2", name=f"sim:{i}"), pace=1.0) for i in range(2)]
        for ex in exs:
            ex.load(pm.parts[0], predicted=0.3)
        x = torch.randn(2, 8)
        threads = [threading.Thread(target=ex.run, args=(0, x)) for ex in exs]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.perf_counter() - t
        assert 0.3 <= took < 0.55  # two 0.3 s runs side by side, not one after the other

    def test_timing_only_returns_meta_of_the_right_shapes(self, split):
        gm, _, pm = split
        spec = profiles.load("atlas-200i-a2", name="sim:x")
        ex = SimulatedExecutor(spec, timing_only=True)
        for p in pm.parts:
            ex.load(p, predicted=0.01)
        x = torch.randn(5, 8)
        real = {}
        values = {"x": x}
        for p in pm.parts:  # the real values, for shapes
            values.update(zip(p.outputs, p.module(*(values[i] for i in p.inputs))))
        real = dict(values)
        values = {"x": x}
        for p in pm.parts:
            r = ex.run(p.id, *(values[i] for i in p.inputs))
            assert r.computed is False and r.duration == 0.01
            for name, o in zip(p.outputs, r.outputs):
                if isinstance(o, torch.Tensor):
                    assert o.device.type == "meta" and o.shape == real[name].shape
            values.update(zip(p.outputs, r.outputs))
        # the caller's module keeps its real weights
        assert pm.parts[0].module.a.weight.device.type == "cpu"
        assert all(t.device.type == "cpu" for t in gm.parameters())

    def test_to_meta_leaves_the_original(self):
        lin = nn.Linear(3, 3)
        m = to_meta(lin)
        assert m.weight.device.type == "meta" and lin.weight.device.type == "cpu"
        assert to_meta(m) is m

    def test_bad_arguments(self):
        spec = profiles.load("atlas-200i-a2")
        with pytest.raises(ExecutorError, match="pace must be .* got -1"):
            SimulatedExecutor(spec, pace=-1)
        with pytest.raises(ExecutorError, match="needs an executors.devices.DeviceSpec, got str"):
            SimulatedExecutor("atlas")
        with pytest.raises(ExecutorError, match="predicted must be seconds >= 0"):
            SimulatedExecutor(spec).load(_graph_part(), predicted=-2.0)


def _graph_part():
    _, g = _graph()
    return partition(g, {n: "d" for n, k in g.nodes(data="kind") if k not in ("input", "output", "param")}).parts[0]


class TestFactory:
    def test_forms(self):
        assert isinstance(create("cpu"), CPUExecutor)
        ex = create("sim:atlas-200i-a2", pace=0.5)
        assert isinstance(ex, SimulatedExecutor) and ex.device == "sim:atlas-200i-a2" and ex.pace == 0.5
        assert ex.spec.name == "sim:atlas-200i-a2" and ex.spec.kind == "npu"
        spec = profiles.load("jetson-orin-nx")
        assert create("sim:mine", spec=spec).spec.name == "sim:mine"

    @pytest.mark.parametrize("name", ["cpu:0", "cpu:1", "cpu:12"])
    def test_named_cpu_executors(self, name):
        ex = create(name, threads=None)
        assert isinstance(ex, CPUExecutor) and ex.device == name and ex.kind == "cpu"
        gm = fx.symbolic_trace(lambda x: (x * 2,))
        ex.load(Partition(id=0, device=name, module=gm, inputs=("x",), outputs=("mul",)))
        r = ex.run(0, torch.ones(2))
        assert r.device == name and not r.simulated and r.computed
        torch.testing.assert_close(r.outputs[0], torch.full((2,), 2.0))

    def test_named_cpu_options_as_for_cpu(self):
        with pytest.raises(ExecutorError, match=r"cpu:1: unknown option\(s\) pace; valid: threads"):
            create("cpu:1", pace=1.0)

    @pytest.mark.parametrize("name", ["tpu:0", "vulkan", "cuda:x", "sim:", "", "npu:a",
                                      "cpu:x", "cpu:-1", "cpu:", "cpu:1.5", "cpu:²"])
    def test_unknown_device_names(self, name):
        with pytest.raises(UnknownNameError, match=r"unknown device .*valid choices: cpu, cpu:N, cuda:N, "
                                                   r"npu:N, sim:<profile or path>, .*sim:atlas-200i-a2"):
            create(name)

    def test_unknown_profile(self):
        with pytest.raises(UnknownNameError, match="no-such-profile"):
            create("sim:no-such-profile")

    def test_unknown_option(self):
        with pytest.raises(ExecutorError, match=r"cpu: unknown option\(s\) pace; valid: threads"):
            create("cpu", pace=1.0)

    @pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
    def test_cuda_unavailable(self):
        with pytest.raises(DeviceUnavailableError, match="cuda:0: CUDA is not available .*install a CUDA build"):
            create("cuda:0")

    @pytest.mark.skipif(npu_available(), reason="an Ascend NPU is present")
    def test_npu_unavailable(self):
        with pytest.raises(DeviceUnavailableError, match="npu:0: no Ascend NPU is available; install torch-npu"):
            create("npu:0")

    def test_detect(self):
        found = detect()
        assert found[0] == "cpu"
        assert [d for d in found if d.startswith("cuda:")] == \
            [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
        assert all(create(d) is not None for d in found)


class TestNPUDetection:
    def test_not_available_here_and_never_imported(self):
        assert npu_available() is False
        assert "torch_npu" not in sys.modules
        assert executors.npu_available is npu_available

    def test_missing_package_is_not_imported(self, monkeypatch):
        calls = []
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
        monkeypatch.setattr(importlib, "import_module", lambda name, *a: calls.append(name))
        assert npu_available() is False
        assert calls == []  # find_spec said no: torch_npu is never imported

    @pytest.mark.parametrize("exc", [RuntimeError("CANN not found"), ImportError("libascend"), SystemExit(1)])
    def test_broken_install_never_raises(self, monkeypatch, exc):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())

        def boom(name, *a):
            raise exc

        monkeypatch.setattr(importlib, "import_module", boom)
        assert npu_available() is False

    def test_importing_executors_does_not_import_torch_npu_or_ray(self):
        import subprocess

        code = ("import sys, executors; executors.detect(); "
                "print('torch_npu' in sys.modules, 'ray' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             cwd=str(__import__("pathlib").Path(executors.__file__).parent.parent))
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["False", "False"]
