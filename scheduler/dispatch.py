"""The dispatcher: requests through the partition DAG as Ray object refs.

At :meth:`Dispatcher.submit` the inputs go into the object store once (``ray.put``) and
every partition's actor call is issued at once, in topological order, with the object refs
of the values it consumes as arguments. Ray resolves the refs where the call runs, so
tensors move actor to actor and the driver fetches only the model's outputs. An actor runs
the calls it receives in submission order; since every request's calls are submitted in a
topological order and requests one after another, no call ever waits on a later one, so
the scheme cannot deadlock, and while request *n* runs on device B request *n+1* already
runs on device A (pipelining).

Completion is event driven, with no thread per request: every output ref the driver
waits for gets a Ray completion callback that puts an event on a queue; one completion
thread drains it, completes futures, enforces request timeouts and handles cancellation.
Each partition call also returns a small meta record (what it measured) as a separate
object; once a request's outputs are ready all its calls have run, so the completion
thread fetches these records later, in batches, when it is idle (:meth:`Dispatcher.flush`),
and records the measurements off the request's path.
A request moves through a small state machine (``running`` -> ``completed | failed |
cancelled | timeout``) guarded by a lock and tagged with an attempt number, so a user's
future is completed exactly once even when a failed request is retried: events of an
older attempt are ignored.

Cancellation and timeouts complete the future at once and free the in-flight slot; the
request's calls already sent to actors still run, and their results are dropped. The
dispatcher does not ``ray.cancel`` them: in Ray 2.60 cancelling an actor task that is
still queued at the caller leaves a hole in the actor's ordered task queue, and the
actor then stalls for 30 s waiting for the missing sequence number (observed here:
"Timed out waiting for seq_no ... Cancelling all queued tasks"), failing the requests
behind it. Partition calls are short, so letting them finish costs little.

Failures: an actor that dies (``RayActorError``) or an executor error (for instance a
restarted actor that lost its partitions) makes the request *retryable*: a recovery thread
calls the runtime's ``recover`` hook (which waits for the actor to come back and reloads
its partitions) and then re-issues every call of the request with fresh refs. A request
fails for good (``RequestFailed``) after ``max_retries`` retries or when its partition
raised an ordinary exception.

Early exits: with ``exits`` (see :mod:`scheduler.gated`) a request runs in *phases*. A
phase issues the stages up to the next exit point (the partition holding a shallow path,
its exit head and its gate) and watches only the gate's decision and the exit logits.
When the gate passes, the future gets the exit logits and no other device is touched;
otherwise the next phase is issued with the hidden state's object ref, so the deep path
continues where the shallow path left off (the hidden state never visits the driver).
The future of a completed request carries ``exit_depth`` (0: full model).

The dispatcher knows nothing about models or policies: it gets :class:`Stage` records and
actor handles, and the runtime tells it how to rebuild an output (``assemble``).
"""
from __future__ import annotations

import concurrent.futures as cf
import heapq
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

from .errors import PlanSwitchError, RequestFailed, RequestTimeout, RuntimeClosedError, SubmitTimeout
from .stats import Measurement, RequestRecord, StatsRecorder, dag_makespan, request_energy


@dataclass(frozen=True)
class Stage:
    """One partition call of a request.

    Example:
        >>> Stage(pid=0, device="cpu", inputs=("x",), outputs=("y",)).outputs
        ('y',)
    """

    pid: int  # partition id (as loaded on the device's actor)
    device: str  # device name; the key of the actor that runs it
    inputs: tuple[str, ...]  # value names it consumes, in argument order
    outputs: tuple[str, ...]  # value names it returns, in return order


@dataclass
class _Request:
    rid: int
    inputs: tuple  # the model inputs (kept for retries)
    future: cf.Future
    submitted: float  # time.time()
    deadline: float | None  # time.monotonic() deadline
    attempt: int = 0
    state: str = "running"
    refs: list = field(default_factory=list)  # refs of the current attempt (for cancel)
    pending: int = 0  # events still awaited in the current attempt
    outputs: dict = field(default_factory=dict)  # index -> fetched output value
    meta_refs: list = field(default_factory=list)  # (pid, ObjectRef of its meta record)
    values: dict = field(default_factory=dict)  # value name -> ObjectRef or input, current attempt
    cursor: int = 0  # index of the next stage to issue (phases with exits)
    gate: dict = field(default_factory=dict)  # 0 -> gate decision, 1 -> exit logits (fetched)
    exit_depth: int = 0  # depth the request left at; 0 = the full model
    version: int = 0  # plan version of the current attempt (every call of it runs on it)


@dataclass
class _Route:
    """The partition calls of one plan version (see :meth:`Dispatcher.add_version`)."""

    stages: tuple  # Stage records in a topological order
    stage_of: dict  # pid -> Stage
    uses: dict  # value name -> number of stages reading it
    dag: Any = None  # partition DAG (pids) for a request's simulated makespan
    transfer: Any = None  # transfer(u, v) seconds between partitions
    retired: bool = False  # drained and unloaded; kept for late measurements


def _uses(stages) -> dict:
    uses: dict[str, int] = {}
    for st in stages:
        for n in st.inputs:
            uses[n] = uses.get(n, 0) + 1
    return uses


# event kinds on the completion queue
_EV_REF, _EV_CANCEL, _EV_RETRY_FAILED, _EV_STOP, _EV_WAKE = range(5)


def _is_infrastructure(err: BaseException) -> bool:
    """True for failures a retry can fix: a dead or restarting actor, a lost object, a
    worker crash, or a restarted actor that lacks its partitions (the executor's "is not
    loaded" error). A partition that raised (bad values, a bug) is not retried."""
    try:
        import ray.exceptions as rex
    except Exception:  # pragma: no cover
        return False
    infra = (rex.RayActorError, rex.ObjectLostError, rex.WorkerCrashedError)
    from executors.errors import ExecutorError

    cause = err
    for _ in range(4):
        if isinstance(cause, infra):
            return True
        if isinstance(cause, ExecutorError) and "is not loaded" in str(cause):
            return True
        nxt = getattr(cause, "cause", None) or cause.__cause__
        if nxt is None or nxt is cause:
            break
        cause = nxt
    return False


class Dispatcher:
    """Runs requests through a partition DAG on Ray actors (see the module docstring).

    Args:
        stages: partition calls in a topological order.
        actors: device name -> Ray actor handle offering ``run_split`` (see
            :mod:`executors.ray_actor`); read at each submit, so the runtime may replace one.
        input_names: value names of the model inputs, in positional order.
        output_names: value names the driver fetches to build a result.
        assemble: builds the user's result from the fetched values (in ``output_names`` order).
        recorder: where measurements and finished requests go.
        dag: the partition DAG (partition ids) for a request's simulated makespan.
        transfer: ``transfer(u, v)`` seconds to move the values of partition edge ``u -> v``.
        power: device -> (active, idle) watts, for a request's energy (simulated devices).
        max_in_flight: requests in flight at once; :meth:`submit` blocks beyond it.
        submit_timeout: seconds :meth:`submit` may block (None: forever) before
            :class:`~scheduler.errors.SubmitTimeout`.
        request_timeout: seconds from submit to result (None: no limit) before the future
            gets :class:`~scheduler.errors.RequestTimeout`.
        max_retries: retries of a request after infrastructure failures.
        recover: called (in the recovery thread) before retrying; it must bring the actors
            back with their partitions loaded, or raise.
        on_measurement: callbacks called with every :class:`~scheduler.stats.Measurement`.
        exits: :class:`scheduler.gated.ExitPoint` records, in stage order (early exits).
        flops: partition id -> FLOPs, to record the compute each request used.

    Example (needs Ray; the runtime builds one for you)::

        d = Dispatcher([Stage(0, "cpu", ("x",), ("y",))], {"cpu": actor}, ("x",), ("y",),
                       lambda vals: vals[0], StatsRecorder())
        d.submit((torch.ones(2),)).result()
    """

    def __init__(self, stages: Sequence[Stage], actors: Mapping[str, Any],
                 input_names: Sequence[str], output_names: Sequence[str],
                 assemble: Callable[[tuple], Any], recorder: StatsRecorder, *,
                 dag=None, transfer: Callable[[Hashable, Hashable], float] | None = None,
                 power: Mapping[str, tuple[float, float] | None] | None = None,
                 max_in_flight: int = 32, submit_timeout: float | None = None,
                 request_timeout: float | None = None, max_retries: int = 3,
                 recover: Callable[[], None] | None = None,
                 on_measurement: Sequence[Callable[[Measurement], None]] = (),
                 exits: Sequence[Any] = (), flops: Mapping[int, float] | None = None,
                 ledger: Any = None):
        import ray

        self._ray = ray
        self.stages = tuple(stages)
        self.actors = actors
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.assemble = assemble
        self.recorder = recorder
        self.dag = dag
        self.transfer = transfer
        self.power = dict(power or {})
        self.max_in_flight = max_in_flight
        self.submit_timeout = submit_timeout
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.recover = recover
        self.on_measurement: list[Callable[[Measurement], None]] = list(on_measurement)
        self.exits = tuple(exits)
        self.flops = dict(flops or {})
        self._exit_at = {e.stage: e for e in self.exits}
        self._stage_of = {s.pid: s for s in self.stages}
        self._uses: dict[str, int] = {}
        for st in self.stages:
            for n in st.inputs:
                self._uses[n] = self._uses.get(n, 0) + 1
        #: plan versions (adaptive runtimes): version -> route; a request is pinned to the
        #: version current at its admission, a retry to the version current at the retry
        self.ledger = ledger  # scheduler.adaptive.VersionLedger, or None
        self.version = 0 if ledger is None else ledger.current
        self._routes: dict[int, _Route] = {
            self.version: _Route(self.stages, self._stage_of, self._uses, dag, transfer)}
        #: seconds a completed request's measurements may wait for a batch (None: until the
        #: completion thread is idle or 256 are waiting); the adaptive loop sets it
        self.max_flush_delay: float | None = None
        self._methods: dict = {}
        self._backlog: list = []  # completed requests whose meta records are not fetched yet
        self._flush_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._deadlines: list[tuple[float, int]] = []
        self._closed = False
        self._healthy = threading.Event()
        self._healthy.set()
        self._retry_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._completer = threading.Thread(target=self._complete_loop, name="hetsched-complete",
                                           daemon=True)
        self._retrier = threading.Thread(target=self._retry_loop, name="hetsched-retry", daemon=True)
        self._completer.start()
        self._retrier.start()

    # ------------------------------------------------------------------- submit
    def submit(self, inputs: tuple, request_timeout: float | None = None) -> cf.Future:
        """Issue every partition call of one request; return the future of its result.

        ``request_timeout`` overrides the dispatcher's for this request."""
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down; create a new Runtime to submit")
        timeout = self.submit_timeout
        got = self._slots.acquire() if timeout is None else self._slots.acquire(timeout=timeout)
        if not got:
            raise SubmitTimeout(
                f"{self.max_in_flight} requests in flight for more than submit_timeout="
                f"{timeout} s; wait for results, raise max_in_flight or the submit timeout")
        try:
            if self._closed:
                raise RuntimeClosedError("the runtime is shut down; create a new Runtime to submit")
            self._healthy.wait(timeout=60.0)  # hold new work while actors are being recovered
            now = time.time()
            fut: cf.Future = cf.Future()
            rid = next(self._ids)
            limit = self.request_timeout if request_timeout is None else request_timeout
            deadline = (time.monotonic() + limit) if limit else None
            req = _Request(rid=rid, inputs=tuple(inputs), future=fut, submitted=now, deadline=deadline)
            fut.request = rid  # type: ignore[attr-defined]
            with self._lock:
                req.version = self.version
                if self.ledger is not None:
                    self.ledger.admit(rid)
                self._requests[rid] = req
                if deadline is not None:
                    heapq.heappush(self._deadlines, (deadline, rid))
                self._issue(req)
            self.recorder.add_submit(now)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda f, rid=rid: f.cancelled() and self._events.put((_EV_CANCEL, rid)))
        if deadline is not None:
            self._events.put((_EV_WAKE,))  # wake the loop to see the deadline
        return fut

    def _issue(self, req: _Request) -> None:
        """Submit the calls of ``req``'s current attempt (caller holds the lock)."""
        # an input read by one call travels inline with it; one read by several is put once
        uses = self._routes[req.version].uses
        req.values = {n: (self._ray.put(x) if uses.get(n, 0) > 1 else x)
                      for n, x in zip(self.input_names, req.inputs)}
        req.refs, req.meta_refs, req.cursor, req.exit_depth = [], [], 0, 0
        self._issue_phase(req)

    def _issue_phase(self, req: _Request) -> None:
        """Submit the stages from ``req.cursor`` up to the next exit point (or the end) and
        watch what decides the request: the gate's outputs, or the model's outputs."""
        values = req.values
        exit_point = None
        stages = self._routes[req.version].stages
        for i in range(req.cursor, len(stages)):
            st = stages[i]
            args = [values[n] for n in st.inputs]
            out = self._method(st).remote(st.pid, *args, request=req.rid)
            *outs, meta = out
            values.update(zip(st.outputs, outs))
            req.refs.extend(out)
            req.meta_refs.append((st.pid, meta))
            req.cursor = i + 1
            exit_point = self._exit_at.get(i)
            if exit_point is not None:
                break
        req.outputs = {}
        attempt = req.attempt
        if exit_point is not None:
            req.gate = {}
            req.pending = 2
            for key, name in enumerate((exit_point.go, exit_point.logits)):
                values[name].future().add_done_callback(
                    lambda f, rid=req.rid, a=attempt, key=key:
                    self._events.put((_EV_REF, rid, a, "gate", key, f)))
            return
        watch = []
        for i, name in enumerate(self.output_names):
            v = values[name]
            if isinstance(v, self._ray.ObjectRef):
                watch.append((i, v))
            else:  # an output that is a model input
                req.outputs[i] = v
        req.pending = len(watch)
        # only the outputs are watched: once they are ready every partition has run, and
        # the meta records are fetched later in batches (flush), off the request's path
        for key, ref in watch:
            ref.future().add_done_callback(
                lambda f, rid=req.rid, a=attempt, key=key:
                self._events.put((_EV_REF, rid, a, "out", key, f)))

    def _method(self, st: Stage):
        """``run_split`` of the stage's actor with its number of returns (cached per actor
        handle: a restarted actor keeps its handle)."""
        actor = self.actors[st.device]
        key = (id(actor), len(st.outputs))
        m = self._methods.get(key)
        if m is None or m[0] is not actor:
            m = self._methods[key] = (actor, actor.run_split.options(num_returns=len(st.outputs) + 1))
        return m[1]

    # --------------------------------------------------------------- completion
    def _complete_loop(self) -> None:
        while True:
            timeout = 0.05 if self._backlog else 0.5
            with self._lock:
                if self._deadlines:
                    timeout = min(timeout, max(0.0, self._deadlines[0][0] - time.monotonic()))
            delay = self.max_flush_delay
            try:
                ev = self._events.get(timeout=timeout)
            except queue.Empty:
                ev = None
            if ev is not None and ev[0] == _EV_STOP:
                return
            try:
                if ev is not None:
                    self._handle(ev)
                self._expire()
                if self._backlog and (ev is None or len(self._backlog) >= 256 or (
                        delay is not None and time.time() - self._backlog[0][1] > delay)):
                    self.flush()  # idle for 50 ms, enough records for one batch, or old enough
            except Exception:  # pragma: no cover - keep serving; the error is on a future
                import traceback

                traceback.print_exc()

    def _handle(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == _EV_WAKE:
            return
        if kind == _EV_CANCEL:
            self._finish(ev[1], "cancelled", None)
            return
        if kind == _EV_RETRY_FAILED:
            self._finish(ev[1], "failed", ev[2])
            return
        _, rid, attempt, what, key, f = ev
        with self._lock:
            req = self._requests.get(rid)
            if req is None or req.state != "running" or req.attempt != attempt:
                return  # stale event (finished request or an older attempt)
        try:
            value = f.result()
        except BaseException as err:  # noqa: BLE001 - every failure decides retry or fail
            self._failed(req, attempt, what, key, err)
            return
        if what == "gate":
            self._gate_event(req, attempt, key, value)
            return
        with self._lock:
            if req.state != "running" or req.attempt != attempt:
                return
            req.outputs[key] = value
            req.pending -= 1
            done = req.pending == 0
        if done:
            try:
                result = self.assemble(tuple(req.outputs[i] for i in range(len(self.output_names))))
            except BaseException as err:  # noqa: BLE001
                self._finish(rid, "failed", RequestFailed(
                    f"request {rid}: rebuilding the output failed: {err}", err))
                return
            self._finish(rid, "completed", result)

    def _gate_event(self, req: _Request, attempt: int, key: int, value: Any) -> None:
        """The gate's decision (key 0) or the exit logits (key 1) arrived: once both are
        here, finish the request with the exit logits or issue its next phase."""
        with self._lock:
            if req.state != "running" or req.attempt != attempt:
                return
            req.gate[key] = value
            req.pending -= 1
            if req.pending:
                return
            point = self._exit_at[req.cursor - 1]
            if not bool(req.gate[0]):
                self._issue_phase(req)  # hard: continue from the hidden state's ref
                return
            req.exit_depth = point.depth
            logits = req.gate[1]
        self._finish(req.rid, "completed", logits)

    def _failed(self, req: _Request, attempt: int, what: str, key: int, err: BaseException) -> None:
        where = (f"output {self.output_names[key]!r}" if what == "out"
                 else f"the gate of the exit at stage {req.cursor - 1}")
        if _is_infrastructure(err) and attempt < self.max_retries and not self._closed:
            with self._lock:
                if req.state != "running" or req.attempt != attempt:
                    return
                req.attempt += 1  # events of the failed attempt are ignored from now on
                retry = req.attempt
                self._healthy.clear()
            self.recorder.add_retry()
            self._retry_queue.put((req.rid, err, retry))
            return
        tries = attempt + 1
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        summary = lines[-1] if lines else type(err).__name__  # Ray puts the cause's text last
        self._finish(req.rid, "failed", RequestFailed(
            f"request {req.rid} failed after {tries} attempt(s) (waiting for {where}): {summary}",
            err))

    def _retry_loop(self) -> None:
        while True:
            item = self._retry_queue.get()
            if item is None:
                return
            rid, err, retry = item
            try:
                if self.recover is not None:
                    self.recover()
                self._healthy.set()
                with self._lock:
                    req = self._requests.get(rid)
                    if req is None or req.state != "running" or req.attempt != retry:
                        continue  # finished, or already restarted by reroute()
                    self._repin(req)
                    self._issue(req)
            except BaseException as e:  # noqa: BLE001
                self._healthy.set()
                self._events.put((_EV_RETRY_FAILED, rid, RequestFailed(
                    f"request {rid}: recovery after {type(err).__name__} failed: "
                    f"{type(e).__name__}: {e}", e)))

    def _expire(self) -> None:
        now = time.monotonic()
        expired = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, rid = heapq.heappop(self._deadlines)
                req = self._requests.get(rid)
                if req is not None and req.state == "running":
                    expired.append(rid)
        for rid in expired:
            self._finish(rid, "timeout", RequestTimeout(
                f"request {rid} did not finish within its request timeout"))

    def _finish(self, rid: int, status: str, value: Any) -> None:
        """Move request ``rid`` to a terminal state (once) and complete its future."""
        with self._lock:
            req = self._requests.get(rid)
            if req is None or req.state != "running":
                return
            req.state = status
            del self._requests[rid]
            req.refs = []  # dropping the refs lets Ray free the objects once the calls end
            req.values, req.gate = {}, {}
            metas, req.meta_refs = req.meta_refs, []
        self._slots.release()
        finished = time.time()
        if self.ledger is not None:
            try:
                if status == "completed":
                    self.ledger.complete(rid, req.version)
                else:
                    self.ledger.fail(rid)
            except PlanSwitchError as err:  # never expected: refuse a suspect answer loudly
                status, value = "failed", RequestFailed(f"request {rid}: {err}", err)
        if status == "completed":
            with self._flush_lock:
                self._backlog.append((req, finished, metas))
        else:
            self.recorder.add_request(RequestRecord(
                request=rid, submitted=req.submitted, finished=finished, status=status,
                attempts=req.attempt + 1, version=req.version))
        fut = req.future
        fut.plan_version = req.version  # type: ignore[attr-defined]
        if status == "cancelled":
            return  # the caller cancelled the future itself
        if not fut.set_running_or_notify_cancel():
            return  # cancelled at the same moment: the cancel event finds no running request
        if status == "completed":
            fut.exit_depth = req.exit_depth  # 0: the full model; d: left at the exit after d stages
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def flush(self) -> None:
        """Fetch the meta records of completed requests (in one batch) and record their
        measurements and request records; called by the completion thread when idle and
        before statistics are read."""
        with self._flush_lock:
            backlog, self._backlog = self._backlog, []
            if not backlog:
                return
            flat = [ref for _, _, metas in backlog for _, ref in metas]
            try:
                values = iter(self._ray.get(flat, timeout=60))
                fetched = [[next(values) for _ in metas] for _, _, metas in backlog]
            except Exception:  # noqa: BLE001 - a lost meta record only costs a measurement
                fetched = []
                for _, _, metas in backlog:
                    row = []
                    for _, ref in metas:
                        try:
                            row.append(self._ray.get(ref, timeout=10))
                        except Exception:  # noqa: BLE001
                            row.append(None)
                    fetched.append(row)
            for (req, finished, metas), row in zip(backlog, fetched):
                got = {pid: m for (pid, _), m in zip(metas, row) if m is not None}
                for pid, v in got.items():
                    m = Measurement(request=req.rid, attempt=req.attempt, partition=pid,
                                    device=v.device, start=v.start, duration=v.duration,
                                    wall=v.wall, simulated=bool(v.simulated), version=req.version)
                    self.recorder.add_measurement(m)
                    for cb in self.on_measurement:
                        try:
                            cb(m)
                        except Exception:  # noqa: BLE001 - a user hook must not stop the runtime
                            pass
                sim, energy = (self._request_sim(got, self._routes.get(req.version))
                               if len(got) == len(metas) else (None, None))
                flops = (sum(self.flops.get(pid, 0.0) for pid, _ in metas) if self.flops else None)
                self.recorder.add_request(RequestRecord(
                    request=req.rid, submitted=req.submitted, finished=finished,
                    status="completed", attempts=req.attempt + 1, sim_makespan=sim, energy=energy,
                    exit_depth=req.exit_depth, flops=flops, version=req.version))

    def _request_sim(self, metas: Mapping[int, Any], route: "_Route | None" = None
                     ) -> tuple[float | None, float | None]:
        route = route or self._routes[self.version]
        if route.dag is None or not metas or not all(m.simulated for m in metas.values()):
            return None, None
        dur = {pid: m.duration for pid, m in metas.items()}
        dag = route.dag
        if len(metas) < len(route.stages):  # left at an exit: the partitions that ran (and sources)
            dag = dag.subgraph([n for n in dag if n in metas or dag.in_degree(n) == 0])
        mk = dag_makespan(dag, dur, route.transfer)
        busy: dict[str, float] = {}
        for m in metas.values():
            busy[m.device] = busy.get(m.device, 0.0) + m.duration
        return mk, request_energy(busy, mk, self.power)

    # ------------------------------------------------------------ plan versions
    def add_version(self, version: int, stages: Sequence[Stage], *, dag=None,
                    transfer: Callable[[Hashable, Hashable], float] | None = None) -> None:
        """Register the partition calls of plan ``version``, already loaded on the actors
        under partition ids no other live version uses. Requests keep going to the
        current version until :meth:`switch`."""
        stages = tuple(stages)
        with self._lock:
            if version in self._routes:
                raise PlanSwitchError(f"plan version {version} is already registered")
            self._routes[version] = _Route(stages, {s.pid: s for s in stages}, _uses(stages),
                                           dag, transfer)

    def switch(self, version: int) -> None:
        """Make ``version`` current: requests admitted from now on, and retries, run on it;
        requests in flight finish on the version they were admitted to."""
        with self._lock:
            route = self._routes[version]
            self.version = version
            self.stages, self._stage_of, self._uses = route.stages, route.stage_of, route.uses
            self.dag, self.transfer = route.dag, route.transfer
            if self.ledger is not None:
                self.ledger.publish(version)

    def retire_version(self, version: int) -> tuple[Stage, ...]:
        """Mark a drained, non-current version retired; returns its stages (to unload)."""
        with self._lock:
            if version == self.version:
                raise PlanSwitchError(f"plan version {version} is current; switch before retiring it")
            busy = sum(1 for r in self._requests.values() if r.version == version)
            if busy:
                raise PlanSwitchError(f"plan version {version} still has {busy} request(s) in flight")
            route = self._routes.get(version)
            if route is None or route.retired:
                return ()
            route.retired = True
            return route.stages

    def versions(self) -> dict[int, int]:
        """Live (not retired) plan versions -> requests in flight on each."""
        with self._lock:
            out = {v: 0 for v, r in self._routes.items() if not r.retired}
            for r in self._requests.values():
                out[r.version] = out.get(r.version, 0) + 1
            return out

    def _repin(self, req: _Request) -> None:
        """Move a request being retried to the current version (caller holds the lock)."""
        req.version = self.ledger.repin(req.rid) if self.ledger is not None else self.version

    def reroute(self, devices: Sequence[str]) -> int:
        """Restart, on the current version, every request whose attempt has a call on one
        of ``devices`` (e.g. a device that stopped answering): a new attempt of the whole
        request; the old attempt's late results are ignored. Returns how many."""
        bad = set(devices)
        moved = 0
        with self._lock:
            for req in list(self._requests.values()):
                route = self._routes.get(req.version)
                if req.state != "running" or route is None or \
                        not any(s.device in bad for s in route.stages):
                    continue
                req.attempt += 1
                self._repin(req)
                self._issue(req)
                moved += 1
        for _ in range(moved):
            self.recorder.add_retry()
        return moved

    # ----------------------------------------------------------------- control
    @property
    def in_flight(self) -> int:
        """Requests submitted and not finished."""
        with self._lock:
            return len(self._requests)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no request is in flight; False if ``timeout`` passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.in_flight:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.005)
        return True

    def close(self, cancel: bool = True) -> None:
        """Stop accepting requests; cancel those in flight (``cancel``) and stop threads."""
        self._closed = True
        self.flush()
        if cancel:
            with self._lock:
                rids = list(self._requests)
            for rid in rids:
                self._finish(rid, "failed", RuntimeClosedError(
                    f"request {rid} was still in flight when the runtime shut down"))
        self._events.put((_EV_STOP,))
        self._retry_queue.put(None)
        self._healthy.set()
        self._completer.join(timeout=5)
        self._retrier.join(timeout=5)


__all__ = ["Dispatcher", "Stage"]
