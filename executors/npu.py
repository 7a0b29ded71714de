"""Executor that runs partitions on one Ascend NPU through torch-npu, imported lazily.

``import executors`` never imports ``torch_npu``: :func:`npu_available` first asks
``importlib.util.find_spec`` whether it is installed at all, and only then imports it
(which also needs the CANN toolkit); every failure means "not available", never an
exception. Like :class:`executors.cuda.CUDAExecutor`, the module is copied to ``npu:N``
at load and outputs come back as CPU tensors so Ray can ship them.

Example:
    >>> npu_available()  # False on a machine without torch-npu and an Ascend NPU
    False
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch

from .accelerator import AcceleratorExecutor, device_index
from .errors import DeviceUnavailableError

__all__ = ["NPUExecutor", "npu_available", "npu_count"]

_INSTALL = ("install torch-npu matching torch (pip install 'hetsched[npu]') with the Ascend "
            "CANN toolkit and driver, or use 'cpu' or a simulated device 'sim:<profile>'")


def _torch_npu() -> Any:
    """Import and return torch_npu, or None when it is missing or broken."""
    try:
        if importlib.util.find_spec("torch_npu") is None:
            return None
        return importlib.import_module("torch_npu")
    except BaseException:  # a broken CANN install can raise anything, even SystemExit
        return None


def npu_available() -> bool:
    """True when torch-npu imports and reports at least one NPU; never raises.

    Example:
        >>> from executors.factory import detect
        >>> npu_available() == any(d.startswith("npu:") for d in detect())
        True
    """
    try:
        if _torch_npu() is None:
            return False
        return bool(torch.npu.is_available()) and torch.npu.device_count() > 0  # type: ignore[attr-defined]
    except BaseException:
        return False


def npu_count() -> int:
    """Number of NPUs torch-npu sees (0 when unavailable); never raises.

    Example:
        >>> from executors.factory import detect
        >>> npu_count() == sum(d.startswith("npu:") for d in detect())
        True
    """
    try:
        return int(torch.npu.device_count()) if npu_available() else 0  # type: ignore[attr-defined]
    except BaseException:
        return 0


def npu_index(device: str) -> int:
    """The N of ``"npu"`` / ``"npu:N"``.

    Example:
        >>> npu_index("npu:2")
        2
    """
    return device_index(device, "npu")


class NPUExecutor(AcceleratorExecutor):
    """Runs partitions on ``npu:N`` (see the module docstring).

    ``local_index`` is the index torch-npu sees in this process when it differs from the
    reported name (inside a Ray actor holding ``{"NPU": 1}`` the visible NPU is 0).

    Raises:
        executors.errors.DeviceUnavailableError: torch-npu is missing or sees no such NPU.

    Example:
        >>> from executors.errors import DeviceUnavailableError
        >>> try:
        ...     ex = NPUExecutor("npu")
        ... except DeviceUnavailableError:  # no Ascend NPU here: use "cpu" or "sim:<profile>"
        ...     ex = None
        >>> ex is None or (ex.device, ex.kind) == ("npu:0", "npu")
        True
    """

    kind = "npu"

    def __init__(self, device: str = "npu:0", *, local_index: int | None = None,
                 threads: int | None = None):
        idx = npu_index(device)
        super().__init__(device if ":" in device else f"npu:{idx}")
        if not npu_available():
            raise DeviceUnavailableError(f"{device}: no Ascend NPU is available; {_INSTALL}")
        local = idx if local_index is None else int(local_index)
        if local >= npu_count():
            raise DeviceUnavailableError(f"{device}: no such NPU; this process sees {npu_count()}")
        self.torch_device = torch.device("npu", local)
        if threads is not None:
            torch.set_num_threads(int(threads))

    def _synchronize(self) -> None:
        torch.npu.synchronize(self.torch_device)  # type: ignore[attr-defined]
