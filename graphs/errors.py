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
    """Root of every error this project raises on purpose.

    Example:
        >>> import policies
        >>> try:
        ...     policies.get("hfet")
        ... except HetschedError as e:  # catches the project's own errors, and only those
        ...     print(type(e).__name__)
        UnknownNameError
    """


class GraphError(HetschedError, ValueError):
    """A graph is malformed: missing attributes, wrong types, bad structure.

    Example:
        >>> from graphs.synthetic import chain
        >>> chain(0)
        Traceback (most recent call last):
        ...
        graphs.errors.GraphError: n must be an integer >= 1, got 0
    """


class CyclicGraphError(GraphError):
    """A graph that must be a DAG has a cycle; the message names one cycle.

    Example:
        >>> from graphs.io import from_json, to_json
        >>> from graphs.opgraph import OpGraph
        >>> g = OpGraph(name="loop"); g.add_edges_from([("a", "b"), ("b", "a")])
        >>> from_json(to_json(g))
        Traceback (most recent call last):
        ...
        graphs.errors.CyclicGraphError: graph 'loop' has a cycle: 'a' -> 'b' -> 'a'
    """


class CaptureError(GraphError):
    """A model could not be captured into an op graph (neither fx nor torch.export).

    Example:
        >>> import torch
        >>> from graphs.capture import capture
        >>> capture(torch.nn.Linear(2, 2), ("not a tensor",))
        Traceback (most recent call last):
        ...
        graphs.errors.CaptureError: example_inputs[0] is a str, not a torch.Tensor; pass tensors only ...
    """


class GraphFormatError(GraphError):
    """A serialised graph (JSON) is malformed; the message names the field.

    Example:
        >>> from graphs.io import from_json
        >>> from_json('{"format": "networkx"}')
        Traceback (most recent call last):
        ...
        graphs.errors.GraphFormatError: field 'format' must be 'hetsched.opgraph', got 'networkx'
    """


class UnknownNameError(HetschedError, ValueError):
    """A name (config, policy, profile, device, objective, ...) is not one of the valid choices.

    ``what``, ``name`` and ``choices`` (sorted, as strings) are kept on the exception.

    Example:
        >>> e = UnknownNameError("policy", "hfet", ["heft", "cpop"])
        >>> str(e)
        "unknown policy 'hfet'; valid choices: cpop, heft"
        >>> e.name, e.choices, isinstance(e, ValueError)
        ('hfet', ['cpop', 'heft'], True)
    """

    def __init__(self, what: str, name: object, choices: Iterable[object]):
        self.what = what
        self.name = name
        self.choices = sorted(str(c) for c in choices)
        super().__init__(
            f"unknown {what} {name!r}; valid choices: {', '.join(self.choices) or '(none)'}"
        )
