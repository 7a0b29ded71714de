"""Measure this machine's CPU and write a device profile: ``python -m executors.calibrate``.

Measured (each the best of several repeats, so the numbers approach peak the way a
spec-sheet number does; a progress bar shows the steps):

* ``peak_flops[dtype]`` for float32, bfloat16 and float16: ``2 n^3`` FLOP of an
  ``n x n`` :func:`torch.mm` over its time;
* ``mem_bandwidth``: bytes read plus bytes written by a large out-of-place copy
  (``torch.Tensor.copy_`` of a buffer far larger than the caches) over its time;
* ``launch_overhead``: median time of an eager op on a one-element tensor (the
  framework's dispatch cost, what every op pays);

Times are the calling thread's CPU time (:func:`time.thread_time`) when measuring with one
torch thread -- all work then runs in the calling thread, and a shared machine preempting
the process does not deflate the peaks -- and wall time otherwise.
* ``mem_capacity``: ``MemTotal`` of ``/proc/meminfo`` (else ``os.sysconf``);
* powers: read from RAPL (``/sys/class/powercap/intel-rapl*``) when it exists and is
  readable, else left 0 (= unknown) with a source that says so.

Usage::

    python -m executors.calibrate [--out PATH] [--quick] [--threads N] [--name NAME]

``--quick`` uses small sizes and few repeats (a few seconds; for tests). ``--threads``
sets ``torch.set_num_threads`` for the measurement (the thread count is recorded in the
description: a profile is only valid for runs with the same count).

Example:
    >>> import os, tempfile
    >>> from executors.profiles import load
    >>> p = os.path.join(tempfile.mkdtemp(), "h.toml")
    >>> spec = calibrate(p, quick=True, progress=False)
    >>> load(p).kind, load(p).peak_flops["float32"] == spec.peak_flops["float32"]
    ('cpu', True)
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import torch

from .devices import DeviceSpec
from .errors import ProfileError

__all__ = ["calibrate", "measure_matmul", "measure_bandwidth", "measure_launch", "main"]

DTYPES = ("float32", "bfloat16", "float16")


def _now() -> Callable[[], float]:
    """The clock measurements read: the calling thread's CPU time with one torch thread
    (all work then runs in this thread, and preemption by other jobs on a shared machine is
    not counted), else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def _clock_name() -> str:
    return "thread CPU time" if torch.get_num_threads() == 1 else "wall time"


def _best(fn: Callable[[], object], repeats: int, budget: float = 2.0) -> float:
    """Best seconds of ``fn()`` over ``repeats`` runs after a warm-up; slow ops (a
    float16 matmul without a fast CPU kernel) get fewer repeats, within ``budget`` seconds."""
    now = _now()
    t = now()
    fn()  # warm-up
    best = now() - t
    for _ in range(max(1, min(repeats, int(budget / max(best, 1e-9))))):
        t = now()
        fn()
        best = min(best, now() - t)
    return best


def measure_matmul(dtype: str, n: int, repeats: int) -> float:
    """FLOP/s of an ``n x n`` matmul in ``dtype`` (best of ``repeats``).

    Example:
        >>> measure_matmul("float32", 64, repeats=3) > 1e6  # 2 * 64**3 FLOP in under 0.5 s
        True
    """
    dt = getattr(torch, dtype)
    a = torch.randn(n, n).to(dt)
    b = torch.randn(n, n).to(dt)
    with torch.no_grad():
        t = _best(lambda: torch.mm(a, b), repeats)
    return 2.0 * n ** 3 / t


def measure_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes/s of an out-of-place copy of ``nbytes`` (counts read + write).

    Example:
        >>> measure_bandwidth(1 << 20, repeats=3) > 1e6  # copy 1 MiB faster than 1 MB/s
        True
    """
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = _best(lambda: dst.copy_(src), repeats)
    return 2.0 * src.numel() * 4 / t


def measure_launch(repeats: int) -> float:
    """Median seconds of an eager op on a one-element tensor.

    Example:
        >>> 0 < measure_launch(100) < 0.01  # microseconds, not milliseconds
        True
    """
    x = torch.ones(1)
    y = torch.ones(1)
    for _ in range(10):
        torch.add(x, y)
    ts = []
    now = _now()
    for _ in range(repeats):
        t = now()
        torch.add(x, y)
        ts.append(now() - t)
    return statistics.median(ts)


def _mem_total() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _rapl_power(seconds: float, busy: Callable[[], object] | None) -> float | None:
    """Mean package watts over ``seconds`` (running ``busy`` if given), or None without RAPL."""
    files = glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj")
    if not files:
        return None
    try:
        def read() -> float:
            return sum(float(open(f).read()) for f in files)
        e0, t0 = read(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if busy is not None:
                busy()
            else:
                time.sleep(0.05)
        e1, t1 = read(), time.perf_counter()
    except (OSError, ValueError):
        return None
    return (e1 - e0) / 1e6 / (t1 - t0) if e1 >= e0 else None


def calibrate(out: str | None = None, *, quick: bool = False, threads: int | None = None,
              name: str = "host-cpu", progress: bool = True,
              command: str | None = None) -> DeviceSpec:
    """Measure the host CPU, write the profile to ``out`` (if given) and return its spec.

    Example:
        >>> spec = calibrate(quick=True, progress=False, name="here")
        >>> spec.name, spec.kind, sorted(spec.peak_flops)
        ('here', 'cpu', ['bfloat16', 'float16', 'float32'])
        >>> spec.sources["mem_bandwidth"].split(" with ")[0]
        'measured here'
    """
    from tqdm import tqdm

    from .profiles import save

    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ProfileError(f"threads must be an int >= 1, got {threads!r}")
        torch.set_num_threads(threads)
    nthreads = torch.get_num_threads()
    command = command or "python -m executors.calibrate" + (f" --out {out}" if out else "") + \
        (" --quick" if quick else "") + (f" --threads {threads}" if threads else "")
    n, reps = (256, 3) if quick else (1024, 10)
    nbytes = (32 << 20) if quick else (512 << 20)
    when = time.strftime("%Y-%m-%d")
    here = f"measured here with command `{command}` on {when}"
    steps = [f"matmul {dt}" for dt in DTYPES] + ["memory bandwidth", "launch overhead", "power"]
    sources: dict[str, str] = {}
    peak: dict[str, float] = {}
    bar = tqdm(steps, desc="calibrating host CPU", disable=not progress, file=sys.stderr)
    for step in bar:
        bar.set_postfix_str(step)
        if step.startswith("matmul"):
            dt = step.split()[1]
            peak[dt] = measure_matmul(dt, n, reps)
            sources[f"peak_flops.{dt}"] = f"{here}: best of up to {reps} torch.mm {n}x{n} {dt}, {nthreads} thread(s), {_clock_name()}"
        elif step == "memory bandwidth":
            bw = measure_bandwidth(nbytes, reps)
            sources["mem_bandwidth"] = (f"{here}: best of {reps} out-of-place copies of "
                                        f"{nbytes >> 20} MiB float32, read + write bytes, {_clock_name()}")
        elif step == "launch overhead":
            launch = measure_launch(200 if quick else 2000)
            sources["launch_overhead"] = f"{here}: median eager torch.add on one-element tensors, {_clock_name()}"
        else:
            idle = _rapl_power(0.5 if quick else 3.0, None)
            active = _rapl_power(0.5 if quick else 3.0, lambda: measure_matmul("float32", n, 1)) \
                if idle is not None else None
            if active is None or idle is None:
                active = idle = 0.0
                sources["active_power"] = sources["idle_power"] = \
                    "not measured: no readable RAPL energy counter here; 0 = unknown"
            else:
                sources["idle_power"] = f"{here}: RAPL package energy over an idle interval"
                sources["active_power"] = f"{here}: RAPL package energy while running matmuls"
    sources["mem_capacity"] = f"{here}: MemTotal of /proc/meminfo"
    spec = DeviceSpec(
        name=name, kind="cpu", peak_flops=peak, mem_bandwidth=bw, mem_capacity=_mem_total(),
        launch_overhead=launch, active_power=active, idle_power=idle, sources=sources,
        description=f"this machine's CPU: {_cpu_model()}, {os.cpu_count()} cores, measured with "
                    f"{nthreads} torch thread(s), torch {torch.__version__}")
    if out:
        save(spec, out, header=f"hetsched device profile (schema 1), written by `{command}`.\n"
                               "Re-run that command to re-measure this machine.")
    return spec


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "host.toml")
        >>> main(["--quick", "--out", path])  # doctest: +ELLIPSIS
        peak_flops[float32] = ... GFLOP/s
        ...
        wrote ...host.toml
        0
    """
    ap = argparse.ArgumentParser(prog="python -m executors.calibrate",
                                 description="Measure this machine's CPU and write a device profile (TOML).")
    ap.add_argument("--out", help="profile path to write (.toml or .json); default: print only")
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (seconds)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads to measure with")
    ap.add_argument("--name", default="host-cpu", help="profile name (default host-cpu)")
    args = ap.parse_args(argv)
    argv_s = " ".join(sys.argv[1:] if argv is None else list(argv))
    spec = calibrate(args.out, quick=args.quick, threads=args.threads, name=args.name,
                     command=f"python -m executors.calibrate {argv_s}".strip())
    for dt, v in spec.peak_flops.items():
        print(f"peak_flops[{dt}] = {v / 1e9:.2f} GFLOP/s")
    print(f"mem_bandwidth = {spec.mem_bandwidth / 1e9:.2f} GB/s")
    print(f"launch_overhead = {spec.launch_overhead * 1e6:.2f} us")
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
