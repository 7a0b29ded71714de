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

Ray: the embedded one starts on 127.0.0.1 and never joins a cluster found on this machine
(:func:`_init_loopback_ray`); an address to join is probed first, so an unreachable one
fails in seconds (:func:`probe_ray_address`); and before any executor actor is created,
:func:`check_placeable` fails a device whose Ray resource no node has (Ray would queue its
actor forever), while :func:`warn_unpinned_sim` says when a simulated device is not pinned.

Example:
    >>> build_cluster(["sim:atlas-200i-a2", "sim:jetson-orin-nx"]).names
    ('sim:atlas-200i-a2', 'sim:jetson-orin-nx')
    >>> c = build_cluster(["cpu:0", "cpu:1"])
    >>> c.spec("cpu:1").kind, c.link("cpu:0", "cpu:1").bandwidth == c.spec("cpu:0").mem_bandwidth / 2
    ('cpu', True)
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .errors import RuntimeConfigError

if TYPE_CHECKING:  # executors is imported where it is used
    from executors.devices import DeviceSpec, LinkSpec

__all__ = ["DEVICE_FORMS", "CONNECT_TIMEOUT", "DEPLOY_TIMEOUT", "actor_demand", "build_cluster",
           "check_client_support", "check_placeable", "host_copy_link", "host_spec",
           "probe_ray_address", "warn_unpinned_sim"]

#: The device name forms a runtime accepts.
DEVICE_FORMS = ("cpu", "cpu:<N>", "cuda:<N>", "npu:<N>", "sim:<profile name or file>")

#: Seconds per transfer between two executors on the host CPU (see :func:`host_copy_link`).
HOST_COPY_LATENCY = 10e-6

#: Seconds a Ray cluster's address may take to accept a connection (:func:`probe_ray_address`).
CONNECT_TIMEOUT = 5.0

#: Seconds the executor actors may take to start and load their partitions at deploy.
DEPLOY_TIMEOUT = 300.0

_HOST_SPEC: Any = None


def host_spec(name: str = "cpu"):
    """A :class:`~executors.devices.DeviceSpec` for this machine's CPU, once per process:
    the calibrated host profile when one exists (``hetsched profiles calibrate``), else
    measured (:func:`executors.measure.measure_host`: float32 matmul FLOP/s and copy
    bandwidth, medians of at least 50 ms of batches with outliers rejected; it warns when a
    measurement is 3x away from the profile).

    Example:
        >>> s = host_spec()
        >>> s.kind, s.flops_for("float32") > 0
        ('cpu', True)
    """
    global _HOST_SPEC
    from executors.devices import DeviceSpec

    if _HOST_SPEC is None:  # the calibrated host profile if there is one, else measured robustly
        from executors.measure import measure_host

        _HOST_SPEC = measure_host("cpu")
    return _HOST_SPEC.replace(name=name)


def _cuda_spec(name: str):
    from executors.devices import DeviceSpec, LinkSpec

    rest = name.partition(":")[2]
    idx = int(rest) if rest else 0
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA install counts as none
        count = 0
    if idx >= count:  # torch would assert "Torch not compiled with CUDA enabled" instead
        seen = (f"no such GPU; this process sees {count}" if count else
                f"CUDA is not available in this process (torch {torch.__version__})")
        raise RuntimeConfigError(
            f"device {name}: {seen}, and the cost model reads a GPU's numbers from it; run "
            f"where that GPU and a CUDA build of torch are, or use 'cpu' or a simulated device "
            f"'sim:<profile>'")
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

    ``address="local"`` always starts a new instance: a bare ``ray.init()`` would instead
    connect to the cluster a ``ray start`` on this machine left its address for
    (``/tmp/ray/ray_current_cluster``) and then refuse ``num_cpus``; joining a cluster is the
    caller's explicit choice (``ray_address`` or ``RAY_ADDRESS``).
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
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1",
                 resources=dict(resources))
    finally:
        if rc is not None and old is not None:
            rc.ENABLE_RAY_CLUSTER = old


# ------------------------------------------------------------ joining and checking a Ray
def probe_ray_address(address: str, timeout: float = CONNECT_TIMEOUT, *,
                      source: str = "ray_address") -> None:
    """Fail fast when nothing accepts a connection at a Ray address's ``host:port``.

    ``ray.init(address=...)`` retries an unreachable GCS for minutes; one plain TCP connect
    with a timeout tells at once. ``host:port`` and ``ray://host:port`` (Ray Client) are
    probed; other forms (``"auto"``, ``"local"``) are left to Ray, which resolves them.

    Raises:
        RuntimeConfigError: nothing answered within ``timeout`` seconds; the message says
            what was tried (and ``source``, where the address came from) and what to do.

    Example:
        >>> probe_ray_address("auto")  # nothing to probe
        >>> probe_ray_address("127.0.0.1:1")
        Traceback (most recent call last):
        ...
        scheduler.errors.RuntimeConfigError: could not reach a Ray cluster at 127.0.0.1:1 within 5 s ...
    """
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    if "://" in hostport:
        return
    host, sep, port = hostport.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not (sep and host and port.isascii() and port.isdigit()):
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        instead = ("omit ray_address" if source == "ray_address"
                   else f"unset {source} (where this address came from)")
        raise RuntimeConfigError(
            f"could not reach a Ray cluster at {address} within {timeout:g} s "
            f"({type(e).__name__}: {e}); start one with `ray start --head` or {instead} for an "
            f"embedded Ray") from None


def check_client_support(address: str) -> None:
    """A ``ray://`` address needs Ray Client, which a plain ``pip install ray`` lacks (its
    ``grpcio``): say which extra installs it, before anything waits on the network.

    Example:
        >>> check_client_support("10.0.0.1:6379")  # not a Ray Client address
    """
    import importlib.util

    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise RuntimeConfigError(
            f"joining {address} goes through Ray Client, which needs ray[client] (grpcio is "
            f"not installed): pip install 'hetsched[cluster]'; or join with the GCS address "
            f"host:6379 from a machine of the cluster")


def actor_demand(options: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources an actor with these ``.options(...)`` waits for, as
    ``resource name -> amount`` (zero amounts left out).

    Example:
        >>> actor_demand({"num_cpus": 0, "num_gpus": 1, "resources": {"sim_x": 0.01}})
        {'GPU': 1, 'sim_x': 0.01}
    """
    out = {"CPU": options.get("num_cpus") or 0, "GPU": options.get("num_gpus") or 0,
           **dict(options.get("resources") or {})}
    return {k: v for k, v in out.items() if v}


def _node_resources(nodes: Sequence[Mapping[str, Any]]) -> str:
    """``"ip: CPU=4, GPU=1; ip2: ..."`` for the alive nodes (memory and ``node:*`` left out)."""
    skip = ("memory", "object_store_memory")
    parts = []
    for n in nodes:
        res = {k: v for k, v in n.get("Resources", {}).items()
               if k not in skip and not k.startswith("node:")}
        text = ", ".join(f"{k}={v:g}" for k, v in sorted(res.items())) or "no resources"
        parts.append(f"{n.get('NodeManagerAddress', '?')}: {text}")
    return "; ".join(parts) or "no alive node"


def check_placeable(demands: Mapping[str, Mapping[str, float]],
                    nodes: Sequence[Mapping[str, Any]]) -> None:
    """Fail fast when Ray could never place a device's executor actor.

    An actor asking for a resource no node has waits forever (Ray queues it, it does not
    fail), so the Runtime checks before creating any: each device's demand
    (:func:`actor_demand`) must fit on one alive node, and each resource's total demand
    within the cluster's total. ``nodes`` is ``ray.nodes()``.

    Raises:
        RuntimeConfigError: naming the device, the resource it needs and every alive
            node's resources.

    Example:
        >>> nodes = [{"NodeManagerAddress": "10.0.0.1", "Alive": True, "Resources": {"CPU": 4.0}}]
        >>> check_placeable({"cpu": {}}, nodes)
        >>> check_placeable({"npu:0": {"NPU": 1}}, nodes)
        Traceback (most recent call last):
        ...
        scheduler.errors.RuntimeConfigError: device npu:0 needs Ray resource NPU=1, and no node has it ...
    """
    alive = [n for n in nodes if n.get("Alive", True)]
    have = [dict(n.get("Resources", {})) for n in alive]
    hints = {"GPU": "start Ray on a node with that GPU (Ray counts it; `ray start --num-gpus=N`)",
             "NPU": "start Ray on an Ascend node with torch-npu (Ray reports its NPU resource; "
                    "or `ray start --resources='{\"NPU\": N}'`)"}
    for device, need in demands.items():
        for res, amount in need.items():
            if not any(h.get(res, 0) >= amount for h in have):
                raise RuntimeConfigError(
                    f"device {device} needs Ray resource {res}={amount:g}, and no node has it "
                    f"(nodes: {_node_resources(alive)}); "
                    f"{hints.get(res, f'start a node that declares {res}')} and join that "
                    f"cluster with ray_address, or use a simulated device (sim:<profile>)")
    totals: dict[str, float] = {}
    for need in demands.values():
        for res, amount in need.items():
            totals[res] = totals.get(res, 0) + amount
    for res, amount in totals.items():
        has = sum(h.get(res, 0) for h in have)
        if amount > has + 1e-9:
            who = [d for d, need in demands.items() if need.get(res)]
            raise RuntimeConfigError(
                f"devices {', '.join(who)} need {res}={amount:g} together, and the cluster has "
                f"{res}={has:g} (nodes: {_node_resources(alive)}); use fewer such devices or "
                f"add nodes that have {res}")


def warn_unpinned_sim(devices: Sequence[str], cluster_resources: Mapping[str, float], *,
                      joined: bool, n_nodes: int) -> None:
    """Warn about each simulated device whose custom resource (``sim_<profile>``, see
    :func:`executors.ray_actor.sim_resource`) no node declares, on a Ray where that matters:
    one joined by address, or with several nodes. Its actor then lands on an arbitrary node
    (an embedded Ray declares the resources itself, and one node leaves no choice).

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     warn_unpinned_sim(["sim:atlas-200i-a2"], {"CPU": 2.0}, joined=True, n_nodes=1)
        >>> "arbitrary node" in str(w[0].message)
        True
    """
    if not (joined or n_nodes > 1):
        return
    from executors.ray_actor import sim_resource

    for d in devices:
        if d.startswith("sim:"):
            res = sim_resource(d)
            if cluster_resources.get(res, 0) <= 0:
                warnings.warn(
                    f"{d}: no node of the Ray cluster declares the custom resource {res!r}, so "
                    f"its executor actor lands on an arbitrary node; to pin it, start a node "
                    f"with `ray start --address=<head> --resources='{{\"{res}\": 1}}'`",
                    UserWarning, stacklevel=4)  # the caller of Runtime(...)
