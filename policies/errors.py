"""Errors of the policies package."""
from __future__ import annotations

from graphs.errors import HetschedError, UnknownNameError  # noqa: F401  (re-exported)


class PolicyError(HetschedError, ValueError):
    """A policy was given input it cannot work with (bad options, bad cost model, ...).

    Example:
        >>> import policies
        >>> try:
        ...     policies.get("heft", objective="throughput")
        ... except PolicyError as e:  # also a ValueError and a graphs.errors.HetschedError
        ...     print(e)
        policy 'heft' does not serve objective 'throughput'; it serves: latency, energy
    """


class InfeasiblePlacement(PolicyError):
    """No placement satisfies the constraints (memory, op support, latency bound).

    ``shortfall`` is how much is missing (bytes for memory, seconds for a latency bound).

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster
        >>> from policies import HEFT, TableCostModel
        >>> cm = TableCostModel({"a": {"x": 2.0}, "b": {"x": 3.0}}, {("a", "b"): 1.0})
        >>> try:
        ...     HEFT(latency_bound=4.0).place(nx.DiGraph([("a", "b")]), Cluster.from_names(["x"]), cm)
        ... except InfeasiblePlacement as e:
        ...     print(e, "| shortfall:", e.shortfall)
        makespan 5 s exceeds latency_bound 4 s by 1 s | shortfall: 1.0
    """

    def __init__(self, message: str, shortfall: float | None = None):
        super().__init__(message)
        self.shortfall = shortfall


class InvalidPlan(PolicyError):
    """``policies.validate`` found a plan broken; ``problems`` lists every violation.

    Example:
        >>> e = InvalidPlan(["node 'a' is not placed", "node 'b' is not placed"])
        >>> e.problems[1], str(e)
        ("node 'b' is not placed", "invalid plan: node 'a' is not placed; node 'b' is not placed")
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = "; ".join(self.problems[:10])
        more = f" (+{len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"invalid plan: {head}{more}")


class CostModelError(HetschedError, ValueError):
    """A cost model cannot price a node or transfer (missing attribute, zero speed, ...).

    Example:
        >>> from policies.abstract import TableCostModel
        >>> TableCostModel({"a": {"x": -1.0}}, {})
        Traceback (most recent call last):
        ...
        policies.errors.CostModelError: node_time['a']['x'] must be a number >= 0, got -1.0
    """
