"""What the ``hetsched`` commands share: the parser, option groups, output and plan tables.

* :class:`Parser`: argparse with one-line errors (``hetsched: error: ...``, status 2);
  :func:`parse_size` and the argument types :func:`arg_size`, :func:`positive_int`,
  :func:`int_range`, :func:`fraction`, :func:`positive_float`, :func:`float_range`;
  :func:`check_out` refuses an output path before any work;
* the option groups :func:`add_model_options` (``--model``/``--graph``, ``--seq-len``, ...)
  and :func:`add_placement_options` (``--devices``, ``--policy``, ``--objective``, ...);
* :func:`echo` (results to stdout) and :func:`ticker` (a progress line on stderr);
* from options to objects: :func:`parse_devices`, :func:`make_cluster` (with
  ``--mem-limit`` caps; :func:`check_gpus` first), :func:`make_policy`, :func:`load_graph`,
  :func:`capture_graph`, :func:`cost_model`, :func:`capture_and_place`;
* text: :func:`graph_line`, :func:`plan_tables` (the plan as the devices/partitions/nodes
  tables ``place``, ``simulate`` and ``demo`` print), :func:`power_text` and
  :func:`energy_note` (what an energy counts, idle power stated), :func:`fmt_s`,
  :func:`indent`.

Example:
    >>> parse_devices(["jetson-orin-nx,sim:edge-cpu-a76", "cpu"])
    ['sim:jetson-orin-nx', 'sim:edge-cpu-a76', 'cpu']
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import threading
from typing import Any, Iterator, Sequence

from graphs.errors import HetschedError, UnknownNameError

from ..errors import CLIError

#: The simulated edge trio the demo runs on: an Ascend 310B-class NPU, a Jetson Orin NX
#: GPU and a Cortex-A76 CPU (see ``hetsched profiles list``).
EDGE_TRIO = ("sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76")
OBJECTIVES = ("latency", "throughput", "energy")
#: The reference decoder configs, as :func:`graphs.models.configs` names them (spelled out
#: here so that building the parser does not import torch; a test keeps the two equal).
DECODER_CONFIGS = ("tiny", "small", "1b", "smollm2-135m", "tiny-llama")


# ----------------------------------------------------------------------------- parsing
class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``hetsched: error: ...`` and exit status 2.

    Example:
        >>> p = Parser(prog="hetsched x")
        >>> _ = p.add_argument("--n", type=int)
        >>> p.parse_args(["--n", "3"]).n
        3
        >>> p.parse_args(["--n", "three"])  # one line on stderr, then:
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """

    def error(self, message: str):  # type: ignore[override]
        """Write ``hetsched: error: PROG: MESSAGE (see PROG --help)`` on stderr, one line
        (runs of whitespace collapsed), and exit with status 2.

        Example:
            >>> Parser(prog="hetsched x").error("bad\\n  value")
            Traceback (most recent call last):
            ...
            SystemExit: 2
        """
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
    if not math.isfinite(v):
        raise CLIError(f"bad size {text!r}: too large for a number of bytes")
    if not v > 0:
        raise CLIError(f"bad size {text!r}: it must be > 0")
    return v


def arg_size(text: str) -> float:
    """argparse type: :func:`parse_size`, its error as an argparse error.

    Example:
        >>> arg_size("2KiB")
        2048.0
        >>> arg_size("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: bad size '0': it must be > 0
    """
    try:
        return parse_size(text)
    except CLIError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: The largest integer an option takes (a tensor dimension, a count): 2**31 - 1.
INT_MAX = 2 ** 31 - 1


def int_range(lo: int = 1, hi: int = INT_MAX, *, what: str = "an integer"):
    """argparse type: an integer in ``[lo, hi]`` (digits only: ``1e3`` and ``nan`` are not
    integers), its error naming ``what`` and the bound it breaks.

    Example:
        >>> int_range(1, 10)("7")
        7
        >>> int_range(1, 10)("11")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected an integer <= 10, got '11'
    """
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:
            rng = f"<= {hi}" if v is not None and v > hi else f">= {lo}"
            raise argparse.ArgumentTypeError(f"expected {what} {rng}, got {text!r}")
        return v

    parse.__name__ = "int_range"
    return parse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (and at most :data:`INT_MAX`).

    Example:
        >>> positive_int("3")
        3
        >>> positive_int("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected an integer >= 1, got '0'
    """
    return int_range(1, INT_MAX)(text)


def fraction(text: str) -> float:
    """argparse type: a number strictly between 0 and 1.

    Example:
        >>> fraction("0.25")
        0.25
        >>> fraction("1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a number in (0, 1), got '1'
    """
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return v


def float_range(lo: float, hi: float, *, unit: str = ""):
    """argparse type: a finite number in ``[lo, hi]`` (``lo`` > 0: nan, inf, zero and
    negatives are refused), its error naming the range and ``unit``.

    Example:
        >>> float_range(1e-6, 1e9, unit="requests/s")("2.5")
        2.5
        >>> float_range(1e-6, 1e9, unit="requests/s")("1e308")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a number of requests/s in [1e-06, 1e+09], got '1e308'
    """
    what = f"a number of {unit}" if unit else "a number"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"expected {what} in [{lo:g}, {hi:g}], got {text!r}")
        return v

    parse.__name__ = "float_range"
    return parse


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0.

    Example:
        >>> positive_float("1e-3")
        0.001
        >>> positive_float("inf")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a finite number > 0, got 'inf'
    """
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def add_model_options(p: argparse.ArgumentParser, *, default_model: str, graph_file: bool,
                      models: Sequence[str] = ("tiny", "small", "1b")) -> None:
    """The ``model`` group: ``--model`` (one of ``models``; with ``graph_file``, exclusive with
    ``--graph FILE``), ``--seq-len``, ``--batch``, ``--granularity``.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_model_options(p, default_model="small", graph_file=True)
        >>> a = p.parse_args(["--graph", "g.json", "--seq-len", "8"])
        >>> a.graph, a.model, a.seq_len, a.granularity, a.default_model
        ('g.json', None, 8, 'layer', 'small')
    """
    g = p.add_argument_group("model")
    src = g.add_mutually_exclusive_group() if graph_file else g
    sizes = {"tiny": "tiny: 2 layers", "small": "small: 4 layers", "1b": "1b: 26 layers (1.4B params)",
             "smollm2-135m": "smollm2-135m: 30 layers (SmolLM2-135M, Llama-style)",
             "tiny-llama": "tiny-llama: 2 layers, Llama-style"}
    src.add_argument("--model", choices=models, default=None,
                     help=f"reference decoder config (default {default_model}); "
                          + ", ".join(sizes[m] for m in models))
    if graph_file:
        src.add_argument("--graph", metavar="FILE",
                         help="an op graph saved with graphs.save (JSON) instead of --model")
    g.add_argument("--seq-len", type=positive_int, default=32,
                   help="prefill length in tokens (default 32)")
    g.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    g.add_argument("--granularity", choices=("op", "module", "layer"), default="layer",
                   help="graph granularity the policy places (default layer)")
    p.set_defaults(default_model=default_model)


def add_placement_options(p: argparse.ArgumentParser, *, default_policy: str,
                          default_objective: str, mem_limit: bool = True) -> None:
    """The ``placement`` group: ``--devices``, ``--policy``, ``--objective``, ``--option`` and,
    with ``mem_limit``, ``--mem-limit``.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_placement_options(p, default_policy="heft", default_objective="latency")
        >>> a = p.parse_args(["--devices", "cpu:0,cpu:1", "--option", "insertion=false"])
        >>> a.devices, a.policy, a.objective, a.option, a.mem_limit
        (['cpu:0,cpu:1'], 'heft', 'latency', ['insertion=false'], [])
    """
    g = p.add_argument_group("placement")
    g.add_argument("--devices", nargs="+", metavar="DEV", default=list(EDGE_TRIO),
                   help="devices: sim:<profile name or file>, cpu, cpu:N, cuda:N, npu:N; a bare "
                        "profile name means sim:<name>; commas also separate (default: the edge trio "
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



def need_action(p: argparse.ArgumentParser, name: str) -> int:
    """What a command with actions runs when given none: a one-line usage error.

    Example:
        >>> need_action(Parser(prog="hetsched profiles"), "profiles")
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    p.error(f"{name} needs an action")
    return 2  # pragma: no cover



def check_out(path: str, flag: str, *, folder: bool) -> None:
    """Refuse an output path before any work: ``path`` (a ``folder`` or a file, as ``flag``
    takes) must not be the other kind, and the nearest existing folder above it must be a
    writable folder, not a file; otherwise a :class:`CLIError` naming ``flag``.

    Example:
        >>> check_out(__file__, "--out", folder=True)
        Traceback (most recent call last):
        ...
        scheduler.errors.CLIError: --out '...common.py' is a file; give a folder
    """
    p = os.path.abspath(path)
    if folder and os.path.exists(p) and not os.path.isdir(p):
        raise CLIError(f"{flag} {path!r} is a file; give a folder")
    if not folder and os.path.isdir(p):
        raise CLIError(f"{flag} {path!r} is a folder; give a file name")
    above = p if folder and os.path.isdir(p) else os.path.dirname(p)
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise CLIError(f"{flag} {path!r}: {above!r} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path!r}: cannot write in {above!r} (permission denied)")


# --------------------------------------------------------------------------- helpers
def echo(*lines: str) -> None:
    """Print ``lines`` to stdout (results; progress goes to stderr), flushed.

    Example:
        >>> echo("a", "", "b")
        a
        <BLANKLINE>
        b
    """
    print("\n".join(lines), flush=True)


@contextlib.contextmanager
def ticker(desc: str) -> Iterator[None]:
    """A progress line with elapsed seconds, for a blocking step (refreshed from a thread);
    on stderr, and only where stderr is a terminal.

    Example:
        >>> with ticker("adding"):
        ...     total = 1 + 1
        >>> total
        2
    """
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


def parse_devices(items: Sequence[str]) -> list[str]:
    """The ``--devices`` words as device names: commas split, a bare profile name means
    ``sim:<name>``, a bare ``cuda`` or ``npu`` its device 0; none, or one listed twice, is
    a :class:`CLIError`.

    Example:
        >>> parse_devices(["npu", "cpu:0,edge-cpu-a76"])
        ['npu:0', 'cpu:0', 'sim:edge-cpu-a76']
        >>> parse_devices(["cpu,cpu"])
        Traceback (most recent call last):
        ...
        scheduler.errors.CLIError: device(s) listed twice in --devices: cpu
    """
    out = []
    for item in items:
        for d in str(item).split(","):
            d = d.strip()
            if not d:
                continue
            if d in ("cuda", "npu"):
                out.append(d + ":0")  # a bare accelerator means its first device
            elif d == "cpu" or d.startswith(("sim:", "cpu:", "cuda", "npu")):
                out.append(d)
            else:
                out.append("sim:" + d)  # a bare profile name
    if not out:
        raise CLIError("--devices names no device; valid forms: sim:<profile>, cpu, cpu:N, cuda:N, "
                       "npu:N")
    dup = sorted({d for d in out if out.count(d) > 1})
    if dup:
        raise CLIError(f"device(s) listed twice in --devices: {', '.join(dup)}")
    return out


def make_cluster(devices: Sequence[str], mem_limits: Sequence[str] = ()):
    """The cluster of ``devices`` with the ``--mem-limit`` caps (``[DEV=]SIZE``) applied.

    Example:
        >>> c = make_cluster(["sim:edge-cpu-a76", "sim:jetson-orin-nx"], ["edge-cpu-a76=64MB"])
        >>> c.spec("sim:edge-cpu-a76").mem_capacity, c.spec("sim:jetson-orin-nx").mem_capacity > 64e6
        (64000000.0, True)
    """
    from executors.devices import Cluster

    from ..runtime import build_cluster

    check_gpus(devices)
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


def check_gpus(devices: Sequence[str]) -> None:
    """Each ``cuda:N`` of ``devices`` is a GPU this process sees: a cluster reads a GPU's
    numbers from the hardware, so a missing one is an
    :class:`executors.errors.DeviceUnavailableError` saying what to install or use instead
    (the executor factory's own check). ``npu:N`` needs no hardware to be placed on: its
    numbers come from the Atlas profile.

    Example:
        >>> check_gpus(["cpu", "sim:edge-cpu-a76", "npu:0"])  # no cuda:N: nothing to check
    """
    for d in devices:
        head, _, idx = str(d).partition(":")
        if head == "cuda" and idx.isascii() and idx.isdigit():
            import executors

            executors.create(d)


def make_policy(name: str, objective: str, options: Sequence[str]):
    """The registered policy ``name`` with the ``--option KEY=VALUE`` options (values parsed
    as JSON, else strings), and ``objective`` unless an option sets it.

    Example:
        >>> p = make_policy("pipeline", "throughput", ["max_stages=2"])
        >>> p.name, p.options["max_stages"], p.options["objective"]
        ('pipeline', 2, 'throughput')
    """
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


#: The node attributes whose totals the tables print; a graph file's must sum to finite floats.
_TOTALS = ("flops", "bytes_in", "bytes_out", "param_bytes")


def load_graph(path: str):
    """The op graph saved in the file ``path`` (:func:`graphs.load`); a missing, unreadable,
    malformed or absurd file (costs summing past what a float holds) is a :class:`CLIError`
    naming ``--graph`` and the file.

    Example:
        >>> load_graph("no-such-graph.json")
        Traceback (most recent call last):
        ...
        scheduler.errors.CLIError: --graph 'no-such-graph.json': no such file
    """
    import graphs

    if not os.path.isfile(path):
        raise CLIError(f"--graph {path!r}: no such file")
    try:
        g = graphs.load(path)
    except RecursionError:
        raise CLIError(f"--graph {path!r}: nested too deeply to be an op graph file") from None
    except (HetschedError, ValueError, OSError) as e:  # GraphFormatError, not UTF-8, unreadable
        raise CLIError(f"--graph {path!r}: {e}") from e
    except (TypeError, KeyError, AttributeError, IndexError) as e:  # a shape graphs.load missed
        raise CLIError(f"--graph {path!r}: not an op graph file ({type(e).__name__}: {e})") from e
    for key in _TOTALS:
        try:
            ok = math.isfinite(float(g.total(key)))
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise CLIError(f"--graph {path!r}: the nodes' {key!r} values do not sum to a finite "
                           "number (each must be a finite number >= 0, small enough to add up)")
    return g


def capture_graph(args: argparse.Namespace, *, real: bool = False):
    """(graph, model or None, example inputs or None) for --model / --graph; ``real``
    builds the model with weights on the CPU, else on the meta device.

    Example:
        >>> a = argparse.Namespace(graph=None, model="tiny", default_model="small", seq_len=8,
        ...                        batch=1, granularity="layer")
        >>> g, model, x = capture_graph(a)
        >>> g.granularity, "layers.0" in g, tuple(x[0].shape)
        ('layer', True, (1, 8))
    """
    import graphs

    if getattr(args, "graph", None):
        path = args.graph
        g = load_graph(path)
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


def graph_line(g) -> str:
    """One line about ``g``: name, nodes, granularity, FLOPs and parameter bytes per request.

    Example:
        >>> from graphs.opgraph import OpGraph
        >>> g = OpGraph(granularity="layer", name="toy")
        >>> g.add_node("mm", kind="matmul", flops=2e9, param_bytes=2 ** 20)
        >>> graph_line(g)
        'toy: 1 nodes at layer granularity, 2 GFLOP and 1.00 MiB of parameters per request'
    """
    from ..tables import format_value

    return (f"{g.name or 'graph'}: {g.number_of_nodes()} nodes at {g.granularity} granularity, "
            f"{format_value('flops', g.total('flops'))} and "
            f"{format_value('param_bytes', g.total('param_bytes'))} of parameters per request")


def indent(lines: Sequence[str], prefix: str = "  ") -> list[str]:
    """Every line of ``lines`` (each may hold several) with ``prefix``; blank lines stay blank.

    Example:
        >>> indent(["a\\nb", ""], "> ")
        ['> a', '> b', '']
    """
    return [prefix + ln if ln else "" for text in lines for ln in text.split("\n")]


def plan_tables(plan, graph, cluster, *, nodes: bool = False, title: str = "",
                measure: str = "latency", unit: str = "request") -> list[str]:
    """The plan as text: a headline (``measure``: the makespan; period, energy per ``unit``),
    the partitions table (a captured graph only), the devices table (busy time and peak
    memory of one ``unit``) and, with ``nodes``, one row per node. Nodes are named by
    :func:`scheduler.tables.node_label`; a table showing ``(model-level ops)`` is followed
    by :data:`scheduler.tables.ROOT_NOTE`.

    Example:
        >>> import networkx as nx
        >>> from executors.devices import Cluster, DeviceSpec
        >>> from policies.plan import Plan
        >>> g = nx.DiGraph(); g.add_node("a", kind="matmul", flops=10)
        >>> p = Plan({"a": "x"}, {"x": ("a",)}, {"a": 0.0}, {"a": 0.002}, 0.002,
        ...          memory={"x": 4096}, policy="manual")
        >>> c = Cluster.from_specs([DeviceSpec("x", "cpu", {"float32": 1e9}, 1e9, 2 ** 30)])
        >>> print("\\n".join(plan_tables(p, g, c)))
        plan by manual (objective latency): predicted latency 2.000 ms
        <BLANKLINE>
        devices (predicted busy time and peak memory of one request):
        device  kind  nodes  busy      utilisation  memory    capacity
        ------  ----  -----  --------  -----------  --------  --------
        x       cpu   1      2.000 ms  100.0%       4.00 KiB  1.00 GiB
    """
    from ..tables import device_rows, format_table, format_value, node_rows, partition_rows

    from ..tables import ROOT_LABEL, ROOT_NOTE, node_label

    lines = []
    head = title or f"plan by {plan.policy} (objective {plan.objective})"
    per = "" if plan.period is None else (
        f", period {fmt_s(plan.period)} (throughput {1 / plan.period:.4g} {unit}s/s)")
    energy = "" if plan.energy is None else \
        f", energy {format_value('energy_j', plan.energy)} per {unit}"
    lines.append(f"{head}: predicted {measure} {fmt_s(plan.makespan)}{per}{energy}")
    shown = []
    if graph.graph.get("module") is not None:
        from graphs.partition import partition

        pm = partition(graph, plan.assignment)
        pred = pm.predicted(graph, cost_model(cluster))
        rows = partition_rows(pm, pred, graph)
        shown += [r["nodes"] for r in rows]
        lines += ["", "partitions (one fx submodule each; predicted time on its device):",
                  format_table(rows, ["partition", "device", "nodes", "flops", "param_bytes",
                                      "out_bytes", "predicted_s"])]
    lines += ["", f"devices (predicted busy time and peak memory of one {unit}):",
              format_table(device_rows(plan, cluster),
                           ["device", "kind", "nodes", "busy_s", "utilisation", "memory_bytes",
                            "capacity_bytes"])]
    if nodes:
        rows = [{**r, "node": node_label(graph, r["node"])} for r in node_rows(plan, graph)]
        shown += [r["node"] for r in rows]
        lines += ["", "nodes:", format_table(rows)]
    if any(ROOT_LABEL[:-1] in s for s in shown):
        lines += ["", ROOT_NOTE]
    return lines


def power_text(devices: Sequence[str], cm: Any, which: str = "idle", *, each: bool = True) -> str:
    """The ``which`` power (``"idle"`` or ``"active"``) of ``devices`` under the cost model
    ``cm``: their sum and, with ``each``, every device's (``"unknown"`` when the model
    knows no power for one of them).

    Example:
        >>> class CM:
        ...     def power(self, d):
        ...         return {"a": (10.0, 3.0), "b": (25.0, 5.0)}.get(d)
        >>> power_text(["a", "b"], CM()), power_text(["a", "b"], CM(), "active", each=False)
        ('8 W (a 3 W, b 5 W)', '35 W')
        >>> power_text(["a", "c"], CM())
        'unknown'
    """
    k = {"active": 0, "idle": 1}[which]
    watts = {}
    for d in devices:
        p = cm.power(d)
        if p is None:
            return "unknown"
        watts[d] = float(p[k])
    total = f"{sum(watts.values()):g} W"
    return total if not each else f"{total} (" + ", ".join(f"{d} {w:g} W" for d, w in watts.items()) + ")"


def energy_note(plan, cm, unit: str = "request") -> list[str]:
    """Two lines saying what ``plan.energy`` counts: active power while busy plus idle power
    over the rest of the makespan of one ``unit`` alone, on the devices the plan uses; and
    the idle power that is.

    Example:
        >>> from policies.plan import Plan
        >>> class CM:
        ...     def power(self, d):
        ...         return (10.0, 3.0)
        >>> p = Plan({"a": "x"}, {"x": ("a",)}, {"a": 0.0}, {"a": 0.002}, 0.003, energy=0.023)
        >>> print("\\n".join(energy_note(p, CM())))
        energy 23.000 mJ per request: active power while busy + idle power over the rest of the 3.000 ms makespan, one request alone
          (on the devices it uses, idle power 3 W (x 3 W); transfers cost no energy)
    """
    from ..tables import format_value

    return [f"energy {format_value('energy_j', plan.energy)} per {unit}: active power while busy + "
            f"idle power over the rest of the {fmt_s(plan.makespan)} makespan, one {unit} alone",
            f"  (on the devices it uses, idle power {power_text(plan.devices_used, cm)}; transfers "
            "cost no energy)"]


_COST_MODELS: dict[int, Any] = {}


def cost_model(cluster):
    """The roofline cost model of ``cluster`` (the last one is cached, so tables reuse it).

    Example:
        >>> c = make_cluster(["sim:edge-cpu-a76"])
        >>> cost_model(c) is cost_model(c), type(cost_model(c)).__name__
        (True, 'RooflineCostModel')
    """
    from policies.roofline import RooflineCostModel

    key = id(cluster)
    if key not in _COST_MODELS:
        _COST_MODELS.clear()
        _COST_MODELS[key] = (cluster, RooflineCostModel(cluster))
    return _COST_MODELS[key][1]


def simulate_module():
    """``scheduler.simulate`` the module (the package re-exports a function of that name).

    Example:
        >>> simulate_module().__name__
        'scheduler.simulate'
    """
    import importlib

    return importlib.import_module("scheduler.simulate")


def fmt_s(v: float) -> str:
    """Seconds as the tables print them (``1.311 ms``).

    Example:
        >>> fmt_s(0.0013), fmt_s(2.5), fmt_s(4e-6)
        ('1.300 ms', '2.500 s', '4.00 us')
    """
    from ..tables import format_value

    return format_value("t_s", v)


def capture_and_place(args: argparse.Namespace, *, real: bool = False):
    """Capture (or load) the graph of ``args`` and place it: ``(graph, cluster, plan, model,
    inputs)``; ``real`` builds the model with weights on the CPU, not on the meta device.

    Example:
        >>> from scheduler.cli import build_parser
        >>> g, c, plan, model, x = capture_and_place(build_parser().parse_args(["place", "--model", "tiny"]))
        >>> plan.policy, set(plan.assignment) == set(g), set(plan.devices_used) <= set(c.names)
        ('heft', True, True)
    """
    devices = parse_devices(args.devices)
    cluster = make_cluster(devices, getattr(args, "mem_limit", ()))
    policy = make_policy(args.policy, args.objective, args.option)
    with ticker("capturing the model"):
        graph, model, x = capture_graph(args, real=real)
    plan = policy.place(graph, cluster, cost_model(cluster))
    return graph, cluster, plan, model, x

