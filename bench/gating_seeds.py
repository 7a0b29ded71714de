"""Early-exit calibration across training seeds: is the gap to hindsight the method's or the model draw's?

bench/gating.py reports one trained model per task. The compute a certified cascade saves
depends on the model as much as on the calibration (the CNN retrained on another machine
moved by 3-9 points), so this script trains each model with several seeds (the seed sets the
initial weights, the heads and the batch order; everything else as in bench/gating.py) and,
for the max-softmax cascade over every exit, reports per seed:

* one calibration on the validation split, measured on the test set (per-exit thresholds
  certifying the net loss, and the same certified over a window as large as the test set);
* the mean over random re-splits of validation + test into a calibration part (as large as
  the validation split) and a measuring part (as large as the test set): compute saved on the
  measuring part and how often the budget held there;
* hindsight: the best one shared threshold chosen on each measuring part itself;

and the mean over the seeds. Seed 0 is bench/gating.py's model (same cache entry).

Writes the ``gating-seeds`` section of docs/benchmarks.md.

Usage: ``python bench/gating_seeds.py [--seeds 0,1,2] [--models cnn,vit,text] [--boot N] [--smoke]``
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench._common import table, write_section  # noqa: E402
from bench.gating import (BOUND, CONFIGS, DELTA, RATIO, SMOKE, calibrate_with, collect, gate_scores,  # noqa: E402
                          held_on_resplits, hindsight, load_data, make_cascade, resplits, route_costs)
from graphs.vision import count_costs  # noqa: E402
from policies.gating import CalibrationWarning, budget_for_ratio, cascade_route, exit_losses, gate_flops  # noqa: E402
from policies.gating.train import evaluate_exits, load_or_train  # noqa: E402


def one_seed(name: str, cfg, boot: int, delta: float) -> dict:
    """Train (or load) ``cfg``'s model and measure its max-softmax cascade (see the module docstring)."""
    x, y, (gx, gy), (vx, vy), (tx, ty), _ = load_data(name, cfg)
    model, info = load_or_train(cfg, x, y)
    costs = count_costs(model)
    accs = evaluate_exits(model, tx, ty)
    gf, gl = collect(model, gx)
    vf, vl = collect(model, vx)
    tf_, tl = collect(model, tx)
    depths = model.exit_depths
    gates = make_cascade("max_softmax", model, depths, gf, gl)
    gfl = [gate_flops(g, vf[i][:1], vl[i][:1]) for i, g in enumerate(gates.gates.values())]
    rcost = route_costs(costs, depths, gfl)
    cost = torch.tensor(rcost, dtype=torch.float64)
    s_val, s_test = gate_scores(gates, vf, vl), gate_scores(gates, tf_, tl)
    learn = (gate_scores(gates, gf, gl), [exit_losses(o.argmax(1), gl[-1].argmax(1), gy, "net") for o in gl[:-1]])
    budget = budget_for_ratio((vl[-1].argmax(1) == vy).double().mean().item(), RATIO)
    window = ty.shape[0]
    one = {}
    for m in ("per-exit", "per-exit-window"):
        t = calibrate_with(m, s_val, vl, vy, budget, rcost, delta, learn, window)
        one[m] = 1 - cost[cascade_route(s_test, t)].mean().item() / costs.full
    py = torch.cat([vy, ty])
    splits = resplits(vy.shape[0], py.shape[0], boot)
    s_pool = [torch.cat([a, b]) for a, b in zip(s_val, s_test)]
    pl = [torch.cat([a, b]) for a, b in zip(vl, tl)]
    held, saved = {}, {}
    for m in ("per-exit", "per-exit-window"):
        held[m], saved[m] = held_on_resplits(m, s_pool, pl, py, splits, rcost, delta, learn, window,
                                             full=costs.full)
    hind = [hindsight([x_[b] for x_ in s_pool], [o[b] for o in pl], py[b], rcost, costs.full) for _, b in splits]
    return {"accs": accs, "cached": info["cached"], "train_seconds": info["train_seconds"], "one": one,
            "held": held, "saved": {m: statistics.fmean(v) for m, v in saved.items()},
            "hind": statistics.fmean(hind), "test_hind": hindsight(s_test, tl, ty, rcost, costs.full)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--models", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    ap.add_argument("--boot", type=int, default=100, help="re-splits of validation + test per seed")
    ap.add_argument("--smoke", action="store_true", help="tiny models, 5 re-splits, nothing written")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad or not names:
        ap.error(f"unknown model(s) {', '.join(bad) or '(none given)'}; valid choices: {', '.join(CONFIGS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds:
        ap.error("--seeds names no seed")
    if args.smoke:
        args.boot, args.no_write = 5, True
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", CalibrationWarning)
    t0 = time.perf_counter()
    rows, body = [], []
    pct = (lambda v: f"{v:.1%}")
    for name in names:
        per = []
        for s in seeds:
            cfg = dataclasses.replace((SMOKE if args.smoke else CONFIGS)[name], seed=s)
            r = one_seed(name, cfg, args.boot, DELTA)
            per.append(r)
            rows.append([name, s, ", ".join(f"{a:.2%}" for a in r["accs"]), pct(r["one"]["per-exit"]),
                         pct(r["one"]["per-exit-window"]), pct(r["saved"]["per-exit"]),
                         f"{r['held']['per-exit']:.0%}", pct(r["saved"]["per-exit-window"]),
                         f"{r['held']['per-exit-window']:.0%}", pct(r["hind"]),
                         f"{100 * (r['hind'] - r['saved']['per-exit']):.1f}",
                         f"{100 * (r['hind'] - r['saved']['per-exit-window']):.1f}", pct(r["test_hind"])])
            print(f"{name} seed {s} ({'loaded' if r['cached'] else 'trained'}): {rows[-1][2:]}", flush=True)
        mean = (lambda f: statistics.fmean(f(r) for r in per))
        rows.append([name, "mean", "-", pct(mean(lambda r: r["one"]["per-exit"])),
                     pct(mean(lambda r: r["one"]["per-exit-window"])), pct(mean(lambda r: r["saved"]["per-exit"])),
                     f"{mean(lambda r: r['held']['per-exit']):.0%}", pct(mean(lambda r: r["saved"]["per-exit-window"])),
                     f"{mean(lambda r: r['held']['per-exit-window']):.0%}", pct(mean(lambda r: r["hind"])),
                     f"{100 * mean(lambda r: r['hind'] - r['saved']['per-exit']):.1f}",
                     f"{100 * mean(lambda r: r['hind'] - r['saved']['per-exit-window']):.1f}",
                     pct(mean(lambda r: r["test_hind"]))])
    body.append(table(
        ["model", "training seed", "test accuracy per exit, full model last",
         "compute saved, one validation calibration, per-exit", "the same, window certificate",
         f"compute saved, mean over {args.boot} re-splits, per-exit", "budget held on the re-splits, per-exit",
         "compute saved, mean over the re-splits, window certificate", "budget held, window certificate",
         "hindsight on each measuring part (mean)", "gap to hindsight, per-exit (points)",
         "gap to hindsight, window (points)", "hindsight on the test set"], rows))
    body.append(
        f"The max-softmax cascade over every exit, budget accuracy >= {RATIO:.1%} of the full model's, delta "
        f"{DELTA}, {BOUND}; calibration exactly as bench/gating.py's \"per-exit\" column and its window "
        "certificate (over a window as large as the test set). Re-splits: validation and test pooled and "
        f"split {args.boot} times into a calibration part as large as the validation split and a measuring "
        "part as large as the test set; the saving and the budget held are measured on the measuring part, "
        "the hindsight is the best shared threshold chosen on that part itself (not a valid method; the "
        "gap is the mean of hindsight minus the certified saving, split by split). Seed 0 is the model of "
        "bench/gating.py's tables. Each seed trains its model afresh (initial weights, heads, batch order). "
        f"Run time {time.perf_counter() - t0:.0f} s.")
    text = "\n\n".join(body)
    if args.no_write:
        print(text)
    else:
        write_section("gating-seeds", "Early-exit calibration across training seeds", text)


if __name__ == "__main__":
    main()
