"""CUDAExecutor on a real GPU (skipped cleanly where none is present)."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

from executors.factory import create
from graphs.opgraph import OpGraph
from graphs.partition import partition

pytestmark = pytest.mark.gpu


def _split():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    gm = fx.symbolic_trace(model)
    g = OpGraph(granularity="op", module=gm)
    for n in gm.graph.nodes:
        kind = {"placeholder": "input", "output": "output"}.get(n.op, "other")
        g.add_node(n.name, kind=kind, members=(n.name,))
    pm = partition(g, {"_0": "cuda:0", "_1": "cuda:0", "_2": "cpu"})
    return gm, pm


def test_cuda_executor_matches_cpu_and_returns_cpu_tensors():
    gm, pm = _split()
    ex = create("cuda:0")
    ex.load(pm.parts[0])
    x = torch.randn(4, 16)
    r = ex.run(0, x)
    assert r.device == "cuda:0" and r.computed and not r.simulated and r.duration > 0
    assert all(o.device.type == "cpu" for o in r.outputs)
    torch.testing.assert_close(r.outputs[0], pm.parts[0].module(x)[0], rtol=1e-4, atol=1e-4)
    # the caller's module stays on the CPU
    assert all(p.device.type == "cpu" for p in pm.parts[0].module.parameters())
    cpu = create("cpu")
    cpu.load(pm.parts[1])
    torch.testing.assert_close(cpu.run(1, *r.outputs).outputs[0], gm(x), rtol=1e-4, atol=1e-4)


def test_cuda_index_out_of_range():
    from executors.errors import DeviceUnavailableError

    n = torch.cuda.device_count()
    with pytest.raises(DeviceUnavailableError, match=f"cuda:{n}: no such GPU"):
        create(f"cuda:{n}")
