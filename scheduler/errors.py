"""Errors of the scheduler package.

Every error here subclasses :class:`SchedulerError`, itself a
:class:`graphs.errors.HetschedError`. Unknown names (a time unit, a colouring mode) raise
the project-wide :class:`graphs.errors.UnknownNameError`, whose message lists the valid
choices. Add new classes at the end of this file.
"""
from __future__ import annotations

from graphs.errors import HetschedError, UnknownNameError  # noqa: F401  (re-exported)


class SchedulerError(HetschedError):
    """Root of the scheduler package's errors.

    Example:
        >>> from scheduler.simulate import poisson_arrivals
        >>> try:
        ...     poisson_arrivals(0.0, 10)
        ... except SchedulerError as e:  # any error of the scheduler package
        ...     print(type(e).__name__, "-", e)
        SimulationError - rate must be a finite number > 0 (requests per second), got 0.0
    """


class SimulationError(SchedulerError, ValueError):
    """The simulator was given input it cannot simulate (bad arrivals, infinite times, ...).

    Example:
        >>> from scheduler.simulate import periodic_arrivals
        >>> periodic_arrivals(-1.0, 3)
        Traceback (most recent call last):
        ...
        scheduler.errors.SimulationError: period must be a finite number >= 0 (seconds), got -1.0
    """


class PlanMismatchError(SimulationError):
    """A plan does not fit the graph or cluster: a node missing from the plan, a device
    missing from ``plan.order``, a node listed on the wrong device, ...

    Example:
        >>> import networkx as nx
        >>> from policies import Plan, TableCostModel
        >>> from scheduler.simulate import simulate
        >>> cm = TableCostModel({"a": {"x": 1.0}, "b": {"x": 1.0}}, {("a", "b"): 0.0})
        >>> only_a = Plan({"a": "x"}, {"x": ("a",)}, {"a": 0.0}, {"a": 1.0}, 1.0)
        >>> simulate(nx.DiGraph([("a", "b")]), only_a, cm)
        Traceback (most recent call last):
        ...
        scheduler.errors.PlanMismatchError: node(s) not in the plan's assignment: 'b'
    """


class DeadlockError(SimulationError):
    """The plan's per-device order contradicts the graph's precedence, so no node of a
    cycle can ever start. ``cycle`` lists the nodes of one such cycle, in wait order.

    Example:
        >>> import networkx as nx
        >>> from policies import Plan, TableCostModel
        >>> from scheduler.simulate import simulate
        >>> cm = TableCostModel({"a": {"x": 1.0}, "b": {"x": 1.0}}, {("a", "b"): 0.0})
        >>> b_first = Plan({"a": "x", "b": "x"}, {"x": ("b", "a")}, {"a": 1, "b": 0}, {"a": 2, "b": 1}, 2)
        >>> try:
        ...     simulate(nx.DiGraph([("a", "b")]), b_first, cm)  # b needs a, but x runs b first
        ... except DeadlockError as e:
        ...     print(e.cycle)
        ['a', 'b']
    """

    def __init__(self, message: str, cycle: list | None = None):
        super().__init__(message)
        self.cycle = list(cycle or [])


class TraceError(SchedulerError, ValueError):
    """A trace event or trace output request is malformed; the message names the field.

    Example:
        >>> from scheduler.trace import TraceEvent
        >>> TraceEvent("matmul", "cpu", start=2.0, end=1.0)
        Traceback (most recent call last):
        ...
        scheduler.errors.TraceError: trace event 'matmul': end 1.0 is before start 2.0
    """


# --------------------------------------------------------------- Runtime (helper "runtime")
class RuntimeConfigError(SchedulerError, ValueError):
    """A :class:`scheduler.Runtime` was configured wrongly (bad option value, empty device
    list, a device the plan cannot use, ...); the message names the value and the choices.

    Example:
        >>> import torch
        >>> from scheduler import Runtime
        >>> Runtime(torch.nn.Linear(4, 2), torch.randn(1, 4), devices=["cpu", "cpu"])  # before Ray starts
        Traceback (most recent call last):
        ...
        scheduler.errors.RuntimeConfigError: device(s) listed twice: cpu
    """


class InputSignatureError(SchedulerError, ValueError):
    """A submitted input does not match the example inputs' signature (count, type, dtype,
    rank, static dimensions); the message names the input, what was expected and what came.

    Example:
        >>> import torch
        >>> from scheduler.signature import InputSignature
        >>> sig = InputSignature((torch.zeros(2, 3),))  # what Runtime.submit checks inputs against
        >>> sig.check((torch.zeros(2, 4),))
        Traceback (most recent call last):
        ...
        scheduler.errors.InputSignatureError: input 0: dimension 1 is 4, expected 3 (signature float32[2, 3]); declare it ...
    """


class SubmitTimeout(SchedulerError, TimeoutError):
    """Backpressure: ``max_in_flight`` requests were in flight for longer than the submit
    timeout, so :meth:`scheduler.Runtime.submit` gave up.

    It is also a ``TimeoutError``. Raising it needs a running (Ray) runtime; a caller that
    sheds load instead of waiting catches it like this:

    Example:
        >>> def submit_or_shed(submit, *inputs):
        ...     try:
        ...         return submit(*inputs)  # e.g. rt.submit of a Runtime(submit_timeout=0.1)
        ...     except SubmitTimeout:
        ...         return None  # the runtime is saturated: drop this request
        >>> def saturated(*inputs):
        ...     raise SubmitTimeout("32 requests in flight for 0.1 s (max_in_flight=32)")
        >>> submit_or_shed(saturated, 1.0) is None, submit_or_shed(lambda x: x + 1, 1.0)
        (True, 2.0)
    """


class RequestTimeout(SchedulerError, TimeoutError):
    """A request did not finish within its ``request_timeout``; its remaining Ray tasks were
    cancelled (best effort) and its in-flight slot freed.

    The runtime sets it on the request's future; it is also a ``TimeoutError``.

    Example:
        >>> import concurrent.futures as cf
        >>> fut = cf.Future()  # as Runtime.submit returns; here the runtime's part is played by hand
        >>> fut.set_exception(RequestTimeout("request 3 did not finish within 0.5 s"))
        >>> try:
        ...     fut.result()
        ... except TimeoutError as e:
        ...     print(type(e).__name__, "-", e)
        RequestTimeout - request 3 did not finish within 0.5 s
    """


class RequestFailed(SchedulerError, RuntimeError):
    """A request failed: its partition raised, or an executor failed more times than the
    runtime retries. ``cause`` is the underlying exception (also ``__cause__``).

    Example:
        >>> import concurrent.futures as cf
        >>> fut = cf.Future()  # as Runtime.submit returns; here the runtime's part is played by hand
        >>> fut.set_exception(RequestFailed("request 5: partition 2 on cpu failed",
        ...                                 cause=IndexError("index 9 is out of bounds")))
        >>> try:
        ...     fut.result()
        ... except RequestFailed as e:
        ...     print(type(e.cause).__name__, e.__cause__ is e.cause)
        IndexError True
    """

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause
        self.__cause__ = cause


class RuntimeClosedError(SchedulerError, RuntimeError):
    """The runtime was shut down; it accepts no more requests.

    Example:
        >>> from graphs.sampling import SamplingParams
        >>> from scheduler.generation import GenerationConfig, GenerationEngine
        >>> engine = GenerationEngine((), {}, {}, GenerationConfig(), model_config=None)
        >>> engine.close()  # what Runtime.shutdown does to its engines
        >>> engine.submit([1, 2, 3], 4, SamplingParams(), (), None)
        Traceback (most recent call last):
        ...
        scheduler.errors.RuntimeClosedError: the runtime is shut down; it accepts no more generation requests
    """


# ------------------------------------------------------ adaptive loop (helper "adaptive")
class AdaptiveError(SchedulerError, ValueError):
    """The adaptive loop (drift detector, health tracker, re-plan controller) was given a
    bad parameter or input; the message names the value and the valid range or choices.

    Example:
        >>> from scheduler import AdaptiveConfig
        >>> AdaptiveConfig.coerce({"treshold": 0.2})  # a typo in an option name
        Traceback (most recent call last):
        ...
        scheduler.errors.AdaptiveError: unknown adaptive option(s) 'treshold'; valid options: threshold, ...
    """


class PlanSwitchError(SchedulerError, RuntimeError):
    """Plan-version bookkeeping was violated: a request completed twice, on a version it
    was not admitted to, or a re-plan found no healthy device left to place on.

    Example:
        >>> from scheduler import VersionLedger
        >>> ledger = VersionLedger()  # requests are pinned to the plan version that admitted them
        >>> ledger.admit("r1"), ledger.current
        (0, 0)
        >>> ledger.publish(0)
        Traceback (most recent call last):
        ...
        scheduler.errors.PlanSwitchError: plan version 0 is not newer than the current v0
    """


# ------------------------------------------------------ tables and CLI (helper "cli")
class MissingDependencyError(SchedulerError, ImportError):
    """An optional package a function needs (pandas for ``scheduler.tables.to_frame``) is
    not installed; the message says how to install it.

    It is also an ``ImportError``, so code that can do without the package catches that.

    Example:
        >>> from scheduler.tables import to_frame
        >>> rows = [{"device": "cpu", "busy": 1.5}]
        >>> try:
        ...     table = to_frame(rows)  # a pandas.DataFrame where pandas is installed
        ... except ImportError:  # MissingDependencyError: pandas is optional
        ...     table = rows
        >>> len(table)
        1
    """


class CLIError(SchedulerError, ValueError):
    """A ``hetsched`` command-line argument is invalid; the message names it and the valid
    choices (the CLI prints it as one line and exits with status 2).

    Example:
        >>> from scheduler.cli.common import parse_size
        >>> parse_size("0.5GB"), isinstance(CLIError("x"), ValueError)
        (500000000.0, True)
        >>> parse_size("0")
        Traceback (most recent call last):
        ...
        scheduler.errors.CLIError: bad size '0': it must be > 0
    """
