"""Placement policies compared: schedule length ratio, wins, and time to decide.

* **Quality.** For every registered policy (``policies.available()``, so policies added
  later are included automatically) and several graph families, the *schedule length
  ratio* ``SLR = makespan / CP`` where ``CP`` is the critical-path lower bound (longest
  path with each node at its fastest time and free communication; Topcuoglu, Hariri, Wu,
  IEEE TPDS 2002, sec. 5.1), averaged over seeds, and the number of instances on which the
  policy's makespan is the best of all policies (ties count for each). Families: random
  layered DAGs (HEFT paper style, 3 unrelated devices with heterogeneity ``beta``, several
  CCRs), fork-join, chains, in/out trees, and the reference decoder (openPangu-Embedded
  style, ``graphs.models``) captured at layer and op granularity and priced by the
  roofline model on three built-in device profiles. Every plan is checked with
  ``policies.validate`` before it is counted.
* **Speed.** Median wall time to place a 1000-node layered graph on 3 devices, per policy
  (budgeted policies run to their budget: their time is the budget they were given).

Slow policies get budgets: ``exact`` ``time_limit``, ``search`` / ``auto`` ``time_budget``
(see ``BUDGETS``). A policy that does not apply to an instance (too many nodes for the MILP,
a non-chain for the pipeline DP, ...) shows ``n/a`` and the reason is listed under the table.

Usage: python bench/policies.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import median_time, table, write_section  # noqa: E402
from executors.devices import Cluster  # noqa: E402
from graphs import synthetic  # noqa: E402
import policies  # noqa: E402
from policies.abstract import RelatedMachines, TableCostModel  # noqa: E402
from policies.errors import PolicyError  # noqa: E402
from policies.schedule import ScheduleContext  # noqa: E402

DEVICES = ("d0", "d1", "d2")
#: options for policies that would otherwise run long (and objective fixes for latency runs)
BUDGETS = {
    "exact": {"time_limit": 1.0},
    "search": {"time_budget": 0.3},
    "auto": {"time_budget": 1.0},
    "pipeline": {"objective": "latency"},
}
PROFILES = ("atlas-200i-a2", "jetson-orin-nx", "edge-cpu-a76")


def make_policy(name: str) -> policies.Policy:
    return policies.get(name, **BUDGETS.get(name, {}))


def table_model(g, beta: float, seed: int) -> TableCostModel:
    return TableCostModel(synthetic.heterogeneous_times(g, DEVICES, beta=beta, seed=seed),
                          synthetic.edge_times(g), devices=DEVICES)


def synthetic_families(seeds: int, quick: bool):
    """(family label, [(graph, cluster, cost model), ...])."""
    c = Cluster.from_names(DEVICES)
    fams = []
    n = 20 if quick else 30
    for ccr in (0.1, 1.0, 5.0):
        for beta in (0.5, 1.5):
            fams.append((f"layered n={n} ccr={ccr} beta={beta}",
                         [(g := synthetic.layered(n, ccr=ccr, seed=s), c, table_model(g, beta, s))
                          for s in range(seeds)]))
    other = [
        ("fork-join 6x3 ccr=1 beta=1", lambda s: synthetic.fork_join(6, 3, seed=s)),
        ("chain 20 ccr=1 beta=1", lambda s: synthetic.chain(20, seed=s)),
        ("in-tree 4x2 ccr=1 beta=1", lambda s: synthetic.in_tree(4, 2, seed=s)),
        ("out-tree 4x2 ccr=1 beta=1", lambda s: synthetic.out_tree(4, 2, seed=s)),
    ]
    for label, mk in other:
        fams.append((label, [(g := mk(s), c, table_model(g, 1.0, s)) for s in range(seeds)]))
    if not quick:
        fams.append(("layered n=200 ccr=1 beta=1",
                     [(g := synthetic.layered(200, seed=s), c, table_model(g, 1.0, s)) for s in range(seeds)]))
    return fams


def model_families():
    """The reference decoder's graphs, or (None, reason) when the pieces are missing."""
    try:
        from executors.profiles import cluster as profile_cluster
        from graphs.capture import capture
        from graphs.models import example_inputs, pangu_embedded
        from policies.roofline import RooflineCostModel
    except ImportError as e:  # pragma: no cover - other helpers' modules
        return [], f"reference-model rows skipped: {e}"
    c = profile_cluster(PROFILES)
    cm = RooflineCostModel(c)
    fams = []
    for name in ("small", "1b"):
        m = pangu_embedded(name, device="meta")
        x = example_inputs(m, seq_len=128)
        for gran in ("layer", "op"):
            g = capture(m, x, granularity=gran)
            fams.append((f"pangu {name} prefill128 {gran} ({g.number_of_nodes()} nodes)", [(g, c, cm)]))
    return fams, ""


def quality(families, names):
    rows, notes = [], {}
    for label, instances in families:
        slr = {n: [] for n in names}
        wins = {n: 0 for n in names}
        cps = []
        for g, c, cm in instances:
            cp = ScheduleContext(g, c, cm).critical_path_bound()
            cps.append(cp)
            got = {}
            for n in names:
                try:
                    p = make_policy(n).place(g, c, cm)
                except PolicyError as e:
                    notes.setdefault(n, f"{type(e).__name__}: {str(e)[:140]}")
                    continue
                policies.validate(p, g, c, cm)
                got[n] = p.makespan
                slr[n].append(p.makespan / cp if cp > 0 else float("nan"))
            if got:
                best = min(got.values())
                for n, v in got.items():
                    if v <= best * (1 + 1e-9):
                        wins[n] += 1
        row = [label, len(instances), statistics.mean(cps)]
        for n in names:
            row.append(f"{statistics.mean(slr[n]):.3f} ({wins[n]})" if slr[n] else "n/a")
        rows.append(row)
        print(f"  {label}: done", file=sys.stderr)
    return rows, notes


def speed(names, quick: bool):
    n = 300 if quick else 1000
    g = synthetic.layered(n, ccr=1.0, seed=0)
    c = Cluster.from_names(DEVICES)
    models = {"table": table_model(g, 1.0, 0),
              "related": RelatedMachines({"d0": 1.0, "d1": 2.0, "d2": 4.0}, bandwidth=1.0)}
    rows = []
    ctx_t = {k: median_time(lambda m=m: ScheduleContext(g, c, m), repeats=5) for k, m in models.items()}
    rows.append(["(ScheduleContext build only)", f"{ctx_t['table'] * 1e3:.1f}", f"{ctx_t['related'] * 1e3:.1f}", ""])
    for name in names:
        pol = make_policy(name)
        cells = []
        for m in models.values():
            try:
                budgeted = name in BUDGETS and name != "pipeline"
                t = median_time(lambda: pol.place(g, c, m), repeats=1 if budgeted else 5,
                                warmup=0 if budgeted else 1)
                cells.append(f"{t * 1e3:.1f}")
            except PolicyError as e:
                cells.append("n/a")
                print(f"  speed {name}: {e}", file=sys.stderr)
        rows.append([name, *cells, ", ".join(f"{k}={v}" for k, v in BUDGETS.get(name, {}).items())])
    return n, g.number_of_edges(), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one seed, no reference model (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    args = ap.parse_args()
    t0 = time.time()
    names = list(policies.available())
    seeds = 1 if args.quick else 3
    fams = synthetic_families(seeds, args.quick)
    model_note = "reference-model rows skipped (--quick)"
    if not args.quick:
        mf, model_note = model_families()
        fams += mf
    rows, notes = quality(fams, names)
    n, e, srows = speed(names, args.quick)
    body = ["### Schedule length ratio (mean over instances; wins in parentheses)",
            "",
            "SLR = makespan / CP, CP = critical-path lower bound (each node at its fastest time, "
            "free communication); 1.0 would be optimal-and-tight, lower is better. A win is an "
            "instance where the policy's makespan is the best of all policies (ties count for each). "
            "Synthetic rows: 3 unrelated devices, times drawn with heterogeneity beta around each "
            "node's cost (HEFT paper), `TableCostModel`; reference-model rows: roofline model on "
            f"profiles {', '.join(PROFILES)}. Budgets: "
            + "; ".join(f"{k}: {v}" for k, v in BUDGETS.items()) + ".",
            "",
            table(["family", "instances", "mean CP bound", *names], rows)]
    if model_note:
        body += ["", f"Note: {model_note}."]
    if notes:
        body += ["", "Where a policy shows n/a (first reason seen):", ""]
        body += [f"- `{k}`: {v}" for k, v in sorted(notes.items())]
    body += ["", f"### Time to place a {n}-node layered graph ({e} edges) on 3 devices (ms, median of 5; "
             "budgeted policies: one run)",
             "",
             table(["policy", "TableCostModel", "RelatedMachines", "options"], srows),
             "",
             f"Whole benchmark: {time.time() - t0:.0f} s."]
    text = "\n".join(body)
    if args.no_write:
        print(text)
    else:
        write_section("policies", "Placement policies: schedule length ratio, wins, time to decide", text)


if __name__ == "__main__":
    main()
