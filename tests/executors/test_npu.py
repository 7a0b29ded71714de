"""NPUExecutor on a real Ascend NPU (skipped cleanly where torch-npu or the NPU is missing)."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

from executors.factory import create, detect
from graphs.opgraph import OpGraph
from graphs.partition import partition

pytestmark = pytest.mark.npu


def test_npu_executor_matches_cpu_and_returns_cpu_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8))
    gm = fx.symbolic_trace(model)
    g = OpGraph(granularity="op", module=gm)
    for n in gm.graph.nodes:
        kind = {"placeholder": "input", "output": "output"}.get(n.op, "other")
        g.add_node(n.name, kind=kind, members=(n.name,))
    pm = partition(g, {"_0": "npu:0", "_1": "npu:0", "_2": "npu:0"})
    ex = create("npu:0")
    ex.load(pm.parts[0])
    x = torch.randn(4, 16)
    r = ex.run(0, x)
    assert r.device == "npu:0" and r.computed and r.duration > 0
    assert all(o.device.type == "cpu" for o in r.outputs)
    torch.testing.assert_close(r.outputs[0], gm(x), rtol=1e-3, atol=1e-3)
    assert "npu:0" in detect()
