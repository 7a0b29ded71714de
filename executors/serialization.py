"""Fast pickling of CPU tensors between Ray processes.

PyTorch pickles a tensor through its storage's ``__reduce__``, which writes a whole
``torch.save`` archive (zip framing, a second pickler) for every tensor: for the small
activations a partition passes on, that costs far more than the data (about 0.1 ms a
tensor here, on both sides of every call). :func:`register` gives Ray a reducer for plain
CPU tensors that ships them as NumPy arrays instead: Ray pickles those with protocol 5,
in band for small ones and out of band (zero copy through the object store) for large ones.
Only the data of the tensor's own elements travels (a view does not carry its base's
storage). Everything the fast path cannot represent exactly (other devices, meta tensors,
tensors that require grad, dtypes NumPy lacks such as bfloat16, sparse or quantized
layouts, tensor subclasses) goes through PyTorch's own reduction, unchanged.

Registration is per process (Ray's serialization context): the Runtime registers it in the
driver and every executor actor registers it at start. Deserialising needs nothing
registered: the pickled payload names its decoder.

Example:
    >>> t = torch.arange(6.0).view(2, 3)[:, 1]
    >>> kind, arr = _encode(t)
    >>> kind, arr.tolist(), _decode((kind, arr))
    ('numpy', [1.0, 4.0], tensor([1., 4.]))
    >>> _decode(_encode(torch.zeros(2, device="meta"))).device  # not representable: PyTorch's
    device(type='meta')
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["register"]

_NUMPY_DTYPES = {torch.float64, torch.float32, torch.float16, torch.int64, torch.int32,
                 torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
                 torch.complex128}


def _encode(t: torch.Tensor) -> tuple:
    """What travels for ``t``: its elements as NumPy for plain CPU tensors, else PyTorch's
    own reduction."""
    if (type(t) is torch.Tensor and t.device.type == "cpu" and t.layout == torch.strided
            and t.dtype in _NUMPY_DTYPES and not t.requires_grad and not t.is_conj()
            and not t.is_neg()):
        return ("numpy", t.numpy())
    return ("torch", t.__reduce_ex__(2))


def _decode(payload: tuple) -> torch.Tensor:
    kind, data = payload
    if kind == "numpy":
        if not data.flags.writeable:  # an object-store or in-band buffer is read-only: copy
            data = data.copy()
        return torch.from_numpy(data)
    fn, args = data[0], data[1]
    return fn(*args)


def register() -> None:
    """Use the fast tensor reduction for everything this process sends through Ray
    (registering again is harmless; does nothing when Ray is not initialised).

    Example:
        >>> register()  # outside Ray: a no-op
    """
    import ray

    if ray.is_initialized():
        ray.util.register_serializer(torch.Tensor, serializer=_encode, deserializer=_decode)
