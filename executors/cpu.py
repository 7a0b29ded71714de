"""Executor that runs partitions on this process's CPU.

Example:
    >>> import torch, torch.fx
    >>> from graphs.partition import Partition
    >>> gm = torch.fx.symbolic_trace(lambda x: (x * 2,))
    >>> ex = CPUExecutor()
    >>> ex.load(Partition(id=0, device="cpu", module=gm, inputs=("x",), outputs=("mul",)))
    >>> r = ex.run(0, torch.ones(2))
    >>> r.outputs, r.device, r.computed
    ((tensor([2., 2.]),), 'cpu', True)
"""
from __future__ import annotations

from typing import Any

import torch

from .base import Executor, map_tensors

__all__ = ["CPUExecutor"]


class CPUExecutor(Executor):
    """Runs each partition's module as it is, on CPU tensors (inputs on other devices are
    copied to the CPU first). ``duration`` is the measured wall time of the run.

    ``device`` is ``"cpu"`` or ``"cpu:N"``: several CPU executors on one host are told apart
    by name, each in its own process (its own Ray actor).

    ``threads`` sets ``torch.set_num_threads`` for the process (None leaves it alone); the
    Ray actor sets it to 1 so that several actors share a small machine fairly.

    Example:
        >>> import torch, torch.fx
        >>> from graphs.partition import Partition
        >>> ex = CPUExecutor("cpu:1")
        >>> ex.load(Partition(0, "cpu:1", torch.fx.symbolic_trace(lambda x: (x.sum(),)), ("x",), ("sum_1",)))
        >>> r = ex.run(0, torch.arange(4.0))
        >>> r.outputs, r.device, r.simulated
        ((tensor(6.),), 'cpu:1', False)
    """

    kind = "cpu"

    def __init__(self, device: str = "cpu", *, threads: int | None = None):
        super().__init__(device)
        if threads is not None:
            torch.set_num_threads(int(threads))

    def _prepare(self, partition: Any) -> Any:
        return partition.module

    def _execute(self, prepared: Any, args: tuple) -> tuple:
        args = map_tensors(args, lambda t: t if t.device.type == "cpu" else t.cpu())
        return tuple(prepared(*args))
