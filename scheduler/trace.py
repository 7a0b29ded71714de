"""Trace events, Chrome trace / Perfetto JSON, and Gantt charts.

A :class:`TraceEvent` is one interval on one row: a node running on a device, or an
edge's data moving over a link (row ``"src->dst"``). The simulator's results convert to
events with :func:`events_from_sim`; the runtime records measured events of the same type.
:func:`to_chrome_trace` writes them for ``chrome://tracing`` or https://ui.perfetto.dev,
:func:`gantt` draws them as a PNG.

Every Gantt chart colours an op kind the same way (:data:`KIND_COLOURS`: matmul is always
blue, a transfer always red), and request ``k`` always gets the same colour too, so charts
can be compared side by side. Graph inputs and outputs take no time and are not drawn as
work. A bar carries its name only where the whole name fits inside it (else a shorter
form, else nothing), so no label is cut mid-name or written over another.

Example:
    >>> ev = [TraceEvent("matmul", "gpu0", 0.0, 0.002, request=0),
    ...       TraceEvent("x", "cpu->gpu0", 0.0, 0.001, category="transfer")]
    >>> doc = to_chrome_trace(ev)
    >>> [(e["name"], e["ts"], e["dur"]) for e in doc["traceEvents"] if e["ph"] == "X"]
    [('matmul', 0.0, 2000.0), ('x', 0.0, 1000.0)]
"""
from __future__ import annotations

import json
import math
import numbers
import os
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Hashable, Iterable, Mapping, Sequence

from .errors import TraceError, UnknownNameError

__all__ = ["TraceEvent", "events_from_sim", "to_chrome_trace", "gantt", "TIME_UNITS", "COLOR_BY",
           "KIND_COLOURS", "PLACEHOLDER_KINDS", "label_candidates"]

#: Time units a Gantt chart can label its axis with: name -> units per second.
TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9, "units": 1.0}
#: What a Gantt chart can colour bars by (``"auto"``: by request when there are several).
COLOR_BY = ("auto", "request", "kind", "category", "name")
#: The one colour of each op kind (every kind of :data:`graphs.opgraph.OP_KINDS`), of
#: the event categories and of the generation steps, in every chart; the legend lists
#: kinds in this order. A kind not listed gets a colour picked from its name (stable too).
KIND_COLOURS: Mapping[str, str] = MappingProxyType({
    "matmul": "#1f77b4", "conv": "#17becf", "attention": "#9467bd", "group": "#2ca02c",
    "embedding": "#8c564b", "norm": "#e377c2", "elementwise": "#ff7f0e",
    "activation": "#ffbb78", "reduction": "#bcbd22", "view": "#c5b0d5", "other": "#aec7e8",
    "param": "#dbdb8d", "input": "#c7c7c7", "output": "#7f7f7f",
    "transfer": "#d62728", "compute": "#98df8a", "prefill": "#ff9896", "decode": "#6baed6",
})
#: Legend text of kinds whose name alone says too little.
KIND_LEGEND: Mapping[str, str] = MappingProxyType({"group": "group (several op kinds: a layer)"})
#: Node kinds that do no work (graph inputs and outputs): :func:`gantt` does not draw them.
PLACEHOLDER_KINDS = frozenset({"input", "output"})


@dataclass(frozen=True)
class TraceEvent:
    """One interval of work on one row (a device, or a link ``"src->dst"``).

    Example:
        >>> e = TraceEvent("softmax", "npu0", 1.0, 1.5, request=3, args={"kind": "activation"})
        >>> e.duration, e.args["kind"]
        (0.5, 'activation')
    """

    name: str  # what ran: a node name, "a->b" for a transfer, a partition id ...
    device: str  # row: a device name, or "src->dst" for a link
    start: float  # seconds
    end: float  # seconds, >= start
    request: int | None = None  # request id in a stream; None for a single request
    category: str = "compute"  # "compute", "transfer", or any label the producer chooses
    args: Mapping[str, Any] = field(default_factory=dict, hash=False)  # extras: kind, node, ...

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            object.__setattr__(self, "name", str(self.name))
        if not isinstance(self.device, str) or not self.device:
            raise TraceError(f"trace event {self.name!r}: device must be a non-empty string, got {self.device!r}")
        for f in ("start", "end"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TraceError(f"trace event {self.name!r}: {f} must be a finite number, got {v!r}")
        if self.end < self.start:
            raise TraceError(f"trace event {self.name!r}: end {self.end!r} is before start {self.start!r}")
        if self.request is not None:
            if isinstance(self.request, bool) or not isinstance(self.request, numbers.Integral):
                raise TraceError(f"trace event {self.name!r}: request must be None or an int, got {self.request!r}")
            object.__setattr__(self, "request", int(self.request))
        if not isinstance(self.category, str) or not self.category:
            raise TraceError(f"trace event {self.name!r}: category must be a non-empty string, got {self.category!r}")
        object.__setattr__(self, "args", MappingProxyType(dict(self.args or {})))

    @property
    def duration(self) -> float:
        """``end - start``, seconds.

        Example:
            >>> TraceEvent("a", "cpu", 1.0, 1.5).duration
            0.5
        """
        return self.end - self.start


def events_from_sim(result: Any, graph: Any = None, *, transfers: bool = True) -> list[TraceEvent]:
    """Trace events of a :class:`~scheduler.simulate.SimResult` or
    :class:`~scheduler.simulate.StreamResult`, sorted by start.

    Each node run is a ``"compute"`` event on its device (``args``: ``node``, and ``kind``
    when ``graph`` is given and the node has one); each cross-device edge is a
    ``"transfer"`` event named ``"u->v"`` on row ``"src->dst"`` (unless ``transfers`` is
    False). With ``graph``, events are named by :func:`scheduler.tables.node_label`
    (``(root)`` is ``(model-level ops)``); ``args["node"]`` keeps the node itself.

    Example:
        >>> from scheduler.simulate import SimResult
        >>> r = SimResult({"a": 0.0}, {"a": 2.0}, 2.0, {}, {}, None, {}, {"a": "cpu"})
        >>> events_from_sim(r)
        [TraceEvent(name='a', device='cpu', start=0.0, end=2.0, request=None, category='compute', args=mappingproxy({'node': 'a'}))]
    """
    from .simulate import SimResult, StreamResult

    if not isinstance(result, (SimResult, StreamResult)):
        raise TraceError(f"events_from_sim takes a SimResult or StreamResult, got {type(result).__name__}")
    from .tables import node_label

    stream = isinstance(result, StreamResult)
    kinds: dict[Hashable, str] = {}
    names: dict[Hashable, str] = {}

    def name(node: Hashable) -> str:
        if node not in names:
            names[node] = node_label(graph, node) if graph is not None else str(node)
        return names[node]

    if graph is not None:
        kinds = {n: a["kind"] for n, a in graph.nodes(data=True) if "kind" in a}
    out = []
    for key, s in result.start.items():
        r, node = key if stream else (None, key)
        args: dict[str, Any] = {"node": node}
        if node in kinds:
            args["kind"] = kinds[node]
        out.append(TraceEvent(name(node), result.assignment[node], s, result.finish[key], request=r,
                              category="compute", args=args))
    if transfers:
        for t in result.transfers:
            out.append(TraceEvent(f"{name(t.u)}->{name(t.v)}", f"{t.src}->{t.dst}", t.start, t.end,
                                  request=t.request, category="transfer",
                                  args={"src": t.src, "dst": t.dst}))
    out.sort(key=lambda e: (e.start, e.end, e.device))
    return out


def _rows(events: Sequence[TraceEvent]) -> list[str]:
    """Rows in order of first appearance, devices before links."""
    seen: dict[str, None] = {}
    for e in events:
        seen.setdefault(e.device, None)
    return sorted(seen, key=lambda d: ("->" in d, list(seen).index(d)))


def _lanes(events: Sequence[TraceEvent]) -> list[int]:
    """Lane per event so that events of one row in one lane never overlap (greedy by start)."""
    lane = [0] * len(events)
    free: dict[str, list[float]] = {}
    for k in sorted(range(len(events)), key=lambda k: (events[k].start, events[k].end)):
        e = events[k]
        ends = free.setdefault(e.device, [])
        for li, t in enumerate(ends):
            if t <= e.start:
                ends[li] = e.end
                lane[k] = li
                break
        else:
            ends.append(e.end)
            lane[k] = len(ends) - 1
    return lane


def to_chrome_trace(events: Iterable[TraceEvent], path: str | os.PathLike | None = None, *,
                    time_scale: float = 1e6) -> dict:
    """Chrome trace / Perfetto JSON of ``events``; written to ``path`` when given.

    One process (``pid``) per row, named after the device or link; complete events
    (``ph: "X"``) with ``ts`` and ``dur`` in microseconds (times are multiplied by
    ``time_scale``: 1e6 for seconds, 1 for abstract units to show them as microseconds).
    Overlapping events of one row (concurrent transfers) go to separate threads (``tid``)
    so that the viewer draws them side by side.

    Example:
        >>> doc = to_chrome_trace([TraceEvent("a", "cpu", 0.5, 1.0, request=2)])
        >>> x = [e for e in doc["traceEvents"] if e["ph"] == "X"][0]
        >>> x["pid"], x["tid"], x["ts"], x["dur"], x["args"]["request"]
        (1, 1, 500000.0, 500000.0, 2)
        >>> sorted(e["name"] for e in doc["traceEvents"] if e["ph"] == "M")
        ['process_name', 'process_sort_index', 'thread_name']
    """
    events = _check_events(events)
    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not (
            time_scale > 0 and math.isfinite(time_scale)):
        raise TraceError(f"time_scale must be a finite number > 0, got {time_scale!r}")
    rows = _rows(events)
    pid = {d: k + 1 for k, d in enumerate(rows)}
    lanes = _lanes(events)
    out: list[dict] = []
    for d in rows:
        out.append({"name": "process_name", "ph": "M", "pid": pid[d], "tid": 0, "args": {"name": d}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid[d], "tid": 0,
                    "args": {"sort_index": pid[d]}})
    named: set[tuple[str, int]] = set()
    for e, lane in zip(events, lanes):
        if (e.device, lane) not in named:
            named.add((e.device, lane))
            out.append({"name": "thread_name", "ph": "M", "pid": pid[e.device], "tid": lane + 1,
                        "args": {"name": e.device if lane == 0 else f"{e.device} #{lane + 1}"}})
    for e, lane in zip(events, lanes):
        args = {k: _json_safe(v) for k, v in e.args.items()}
        if e.request is not None:
            args["request"] = e.request
        out.append({"name": e.name, "cat": e.category, "ph": "X", "pid": pid[e.device], "tid": lane + 1,
                    "ts": e.start * time_scale, "dur": e.duration * time_scale, "args": args})
    doc = {"traceEvents": out, "displayTimeUnit": "ms"}
    if path is not None:
        with open(path, "w") as f:
            json.dump(doc, f)
    return doc


def label_candidates(name: str) -> list[str]:
    """The texts a Gantt bar may carry for an event named ``name``, longest first: the
    name; without a parenthesised note (``exit@2 (stages.0-1 + ...)`` -> ``exit@2``);
    dotted module paths cut to their last two parts (``model.stages.2`` -> ``stages.2``,
    ``layers.3.mlp`` -> ``3.mlp``); ``(model-level ops)`` as ``model-level``; the last word
    of a name of several (``decode b=2`` -> ``b=2``); for a transfer ``u->v`` also ``->v``. :func:`gantt` writes the first that fits inside the bar, or none.

    Example:
        >>> label_candidates("embed_tokens->layers.0")
        ['embed_tokens->layers.0', '->layers.0']
        >>> label_candidates("model.stages.2")
        ['model.stages.2', 'stages.2']
        >>> label_candidates("exit@2 (stages.0-1 + exit head + gate)")
        ['exit@2 (stages.0-1 + exit head + gate)', 'exit@2']
        >>> label_candidates("decode b=2")
        ['decode b=2', 'b=2']
        >>> label_candidates("(model-level ops)"), label_candidates("(model-level ops #1)")[1]
        (['(model-level ops)', 'model-level'], 'model-level #1')
    """
    from .tables import ROOT_LABEL

    def short(x: str) -> str:
        if x.startswith(ROOT_LABEL[:-1]):
            return "model-level" + x[len(ROOT_LABEL) - 1:-1]  # "(model-level ops #1)" -> "model-level #1"
        head = x.split(" (", 1)[0]
        parts = head.split(".")
        return ".".join(parts[-2:])

    out = [name]
    if "->" in name and not name.startswith("->"):
        u, _, v = name.partition("->")
        out += [f"{short(u)}->{short(v)}", f"->{short(v)}"]
    else:
        out.append(short(name))
        words = name.split()
        if len(words) > 1 and "(" not in name:  # "decode b=2" -> "b=2": the legend names the kind
            out.append(words[-1])
    return list(dict.fromkeys(out))


def _palette(name: str) -> list:
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return [cmap(i) for i in range(cmap.N)]


def _hashed_colour(key: str) -> Any:
    """A colour picked from ``key``'s text: the same in every chart and process."""
    pal = _palette("tab20b")
    return pal[zlib.crc32(key.encode()) % len(pal)]


def gantt(events: Iterable[TraceEvent], path: str | os.PathLike, *, title: str = "", time_unit: str = "s",
          color_by: str = "auto", max_legend: int = 12, label_limit: int = 60, caption: str = "") -> int:
    """Draw ``events`` as a Gantt chart (one row per device or link) into the PNG ``path``.

    Bars are coloured by request, node kind (``args["kind"]``, else the category),
    category or name (``color_by``; ``"auto"`` picks request when there are several, else
    kind). Colours are fixed: a kind or category always has its :data:`KIND_COLOURS`
    colour, request ``k`` always the ``k``-th of matplotlib's ``tab20``, so two charts
    agree; names get colours in order of first appearance. The legend lists at most
    ``max_legend`` colours.

    Events of graph inputs and outputs (``args["kind"]`` in :data:`PLACEHOLDER_KINDS`)
    take no time and are not drawn (unless they are all there is). With at most
    ``label_limit`` events, a bar carries the longest of :func:`label_candidates` of its
    event's name that fits inside it, else beside it (in the free space up to the next bar
    of its lane), or nothing: no label is cut or overlaps another.
    ``caption`` (a line or a few) goes under the time axis; a chart that shows
    ``(model-level ops)`` says there what they are. Uses matplotlib's Agg canvas without
    touching pyplot's global state.

    Returns:
        The number of bars drawn (one per event drawn), counted from the figure.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "g.png")
        >>> gantt([TraceEvent("a", "cpu", 0, 1e-3), TraceEvent("b", "gpu", 1e-3, 3e-3)], p, time_unit="ms")
        2
        >>> open(p, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    events = _check_events(events)
    if time_unit not in TIME_UNITS:
        raise UnknownNameError("time unit", time_unit, TIME_UNITS)
    if color_by not in COLOR_BY:
        raise UnknownNameError("gantt colouring", color_by, COLOR_BY)
    if not events:
        raise TraceError("no events to draw; a Gantt chart needs at least one event")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .tables import ROOT_LABEL, ROOT_NOTE

    work = [e for e in events if e.args.get("kind") not in PLACEHOLDER_KINDS]
    events = work or events
    scale = TIME_UNITS[time_unit]
    if color_by == "auto":
        color_by = "request" if len({e.request for e in events}) > 1 else "kind"

    def key(e: TraceEvent) -> str:
        if color_by == "request":
            return "-" if e.request is None else f"request {e.request}"
        if color_by == "kind":
            return str(e.args.get("kind", e.category))
        if color_by == "category":
            return e.category
        return e.name

    keys = list(dict.fromkeys(key(e) for e in events))
    tab20 = _palette("tab20")
    if color_by == "request":
        req = {key(e): e.request for e in events}
        keys.sort(key=lambda k: (req[k] is None, req[k] or 0))
        colour = {k: ("#7f7f7f" if req[k] is None else tab20[req[k] % len(tab20)]) for k in keys}
    elif color_by in ("kind", "category"):
        rank = {k: i for i, k in enumerate(KIND_COLOURS)}
        keys.sort(key=lambda k: (rank.get(k, len(rank)), k))
        colour = {k: KIND_COLOURS[k] if k in KIND_COLOURS else _hashed_colour(k) for k in keys}
    else:
        colour = {k: tab20[i % len(tab20)] for i, k in enumerate(keys)}
    rows = _rows(events)
    lanes = _lanes(events)
    nlanes = {d: 1 for d in rows}
    for e, lane in zip(events, lanes):
        nlanes[e.device] = max(nlanes[e.device], lane + 1)

    fig = Figure(figsize=(10, 1.2 + 0.5 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    groups: dict[tuple[int, int, str], list[tuple[float, float]]] = {}
    for e, lane in zip(events, lanes):
        groups.setdefault((rows.index(e.device), lane, key(e)), []).append((e.start * scale, e.duration * scale))
    for (row, lane, k), spans in groups.items():
        h = 0.8 / nlanes[rows[row]]
        y = len(rows) - 1 - row - 0.4 + lane * h
        ax.broken_barh(spans, (y, h), facecolors=colour[k], edgecolors="black", linewidth=0.3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(reversed(rows)))
    ax.set_ylim(-0.6, len(rows) - 0.4)
    notes = [ROOT_NOTE] if any(ROOT_LABEL[:-1] in e.name for e in events) else []
    notes += [caption] if caption else []
    ax.set_xlabel("\n".join([f"time ({time_unit})", *notes]))
    ax.set_ylabel("device / link")
    ax.grid(axis="x", linestyle=":", linewidth=0.5)
    if title:
        ax.set_title(title)
    handles = [Patch(facecolor=colour[k], edgecolor="black", label=KIND_LEGEND.get(k, k))
               for k in keys[:max_legend]]
    if len(keys) > max_legend:
        handles.append(Patch(facecolor="white", edgecolor="white", label=f"... +{len(keys) - max_legend} more"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    if len(events) <= label_limit:  # few bars: write names where they fit (the layout is final)
        _label_bars(fig, ax, events, lanes, rows, nlanes, scale)
    fig.savefig(os.fspath(path), format="png")
    return sum(len(c.get_paths()) for c in ax.collections)


def _label_bars(fig: Any, ax: Any, events: Sequence[TraceEvent], lanes: Sequence[int], rows: list[str],
                nlanes: Mapping[str, int], scale: float, pad: float = 3.0) -> int:
    """Write on each bar the longest :func:`label_candidates` text that fits inside it
    (``pad`` pixels spare on each side), else one that fits in the free space just right
    of it (up to the next bar of its lane, or the axes' edge), measured with the figure's
    renderer; returns how many bars got a label."""
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    right_edge = ax.get_window_extent(renderer).x1
    nxt: dict[int, float] = {}  # event index -> start of the next event in its lane
    by_lane: dict[tuple[str, int], list[int]] = {}
    for k, (e, lane) in enumerate(zip(events, lanes)):
        by_lane.setdefault((e.device, lane), []).append(k)
    for ks in by_lane.values():
        ks.sort(key=lambda k: (events[k].start, events[k].end))
        for a, b in zip(ks, ks[1:]):
            nxt[a] = events[b].start

    def fits(text: str, x: float, y: float, ha: str, room_w: float, room_h: float) -> bool:
        t = ax.text(x, y, text, ha=ha, va="center", fontsize="x-small", clip_on=True)
        bb = t.get_window_extent(renderer)
        if bb.width <= room_w and bb.height <= room_h:
            return True
        t.remove()
        return False

    done = 0
    for k, (e, lane) in enumerate(zip(events, lanes)):
        h = 0.8 / nlanes[e.device]
        y0 = len(rows) - 1 - rows.index(e.device) - 0.4 + lane * h
        (x0, py0), (x1, py1) = to_px((e.start * scale, y0)), to_px((e.end * scale, y0 + h))
        room_h = abs(py1 - py0)
        cands = label_candidates(e.name)
        inside = x1 - x0 - 2 * pad
        if inside > 0 and any(fits(c, (e.start + e.duration / 2) * scale, y0 + h / 2, "center", inside,
                                   room_h) for c in cands):
            done += 1
            continue
        limit = to_px((nxt[k] * scale, y0))[0] if k in nxt else right_edge
        beside = limit - x1 - 2 * pad
        if beside > 0:
            x_text = ax.transData.inverted().transform((x1 + pad, py0))[0]
            if any(fits(c, x_text, y0 + h / 2, "left", beside, room_h) for c in cands):
                done += 1
    return done


def _check_events(events: Iterable[TraceEvent]) -> list[TraceEvent]:
    try:
        events = list(events)
    except TypeError as e:
        raise TraceError(f"events must be an iterable of TraceEvent, got {type(events).__name__}") from e
    for k, e in enumerate(events):
        if not isinstance(e, TraceEvent):
            raise TraceError(f"event {k} is a {type(e).__name__}, not a TraceEvent")
    return events


def _json_safe(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    return str(v)
