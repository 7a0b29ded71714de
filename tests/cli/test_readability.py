"""Readable command-line output: tables name quantities (the cells carry the units), JSON
keeps raw SI numbers with the unit in the key, memory errors give sizes people read, and
the numbers that differ on purpose (period, bottleneck, replay; the plan's and the
stream's energy) say what they count."""
from __future__ import annotations

import json
import re

import pytest

from scheduler.cli import demo
from scheduler.tables import ROOT_NOTE
from tests._cli import assert_one_line_error, run


def _table(out: str, title: str) -> list[str]:
    """The header line and rows of the table printed under the line starting with ``title``."""
    lines = out.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith(title))
    table = []
    for ln in lines[k + 1:]:
        if not ln.strip():
            break
        table.append(ln)
    return table


class TestPlaceTables:
    def test_headers_name_the_quantity_and_cells_carry_units(self, capsys):
        rc, out, err = run(capsys, "place", "--model", "tiny")
        assert rc == 0, err
        head = _table(out, "devices (predicted")[0].split()
        assert head == ["device", "kind", "nodes", "busy", "utilisation", "memory", "capacity"]
        parts = _table(out, "partitions (one fx")[0].split()
        assert parts == ["partition", "device", "nodes", "flops", "params", "output", "predicted"]
        assert not re.search(r"\b\w+_(s|j|bytes)\b", out)  # no unit-suffixed column left
        assert re.search(r"\d (ms|us|s)\b", out) and re.search(r"\d (B|KiB|MiB|GiB)\b", out)

    def test_root_group_is_named_and_explained(self, capsys):
        rc, out, _ = run(capsys, "place", "--model", "tiny", "--nodes")
        assert rc == 0
        assert "(root)" not in out and "(model-level ops)" in out
        assert out.count(ROOT_NOTE) == 1

    def test_json_keeps_raw_si_numbers_and_node_ids(self, capsys):
        rc, out, _ = run(capsys, "place", "--model", "tiny", "--json")
        assert rc == 0
        doc = json.loads(out)
        dev = doc["devices"][0]
        assert {"busy_s", "memory_bytes", "capacity_bytes", "utilisation"} <= set(dev)
        assert all(isinstance(dev[k], float) for k in ("busy_s", "memory_bytes", "capacity_bytes"))
        assert all("predicted_s" in r and isinstance(r["predicted_s"], float) for r in doc["partitions"])
        assert any("(root)" in r["nodes"] for r in doc["partitions"])  # ids, not display names


class TestMemoryErrors:
    def test_sizes_are_readable_with_the_exact_count(self, capsys):
        # small's embed_tokens (parameters and output) used to print as "4.22707e+06 bytes"
        rc, _, err = run(capsys, "place", "--model", "small", "--mem-limit", "1MB")
        assert_one_line_error(rc, err, "node 'embed_tokens' (4.03 MiB = 4,227,072 bytes) fits on no device",
                              "short by at least")
        assert "e+0" not in err

    def test_pipeline_overflow_is_readable(self, capsys):
        rc, _, err = run(capsys, "place", "--model", "small", "--policy", "pipeline", "--objective",
                         "throughput", "--mem-limit", "6MB")
        assert_one_line_error(rc, err, "overflows by", " MiB = ", " bytes in total")
        assert "e+0" not in err


class TestSimulateEnergy:
    def test_stream_energy_states_idle_power_and_why_it_differs(self, capsys, tmp_path):
        rc, out, err = run(capsys, "simulate", "--model", "tiny", "--requests", "4", "--rate", "50",
                           "--out", str(tmp_path))
        assert rc == 0, err
        lines = out.splitlines()
        k = next(i for i, ln in enumerate(lines) if ln.startswith("  energy "))
        stream, plan_note = lines[k], lines[k + 1]
        assert "span / 4 requests" in stream and "idle power" in stream
        assert re.search(r"idle power [\d.]+ W \(sim:\S+ [\d.]+ W", stream)
        assert "the plan's" in plan_note and "one request alone" in plan_note


class TestProfiles:
    def test_memory_in_the_units_of_the_plan_tables(self, capsys):
        rc, out, _ = run(capsys, "profiles", "list")
        assert rc == 0
        row = next(ln for ln in out.splitlines() if ln.startswith("atlas-200i-a2"))
        assert "7.45 GiB" in row  # as the devices table prints its capacity


@pytest.fixture(scope="module")
def placed():
    """(plan, bottleneck, cost model): the tiny decoder pipelined on the edge trio."""
    import graphs
    import policies
    from graphs import models as M
    from scheduler.cli.common import EDGE_TRIO, cost_model, make_cluster
    from scheduler.simulate import bottleneck_bound

    m = M.pangu_embedded("tiny", device="meta")
    g = graphs.capture(m, M.example_inputs(m, seq_len=32), granularity="layer")
    c = make_cluster(list(EDGE_TRIO))
    cm = cost_model(c)
    plan = policies.get("pipeline", objective="throughput").place(g, c, cm)
    return plan, bottleneck_bound(g, plan, cm), cm


class TestDemoExplanations:
    """The demo's what-counts lines, built without Ray."""

    def test_plan_numbers_say_what_they_count(self, placed):
        plan, bottleneck, cm = placed
        text = "\n".join(demo._plan_numbers(plan, bottleneck, cm))
        assert f"period {demo.fmt_s(plan.period)} ({1 / plan.period:.4g} requests/s)" in text
        assert "busy while its input arrives" in text
        assert f"bottleneck {demo.fmt_s(bottleneck)}" in text and "transfers not counted" in text
        idle = sum(cm.power(d)[1] for d in plan.devices_used)
        assert f"idle power {idle:g} W (" in text and "one request alone" in text

    def test_replay_and_stream_notes(self, placed):
        plan, bottleneck, _ = placed
        note = demo._replay_note(0.95 / bottleneck, plan, bottleneck)[0]
        assert "transfers overlap compute" in note and f"{1 / plan.period:.4g}/s" in note
        assert f"bottleneck's {1 / bottleneck:.4g}/s bounds any stream" in note
        assert "bounds" not in demo._replay_note(2 / bottleneck, plan, bottleneck)[0]
        assert demo._replay_note(None, plan, bottleneck) == []
        assert "fill and drain" in demo._stream_vs_period(0.5 / plan.period, plan.period, 16)
        assert "overlap compute" in demo._stream_vs_period(2 / plan.period, plan.period, 16)
