"""Errors of the policies package."""
from __future__ import annotations

from graphs.errors import HetschedError, UnknownNameError  # noqa: F401  (re-exported)


class PolicyError(HetschedError, ValueError):
    """A policy was given input it cannot work with (bad options, bad cost model, ...)."""


class InfeasiblePlacement(PolicyError):
    """No placement satisfies the constraints (memory, op support, latency bound).

    ``shortfall`` is how much is missing (bytes for memory, seconds for a latency bound).
    """

    def __init__(self, message: str, shortfall: float | None = None):
        super().__init__(message)
        self.shortfall = shortfall


class InvalidPlan(PolicyError):
    """``policies.validate`` found a plan broken; ``problems`` lists every violation."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = "; ".join(self.problems[:10])
        more = f" (+{len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"invalid plan: {head}{more}")


class CostModelError(HetschedError, ValueError):
    """A cost model cannot price a node or transfer (missing attribute, zero speed, ...)."""
