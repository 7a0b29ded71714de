"""Executor that runs partitions on one CUDA GPU.

The partition's module is copied to ``cuda:N`` at load (the caller's module is left on
its device), inputs are moved there at each run, and outputs come back as **CPU
tensors** so that Ray can ship them to an actor on another device without a CUDA
context. ``duration`` is the measured wall time of the run including those copies (the
stream is synchronised before the clock stops).

Example:
    >>> CUDAExecutor("cuda:0")  # doctest: +SKIP
    CUDAExecutor('cuda:0', loaded=())
"""
from __future__ import annotations

import torch

from .accelerator import AcceleratorExecutor, device_index
from .errors import DeviceUnavailableError

__all__ = ["CUDAExecutor", "cuda_index"]


def cuda_index(device: str) -> int:
    """The N of ``"cuda"`` / ``"cuda:N"`` (0 for ``"cuda"``).

    Example:
        >>> cuda_index("cuda:1")
        1
    """
    return device_index(device, "cuda")


class CUDAExecutor(AcceleratorExecutor):
    """Runs partitions on ``cuda:N`` (see the module docstring).

    ``local_index`` is the index torch sees in this process when it differs from the
    reported name (inside a Ray actor with ``num_gpus=1`` the one visible GPU is 0).

    Raises:
        executors.errors.DeviceUnavailableError: no CUDA, or no GPU with that index.

    Example:
        >>> import torch
        >>> from executors.errors import DeviceUnavailableError
        >>> try:
        ...     ex = CUDAExecutor("cuda")
        ... except DeviceUnavailableError:  # no GPU here: use "cpu" or "sim:<profile>"
        ...     ex = None
        >>> ex is None or (ex.device, ex.torch_device.type) == ("cuda:0", "cuda")
        True
    """

    kind = "cuda"

    def __init__(self, device: str = "cuda:0", *, local_index: int | None = None,
                 threads: int | None = None):
        idx = cuda_index(device)
        super().__init__(device if ":" in device else f"cuda:{idx}")
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"{device}: CUDA is not available (torch {torch.__version__}, "
                f"torch.cuda.is_available() is False); install a CUDA build of torch and an "
                f"NVIDIA driver, or use 'cpu' or a simulated device 'sim:<profile>'")
        local = idx if local_index is None else int(local_index)
        if local >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"{device}: no such GPU; this process sees {torch.cuda.device_count()} "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        self.torch_device = torch.device("cuda", local)
        if threads is not None:
            torch.set_num_threads(int(threads))

    def _synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)
