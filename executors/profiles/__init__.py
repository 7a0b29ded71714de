"""Built-in device profiles: data files that load into :class:`~executors.devices.DeviceSpec`.

A profile is a TOML (or JSON) file. Every number carries where it comes from: a spec
sheet, a paper, an estimate with its reasoning, or "measured here with command ...".

Format (schema 1)::

    name = "jetson-orin-nx"            # profile name (the DeviceSpec's default name)
    kind = "gpu"                       # cpu | gpu | npu
    description = "one line"           # optional
    supported_kinds = ["matmul", ...]  # optional: op kinds it can run; omitted = all
    mem_bandwidth = { value = 102.4e9, source = "spec sheet: ..." }    # bytes/s
    mem_capacity = { value = 16e9, source = "..." }                    # bytes
    launch_overhead = { value = 1e-5, source = "..." }                 # seconds per op (optional, 0)
    active_power = { value = 25.0, source = "..." }                    # watts (optional, 0 = unknown)
    idle_power = { value = 5.0, source = "..." }                       # watts (optional, 0 = unknown)

    [peak_flops]                       # FLOP/s per torch dtype name, at least one
    float16 = { value = 15e12, source = "..." }

    [host_link]                        # optional: the link to host (CPU) memory
    bandwidth = { value = 20e9, source = "..." }   # bytes/s
    latency = { value = 1e-5, source = "..." }     # seconds per transfer

A bare number is accepted in place of ``{value, source}`` (its source is then empty);
the built-in profiles give a source for every number. Every number must lie in its sane
range (:data:`SANE_RANGES`, e.g. ``peak_flops`` 1e6 .. 1e18 FLOP/s, ``launch_overhead``
0 .. 1 s) and ``peak_flops`` keys must be torch dtype names
(:data:`graphs.opgraph.DTYPES`); otherwise loading raises :class:`ProfileError` naming the
field, the value and the range. Sources land in
``DeviceSpec.sources`` under the field name (``"peak_flops.float16"``,
``"host_link.bandwidth"``, ...). A profile with no ``[host_link]`` is a *host*: moving
data between it and an accelerator costs the accelerator's host link only (see
:func:`cluster`).

Files are parsed with :mod:`tomllib` / :mod:`json` only: no pickle, no eval.

Example:
    >>> import executors.profiles as profiles
    >>> "atlas-200i-a2" in profiles.available()
    True
    >>> spec = profiles.load("jetson-orin-nx", name="gpu0")
    >>> spec.name, spec.kind, spec.mem_bandwidth
    ('gpu0', 'gpu', 102400000000.0)
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib  # type: ignore[no-redef]

from graphs.errors import UnknownNameError

from ..devices import DEFAULT_LINK, Cluster, DeviceSpec, LinkSpec
from ..errors import DeviceSpecError, ProfileError

__all__ = ["available", "load", "host_link", "cluster", "show", "save", "profile_path", "DATA_DIR",
           "SANE_RANGES"]

#: Folder of the built-in profile files.
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

#: Sane range per number (field -> (low, high, unit)), checked at load: a value outside it
#: is a unit slip (GB/s written as B/s, us as s) or a broken measurement, not a device.
#: ``peak_flops.*`` covers every dtype's entry.
SANE_RANGES: dict[str, tuple[float, float, str]] = {
    "peak_flops": (1e6, 1e18, "FLOP/s"),        # 1 MFLOP/s (microcontroller) .. 1 EFLOP/s
    "mem_bandwidth": (1e6, 1e14, "bytes/s"),    # 1 MB/s .. 100 TB/s
    "mem_capacity": (1e6, 1e15, "bytes"),       # 1 MB .. 1 PB
    "launch_overhead": (0.0, 1.0, "s"),         # per op: at most a second
    "active_power": (0.0, 1e5, "W"),            # 0 = unknown .. 100 kW
    "idle_power": (0.0, 1e5, "W"),
    "host_link.bandwidth": (1e6, 1e14, "bytes/s"),
    "host_link.latency": (0.0, 1.0, "s"),
}

_REQUIRED = ("name", "kind", "peak_flops", "mem_bandwidth", "mem_capacity")
_NUMBERS = ("mem_bandwidth", "mem_capacity", "launch_overhead", "active_power", "idle_power")
_TOP = ("schema", "name", "kind", "description", "supported_kinds", "peak_flops", "host_link",
        *_NUMBERS)


def available() -> tuple[str, ...]:
    """Names of the built-in profiles, sorted.

    Example:
        >>> import executors.profiles as profiles
        >>> profiles.available()[:2]
        ('a100-pcie', 'atlas-200i-a2')
    """
    names = []
    for f in os.listdir(DATA_DIR):
        stem, ext = os.path.splitext(f)
        if ext in (".toml", ".json"):
            names.append(stem)
    return tuple(sorted(set(names)))


def profile_path(name_or_path: str | os.PathLike) -> str:
    """The file behind a built-in name or a path.

    Raises:
        graphs.errors.UnknownNameError: not a file and not a built-in name (lists them).

    Example:
        >>> os.path.basename(profile_path("jetson-orin-nx"))
        'jetson-orin-nx.toml'
        >>> profile_path("tpu-v9")
        Traceback (most recent call last):
        ...
        graphs.errors.UnknownNameError: unknown profile 'tpu-v9'; valid choices: ...
    """
    p = os.fspath(name_or_path)
    if os.path.isfile(p):
        return p
    for ext in (".toml", ".json"):
        cand = os.path.join(DATA_DIR, p + ext)
        if os.path.isfile(cand):
            return cand
    if p.endswith((".toml", ".json")) or os.sep in p:
        raise ProfileError(f"profile file {p!r} does not exist")
    raise UnknownNameError("profile", p, available())


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if path.endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"profile {path}: cannot parse: {e}") from e
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path}: top level must be a table, got {type(data).__name__}")
    return data


def _number(path: str, field: str, v: Any) -> tuple[float, str]:
    """(value, source) of a ``{value, source}`` table or a bare number."""
    source = ""
    if isinstance(v, Mapping):
        extra = sorted(set(v) - {"value", "source"})
        if extra:
            raise ProfileError(f"profile {path}: field {field!r} has unknown keys {extra}; "
                               "valid keys: source, value")
        if "value" not in v:
            raise ProfileError(f"profile {path}: field {field!r} has no 'value'")
        source = v.get("source", "")
        if not isinstance(source, str):
            raise ProfileError(f"profile {path}: field {field!r}: source must be a string, "
                               f"got {source!r}")
        v = v["value"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProfileError(f"profile {path}: field {field!r} must be a finite number "
                           f"(or {{value = ..., source = \"...\"}}), got {v!r}")
    rng = SANE_RANGES.get(field.split(".")[0] if field.startswith("peak_flops.") else field)
    if rng is not None and not rng[0] <= v <= rng[1]:
        lo, hi, unit = rng
        raise ProfileError(f"profile {path}: field {field!r} = {v!r} {unit} is outside the sane range "
                           f"[{lo:g}, {hi:g}] {unit}; check the unit (bytes/s, seconds, FLOP/s)")
    return float(v), source


def _parse(path: str) -> tuple[dict[str, Any], LinkSpec | None]:
    """DeviceSpec keyword arguments and the host link of the profile at ``path``."""
    data = _read(path)
    unknown = sorted(set(data) - set(_TOP))
    if unknown:
        raise ProfileError(f"profile {path}: unknown field(s) {', '.join(unknown)}; "
                           f"valid fields: {', '.join(sorted(_TOP))}")
    for f in _REQUIRED:
        if f not in data:
            raise ProfileError(f"profile {path}: missing required field {f!r}")
    schema = data.get("schema", 1)
    if schema != 1:
        raise ProfileError(f"profile {path}: field 'schema' is {schema!r}; this version reads schema 1")
    for f in ("name", "kind", "description"):
        if f in data and not isinstance(data[f], str):
            raise ProfileError(f"profile {path}: field {f!r} must be a string, got {data[f]!r}")
    sources: dict[str, str] = {}
    kw: dict[str, Any] = {"name": data["name"], "kind": data["kind"],
                          "description": data.get("description", "")}
    for f in _NUMBERS:
        if f in data:
            kw[f], sources[f] = _number(path, f, data[f])
    pf = data["peak_flops"]
    if not isinstance(pf, Mapping) or not pf:
        raise ProfileError(f"profile {path}: field 'peak_flops' must be a non-empty table of "
                           f"dtype -> FLOP/s, got {pf!r}")
    kw["peak_flops"] = {}
    from graphs.opgraph import DTYPES

    for dt, v in pf.items():
        if dt not in DTYPES:
            raise ProfileError(f"profile {path}: field 'peak_flops' has unknown dtype {dt!r}; valid dtypes: "
                               f"{', '.join(DTYPES)}")
        kw["peak_flops"][dt], sources[f"peak_flops.{dt}"] = _number(path, f"peak_flops.{dt}", v)
    if "supported_kinds" in data:
        sk = data["supported_kinds"]
        if not isinstance(sk, list) or not all(isinstance(k, str) for k in sk):
            raise ProfileError(f"profile {path}: field 'supported_kinds' must be a list of op kind "
                               f"names, got {sk!r}")
        from graphs.opgraph import OP_KINDS

        bad = [k for k in sk if k not in OP_KINDS]
        if bad:
            raise ProfileError(f"profile {path}: field 'supported_kinds' has unknown op kind(s) "
                               f"{bad}; valid kinds: {', '.join(OP_KINDS)}")
        kw["supported_kinds"] = frozenset(sk)
    link = None
    if "host_link" in data:
        hl = data["host_link"]
        if not isinstance(hl, Mapping):
            raise ProfileError(f"profile {path}: field 'host_link' must be a table, got {hl!r}")
        bad = sorted(set(hl) - {"bandwidth", "latency"})
        if bad:
            raise ProfileError(f"profile {path}: field 'host_link' has unknown keys {bad}; "
                               "valid keys: bandwidth, latency")
        if "bandwidth" not in hl:
            raise ProfileError(f"profile {path}: missing required field 'host_link.bandwidth'")
        bw, sources["host_link.bandwidth"] = _number(path, "host_link.bandwidth", hl["bandwidth"])
        lat, src = 0.0, ""
        if "latency" in hl:
            lat, src = _number(path, "host_link.latency", hl["latency"])
            sources["host_link.latency"] = src
        try:
            link = LinkSpec(bandwidth=bw, latency=lat,
                            source=f"{data['name']} host link: {sources['host_link.bandwidth']}")
        except DeviceSpecError as e:
            raise ProfileError(f"profile {path}: field 'host_link': {e}") from e
    kw["sources"] = sources
    return kw, link


def load(name_or_path: str | os.PathLike, *, name: str | None = None) -> DeviceSpec:
    """Load a profile (built-in name or TOML/JSON path) into a :class:`DeviceSpec`.

    Args:
        name_or_path: a name from :func:`available` or a path to a ``.toml``/``.json`` file.
        name: the device's name in a cluster (default: the profile's ``name``).

    Raises:
        graphs.errors.UnknownNameError: an unknown built-in name (the message lists them).
        executors.errors.ProfileError: the file is malformed or incomplete (names the
            field and the file).

    Example:
        >>> from executors.profiles import load
        >>> load("atlas-200i-a2").flops_for("float16")
        10000000000000.0
    """
    path = profile_path(name_or_path)
    kw, _ = _parse(path)
    if name is not None:
        kw["name"] = name
    try:
        return DeviceSpec(**kw)
    except DeviceSpecError as e:
        raise ProfileError(f"profile {path}: {e}") from e


def host_link(name_or_path: str | os.PathLike) -> LinkSpec | None:
    """The link between a profile's device and host memory; None for a host CPU.

    Example:
        >>> from executors.profiles import host_link
        >>> host_link("a100-pcie").bandwidth
        25000000000.0
        >>> host_link("edge-cpu-a76") is None
        True
    """
    return _parse(profile_path(name_or_path))[1]


def _series(a: LinkSpec | None, b: LinkSpec | None) -> LinkSpec | None:
    """Two links one after the other (a staged copy through host memory)."""
    if a is None or b is None:
        return a or b
    return LinkSpec(bandwidth=1.0 / (1.0 / a.bandwidth + 1.0 / b.bandwidth),
                    latency=a.latency + b.latency,
                    source=f"in series: [{a.source}] then [{b.source}]")


def cluster(profiles: Iterable[str] | Mapping[str, str], *,
            default_link: LinkSpec | None = DEFAULT_LINK) -> Cluster:
    """A :class:`Cluster` of built-in (or file) profiles with links from their host links.

    ``profiles`` is a list of profile names (device names = profile names) or a mapping
    device name -> profile. The link between two devices is their host links in series
    (latencies add, ``1/bw = 1/bw_a + 1/bw_b``: a staged copy through host memory); a
    host CPU (no host link) adds nothing. Two hosts use ``default_link``.

    Example:
        >>> from executors.profiles import cluster
        >>> c = cluster(["atlas-200i-a2", "edge-cpu-a76"])
        >>> c.link("atlas-200i-a2", "edge-cpu-a76").bandwidth
        10000000000.0
    """
    items = list(profiles.items()) if isinstance(profiles, Mapping) else [(p, p) for p in profiles]
    specs, hl = [], {}
    for dev, prof in items:
        specs.append(load(prof, name=dev))
        hl[dev] = host_link(prof)
    links = {}
    for i, (a, _) in enumerate(items):
        for b, _ in items[i + 1:]:
            link = _series(hl[a], hl[b])
            if link is not None:
                links[(a, b)] = link
    return Cluster.from_specs(specs, links=links, default_link=default_link)


def show(name_or_path: str | os.PathLike) -> str:
    """Human-readable listing of a profile with the source of every number.

    Example:
        >>> from executors.profiles import show
        >>> print(show("a100-pcie").splitlines()[0])
        a100-pcie (gpu): NVIDIA A100 80GB PCIe server GPU (HBM2e, PCIe 4.0 x16)
    """
    path = profile_path(name_or_path)
    spec = load(path)
    link = host_link(path)
    src = spec.sources
    rows = [f"{spec.name} ({spec.kind}): {spec.description}", f"  file: {path}"]

    def row(label: str, value: str, key: str) -> None:
        rows.append(f"  {label:<24} {value:>14}   [{src.get(key) or 'no source given'}]")

    for dt, v in spec.peak_flops.items():
        row(f"peak_flops[{dt}]", f"{v / 1e12:.4g} TFLOP/s", f"peak_flops.{dt}")
    row("mem_bandwidth", f"{spec.mem_bandwidth / 1e9:.4g} GB/s", "mem_bandwidth")
    row("mem_capacity", f"{spec.mem_capacity / 1e9:.4g} GB", "mem_capacity")
    row("launch_overhead", f"{spec.launch_overhead * 1e6:.4g} us", "launch_overhead")
    row("active_power", f"{spec.active_power:.4g} W", "active_power")
    row("idle_power", f"{spec.idle_power:.4g} W", "idle_power")
    if link is not None:
        row("host_link.bandwidth", f"{link.bandwidth / 1e9:.4g} GB/s", "host_link.bandwidth")
        row("host_link.latency", f"{link.latency * 1e6:.4g} us", "host_link.latency")
    kinds = "all" if spec.supported_kinds is None else ", ".join(sorted(spec.supported_kinds))
    rows.append(f"  supported op kinds: {kinds}")
    return "\n".join(rows)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _toml_num(x: float) -> str:
    r = repr(float(x))
    return r if ("e" in r or "." in r) else r + ".0"


def save(spec: DeviceSpec, path: str | os.PathLike, *, link: LinkSpec | None = None,
         header: str = "") -> None:
    """Write ``spec`` (and an optional host ``link``) as a TOML or JSON profile.

    The format follows the file extension (``.json``, else TOML); sources come from
    ``spec.sources``. ``header`` is written as comment lines at the top of a TOML file.

    Example:
        >>> import os, tempfile
        >>> from executors.profiles import load, save
        >>> p = os.path.join(tempfile.mkdtemp(), "x.toml")
        >>> save(load("edge-cpu-a76", name="mine"), p)
        >>> load(p).name, load(p).mem_bandwidth
        ('mine', 17000000000.0)
    """
    path = os.fspath(path)
    src = spec.sources

    def num(key: str, v: float) -> dict[str, Any]:
        return {"value": float(v), "source": src.get(key, "")}

    d: dict[str, Any] = {"schema": 1, "name": spec.name, "kind": spec.kind,
                         "description": spec.description}
    if spec.supported_kinds is not None:
        d["supported_kinds"] = sorted(spec.supported_kinds)
    for f in _NUMBERS:
        d[f] = num(f, getattr(spec, f))
    d["peak_flops"] = {dt: num(f"peak_flops.{dt}", v) for dt, v in spec.peak_flops.items()}
    if link is not None:
        d["host_link"] = {"bandwidth": num("host_link.bandwidth", link.bandwidth),
                          "latency": num("host_link.latency", link.latency)}
    if path.endswith(".json"):
        text = json.dumps(d, indent=2) + "\n"
    else:
        lines = [f"# {h}" for h in header.splitlines()]
        for k, v in d.items():
            if isinstance(v, dict) and k in ("peak_flops", "host_link"):
                continue
            if isinstance(v, dict):
                lines.append(f"{k} = {{ value = {_toml_num(v['value'])}, "
                             f"source = {_toml_str(v['source'])} }}")
            elif isinstance(v, list):
                lines.append(f"{k} = [{', '.join(_toml_str(x) for x in v)}]")
            elif isinstance(v, int):
                lines.append(f"{k} = {v}")
            else:
                lines.append(f"{k} = {_toml_str(v)}")
        for table in ("peak_flops", "host_link"):
            if table in d:
                lines.append(f"\n[{table}]")
                for k, v in d[table].items():
                    lines.append(f"{_toml_str(k)} = {{ value = {_toml_num(v['value'])}, "
                                 f"source = {_toml_str(v['source'])} }}")
        text = "\n".join(lines) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
