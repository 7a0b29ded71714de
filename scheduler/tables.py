"""Results as plain dicts and table rows, for notebooks, JSON and the command line.

Every function here turns one of the project's result objects into plain Python data:

* :func:`to_dict` — a :class:`~policies.plan.Plan`, a :class:`~scheduler.stats.RuntimeStats`,
  a :class:`~scheduler.simulate.SimResult` / :class:`~scheduler.simulate.StreamResult`
  (any dataclass) as a dict of plain values;
* row builders — lists of flat dicts, one per node, device, partition or policy:
  :func:`node_rows`, :func:`device_rows`, :func:`partition_rows`, :func:`compare_rows`,
  :func:`stats_rows`, :func:`sim_rows`;
* :func:`to_frame` — rows as a ``pandas.DataFrame`` where pandas is installed (it is not a
  dependency of this project; without it a clear :class:`MissingDependencyError` says so);
* :func:`format_table` — rows as an aligned text table, the way the CLI prints them.

Units. A row's keys carry the unit of their raw SI number as a suffix (``_s`` seconds,
``_bytes`` bytes, ``_j`` joules, ``_per_s`` a rate per second; ``utilisation`` columns
are fractions), so rows written as JSON stay machine-readable (``"busy_s": 0.002``).
:func:`format_table` writes each value with its unit (``2.000 ms``, ``1.00 MiB``,
``35.798 mJ``, ``50.0%``) and so names the column by its quantity alone
(:func:`column_header`: ``busy``, ``memory``, ``energy``): a unit is never written twice.
Bytes are formatted by :func:`graphs.units.format_bytes`, the helper the memory errors of
:mod:`policies` use too.

Node names. :func:`node_label` names a node for people: ``(root)``, the ops of the
model's own ``forward`` outside any submodule, becomes ``(model-level ops)``
(:data:`ROOT_NOTE` explains it); an exit segment says which stages it holds.

Example:
    >>> from policies.plan import Plan
    >>> p = Plan({"a": "npu", "b": "cpu"}, {"npu": ("a",), "cpu": ("b",)},
    ...          {"a": 0.0, "b": 0.002}, {"a": 0.002, "b": 0.003}, 0.003,
    ...          memory={"npu": 2 ** 20, "cpu": 0.0}, policy="manual")
    >>> [(r["device"], r["nodes"], r["busy_s"]) for r in device_rows(p)]
    [('npu', 1, 0.002), ('cpu', 1, 0.001)]
    >>> print(format_table(device_rows(p), ["device", "busy_s", "memory_bytes"]))
    device  busy      memory
    ------  --------  --------
    npu     2.000 ms  1.00 MiB
    cpu     1.000 ms  0 B
"""
from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Any, Hashable, Iterable, Mapping, Sequence

from graphs.coarsen import ROOT_GROUP
from graphs.units import format_bytes

from .errors import MissingDependencyError, SchedulerError

__all__ = ["to_dict", "node_rows", "device_rows", "partition_rows", "compare_rows", "stats_rows",
           "sim_rows", "to_frame", "format_table", "format_value", "column_header", "node_label",
           "nodes_label", "ROOT_LABEL", "ROOT_NOTE", "MissingDependencyError"]

#: How tables and charts name the ``(root)`` group of a captured graph.
ROOT_LABEL = "(model-level ops)"
#: One line saying what :data:`ROOT_LABEL` is, for a caption or a footnote.
ROOT_NOTE = (f"{ROOT_LABEL} = the ops of the model's own forward(), outside any submodule "
             "(for the decoders: the rotary position tables)")


# ------------------------------------------------------------------------- plain dicts
def _plain(v: Any) -> Any:
    if isinstance(v, (Mapping, MappingProxyType)):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # NamedTuple (Transfer)
        return {f: _plain(getattr(v, f)) for f in v._fields}
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(x) for x in v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_dict(v)
    return v


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of a result object: read-only mappings become dicts, nested dataclasses
    and named tuples become dicts, keys keep their type (so node keys stay ints or tuples).

    A :class:`~policies.plan.Plan` gives :meth:`Plan.to_dict` (JSON-safe, with node keys as
    ``[key, value]`` pairs); :class:`~scheduler.stats.RuntimeStats` gives its ``as_dict``;
    any other dataclass its fields.

    Raises:
        SchedulerError: ``obj`` is not a dataclass instance (names its type).

    Example:
        >>> from scheduler.stats import StatsRecorder, RequestRecord
        >>> rec = StatsRecorder()
        >>> rec.add_request(RequestRecord(0, submitted=0.0, finished=0.25, status="completed"))
        >>> d = to_dict(rec.summary())
        >>> d["completed"], d["latency_p50"], type(d["busy_wall"]).__name__
        (1, 0.25, 'dict')
    """
    from policies.plan import Plan

    if isinstance(obj, Plan):
        return obj.to_dict()
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise SchedulerError(
            f"to_dict needs a result object (Plan, RuntimeStats, SimResult, StreamResult or "
            f"another dataclass instance), got {type(obj).__name__}")
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


# ------------------------------------------------------------------------------ rows
def node_rows(plan: Any, graph: Any = None) -> list[dict[str, Any]]:
    """One row per placed node, in predicted start order: ``node``, ``device``,
    ``start_s``, ``finish_s``, ``time_s``; with ``graph`` also ``kind``, ``flops`` and
    ``memory_bytes`` (parameters plus output, as the cost models count it).

    Example:
        >>> from policies.plan import Plan
        >>> p = Plan({"a": "x"}, {"x": ("a",)}, {"a": 0.5}, {"a": 1.5}, 1.5)
        >>> node_rows(p)
        [{'node': 'a', 'device': 'x', 'start_s': 0.5, 'finish_s': 1.5, 'time_s': 1.0}]
    """
    rows = []
    nodes = sorted(plan.assignment, key=lambda n: (plan.start.get(n, 0.0), plan.finish.get(n, 0.0)))
    for n in nodes:
        s, f = float(plan.start.get(n, 0.0)), float(plan.finish.get(n, 0.0))
        row: dict[str, Any] = {"node": n, "device": plan.assignment[n], "start_s": s,
                               "finish_s": f, "time_s": f - s}
        if graph is not None and n in graph:
            a = graph.nodes[n]
            row["kind"] = a.get("kind", "")
            row["flops"] = int(a.get("flops", 0) or 0)
            row["memory_bytes"] = int(a.get("param_bytes", 0) or 0) + int(a.get("bytes_out", 0) or 0)
        rows.append(row)
    return rows


def device_rows(plan: Any, cluster: Any = None) -> list[dict[str, Any]]:
    """One row per device of the plan (and of ``cluster``, when given, with 0 for unused
    ones): ``device``, ``nodes`` (count), ``busy_s`` (sum of predicted node times),
    ``utilisation`` (busy / makespan), ``memory_bytes`` (the plan's peak), and with a
    cluster of specs ``capacity_bytes`` and ``kind``.

    Example:
        >>> from policies.plan import Plan
        >>> p = Plan({"a": "x", "b": "x"}, {"x": ("a", "b")}, {"a": 0, "b": 1}, {"a": 1, "b": 2}, 2.0)
        >>> device_rows(p)[0]["utilisation"]
        1.0
    """
    names = list(dict.fromkeys([*plan.order, *(cluster.names if cluster is not None else ())]))
    rows = []
    for d in names:
        ns = plan.order.get(d, ())
        busy = float(sum(plan.finish[n] - plan.start[n] for n in ns))
        row: dict[str, Any] = {"device": d, "nodes": len(ns), "busy_s": busy,
                               "utilisation": busy / plan.makespan if plan.makespan > 0 else 0.0,
                               "memory_bytes": float(plan.memory.get(d, 0.0))}
        if cluster is not None and d in cluster:
            spec = cluster.spec(d)
            if spec is not None:
                row["kind"] = spec.kind
                row["capacity_bytes"] = float(spec.mem_capacity)
        rows.append(row)
    return rows


def node_label(graph: Any, node: Hashable) -> str:
    """The name of ``node`` as tables and charts print it (its key stays the node's id).

    * ``(root)`` (the group of ops the model's own ``forward`` runs outside any submodule,
      :data:`graphs.coarsen.ROOT_GROUP`) is :data:`ROOT_LABEL`, ``(model-level ops)``; a
      split part ``(root)#1`` is ``(model-level ops #1)``;
    * an exit segment of a gated model (a node with ``exit_depth``, named ``exit@<depth>``)
      says what it holds: ``exit@2 (stages.0-1 + exit head + gate)``, its stage range
      starting after the previous segment's depth (0-based, as the stages' module names);
    * a coarse node whose ops all come from one deeper module than its name says (a
      wrapper's ``model`` holding only ``model.head``) is named by that module;
    * any other node by its own name. ``graph`` may be None (names only).

    Example:
        >>> import networkx as nx
        >>> g = nx.DiGraph([("exit@1", "exit@3"), ("exit@3", "model")])
        >>> g.nodes["exit@1"]["exit_depth"], g.nodes["exit@3"]["exit_depth"] = 1, 3
        >>> g.nodes["model"].update(op="group", module="model.head")
        >>> for n in ("exit@1", "exit@3", "model", "(root)", "(root)#1"):
        ...     print(node_label(g, n))
        exit@1 (stages.0 + exit head + gate)
        exit@3 (stages.1-2 + exit head + gate)
        model.head
        (model-level ops)
        (model-level ops #1)
        >>> node_label(None, "layers.0")
        'layers.0'
    """
    name = str(node)
    if name == ROOT_GROUP:
        return ROOT_LABEL
    if name.startswith(ROOT_GROUP + "#"):
        return f"{ROOT_LABEL[:-1]} #{name[len(ROOT_GROUP) + 1:]})"
    a = graph.nodes[node] if graph is not None and node in graph else {}
    depth = a.get("exit_depth")
    if isinstance(depth, int) and not isinstance(depth, bool):
        lo = max((int(graph.nodes[p].get("exit_depth", 0) or 0) for p in graph.predecessors(node)),
                 default=0)
        stages = f"stages.{lo}" if depth - lo <= 1 else f"stages.{lo}-{depth - 1}"
        return f"{name} ({stages} + exit head + gate)"
    module = a.get("module")
    if a.get("op") == "group" and isinstance(module, str) and module.startswith(name + "."):
        return module
    return name


def nodes_label(nodes: Sequence[Hashable], graph: Any = None, limit: int = 3) -> str:
    """The nodes of a partition in one short cell: their :func:`node_label` names, the
    middle ones elided past ``limit`` (the count in parentheses).

    Example:
        >>> nodes_label(["(root)", "embed_tokens"])
        '(model-level ops), embed_tokens'
        >>> nodes_label([f"layers.{k}" for k in range(6)])
        'layers.0, layers.1, ... layers.5 (6)'
    """
    names = [node_label(graph, n) for n in nodes]
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit - 1])}, ... {names[-1]} ({len(names)})"


def _short(nodes: Sequence[Hashable], limit: int = 3) -> str:
    names = [str(n) for n in nodes]
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit - 1])}, ... {names[-1]} ({len(names)})"


def partition_rows(partitioned: Any, predicted: Mapping[int, float] | Sequence[float] | None = None,
                   graph: Any = None) -> list[dict[str, Any]]:
    """One row per partition of a :class:`~graphs.partition.PartitionedModel`: ``partition``,
    ``device``, ``nodes`` (the op-graph nodes it covers, shortened), ``flops``,
    ``param_bytes``, ``in_bytes``, ``out_bytes``, and ``predicted_s`` when ``predicted``
    (partition id -> seconds, as ``Runtime.predicted``) is given.

    ``nodes`` holds the node ids as they are (JSON output keeps them); with ``graph``
    (the graph the partitions come from) they are named for people instead, by
    :func:`nodes_label`.

    Example:
        >>> import types
        >>> part = types.SimpleNamespace(id=0, device="npu", nodes=("(root)", "layers.0"),
        ...                              flops=10, param_bytes=4, bytes_in=8, bytes_out=8)
        >>> pm = types.SimpleNamespace(parts=(part,))
        >>> partition_rows(pm, {0: 0.001})[0]["nodes"], partition_rows(pm, {0: 0.001})[0]["predicted_s"]
        ('(root), layers.0', 0.001)
        >>> import networkx as nx
        >>> partition_rows(pm, graph=nx.DiGraph())[0]["nodes"]
        '(model-level ops), layers.0'
    """
    rows = []
    for p in partitioned.parts:
        nodes = _short(p.nodes) if graph is None else nodes_label(p.nodes, graph)
        row: dict[str, Any] = {"partition": p.id, "device": p.device, "nodes": nodes,
                               "flops": int(p.flops), "param_bytes": int(p.param_bytes),
                               "in_bytes": int(p.bytes_in), "out_bytes": int(p.bytes_out)}
        if predicted is not None:
            row["predicted_s"] = float(predicted[p.id])
        rows.append(row)
    return rows


def compare_rows(plans: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per plan (label -> Plan), for comparing policies: ``policy``, ``makespan_s``,
    ``period_s`` (None when the policy did not compute one), ``energy_j``, ``devices``
    (used, in order), ``decide_s``.

    Example:
        >>> from policies.plan import Plan
        >>> p = Plan({"a": "x"}, {"x": ("a",)}, {"a": 0}, {"a": 2.0}, 2.0, energy=3.0, policy="heft")
        >>> compare_rows({"heft": p})[0]["energy_j"]
        3.0
    """
    rows = []
    for label, p in plans.items():
        rows.append({"policy": label, "makespan_s": float(p.makespan),
                     "period_s": None if p.period is None else float(p.period),
                     "energy_j": None if p.energy is None else float(p.energy),
                     "devices": ", ".join(p.devices_used), "decide_s": float(p.decide_time)})
    return rows


def stats_rows(stats: Any) -> list[dict[str, Any]]:
    """Per-device rows of a :class:`~scheduler.stats.RuntimeStats`: ``device``,
    ``busy_wall_s``, ``utilisation_wall``, ``busy_simulated_s`` and ``utilisation_simulated``
    (None where not measured).

    Example:
        >>> from scheduler.stats import StatsRecorder
        >>> stats_rows(StatsRecorder().summary())
        []
    """
    devs = list(dict.fromkeys([*stats.busy_wall, *stats.busy_simulated]))
    return [{"device": d, "busy_wall_s": stats.busy_wall.get(d),
             "utilisation_wall": stats.utilisation_wall.get(d),
             "busy_simulated_s": stats.busy_simulated.get(d),
             "utilisation_simulated": stats.utilisation_simulated.get(d)} for d in devs]


def sim_rows(result: Any) -> list[dict[str, Any]]:
    """Per-device rows of a :class:`~scheduler.simulate.SimResult` or ``StreamResult``:
    ``device``, ``busy_s``, ``utilisation``, ``memory_bytes`` (peak).

    Example:
        >>> from scheduler.simulate import simulate, _ExampleGraph, _ExamplePlan, _ExampleCost
        >>> sim_rows(simulate(_ExampleGraph, _ExamplePlan, _ExampleCost))[0]["utilisation"]
        1.0
    """
    devs = list(dict.fromkeys([*result.busy, *result.memory]))
    return [{"device": d, "busy_s": float(result.busy.get(d, 0.0)),
             "utilisation": float(result.utilisation.get(d, 0.0)),
             "memory_bytes": float(result.memory.get(d, 0.0))} for d in devs]


# --------------------------------------------------------------------------- pandas
def to_frame(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Any:
    """Rows as a ``pandas.DataFrame`` (columns in first-seen order unless given).

    pandas is optional: it is not installed with this project.

    Raises:
        MissingDependencyError: pandas is not installed (says how to install it).

    Example:
        >>> to_frame([{"a": 1}]).shape  # doctest: +SKIP
        (1, 1)
    """
    try:
        import pandas as pd
    except ImportError as e:
        raise MissingDependencyError(
            "to_frame needs pandas, which is not installed (it is optional): run "
            "`pip install pandas`, or use the rows (plain dicts) directly") from e
    rows = [dict(r) for r in rows]
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    return pd.DataFrame(rows, columns=list(columns))


# ---------------------------------------------------------------------- text tables
#: Headers of columns whose quantity the generic rule of :func:`column_header` would name
#: too tersely.
HEADERS = {"param_bytes": "params", "in_bytes": "input", "out_bytes": "output",
           "kv_bytes": "kv_cache"}
#: Unit suffixes of column names, longest first: :func:`format_value` writes the unit
#: into each cell, so :func:`column_header` leaves it out of the header.
UNIT_SUFFIXES = ("_per_s", "_bytes", "_s", "_j")


def column_header(column: str) -> str:
    """The header :func:`format_table` prints for ``column``: the quantity alone when
    :func:`format_value` writes the unit into each cell (``busy_s`` -> ``busy``,
    ``memory_bytes`` -> ``memory``, ``energy_j`` -> ``energy``, ``tokens_per_s`` ->
    ``tokens``), a few byte columns by name (:data:`HEADERS`), any other column as it is.

    Example:
        >>> [column_header(c) for c in ("predicted_s", "energy_j", "memory_bytes", "param_bytes",
        ...                             "throughput_per_s", "utilisation", "flops", "device")]
        ['predicted', 'energy', 'memory', 'params', 'throughput', 'utilisation', 'flops', 'device']
    """
    if column in HEADERS:
        return HEADERS[column]
    for suffix in UNIT_SUFFIXES:
        if column.endswith(suffix) and len(column) > len(suffix):
            return column[:-len(suffix)]
    return column


def format_value(column: str, v: Any) -> str:
    """Text of value ``v`` of column ``column``, by the column's unit suffix.

    Example:
        >>> format_value("time_s", 0.00123), format_value("memory_bytes", 3 * 2 ** 30)
        ('1.230 ms', '3.00 GiB')
        >>> format_value("utilisation", 0.5), format_value("flops", 2.5e9), format_value("x", None)
        ('50.0%', '2.5 GFLOP', '-')
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if column.endswith("_per_s"):
        return f"{v:.4g}/s"
    if column.endswith("_s"):
        a = abs(v)
        if a == 0:
            return "0 s"
        if a >= 1:
            return f"{v:.3f} s"
        if a >= 1e-3:
            return f"{v * 1e3:.3f} ms"
        return f"{v * 1e6:.2f} us"
    if column.endswith("_bytes"):
        return format_bytes(v)
    if column.startswith("utilisation") or column.endswith("_rate"):
        return f"{100 * v:.1f}%"
    if column == "flops" or column.endswith("_flops"):
        for div, unit in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
            if abs(v) >= div:
                return f"{v / div:.3g} {unit}"
        return f"{v:g} FLOP"
    if column.endswith("_j"):
        return f"{v * 1e3:.3f} mJ" if abs(v) < 1 else f"{v:.3f} J"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as an aligned text table with a header line; values formatted by
    :func:`format_value`, each with its unit, and headed by :func:`column_header` (the
    quantity, without the unit suffix of the row key). Columns default to every key, in
    first-seen order.

    Raises:
        SchedulerError: a requested column is in no row (names it and the ones present).

    Example:
        >>> print(format_table([{"device": "npu", "time_s": 0.5}, {"device": "cpu", "time_s": 2.0}]))
        device  time
        ------  ----------
        npu     500.000 ms
        cpu     2.000 s
    """
    rows = [dict(r) for r in rows]
    present = list(dict.fromkeys(k for r in rows for k in r))
    if columns is None:
        columns = present
    else:
        missing = [c for c in columns if c not in present]
        if missing and rows:
            raise SchedulerError(f"column(s) {', '.join(map(repr, missing))} are in no row; "
                                 f"columns present: {', '.join(present)}")
    cells = [[format_value(c, r.get(c)) for c in columns] for r in rows]
    heads = [column_header(c) for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
