"""Tensors through Ray with the fast reducer: every kind comes back equal, with its dtype,
shape and values; views carry only their own elements; what NumPy cannot hold falls back
to PyTorch's own pickling."""
from __future__ import annotations

import pickle

import pytest
import torch

from executors.serialization import _decode, _encode, register

CASES = {
    "float32": torch.randn(3, 4),
    "float64": torch.randn(2, dtype=torch.float64),
    "float16": torch.randn(5).half(),
    "int64": torch.arange(7),
    "bool-0d": torch.tensor(True),
    "uint8": torch.arange(10, dtype=torch.uint8),
    "complex64": torch.randn(3, dtype=torch.complex64),
    "non-contiguous": torch.randn(4, 6).t(),
    "view-of-large": torch.randn(1000, 100)[7:9],
    "empty": torch.zeros(0, 3),
    "bfloat16 (fallback)": torch.randn(4).bfloat16(),
    "requires-grad (fallback)": torch.randn(3, requires_grad=True),
    "meta (fallback)": torch.empty(2, 3, device="meta"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_encode_decode_round_trip(name):
    t = CASES[name]
    kind, _ = _encode(t)
    assert kind == ("torch" if "fallback" in name else "numpy")
    back = _decode(pickle.loads(pickle.dumps(_encode(t))))
    assert back.dtype == t.dtype and back.shape == t.shape and back.device == t.device
    if t.device.type != "meta":
        torch.testing.assert_close(back.detach(), t.detach())
    assert back.requires_grad == t.requires_grad


def test_a_view_ships_only_its_elements():
    big = torch.randn(1000, 100)
    small = pickle.dumps(_encode(big[7:9]))
    assert len(small) < 4_000 < big.numel() * 4


def test_decoded_tensor_owns_writable_memory():
    back = _decode(pickle.loads(pickle.dumps(_encode(torch.zeros(4)))))
    back += 1  # a read-only buffer would fail or crash here
    torch.testing.assert_close(back, torch.ones(4))


@pytest.mark.ray
def test_round_trip_through_an_actor(ray_session):
    ray = ray_session
    register()

    @ray.remote(num_cpus=0)
    class Echo:
        def __init__(self):
            register()

        def echo(self, xs):
            return [x.clone() if not x.requires_grad else x for x in xs]

    a = Echo.remote()
    xs = [t for t in CASES.values()]
    back = ray.get(a.echo.remote(xs))
    for t, b in zip(xs, back):
        assert b.dtype == t.dtype and b.shape == t.shape
        if t.device.type != "meta":
            torch.testing.assert_close(b.detach(), t.detach())
    big = torch.randn(256, 1024)  # 1 MiB: out of band, through the object store
    torch.testing.assert_close(ray.get(a.echo.remote([big]))[0], big)
    ray.kill(a)
