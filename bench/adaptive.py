"""Adaptive runtime: an NPU that becomes 3x slower mid-stream, and a device killed mid-stream.

Model: the tiny openPangu-Embedded-style decoder (``graphs.models``, layer granularity,
batch 1, 16 tokens) on the simulated edge trio (Ascend 310B-class NPU ``atlas-200i-a2``,
Jetson Orin NX GPU, Cortex-A76 CPU; ``executors.profiles``), placed by the ``pipeline``
policy for throughput. Simulated devices are paced (``--pace`` real seconds per simulated
second), so throughput in wall time follows the simulated devices' speed. A closed loop
keeps ``IN_FLIGHT`` requests in flight.

* **Drift.** After ``T_SLOW`` seconds the NPU becomes 3x slower (``Runtime.set_slowdown``
  with a schedule).
  Three runs side by side: the adaptive runtime; a static runtime that never adapts; and
  an *oracle*, a static runtime whose cost model knows the NPU is 3x slower from the start
  (the plan made for the slowed cluster). Throughput before the slowdown, during it (until
  the new plan is deployed) and after, the time to detect (slowdown -> drift alarm) and to
  re-plan (alarm -> new plan version deployed). Target: after / oracle >= 0.9.
* **Failure.** After ``T_KILL`` seconds the actor of the busiest device is killed and the
  device stays down for ``DOWN`` seconds; requests in flight on it are retried on the new
  plan. Time to recover (kill -> first request answered by the new plan), the longest gap
  between two answers, requests lost and duplicated (both must be 0; every answer is also
  checked against the model's own output), and the re-plan that re-admits the device when
  it comes back.

Usage: python bench/adaptive.py [--quick] [--pace P]
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench._common import table, write_section  # noqa: E402

TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]
NPU = TRIO[0]
IN_FLIGHT = 6


def build(model, x, pace, *, adaptive, slowed=False):
    from policies.calibrated import CalibratedCostModel
    from policies.roofline import RooflineCostModel
    from scheduler.runtime import Runtime, build_cluster

    cm = None
    if slowed:  # the oracle: a cost model that knows the NPU is 3x slower from the start
        cm = CalibratedCostModel(RooflineCostModel(build_cluster(TRIO)), overheads=False)
        cm.online[NPU] = 3.0
    return Runtime(model, x, devices=TRIO, policy="pipeline",
                   policy_options={"objective": "throughput"}, pace=pace, cost_model=cm,
                   max_in_flight=IN_FLIGHT, adaptive=adaptive, max_retries=3)


def stream(rt, inputs, refs, seconds, actions=(), t0=None):
    """Closed-loop stream for ``seconds`` from wall clock ``t0`` (default now); ``actions``:
    (t, fn) run once at t seconds from t0. Returns (t0, records, submitted) where a record
    is (request, submit, done, version, ok)."""
    done = []
    lock = threading.Lock()
    futs = []
    pending = sorted(actions, key=lambda a: a[0])
    t0 = time.time() if t0 is None else t0
    k = 0
    while time.time() - t0 < seconds:
        while pending and time.time() - t0 >= pending[0][0]:
            pending.pop(0)[1]()
        i = k % len(inputs)
        sub = time.time()
        f = rt.submit(*inputs[i])

        def cb(f, i=i, sub=sub, k=k):
            ok = f.exception() is None and torch.equal(f.result(), refs[i])
            with lock:
                done.append((k, sub, time.time(), getattr(f, "plan_version", None), ok))
        f.add_done_callback(cb)
        futs.append(f)
        k += 1
    for f in futs:
        try:
            f.result(timeout=120)
        except Exception:  # noqa: BLE001 - counted as not ok
            pass
    time.sleep(0.05)
    with lock:
        return t0, sorted(done), len(futs)


def rate(records, t0, a, b):
    """Answers per second with completion time in [t0 + a, t0 + b)."""
    if b <= a:
        return float("nan")
    n = sum(1 for r in records if r[4] and a <= r[2] - t0 < b)
    return n / (b - a)


def event_time(rt, kind, after=0.0):
    for e in rt.adaptive_events():
        if e.kind == kind and e.time >= after:
            return e.time
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter streams")
    ap.add_argument("--pace", type=float, default=60.0,
                    help="real seconds per simulated second (default 60)")
    args = ap.parse_args()
    import ray

    import graphs.models as M
    from executors.ray_actor import sim_resource

    torch.manual_seed(0)
    model = M.pangu_embedded("tiny").eval()
    inputs = [M.example_inputs(model, batch=1, seq_len=16) for _ in range(4)]
    for i, x in enumerate(inputs):  # distinct inputs, so a mixed-up answer is caught
        inputs[i] = (torch.randint(0, 256, x[0].shape, generator=torch.Generator().manual_seed(i)),)
    with torch.no_grad():
        refs = [model(*x) for x in inputs]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1", resources={sim_resource(d): 1 for d in TRIO})
    T = 12.0 if args.quick else 20.0
    T_SLOW = 5.0 if args.quick else 8.0
    WARM = 1.5
    SETTLE = 0.5

    # ----------------------------------------------------------------- drift
    rows = []
    runs = {}
    for name, kw in (("adaptive", {"adaptive": {"cooldown": 1.0}}), ("static", {"adaptive": False}),
                     ("oracle (planned for 3x NPU)", {"adaptive": False, "slowed": True})):
        rt = build(model, inputs[0], args.pace, **kw)
        try:
            t0 = time.time()
            if not name.startswith("oracle"):  # 3x slower from exactly t0 + T_SLOW
                rt.set_slowdown(NPU, schedule=[(T_SLOW, 3.0)], origin=t0)
            t0, rec, n = stream(rt, inputs, refs, T, t0=t0)
            runs[name] = (rt, t0, rec, n)
            plan0 = rt.versions[0].plan if rt.versions else rt.plan
            if name == "adaptive":
                t_drift = event_time(rt, "drift")
                t_dep = event_time(rt, "deployed", after=t0 + 0.1)
                sw = (t_dep - t0) if t_dep else T
                before = rate(rec, t0, WARM, T_SLOW)
                during = rate(rec, t0, T_SLOW, sw)
                after = rate(rec, t0, sw + SETTLE, T)
                rows.append([name, before, during, after, (t_drift - t0 - T_SLOW) if t_drift else "no alarm",
                             (t_dep - t_drift) if (t_dep and t_drift) else "n/a",
                             f"v{rt.plan_version}", n - sum(r[4] for r in rec)])
                adaptive_after = after
            elif name == "static":
                rows.append([name, rate(rec, t0, WARM, T_SLOW), "", rate(rec, t0, T_SLOW + SETTLE, T),
                             "never", "never", "v0", n - sum(r[4] for r in rec)])
            else:
                oracle = rate(rec, t0, WARM, T)
                rows.append([name, "", "", oracle, "", "", "v0", n - sum(r[4] for r in rec)])
        finally:
            rt.shutdown()
    ratio = adaptive_after / oracle
    body = table(["run", "before (req/s)", "during (req/s)", "after (req/s)", "detect (s)",
                  "re-plan (s)", "final plan", "lost"], rows)
    rt_a = runs["adaptive"][0]
    plans = [f"- v{v.version} ({v.reason}): " + ", ".join(
        f"{d.split(':')[1]} {sum(1 for x in v.plan.assignment.values() if x == d)}" for d in TRIO)
        for v in rt_a.versions]
    body += (f"\n\nAfter the re-plan the adaptive runtime reaches **{ratio:.0%}** of the oracle's "
             f"throughput (target >= 90 %); the static plan reaches "
             f"{rows[1][3] / oracle:.0%}. Pace {args.pace:g} real s per simulated s, "
             f"{IN_FLIGHT} requests in flight, NPU 3x slower from t = {T_SLOW:g} s of a "
             f"{T:g} s stream; 'during' runs from the slowdown to the new plan's deployment, "
             f"'after' from {SETTLE:g} s after it. Plans (nodes per device):\n" + "\n".join(plans))

    # --------------------------------------------------------------- failure
    T_KILL = 4.0 if args.quick else 6.0
    DOWN = 3.0 if args.quick else 5.0
    TF = T_KILL + DOWN + (4.0 if args.quick else 6.0)
    rt = build(model, inputs[0], args.pace, adaptive={"probe_interval": 0.25})
    try:
        busiest = collections.Counter(rt.plan.assignment.values()).most_common(1)[0][0]
        t0, rec, n = stream(rt, inputs, refs, TF,
                            [(T_KILL, lambda: rt.inject_failure(busiest, "kill", seconds=DOWN))])
        t_kill = t0 + T_KILL
        first_new = min((r[2] for r in rec if r[4] and r[3] is not None and r[3] >= 1), default=None)
        ends = sorted(r[2] for r in rec if r[4])
        gap = max((b - a for a, b in zip(ends, ends[1:]) if b >= t_kill - 1), default=float("nan"))
        ok = sum(r[4] for r in rec)
        answered = collections.Counter(r[0] for r in rec)
        dup = sum(c - 1 for c in answered.values() if c > 1)
        srec = collections.Counter(r.request for r in rt.requests() if r.status == "completed")
        dup += sum(c - 1 for c in srec.values() if c > 1)
        t_rec = event_time(rt, "recovery", after=t_kill)
        t_back = event_time(rt, "deployed", after=t_rec) if t_rec else None
        st = rt.stats()
        frows = [[busiest.split(":")[1], n, ok, n - ok, dup, (first_new - t_kill) if first_new else "n/a",
                  gap, st.retried, (t_back - t0) if t_back else "not re-admitted", f"v{rt.plan_version}"]]
        fbody = table(["killed", "submitted", "answered correctly", "lost", "duplicated",
                       "recover (s)", "longest gap (s)", "retries", "re-admitted at (s)", "final plan"],
                      frows)
        fbody += (f"\n\nThe device's actor is killed at t = {T_KILL:g} s and cannot restart for "
                  f"{DOWN:g} s; requests in flight on it are retried whole on the re-planned "
                  f"version (one plan per answer). Events: " +
                  "; ".join(f"{e.kind} {e.time - t0:.2f}s" for e in rt.adaptive_events()
                            if e.kind in ("failure", "replan", "deployed", "recovery", "retired")))
    finally:
        rt.shutdown()
    write_section("adaptive", "Adaptive runtime: drift and failure mid-stream",
                  "### NPU 3x slower mid-stream\n\n" + body +
                  "\n\n### Device killed mid-stream\n\n" + fbody)
    ray.shutdown()


if __name__ == "__main__":
    main()
