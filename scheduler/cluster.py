"""The devices a runtime runs on: device names, their specs and links, and Ray's start.

Devices are named: real ones ``cpu``, ``cpu:0``, ``cuda:0``, ``npu:0``; simulated ones
``sim:<profile>`` with a built-in profile name (:func:`executors.profiles.available`) or a
profile file path (:data:`DEVICE_FORMS`). :func:`build_cluster` turns a list of names into
the :class:`~executors.devices.Cluster` the cost model and the policies plan on; the host
CPU's numbers are measured once per process (:func:`host_spec`).

``cpu`` and every ``cpu:N`` are executors on this host's CPU, each its own executor actor:
its own process, which sets its own torch thread count (executor option ``threads``,
default 1), so several of them run partitions side by side, a pipeline across the host's
cores. They share the host's numbers, and a value passed between two of them is a copy
through host memory (:func:`host_copy_link`).

Example:
    >>> build_cluster(["sim:atlas-200i-a2", "sim:jetson-orin-nx"]).names
    ('sim:atlas-200i-a2', 'sim:jetson-orin-nx')
    >>> c = build_cluster(["cpu:0", "cpu:1"])
    >>> c.spec("cpu:1").kind, c.link("cpu:0", "cpu:1").bandwidth == c.spec("cpu:0").mem_bandwidth / 2
    ('cpu', True)
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .errors import RuntimeConfigError

if TYPE_CHECKING:  # executors is imported where it is used
    from executors.devices import DeviceSpec, LinkSpec

__all__ = ["DEVICE_FORMS", "build_cluster", "host_copy_link", "host_spec"]

#: The device name forms a runtime accepts.
DEVICE_FORMS = ("cpu", "cpu:<N>", "cuda:<N>", "npu:<N>", "sim:<profile name or file>")

#: Seconds per transfer between two executors on the host CPU (see :func:`host_copy_link`).
HOST_COPY_LATENCY = 10e-6

_HOST_SPEC: Any = None


def host_spec(name: str = "cpu"):
    """A :class:`~executors.devices.DeviceSpec` for this machine's CPU, measured once per
    process (a float32 matmul for peak FLOP/s, a large copy for memory bandwidth).

    Example:
        >>> s = host_spec()
        >>> s.kind, s.flops_for("float32") > 0
        ('cpu', True)
    """
    global _HOST_SPEC
    from executors.devices import DeviceSpec

    if _HOST_SPEC is None:
        a = torch.randn(256, 256)
        torch.mm(a, a)
        reps, t0 = 8, time.perf_counter()
        for _ in range(reps):
            torch.mm(a, a)
        flops = reps * 2 * 256 ** 3 / max(time.perf_counter() - t0, 1e-9)
        buf = torch.empty(4 * 2 ** 20)  # 16 MiB
        out = torch.empty_like(buf)
        out.copy_(buf)
        t0 = time.perf_counter()
        for _ in range(4):
            out.copy_(buf)
        bw = 4 * 2 * buf.numel() * 4 / max(time.perf_counter() - t0, 1e-9)
        try:
            import psutil  # noqa: F401  (optional)
            cap = float(psutil.virtual_memory().total)
        except Exception:  # noqa: BLE001
            cap = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        _HOST_SPEC = DeviceSpec(
            name="cpu", kind="cpu", peak_flops={"float32": flops}, mem_bandwidth=bw,
            mem_capacity=cap, launch_overhead=5e-6,
            sources={"peak_flops.float32": "measured here: 256x256 float32 torch.mm",
                     "mem_bandwidth": "measured here: 16 MiB tensor copy",
                     "launch_overhead": "estimate: eager PyTorch op dispatch, ~5 us"},
            description="this machine's CPU (measured at runtime start)")
    return _HOST_SPEC.replace(name=name)


def _cuda_spec(name: str):
    from executors.devices import DeviceSpec, LinkSpec

    idx = int(name.split(":", 1)[1])
    props = torch.cuda.get_device_properties(idx)
    # rough: 2 FLOP/cycle/core x 128 cores per SM x clock; 1 TB/s class memory
    clock = getattr(props, "clock_rate", 1.5e6) * 1e3 if hasattr(props, "clock_rate") else 1.5e9
    fp32 = 2 * 128 * props.multi_processor_count * clock
    spec = DeviceSpec(name=name, kind="gpu", peak_flops={"float32": fp32, "float16": 8 * fp32},
                      mem_bandwidth=1e12, mem_capacity=float(props.total_memory),
                      launch_overhead=1e-5, description=f"{props.name} (estimated from properties)")
    return spec, LinkSpec(bandwidth=12e9, latency=1e-5, source="estimate: PCIe 3/4 x16 effective")


def host_copy_link(host: DeviceSpec) -> LinkSpec:
    """The link between two executors on the host CPU (``cpu``, ``cpu:N``).

    Each is its own Ray actor process, so a value moves between them by one copy through
    Ray's shared-memory object store: every byte is read and written once, at the host's
    memory bandwidth, which counts both (:func:`host_spec`), so half of it in bytes moved.

    Example:
        >>> from executors.devices import DeviceSpec
        >>> l = host_copy_link(DeviceSpec("cpu", "cpu", {"float32": 1e11}, 2e10, 8e9))
        >>> l.bandwidth, l.latency
        (10000000000.0, 1e-05)
    """
    from executors.devices import LinkSpec

    return LinkSpec(bandwidth=host.mem_bandwidth / 2, latency=HOST_COPY_LATENCY,
                    source="host memory copy between two CPU executor processes: half the host's "
                           "read + write memory bandwidth; latency estimate: a shared-memory "
                           "object store put, ~10 us, not measured here")


def _parse_device(name: object) -> tuple[str, str]:
    """``(kind, rest)`` of a device name: ``"cpu:1"`` -> ``("cpu", "1")``; raises naming
    :data:`DEVICE_FORMS` for any other form.

    Example:
        >>> _parse_device("cpu"), _parse_device("cpu:1"), _parse_device("sim:host-cpu")
        (('cpu', ''), ('cpu', '1'), ('sim', 'host-cpu'))
        >>> _parse_device("cpu:x")
        Traceback (most recent call last):
        ...
        graphs.errors.UnknownNameError: unknown device 'cpu:x'; valid choices: cpu, cpu:<N>, ...
    """
    if not isinstance(name, str) or not name:
        raise RuntimeConfigError(f"device name must be a non-empty string, got {name!r}; "
                                 f"valid forms: {', '.join(DEVICE_FORMS)}")
    if name == "cpu":
        return "cpu", ""
    head, sep, rest = name.partition(":")
    if head == "cpu" and _is_index(rest):
        return "cpu", rest
    if head in ("cuda", "npu") and (not sep or rest.isdigit()):
        return head, rest
    if sep and head == "sim" and rest:
        return "sim", rest
    from graphs.errors import UnknownNameError

    raise UnknownNameError("device", name, DEVICE_FORMS)


def _is_index(s: str) -> bool:
    """Whether ``s`` is a device index: ASCII digits only (not ``-1``, not ``x``, not empty)."""
    return s.isascii() and s.isdigit()


def build_cluster(devices: Sequence[str]):
    """The :class:`~executors.devices.Cluster` of named devices (see the module docstring).

    Simulated devices load their profile (renamed to the device name); links between two
    devices are their host links in series, as :func:`executors.profiles.cluster` builds;
    ``cpu`` and each ``cpu:N`` get this host's spec under their own name, and between two
    of them :func:`host_copy_link`.

    Example:
        >>> c = build_cluster(["sim:atlas-200i-a2", "sim:edge-cpu-a76"])
        >>> c.names, c.spec("sim:atlas-200i-a2").kind
        (('sim:atlas-200i-a2', 'sim:edge-cpu-a76'), 'npu')
    """
    from executors import profiles
    from executors.devices import DEFAULT_LINK, Cluster, LinkSpec

    specs, hl, host_cpus = [], {}, set()
    for d in devices:
        kind, rest = _parse_device(d)
        if kind == "sim":
            specs.append(profiles.load(rest, name=d))
            hl[d] = profiles.host_link(rest)
        elif kind == "cpu":
            specs.append(host_spec(d))
            hl[d] = None
            host_cpus.add(d)
        elif kind == "cuda":
            s, link = _cuda_spec(d)
            specs.append(s)
            hl[d] = link
        else:  # npu: Atlas-class numbers from the built-in profile, renamed
            specs.append(profiles.load("atlas-200i-a2", name=d))
            hl[d] = profiles.host_link("atlas-200i-a2")
    links = {}
    names = list(devices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            la, lb = hl[a], hl[b]
            if a in host_cpus and b in host_cpus:
                link = host_copy_link(host_spec())
            elif la is None or lb is None:
                link = la or lb
            else:
                link = LinkSpec(bandwidth=1.0 / (1.0 / la.bandwidth + 1.0 / lb.bandwidth),
                                latency=la.latency + lb.latency, source="host links in series")
            if link is not None:
                links[(a, b)] = link
    return Cluster.from_specs(specs, links=links, default_link=DEFAULT_LINK)


def _init_loopback_ray(num_cpus: int, resources: Mapping[str, float]) -> None:
    """Start an embedded single-machine Ray whose services listen on 127.0.0.1 only.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone does not do it: Ray 2.60 replaces a
    loopback address by the machine's reachable IP (``services.resolve_ip_for_localhost``)
    unless its ``ENABLE_RAY_CLUSTER`` constant is False, which is what Ray itself uses for
    single-machine Ray on macOS and Windows. The constant is set for the duration of
    ``ray.init`` only (checked in tests: node address and listening sockets are 127.0.0.1).
    """
    import ray

    try:
        import ray._private.ray_constants as rc
    except Exception:  # noqa: BLE001 - a Ray without the constant: plain init
        rc = None
    old = getattr(rc, "ENABLE_RAY_CLUSTER", None)
    if rc is not None and old is not None:
        rc.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address="127.0.0.1", resources=dict(resources))
    finally:
        if rc is not None and old is not None:
            rc.ENABLE_RAY_CLUSTER = old
