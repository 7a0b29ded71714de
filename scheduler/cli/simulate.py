"""``hetsched simulate``: a stream of requests under a plan, in virtual time.

Places as ``hetsched place`` does, then runs the discrete-event simulator
(:func:`scheduler.simulate.simulate_stream`) on a closed loop (``--in-flight``) or Poisson
arrivals (``--rate``): prints latency percentiles, throughput (and the bound of the busiest
device), energy per request and per-device utilisation and peak memory; writes a Gantt
chart of the first requests and a Perfetto trace.

The stream's energy per request differs from the plan's: the plan counts one request
alone (idle power only within its own makespan), the stream the devices' energy over its
whole span divided by the requests, so idle power between arrivals is counted too; the
output says so and states the idle power used.
"""
from __future__ import annotations

import argparse
import os

from .common import (add_model_options, add_placement_options, capture_and_place, check_out,
                     cost_model, echo, float_range, fmt_s, graph_line, int_range, plan_tables,
                     positive_int, power_text, simulate_module, ticker)

#: The most requests one simulation streams.
MAX_REQUESTS = 1_000_000
#: The Poisson arrival rates ``--rate`` takes, requests/s: (least, most).
RATES = (1e-6, 1e9)


def add_parser(sub) -> None:
    """Register ``simulate`` on the top-level subparsers ``sub``.

    Example:
        >>> import argparse
        >>> sub = argparse.ArgumentParser(prog="hetsched").add_subparsers()
        >>> add_parser(sub)
        >>> a = sub.choices["simulate"].parse_args(["--rate", "5", "--requests", "8"])
        >>> a.rate, a.requests, a.in_flight, a.func is run
        (5.0, 8, 4, True)
    """
    p = sub.add_parser("simulate", help="simulate a stream of requests under a plan (virtual time)",
                       description=(
        "Place as `hetsched place` does, then run a discrete-event simulation of a stream of "
        "requests in virtual time: latency percentiles, throughput, per-device utilisation, "
        "energy and peak memory; write a Gantt chart and a Perfetto trace."),
        epilog="Example: hetsched simulate --model 1b --policy pipeline --objective throughput "
               "--requests 32 --in-flight 4")
    add_model_options(p, default_model="small", graph_file=True)
    add_placement_options(p, default_policy="heft", default_objective="latency")
    p.add_argument("--requests", type=int_range(1, MAX_REQUESTS), default=32,
                   help=f"requests (default 32, at most {MAX_REQUESTS})")
    arr = p.add_mutually_exclusive_group()
    arr.add_argument("--rate", type=float_range(*RATES, unit="requests/s"), default=None,
                     help="Poisson arrivals at RATE requests/s (default: a closed loop; "
                          f"{RATES[0]:g} to {RATES[1]:g})")
    arr.add_argument("--in-flight", type=positive_int, default=4,
                     help="closed loop: requests in flight at once (default 4)")
    p.add_argument("--link-contention", action="store_true",
                   help="one transfer at a time per link (default: contention-free links)")
    p.add_argument("--seed", type=int_range(0, 2 ** 32 - 1), default=0,
                   help="seed of the Poisson arrivals (0 to 2**32 - 1)")
    p.add_argument("--out", default=os.path.join("out", "simulate"),
                   help="folder for gantt.png and trace.json (default out/simulate)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Place, simulate the stream of ``args``, print the results and write the pictures; returns 0.

    Example:
        >>> import tempfile
        >>> from scheduler.cli import build_parser
        >>> out = tempfile.mkdtemp()
        >>> run(build_parser().parse_args(["simulate", "--model", "tiny", "--requests", "2",
        ...                                "--out", out]))  # doctest: +ELLIPSIS
        tiny: ...
        simulated 2 requests (closed loop, 4 in flight) in virtual time:
        ...
        0
    """
    from ..tables import format_table, sim_rows
    from ..trace import events_from_sim, gantt, to_chrome_trace

    S = simulate_module()

    check_out(args.out, "--out", folder=True)
    graph, cluster, plan, _, _ = capture_and_place(args)
    cm = cost_model(cluster)
    n = args.requests
    if args.rate is not None:
        arrivals, mif, mode = S.poisson_arrivals(args.rate, n, seed=args.seed), None, \
            f"Poisson arrivals at {args.rate:g} requests/s"
    else:
        arrivals, mif, mode = [0.0] * n, args.in_flight, f"closed loop, {args.in_flight} in flight"
    with ticker(f"simulating {n} requests"):
        r = S.simulate_stream(graph, plan, cm, arrivals, cluster, max_in_flight=mif,
                              link_contention=args.link_contention)
    bound = S.bottleneck_bound(graph, plan, cm)
    os.makedirs(args.out, exist_ok=True)
    png, trace = os.path.join(args.out, "gantt.png"), os.path.join(args.out, "trace.json")
    ev = events_from_sim(r, graph)
    to_chrome_trace(ev, trace)
    shown = [e for e in ev if e.request is None or e.request < 8]
    gantt(shown, png, title=f"{graph.name}: {plan.policy}, simulated (first {min(n, 8)} requests)",
          time_unit="ms")
    echo(graph_line(graph), *plan_tables(plan, graph, cluster), "",
         f"simulated {n} requests ({mode}) in virtual time:",
         f"  latency p50 {fmt_s(r.p50)}, p95 {fmt_s(r.p95)}, p99 {fmt_s(r.p99)}",
         f"  throughput {r.throughput:.4g} requests/s over the {fmt_s(r.span)} span (bound by the "
         f"busiest device's work per request: {1 / bound:.4g} requests/s)" if bound > 0
         else f"  throughput {r.throughput:.4g} requests/s over the {fmt_s(r.span)} span",
         *stream_energy_lines(r, plan, cm, n), "",
         format_table(sim_rows(r)), "",
         f"wrote {png}  (Gantt chart of the first {min(n, 8)} requests, virtual time)",
         f"wrote {trace}  (Perfetto trace: open https://ui.perfetto.dev and drop the file)")
    return 0



def stream_energy_lines(r, plan, cm, n: int) -> list[str]:
    """Two lines on a stream's energy per request (``r``: a
    :class:`~scheduler.simulate.StreamResult` of ``n`` requests under ``plan``): what it
    counts, the idle power it uses, and why it differs from the plan's own figure.

    Example:
        >>> import types
        >>> from policies.plan import Plan
        >>> class CM:
        ...     def power(self, d):
        ...         return (10.0, 3.0)
        >>> p = Plan({"a": "x"}, {"x": ("a",)}, {"a": 0.0}, {"a": 0.1}, 0.1, energy=1.0)
        >>> r = types.SimpleNamespace(energy_per_request=2.0, span=1.0)
        >>> for line in stream_energy_lines(r, p, CM(), 4):
        ...     print(line)
        energy 2.000 J per request = the devices' energy over the 1.000 s span / 4 requests: active power while busy, idle power 3 W (x 3 W) while waiting for work
        (the plan's 1.000 J per request counts one request alone: idle power only within its own 100.000 ms makespan)
    """
    from ..tables import format_value

    if r.energy_per_request is None:
        return ["  energy per request: unknown (a device has no power figures)"]
    lines = [f"  energy {format_value('energy_j', r.energy_per_request)} per request = the devices' "
             f"energy over the {fmt_s(r.span)} span / {n} requests: active power while busy, idle "
             f"power {power_text(plan.devices_used, cm)} while waiting for work"]
    if plan.energy is not None:
        lines.append(f"  (the plan's {format_value('energy_j', plan.energy)} per request counts one "
                     f"request alone: idle power only within its own {fmt_s(plan.makespan)} makespan)")
    return lines
