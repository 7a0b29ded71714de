"""Soak: 10,000 small requests through three partitions on three simulated devices complete
with bounded memory, no leaked futures, request records or Ray object references."""
from __future__ import annotations

import gc
import time

import pytest
import torch
from torch import nn

from scheduler.runtime import Runtime

TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]
N = 10_000


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.fc(x))


class ThreeLayers(nn.Module):
    """Three small blocks: at layer granularity, round-robin puts one on each device."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block() for _ in range(3)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _driver_refs() -> int:
    import ray

    return len(ray._private.worker.global_worker.core_worker.get_all_reference_counts())


@pytest.mark.ray
@pytest.mark.slow
def test_soak_ten_thousand_requests_bounded(ray_session):
    torch.manual_seed(0)
    model = ThreeLayers().eval()
    x = torch.randn(1, 8)
    with torch.no_grad():
        ref = model(x)
    with Runtime(model, (x,), devices=TRIO, policy="round-robin", max_in_flight=64,
                 history=1000) as rt:
        assert len(rt.partitioned) == 3 and len(set(rt.partitioned.devices)) == 3
        refs0 = _driver_refs()
        rss = {}
        window: list = []
        t0 = time.perf_counter()
        for i in range(N):
            window.append(rt.submit(x))
            if len(window) >= 64:  # keep only a window of futures alive, like a server would
                for f in window[:32]:
                    torch.testing.assert_close(f.result(timeout=60), ref)
                del window[:32]
            if i + 1 in (2000, N):
                gc.collect()
                rss[i + 1] = _rss_mib()
        for f in window:
            torch.testing.assert_close(f.result(timeout=60), ref)
        took = time.perf_counter() - t0
        del window
        assert rt._dispatcher.drain(30)
        s = rt.stats()
        assert s.count == N and s.completed == N and s.failed == s.cancelled == s.timed_out == 0
        # nothing left behind: no request state, bounded records, no Ray references
        d = rt._dispatcher
        assert d._requests == {} and d._deadlines == [] and s.in_flight == 0
        assert len(rt.requests()) == 1000 and len(rt.measurements()) == 1000
        gc.collect()
        deadline = time.time() + 10
        while _driver_refs() > refs0 + 5 and time.time() < deadline:
            time.sleep(0.1)
        assert _driver_refs() <= refs0 + 5
        # memory: the last 8,000 requests grew the driver by less than 64 MiB
        assert rss[N] - rss[2000] < 64, rss
        print(f"soak: {N} requests in {took:.1f} s ({N / took:.0f} req/s); rss {rss}")
