"""Shared fixtures: one Ray instance per test session, hardware markers."""
from __future__ import annotations

import os

import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_collection_modifyitems(config, items):
    import torch

    has_cuda = torch.cuda.is_available()
    try:
        from executors.npu import npu_available  # lazy torch-npu detection
        has_npu = npu_available()
    except Exception:  # the executors package may not define it yet
        has_npu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is present")
    skip_npu = pytest.mark.skip(reason="needs an Ascend NPU with torch-npu and CANN; not present")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "npu" in item.keywords and not has_npu:
            item.add_marker(skip_npu)


@pytest.fixture(scope="session")
def ray_session():
    """The session's one local Ray instance (started on first use, ~3-7 s)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # the Runtime's own embedded start: services bound to 127.0.0.1 only
        from scheduler.runtime import _init_loopback_ray

        _init_loopback_ray(num_cpus=4, resources={})
    yield ray
    ray.shutdown()
