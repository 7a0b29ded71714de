"""The one interface every placement policy implements, and the registry that lists them.

A policy is a name, a one-line description, a set of options with defaults, and one
method, :meth:`Policy.place`. Subclasses implement :meth:`Policy._place`; the public
method checks the input, times the decision and stamps the plan with the policy's name
and options.

Example:
    >>> import policies
    >>> "heft" in policies.available()
    True
    >>> policies.get("no-such-policy")
    Traceback (most recent call last):
    ...
    graphs.errors.UnknownNameError: unknown policy 'no-such-policy'; valid choices: ...
"""
from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import networkx as nx

from executors.devices import Cluster
from graphs.errors import UnknownNameError

from .cost import CostModel, check_dag
from .errors import PolicyError
from .plan import OBJECTIVES, Plan

_REGISTRY: dict[str, type["Policy"]] = {}

#: Options every policy accepts (name -> default).
COMMON_OPTIONS: dict[str, Any] = {
    "objective": "latency",   # one of OBJECTIVES
    "latency_bound": None,    # seconds; a plan above it is InfeasiblePlacement
    "strict": False,          # True: an op on a device that cannot run it is an error, not a fallback
    "respect_memory": True,   # False: ignore device memory capacity
}


class Policy(ABC):
    """Base class of placement policies (see module docstring).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies.abstract import TableCostModel
        >>> from policies.schedule import list_schedule
        >>> class Last(Policy):  # a policy needs a name, a description and _place
        ...     name, description = "last", "every node on the cluster's last device"
        ...     def _place(self, graph, cluster, cost_model):
        ...         order = list(nx.topological_sort(graph))
        ...         return list_schedule(graph, cluster, cost_model, order,
        ...                              assignment={n: cluster.names[-1] for n in order})
        >>> g = nx.DiGraph([("a", "b")])
        >>> cm = TableCostModel({"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}, {("a", "b"): 1})
        >>> plan = Last().place(g, Cluster.from_names(["x", "y"]), cm)
        >>> plan.policy, dict(plan.assignment), plan.makespan
        ('last', {'a': 'y', 'b': 'y'}, 5.0)
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Policy-specific options (name -> default), on top of :data:`COMMON_OPTIONS`.
    option_defaults: ClassVar[dict[str, Any]] = {}
    #: Objectives this policy can serve; others are rejected at construction.
    objectives: ClassVar[tuple[str, ...]] = ("latency",)

    def __init__(self, **options: Any):
        valid = {**COMMON_OPTIONS, **self.option_defaults}
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise PolicyError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for policy {self.name!r}; "
                f"valid options: {', '.join(sorted(valid))}"
            )
        self.options: dict[str, Any] = {**valid, **options}
        obj = self.options["objective"]
        if obj not in OBJECTIVES:
            raise UnknownNameError("objective", obj, OBJECTIVES)
        if obj not in self.objectives:
            raise PolicyError(
                f"policy {self.name!r} does not serve objective {obj!r}; it serves: "
                f"{', '.join(self.objectives)}"
            )

    def place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        """Place every node of ``graph`` on a device of ``cluster``.

        Raises:
            graphs.errors.CyclicGraphError: the graph has a cycle.
            policies.errors.InfeasiblePlacement: no plan meets memory / latency constraints.
        """
        if not isinstance(graph, nx.DiGraph):
            raise PolicyError(f"graph must be a networkx.DiGraph, got {type(graph).__name__}")
        if not isinstance(cluster, Cluster):
            raise PolicyError(f"cluster must be an executors.devices.Cluster, got {type(cluster).__name__}")
        if not isinstance(cost_model, CostModel):
            raise PolicyError(f"cost_model must be a policies.cost.CostModel, got {type(cost_model).__name__}")
        if graph.number_of_nodes() == 0:
            raise PolicyError("graph has no nodes; nothing to place")
        check_dag(graph)
        t0 = time.perf_counter()
        plan = self._place(graph, cluster, cost_model)
        took = time.perf_counter() - t0
        return dataclasses.replace(
            plan,
            policy=plan.policy or self.name,
            options={k: v for k, v in self.options.items() if _jsonable(v)} | dict(plan.options),
            objective=self.options["objective"],
            decide_time=took,
        )

    @abstractmethod
    def _place(self, graph: nx.DiGraph, cluster: Cluster, cost_model: CostModel) -> Plan:
        """Policy-specific placement (graph already checked to be a non-empty DAG)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list, tuple, dict))


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: add a policy to the registry under ``cls.name``.

    Raises:
        TypeError: the class has no name or description, or another class holds its name.

    Example:
        >>> from policies.heft import HEFT
        >>> register(HEFT) is HEFT  # registering a class again changes nothing
        True
        >>> class MyHEFT(HEFT):
        ...     name, description = "heft", "a second class claiming the name heft"
        >>> register(MyHEFT)
        Traceback (most recent call last):
        ...
        TypeError: policy name 'heft' is already registered by HEFT
    """
    if not cls.name or not cls.description:
        raise TypeError(f"{cls.__name__} needs a name and a one-line description to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"policy name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> dict[str, str]:
    """Registered policy names with their one-line descriptions, sorted by name.

    Example:
        >>> names = available()
        >>> names["met"]
        'MET: each node on its fastest device, ignoring load and transfers (Braun et al. 2001)'
        >>> list(names) == sorted(names)
        True
    """
    _load_builtin()
    return {n: _REGISTRY[n].description for n in sorted(_REGISTRY)}


def get(name: str, **options: Any) -> Policy:
    """Build the policy called ``name`` with ``options``.

    Raises:
        graphs.errors.UnknownNameError: ``name`` is not registered (the message lists them).
        policies.errors.PolicyError: an option is unknown (the message lists the valid ones).

    Example:
        >>> p = get("heft", insertion=False)
        >>> p.name, p.options["insertion"], p.options["objective"]
        ('heft', False, 'latency')
        >>> get("heft", depth=3)
        Traceback (most recent call last):
        ...
        policies.errors.PolicyError: unknown option(s) 'depth' for policy 'heft'; valid options: ...
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownNameError("policy", name, _REGISTRY)
    return _REGISTRY[name](**options)


def _load_builtin() -> None:
    # importing the package imports every policy module, which registers itself
    import policies  # noqa: F401
