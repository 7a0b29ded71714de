"""The ``hetsched`` command line: every subcommand's output checked against the library,
and bad arguments rejected with one line on stderr and exit status 2, never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import graphs
import policies
from executors import profiles
from graphs import models as M
from policies.roofline import RooflineCostModel
from scheduler import cli
from scheduler.cli import EDGE_TRIO, main, parse_size
from scheduler.cli.common import fmt_s
from scheduler.errors import CLIError
from scheduler.runtime import build_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


from tests._cli import assert_one_line_error, run  # noqa: E402


@pytest.fixture(scope="module")
def tiny_graph():
    m = M.pangu_embedded("tiny", device="meta")
    return graphs.capture(m, M.example_inputs(m, seq_len=32), granularity="layer")


# ------------------------------------------------------------------------ listings
class TestListings:
    def test_help_lists_every_command(self, capsys):
        rc, out, _ = run(capsys, "--help")
        assert rc == 0
        for c in ("demo", "place", "simulate", "policies", "profiles", "bench"):
            assert c in out

    @pytest.mark.parametrize("cmd", ["demo", "place", "simulate", "profiles", "bench"])
    def test_each_command_has_help(self, capsys, cmd):
        rc, out, _ = run(capsys, cmd, "--help")
        assert rc == 0 and "usage: hetsched " + cmd in out and len(out.splitlines()) > 5

    def test_policies_lists_the_registry(self, capsys):
        rc, out, _ = run(capsys, "policies")
        assert rc == 0
        listed = {ln.split()[0] for ln in out.splitlines() if ln.strip()}
        assert listed == set(policies.available())

    def test_profiles_list_and_show(self, capsys):
        rc, out, _ = run(capsys, "profiles", "list")
        assert rc == 0
        for name in profiles.available():
            assert name in out
        spec = profiles.load("atlas-200i-a2")
        assert f"{spec.flops_for('float16') / 1e12:.3g} TFLOP/s" in out
        rc, out, _ = run(capsys, "profiles", "show", "atlas-200i-a2")
        assert rc == 0 and out.strip() == profiles.show("atlas-200i-a2").strip()

    def test_profiles_calibrate_writes_a_loadable_profile(self, capsys, tmp_path):
        p = tmp_path / "h.toml"
        rc, out, _ = run(capsys, "profiles", "calibrate", "--quick", "--out", str(p))
        assert rc == 0 and f"wrote {p}" in out
        spec = profiles.load(str(p))
        assert spec.kind == "cpu" and spec.peak_flops["float32"] > 0
        assert f"{spec.mem_bandwidth / 1e9:.2f} GB/s" in out


# --------------------------------------------------------------------------- place
class TestPlace:
    def test_json_plan_equals_the_library_plan(self, capsys, tiny_graph):
        rc, out, _ = run(capsys, "place", "--model", "tiny", "--policy", "heft", "--json")
        assert rc == 0
        doc = json.loads(out)
        plan = policies.Plan.from_dict(doc["plan"])
        cluster = build_cluster(EDGE_TRIO)
        cm = RooflineCostModel(cluster)
        assert policies.validate(plan, tiny_graph, cluster, cm, raise_=False) == []
        ref = policies.get("heft").place(tiny_graph, cluster, cm)
        assert plan.assignment == ref.assignment
        assert plan.makespan == pytest.approx(ref.makespan)
        assert [r["device"] for r in doc["devices"]] == list(EDGE_TRIO)
        # partitions cover every placed node exactly once
        assert sum(len(r["nodes"].split(", ")) for r in doc["partitions"]) >= 1
        assert doc["graph"]["nodes"] == tiny_graph.number_of_nodes()

    def test_tables_and_out_file(self, capsys, tmp_path):
        f = tmp_path / "plan.json"
        rc, out, _ = run(capsys, "place", "--model", "tiny", "--objective", "throughput",
                         "--policy", "pipeline", "--out", str(f), "--nodes")
        assert rc == 0
        assert "partitions (one fx submodule each" in out and "devices (predicted" in out
        plan = policies.Plan.from_dict(json.loads(f.read_text())["plan"])
        assert plan.policy == "pipeline" and plan.objective == "throughput"
        for d in plan.devices_used:
            assert d in out
        assert "layers.1" in out  # --nodes prints one row per node

    def test_graph_file_places_like_the_model(self, capsys, tmp_path, tiny_graph):
        f = tmp_path / "g.json"
        graphs.save(tiny_graph, f)
        rc, out, _ = run(capsys, "place", "--graph", str(f), "--json")
        assert rc == 0
        rc2, out2, _ = run(capsys, "place", "--model", "tiny", "--json")
        assert json.loads(out)["plan"]["makespan"] == pytest.approx(json.loads(out2)["plan"]["makespan"])
        assert "partitions" not in json.loads(out)  # a loaded graph has no module to split

    def test_mem_limit_changes_the_plan(self, capsys):
        rc, out, _ = run(capsys, "place", "--model", "tiny", "--json")
        free = json.loads(out)["plan"]
        busiest = max(free["memory"], key=lambda d: free["memory"][d])
        cap = free["memory"][busiest] / 2
        rc, out, _ = run(capsys, "place", "--model", "tiny", "--json", "--mem-limit",
                         f"{busiest}={cap:.0f}")
        assert rc == 0
        limited = json.loads(out)["plan"]
        assert limited["memory"][busiest] <= cap
        assert [r["capacity_bytes"] for r in json.loads(out)["devices"] if r["device"] == busiest] == [
            float(int(f"{cap:.0f}"))]

    def test_bare_profile_names_mean_sim_devices(self, capsys):
        rc, out, _ = run(capsys, "place", "--model", "tiny", "--devices", "jetson-orin-nx,edge-cpu-a76",
                         "--json")
        assert rc == 0
        assert [r["device"] for r in json.loads(out)["devices"]] == ["sim:jetson-orin-nx", "sim:edge-cpu-a76"]

    def test_named_cpu_devices(self, capsys):
        rc, out, _ = run(capsys, "place", "--model", "tiny", "--devices", "cpu:0,cpu:1", "--policy",
                         "round-robin", "--json")
        assert rc == 0
        doc = json.loads(out)
        assert [r["device"] for r in doc["devices"]] == ["cpu:0", "cpu:1"]
        assert {d for _, d in doc["plan"]["assignment"]} == {"cpu:0", "cpu:1"}

    def test_bad_cpu_index(self, capsys):
        rc, _, err = run(capsys, "place", "--model", "tiny", "--devices", "cpu:x")
        assert_one_line_error(rc, err, "unknown device 'cpu:x'", "cpu:<N>")


class TestSizes:
    def test_units(self):
        assert parse_size("1KiB") == 1024 and parse_size("3 MB") == 3e6 and parse_size("7") == 7

    @pytest.mark.parametrize("bad", ["", "0", "-5MB", "12 parsecs", "1e999"])
    def test_bad_sizes(self, bad):
        with pytest.raises(CLIError, match="bad size"):
            parse_size(bad)


# ------------------------------------------------------------------------ simulate
class TestSimulate:
    def test_numbers_match_the_simulator_and_files_are_written(self, capsys, tmp_path, tiny_graph):
        from scheduler.simulate import simulate_stream

        rc, out, _ = run(capsys, "simulate", "--model", "tiny", "--requests", "6", "--in-flight", "2",
                         "--out", str(tmp_path))
        assert rc == 0
        cluster = build_cluster(EDGE_TRIO)
        cm = RooflineCostModel(cluster)
        plan = policies.get("heft").place(tiny_graph, cluster, cm)
        r = simulate_stream(tiny_graph, plan, cm, [0.0] * 6, cluster, max_in_flight=2)
        assert f"throughput {r.throughput:.4g} requests/s" in out
        assert f"simulated 6 requests (closed loop, 2 in flight)" in out
        png, trace = tmp_path / "gantt.png", tmp_path / "trace.json"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        ev = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
        assert {e["args"]["request"] for e in ev if "request" in e["args"]} == set(range(6))

    def test_poisson_arrivals(self, capsys, tmp_path):
        rc, out, _ = run(capsys, "simulate", "--model", "tiny", "--requests", "4", "--rate", "100",
                         "--out", str(tmp_path))
        assert rc == 0 and "Poisson arrivals at 100 requests/s" in out


# ---------------------------------------------------------------------- bad inputs
class TestErrors:
    def test_unknown_policy(self, capsys):
        rc, _, err = run(capsys, "place", "--model", "tiny", "--policy", "nope")
        assert_one_line_error(rc, err, "unknown policy 'nope'", "heft", "pipeline")

    def test_unknown_profile(self, capsys):
        rc, _, err = run(capsys, "place", "--model", "tiny", "--devices", "sim:nope")
        assert_one_line_error(rc, err, "unknown profile 'nope'", "atlas-200i-a2")

    def test_unknown_device_form(self, capsys):
        rc, _, err = run(capsys, "place", "--model", "tiny", "--devices", "cuda:x")
        assert_one_line_error(rc, err, "unknown device 'cuda:x'", "sim:<profile name or file>")

    def test_malformed_graph_file(self, capsys, tmp_path):
        f = tmp_path / "bad.json"
        f.write_text("{not json")
        rc, _, err = run(capsys, "place", "--graph", str(f))
        assert_one_line_error(rc, err, "not valid JSON")

    def test_missing_graph_file(self, capsys, tmp_path):
        rc, _, err = run(capsys, "place", "--graph", str(tmp_path / "none.json"))
        assert_one_line_error(rc, err, "no such file")

    def test_abstract_task_graph_file(self, capsys, tmp_path):
        from graphs.synthetic import chain

        f = tmp_path / "chain.json"
        graphs.save(chain(3), f)
        rc, _, err = run(capsys, "place", "--graph", str(f))
        assert_one_line_error(rc, err, "is not an op graph", "RelatedMachines")

    def test_impossible_memory_limit(self, capsys):
        rc, _, err = run(capsys, "place", "--model", "tiny", "--mem-limit", "1KB")
        assert_one_line_error(rc, err, "memory")

    def test_memory_limit_on_unknown_device(self, capsys):
        rc, _, err = run(capsys, "place", "--model", "tiny", "--mem-limit", "sim:nope=1GB")
        assert_one_line_error(rc, err, "unknown device in --mem-limit", "sim:jetson-orin-nx")

    @pytest.mark.parametrize("argv, needle", [
        (["place", "--mem-limit", "lots"], "bad size 'lots'"),
        (["simulate", "--requests", "0"], "expected an integer >= 1, got '0'"),
        (["place", "--model", "7b"], "invalid choice: '7b'"),
        (["place", "--objective", "speed"], "invalid choice: 'speed'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["profiles"], "profiles needs an action"),
        (["profiles", "show", "nope"], "unknown profile 'nope'"),
        (["place", "--option", "novalue"], "give KEY=VALUE"),
        (["place", "--option", "bogus=1"], "unknown option(s) 'bogus'"),
        (["place", "--policy", "pipeline", "--model", "tiny", "--seq-len", "999999"], "exceeds"),
        (["place", "--devices", "sim:jetson-orin-nx", "jetson-orin-nx"], "listed twice"),
        (["bench", "--only", "nope"], "unknown benchmark 'nope'"),
        (["demo", "--model", "1b"], "invalid choice: '1b'"),
        (["demo", "--gate-budget", "2"], "expected a number in (0, 1), got '2'"),
    ])
    def test_bad_arguments(self, capsys, argv, needle):
        rc, _, err = run(capsys, *argv)
        assert_one_line_error(rc, err, needle)

    def test_real_process_prints_no_traceback(self, tmp_path):
        env = dict(os.environ, PYTHONPATH=ROOT)
        p = subprocess.run([sys.executable, "-m", "scheduler", "place", "--model", "tiny", "--policy",
                            "nope"], capture_output=True, text=True, cwd=str(tmp_path), env=env,
                           timeout=120)
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.strip().splitlines() == [
            "hetsched: error: unknown policy 'nope'; valid choices: "
            + ", ".join(sorted(policies.available()))]

    def test_closed_pipe_prints_no_traceback(self, tmp_path):
        """`hetsched bench --list | head -1`: the reader stops early; exit 1, stderr clean."""
        env = dict(os.environ, PYTHONPATH=ROOT)
        p = subprocess.Popen([sys.executable, "-m", "scheduler", "bench", "--list"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=ROOT, env=env)
        p.stdout.close()  # nothing reads: the first write raises BrokenPipeError
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 1 and err == ""


# --------------------------------------------------------------------------- bench
class TestBench:
    def test_list_names_every_script(self, capsys):
        rc, out, _ = run(capsys, "bench", "--list")
        assert rc == 0
        names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "bench"))
                       if f.endswith(".py") and not f.startswith("_"))
        assert [ln.split()[0] for ln in out.splitlines() if ln.strip()] == names

    def test_run_bench_runs_scripts_and_reports_failures(self, tmp_path):
        b = tmp_path / "bench"
        b.mkdir()
        (b / "_helper.py").write_text("raise SystemExit(3)\n")
        (b / "ok.py").write_text('"""Writes a marker."""\nimport sys\n'
                                 'open("marker.txt", "w").write(" ".join(sys.argv[1:]))\n')
        (b / "bad.py").write_text('"""Fails."""\nraise SystemExit(5)\n')
        (b / "quick.py").write_text('"""Takes --quick."""\nimport sys\n'
                                    'assert sys.argv[1:] == ["--quick"]  # "--quick"\n')
        assert cli.bench_scripts(str(b)) == {"bad": "Fails", "ok": "Writes a marker",
                                             "quick": "Takes --quick"}
        res = cli.run_bench(["ok", "bad", "quick"], quick=True, bench_dir=str(b), progress=False)
        assert [(n, rc) for n, rc, _ in res] == [("ok", 0), ("bad", 5), ("quick", 0)]
        assert (tmp_path / "marker.txt").read_text() == ""  # no --quick for a script without it


# ---------------------------------------------------------------------------- demo
def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.ray
@pytest.mark.slow
def test_demo_serves_the_stream_on_ray(capsys, tmp_path, ray_session):
    from graphs.datasets import fashion_mnist_available

    rc, out, err = run(capsys, "demo", "--model", "tiny", "--seq-len", "16", "--requests", "6",
                       "--in-flight", "2", "--no-1b", "--no-generate", "--out", str(tmp_path))
    assert rc == 0, err
    assert "6 of 6 requests completed, 0 failed" in out
    assert "the first request equals the unpartitioned model" in out
    for f in ("plan_gantt.png", "run_gantt.png"):
        assert _png(tmp_path / f) and str(tmp_path / f) in out
    plan = policies.Plan.from_dict(json.loads((tmp_path / "plan.json").read_text()))
    doc = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    ev = [e for e in doc if e["ph"] == "X"]
    assert len({e["args"]["request"] for e in ev}) == 6
    parts = {e["args"]["partition"] for e in ev}
    assert len(ev) == 6 * len(parts)  # every request ran every partition once
    devices = {e["args"]["name"] for e in doc if e["ph"] == "M" and e["name"] == "process_name"}
    assert devices and devices <= set(plan.devices_used)

    summary = json.loads((tmp_path / "summary.json").read_text())
    st = summary["decoder"]["stats"]
    assert st["completed"] == 6 and f"latency p50 {fmt_s(st['latency_p50'])}" in out
    # every number printed is in the summary: the comparison table and the plan's figures too
    compared = {r["policy"]: r for r in summary["comparison"]}
    assert "heft (latency)" in compared and compared["heft (latency)"]["bottleneck_s"] > 0
    assert summary["plan"]["bottleneck_s"] > 0 and summary["plan_1b"] is None  # --no-1b
    idle = summary["plan"]["idle_power_w"]
    assert idle and f"idle power {sum(idle.values()):g} W (" in out
    # the throughputs and energies that differ say what they count
    assert "busy while its input arrives" in out and "transfers overlap compute" in out
    assert "one request alone" in out
    if not fashion_mnist_available():
        assert summary["gate"] is None and "no exit rate to report" in out
        return
    g = summary["gate"]
    gs = g["stats"]
    # the printed exit rate is the runtime's count, consistent with the per-path counts
    assert gs["completed"] == 6 and sum(gs["exits"].values()) == 6
    assert gs["exit_rate"] == pytest.approx(gs["exits"].get("exit@2", 0) / 6) == pytest.approx(g["exited"] / 6)
    assert f"exit rate {gs['exit_rate']:.1%} ({g['exited']} of 6 requests" in out
    assert 0 < g["threshold"] < 1 and g["calibration"]["ucb"] <= 0.02
    assert _png(tmp_path / "gate_gantt.png")
    gev = [e for e in json.loads((tmp_path / "gate_trace.json").read_text())["traceEvents"] if e["ph"] == "X"]
    deep = {e["args"]["request"] for e in gev if e["args"]["partition"] != 0}
    assert len(deep) == 6 - g["exited"]  # exited requests never reached the deep path
