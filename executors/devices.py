"""Device and link specifications, and the cluster they form.

These are the small frozen dataclasses that cross package boundaries: cost models and
policies read them, executors are built from them, profiles load into them.

Example:
    >>> from executors.devices import Cluster
    >>> c = Cluster.from_names(["P1", "P2", "P3"])
    >>> c.names
    ('P1', 'P2', 'P3')
    >>> c.spec("P1") is None
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from .errors import DeviceSpecError

DEVICE_KINDS = ("cpu", "gpu", "npu")


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, eq=False)
class DeviceSpec:
    """What a cost model needs to know about one device.

    Example:
        >>> d = DeviceSpec(name="cpu0", kind="cpu", peak_flops={"float32": 1e11},
        ...                mem_bandwidth=2e10, mem_capacity=8 * 2**30)
        >>> d.flops_for("float32")
        100000000000.0
    """

    name: str  # unique name inside a cluster, e.g. "npu0" or "sim:atlas-200i-a2"
    kind: str  # one of DEVICE_KINDS: "cpu" | "gpu" | "npu"
    peak_flops: Mapping[str, float]  # torch dtype name ("float32", "float16", ...) -> FLOP/s
    mem_bandwidth: float  # bytes/s, device memory
    mem_capacity: float  # bytes usable by the runtime
    launch_overhead: float = 0.0  # seconds added to every op or partition launch
    active_power: float = 0.0  # watts while busy
    idle_power: float = 0.0  # watts while idle
    supported_kinds: frozenset[str] | None = None  # op kinds it can run; None = all
    sources: Mapping[str, str] = field(default_factory=dict)  # field name -> where the number comes from
    description: str = ""  # one line for listings

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DeviceSpecError(f"device name must be a non-empty string, got {self.name!r}")
        if self.kind not in DEVICE_KINDS:
            raise DeviceSpecError(
                f"device {self.name!r}: unknown kind {self.kind!r}; valid kinds: {', '.join(DEVICE_KINDS)}"
            )
        if not self.peak_flops:
            raise DeviceSpecError(f"device {self.name!r}: peak_flops is empty; give FLOP/s per dtype")
        for dt, v in self.peak_flops.items():
            _positive(self.name, f"peak_flops[{dt}]", v)
        _positive(self.name, "mem_bandwidth", self.mem_bandwidth)
        _positive(self.name, "mem_capacity", self.mem_capacity)
        for f in ("launch_overhead", "active_power", "idle_power"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise DeviceSpecError(f"device {self.name!r}: {f} must be a finite number >= 0, got {v!r}")
        object.__setattr__(self, "peak_flops", _frozen(self.peak_flops))
        object.__setattr__(self, "sources", _frozen(self.sources))
        if self.supported_kinds is not None:
            object.__setattr__(self, "supported_kinds", frozenset(self.supported_kinds))

    def flops_for(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype``; falls back to float32, then the slowest listed dtype."""
        if dtype in self.peak_flops:
            return float(self.peak_flops[dtype])
        if "float32" in self.peak_flops:
            return float(self.peak_flops["float32"])
        return float(min(self.peak_flops.values()))

    def supports(self, op_kind: str) -> bool:
        """Whether this device can run an op of kind ``op_kind``."""
        return self.supported_kinds is None or op_kind in self.supported_kinds

    def replace(self, **changes) -> "DeviceSpec":
        """A copy with some fields changed (e.g. a new name)."""
        from dataclasses import replace

        return replace(self, **changes)


def _positive(name: str, field_name: str, v: object) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        raise DeviceSpecError(f"device {name!r}: {field_name} must be a finite number > 0, got {v!r}")


@dataclass(frozen=True)
class LinkSpec:
    """A directed or symmetric link between two devices.

    Example:
        >>> LinkSpec(bandwidth=1e9, latency=1e-5).time(1e6)
        0.00101
    """

    bandwidth: float  # bytes/s
    latency: float = 0.0  # seconds per transfer
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        if not isinstance(self.bandwidth, (int, float)) or not self.bandwidth > 0 or not math.isfinite(self.bandwidth):
            raise DeviceSpecError(f"link bandwidth must be a finite number > 0, got {self.bandwidth!r}")
        if not isinstance(self.latency, (int, float)) or not math.isfinite(self.latency) or self.latency < 0:
            raise DeviceSpecError(f"link latency must be a finite number >= 0, got {self.latency!r}")

    def time(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` over this link."""
        return self.latency + nbytes / self.bandwidth


# PCIe 3.0 x4-class host link: a conservative default between devices with no explicit link.
DEFAULT_LINK = LinkSpec(bandwidth=4e9, latency=20e-6, source="default: PCIe 3.0 x4 class, ~4 GB/s, 20 us")


@dataclass(frozen=True, eq=False)
class Cluster:
    """Devices (by name, in a fixed order) and the links between them.

    A cluster of plain names (``Cluster.from_names``) has no specs; cost models that need
    specs (roofline) reject it, abstract ones (related machines, tables) accept it.

    Example:
        >>> from executors.devices import Cluster, DeviceSpec
        >>> cpu = DeviceSpec("cpu", "cpu", {"float32": 1e11}, 2e10, 8e9)
        >>> c = Cluster.from_specs([cpu])
        >>> c.link("cpu", "cpu") is None
        True
    """

    names: tuple[str, ...]  # device names, in a fixed order (policies index devices by it)
    specs: Mapping[str, DeviceSpec | None]  # name -> spec, None for abstract devices
    links: Mapping[tuple[str, str], LinkSpec] = field(default_factory=dict)  # (src, dst) -> link
    default_link: LinkSpec | None = DEFAULT_LINK  # used for pairs not in links

    def __post_init__(self) -> None:
        names = tuple(self.names)
        if not names:
            raise DeviceSpecError("a cluster needs at least one device; got none")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DeviceSpecError(f"duplicate device names in cluster: {', '.join(dup)}")
        missing = [n for n in names if n not in self.specs]
        if missing:
            raise DeviceSpecError(f"cluster specs missing for devices: {', '.join(missing)}")
        links = {}
        for (a, b), link in dict(self.links).items():
            for n in (a, b):
                if n not in names:
                    raise DeviceSpecError(f"link names unknown device {n!r}; devices: {', '.join(names)}")
            links[(a, b)] = link
            links.setdefault((b, a), link)  # symmetric unless both directions are given
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "specs", _frozen(self.specs))
        object.__setattr__(self, "links", _frozen(links))

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "Cluster":
        """An abstract cluster: device names only, no specs, no links."""
        names = tuple(names)
        return cls(names=names, specs={n: None for n in names}, links={}, default_link=None)

    @classmethod
    def from_specs(
        cls,
        specs: Iterable[DeviceSpec],
        links: Mapping[tuple[str, str], LinkSpec] | None = None,
        default_link: LinkSpec | None = DEFAULT_LINK,
    ) -> "Cluster":
        """A cluster of real or simulated devices."""
        specs = list(specs)
        return cls(
            names=tuple(s.name for s in specs),
            specs={s.name: s for s in specs},
            links=dict(links or {}),
            default_link=default_link,
        )

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def index(self, name: str) -> int:
        """Position of device ``name`` in :attr:`names`."""
        self.check(name)
        return self.names.index(name)

    def check(self, name: str) -> str:
        """Return ``name`` if it is a device of this cluster, else raise naming the valid ones."""
        if name not in self.specs:
            from graphs.errors import UnknownNameError

            raise UnknownNameError("device", name, self.names)
        return name

    def spec(self, name: str) -> DeviceSpec | None:
        """The spec of device ``name`` (None for an abstract device)."""
        return self.specs[self.check(name)]

    def link(self, src: str, dst: str) -> LinkSpec | None:
        """The link from ``src`` to ``dst``; None on the same device or with no link known."""
        self.check(src)
        self.check(dst)
        if src == dst:
            return None
        return self.links.get((src, dst), self.default_link)

    @property
    def has_specs(self) -> bool:
        """True when every device has a spec."""
        return all(s is not None for s in self.specs.values())

    def without(self, *names: str) -> "Cluster":
        """The same cluster minus some devices (e.g. failed ones)."""
        for n in names:
            self.check(n)
        keep = tuple(n for n in self.names if n not in names)
        return Cluster(
            names=keep,
            specs={n: self.specs[n] for n in keep},
            links={k: v for k, v in self.links.items() if k[0] in keep and k[1] in keep},
            default_link=self.default_link,
        )
