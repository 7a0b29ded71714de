"""Build an executor from a device name, and list the real devices present.

Device names: ``cpu`` / ``cpu:N`` (several executors on this host's CPU, each named by its
full name; the Runtime gives each its own process); ``cuda`` / ``cuda:N``; ``npu`` /
``npu:N`` (Ascend, via torch-npu); ``sim:<profile>`` where ``<profile>`` is a built-in
profile name (:func:`executors.profiles.available`) or a path to a profile file. Backends
are imported lazily, so a CPU-only install never touches CUDA or torch-npu.

Example:
    >>> create("cpu")
    CPUExecutor('cpu', loaded=())
    >>> create("cpu:1")
    CPUExecutor('cpu:1', loaded=())
    >>> create("sim:atlas-200i-a2").spec.kind
    'npu'
    >>> create("tpu:0")
    Traceback (most recent call last):
    ...
    graphs.errors.UnknownNameError: unknown device 'tpu:0'; valid choices: cpu, cpu:N, cuda:N, npu:N, sim:<profile or path>, ...
    >>> "cpu" in detect()
    True
"""
from __future__ import annotations

from typing import Any

import torch

from graphs.errors import UnknownNameError

from .base import Executor

__all__ = ["create", "detect", "DEVICE_FORMS"]

#: The accepted device-name forms (for error messages).
DEVICE_FORMS = ("cpu", "cpu:N", "cuda:N", "npu:N", "sim:<profile or path>")


def _choices() -> list[str]:
    try:
        from . import profiles

        sims = [f"sim:{p}" for p in profiles.available()]
    except Exception:  # profiles missing or broken: still list the forms
        sims = []
    return list(DEVICE_FORMS) + sims


def create(device_name: str, *, cost_model: Any = None, **kw: Any) -> Executor:
    """The executor for ``device_name`` (see the module docstring for the forms).

    Keyword arguments go to the executor's constructor: ``threads`` for all of them;
    ``local_index`` for cuda/npu; ``pace``, ``timing_only``, ``graph`` and ``spec`` (a
    ready :class:`~executors.devices.DeviceSpec`, used instead of loading the profile)
    for ``sim:`` devices, which also take ``cost_model``. A simulated device is named
    ``device_name`` whatever the profile's own name.

    Raises:
        graphs.errors.UnknownNameError: not a known device form or profile.
        executors.errors.DeviceUnavailableError: cuda/npu hardware or backend is missing
            (the message says what to install).

    Example:
        >>> ex = create("sim:atlas-200i-a2", timing_only=True)
        >>> ex.device, ex.kind, ex.spec.kind, ex.timing_only
        ('sim:atlas-200i-a2', 'sim', 'npu', True)
        >>> create("cpu", pace=2.0)
        Traceback (most recent call last):
        ...
        executors.errors.ExecutorError: cpu: unknown option(s) pace; valid: threads
    """
    if not isinstance(device_name, str):
        raise UnknownNameError("device", device_name, _choices())
    head, sep, rest = device_name.partition(":")
    if device_name == "cpu" or (head == "cpu" and rest.isascii() and rest.isdigit()):
        from .cpu import CPUExecutor

        _no_kw(device_name, kw, ("threads",))
        return CPUExecutor(device_name, **kw)
    if head == "cuda" and (not sep or rest.isdigit()):
        from .cuda import CUDAExecutor

        _no_kw(device_name, kw, ("threads", "local_index"))
        return CUDAExecutor(device_name, **kw)
    if head == "npu" and (not sep or rest.isdigit()):
        from .npu import NPUExecutor

        _no_kw(device_name, kw, ("threads", "local_index"))
        return NPUExecutor(device_name, **kw)
    if head == "sim" and rest:
        from .simulated import SimulatedExecutor

        _no_kw(device_name, kw, ("threads", "pace", "timing_only", "graph", "spec"))
        spec = kw.pop("spec", None)
        if spec is None:
            from . import profiles

            spec = profiles.load(rest, name=device_name)
        elif spec.name != device_name:
            spec = spec.replace(name=device_name)
        return SimulatedExecutor(spec, cost_model, **kw)
    raise UnknownNameError("device", device_name, _choices())


def _no_kw(device: str, kw: dict, valid: tuple[str, ...]) -> None:
    from .errors import ExecutorError

    bad = sorted(set(kw) - set(valid))
    if bad:
        raise ExecutorError(f"{device}: unknown option(s) {', '.join(bad)}; valid: {', '.join(valid)}")


def detect() -> list[str]:
    """Real devices present: always ``"cpu"``, then ``cuda:N`` and ``npu:N`` for each found.

    Example:
        >>> found = detect()
        >>> found[0], all(d.split(":")[0] in ("cpu", "cuda", "npu") for d in found)
        ('cpu', True)
    """
    out = ["cpu"]
    try:
        if torch.cuda.is_available():
            out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    from .npu import npu_count

    out += [f"npu:{i}" for i in range(npu_count())]
    return out
