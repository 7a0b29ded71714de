"""Measure a captured model's ops and partitions on this machine's CPU (the calibration source).

* :func:`measure_nodes` runs ``graph.module`` node by node with a timing
  :class:`torch.fx.Interpreter` (the ``ShapeProp`` shape: one overridden method) and
  returns the median seconds of every op-graph node (a coarse node sums its members).
* :func:`measure_partitions` splits the model into contiguous topological chunks with
  :func:`graphs.partition.partition` and times each chunk's fx submodule call: these are
  the "partitions" the runtime executes, so their times include a submodule call's own
  overhead, which per-node timings do not.

Results are plain data (dicts and :class:`PartitionTiming`), so the policies package can
fit a calibrated cost model from them without importing executors.

The host CPU's own numbers (what a real ``cpu`` device is planned with) come from
:func:`measure_host`: a float32 matmul and a large copy, each timed as the median of
several batches of at least :data:`HOST_MIN_SECONDS` in all, with outlier batches
rejected (:func:`robust_median`), on one torch thread and its CPU-time clock (what an
executor actor runs with, and blind to other processes preempting this one). Where a
calibrated host profile exists (:func:`host_profile_path`: ``$HETSCHED_HOST_PROFILE`` or
``out/host-cpu.toml``, written by ``hetsched profiles calibrate``) its numbers are used,
and a measurement more than 3x away from them raises a :class:`ProfileMismatchWarning`.

Example:
    >>> import torch
    >>> from graphs.capture import capture
    >>> g = capture(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()),
    ...             (torch.randn(2, 8),))
    >>> t = measure_nodes(g, (torch.randn(2, 8),), repeats=3)
    >>> sorted(t) == sorted(g.nodes) and all(s > 0 for s in t.values())
    True
"""
from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch
import torch.fx as fx

from graphs.opgraph import OpGraph

from .errors import ExecutorError

__all__ = ["measure_nodes", "measure_partitions", "contiguous_chunks", "PartitionTiming", "CLOCKS",
           "robust_median", "measure_rate", "Rate", "measure_host", "host_profile_path",
           "check_against_profile", "ProfileMismatchWarning", "HOST_PROFILE_ENV", "HOST_MIN_SECONDS"]

_DEVICELESS = ("input", "output", "param")
#: Clocks a measurement can read: wall time, or the calling thread's CPU time.
CLOCKS = ("wall", "thread")


def _clock(clock: str):
    """``time.perf_counter`` for ``"wall"``; ``time.thread_time`` for ``"thread"``.

    The thread clock counts only CPU time of the calling thread, so a shared, oversubscribed
    machine preempting the process does not inflate it; it is valid only with one torch
    thread (intra-op work then runs in the calling thread), which is checked.
    """
    if clock == "wall":
        return time.perf_counter
    if clock == "thread":
        if torch.get_num_threads() != 1:
            raise ExecutorError(f"clock='thread' needs torch.set_num_threads(1) (now "
                                f"{torch.get_num_threads()} threads): other threads' CPU time is not counted")
        return time.thread_time
    from graphs.errors import UnknownNameError

    raise UnknownNameError("clock", clock, CLOCKS)


@dataclass(frozen=True)
class PartitionTiming:
    """Measured time of one partition (an fx submodule over some op-graph nodes).

    Example:
        >>> t = PartitionTiming(nodes=("fc1", "relu"), seconds=2e-4, flops=4096, label=0)
        >>> t.flops / t.seconds  # achieved FLOP/s
        20480000.0
    """

    nodes: tuple  # op-graph nodes it covers, in graph order
    seconds: float  # median wall seconds of one call
    flops: int  # sum of its nodes' flops
    label: Hashable = None  # the chunk label it was cut by


class _TimingInterpreter(fx.Interpreter):
    """Runs a GraphModule node by node, appending each node's wall seconds to ``times``."""

    def __init__(self, gm: fx.GraphModule, times: dict[str, list[float]], now=time.perf_counter):
        super().__init__(gm)
        self.times = times
        self.now = now

    def run_node(self, n: fx.Node) -> Any:
        t0 = self.now()
        out = super().run_node(n)
        self.times.setdefault(n.name, []).append(self.now() - t0)
        return out


def _check(graph: OpGraph, inputs: Any, device: str, repeats: int) -> tuple:
    if device != "cpu":
        raise NotImplementedError(f"measuring on device {device!r} is not implemented; "
                                  "only 'cpu' is (time other devices through their executors)")
    if not isinstance(graph, OpGraph):
        raise ExecutorError(f"graph must be an OpGraph from graphs.capture(...), got {type(graph).__name__}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ExecutorError(f"repeats must be an int >= 1, got {repeats!r}")
    gm = graph.module
    for name, p in list(gm.named_parameters()) + list(gm.named_buffers()):
        if p.device.type != "cpu":
            raise ExecutorError(f"the captured module's tensor {name!r} is on {p.device.type!r}; "
                                "measuring needs a model captured with real CPU weights (not meta)")
    inputs = inputs if isinstance(inputs, tuple) else (tuple(inputs) if isinstance(inputs, list) else (inputs,))
    return gm, inputs


def measure_nodes(graph: OpGraph, inputs: Any, repeats: int = 5, device: str = "cpu",
                  warmup: int = 1, clock: str = "wall") -> dict[Hashable, float]:
    """Median seconds of every node of ``graph`` run on ``inputs`` (one forward per repeat).

    A node's time is the time the interpreter spends in it (its op plus the interpreter's
    small per-node bookkeeping); a coarse node's time is the sum of its members'.
    ``clock`` is ``"wall"`` or ``"thread"`` (see :data:`CLOCKS`).

    Raises:
        NotImplementedError: ``device`` is not ``"cpu"``.
        executors.errors.ExecutorError: the graph has no module (JSON-loaded), its weights
            are on ``meta``, or ``repeats < 1``.

    Example:
        >>> import torch
        >>> from graphs.capture import capture
        >>> x = torch.randn(4, 16)
        >>> g = capture(torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh()), (x,))
        >>> t = measure_nodes(g, (x,), repeats=2)
        >>> sorted(g.nodes[n]["kind"] for n in t if t[n] > 0)  # the ops; input and output take ~0
        ['activation', 'input', 'matmul', 'output']
    """
    gm, inputs = _check(graph, inputs, device, repeats)
    now = _clock(clock)
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(warmup):
            _TimingInterpreter(gm, {}, now).run(*inputs)
        for _ in range(repeats):
            _TimingInterpreter(gm, times, now).run(*inputs)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {}
    for node, a in graph.nodes(data=True):
        out[node] = sum(med.get(str(m), 0.0) for m in (a.get("members") or (node,)))
    return out


def contiguous_chunks(graph: OpGraph, chunks: int) -> dict[Hashable, int]:
    """Label each compute node (not input/output/param) with one of ``chunks`` contiguous
    chunks of the graph's topological order, of near-equal node counts.

    Example:
        >>> g = OpGraph(); g.add_nodes_from(["a", "b", "c", "d"], kind="matmul")
        >>> g.add_edges_from([("a", "b"), ("b", "c"), ("c", "d")])
        >>> contiguous_chunks(g, 2)
        {'a': 0, 'b': 0, 'c': 1, 'd': 1}
    """
    import networkx as nx

    order = [n for n in nx.lexicographical_topological_sort(graph, key=str)
             if graph.nodes[n].get("kind") not in _DEVICELESS]
    if not isinstance(chunks, int) or not 1 <= chunks <= max(len(order), 1):
        raise ExecutorError(f"chunks must be an int in 1..{len(order)} (the compute nodes), got {chunks!r}")
    return {n: i * chunks // len(order) for i, n in enumerate(order)}


def measure_partitions(graph: OpGraph, inputs: Any, chunks: int | Mapping[Hashable, Hashable] = 4,
                       repeats: int = 5, device: str = "cpu", warmup: int = 1,
                       clock: str = "wall") -> list[PartitionTiming]:
    """Median seconds of each partition's submodule call.

    ``chunks`` is a number of contiguous topological chunks (:func:`contiguous_chunks`) or
    an explicit mapping compute node -> chunk label (each label must form a region that
    :func:`graphs.partition.partition` can cut; a label recurring after another label's
    nodes gives several partitions). Partitions are run in order on the model's inputs,
    each timed around its own call.

    Raises:
        NotImplementedError: ``device`` is not ``"cpu"``.
        executors.errors.ExecutorError: as :func:`measure_nodes`, or bad ``chunks``.

    Example:
        >>> import torch
        >>> from graphs.capture import capture
        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> g = capture(m, (torch.randn(2, 8),))
        >>> [p.nodes for p in measure_partitions(g, (torch.randn(2, 8),), chunks=2, repeats=2)]
        [('_0', '_1'), ('_2',)]
    """
    from graphs.partition import partition

    gm, inputs = _check(graph, inputs, device, repeats)
    now = _clock(clock)
    labels = contiguous_chunks(graph, chunks) if isinstance(chunks, int) else dict(chunks)
    assignment = {n: f"chunk{lab}" for n, lab in labels.items()}
    pm = partition(graph, assignment)
    times: list[list[float]] = [[] for _ in pm.parts]
    with torch.no_grad():
        for rep in range(warmup + repeats):
            values = pm.bind(*inputs)
            for p in pm.parts:
                args = [values[n] for n in p.inputs]
                t0 = now()
                outs = p.module(*args)
                dt = now() - t0
                values.update(zip(p.outputs, outs))
                if rep >= warmup:
                    times[p.id].append(dt)
    out = []
    for p in pm.parts:
        lab = labels.get(p.nodes[0]) if p.nodes else None
        out.append(PartitionTiming(nodes=tuple(p.nodes), seconds=statistics.median(times[p.id]),
                                   flops=int(p.flops), label=lab))
    return out


# ------------------------------------------------------------------ the host CPU's numbers
#: Environment variable naming the host's calibrated profile (a file path or a built-in name).
HOST_PROFILE_ENV = "HETSCHED_HOST_PROFILE"
#: Where ``hetsched profiles calibrate`` writes by default (relative to the working directory).
DEFAULT_HOST_PROFILE = os.path.join("out", "host-cpu.toml")
#: Seconds of timed work (at least) behind each host number.
HOST_MIN_SECONDS = 0.05
#: A measurement this many times above or below the stored profile warns.
PROFILE_TOLERANCE = 3.0


class ProfileMismatchWarning(RuntimeWarning):
    """The host CPU measured now is far from its calibrated profile (a loaded machine or a
    stale profile).

    Example:
        >>> import warnings
        >>> from executors.devices import DeviceSpec
        >>> spec = DeviceSpec("cpu", "cpu", {"float32": 1e11}, 2e10, 8e9)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", ProfileMismatchWarning)
        ...     check_against_profile({"mem_bandwidth": 1e9}, spec)
        Traceback (most recent call last):
        ...
        executors.measure.ProfileMismatchWarning: host CPU mem_bandwidth measured 1e+09 is 20.0x below ...
    """


@dataclass(frozen=True)
class Rate:
    """A throughput measured by :func:`measure_rate`.

    Example:
        >>> ticks = iter(range(100))  # a fake clock: every call of work() takes one tick
        >>> r = measure_rate(lambda: None, 5.0, min_seconds=3, samples=3, now=lambda: next(ticks))
        >>> r.value, r.samples, r.batch, r.rejected
        (5.0, (5.0, 5.0, 5.0), 1, 0)
    """

    value: float  # units per second: median over the kept batches
    samples: tuple[float, ...]  # units per second of every timed batch, in order
    rejected: int  # batches rejected as outliers
    seconds: float  # timed seconds in all (warm-up excluded)
    batch: int  # calls per timed batch


def robust_median(samples: Sequence[float], k: float = 3.0) -> tuple[float, list[float], list[float]]:
    """``(median, kept, rejected)``: the median of ``samples`` after dropping those more than
    ``k`` robust standard deviations from the median (``1.4826 * MAD``, floored at 1% of
    the median so that near-identical samples do not reject each other).

    Example:
        >>> med, kept, rejected = robust_median([110, 104, 2.3, 128, 129, 112, 108])
        >>> med, rejected
        (111.0, [2.3])
    """
    xs = [float(x) for x in samples]
    if not xs or not all(math.isfinite(x) for x in xs):
        raise ExecutorError(f"robust_median needs finite samples, got {list(samples)!r}")
    med = statistics.median(xs)
    scale = max(1.4826 * statistics.median(abs(x - med) for x in xs), 0.01 * abs(med))
    kept = [x for x in xs if abs(x - med) <= k * scale]
    rejected = [x for x in xs if abs(x - med) > k * scale]
    return statistics.median(kept), kept, rejected


def measure_rate(work: Callable[[], object], units: float, *, min_seconds: float = HOST_MIN_SECONDS,
                 samples: int = 7, now: Callable[[], float] | None = None) -> Rate:
    """Units per second of ``work()`` (each call does ``units`` units of work).

    After a warm-up call, calls are timed in batches sized so that ``samples`` batches take
    at least ``min_seconds`` in all (batches are added until they do, at most ``4 *
    samples``); the result is the :func:`robust_median` of the batches' rates, so one
    batch slowed by preemption or a page-fault storm does not move it.

    Example:
        >>> ticks = iter([0, 1, 2, 3, 4, 5, 6, 56, 57, 58, 59, 60] + list(range(61, 200)))
        >>> r = measure_rate(lambda: None, 10.0, min_seconds=4, samples=5, now=lambda: next(ticks))
        >>> r.value, r.rejected   # the batch that took 50 ticks is rejected
        (10.0, 1)
    """
    if not units > 0 or not math.isfinite(units):
        raise ExecutorError(f"units must be a finite number > 0, got {units!r}")
    if not isinstance(samples, int) or samples < 3:
        raise ExecutorError(f"samples must be an int >= 3 (a median needs them), got {samples!r}")
    now = now or _host_clock()
    work()  # warm-up: caches, lazy kernel selection
    t = now()
    work()
    one = max(now() - t, 1e-9)
    batch = max(1, math.ceil(min_seconds / samples / one))
    rates: list[float] = []
    total = 0.0
    while len(rates) < samples or (total < min_seconds and len(rates) < 4 * samples):
        t = now()
        for _ in range(batch):
            work()
        dt = max(now() - t, 1e-12)
        total += dt
        rates.append(units * batch / dt)
    value, _, rejected = robust_median(rates)
    return Rate(value=value, samples=tuple(rates), rejected=len(rejected), seconds=total, batch=batch)


def _host_clock() -> Callable[[], float]:
    """The calling thread's CPU time with one torch thread (preemption-blind), else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def host_profile_path() -> str | None:
    """The calibrated host profile to use, or None: ``$HETSCHED_HOST_PROFILE`` (a path or a
    built-in profile name; it must exist) or else ``out/host-cpu.toml`` when that file exists.

    Raises:
        executors.errors.ProfileError / graphs.errors.UnknownNameError: the environment
            variable names no profile.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {HOST_PROFILE_ENV: "jetson-orin-nx"}):
        ...     os.path.basename(host_profile_path())
        'jetson-orin-nx.toml'
    """
    from .profiles import profile_path

    env = os.environ.get(HOST_PROFILE_ENV, "").strip()
    if env:
        return profile_path(env)
    return DEFAULT_HOST_PROFILE if os.path.isfile(DEFAULT_HOST_PROFILE) else None


def check_against_profile(measured: Mapping[str, float], stored: Any, *, where: str = "",
                          tolerance: float = PROFILE_TOLERANCE) -> list[str]:
    """Warn (:class:`ProfileMismatchWarning`) for each measured number more than
    ``tolerance`` times above or below the stored spec's; returns the warning texts.

    ``measured`` maps ``"peak_flops.<dtype>"`` or a DeviceSpec field name to a value.

    Example:
        >>> import warnings
        >>> from executors.devices import DeviceSpec
        >>> spec = DeviceSpec("cpu", "cpu", {"float32": 1e11}, 2e10, 8e9)
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     msgs = check_against_profile({"peak_flops.float32": 2.3e9}, spec)
        >>> len(w), msgs[0].split(";")[0]
        (1, 'host CPU peak_flops.float32 measured 2.3e+09 is 43.5x below the calibrated profile (1e+11)')
    """
    out = []
    for key, m in measured.items():
        if key.startswith("peak_flops."):
            dt = key.split(".", 1)[1]
            if dt not in stored.peak_flops:
                continue
            s = float(stored.peak_flops[dt])
        else:
            s = float(getattr(stored, key))
        if not (s > 0 and m > 0):
            continue
        ratio = max(m / s, s / m)
        if ratio > tolerance:
            msg = (f"host CPU {key} measured {m:.3g} is {ratio:.1f}x {'above' if m > s else 'below'} the "
                   f"calibrated profile ({s:.3g}){' in ' + where if where else ''}; the machine is busy or the "
                   f"profile is stale (more than {tolerance:g}x apart): planning with the profile's number; "
                   "re-run `hetsched profiles calibrate` if the machine changed")
            warnings.warn(msg, ProfileMismatchWarning, stacklevel=3)
            out.append(msg)
    return out


def measure_host(name: str = "cpu", *, profile: str | None | bool = True, threads: int = 1,
                 min_seconds: float = HOST_MIN_SECONDS, tolerance: float = PROFILE_TOLERANCE,
                 now: Callable[[], float] | None = None) -> Any:
    """A :class:`~executors.devices.DeviceSpec` of this machine's CPU.

    Measures float32 matmul FLOP/s (256 x 256 :func:`torch.mm`) and copy bandwidth (16 MiB,
    read + write bytes) with :func:`measure_rate` on ``threads`` torch threads (1: what an
    executor actor runs with by default, timed on the thread's CPU clock). ``profile``:
    True finds the calibrated host profile (:func:`host_profile_path`), a path or name
    uses that one, False/None uses none. With a profile, its numbers are returned (under
    ``name``) and each measurement more than ``tolerance`` times away from them warns
    (:class:`ProfileMismatchWarning`); without one, the measured numbers are.

    Example:
        >>> s = measure_host(profile=False, min_seconds=0.01)
        >>> s.kind, s.peak_flops["float32"] > 1e6, s.sources["peak_flops.float32"].split(":")[0]
        ('cpu', True, 'measured here')
    """
    from .devices import DeviceSpec

    path = (host_profile_path() if profile is True else (profile or None))
    prev = torch.get_num_threads()
    if threads != prev:
        torch.set_num_threads(threads)
    try:
        clock = now or _host_clock()
        a = torch.randn(256, 256)
        with torch.no_grad():
            fl = measure_rate(lambda: torch.mm(a, a), 2.0 * 256 ** 3, min_seconds=min_seconds, now=clock)
        buf = torch.empty(4 * 2 ** 20)  # 16 MiB
        dst = torch.empty_like(buf)
        bw = measure_rate(lambda: dst.copy_(buf), 2.0 * buf.numel() * 4, min_seconds=min_seconds, now=clock)
    finally:
        if threads != prev:
            torch.set_num_threads(prev)
    clock_name = "thread CPU time" if (now is None and threads == 1) else "wall time"
    how = (f"median of {len(fl.samples)} batches ({fl.rejected} outliers rejected), {fl.seconds * 1e3:.0f} ms "
           f"in all, {threads} thread(s), {clock_name}")
    if path:
        from .profiles import load

        stored = load(path, name=name)
        check_against_profile({"peak_flops.float32": fl.value, "mem_bandwidth": bw.value}, stored,
                              where=str(path), tolerance=tolerance)
        return stored
    from .calibrate import _mem_total

    return DeviceSpec(
        name=name, kind="cpu", peak_flops={"float32": fl.value}, mem_bandwidth=bw.value,
        mem_capacity=_mem_total(), launch_overhead=5e-6,
        sources={"peak_flops.float32": f"measured here: 256x256 float32 torch.mm, {how}",
                 "mem_bandwidth": f"measured here: 16 MiB float32 copy, read + write bytes, median of "
                                  f"{len(bw.samples)} batches ({bw.rejected} outliers rejected)",
                 "launch_overhead": "estimate: eager PyTorch op dispatch, ~5 us"},
        description="this machine's CPU (measured at runtime start; `hetsched profiles calibrate` "
                    "writes a profile that replaces these numbers)")
