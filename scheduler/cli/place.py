"""``hetsched place``: place a model or an op graph file on devices and print the plan.

Captures a reference decoder config on the meta device (no weights allocated, so ``1b``
costs no memory) or loads an op graph saved with :func:`graphs.save`, places it with a
policy on the ``--devices`` (memory capped by ``--mem-limit``) using the roofline cost
model, and prints the plan as tables (devices, partitions, and with ``--nodes`` one row per
node) or, with ``--json``, as one JSON document (``--out`` also writes it to a file).

With ``--phase prefill|decode|mix`` it places a decoder config for generation instead
(:func:`policies.phase.place_phase`): the chain of blocks of one step
(:func:`graphs.decoding.step_graph`) with the KV cache of ``--max-batch`` sequences at
``--max-context`` positions resident on the layers. Prefill (a ``--prompt-len`` prompt) is
compute-bound and a decode step (one token per sequence) memory-bound, so the best split
can differ; ``mix`` weighs one prefill and ``--new-tokens / --max-batch`` decode steps per
request. It prints the plan, the shards (maximal runs of consecutive blocks on one device,
:func:`graphs.decoding.shard_ranges`) and, for this split, the time per step and tokens/s
of each phase.

Example:
    >>> from scheduler.cli import main
    >>> main(["place", "--phase", "decode", "--model", "tiny", "--devices",
    ...       "sim:atlas-200i-a2,sim:edge-cpu-a76"]) == 0  # doctest: +ELLIPSIS
    tiny:decode: ...
    shards (maximal runs of consecutive blocks on one device):
    ...
    True
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..errors import CLIError
from .common import (DECODER_CONFIGS, add_model_options, add_placement_options, capture_and_place,
                     check_out, cost_model, echo, fmt_s, graph_line, make_cluster, make_policy,
                     parse_devices, plan_tables, positive_int, ticker)

#: The generation phases ``--phase`` takes (as :data:`policies.phase.PHASES`).
PHASES = ("prefill", "decode", "mix")
#: Bytes per element of the step graphs (float32, as the captured graphs).
ITEMSIZE = 4
# the forward-graph options --phase replaces, with their defaults (see add_model_options)
_FORWARD_ONLY = {"seq_len": ("--seq-len", 32, "--prompt-len"), "batch": ("--batch", 1, "--max-batch"),
                 "granularity": ("--granularity", "layer", None)}


def add_parser(sub) -> None:
    """Register ``place`` on the top-level subparsers ``sub``.

    Example:
        >>> import argparse
        >>> sub = argparse.ArgumentParser(prog="hetsched").add_subparsers()
        >>> add_parser(sub)
        >>> a = sub.choices["place"].parse_args(["--model", "1b", "--phase", "decode", "--max-batch", "4"])
        >>> a.model, a.phase, a.max_batch, a.policy, a.func is run
        ('1b', 'decode', 4, 'heft', True)
    """
    p = sub.add_parser("place", help="place a model or graph file on devices; print the plan",
                       description=(
        "Capture a reference decoder config on the meta device (no weights allocated, so 1b "
        "costs no memory) or load an op graph file, place it with a policy on simulated "
        "devices using the roofline cost model, and print the plan as tables (devices, "
        "partitions, nodes) or as JSON. With --phase, place a decoder config's blocks for "
        "generation instead: the prefill of a prompt (compute-bound), a decode step "
        "(memory-bound) or the mix of a workload, and print the shards and tokens/s."),
        epilog="Examples: hetsched place --model 1b --policy pipeline --objective throughput "
               "--mem-limit sim:jetson-orin-nx=2GB;  hetsched place --phase decode --model "
               "smollm2-135m --max-batch 8 --devices sim:atlas-200i-a2,sim:edge-cpu-a76")
    add_model_options(p, default_model="small", graph_file=True, models=DECODER_CONFIGS)
    add_placement_options(p, default_policy="heft", default_objective="latency")
    g = p.add_argument_group("generation phase (--phase; a decoder config, not a graph file)")
    g.add_argument("--phase", choices=PHASES, default=None,
                   help="place the decoder's blocks for one generation step: prefill, decode, or "
                        "mix (1 prefill + new-tokens/max-batch decode steps per request); "
                        "default: the captured forward graph")
    g.add_argument("--prompt-len", type=positive_int, default=128,
                   help="prompt tokens of the prefill (default 128)")
    g.add_argument("--new-tokens", type=positive_int, default=128,
                   help="tokens generated per request (default 128); a decode step runs at "
                        "context prompt-len + new-tokens/2")
    g.add_argument("--max-batch", type=positive_int, default=1,
                   help="sequences per decode step (default 1)")
    g.add_argument("--max-context", type=positive_int, default=None,
                   help="positions of KV cache kept per sequence, for max-batch sequences "
                        "(default prompt-len + new-tokens)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of tables")
    p.add_argument("--out", metavar="FILE", default=None, help="also write the JSON plan to FILE")
    p.add_argument("--nodes", action="store_true", help="also print one row per node")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Place the model or graph of ``args`` and print the plan (tables or JSON); returns 0.

    Tables name each column by its quantity, each value carrying its unit (``busy``
    ``2.308 ms``); the JSON document keeps raw SI numbers, the unit in the key
    (``"busy_s": 0.002308``).

    Example:
        >>> from scheduler.cli import build_parser
        >>> run(build_parser().parse_args(["place", "--model", "tiny"]))  # doctest: +ELLIPSIS
        tiny: 8 nodes at layer granularity, ...
        devices (predicted busy time and peak memory of one request):
        device              kind  nodes  busy       utilisation  memory     capacity
        ...
        0
    """
    if args.out is not None:  # an empty name too is refused, before any work
        check_out(args.out, "--out", folder=False)
    if getattr(args, "phase", None):
        return run_phase(args)
    graph, cluster, plan, _, _ = capture_and_place(args)
    doc = None
    if args.json or args.out:
        from ..tables import device_rows

        doc = {"graph": {"name": graph.name, "granularity": graph.granularity,
                         "nodes": graph.number_of_nodes(), "flops": graph.total("flops")},
               "devices": device_rows(plan, cluster), "plan": plan.to_dict()}
        if graph.graph.get("module") is not None:
            from graphs.partition import partition

            from ..tables import partition_rows

            pm = partition(graph, plan.assignment)
            doc["partitions"] = partition_rows(pm, pm.predicted(graph, cost_model(cluster)))
    _write(args, doc)
    if args.json:
        echo(json.dumps(doc, indent=1))
        return 0
    echo(graph_line(graph), *plan_tables(plan, graph, cluster, nodes=args.nodes))
    if args.out:
        echo("", f"wrote {args.out}")
    return 0


def _write(args: argparse.Namespace, doc: dict | None) -> None:
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)


# ------------------------------------------------------------------ --phase
def workload(args: argparse.Namespace) -> tuple[Any, dict[str, int]]:
    """``(config, workload)`` of a ``--phase`` placement: the decoder config named by
    ``--model`` and the keywords of :func:`policies.phase.place_phase` (prompt_len,
    new_tokens, max_batch, max_context, itemsize).

    Raises:
        CLIError: a graph file, a forward-graph option (``--seq-len``, ``--batch``,
            ``--granularity``), or a context that does not hold the workload or exceeds the
            config's positions.

    Example:
        >>> from scheduler.cli import build_parser
        >>> cfg, work = workload(build_parser().parse_args(
        ...     ["place", "--phase", "decode", "--model", "tiny", "--prompt-len", "16", "--new-tokens", "8"]))
        >>> cfg.name, work
        ('tiny', {'prompt_len': 16, 'new_tokens': 8, 'max_batch': 1, 'max_context': 24, 'itemsize': 4})
    """
    from graphs import models as M

    if getattr(args, "graph", None):
        raise CLIError(f"--phase places a decoder config's generation steps, not a graph file "
                       f"(--graph {args.graph!r}); give --model NAME, one of "
                       f"{', '.join(M.configs())}")
    for dest, (flag, default, instead) in _FORWARD_ONLY.items():
        if getattr(args, dest) != default:
            raise CLIError(f"{flag} sets the captured forward graph, which --phase does not use; "
                           + (f"give {instead} instead" if instead else
                              "a --phase plan places whole blocks (layer granularity)"))
    name = args.model or args.default_model
    cfg = M.get_config(name)  # argparse's choices already hold only decoder configs
    need = args.prompt_len + args.new_tokens
    ctx = args.max_context if args.max_context is not None else need
    if ctx < need:
        raise CLIError(f"--max-context {ctx} does not hold a request: --prompt-len {args.prompt_len} "
                       f"+ --new-tokens {args.new_tokens} = {need} positions")
    if ctx > cfg.max_position:
        raise CLIError(f"a context of {ctx} positions (--max-context, default --prompt-len + "
                       f"--new-tokens) exceeds config {name!r}'s maximum of {cfg.max_position}")
    return cfg, dict(prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                     max_batch=args.max_batch, max_context=ctx, itemsize=ITEMSIZE)


def phase_rows(plan: Any, config: Any, cluster: Any, base_cost: Any, phase: str | None,
               work: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Phase -> ``{"time_s", "tokens", "tokens_per_s", "energy_j", "energy_per_token_j"}``
    of ``plan``'s split, for every phase: the phase it was placed for (``phase``) from the
    plan itself, the others (all of them with ``phase=None``) by list-scheduling the same
    assignment on their step graph (memory not re-checked: the split is the one placed).

    ``time_s`` is a prefill step (``tokens`` = the prompt), a decode step (``tokens`` = the
    batch) or, for ``mix``, a request's device work: 1 prefill + new_tokens / max_batch
    decode steps (``tokens`` = the new tokens).

    Example:
        >>> import policies
        >>> from graphs import models as M
        >>> from policies.phase import place_phase
        >>> from scheduler.cli.common import cost_model, make_cluster
        >>> c = make_cluster(["sim:atlas-200i-a2", "sim:edge-cpu-a76"])
        >>> cfg, work = M.get_config("tiny"), dict(prompt_len=16, new_tokens=8, max_batch=2,
        ...                                        max_context=24, itemsize=4)
        >>> plan, _, _ = place_phase(policies.get("heft"), cfg, c, cost_model(c), "decode", **work)
        >>> rows = phase_rows(plan, cfg, c, cost_model(c), "decode", work)
        >>> sorted(rows), rows["decode"]["tokens"], rows["decode"]["time_s"] == plan.makespan
        (['decode', 'mix', 'prefill'], 2, True)
    """
    from graphs.decoding import block_names
    from policies import list_schedule
    from policies.phase import PhaseMix, phase_graphs

    gs = phase_graphs(config, **work)
    per_seq = work["new_tokens"] / work["max_batch"]
    models = {"prefill": (gs["prefill"], base_cost), "decode": (gs["decode"], base_cost),
              "mix": (gs["decode"], PhaseMix(base_cost, [(gs["prefill"], 1.0), (gs["decode"], per_seq)]))}
    tokens = {"prefill": work["prompt_len"], "decode": work["max_batch"], "mix": work["new_tokens"]}
    order = list(block_names(config))
    out = {}
    for ph, (g, cm) in models.items():
        if ph == phase:
            t, e = plan.makespan, plan.energy
        else:
            p = list_schedule(g, cluster, cm, order, assignment=dict(plan.assignment),
                              options={"respect_memory": False, "strict": True})
            t, e = p.makespan, p.energy
        out[ph] = {"time_s": t, "tokens": tokens[ph],
                   "tokens_per_s": tokens[ph] / t if t > 0 else None, "energy_j": e,
                   "energy_per_token_j": None if e is None else e / tokens[ph]}
    return out


def phase_lines(rows: dict[str, dict[str, Any]], phase: str, work: dict[str, int]) -> list[str]:
    """One line per phase of :func:`phase_rows` (the placed one marked).

    Example:
        >>> rows = {ph: {"time_s": 0.01, "tokens_per_s": 100.0, "energy_per_token_j": 0.002}
        ...         for ph in ("prefill", "decode", "mix")}
        >>> print("\\n".join(phase_lines(rows, "decode", {"prompt_len": 16, "new_tokens": 8,
        ...                                               "max_batch": 1})[:3]))
        each phase with this split (one step at a time on the devices):
          prefill: a 16-token prompt in 10.000 ms per step, 100 tokens/s, 2.000 mJ per token
          decode (placed for): 1 sequence x 1 token at context 20 in 10.000 ms per step, 100 tokens/s, 2.000 mJ per token
    """
    from ..tables import format_value

    def energy(r: dict) -> str:
        e = r["energy_per_token_j"]
        return "" if e is None else f", {format_value('energy_j', e)} per token"

    def rate(r: dict) -> str:
        v = r["tokens_per_s"]
        return "-" if v is None else f"{v:.4g}" if v < 1e4 else f"{v:.0f}"

    p, n, b = work["prompt_len"], work["new_tokens"], work["max_batch"]
    pre, dec, mix = rows["prefill"], rows["decode"], rows["mix"]
    mark = {ph: " (placed for)" if ph == phase else "" for ph in rows}
    return ["each phase with this split (one step at a time on the devices):",
            f"  prefill{mark['prefill']}: a {p}-token prompt in {fmt_s(pre['time_s'])} per step, "
            f"{rate(pre)} tokens/s{energy(pre)}",
            f"  decode{mark['decode']}: {_seqs(b)} x 1 token at context {p + n // 2} in "
            f"{fmt_s(dec['time_s'])} per step, {rate(dec)} tokens/s{energy(dec)}",
            f"  mix{mark['mix']}: {fmt_s(mix['time_s'])} of device work per request, weighting 1 "
            f"prefill + new-tokens/max-batch = {n}/{b} decode steps (its share of {n} steps of "
            f"{_seqs(b)}): {rate(mix)} new tokens/s{energy(mix)}"]


def _seqs(b: int) -> str:
    return f"{b} sequence" + ("s" if b != 1 else "")


def shard_rows(config: Any, assignment: Any) -> list[dict[str, Any]]:
    """The shards of ``assignment`` (:func:`graphs.decoding.shard_ranges`) as rows:
    ``device``, ``start``, ``stop`` (block indices, ``stop`` exclusive), ``blocks`` (count),
    ``first`` and ``last`` (block names).

    Example:
        >>> from graphs import models as M
        >>> from graphs.decoding import block_names
        >>> cfg = M.get_config("tiny")
        >>> rows = shard_rows(cfg, {n: "x" if i < 2 else "y" for i, n in enumerate(block_names(cfg))})
        >>> [(r["device"], r["start"], r["stop"], r["first"], r["last"]) for r in rows]
        [('x', 0, 2, 'embed_tokens', 'layers.0'), ('y', 2, 5, 'layers.1', 'lm_head')]
    """
    from graphs.decoding import block_names, shard_ranges

    names = block_names(config)
    return [{"device": d, "start": a, "stop": b, "blocks": b - a, "first": names[a], "last": names[b - 1]}
            for d, a, b in shard_ranges(config, assignment)]


def run_phase(args: argparse.Namespace) -> int:
    """``place --phase``: place a decoder config for a generation phase and print the plan,
    the shards and each phase's time per step and tokens/s (or all of it as JSON).

    Example:
        >>> from scheduler.cli import build_parser
        >>> run_phase(build_parser().parse_args(["place", "--phase", "prefill", "--model", "tiny",
        ...     "--devices", "sim:atlas-200i-a2,sim:edge-cpu-a76"]))  # doctest: +ELLIPSIS
        tiny:prefill: ...
        shards (maximal runs of consecutive blocks on one device):
        ...
        0
    """
    from policies.phase import place_phase

    from ..tables import device_rows, format_table, format_value

    cfg, work = workload(args)
    devices = parse_devices(args.devices)
    cluster = make_cluster(devices, args.mem_limit)
    policy = make_policy(args.policy, args.objective, args.option)
    base = cost_model(cluster)
    with ticker(f"placing {cfg.name} for {args.phase}"):
        plan, graph, _ = place_phase(policy, cfg, cluster, base, args.phase, **work)
        rows = phase_rows(plan, cfg, cluster, base, args.phase, work)
    shards = shard_rows(cfg, plan.assignment)
    doc = None
    if args.json or args.out:
        doc = {"phase": args.phase, "model": cfg.name, "workload": work,
               "graph": {"name": graph.name, "granularity": graph.granularity,
                         "nodes": graph.number_of_nodes(), "flops": graph.total("flops")},
               "devices": device_rows(plan, cluster), "plan": plan.to_dict(), "shards": shards,
               "phases": rows}
    _write(args, doc)
    if args.json:
        echo(json.dumps(doc, indent=1))
        return 0
    p, n, b, ctx = work["prompt_len"], work["new_tokens"], work["max_batch"], work["max_context"]
    kv = sum(a.get("state_bytes", 0) for _, a in graph.nodes(data=True))
    step = {"prefill": (f"one prefill of a {p}-token prompt", "time per prefill step", "prefill step"),
            "decode": (f"one decode step of {_seqs(b)} at context {p + n // 2}",
                       "time per decode step", "decode step"),
            "mix": (f"a request: 1 prefill of {p} tokens + {n}/{b} decode steps of {_seqs(b)}",
                    "device work per request", "request")}[args.phase]
    head = (f"{cfg.name}:{args.phase}: {graph.number_of_nodes()} blocks ({cfg.num_layers} layers), "
            f"{format_value('param_bytes', graph.total('param_bytes'))} of parameters and "
            f"{format_value('kv_bytes', kv)} of KV cache ({_seqs(b)} x {ctx} positions), "
            f"placed for {step[0]}")
    echo(head, *plan_tables(plan, graph, cluster, nodes=args.nodes, measure=step[1], unit=step[2]),
         "", "shards (maximal runs of consecutive blocks on one device):",
         format_table(shards, ["device", "start", "stop", "blocks", "first", "last"]),
         "", *phase_lines(rows, args.phase, work))
    if args.out:
        echo("", f"wrote {args.out}")
    return 0
