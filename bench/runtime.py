"""Runtime benchmarks: dispatch overhead, pipelined throughput against the bottleneck
bound, and the 1b config on the simulated edge trio.

Run: ``.venv/bin/python bench/runtime.py`` (add ``--quick`` for fewer repeats). Writes
three sections of docs/benchmarks.md.

1. Dispatch overhead. A chain of K tiny blocks, each its own partition, alternating over
   two simulated devices without pacing (so each call costs only its CPU work). The
   overhead per partition call is ``(runtime time - direct model call time) / K``, for a
   synchronous request (``run``) and for a pipelined stream (``submit`` many, wait all,
   per request), with request coalescing off (``max_group=1``) and on (the default). The
   baseline is a bare Ray actor call that returns its tensor argument,
   measured in the same run, synchronous (``ray.get(a.f.remote(x))``) and pipelined.
2. Pipelined throughput of a stream of the tiny model on the simulated edge trio (NPU +
   GPU + CPU profiles) with pacing, against the bottleneck-stage bound
   ``1 / (pace * scheduler.simulate.bottleneck_bound(...))``.
3. The ``1b`` config in timing-only mode (meta tensors) on the same trio: simulated
   latency and throughput of the chosen plan against the best single device, and against
   the sum-of-devices throughput bound (every device serving whole requests on its own).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench._common import median_time, table, write_section  # noqa: E402

TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]


class _Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(self.fc(x))


class Chain(nn.Module):
    """K tiny blocks in a chain (one partition each under round-robin at layer granularity)."""

    def __init__(self, k: int, width: int = 16):
        super().__init__()
        self.layers = nn.ModuleList([_Block(width) for _ in range(k)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _bare_actor_baseline(n_sync: int, n_pipe: int, k: int) -> dict[str, float]:
    """Seconds per call of bare Ray actor calls: one call, and a chain of ``k`` calls
    alternating over two actors (each feeding the next, as the runtime's partitions do)."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def f(self, x):
            return x

    a, b = Echo.remote(), Echo.remote()
    x = torch.randn(1, 16)
    ray.get([a.f.remote(x), b.f.remote(x)])

    def chain():
        v = x
        for i in range(k):
            v = (a if i % 2 == 0 else b).f.remote(v)
        return v

    out = {
        "single sync": median_time(lambda: ray.get(a.f.remote(x)), repeats=n_sync, warmup=5),
        "single pipelined": median_time(lambda: ray.get([a.f.remote(x) for _ in range(n_pipe)]),
                                        repeats=5, warmup=1) / n_pipe,
        "chain sync": median_time(lambda: ray.get(chain()), repeats=n_sync, warmup=5) / k,
        "chain pipelined": median_time(lambda: ray.get([chain() for _ in range(n_pipe)]),
                                       repeats=5, warmup=1) / n_pipe / k,
    }
    ray.kill(a)
    ray.kill(b)
    return out


def bench_overhead(quick: bool) -> None:
    from scheduler.runtime import Runtime

    k = 6
    model = Chain(k).eval()
    x = torch.randn(1, 16)
    with torch.no_grad():
        direct = median_time(lambda: model(x), repeats=200, warmup=20)
    n_sync = 50 if quick else 200
    n_pipe = 100 if quick else 400
    measured = {}
    for group in (1, 16):
        with Runtime(model, (x,), devices=TRIO[:2], policy="round-robin", max_in_flight=128,
                     max_group=group) as rt:
            parts = len(rt.partitioned)
            rt.map([(x,)] * 20)
            sync = median_time(lambda: rt.run(x), repeats=n_sync, warmup=10)

            def pipe():
                futs = [rt.submit(x) for _ in range(n_pipe)]
                for f in futs:
                    f.result()

            rt.recorder.reset()
            piped = median_time(pipe, repeats=5, warmup=1) / n_pipe
            measured[group] = (sync, piped, rt.stats().group_size)
    bare = _bare_actor_baseline(n_sync, n_pipe, parts)
    sync = measured[1][0]
    rows = [["synchronous (run)", "-", sync * 1e3, (sync - direct) * 1e3,
             (sync - direct) / parts * 1e3, bare["single sync"] * 1e3, bare["chain sync"] * 1e3, 1.5]]
    for group, label in ((1, "pipelined, no coalescing (max_group=1)"),
                         (16, "pipelined, coalescing (max_group=16, the default)")):
        piped, size = measured[group][1], measured[group][2]
        rows.append([f"{label}, submit x {n_pipe}", size, piped * 1e3, (piped - direct) * 1e3,
                     (piped - direct) / parts * 1e3, bare["single pipelined"] * 1e3,
                     bare["chain pipelined"] * 1e3, 0.5])
    body = (f"Chain of {k} blocks (Linear(16,16)+ReLU), {parts} partitions alternating over "
            f"{', '.join(TRIO[:2])} (no pacing); direct model call {direct * 1e3:.4g} ms. "
            "Overhead per partition call = (runtime per request - direct call) / partitions. "
            "Baselines measured in the same run: a bare Ray actor call returning its tensor "
            f"argument, alone, and per call in a bare chain of {parts} calls alternating over two "
            "actors, each taking the previous call's result (the runtime's dependency pattern, "
            "without the runtime). Coalescing: under load the dispatcher sends the requests "
            "that queued meanwhile as one group, one actor call per partition for the whole "
            "group (each request still runs on its own); 'requests per group' is the mean "
            "measured over the pipelined stream. The synchronous row is measured with "
            f"max_group=1; with the default max_group=16 it took {measured[16][0] * 1e3:.3g} ms "
            "per request (an idle runtime issues a request at once, alone).\n\n"
            + table(["mode", "requests per group", "per request (ms)", "overhead vs direct (ms)",
                     "overhead per partition call (ms)", "bare Ray call (ms)",
                     "bare Ray chain, per call (ms)", "target per call (ms)"], rows))
    write_section("runtime-overhead", "Runtime dispatch overhead per partition boundary", body)


def bench_pipeline(quick: bool) -> None:
    import graphs.models as M
    from scheduler.runtime import Runtime
    from scheduler.simulate import bottleneck_bound, simulate

    model = M.pangu_embedded("tiny")
    x = M.example_inputs(model, batch=1, seq_len=16)
    n = 30 if quick else 60
    rows = []
    for pace in (20.0, 50.0):
        with Runtime(model, x, devices=TRIO, policy="heft", pace=pace, max_in_flight=16) as rt:
            bb = bottleneck_bound(rt.graph, rt.plan, rt.cost_model)
            mk = simulate(rt.graph, rt.plan, rt.cost_model).makespan
            rt.map([x] * 4)
            rt.reset_stats()
            t0 = time.perf_counter()
            rt.map([x] * n)
            took = time.perf_counter() - t0
            s = rt.stats()
            thr = n / took
            bound = 1.0 / (pace * bb)
            sim_mk = s.sim_makespan_p50
            rows.append([pace, len(rt.partitioned), mk * 1e3, sim_mk * 1e3, bb * 1e3, thr, bound,
                         thr / bound])
    body = (f"Tiny model (seq 16), HEFT plan on {', '.join(TRIO)}, stream of {n} requests, "
            "paced (real seconds per simulated second). Throughput in requests per wall second; "
            "the bound is 1 / (pace x the busiest device's seconds per request).\n\n"
            + table(["pace", "partitions", "simulate makespan (ms, sim)",
                     "measured makespan p50 (ms, sim)", "bottleneck (ms, sim)",
                     "throughput (req/s)", "bound (req/s)", "fraction of bound"], rows))
    write_section("runtime-pipeline", "Runtime pipelined throughput vs the bottleneck bound", body)


def bench_1b(quick: bool) -> None:
    import graphs.models as M
    import policies
    from scheduler.runtime import Runtime, build_cluster
    from scheduler.simulate import bottleneck_bound, simulate

    seq = 128
    model = M.pangu_embedded("1b", device="meta")
    x = M.example_inputs(model, batch=1, seq_len=seq)
    n = 8 if quick else 16
    rows, singles, paces = [], {}, {}
    plans = [("heft", {}), ("pipeline", {"objective": "throughput"})]
    sum_bound = best_dev = None
    for name, opts in plans:
        # pace: slow enough that every call's CPU work (meta tensors) fits in its paced time
        with Runtime(model, x, devices=TRIO, policy=name, policy_options=opts, pace=1.0,
                     timing_only=True, max_in_flight=8) as probe:
            probe.run(*x)
            ratio = max(m.wall / m.duration for m in probe.measurements() if m.duration > 0)
            g, cm, plan = probe.graph, probe.cost_model, probe.plan
        pace = max(0.05, 2.0 * ratio)
        paces[name] = pace
        with Runtime(model, x, devices=TRIO, policy=name, policy_options=opts, pace=pace,
                     timing_only=True, max_in_flight=8) as rt:
            rt.run(*x)
            rt.reset_stats()
            t0 = time.perf_counter()
            rt.map([x] * n)
            took = time.perf_counter() - t0
            s = rt.stats()
            thr = n / took * pace  # requests per simulated second
            bound = 1.0 / bottleneck_bound(g, rt.plan, cm)
            rows.append([f"{name} {opts or ''} ({len(rt.partitioned)} partitions, pace {pace:.3g})",
                         s.sim_makespan_p50, 1 / s.sim_makespan_p50, thr, bound, thr / bound])
        if not singles:
            cluster = build_cluster(TRIO)
            for d in TRIO:
                p = policies.get("single", device=d).place(g, cluster, cm)
                singles[d] = simulate(g, p, cm).makespan
            best_dev = min(singles, key=singles.get)
            sum_bound = sum(1.0 / t for t in singles.values())
    for d, t in singles.items():
        rows.append([f"single {d}", t, 1 / t, "", 1 / t, ""])
    rows.append(["sum of devices (each serves whole requests)", "", "", "", sum_bound, ""])
    best = singles[best_dev]
    summary = "; ".join(
        f"{r[0].split(' ')[0]}: latency / best single = {r[1] / best:.3f}, measured throughput / "
        f"best single = {r[3] * best:.3f}, / sum-of-devices bound = {r[3] / sum_bound:.3f}"
        for r in rows[:len(plans)])
    body = (f"openPangu-Embedded-style 1b config (prefill, batch 1, seq {seq}), timing-only (meta "
            "tensors: the executors run shapes only and report the simulated device's time), on "
            f"{', '.join(TRIO)}. Latency = simulated makespan of one request, measured along the "
            "partition DAG from the executors' durations; measured throughput = requests per "
            f"simulated second in a pipelined stream of {n} (wall throughput x pace); bound = 1 / "
            "busiest device's seconds per request. Pace is chosen so every call's CPU work fits "
            f"in its paced time. Best single device: {best_dev} ({best:.4g} s). {summary}.\n\n"
            + table(["configuration", "latency (s, sim)", "1/latency (req/s)",
                     "measured throughput (req/s, sim)", "throughput bound (req/s, sim)",
                     "measured / bound"], rows))
    write_section("runtime-1b", "Runtime: 1b config on the simulated edge trio", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--only", choices=("overhead", "pipeline", "1b"), default=None)
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    try:
        if args.only in (None, "overhead"):
            bench_overhead(args.quick)
        if args.only in (None, "pipeline"):
            bench_pipeline(args.quick)
        if args.only in (None, "1b"):
            bench_1b(args.quick)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
