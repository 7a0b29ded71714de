"""``hetsched simulate``: a stream of requests under a plan, in virtual time.

Places as ``hetsched place`` does, then runs the discrete-event simulator
(:func:`scheduler.simulate.simulate_stream`) on a closed loop (``--in-flight``) or Poisson
arrivals (``--rate``): prints latency percentiles, throughput (and the bound of the busiest
device), energy per request and per-device utilisation and peak memory; writes a Gantt
chart of the first requests and a Perfetto trace.
"""
from __future__ import annotations

import argparse
import os

from .common import (add_model_options, add_placement_options, capture_and_place, check_out,
                     cost_model, echo, float_range, fmt_s, graph_line, int_range, plan_tables,
                     positive_int, simulate_module, ticker)

#: The most requests one simulation streams.
MAX_REQUESTS = 1_000_000
#: The Poisson arrival rates ``--rate`` takes, requests/s: (least, most).
RATES = (1e-6, 1e9)


def add_parser(sub) -> None:
    """Register ``simulate`` on the top-level subparsers ``sub``."""
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
    """Place, simulate the stream of ``args``, print the results and write the pictures; returns 0."""
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
    energy = "-" if r.energy_per_request is None else f"{r.energy_per_request * 1e3:.3f} mJ"
    echo(graph_line(graph), *plan_tables(plan, graph, cluster), "",
         f"simulated {n} requests ({mode}) in virtual time:",
         f"  latency p50 {fmt_s(r.p50)}, p95 {fmt_s(r.p95)}, p99 {fmt_s(r.p99)}",
         f"  throughput {r.throughput:.4g} requests/s (bound by the busiest device: "
         f"{1 / bound:.4g} requests/s)" if bound > 0 else f"  throughput {r.throughput:.4g} requests/s",
         f"  energy {energy} per request", "",
         format_table(sim_rows(r)), "",
         f"wrote {png}  (Gantt chart of the first {min(n, 8)} requests, virtual time)",
         f"wrote {trace}  (Perfetto trace: open https://ui.perfetto.dev and drop the file)")
    return 0

