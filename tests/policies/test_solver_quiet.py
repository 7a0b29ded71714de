"""The MILP solver prints nothing (hardening item 11): ``place --policy exact|auto --json``
output must be JSON from its first byte, so HiGHS's banner and log stay off stdout."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLACE = textwrap.dedent("""
    import sys

    import networkx as nx
    import policies
    from executors.devices import Cluster
    from policies.abstract import TableCostModel

    g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    t = {v: {"x": 1.0 + i, "y": 2.0} for i, v in enumerate("abcd")}
    cm = TableCostModel(t, {e: 0.5 for e in g.edges}, power={"x": (5.0, 1.0), "y": (2.0, 1.0)})
    for objective in ("latency", "energy"):
        policies.get(sys.argv[1], objective=objective).place(g, Cluster.from_names(["x", "y"]), cm)
""")


def _run_fresh(policy: str) -> subprocess.CompletedProcess:
    """A fresh interpreter: HiGHS prints its banner once per process, on first use."""
    return subprocess.run([sys.executable, "-c", PLACE, policy], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("policy", ["exact", "auto"])
def test_placement_prints_nothing_in_a_fresh_process(policy):
    out = _run_fresh(policy)
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    assert "HiGHS" not in out.stderr


def test_exact_placement_prints_nothing_at_fd_level(capfd):
    import networkx as nx

    import policies
    from executors.devices import Cluster
    from policies.abstract import TableCostModel

    g = nx.DiGraph([("a", "b"), ("b", "c")])
    cm = TableCostModel({v: {"x": 1.0, "y": 2.0} for v in "abc"}, {e: 1.0 for e in g.edges})
    plan = policies.get("exact", seeds=()).place(g, Cluster.from_names(["x", "y"]), cm)
    assert plan.makespan == pytest.approx(3.0)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_new_highs_is_silent():
    from policies.exact import new_highs

    h = new_highs()
    opts = h.getOptions()
    assert opts.output_flag is False and opts.log_to_console is False


def test_cli_place_exact_json_starts_with_json():
    import json

    out = subprocess.run([sys.executable, "-m", "scheduler", "place", "--model", "small", "--policy", "exact",
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.lstrip().startswith("{")
    json.loads(out.stdout)
