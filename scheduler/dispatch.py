"""The dispatcher: requests through the partition DAG as Ray object refs.

A request's partition calls are issued at once, in topological order, with the object refs
of the values they consume as arguments. Ray resolves the refs where the call runs, so
tensors move actor to actor and the driver fetches only the model's outputs. An actor runs
the calls it receives in submission order; since all issuing happens under one lock, one
group's calls after another's and each in a topological order, no call ever waits on a
later one, so the scheme cannot deadlock, and while request *n* runs on device B request
*n+1* already runs on device A (pipelining).

Request coalescing: Ray's per-call cost (about 0.3-1 ms here) would dominate small
partitions, so requests travel in *groups*. A request submitted while nothing is in flight
is issued at once, alone, from the caller's thread (no added latency). Under load,
submitted requests queue, and an issuer thread sends whatever queued meanwhile, up to
``max_group`` requests of one plan version, as one group: one actor call per partition
(:meth:`executors.ray_actor.ExecutorHost.run_group`) carries the whole group, every
argument and output being a *column* with one value per member. Members still run one by
one inside the call (no tensors are stacked), so each gets exactly the result and the
measurement it would get alone; a member whose run raises gets a
:class:`~executors.base.MemberError` in its place and fails alone. Groups form only as
fast as requests arrive, so an idle runtime adds no batching delay. Coalescing pays only
where calls are short: a group grows only while its members' expected wall time in the
route's slowest partition stays under ``group_work`` seconds (default
:data:`GROUP_WORK`; the runtime's prediction at
first, then the measured per-call wall time); past that Ray's per-call cost is small next
to the work, and bigger groups would only coarsen the pipelining across devices.

Completion is event driven, with no thread per request: every output ref the driver
waits for gets a Ray completion callback that puts an event on a queue; one completion
thread drains it, completes futures, enforces request timeouts and handles cancellation.
Each partition call also returns a small column of meta records (what it measured, per
member) as a separate object; once a request's outputs are ready all its calls have run,
so the completion thread fetches these records later, in batches, when it is idle
(:meth:`Dispatcher.flush`), and records the measurements off the request's path.
A request moves through a small state machine (``running`` -> ``completed | failed |
cancelled | timeout``) guarded by a lock, so a user's future is completed exactly once;
a request belongs to one group at a time, and events of a group it has left (a retry put
it in a new one) are ignored.

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
its partitions) and then re-issues the group's requests, in new groups, with fresh refs.
One recovery serves every group waiting when it starts, and new requests are held (at
most their ``submit_timeout``) while it runs. When ``recover`` gives up on a device (its
actor is gone for good), the device is *lost*: every request whose route uses it fails at
once, together, with a ``RequestFailed`` naming it, and later ones fail without another
recovery attempt (until the runtime replaces the actor or a request through it completes).
A request fails for good (``RequestFailed``) after ``max_retries`` retries or when its partition
raised an ordinary exception.

Exit: an atexit hook closes every live dispatcher before Ray's own atexit shutdown, so a
driver that exits without ``shutdown()`` leaves no thread calling into a stopped Ray.

Early exits: with ``exits`` (see :mod:`scheduler.gated`) a group runs in *phases*. A
phase issues the stages up to the next exit point (the partition holding a shallow path,
its exit head and its gate), and with them the stages that follow on the *same device*
(later exits there included), each filtered by the decision columns of the gates before
it: the actor runs a stage only for the members no gate has let go, and the columns pass
from call to call inside the actor (:class:`executors.ray_actor.Kept`), so these calls
carry no Ray dependency and run back to back, without a round trip through the driver.
The driver watches each gate's decisions and exit logits as they come back: members whose
gate passes finish with the exit logits at once and touch no other device. Once every gate
of the phase is decided, the members left either finish with the model's outputs (the
phase reached the end) or go on together: the next phase is issued for them only
(``select``) with the hidden state's object ref, so the deep path continues where the
shallow path left off (the hidden state never visits the driver).
The future of a completed request carries ``exit_depth`` (0: full model).

The dispatcher knows nothing about models or policies: it gets :class:`Stage` records and
actor handles, and the runtime tells it how to rebuild an output (``assemble``).

One concept per module: this one issues requests and handles completions; the records
(:mod:`scheduler.requests`), recovery (:mod:`scheduler.dispatch_recovery`), plan versions
(:mod:`scheduler.dispatch_versions`) and the accounting of finished calls
(:mod:`scheduler.dispatch_records`) are beside it, mixed into :class:`Dispatcher`.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import heapq
import itertools
import queue
import threading
import time
import weakref
from typing import Any, Callable, Hashable, Mapping, Sequence

from executors.base import MemberError

from .errors import PlanSwitchError, RequestFailed, RequestTimeout, RuntimeClosedError, SubmitTimeout
from .dispatch_records import _RecordsMixin
from .dispatch_recovery import _last_line, _RecoveryMixin
from .dispatch_versions import _VersionsMixin
from .requests import Stage, _Group, _is_infrastructure, _Request, _Route, _uses
from .stats import CallRecord, RequestRecord, StatsRecorder

#: seconds of expected device work one coalesced call may carry (see the module docstring)
GROUP_WORK = 10e-3


#: seconds :meth:`Dispatcher.submit` holds a request while actors are recovered (no submit timeout)
HOLD_LIMIT = 60.0

# event kinds on the completion queue
_EV_REF, _EV_CANCEL, _EV_RETRY_FAILED, _EV_STOP, _EV_WAKE, _EV_READY = range(6)


#: dispatchers not closed yet, closed at interpreter exit before Ray shuts down
_LIVE: "weakref.WeakSet[Dispatcher]" = weakref.WeakSet()
_AT_EXIT = threading.Lock()
_hooked = False


def _close_at_exit() -> None:
    """atexit hook: close every live dispatcher (failing the requests in flight) while Ray
    is still up. atexit runs hooks last-registered first, and Ray registers its own
    shutdown when it is imported, before any dispatcher registers this one, so this runs
    first: no dispatcher thread touches Ray's core worker after it has shut down (which
    makes Ray exit the process with status 1)."""
    for d in list(_LIVE):
        try:
            d.close(cancel=True, flush=False)  # no waiting on actors for measurements now
        except Exception:  # noqa: BLE001 - the interpreter is exiting
            pass


def _hook_exit() -> None:
    global _hooked
    with _AT_EXIT:
        if not _hooked:
            atexit.register(_close_at_exit)
            _hooked = True


class Dispatcher(_RecordsMixin, _RecoveryMixin, _VersionsMixin):
    """Runs requests through a partition DAG on Ray actors (see the module docstring).

    Args:
        stages: partition calls in a topological order.
        actors: device name -> Ray actor handle offering ``run_group`` (see
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
        on_measurement: callbacks called with every :class:`~scheduler.stats.CallRecord`.
        exits: :class:`scheduler.gated.ExitPoint` records, in stage order (early exits).
        flops: partition id -> FLOPs, to record the compute each request used.
        max_group: requests that may share one actor call per partition (request
            coalescing; 1: every request has its own calls). A request submitted while the
            dispatcher is idle is issued at once; under load the issuer thread sends
            whatever has queued meanwhile, up to ``max_group`` requests, as one group.
        call_wall: partition id -> expected wall seconds of one request's call (None or
            missing: unknown until measured); caps group sizes.
        group_work: seconds of expected work one coalesced call may carry (default
            :data:`GROUP_WORK`).

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
                 on_measurement: Sequence[Callable[[CallRecord], None]] = (),
                 exits: Sequence[Any] = (), flops: Mapping[int, float] | None = None,
                 ledger: Any = None, max_group: int = 16,
                 call_wall: Mapping[int, float | None] | None = None,
                 group_work: float = GROUP_WORK):
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
        self.on_measurement: list[Callable[[CallRecord], None]] = list(on_measurement)
        self.exits = tuple(exits)
        self.flops = dict(flops or {})
        if not isinstance(max_group, int) or isinstance(max_group, bool) or max_group < 1:
            raise ValueError(f"max_group must be an int >= 1, got {max_group!r}")
        self.max_group = max_group
        self.group_work = float(group_work)
        #: partition id -> expected wall seconds per request's call: a prior, then measured
        self._wall: dict[int, float] = {pid: float(w) for pid, w in (call_wall or {}).items()
                                        if w is not None}
        self._exit_at = {e.stage: e for e in self.exits}
        #: values the driver watches: the model's outputs and every exit's decision and logits
        self._watched = frozenset(self.output_names).union(
            *((e.go, e.logits) for e in self.exits))
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
        self._issuable = threading.Condition(self._lock)  # requests are waiting in _pending
        self._pending: list[_Request] = []  # admitted, not issued yet (coalescing under load)
        self._live_groups = 0  # issued groups not done yet
        self._keep_ids = itertools.count()  # keys of columns kept in actors between calls
        #: phases issued after a gate's decision (hard members going on to other devices)
        self.continued = 0
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._deadlines: list[tuple[float, int]] = []
        self._closed = False
        self._healthy = threading.Event()  # cleared while failed actors are being recovered
        self._healthy.set()
        #: device -> (its actor handle when recovery gave up, the error that started the
        #: recovery, why it gave up): requests on it fail at
        #: once until the runtime replaces the actor or a request through it completes
        self._lost: dict[str, tuple[Any, str, str]] = {}
        self._retry_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._completer = threading.Thread(target=self._complete_loop, name="hetsched-complete",
                                           daemon=True)
        self._retrier = threading.Thread(target=self._retry_loop, name="hetsched-retry", daemon=True)
        self._issuer = threading.Thread(target=self._issue_loop, name="hetsched-issue", daemon=True)
        self._completer.start()
        self._retrier.start()
        self._issuer.start()
        _LIVE.add(self)
        _hook_exit()  # after ``import ray`` above, so it runs before Ray's own atexit hook

    # ------------------------------------------------------------------- submit
    def submit(self, inputs: tuple, request_timeout: float | None = None) -> cf.Future:
        """Admit one request and return the future of its result: issued at once when the
        dispatcher is idle, else queued for the issuer thread to send in a group.

        ``request_timeout`` overrides the dispatcher's for this request; it counts from this
        call. The call blocks at most ``submit_timeout`` seconds in all, whether for a free
        slot or while failed actors are being recovered (new work is held meanwhile)."""
        start, now = time.monotonic(), time.time()  # the request's clock starts here
        if self._closed:
            raise RuntimeClosedError("the runtime is shut down; create a new Runtime to submit")
        timeout = self.submit_timeout
        limit = self.request_timeout if request_timeout is None else request_timeout
        deadline = (start + limit) if limit else None
        got = self._slots.acquire() if timeout is None else self._slots.acquire(timeout=timeout)
        if not got:
            raise SubmitTimeout(
                f"{self.max_in_flight} requests in flight for more than submit_timeout="
                f"{timeout} s; wait for results, raise max_in_flight or the submit timeout")
        try:
            if self._closed:
                raise RuntimeClosedError("the runtime is shut down; create a new Runtime to submit")
            self._wait_healthy(start, timeout, deadline)
            fut: cf.Future = cf.Future()
            rid = next(self._ids)
            req = _Request(rid=rid, inputs=tuple(inputs), future=fut, submitted=now, deadline=deadline)
            fut.request = rid  # type: ignore[attr-defined]
            with self._lock:
                req.version = self.version
                if self.ledger is not None:
                    self.ledger.admit(rid)
                self._requests[rid] = req
                if deadline is not None:
                    heapq.heappush(self._deadlines, (deadline, rid))
                if len(self._requests) == 1 or self.max_group == 1:
                    try:
                        self._issue([req])  # idle (or no coalescing): no thread hop, no wait
                    except BaseException:
                        req.state = "failed"  # nothing of it runs; the caller gets the error
                        self._requests.pop(rid, None)
                        raise
                else:
                    self._pending.append(req)
                    self._issuable.notify()
            self.recorder.add_submit(now)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda f, rid=rid: f.cancelled() and self._events.put((_EV_CANCEL, rid)))
        if deadline is not None:
            self._events.put((_EV_WAKE,))  # wake the loop to see the deadline
        return fut

    def _wait_healthy(self, start: float, timeout: float | None, deadline: float | None) -> None:
        """Hold a new request while failed actors are being recovered: until they are back,
        its request deadline (it is then admitted and times out at once), or
        :data:`HOLD_LIMIT` seconds; raise :class:`SubmitTimeout` when ``submit_timeout``
        (counted from ``start``) ends first."""
        if self._healthy.is_set():
            return
        ends = [(start + HOLD_LIMIT, "hold")]
        if timeout is not None:
            ends.append((start + timeout, "submit"))
        if deadline is not None:
            ends.append((deadline, "request"))
        end, why = min(ends, key=lambda e: e[0])
        if self._healthy.wait(timeout=max(0.0, end - time.monotonic())) or why != "submit":
            return
        raise SubmitTimeout(
            f"submit waited submit_timeout={timeout} s while the actors of failed devices were "
            f"being recovered (new requests are held until recovery ends); retry later, or "
            f"raise the submit timeout above the runtime's recovery_timeout")

    def _issue_loop(self) -> None:
        """The issuer thread: send what queued meanwhile as one group whenever fewer than
        ``group_window()`` groups are in flight (more would only wait in the actors'
        queues, while waiting here lets the next group grow)."""
        while True:
            with self._issuable:
                while not self._closed and (not self._pending
                                            or self._live_groups >= self.group_window()):
                    self._issuable.wait()
                waiting = [r for r in self._pending if r.state == "running" and r.group is None]
                if not waiting:
                    self._pending = []
                    if self._closed:
                        return
                    continue
                version = waiting[0].version
                batch = [r for r in waiting if r.version == version][:self.group_cap(version)]
                taken = {id(r) for r in batch}
                self._pending = [r for r in waiting if id(r) not in taken]
                try:
                    self._issue(batch)
                except BaseException as err:  # noqa: BLE001 - fail these, keep serving others
                    failed, error = [r.rid for r in batch if r.state == "running"], err
                else:
                    failed, error = [], None
            for rid in failed:
                self._finish(rid, "failed", RequestFailed(
                    f"request {rid}: issuing its partition calls failed: {error}", error))

    def _issue(self, reqs: Sequence[_Request]) -> None:
        """Issue ``reqs`` (admitted, not issued) in groups of up to :meth:`group_cap`
        requests of one plan version each (caller holds the lock)."""
        by_version: dict[int, list[_Request]] = {}
        for r in reqs:
            by_version.setdefault(r.version, []).append(r)
        for version, rs in by_version.items():
            cap = self.group_cap(version)
            for i in range(0, len(rs), cap):
                members = tuple(rs[i:i + cap])
                self._issue_group(_Group(members, version))
                self.recorder.add_group(len(members))

    def group_window(self) -> int:
        """Groups in flight at once before new requests wait to be coalesced: the current
        route's :attr:`_Route.window`."""
        return self._routes[self.version].window

    def _retire_group(self, g: _Group) -> None:
        """The group is done (or abandoned): drop its refs, free its place in the window
        (caller holds the lock)."""
        if not g.dead:
            g.dead = True
            self._live_groups -= 1
            self._issuable.notify()
        g.values, g.got = {}, {}

    def group_cap(self, version: int | None = None) -> int:
        """Requests one group of plan ``version`` (default: current) may hold now:
        ``max_group``, lowered so that the members' expected wall time in the slowest
        partition stays under ``group_work`` seconds (never below 1)."""
        route = self._routes[self.version if version is None else version]
        w = max((self._wall.get(s.pid, 0.0) for s in route.stages), default=0.0)
        if w <= 0:
            return self.max_group
        return max(1, min(self.max_group, int(self.group_work / w)))

    def _issue_group(self, g: _Group) -> None:
        """Put a group's inputs in place and issue its first phase (caller holds the lock)."""
        for r in g.members:
            r.group, r.meta_refs, r.exit_depth = g, [], 0
        self._live_groups += 1
        # a column read by one call travels inline with it; one read by several is put once
        uses = self._routes[g.version].uses
        for i, n in enumerate(self.input_names):
            col = [r.inputs[i] for r in g.members]
            g.values[n] = self._ray.put(col) if uses.get(n, 0) > 1 else col
        self._issue_phase(g)

    def _issue_phase(self, g: _Group) -> None:
        """Submit the group's stages from ``g.cursor`` up to the next exit point (or the end)
        and watch what decides its members: the gates' outputs, or the model's outputs
        (caller holds the lock).

        After an exit point, the stages that follow on the *same device* are issued at once
        too, with the gates' decision columns as filters (later exits on that device add
        theirs): the actor runs each only for the members no gate has let go, so hard
        members go on without waiting for the driver, while no other device is touched
        before the driver has seen the decisions."""
        values = g.values
        stages = self._routes[g.version].stages
        rids = tuple(r.rid for r in g.members)
        slots = [s for s, _ in g.live()]

        i, gates, calls = g.cursor, [], []  # calls: (stage index, skip value names)
        while i < len(stages) and not gates:
            calls.append((i, ()))
            if i in self._exit_at:
                gates.append(self._exit_at[i])
            i += 1
        ahead = False
        if gates:
            device, skip = stages[i - 1].device, (gates[0].go,)
            while i < len(stages) and stages[i].device == device:
                calls.append((i, skip))
                if i in self._exit_at:  # a later exit on the same device: it filters too
                    gates.append(self._exit_at[i])
                    skip = (*skip, self._exit_at[i].go)
                i += 1
            ahead = i == len(stages)
        chain: list = []
        for k, (idx, skip) in enumerate(calls):
            chain.append((idx, skip))
            if k + 1 == len(calls) or stages[calls[k + 1][0]].device != stages[idx].device:
                self._issue_chain(g, stages, chain, rids, slots)
                chain = []
        g.cursor, g.gates, g.decided, g.ahead, g.got = i, tuple(gates), 0, ahead, {}
        watch = []
        for j, point in enumerate(gates):
            watch += [((j, k), values[n]) for k, n in enumerate((point.go, point.logits))]
        if not gates or ahead:
            watch += [(("out", k), values[n]) for k, n in enumerate(self.output_names)]
        g.pending = {part: 0 for (part, _), _ in watch}
        refs = []
        for key, v in watch:
            if isinstance(v, self._ray.ObjectRef):
                g.pending[key[0]] += 1
                refs.append((key, v))
            else:  # an output that is a model input (an inline column)
                g.got[key] = v
        phase = g.cursor
        for part, n in g.pending.items():
            if not n:
                self._events.put((_EV_READY, g, phase, part))
        # only these are watched: once they are ready every partition of the phase has run,
        # and the meta records are fetched later in batches (flush), off the request's path
        for key, ref in refs:
            ref.future().add_done_callback(
                lambda f, g=g, phase=phase, key=key: self._events.put((_EV_REF, g, phase, key, f)))

    def _issue_chain(self, g: _Group, stages: tuple, chain: list, rids: tuple, slots: list) -> None:
        """Issue consecutive stages on one device, each with its skip columns (caller holds
        the lock). A column one of them makes and a later one reads stays in the actor
        (``keep=`` / :class:`~executors.ray_actor.Kept`), so the later call has no Ray
        dependency on the earlier one: Ray sends it at once instead of after a round trip
        through the driver, and a column nobody else reads (the hidden state) is not
        shipped at all."""
        from executors.ray_actor import Kept

        values = g.values
        key, outside = None, frozenset()
        if len(chain) > 1:  # what the driver or another call needs travels back as well
            inside = {idx for idx, _ in chain}
            outside = self._watched | {n for j, st in enumerate(stages) if j not in inside
                                       for n in st.inputs}
            key = (id(self), next(self._keep_ids))
        made: set[str] = set()
        for k, (idx, skip) in enumerate(chain):
            st = stages[idx]
            args = [Kept(key, n) if n in made else values[n] for n in (*skip, *st.inputs)]
            read_later = {n for j, s in chain[k + 1:] for n in (*s, *stages[j].inputs)}
            keep = tuple(n for n in st.outputs if n in read_later)
            opts = {}
            if keep:
                opts["keep"] = (key, keep, tuple(n for n in keep if n not in outside))
            if key is not None and k == len(chain) - 1:
                opts["drop"] = key
            out = self._method(st).remote(st.pid, rids, g.select, len(skip), *args, **opts)
            if st.outputs:
                *outs, meta = out
                values.update(zip(st.outputs, outs))
            else:
                meta = out
            made.update(st.outputs)
            for s in slots:
                g.members[s].meta_refs.append((st.pid, meta, s))

    def _method(self, st: Stage):
        """``run_group`` of the stage's actor with its number of returns (cached per actor
        handle: a restarted actor keeps its handle)."""
        actor = self.actors[st.device]
        key = (id(actor), len(st.outputs))
        m = self._methods.get(key)
        if m is None or m[0] is not actor:
            m = self._methods[key] = (actor, actor.run_group.options(num_returns=len(st.outputs) + 1))
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
                if not self._closed:  # once closed, Ray may be going away: stop quietly
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
        if kind == _EV_READY:
            self._part_done(ev[1], ev[2], ev[3])
            return
        _, g, phase, key, f = ev
        with self._lock:
            if g.dead or g.cursor != phase:
                return  # stale event (a finished group, or one abandoned for a retry)
        try:
            value = f.result()
        except BaseException as err:  # noqa: BLE001 - every failure decides retry or fail
            self._group_failed(g, phase, key, err)
            return
        with self._lock:
            if g.dead or g.cursor != phase:
                return
            g.got[key] = value
            g.pending[key[0]] -= 1
            if g.pending[key[0]] > 0:
                return
        self._part_done(g, phase, key[0])

    def _part_done(self, g: _Group, phase: int, part: Any) -> None:
        """Every watched column of one part of the group's phase is here: a gate (its index
        in the phase) or ``"out"``. Gates are decided in order: members whose gate passed
        finish with its exit logits (the rest stay carried); once every gate of the phase is
        decided, the members left go on in the next phase or, when the phase ran ahead to
        the model's end, finish with the model's outputs."""
        done: list[tuple[int, str, Any]] = []
        with self._lock:
            if g.dead or g.cursor != phase:
                return
            got = g.got
            g.pending[part] = -1  # complete
            while g.decided < len(g.gates) and g.pending.get(g.decided) == -1:
                j = g.decided
                point, hard = g.gates[j], []
                for s, req in g.live():
                    go, logits = got[(j, 0)][s], got[(j, 1)][s]
                    bad = go if isinstance(go, MemberError) else (
                        logits if isinstance(logits, MemberError) else None)
                    if bad is not None:
                        done.append((req.rid, "failed", self._member_failed(
                            req, bad, f"the gate of the exit at depth {point.depth}")))
                    elif bool(go):
                        req.exit_depth = point.depth
                        done.append((req.rid, "exit", logits))
                    else:
                        hard.append(s)
                g.select, g.decided = tuple(hard), j + 1
                if not hard:
                    self._retire_group(g)
                    break
            if not g.dead and g.decided == len(g.gates):
                if g.gates and not g.ahead:
                    self.continued += 1
                    self._issue_phase(g)  # hard: continue from the hidden state's refs
                elif g.pending.get("out") == -1:
                    for s, req in g.live():
                        vals = tuple(got[("out", k)][s] for k in range(len(self.output_names)))
                        bad = next((v for v in vals if isinstance(v, MemberError)), None)
                        if bad is not None:
                            done.append((req.rid, "failed", self._member_failed(
                                req, bad, "the model's outputs")))
                        else:
                            done.append((req.rid, "completed", vals))
                    self._retire_group(g)
        for rid, status, value in done:
            if status == "completed":
                try:
                    value = self.assemble(value)
                except BaseException as err:  # noqa: BLE001
                    status, value = "failed", RequestFailed(
                        f"request {rid}: rebuilding the output failed: {err}", err)
            self._finish(rid, "completed" if status == "exit" else status, value)

    @staticmethod
    def _member_failed(req: _Request, bad: MemberError, where: str) -> RequestFailed:
        return RequestFailed(f"request {req.rid} failed after {req.attempt + 1} attempt(s) "
                             f"(waiting for {where}): {bad.summary}", bad.exception())

    def _group_failed(self, g: _Group, phase: int, key: tuple, err: BaseException) -> None:
        """A watched call of the group failed as a whole: retry its members after an
        infrastructure failure (a dead actor, a lost object), else fail them."""
        retry_ok = _is_infrastructure(err) and not self._closed
        retry, fail = [], []
        with self._lock:
            if g.dead or g.cursor != phase:
                return
            where = (f"output {self.output_names[key[1]]!r}" if key[0] == "out"
                     else f"the gate of the exit at depth {g.gates[key[0]].depth}")
            for _, req in g.live():
                if retry_ok and req.attempt < self.max_retries:
                    req.attempt += 1  # the group's late events are ignored from now on
                    req.group = None
                    retry.append(req)
                else:
                    fail.append(req)
            self._retire_group(g)
            if retry:
                self._healthy.clear()
        for _ in retry:
            self.recorder.add_retry()
        if retry:
            self._retry_queue.put((retry, err))
        summary = _last_line(err)
        for req in fail:
            self._finish(req.rid, "failed", RequestFailed(
                f"request {req.rid} failed after {req.attempt + 1} attempt(s) (waiting for "
                f"{where}): {summary}", err))

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
            if status == "completed" and self._lost:  # its devices answer again
                route = self._routes.get(req.version)
                for st in (route.stages if route is not None else ()):
                    self._lost.pop(st.device, None)
            req.group = None  # its group drops its refs (Ray frees the objects) once it is done
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

    def close(self, cancel: bool = True, flush: bool = True) -> None:
        """Stop accepting requests; record the measurements of completed requests
        (``flush``); cancel those in flight (``cancel``) and stop threads. Idempotent."""
        self._closed = True
        _LIVE.discard(self)
        if flush:
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a lost measurement must not stop the close
                pass
        if cancel:
            with self._lock:
                rids = list(self._requests)
            for rid in rids:
                self._finish(rid, "failed", RuntimeClosedError(
                    f"request {rid} was still in flight when the runtime shut down"))
        with self._issuable:
            self._issuable.notify()
        self._events.put((_EV_STOP,))
        self._retry_queue.put(None)
        self._healthy.set()
        self._completer.join(timeout=5)
        self._retrier.join(timeout=5)
        self._issuer.join(timeout=5)


__all__ = ["Dispatcher", "Stage", "GROUP_WORK"]
