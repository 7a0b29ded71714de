"""The project's exception hierarchy root and the graph package's errors.

Every error the project raises on purpose subclasses :class:`HetschedError`, so that
callers can catch the runtime's own failures precisely. Each package adds its own
subclasses in its ``errors`` module (``policies.errors``, ``executors.errors``,
``scheduler.errors``); ``graphs`` holds the root because every other package imports it.

Messages name the bad value and, where there is a fixed set, the valid choices.
"""
from __future__ import annotations

from typing import Iterable


class HetschedError(Exception):
    """Root of every error this project raises on purpose."""


class GraphError(HetschedError, ValueError):
    """A graph is malformed: missing attributes, wrong types, bad structure."""


class CyclicGraphError(GraphError):
    """A graph that must be a DAG has a cycle; the message names one cycle."""


class CaptureError(GraphError):
    """A model could not be captured into an op graph (neither fx nor torch.export)."""


class GraphFormatError(GraphError):
    """A serialised graph (JSON) is malformed; the message names the field."""


class UnknownNameError(HetschedError, ValueError):
    """A name (config, policy, profile, device, objective, ...) is not one of the valid choices."""

    def __init__(self, what: str, name: object, choices: Iterable[object]):
        self.what = what
        self.name = name
        self.choices = sorted(str(c) for c in choices)
        super().__init__(
            f"unknown {what} {name!r}; valid choices: {', '.join(self.choices) or '(none)'}"
        )
