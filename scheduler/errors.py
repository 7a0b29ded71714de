"""Errors of the scheduler package.

Every error here subclasses :class:`SchedulerError`, itself a
:class:`graphs.errors.HetschedError`. Unknown names (a time unit, a colouring mode) raise
the project-wide :class:`graphs.errors.UnknownNameError`, whose message lists the valid
choices. Add new classes at the end of this file.
"""
from __future__ import annotations

from graphs.errors import HetschedError, UnknownNameError  # noqa: F401  (re-exported)


class SchedulerError(HetschedError):
    """Root of the scheduler package's errors."""


class SimulationError(SchedulerError, ValueError):
    """The simulator was given input it cannot simulate (bad arrivals, infinite times, ...)."""


class PlanMismatchError(SimulationError):
    """A plan does not fit the graph or cluster: a node missing from the plan, a device
    missing from ``plan.order``, a node listed on the wrong device, ..."""


class DeadlockError(SimulationError):
    """The plan's per-device order contradicts the graph's precedence, so no node of a
    cycle can ever start. ``cycle`` lists the nodes of one such cycle, in wait order."""

    def __init__(self, message: str, cycle: list | None = None):
        super().__init__(message)
        self.cycle = list(cycle or [])


class TraceError(SchedulerError, ValueError):
    """A trace event or trace output request is malformed; the message names the field."""


# --------------------------------------------------------------- Runtime (helper "runtime")
class RuntimeConfigError(SchedulerError, ValueError):
    """A :class:`scheduler.Runtime` was configured wrongly (bad option value, empty device
    list, a device the plan cannot use, ...); the message names the value and the choices."""


class InputSignatureError(SchedulerError, ValueError):
    """A submitted input does not match the example inputs' signature (count, type, dtype,
    rank, static dimensions); the message names the input, what was expected and what came."""


class SubmitTimeout(SchedulerError, TimeoutError):
    """Backpressure: ``max_in_flight`` requests were in flight for longer than the submit
    timeout, so :meth:`scheduler.Runtime.submit` gave up."""


class RequestTimeout(SchedulerError, TimeoutError):
    """A request did not finish within its ``request_timeout``; its remaining Ray tasks were
    cancelled (best effort) and its in-flight slot freed."""


class RequestFailed(SchedulerError, RuntimeError):
    """A request failed: its partition raised, or an executor failed more times than the
    runtime retries. ``cause`` is the underlying exception (also ``__cause__``)."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause
        self.__cause__ = cause


class RuntimeClosedError(SchedulerError, RuntimeError):
    """The runtime was shut down; it accepts no more requests."""


# ------------------------------------------------------ adaptive loop (helper "adaptive")
class AdaptiveError(SchedulerError, ValueError):
    """The adaptive loop (drift detector, health tracker, re-plan controller) was given a
    bad parameter or input; the message names the value and the valid range or choices."""


class PlanSwitchError(SchedulerError, RuntimeError):
    """Plan-version bookkeeping was violated: a request completed twice, on a version it
    was not admitted to, or a re-plan found no healthy device left to place on."""


# ------------------------------------------------------ tables and CLI (helper "cli")
class MissingDependencyError(SchedulerError, ImportError):
    """An optional package a function needs (pandas for ``scheduler.tables.to_frame``) is
    not installed; the message says how to install it."""


class CLIError(SchedulerError, ValueError):
    """A ``hetsched`` command-line argument is invalid; the message names it and the valid
    choices (the CLI prints it as one line and exits with status 2)."""
