"""Trace events, Chrome trace JSON and Gantt charts."""
from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest

from graphs.errors import UnknownNameError
from scheduler.errors import TraceError
from scheduler.simulate import simulate, simulate_stream
from scheduler.trace import TraceEvent, events_from_sim, gantt, to_chrome_trace
from tests.scheduler._plans import TinyCost, manual_plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fork():
    """a (cpu, 1) -> b, c (both gpu, 1 each), each edge moves 2: the two transfers
    overlap on the cpu->gpu link over [1, 3]; b [3, 4], c [4, 5]."""
    g = nx.DiGraph()
    for n, kind in (("a", "matmul"), ("b", "activation"), ("c", "norm")):
        g.add_node(n, cost=1.0, kind=kind)
    g.add_edge("a", "b", data=2.0)
    g.add_edge("a", "c", data=2.0)
    plan = manual_plan({"a": "cpu", "b": "gpu", "c": "gpu"}, {"cpu": ("a",), "gpu": ("b", "c")})
    return g, plan, TinyCost({"cpu": 1.0, "gpu": 1.0})


class TestTraceEvent:
    def test_fields_and_duration(self):
        e = TraceEvent("n", "gpu", 1.0, 3.5, request=2, category="transfer", args={"x": 1})
        assert e.duration == 2.5 and e.args["x"] == 1
        with pytest.raises(TypeError):
            e.args["y"] = 2  # read-only
        assert e == TraceEvent("n", "gpu", 1.0, 3.5, request=2, category="transfer", args={"x": 1})
        assert len({e, TraceEvent("n", "gpu", 1.0, 3.5, request=2, category="transfer")}) == 2
        assert type(TraceEvent("n", "gpu", 0, 1, request=np.int64(4)).request) is int

    @pytest.mark.parametrize("kw, match", [
        (dict(start=2.0, end=1.0), r"end 1.0 is before start 2.0"),
        (dict(start=math.nan), r"start must be a finite number, got nan"),
        (dict(device=""), r"device must be a non-empty string, got ''"),
        (dict(request="r1"), r"request must be None or an int, got 'r1'"),
        (dict(category=""), r"category must be a non-empty string"),
    ])
    def test_rejects_bad_fields(self, kw, match):
        base = dict(name="n", device="cpu", start=0.0, end=1.0)
        with pytest.raises(TraceError, match=match):
            TraceEvent(**{**base, **kw})


class TestEventsFromSim:
    def test_single_request(self):
        g, plan, cm = fork()
        r = simulate(g, plan, cm)
        ev = events_from_sim(r, g)
        compute = [e for e in ev if e.category == "compute"]
        transfer = [e for e in ev if e.category == "transfer"]
        assert {(e.name, e.device, e.start, e.end) for e in compute} == {
            ("a", "cpu", 0.0, 1.0), ("b", "gpu", 3.0, 4.0), ("c", "gpu", 4.0, 5.0)}
        assert {e.args["kind"] for e in compute} == {"matmul", "activation", "norm"}
        assert sorted((e.name, e.device, e.start, e.end) for e in transfer) == [
            ("a->b", "cpu->gpu", 1.0, 3.0), ("a->c", "cpu->gpu", 1.0, 3.0)]
        assert all(e.request is None for e in ev)
        assert [e.start for e in ev] == sorted(e.start for e in ev)
        assert len(events_from_sim(r, transfers=False)) == 3

    def test_stream_carries_request_ids(self):
        g, plan, cm = fork()
        s = simulate_stream(g, plan, cm, [0.0, 0.0, 0.0])
        ev = events_from_sim(s)
        assert len(ev) == 3 * 3 + 3 * 2
        assert {e.request for e in ev} == {0, 1, 2}
        e = next(e for e in ev if e.request == 1 and e.name == "a")
        assert (e.start, e.end) == (s.start[(1, "a")], s.finish[(1, "a")])

    def test_rejects_other_objects(self):
        with pytest.raises(TraceError, match="takes a SimResult or StreamResult, got dict"):
            events_from_sim({})


class TestChromeTrace:
    def test_json_structure_and_durations(self, tmp_path):
        g, plan, cm = fork()
        ev = events_from_sim(simulate(g, plan, cm), g)
        path = tmp_path / "trace.json"
        returned = to_chrome_trace(ev, path)
        doc = json.loads(path.read_text())
        assert doc == returned
        xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
        assert len(xs) == len(ev) == 5
        by_name = {e["name"]: e for e in xs}
        assert (by_name["b"]["ts"], by_name["b"]["dur"]) == (3e6, 1e6)  # seconds -> microseconds
        assert by_name["b"]["cat"] == "compute" and by_name["a->b"]["cat"] == "transfer"
        assert by_name["a"]["args"] == {"node": "a", "kind": "matmul"}
        meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
        procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
        assert sorted(procs.values()) == ["cpu", "cpu->gpu", "gpu"]
        assert len(procs) == 3  # one pid per device or link
        assert procs[by_name["b"]["pid"]] == "gpu" and procs[by_name["a->b"]["pid"]] == "cpu->gpu"
        # the two concurrent transfers on one link go to two threads, each named
        assert {by_name["a->b"]["tid"], by_name["a->c"]["tid"]} == {1, 2}
        threads = {(e["pid"], e["tid"]) for e in meta if e["name"] == "thread_name"}
        assert {(e["pid"], e["tid"]) for e in xs} <= threads
        # b and c do not overlap, so they share the gpu's one thread
        assert by_name["b"]["tid"] == by_name["c"]["tid"] == 1

    def test_time_scale_for_abstract_units(self):
        doc = to_chrome_trace([TraceEvent("a", "P1", 2.0, 9.0)], time_scale=1.0)
        x = [e for e in doc["traceEvents"] if e["ph"] == "X"][0]
        assert (x["ts"], x["dur"]) == (2.0, 7.0)
        with pytest.raises(TraceError, match="time_scale must be a finite number > 0, got 0"):
            to_chrome_trace([], time_scale=0)

    def test_rejects_non_events(self):
        with pytest.raises(TraceError, match="event 1 is a tuple, not a TraceEvent"):
            to_chrome_trace([TraceEvent("a", "cpu", 0, 1), ("b", "cpu", 1, 2)])


class TestGantt:
    def test_writes_png_with_one_bar_per_event(self, tmp_path):
        g, plan, cm = fork()
        ev = events_from_sim(simulate_stream(g, plan, cm, [0.0, 1.0]), g)
        path = tmp_path / "g.png"
        bars = gantt(ev, path, title="fork, 2 requests", time_unit="ms")
        assert bars == len(ev) == 10
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000

    @pytest.mark.parametrize("color_by", ["auto", "request", "kind", "category", "name"])
    def test_colourings(self, tmp_path, color_by):
        ev = [TraceEvent(f"n{k}", "cpu" if k % 2 else "gpu", k, k + 1.0, request=k % 3) for k in range(30)]
        assert gantt(ev, tmp_path / "c.png", color_by=color_by, max_legend=4) == 30

    def test_errors(self, tmp_path):
        ev = [TraceEvent("a", "cpu", 0, 1)]
        with pytest.raises(UnknownNameError, match="unknown time unit 'hours'; valid choices: ms, ns, s, units, us"):
            gantt(ev, tmp_path / "x.png", time_unit="hours")
        with pytest.raises(UnknownNameError, match="unknown gantt colouring 'rainbow'; valid choices: auto"):
            gantt(ev, tmp_path / "x.png", color_by="rainbow")
        with pytest.raises(TraceError, match="no events to draw"):
            gantt([], tmp_path / "x.png")
        assert not (tmp_path / "x.png").exists()


@pytest.fixture
def drawn(monkeypatch):
    """The figures gantt saves, kept (the Agg figure is otherwise gone once written)."""
    from matplotlib.figure import Figure

    figs = []
    save = Figure.savefig

    def keep(self, *a, **kw):
        figs.append(self)
        return save(self, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figs


def _bar_colours(fig):
    """(row label, face colour as hex) of every bar of the chart."""
    from matplotlib.colors import to_hex

    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    out = []
    for c in ax.collections:
        for path, fc in zip(c.get_paths(), c.get_facecolors()):
            y = path.vertices[:, 1].mean()
            out.append((labels[round(y)], to_hex(fc)))
    return out


class TestGanttReadability:
    def test_kind_colours_are_fixed_across_charts(self, tmp_path, drawn):
        from matplotlib.colors import to_hex

        from graphs.opgraph import OP_KINDS
        from scheduler.trace import KIND_COLOURS

        assert set(OP_KINDS) <= set(KIND_COLOURS) and "transfer" in KIND_COLOURS
        a = [TraceEvent("x", "cpu", 0, 1, args={"kind": "matmul"}),
             TraceEvent("y", "gpu", 1, 2, args={"kind": "norm"})]
        b = [TraceEvent("y", "gpu", 0, 1, args={"kind": "norm"}),
             TraceEvent("z", "npu", 1, 2, args={"kind": "attention"}),
             TraceEvent("x", "cpu", 2, 3, args={"kind": "matmul"})]
        gantt(a, tmp_path / "a.png", color_by="kind")
        gantt(b, tmp_path / "b.png", color_by="kind")
        for fig in drawn:
            for row, colour in _bar_colours(fig):
                kind = {"cpu": "matmul", "gpu": "norm", "npu": "attention"}[row]
                assert colour == to_hex(KIND_COLOURS[kind])

    def test_request_colours_do_not_depend_on_which_requests_are_shown(self, tmp_path, drawn):
        ev = [TraceEvent("p0", f"d{r}", r, r + 1, request=r) for r in range(6)]
        gantt(ev, tmp_path / "all.png", color_by="request")
        gantt(ev[3:], tmp_path / "late.png", color_by="request")
        full, late = (dict(_bar_colours(f)) for f in drawn)
        assert all(late[d] == full[d] for d in late)

    def test_placeholders_are_not_drawn(self, tmp_path, drawn):
        ev = [TraceEvent("input_ids", "npu", 0, 0, args={"kind": "input"}),
              TraceEvent("input_ids->layers.0", "npu->cpu", 0, 1e-6, category="transfer"),
              TraceEvent("layers.0", "cpu", 1e-6, 1e-3, args={"kind": "group"}),
              TraceEvent("output", "cpu", 1e-3, 1e-3, args={"kind": "output"})]
        assert gantt(ev, tmp_path / "g.png", time_unit="ms") == 2
        rows = [t.get_text() for t in drawn[0].axes[0].get_yticklabels()]
        assert sorted(rows) == ["cpu", "npu->cpu"]  # no row for the input alone on the npu

    def test_labels_are_never_cut_nor_overlap(self, tmp_path, drawn):
        # a narrow transfer at the very start (its centred name used to be cut by the axes'
        # edge: "ed_tokens->layers.0") and two narrow neighbours with long names
        ev = [TraceEvent("embed_tokens->layers.0", "npu->gpu", 0.0, 0.06, category="transfer"),
              TraceEvent("layers.0", "gpu", 0.06, 0.5, args={"kind": "group"}),
              TraceEvent("model.stages.2", "cpu", 0.5, 0.54, args={"kind": "group"}),
              TraceEvent("model.stages.3", "cpu", 0.54, 0.58, args={"kind": "group"}),
              TraceEvent("lm_head", "cpu", 0.58, 1.0, args={"kind": "matmul"})]
        gantt(ev, tmp_path / "g.png")
        fig = drawn[0]
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        box = ax.get_window_extent(renderer)
        texts = [t for t in ax.texts if t.get_text()]
        assert {t.get_text() for t in texts} >= {"layers.0", "lm_head"}
        boxes = [t.get_window_extent(renderer) for t in texts]
        for t, bb in zip(texts, boxes):
            assert box.x0 <= bb.x0 and bb.x1 <= box.x1, t.get_text()  # inside the axes: not cut
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b)

    def test_label_candidates_shorten_by_whole_names(self):
        from scheduler.trace import label_candidates

        assert label_candidates("embed_tokens->layers.0") == ["embed_tokens->layers.0", "->layers.0"]
        assert label_candidates("layers.3.self_attn")[-1] == "3.self_attn"
        assert label_candidates("(model-level ops)") == ["(model-level ops)", "model-level"]

    def test_root_group_is_named_and_explained(self, tmp_path, drawn):
        from scheduler.tables import ROOT_NOTE

        g = nx.DiGraph([("(root)", "b")])
        for n in g:
            g.add_node(n, cost=1.0, kind="group")
        g.edges["(root)", "b"]["data"] = 1.0
        plan = manual_plan({"(root)": "cpu", "b": "gpu"}, {"cpu": ("(root)",), "gpu": ("b",)})
        ev = events_from_sim(simulate(g, plan, TinyCost({"cpu": 1.0, "gpu": 1.0})), g)
        assert {e.name for e in ev} == {"(model-level ops)", "b", "(model-level ops)->b"}
        assert next(e for e in ev if e.device == "cpu").args["node"] == "(root)"
        gantt(ev, tmp_path / "g.png", caption="p0 = (model-level ops)")
        xlabel = drawn[0].axes[0].get_xlabel()
        assert ROOT_NOTE in xlabel and "p0 = (model-level ops)" in xlabel
