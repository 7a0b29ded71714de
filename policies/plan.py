"""The placement plan: the one dataclass that leaves a policy.

A :class:`Plan` says where every node runs, in what order on each device, and when the
cost model predicts it starts and finishes. It is frozen and converts losslessly to plain
dicts / JSON (node keys keep their type: ints stay ints).

Example:
    >>> p = Plan(assignment={"a": "cpu"}, order={"cpu": ("a",)}, start={"a": 0.0},
    ...          finish={"a": 1.5}, makespan=1.5, policy="manual")
    >>> Plan.from_json(p.to_json()) == p
    True
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Hashable, Mapping

OBJECTIVES = ("latency", "throughput", "energy")


def _ro(m: Mapping | None) -> Mapping:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class Plan:
    """A placement and its predicted schedule.

    Example:
        >>> p = Plan(assignment={"a": "x", "b": "y", "c": "x"}, order={"x": ("a", "c"), "y": ("b",)},
        ...          start={"a": 0.0, "b": 1.0, "c": 1.0}, finish={"a": 1.0, "b": 3.0, "c": 2.0},
        ...          makespan=3.0, period=2.0)
        >>> p.devices_used, p.nodes_on("x"), p.throughput
        (('x', 'y'), ('a', 'c'), 0.5)
    """

    assignment: Mapping[Hashable, str]  # node -> device name
    order: Mapping[str, tuple]  # device name -> nodes in execution order on it
    start: Mapping[Hashable, float]  # node -> predicted start, seconds (cost model units)
    finish: Mapping[Hashable, float]  # node -> predicted finish, seconds
    makespan: float  # seconds, max finish (latency of one request)
    energy: float | None = None  # joules per request over the makespan; None if unknown
    memory: Mapping[str, float] = field(default_factory=dict)  # device -> peak bytes
    objective: str = "latency"  # one of OBJECTIVES
    policy: str = ""  # name of the policy that made it
    options: Mapping[str, Any] = field(default_factory=dict)  # the policy's options
    decide_time: float = 0.0  # seconds the policy took to decide
    period: float | None = None  # seconds between requests in steady state (throughput), if known
    info: Mapping[str, Any] = field(default_factory=dict)  # policy extras: gap, status, stages ...

    def __post_init__(self) -> None:
        for f in ("assignment", "start", "finish", "memory", "options", "info"):
            object.__setattr__(self, f, _ro(getattr(self, f)))
        object.__setattr__(self, "order", _ro({d: tuple(ns) for d, ns in dict(self.order).items()}))

    # ------------------------------------------------------------------ views
    @property
    def devices_used(self) -> tuple[str, ...]:
        """Devices with at least one node, in order of first use."""
        return tuple(d for d, ns in self.order.items() if ns)

    @property
    def throughput(self) -> float | None:
        """Requests per second in steady state (1 / period), if known."""
        return None if not self.period else 1.0 / self.period

    def nodes_on(self, device: str) -> tuple:
        """Nodes placed on ``device`` in execution order."""
        return tuple(self.order.get(device, ()))

    # ------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Plain dict with JSON-safe values; node keys become ``[key, value]`` pairs.

        Example:
            >>> Plan({1: "a"}, {"a": (1,)}, {1: 0.0}, {1: 2.0}, 2.0).to_dict()["assignment"]
            [[1, 'a']]
        """
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("assignment", "start", "finish"):
                d[f.name] = [[k, x] for k, x in v.items()]
            elif f.name == "order":
                d[f.name] = {dev: list(ns) for dev, ns in v.items()}
            elif isinstance(v, Mapping):
                d[f.name] = _jsonable(dict(v))
            else:
                d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        """Inverse of :meth:`to_dict`."""
        from .errors import PolicyError

        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise PolicyError(f"plan has unknown fields {sorted(unknown)}; valid: {sorted(names)}")
        kw = dict(d)
        try:
            for k in ("assignment", "start", "finish"):
                kw[k] = {_key(n): v for n, v in d[k]}
            kw["order"] = {dev: tuple(_key(n) for n in ns) for dev, ns in d["order"].items()}
        except KeyError as e:
            raise PolicyError(f"plan is missing field {e.args[0]!r}") from e
        return cls(**kw)

    def to_json(self, **kw) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


def _key(k: Any) -> Hashable:
    return tuple(_key(x) for x in k) if isinstance(k, list) else k


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "__dataclass_fields__"):
        return _jsonable(asdict(v))
    return str(v)
