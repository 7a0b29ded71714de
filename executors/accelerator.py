"""What the CUDA and NPU executors share: device-name parsing, and running a partition on a
torch device with its inputs copied in and its outputs copied back to the CPU.

Outputs come back as **CPU tensors** so that Ray can ship them to an actor on another
device without a device context; ``duration`` includes those copies (the device is
synchronised before the clock stops). Decoder shards (:meth:`Executor.load_shard`) are
copied to the device the same way, and their KV caches are allocated there.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from .base import Executor, map_tensors

__all__ = ["AcceleratorExecutor", "device_index"]


def device_index(device: str, head: str) -> int:
    """The N of ``"<head>"`` / ``"<head>:N"`` (0 without an index).

    Example:
        >>> device_index("cuda:1", "cuda"), device_index("npu", "npu")
        (1, 0)
        >>> device_index("gpu:1", "cuda")
        Traceback (most recent call last):
        ...
        graphs.errors.UnknownNameError: unknown cuda device 'gpu:1'; valid choices: cuda, cuda:N
    """
    from graphs.errors import UnknownNameError

    got, _, idx = device.partition(":")
    if got != head or (idx and not idx.isdigit()):
        raise UnknownNameError(f"{head} device", device, [head, f"{head}:N"])
    return int(idx or 0)


class AcceleratorExecutor(Executor):
    """Base of executors on a torch accelerator: subclasses set ``torch_device`` and may
    override :meth:`_synchronize`.

    Example:
        >>> import torch, torch.fx
        >>> from graphs.partition import Partition
        >>> class OnCPU(AcceleratorExecutor):  # a stand-in accelerator: torch's CPU device
        ...     kind, torch_device = "cpu", torch.device("cpu")
        >>> ex = OnCPU("cpu")
        >>> ex.load(Partition(0, "cpu", torch.fx.symbolic_trace(lambda x: (x * 3,)), ("x",), ("mul",)))
        >>> ex.run(0, torch.ones(2)).outputs
        (tensor([3., 3.]),)
    """

    torch_device: torch.device

    def _prepare(self, partition: Any) -> Any:
        return copy.deepcopy(partition.module).to(self.torch_device)  # the caller's module stays put

    def _prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return copy.deepcopy(module).to(self.torch_device)  # a decoder shard; caches follow it

    def _execute(self, prepared: Any, args: tuple) -> tuple:
        dev = self.torch_device
        args = map_tensors(args, lambda t: t.to(dev, non_blocking=True))
        outs = map_tensors(tuple(prepared(*args)), lambda t: t.cpu())
        self._synchronize()
        return outs

    def _synchronize(self) -> None:
        """Wait for the device's queued work (the ``.cpu()`` copies already do for outputs)."""
