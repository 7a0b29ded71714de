"""The ``hetsched`` command line: demo, place, simulate, policies, profiles, bench.

Installed as the console script ``hetsched`` (also ``python -m scheduler``)::

    hetsched demo                      # the reference decoder on a simulated edge trio, on Ray
    hetsched place --model 1b --policy heft --json
    hetsched simulate --model small --policy pipeline --objective throughput --requests 64
    hetsched policies                  # the placement policies, with one line each
    hetsched profiles list | show NAME | calibrate [--quick]
    hetsched bench [--list] [--only NAME]

``hetsched <command> --help`` explains each command and its options.

Errors: bad arguments and the project's own errors (:class:`graphs.errors.HetschedError`)
print one line ``hetsched: error: ...`` on stderr and exit with status 2; no traceback
(``--debug`` re-raises to show one). Progress bars go to stderr, results to stdout, so
``hetsched place --json > plan.json`` writes clean JSON.

Example:
    >>> main(["policies"]) == 0  # doctest: +ELLIPSIS
    auto ...
    True
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, Sequence

from graphs.errors import HetschedError, UnknownNameError

from .errors import CLIError

__all__ = ["main", "build_parser", "CLIError", "parse_size", "EDGE_TRIO", "bench_scripts",
           "run_bench"]

#: The simulated edge trio the demo runs on: an Ascend 310B-class NPU, a Jetson Orin NX
#: GPU and a Cortex-A76 CPU (see ``hetsched profiles list``).
EDGE_TRIO = ("sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "bench")
OBJECTIVES = ("latency", "throughput", "energy")


# ----------------------------------------------------------------------------- parsing
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``hetsched: error: ...`` and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        msg = " ".join(str(message).split())
        sys.stderr.write(f"hetsched: error: {self.prog}: {msg} (see {self.prog} --help)\n")
        raise SystemExit(2)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
               "t": 1e12, "tb": 1e12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(text: str) -> float:
    """Bytes of a size like ``512MB``, ``1.5GiB``, ``2e9`` or ``4096`` (> 0).

    Example:
        >>> parse_size("1.5GiB"), parse_size("512MB"), parse_size("2e3")
        (1610612736.0, 512000000.0, 2000.0)
        >>> parse_size("lots")
        Traceback (most recent call last):
        ...
        scheduler.errors.CLIError: bad size 'lots': give bytes as a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 512MB
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise CLIError(f"bad size {text!r}: give bytes as a number with an optional unit "
                       "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 512MB")
    v = float(m.group(1)) * _SIZE_UNITS[unit]
    if not (v > 0 and math.isfinite(v)):
        raise CLIError(f"bad size {text!r}: it must be > 0")
    return v


def _arg_size(text: str) -> float:
    try:
        return parse_size(text)
    except CLIError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def _model_options(p: argparse.ArgumentParser, *, default_model: str, graph_file: bool,
                   models: Sequence[str] = ("tiny", "small", "1b")) -> None:
    g = p.add_argument_group("model")
    src = g.add_mutually_exclusive_group() if graph_file else g
    sizes = {"tiny": "tiny: 2 layers", "small": "small: 4 layers", "1b": "1b: 26 layers (1.4B params)"}
    src.add_argument("--model", choices=models, default=None,
                     help=f"reference decoder config (default {default_model}); "
                          + ", ".join(sizes[m] for m in models))
    if graph_file:
        src.add_argument("--graph", metavar="FILE",
                         help="an op graph saved with graphs.save (JSON) instead of --model")
    g.add_argument("--seq-len", type=_positive_int, default=32,
                   help="prefill length in tokens (default 32)")
    g.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    g.add_argument("--granularity", choices=("op", "module", "layer"), default="layer",
                   help="graph granularity the policy places (default layer)")
    p.set_defaults(default_model=default_model)


def _placement_options(p: argparse.ArgumentParser, *, default_policy: str,
                       default_objective: str, mem_limit: bool = True) -> None:
    g = p.add_argument_group("placement")
    g.add_argument("--devices", nargs="+", metavar="DEV", default=list(EDGE_TRIO),
                   help="devices: sim:<profile name or file>, cpu, cuda:N, npu:N; a bare profile "
                        "name means sim:<name>; commas also separate (default: the edge trio "
                        + " ".join(EDGE_TRIO) + ")")
    g.add_argument("--policy", default=default_policy,
                   help=f"placement policy (default {default_policy}; `hetsched policies` lists them)")
    g.add_argument("--objective", choices=OBJECTIVES, default=default_objective,
                   help=f"what the policy optimises (default {default_objective})")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a policy option (value parsed as JSON, else a string); repeatable")
    if mem_limit:
        g.add_argument("--mem-limit", action="append", default=[], metavar="[DEV=]SIZE",
                       help="cap a device's memory (e.g. sim:jetson-orin-nx=64MB), or every "
                            "device's without DEV=; repeatable")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hetsched`` (subcommands demo, place, simulate, policies,
    profiles, bench)."""
    top = _Parser(prog="hetsched", description=(
        "Adaptive heterogeneous scheduling runtime: capture a PyTorch model into a "
        "cost-annotated op graph, place it across NPU/GPU/CPU devices with a policy, and run "
        "it on Ray actors, one per device."),
        epilog="Start with `hetsched demo`. `hetsched COMMAND --help` explains each command.")
    top.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # -------------------------------------------------------------------- demo
    p = sub.add_parser("demo", help="the reference decoder on a simulated NPU+GPU+CPU trio, served on Ray",
                       description=(
        "The main demo. Captures the reference decoder (openPangu-Embedded-style; 'small' by "
        "default, computed for real on this CPU), compares placement policies on a simulated "
        "edge trio (Ascend 310B-class NPU, Jetson Orin NX GPU, Cortex-A76 CPU), prints the plan "
        "(partitions, devices, predicted times, memory), places the full-size 1b config "
        "timing-only, then starts an embedded Ray, deploys one actor per device and streams "
        "requests through Runtime.submit, checking the answers against the unpartitioned model "
        "and printing latency, throughput and energy. Last, the gate: an early-exit CNN on "
        "Fashion-MNIST served with a calibrated max-softmax gate (exit rate, accuracy, compute "
        "saved). Writes Gantt chart PNGs, Perfetto traces and a JSON summary."),
        epilog="Example: hetsched demo --model tiny --requests 16 --out out/demo")
    _model_options(p, default_model="small", graph_file=False, models=("tiny", "small"))
    _placement_options(p, default_policy="auto", default_objective="throughput", mem_limit=False)
    p.add_argument("--requests", type=_positive_int, default=64,
                   help="requests in the stream (default 64)")
    p.add_argument("--in-flight", type=_positive_int, default=8,
                   help="requests in flight at once (default 8)")
    p.add_argument("--pace", type=_positive_float, default=None,
                   help="real seconds slept per simulated second on sim devices (default: none)")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (also RAY_ADDRESS); default: an embedded local Ray")
    p.add_argument("--no-1b", dest="big", action="store_false",
                   help="skip the timing-only placement of the 1b config")
    p.add_argument("--no-gate", dest="gate", action="store_false",
                   help="skip the early-exit step (the gate on an early-exit CNN)")
    p.add_argument("--gate-budget", type=_fraction, default=0.02,
                   help="accuracy the gate's exits may lose, certified with 90%% confidence "
                        "(default 0.02)")
    p.add_argument("--out", default=os.path.join("out", "demo"),
                   help="folder for the Gantt charts, traces, plan and summary (default out/demo)")
    p.set_defaults(func=cmd_demo)

    # ------------------------------------------------------------------- place
    p = sub.add_parser("place", help="place a model or graph file on devices; print the plan",
                       description=(
        "Capture a reference decoder config on the meta device (no weights allocated, so 1b "
        "costs no memory) or load an op graph file, place it with a policy on simulated "
        "devices using the roofline cost model, and print the plan as tables (devices, "
        "partitions, nodes) or as JSON."),
        epilog="Example: hetsched place --model 1b --policy pipeline --objective throughput "
               "--mem-limit sim:jetson-orin-nx=2GB")
    _model_options(p, default_model="small", graph_file=True)
    _placement_options(p, default_policy="heft", default_objective="latency")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of tables")
    p.add_argument("--out", metavar="FILE", default=None, help="also write the JSON plan to FILE")
    p.add_argument("--nodes", action="store_true", help="also print one row per node")
    p.set_defaults(func=cmd_place)

    # ---------------------------------------------------------------- simulate
    p = sub.add_parser("simulate", help="simulate a stream of requests under a plan (virtual time)",
                       description=(
        "Place as `hetsched place` does, then run a discrete-event simulation of a stream of "
        "requests in virtual time: latency percentiles, throughput, per-device utilisation, "
        "energy and peak memory; write a Gantt chart and a Perfetto trace."),
        epilog="Example: hetsched simulate --model 1b --policy pipeline --objective throughput "
               "--requests 32 --in-flight 4")
    _model_options(p, default_model="small", graph_file=True)
    _placement_options(p, default_policy="heft", default_objective="latency")
    p.add_argument("--requests", type=_positive_int, default=32, help="requests (default 32)")
    arr = p.add_mutually_exclusive_group()
    arr.add_argument("--rate", type=_positive_float, default=None,
                     help="Poisson arrivals at RATE requests/s (default: a closed loop)")
    arr.add_argument("--in-flight", type=_positive_int, default=4,
                     help="closed loop: requests in flight at once (default 4)")
    p.add_argument("--link-contention", action="store_true",
                   help="one transfer at a time per link (default: contention-free links)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    p.add_argument("--out", default=os.path.join("out", "simulate"),
                   help="folder for gantt.png and trace.json (default out/simulate)")
    p.set_defaults(func=cmd_simulate)

    # ---------------------------------------------------------------- policies
    p = sub.add_parser("policies", help="list the placement policies",
                       description="List the registered placement policies with one line each.")
    p.set_defaults(func=cmd_policies)

    # ---------------------------------------------------------------- profiles
    p = sub.add_parser("profiles", help="device profiles: list, show, calibrate this host",
                       description=(
        "Device profiles are data files (TOML) with the source of every number; a simulated "
        "device sim:<name> runs with a profile's speed, memory and power."))
    psub = p.add_subparsers(dest="profiles_command", metavar="ACTION", parser_class=_Parser)
    q = psub.add_parser("list", help="the built-in profiles, one line each",
                        description="List the built-in profiles with their headline numbers.")
    q.set_defaults(func=cmd_profiles_list)
    q = psub.add_parser("show", help="one profile with the source of every number",
                        description="Show a profile (built-in name or file) with every number's source.")
    q.add_argument("profile", help="a built-in profile name or a .toml/.json file")
    q.set_defaults(func=cmd_profiles_show)
    q = psub.add_parser("calibrate", help="measure this machine's CPU and write a profile",
                        description=(
        "Measure this machine's CPU (matmul FLOP/s per dtype, memory bandwidth, launch "
        "overhead, RAPL power where readable) and write a profile file; use it as "
        "--devices sim:<file>."))
    q.add_argument("--out", default=os.path.join("out", "host-cpu.toml"),
                   help="profile file to write (default out/host-cpu.toml)")
    q.add_argument("--quick", action="store_true", help="small sizes, few repeats (seconds)")
    q.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads to measure with (default: torch's)")
    q.set_defaults(func=cmd_profiles_calibrate)
    p.set_defaults(func=lambda a, p=p: _need_sub(p, "profiles"))

    # ------------------------------------------------------------------- bench
    p = sub.add_parser("bench", help="run the benchmark suite (writes docs/benchmarks.md)",
                       description=(
        "Run the benchmark scripts under bench/ one after another; each prints its table and "
        "rewrites its own section of docs/benchmarks.md with the command that produced it. "
        "Needs a source checkout (bench/ is not installed with the package)."))
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this benchmark (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="pass --quick to the benchmarks that accept it")
    p.set_defaults(func=cmd_bench)
    return top


def _need_sub(p: argparse.ArgumentParser, name: str) -> int:
    p.error(f"{name} needs an action")
    return 2  # pragma: no cover


# --------------------------------------------------------------------------- helpers
def _out(*lines: str) -> None:
    print("\n".join(lines), flush=True)


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _ticker(desc: str) -> Iterator[None]:
    """A progress line with elapsed seconds, for a blocking step (refreshed from a thread)."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, file=sys.stderr, leave=False,
               bar_format="{desc}: {elapsed}", disable=None)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        bar.close()


def _devices(items: Sequence[str]) -> list[str]:
    out = []
    for item in items:
        for d in str(item).split(","):
            d = d.strip()
            if not d:
                continue
            if d == "cpu" or d.startswith(("sim:", "cuda", "npu")):
                out.append(d)
            else:
                out.append("sim:" + d)  # a bare profile name
    if not out:
        raise CLIError("--devices names no device; valid forms: sim:<profile>, cpu, cuda:N, npu:N")
    dup = sorted({d for d in out if out.count(d) > 1})
    if dup:
        raise CLIError(f"device(s) listed twice in --devices: {', '.join(dup)}")
    return out


def _cluster(devices: Sequence[str], mem_limits: Sequence[str] = ()):
    from executors.devices import Cluster

    from .runtime import build_cluster

    cluster = build_cluster(devices)
    if not mem_limits:
        return cluster
    caps: dict[str, float] = {}
    for item in mem_limits:
        dev, sep, size = str(item).rpartition("=")
        if sep and not dev:
            raise CLIError(f"--mem-limit {item!r}: give [DEV=]SIZE, e.g. sim:jetson-orin-nx=64MB")
        targets = [dev] if sep else list(cluster.names)
        for d in targets:
            if d not in cluster:
                d2 = "sim:" + d
                if d2 not in cluster:
                    raise UnknownNameError("device in --mem-limit", d, cluster.names)
                d = d2
            caps[d] = parse_size(size)
    specs = {n: (s.replace(mem_capacity=caps[n]) if n in caps else s) for n, s in cluster.specs.items()}
    return Cluster(names=cluster.names, specs=specs, links=dict(cluster.links),
                   default_link=cluster.default_link)


def _policy(name: str, objective: str, options: Sequence[str]):
    import policies

    opts: dict[str, Any] = {}
    for item in options:
        k, sep, v = str(item).partition("=")
        if not sep or not k:
            raise CLIError(f"--option {item!r}: give KEY=VALUE, e.g. time_limit=5")
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    opts.setdefault("objective", objective)
    return policies.get(name, **opts)


def _capture(args: argparse.Namespace, *, real: bool = False):
    """(graph, model or None, example inputs or None) for --model / --graph."""
    import graphs

    if getattr(args, "graph", None):
        path = args.graph
        if not os.path.isfile(path):
            raise CLIError(f"--graph {path!r}: no such file")
        g = graphs.load(path)
        if not any("kind" in a and "flops" in a for _, a in g.nodes(data=True)):
            raise CLIError(
                f"--graph {path!r} is not an op graph (its nodes have no 'kind'/'flops' "
                "attributes; an abstract task graph needs a table cost model: place it from "
                "Python with policies.abstract.RelatedMachines or TableCostModel)")
        return g, None, None
    from graphs import models as M

    name = args.model or args.default_model
    cfg = M.get_config(name)
    if args.seq_len > cfg.max_position:
        raise CLIError(f"--seq-len {args.seq_len} exceeds config {name!r}'s maximum of "
                       f"{cfg.max_position} positions")
    model = M.pangu_embedded(name, device="cpu" if real else "meta")
    x = M.example_inputs(model, batch=args.batch, seq_len=args.seq_len)
    g = graphs.capture(model, x, granularity=args.granularity)
    return g, model, x


def _graph_line(g) -> str:
    from .tables import format_value

    return (f"{g.name or 'graph'}: {g.number_of_nodes()} nodes at {g.granularity} granularity, "
            f"{format_value('flops', g.total('flops'))} and "
            f"{format_value('param_bytes', g.total('param_bytes'))} of parameters per request")


def _indent(lines: Sequence[str], prefix: str = "  ") -> list[str]:
    return [prefix + ln if ln else "" for text in lines for ln in text.split("\n")]


def _plan_tables(plan, graph, cluster, *, nodes: bool = False, title: str = "") -> list[str]:
    from .tables import device_rows, format_table, format_value, node_rows, partition_rows

    lines = []
    head = title or f"plan by {plan.policy} (objective {plan.objective})"
    per = "" if plan.period is None else (
        f", period {_fmt_s(plan.period)} (throughput {1 / plan.period:.4g} requests/s)")
    energy = "" if plan.energy is None else \
        f", energy {format_value('energy_j', plan.energy)} per request"
    lines.append(f"{head}: predicted latency {_fmt_s(plan.makespan)}{per}{energy}")
    if graph.graph.get("module") is not None:
        from graphs.partition import partition

        pm = partition(graph, plan.assignment)
        pred = pm.predicted(graph, _cost_model(cluster))
        lines += ["", "partitions (one fx submodule each; predicted time on its device):",
                  format_table(partition_rows(pm, pred),
                               ["partition", "device", "nodes", "flops", "param_bytes",
                                "out_bytes", "predicted_s"])]
    lines += ["", "devices (predicted busy time and peak memory of one request):",
              format_table(device_rows(plan, cluster),
                           ["device", "kind", "nodes", "busy_s", "utilisation", "memory_bytes",
                            "capacity_bytes"])]
    if nodes:
        lines += ["", "nodes:", format_table(node_rows(plan, graph))]
    return lines


_COST_MODELS: dict[int, Any] = {}


def _cost_model(cluster):
    from policies.roofline import RooflineCostModel

    key = id(cluster)
    if key not in _COST_MODELS:
        _COST_MODELS.clear()
        _COST_MODELS[key] = (cluster, RooflineCostModel(cluster))
    return _COST_MODELS[key][1]


def _simulate_module():
    # ``scheduler.simulate`` the module (the package re-exports a function of that name)
    import importlib

    return importlib.import_module("scheduler.simulate")


def _fmt_s(v: float) -> str:
    from .tables import format_value

    return format_value("t_s", v)


def _place(args: argparse.Namespace, *, real: bool = False):
    devices = _devices(args.devices)
    cluster = _cluster(devices, getattr(args, "mem_limit", ()))
    policy = _policy(args.policy, args.objective, args.option)
    with _ticker("capturing the model"):
        graph, model, x = _capture(args, real=real)
    plan = policy.place(graph, cluster, _cost_model(cluster))
    return graph, cluster, plan, model, x


# --------------------------------------------------------------------------- commands
def cmd_policies(args: argparse.Namespace) -> int:
    import policies

    avail = policies.available()
    w = max(map(len, avail))
    _out(*(f"{n:<{w}}  {d}" for n, d in avail.items()))
    return 0


def cmd_profiles_list(args: argparse.Namespace) -> int:
    from executors import profiles

    from .tables import format_table

    rows = []
    for name in profiles.available():
        s = profiles.load(name)
        f16 = max((s.peak_flops.get(d, 0.0) for d in ("float16", "bfloat16")), default=0.0)
        rows.append({"profile": name, "kind": s.kind,
                     "fp32": f"{s.flops_for('float32') / 1e12:.3g} TFLOP/s",
                     "fp16": f"{f16 / 1e12:.3g} TFLOP/s" if f16 else "-",
                     "bandwidth": f"{s.mem_bandwidth / 1e9:.4g} GB/s",
                     "memory": f"{s.mem_capacity / 1e9:.4g} GB",
                     "power": f"{s.active_power:g} W" if s.active_power else "-",
                     "description": s.description})
    _out(format_table(rows), "", "`hetsched profiles show NAME` gives the source of every number; "
         "use a profile as a device with --devices sim:NAME")
    return 0


def cmd_profiles_show(args: argparse.Namespace) -> int:
    from executors import profiles

    _out(profiles.show(args.profile))
    return 0


def cmd_profiles_calibrate(args: argparse.Namespace) -> int:
    from executors.calibrate import calibrate

    out = args.out
    if not out.endswith((".toml", ".json")):
        raise CLIError(f"--out {out!r}: a profile file must end in .toml or .json")
    d = os.path.dirname(os.path.abspath(out))
    os.makedirs(d, exist_ok=True)
    cmd = "hetsched profiles calibrate --out " + out + (" --quick" if args.quick else "") + \
        (f" --threads {args.threads}" if args.threads else "")
    spec = calibrate(out, quick=args.quick, threads=args.threads, command=cmd)
    lines = [f"peak_flops[{dt}] = {v / 1e9:.2f} GFLOP/s" for dt, v in spec.peak_flops.items()]
    lines += [f"mem_bandwidth = {spec.mem_bandwidth / 1e9:.2f} GB/s",
              f"launch_overhead = {spec.launch_overhead * 1e6:.2f} us",
              f"wrote {out}  (use it with --devices sim:{out})"]
    _out(*lines)
    return 0


def cmd_place(args: argparse.Namespace) -> int:
    graph, cluster, plan, _, _ = _place(args)
    doc = None
    if args.json or args.out:
        from .tables import device_rows

        doc = {"graph": {"name": graph.name, "granularity": graph.granularity,
                         "nodes": graph.number_of_nodes(), "flops": graph.total("flops")},
               "devices": device_rows(plan, cluster), "plan": plan.to_dict()}
        if graph.graph.get("module") is not None:
            from graphs.partition import partition

            from .tables import partition_rows

            pm = partition(graph, plan.assignment)
            doc["partitions"] = partition_rows(pm, pm.predicted(graph, _cost_model(cluster)))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
    if args.json:
        _out(json.dumps(doc, indent=1))
        return 0
    _out(_graph_line(graph), *_plan_tables(plan, graph, cluster, nodes=args.nodes))
    if args.out:
        _out("", f"wrote {args.out}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .tables import format_table, sim_rows
    from .trace import events_from_sim, gantt, to_chrome_trace

    S = _simulate_module()

    graph, cluster, plan, _, _ = _place(args)
    cm = _cost_model(cluster)
    n = args.requests
    if args.rate is not None:
        arrivals, mif, mode = S.poisson_arrivals(args.rate, n, seed=args.seed), None, \
            f"Poisson arrivals at {args.rate:g} requests/s"
    else:
        arrivals, mif, mode = [0.0] * n, args.in_flight, f"closed loop, {args.in_flight} in flight"
    with _ticker(f"simulating {n} requests"):
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
    _out(_graph_line(graph), *_plan_tables(plan, graph, cluster), "",
         f"simulated {n} requests ({mode}) in virtual time:",
         f"  latency p50 {_fmt_s(r.p50)}, p95 {_fmt_s(r.p95)}, p99 {_fmt_s(r.p99)}",
         f"  throughput {r.throughput:.4g} requests/s (bound by the busiest device: "
         f"{1 / bound:.4g} requests/s)" if bound > 0 else f"  throughput {r.throughput:.4g} requests/s",
         f"  energy {energy} per request", "",
         format_table(sim_rows(r)), "",
         f"wrote {png}  (Gantt chart of the first {min(n, 8)} requests, virtual time)",
         f"wrote {trace}  (Perfetto trace: open https://ui.perfetto.dev and drop the file)")
    return 0


# ------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    import graphs
    import policies
    from graphs import models as M

    from .tables import compare_rows, format_table, stats_rows, to_dict
    from .trace import events_from_sim, gantt

    S = _simulate_module()

    t_start = time.perf_counter()
    devices = _devices(args.devices)
    cluster = _cluster(devices)
    policy = _policy(args.policy, args.objective, args.option)
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
    _out(*lines)

    # 1. capture
    _out("", f"[1/6] capture (torch.fx, FLOP and byte counting, {args.granularity} granularity)")
    model = M.pangu_embedded(name)
    x = M.example_inputs(model, batch=args.batch, seq_len=args.seq_len)
    with _ticker("capturing"):
        graph = graphs.capture(model, x, granularity=args.granularity)
    _out("  " + _graph_line(graph))

    # 2. policies compared
    _out("", "[2/6] policies compared on this graph (cost-model predictions for one request; "
             "bottleneck = work per request on the busiest device, the least time between "
             "requests of a pipelined stream)")
    cm = _cost_model(cluster)
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
    _out(*_indent([format_table(rows, ["policy", "makespan_s", "bottleneck_s", "energy_j", "devices"])]))

    # 3. the plan
    plan = policy.place(graph, cluster, cm)
    _out("", f"[3/6] the plan served below: policy {plan.policy}, objective {plan.objective}")
    _out(*_indent(_plan_tables(plan, graph, cluster)))
    with open(os.path.join(args.out, "plan.json"), "w") as f:
        json.dump(plan.to_dict(), f, indent=1)
    sim_one = S.simulate(graph, plan, cm, cluster)
    plan_png = os.path.join(args.out, "plan_gantt.png")
    gantt(events_from_sim(sim_one, graph), plan_png,
          title=f"{name}: {plan.policy} plan, one request (cost-model prediction)", time_unit="ms",
          color_by="kind")

    # 4. 1b timing-only
    if args.big:
        _out("", "[4/6] the full-size 1b config (1.4B parameters), captured on the meta device "
                 "(no weights allocated) and placed timing-only with the same policy:")
        big_m = M.pangu_embedded("1b", device="meta")
        big_x = M.example_inputs(big_m, batch=args.batch, seq_len=args.seq_len)
        with _ticker("capturing 1b on meta"):
            big = graphs.capture(big_m, big_x, granularity=args.granularity)
        try:
            big_plan = policy.place(big, cluster, cm)
        except HetschedError as e:
            _out(f"  no plan for 1b on these devices: {e}")
        else:
            sr = S.simulate_stream(big, big_plan, cm, [0.0] * 16, cluster, max_in_flight=4)
            served = sorted(c - a for c, a in zip(sr.completion, sr.admitted))
            _out(*_indent(_plan_tables(big_plan, big, cluster)),
                 f"  simulated stream of 16 requests, 4 in flight: throughput {sr.throughput:.4g} "
                 f"requests/s, latency from admission {_fmt_s(served[len(served) // 2])} (median)")
    else:
        _out("", "[4/6] 1b placement skipped (--no-1b)")

    # 5. serve on Ray
    from .runtime import Runtime

    _out("", f"[5/6] serve: embedded Ray, one executor actor per device, {args.requests} requests "
             f"through Runtime.submit ({args.in_flight} in flight)")
    summary: dict[str, Any] = {}
    own_ray = _demo_ray(args, devices)
    try:
        with _ticker("deploying executor actors"):
            rt = Runtime(model, x, devices=devices, policy=policy, ray_address=args.ray_address,
                         granularity=args.granularity, max_in_flight=args.in_flight, pace=args.pace)
        try:
            used = sorted(set(rt.partitioned.devices), key=devices.index)
            _out(f"  deployed: {len(rt.partitioned.parts)} partition(s) on {', '.join(used)}")
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
            _out("", "  results:",
                 f"    correct: the first request equals the unpartitioned model (max abs diff {diff:.2g}); "
                 f"requests 0 and {args.requests - 1} of the stream checked too",
                 f"    {st.completed} of {args.requests} requests completed, {st.failed} failed, "
                 f"{st.retried} retried",
                 *(["    on the simulated devices (their device time, as the profiled hardware would run it):",
                    f"      latency of one request {_fmt_s(st.sim_makespan_p50)} (median; the plan predicted "
                    f"{_fmt_s(rt.plan.makespan)})",
                    "      throughput " + ("-" if sim_tput is None else f"{sim_tput:.4g} requests/s")
                    + " (device-time replay of the stream)",
                    "      energy per request " + ("-" if e is None else f"{e * 1e3:.3f} mJ")]
                   if any(d.startswith("sim:") for d in used) else
                   ["    no simulated device in this plan: device time is the wall time below"]),
                 "    on this machine (wall time: real computation on this CPU, Ray messaging included):",
                 f"      latency p50 {_fmt_s(st.latency_p50)}, p95 {_fmt_s(st.latency_p95)}, "
                 f"p99 {_fmt_s(st.latency_p99)}",
                 f"      throughput {st.throughput:.4g} requests/s",
                 "    no gate on this decoder: its weights are random (nothing is downloaded), so its "
                 "exit heads have no trained answers to trust; step 6 shows the gate where the exits "
                 "are trained here, an early-exit CNN on Fashion-MNIST (a decoder is gated the same "
                 "way: Runtime(policies.gating.attach_exits(model, [k]), ..., gate=..., exit_depth=k))", "",
                 *_indent([format_table(stats_rows(st), ["device", "busy_simulated_s", "busy_wall_s",
                                                         "utilisation_wall"])], "    "))
            summary["decoder"] = {"model": name, "plan": plan.to_dict(), "stats": to_dict(st),
                                  "simulated_throughput_per_s": sim_tput, "max_abs_diff": diff}
        finally:
            rt.shutdown()
        files = [(plan_png, "Gantt chart of the plan for one request (bars = layers, by op kind)"),
                 (run_png, "Gantt chart of the served stream (bars = partition calls, by request)"),
                 (trace, "Perfetto trace of the stream in simulated device time"),
                 (wall_trace, "the same in wall time on this machine"),
                 (os.path.join(args.out, "plan.json"), "the plan as JSON")]
        # the decoder's actors are gone; the gated model's actors take the devices next
        if args.gate:
            gate_summary, gate_files = _demo_gate(args, devices, policy)
            summary["gate"] = gate_summary
            files += gate_files
        else:
            _out("", "[6/6] early exit skipped (--no-gate): no exit rate to report")
            summary["gate"] = None
    finally:
        if own_ray:
            import ray

            ray.shutdown()
    summary_path = os.path.join(args.out, "summary.json")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    files.append((summary_path, "every number above as JSON (plans and stats as plain dicts)"))
    w = max(len(p) for p, _ in files)
    _out("", "wrote:", *(f"  {p:<{w}}  {what}" for p, what in files),
         "  open a trace at https://ui.perfetto.dev (drag the file in) or chrome://tracing",
         f"demo finished in {time.perf_counter() - t_start:.1f} s")
    return 0


def _demo_ray(args: argparse.Namespace, devices: Sequence[str]) -> bool:
    """Start (or join) Ray for the demo's two runtimes, so that it outlives the first; returns
    whether this call started it. No per-device custom resources are declared, so the
    gated model's actors can take the same simulated devices after the decoder's."""
    import ray

    if ray.is_initialized():
        return False
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    with _ticker("starting Ray" + (f" (joining {address})" if address else " (embedded, 127.0.0.1)")):
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            from .runtime import _init_loopback_ray

            _init_loopback_ray(max(2, len(devices)), {})
    return True


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


def _stream_pictures(rt: Any, png: str, trace: str, wall_trace: str, title: str) -> float | None:
    """Gantt chart (first 12 requests) and traces of a served stream; returns the stream's
    throughput in simulated device time (None without events)."""
    from .trace import gantt

    events = rt.events("simulated")
    if not events:
        return None
    r0 = min((ev.request for ev in events if ev.request is not None), default=0)
    shown = [ev for ev in events if ev.request is not None and ev.request < r0 + 12]
    gantt(shown, png, title=title, time_unit="ms", color_by="request")
    rt.write_trace(trace, time="simulated")
    rt.write_trace(wall_trace, time="wall")
    span = max(e.end for e in events) - min(e.start for e in events)
    done = len({ev.request for ev in events})
    return done / span if span > 0 else None


#: The early-exit model of the demo's gate step: ExitCNN trained for one epoch on 5000
#: Fashion-MNIST images (a few seconds; cached under .cache/gating/ by its config).
DEMO_GATE_CONFIG = dict(model="cnn", epochs=1, n_train=5000)
DEMO_EXIT_DEPTH = 2


def _demo_gate(args: argparse.Namespace, devices: Sequence[str], policy: Any) -> tuple[dict | None, list]:
    import torch

    from graphs import datasets as D
    from policies.gating import (MaxSoftmaxGate, TrainConfig, calibrate_threshold, exit_losses,
                                 load_or_train)

    from .runtime import Runtime
    from .tables import format_table, partition_rows, to_dict

    if not D.fashion_mnist_available():
        _out("", "[6/6] early exit: skipped, the Fashion-MNIST files are not installed (`make data` "
                 "installs the Debian package dataset-fashion-mnist); no exit rate to report")
        return None, []
    depth = DEMO_EXIT_DEPTH
    _out("", "[6/6] early exit with the gate on: an early-exit CNN (graphs.vision.ExitCNN, exits after "
             "stages 1-3) classifying Fashion-MNIST images; a max-softmax gate after stage "
             f"{depth} lets confident requests return from the shallow partition")
    with _ticker("loading Fashion-MNIST and the early-exit CNN (trained once, then cached)"):
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
    _out(f"  model {'loaded from the cache' if info['cached'] else 'trained'} "
         f"({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters, "
         f"{cfg.epochs} epoch on {cfg.n_train} images)",
         f"  threshold {cal.threshold:.3f}, calibrated on {n_cal} held-out images so that exiting "
         f"loses at most {args.gate_budget:.1%} accuracy with 90% confidence (there: {cal.exit_rate:.0%} "
         f"exit, loss {cal.risk:.2%}, bound {cal.ucb:.2%})")
    n = args.requests
    xs, ys = test.x[:n], test.y[:n]
    with _ticker("capturing, placing and deploying the gated model"):
        grt = Runtime(model, xs[:1], devices=devices, policy=policy, gate=MaxSoftmaxGate(cal.threshold),
                      exit_depth=depth, ray_address=args.ray_address, max_in_flight=args.in_flight,
                      pace=args.pace)
    try:
        _out(*_indent([format_table(partition_rows(grt.partitioned, grt.predicted),
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
                         f"gated ExitCNN on Ray: first 12 requests, simulated device time")
    finally:
        grt.shutdown()
    exited = sum(1 for f in futs if getattr(f, "exit_depth", 0))
    acc_served = float((served == ys).float().mean())
    acc_full = float((full == ys).float().mean())
    paths = dict(st.latency_by_path or {})
    e = st.energy_per_request
    _out("", "  results:",
         f"    exit rate {st.exit_rate:.1%} ({exited} of {st.completed} requests left after stage "
         f"{depth}; the others ran the deep path)",
         f"    accuracy of the served answers {acc_served:.1%} vs the full model's {acc_full:.1%} "
         f"on the same {n} test images (the budget bounds the expected loss; a small sample "
         "varies around it)",
         "    compute saved " + ("-" if st.compute_saved is None else f"{st.compute_saved:.1%}")
         + " of the plain model's FLOPs (exit head and gate included)",
         "    wall latency by path (median): " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in paths.items()),
         "    energy per request on the simulated devices " + ("-" if e is None else f"{e * 1e3:.3f} mJ"))
    summary = {"threshold": cal.threshold, "calibration": to_dict(cal), "exit_depth": depth,
               "requests": n, "exited": exited, "accuracy_served": acc_served,
               "accuracy_full_model": acc_full, "plan": grt.plan.to_dict(), "stats": to_dict(st)}
    files = [(png, "Gantt chart of the gated stream (exited requests skip the deep path)"),
             (trace, "Perfetto trace of the gated stream in simulated device time"),
             (wall_trace, "the same in wall time")]
    return summary, files


# ----------------------------------------------------------------------------- bench
def bench_scripts(bench_dir: str = BENCH_DIR) -> dict[str, str]:
    """Benchmark name -> first line of its docstring, for every ``bench/*.py`` script
    (files starting with ``_`` are helpers, not benchmarks).

    Example:
        >>> "capture" in bench_scripts()
        True
    """
    if not os.path.isdir(bench_dir):
        raise CLIError(f"no benchmark folder at {bench_dir}: the benchmarks live in a source "
                       "checkout (bench/ is not installed with the package)")
    out = {}
    for f in sorted(os.listdir(bench_dir)):
        if f.endswith(".py") and not f.startswith("_"):
            with open(os.path.join(bench_dir, f)) as fh:
                try:
                    doc = ast.get_docstring(ast.parse(fh.read())) or ""
                except SyntaxError:
                    doc = ""
            out[f[:-3]] = (doc.strip().splitlines() or [""])[0].strip().rstrip(".")
    return out


def run_bench(names: Sequence[str] | None = None, *, quick: bool = False,
              bench_dir: str = BENCH_DIR, python: str = sys.executable,
              progress: bool = True) -> list[tuple[str, int, float]]:
    """Run benchmark scripts (all, or ``names``) one after another with ``python``, from the
    repository root; returns ``(name, exit status, seconds)`` per script.

    Raises:
        graphs.errors.UnknownNameError: a name is not a benchmark (lists them).
    """
    from tqdm import tqdm

    avail = bench_scripts(bench_dir)
    names = list(names) if names else list(avail)
    for n in names:
        if n not in avail:
            raise UnknownNameError("benchmark", n, avail)
    results = []
    bar = tqdm(names, desc="benchmarks", unit="script", file=sys.stderr, disable=not progress or None)
    for n in bar:
        bar.set_postfix_str(n)
        path = os.path.join(bench_dir, n + ".py")
        cmd = [python, path]
        if quick:
            with open(path) as fh:
                if '"--quick"' in fh.read():
                    cmd.append("--quick")
        t = time.perf_counter()
        rc = subprocess.call(cmd, cwd=os.path.dirname(os.path.abspath(bench_dir)))
        results.append((n, rc, time.perf_counter() - t))
    return results


def cmd_bench(args: argparse.Namespace) -> int:
    avail = bench_scripts()
    if args.list:
        w = max(map(len, avail), default=0)
        _out(*(f"{n:<{w}}  {d}" for n, d in avail.items()))
        return 0
    results = run_bench(args.only, quick=args.quick)
    failed = [n for n, rc, _ in results if rc != 0]
    _out("", *(f"{n:<12} {'ok' if rc == 0 else f'FAILED (exit {rc})'}  {dt:.1f} s" for n, rc, dt in results),
         "tables written to docs/benchmarks.md")
    if failed:
        raise CLIError(f"benchmark(s) failed: {', '.join(failed)}")
    return 0


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hetsched`` command line with ``argv`` (default ``sys.argv[1:]``); returns
    the exit status (0 ok, 2 a one-line error on stderr)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a one-line error (2)
        return int(e.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:  # a subcommand's parser reported a usage error (one line)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except BrokenPipeError:
        raise
    except (HetschedError, ValueError, OSError, NotImplementedError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"hetsched: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hetsched: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a command that stopped reading (head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
