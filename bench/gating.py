"""Early-exit gating: accuracy against counted compute and measured wall time, on images and text.

Models: a small CNN with three exits and a ViT with an exit after every block, trained on the
first 50k of Fashion-MNIST's 55k training split; and a byte-level text encoder with an exit
after every block but the last, trained on language identification of Debian's fortune files
(:mod:`graphs.textdata`). Trained weights are cached in ``.cache/gating/``.

For each gate (max-softmax, entropy, patience, learned, and the oracle ceiling) at one exit
or all of them: the learned gates are fitted without labels on inputs the model never
trained on; thresholds are calibrated on the validation split only, for accuracy >= 99.5 %
of the full model's, five ways (per-exit thresholds certifying the net loss by an exact
test, the gate-fitting split choosing between a greedy path of threshold vectors and one
shared threshold -- the default; the path alone; the path with the union bound; one shared
threshold certifying the net loss; one shared threshold certifying the harm, the first
method); and on the test set the script reports exit rate, accuracy,
compute saved (counted FLOPs), wall time saved (locally at batch 1, and through
``Runtime.submit`` as a stream and one at a time), how often the budget holds and the compute
saved in expectation (over random re-splits of validation + test into calibration and
measurement), and that batched ``run_gated`` routes every input as the offline scores say.

Writes the ``gating`` section of docs/benchmarks.md and docs/gating.png.

Usage: ``python bench/gating.py [--quick] [--train-only] [--no-runtime] [--models cnn,vit,text]
[--wall-samples N] [--boot N] [--delta D]``
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench._common import ROOT, table, write_section  # noqa: E402
from graphs.datasets import fashion_mnist_available, fashion_mnist_splits  # noqa: E402
from graphs.vision import count_costs  # noqa: E402
from policies.gating import (SEQUENCES, Cascade, CalibrationWarning, LearnedGate, OracleGate, budget_for_ratio,  # noqa: E402
                             calibrate_cascade, calibrate_exits, cascade_route, exit_losses, gate_flops,
                             make_gate, pool_hidden, run_gated)
from policies.gating.train import TrainConfig, evaluate_exits, load_or_train  # noqa: E402

# the models train on the first 50k of the 55k training split; the other 5k fit the learned
# gates (inputs the exit heads never trained on); the 5k validation split calibrates
N_TRAIN = 50_000
CONFIGS = {
    "cnn": TrainConfig("cnn", epochs=4, lr=3e-3, n_train=N_TRAIN),
    "vit": TrainConfig("vit", model_kwargs=(("patch", 7), ("dim", 64), ("depth", 6)), epochs=6, lr=2e-3,
                       n_train=N_TRAIN),
    # byte-level language identification on Debian's fortune files (graphs.textdata)
    "text": TrainConfig("text", epochs=3, lr=3e-3),
}
# --smoke: the same pipeline on tiny, briefly trained models (checks the code path; numbers meaningless)
SMOKE = {
    "cnn": TrainConfig("cnn", epochs=1, n_train=2000),
    "vit": TrainConfig("vit", model_kwargs=(("depth", 3),), epochs=1, n_train=2000),
    "text": TrainConfig("text", model_kwargs=(("depth", 3),), epochs=1, n_train=2000),
}
RATIO, DELTA, BOUND, UNION = 0.995, 0.1, "clopper-pearson", "clopper-pearson-union"
GRID = 100  # score quantiles per exit on the per-exit calibration's path


@torch.no_grad()
def collect(model, x, batch=1000):
    """Pooled hidden features per exit, exit logits per exit, final logits (all on CPU)."""
    feats, logits = None, None
    for i in range(0, x.shape[0], batch):
        hid, outs = model.forward_hidden(x[i:i + batch])
        f = [pool_hidden(model.gate_view(h)) for h in hid]
        feats = [f] if feats is None else feats + [f]
        logits = [outs] if logits is None else logits + [outs]
    k = len(feats[0])
    return ([torch.cat([b[j] for b in feats]) for j in range(k)],
            [torch.cat([b[j] for b in logits]) for j in range(k + 1)])


def gate_scores(gates: Cascade, feats, logits, labels=None):
    out, prev = [], []
    for j, (d, g) in enumerate(gates.gates.items()):
        out.append(g.scores(feats[j], logits[j], previous=prev, labels=labels).double())
        prev = prev + [logits[j]]
    return out


def route_costs(costs, depths, gflops) -> list[float]:
    """FLOPs of a sample leaving at each exit of ``depths`` (the stem and stages run, every exit
    head and gate evaluated on the way), then of one running the full model."""
    per_exit = [costs.until(d) + sum(costs.exit_flops[e] + gflops[i] for i, e in enumerate(depths[:j + 1]))
                for j, d in enumerate(depths)]
    per_exit.append(costs.full + sum(costs.exit_flops[e] + gflops[i] for i, e in enumerate(depths)))
    return per_exit


def evaluate(first, feats, logits, y, costs, gates: Cascade, gflops):
    """Accuracy, exit rate and mean FLOPs of a routing (first = exit index per sample)."""
    k = len(gates.depths)
    preds = torch.stack([o.argmax(1) for o in logits])  # (k+1, n)
    pred = preds.gather(0, first[None]).squeeze(0)
    flops = torch.tensor(route_costs(costs, gates.depths, gflops), dtype=torch.float64)[first]
    return {"acc": (pred == y).double().mean().item(), "exit_rate": (first < k).double().mean().item(),
            "flops": flops.mean().item()}


def calibrate_with(method: str, scores, logits, y, budget: float, rcost, delta: float, learn=None,
                   window: int | None = None):
    """Thresholds from one calibration method on ``(scores, logits, y)``:

    * ``"today"``: one shared threshold certifying the harm rate (the first method);
    * ``"shared-net"``: one shared threshold certifying the net accuracy loss;
    * ``"per-exit"``: one threshold per exit certifying the net loss (Learn-then-Test: on
      ``learn``, scores and net losses of the gate-fitting split, which the calibration data
      never overlaps, a greedy path of threshold vectors is learned and compared with one
      shared threshold; the sequence certifying the cheaper vector there is tested), by the
      exact test;
    * ``"per-exit-window"``: the same, certified over a window of ``window`` new inputs
      (``calibrate_exits(window=...)``: the loss counted over them stays within the budget
      with probability ``1 - delta``, not only its mean);
    * ``"per-exit-path"``: the same with the greedy path always (before the choice);
    * ``"per-exit-union"``: the path, the net loss bounded by the union of two
      Clopper-Pearson bounds (the method before the exact test).
    """
    risk = "harm" if method == "today" else "net"
    losses = [exit_losses(o.argmax(1), logits[-1].argmax(1), y, risk) for o in logits[:-1]]
    if method.startswith("per-exit"):
        bound = UNION if method == "per-exit-union" else BOUND
        seqs = ("path",) if method in ("per-exit-path", "per-exit-union") else SEQUENCES
        return calibrate_exits(scores, losses, budget, rcost, delta, bound, grid=GRID, learn=learn,
                               sequences=seqs, window=window if method == "per-exit-window" else None).vector
    return calibrate_cascade(scores, losses, budget, delta, BOUND).threshold


def net_loss(first: torch.Tensor, logits, y) -> float:
    """Accuracy lost against the full model by a routing (negative: a gain)."""
    preds = torch.stack([o.argmax(1) for o in logits])
    pred = preds.gather(0, first[None]).squeeze(0)
    return ((preds[-1] == y).double().mean() - (pred == y).double().mean()).item()


def held_on_subsets(method, s_val, vl, vy, s_test, tl, ty, rcost, rounds: int, delta: float,
                    learn=None) -> float:
    """How often the accuracy budget holds recalibrating on random 80 % subsets of the
    validation split and measuring on the whole test set."""
    g = torch.Generator().manual_seed(1)
    nv, ok = vy.shape[0], 0
    for _ in range(rounds):
        idx = torch.randperm(nv, generator=g)[:int(0.8 * nv)]
        bud = budget_for_ratio((vl[-1][idx].argmax(1) == vy[idx]).double().mean().item(), RATIO)
        t = calibrate_with(method, [x[idx] for x in s_val], [o[idx] for o in vl], vy[idx], bud, rcost, delta,
                           learn)
        ok += int(net_loss(cascade_route(s_test, t), tl, ty) <= bud)
    return ok / rounds


def resplits(n_cal: int, n: int, rounds: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``rounds`` random splits of ``n`` pooled samples into ``n_cal`` to calibrate on and the
    rest to measure on (the same splits for every method and gate: paired comparisons)."""
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(rounds):
        p = torch.randperm(n, generator=g)
        out.append((p[:n_cal], p[n_cal:]))
    return out


def held_on_resplits(method, s_pool, pl, py, splits, rcost, delta: float, learn=None,
                     window: int | None = None, *, full: float) -> tuple[float, list[float]]:
    """How often the accuracy budget holds calibrating on the first part of each split of the
    pooled validation and test sets and measuring on the rest (exchangeable by construction),
    and the compute each calibration saves on its measuring part (against ``full`` FLOPs per
    input)."""
    ok_b, saved = 0, []
    cost = torch.tensor(rcost, dtype=torch.float64)
    for a, b in splits:
        bud = budget_for_ratio((pl[-1][a].argmax(1) == py[a]).double().mean().item(), RATIO)
        t = calibrate_with(method, [x[a] for x in s_pool], [o[a] for o in pl], py[a], bud, rcost, delta, learn,
                           window)
        first = cascade_route([x[b] for x in s_pool], t)
        ok_b += int(net_loss(first, [o[b] for o in pl], py[b]) <= bud)
        saved.append(1 - cost[first].mean().item() / full)
    return ok_b / len(splits), saved


def hindsight(scores, logits, y, rcost, full: float, points: int = 60) -> float:
    """The most compute one threshold shared by every exit saves at accuracy >= RATIO of the
    full model's, chosen on ``(scores, logits, y)`` themselves (not a valid method: the
    target to come close to)."""
    cost = torch.tensor(rcost, dtype=torch.float64)
    ref = (logits[-1].argmax(1) == y).double().mean().item()
    preds = torch.stack([o.argmax(1) for o in logits])
    allsc = torch.cat(scores).unique()
    qs = allsc if allsc.numel() <= points else torch.quantile(
        allsc, torch.linspace(0, 1, points, dtype=torch.float64))
    best = 0.0
    for t in qs.tolist():
        first = cascade_route(scores, t)
        acc = (preds.gather(0, first[None]).squeeze(0) == y).double().mean().item()
        if acc >= RATIO * ref:
            best = max(best, 1 - cost[first].mean().item() / full)
    return best


def _held(rate: float, rounds: int) -> str:
    """A held rate with its binomial standard error over ``rounds`` splits."""
    return f"{rate:.0%} +- {100 * math.sqrt(rate * (1 - rate) / rounds):.0f}"


def _mean_saved(saved: list[float]) -> str:
    """The mean compute saved over the splits, +- its standard error, and the standard
    deviation of one split's."""
    if len(saved) < 2:
        return f"{statistics.fmean(saved):.1%}" if saved else "-"
    sd = statistics.stdev(saved)
    return f"{statistics.fmean(saved):.1%} +- {100 * sd / math.sqrt(len(saved)):.1f} (sd {100 * sd:.1f})"


def make_cascade(kind, model, depths, gate_feats, gate_logits):
    if kind == "oracle":
        return Cascade({d: OracleGate() for d in depths})
    if kind != "learned":
        return Cascade({d: make_gate(kind) for d in depths})
    gates = {}
    idx = model.exit_depths
    for d in depths:
        j = idx.index(d)
        g = LearnedGate(gate_feats[j].shape[1], model.num_classes)
        gates[d] = g.fit(gate_feats[j], gate_logits[j], gate_logits[-1], epochs=20)
    return Cascade(gates)


@torch.no_grad()
def wall_times(model, gates: Cascade, x, repeats=3):
    """Median over repeats of the summed batch-1 latency: (gated, full), interleaved."""
    g_tot, f_tot = [], []
    for _ in range(repeats):
        tg = tf = 0.0
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            t = time.perf_counter()
            run_gated(model, gates, xi)
            tg += time.perf_counter() - t
            t = time.perf_counter()
            model(xi)
            tf += time.perf_counter() - t
        g_tot.append(tg)
        f_tot.append(tf)
    return statistics.median(g_tot), statistics.median(f_tot)


def in_process(pm, x, group: int = 16) -> float:
    """Seconds per request to run the runtime's own partitions (``pm``: its partitioned
    model) in this process, without Ray: groups of ``group`` requests through
    :meth:`executors.ray_actor.ExecutorHost.run_group`, each exit's decisions filtering the
    stages after it, as the dispatcher sends them. What the runtime could reach with no
    dispatch cost at all."""
    from executors.ray_actor import ExecutorHost

    host = ExecutorHost("cpu")
    for p in pm.parts:
        host.load(p)
    exit_at = {e.stage: e for e in getattr(pm, "exits", ())}
    (name,) = pm.input_names
    n = x.shape[0]
    t = time.perf_counter()
    for i in range(0, n, group):
        values = {name: [x[j:j + 1] for j in range(i, min(n, i + group))]}
        rids, skips = tuple(range(len(values[name]))), []
        for k, p in enumerate(pm.parts):
            cols = [values[v] for v in (*skips, *p.inputs)]
            out = host.run_group(p.id, rids, None, len(skips), *cols)
            values.update(zip(p.outputs, out[:-1]))
            if k in exit_at:
                skips.append(exit_at[k].go)
    return (time.perf_counter() - t) / n


def runtime_wall(model, gates: Cascade, x, repeats: int = 3) -> dict[str, float]:
    """Wall time through ``Runtime.submit`` on the host CPU executor, gated against ungated,
    in two modes: ``stream`` (every input submitted at once, as a server under load sees
    them; seconds from the first submit to the last result) and ``sync`` (one request at a
    time, ``run``, gated and ungated interleaved request by request: the summed latency).
    Medians of ``repeats`` interleaved repeats; every gated result is checked against
    local :func:`run_gated`. Returns seconds per request for each mode and runtime, the
    exit rate and the gated runtime's mean group size in the stream."""
    from scheduler.runtime import Runtime

    ex, n = x[:1], x.shape[0]
    xs = [x[i:i + 1] for i in range(n)]
    with Runtime(model, ex, devices=["cpu"], gate=gates, max_in_flight=64) as rg, \
            Runtime(model, ex, devices=["cpu"], max_in_flight=64) as rf:
        for r in (rg, rf):  # warm-up both
            r.map([(xi,) for xi in xs[:50]])
        refs = [run_gated(model, gates, xi).logits for xi in xs]

        def stream(r, check=False):
            t = time.perf_counter()
            futs = [r.submit(xi) for xi in xs]
            outs = [f.result() for f in futs]
            took = time.perf_counter() - t
            if check:
                for out, ref in zip(outs, refs):
                    torch.testing.assert_close(out, ref)
            return took

        sg, sf = [], []
        for i in range(repeats):
            rg.reset_stats()
            sg.append(stream(rg, check=(i == 0)))
            sf.append(stream(rf))
        group, rate = rg.stats().group_size, rg.stats().exit_rate
        pg, pf = [], []
        for _ in range(repeats):
            pg.append(in_process(rg.partitioned, x))
            pf.append(in_process(rf.partitioned, x))
        yg, yf = [], []
        for _ in range(repeats):
            tg = tf = 0.0
            for xi, ref in zip(xs, refs):
                t = time.perf_counter()
                out = rg.run(xi)
                tg += time.perf_counter() - t
                t = time.perf_counter()
                rf.run(xi)
                tf += time.perf_counter() - t
                torch.testing.assert_close(out, ref)
            yg.append(tg)
            yf.append(tf)
    med = statistics.median
    return {"stream_gated": med(sg) / n, "stream_full": med(sf) / n, "sync_gated": med(yg) / n,
            "sync_full": med(yf) / n, "exit_rate": rate, "group": group,
            "inproc_gated": med(pg), "inproc_full": med(pf)}


def load_data(name: str, cfg):
    """``(train x, train y, gate (x, y), val (x, y), test (x, y), description)`` for a model."""
    if cfg.model == "text":
        from graphs.textdata import LANGUAGES, fortunes_available, load_language_id
        if not fortunes_available():
            sys.exit("the fortune files are missing: install the Debian fortunes packages (make data)")
        sp = load_language_id()
        tr = sp["train"] if cfg.n_train is None else sp["train"].subset(cfg.n_train)
        desc = (f"language identification of {len(LANGUAGES)} languages ({', '.join(LANGUAGES)}) on Debian's "
                f"fortune files, UTF-8 bytes truncated to {sp['train'].x.shape[1]}; {len(sp['train'])} train, "
                f"{len(sp['gate'])} gate-fitting, {len(sp['val'])} validation, {len(sp['test'])} test texts")
        return tr.x, tr.y, (sp["gate"].x, sp["gate"].y), (sp["val"].x, sp["val"].y), (sp["test"].x, sp["test"].y), desc
    if not fashion_mnist_available():
        sys.exit("Fashion-MNIST not found: install the Debian package dataset-fashion-mnist (make data)")
    data = fashion_mnist_splits()
    tr, va, te = data["train"], data["val"], data["test"]
    n = cfg.n_train or tr.x.shape[0]
    desc = (f"Fashion-MNIST: the model trains on {n} images, the learned gates fit on the other "
            f"{tr.x.shape[0] - n} of the training split, {va.x.shape[0]} validation, {te.x.shape[0]} test images")
    return tr.x, tr.y, (tr.x[n:], tr.y[n:]), (va.x, va.y), (te.x, te.y), desc


METHODS = ("per-exit", "per-exit-window", "per-exit-path", "per-exit-union", "shared-net", "today")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer wall-time samples and calibration resamples")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--no-runtime", action="store_true", help="skip the wall-time measurements (offline numbers only)")
    ap.add_argument("--wall-samples", type=int, default=500)
    ap.add_argument("--boot", type=int, default=100, help="calibration resamples")
    ap.add_argument("--delta", type=float, default=DELTA)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny models, few samples, nothing written")
    ap.add_argument("--models", default=",".join(CONFIGS),
                    help=f"comma-separated subset of {', '.join(CONFIGS)} (a subset writes nothing)")
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad or not names:
        ap.error(f"unknown model(s) {', '.join(bad) or '(none given)'}; valid choices: {', '.join(CONFIGS)}")
    configs = {n: (SMOKE if args.smoke else CONFIGS)[n] for n in names}
    if set(names) != set(CONFIGS) or args.no_runtime or args.delta != DELTA:
        args.no_write = True
    if args.smoke:
        args.no_write = True
        args.wall_samples, args.boot = 50, 5
    if args.quick:
        args.wall_samples, args.boot = 200, 20
    delta = args.delta
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine spin and run ~10x slower
    torch.manual_seed(0)
    warnings.simplefilter("ignore", CalibrationWarning)  # an uncertified resample simply never exits
    models = {}
    for name, cfg in configs.items():
        x, y, gx, val, test, desc = load_data(name, cfg)
        m, info = load_or_train(cfg, x, y)
        models[name] = (m, info, gx, val, test, desc)
        print(f"{name}: {'loaded' if info['cached'] else 'trained'} ({info['train_seconds']:.0f} s of training)",
              flush=True)
    if args.train_only:
        return

    body, plots = [], {}
    if not args.no_runtime:
        import ray

        from scheduler.runtime import _init_loopback_ray

        if not ray.is_initialized():  # one embedded Ray for every Runtime of the run
            _init_loopback_ray(num_cpus=2, resources={})
    for name, (model, info, (gx, gy), (vx, vy), (tx, ty), desc) in models.items():
        t0 = time.perf_counter()
        costs = count_costs(model)
        accs = evaluate_exits(model, tx, ty)
        gf, gl = collect(model, gx)
        vaf, val_ = collect(model, vx)
        tef, tel = collect(model, tx)
        full_val = (val_[-1].argmax(1) == vy).double().mean().item()
        full_test = accs[-1]
        budget = budget_for_ratio(full_val, RATIO)
        depths = model.exit_depths
        # re-splits of validation + test pooled: calibrate on as many as the validation split
        # holds, measure on the rest (as many as the test set); the window certificate's window
        py = torch.cat([vy, ty])
        splits = resplits(vy.shape[0], py.shape[0], args.boot)
        window = ty.shape[0]
        variants = [("max_softmax", depths[:1]), ("max_softmax", depths), ("entropy", depths),
                    ("patience", depths), ("learned", depths[:1]), ("learned", depths), ("oracle", depths)]
        rows, curves = [], {}
        for kind, ds in variants:
            gates = make_cascade(kind, model, ds, gf, gl)
            sel = [model.exit_depths.index(d) for d in ds]
            vf, vl = [vaf[j] for j in sel], [val_[j] for j in sel] + [val_[-1]]
            tf_, tl = [tef[j] for j in sel], [tel[j] for j in sel] + [tel[-1]]
            gfl = [gate_flops(g, vf[i][:1], vl[i][:1]) for i, g in enumerate(gates.gates.values())]
            rcost = route_costs(costs, ds, gfl)
            label = f"{kind} @{','.join(map(str, ds))}"
            other = {}
            gsel_f, gsel_l = [gf[j] for j in sel], [gl[j] for j in sel] + [gl[-1]]
            if kind == "oracle":
                threshold, held, held_x, held_today, held_w, splits_x, splits_w, splits_h = 0.5, *("-",) * 7
                s_test = gate_scores(gates, tf_, tl, labels=ty)
            else:
                s_val = gate_scores(gates, vf, vl)
                s_test = gate_scores(gates, tf_, tl)
                # the per-exit path is learned on the gate-fitting split (disjoint from validation)
                learn = (gate_scores(gates, gsel_f, gsel_l),
                         [exit_losses(o.argmax(1), gsel_l[-1].argmax(1), gy, "net") for o in gsel_l[:-1]])
                ths = {m: calibrate_with(m, s_val, vl, vy, budget, rcost, delta, learn, window) for m in METHODS}
                threshold = ths["per-exit"]
                for m in METHODS[1:]:
                    rr = evaluate(cascade_route(s_test, ths[m]), tf_, tl, ty, costs, gates, gfl)
                    other[m] = 1 - rr["flops"] / costs.full
                held = held_on_subsets("per-exit", s_val, vl, vy, s_test, tl, ty, rcost, args.boot, delta, learn)
                held = f"{held:.0%}"
                s_pool = [torch.cat([a, b]) for a, b in zip(s_val, s_test)]
                pl = [torch.cat([a, b]) for a, b in zip(vl, tl)]
                (hx, sx), (ht, _), (hw, sw) = (
                    held_on_resplits(m, s_pool, pl, py, splits, rcost, delta, learn, window, full=costs.full)
                    for m in ("per-exit", "today", "per-exit-window"))
                held_x, held_today, held_w = (_held(h, args.boot) for h in (hx, ht, hw))
                hind = [hindsight([x[b] for x in s_pool], [o[b] for o in pl], py[b], rcost, costs.full)
                        for _, b in splits]
                splits_x, splits_w, splits_h = _mean_saved(sx), _mean_saved(sw), _mean_saved(hind)
            first = cascade_route(s_test, threshold)
            r = evaluate(first, tf_, tl, ty, costs, gates, gfl)
            gates.set_threshold(threshold)
            n = min(args.wall_samples, tx.shape[0])
            # check that batched gated execution routes exactly as the offline scores say
            out = run_gated(model, gates, tx[:n], labels=ty[:n] if kind == "oracle" else None)
            k = len(ds)
            want = torch.tensor([ds[j] if j < k else 0 for j in first[:n].tolist()])
            mismatch = int((out.exit_depth != want).sum())
            rt_stream = rt_sync = rt_inproc = "-"
            stream_frac = wall_frac = None
            wall = "-"
            if kind != "oracle" and not args.no_runtime:
                tg, tfull = wall_times(model, gates, tx[:n])
                wall_frac = 1 - tg / tfull
                wall = f"{wall_frac:.1%}"
                if kind != "patience":  # patience needs earlier exits' logits: not servable
                    w = runtime_wall(model, gates, tx[:n])
                    stream_frac = 1 - w["stream_gated"] / w["stream_full"]
                    rt_stream = (f"{stream_frac:.1%} ({1e3 * w['stream_gated']:.3f} vs "
                                 f"{1e3 * w['stream_full']:.3f} ms; {w['group']:.1f}/group)")
                    rt_sync = (f"{1 - w['sync_gated'] / w['sync_full']:.1%} ({1e3 * w['sync_gated']:.2f} "
                               f"vs {1e3 * w['sync_full']:.2f} ms)")
                    rt_inproc = (f"{1 - w['inproc_gated'] / w['inproc_full']:.1%} ({1e3 * w['inproc_gated']:.3f} "
                                 f"vs {1e3 * w['inproc_full']:.3f} ms)")
            # sweep one shared threshold on test for the accuracy-compute curve (hindsight)
            allsc = torch.cat(s_test).unique()
            qs = allsc if allsc.numel() <= 60 else torch.quantile(allsc, torch.linspace(0, 1, 60, dtype=torch.float64))
            pts = []
            for t in list(qs.tolist()) + [math.inf]:
                rr = evaluate(cascade_route(s_test, t), tf_, tl, ty, costs, gates, gfl)
                pts.append((1 - rr["flops"] / costs.full, rr["acc"] / full_test))
            curves[label] = (pts, (1 - r["flops"] / costs.full, r["acc"] / full_test), wall_frac, stream_frac)
            best = max((c for c, a_ in pts if a_ >= RATIO), default=0.0)
            ths = threshold if isinstance(threshold, (tuple, list)) else (threshold,)
            rows.append([label, ", ".join(f"{t:.4g}" for t in ths), f"{r['exit_rate']:.1%}", f"{r['acc']:.2%}",
                         f"{r['acc'] / full_test:.2%}", f"{1 - r['flops'] / costs.full:.1%}",
                         *(f"{other[m]:.1%}" if m in other else "-" for m in METHODS[1:]), f"{best:.1%}",
                         wall, rt_inproc, rt_stream, rt_sync, held, held_x, held_w, held_today, splits_x, splits_w,
                         splits_h, mismatch])
            print(f"{name} {label}: {rows[-1][1:9]}", flush=True)
        plots[name] = curves
        secs = time.perf_counter() - t0
        cfg = configs[name]
        body.append(
            f"### {name}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters, "
            f"{costs.full / 1e6:.2f} MFLOPs/input, exits at depths {model.exit_depths} of {model.num_stages}\n\n"
            f"Data: {desc}. Training: {info['train_seconds']:.0f} s ({cfg.epochs} epochs, {cfg.mode}, "
            f"{'loaded from cache' if info['cached'] else 'trained in this run'}). Test accuracy per exit "
            f"{', '.join(f'{a:.2%}' for a in accs[:-1])}; full model {full_test:.2%} (validation {full_val:.2%}). "
            f"Budget: accuracy >= 99.5 % of the full model's, i.e. net loss <= {budget:.4f}; delta {delta}, {BOUND}. "
            f"Evaluation took {secs:.0f} s.\n\n"
            + table(["gate @ exits", "thresholds (per exit)", "exit rate", "test acc", "% of full",
                     "compute saved", f"compute saved, per-exit, certified over a window of {window} inputs",
                     "compute saved, per-exit, the greedy path only",
                     "compute saved, per-exit path, net loss by the union bound (before the exact test)",
                     "compute saved, shared threshold certifying net loss",
                     "compute saved, first calibration (shared threshold certifying harm)",
                     "hindsight: max compute saved at >= 99.5 % (shared threshold, test sweep)",
                     "wall saved (batch 1, local)",
                     "wall saved, the runtime's partitions in process, no Ray (per request)",
                     "wall saved via Runtime.submit, stream (per request: gated vs full)",
                     "wall saved via Runtime.submit, one at a time (per request: gated vs full)",
                     "budget held (validation subsets)",
                     "budget held, re-splits of validation + test (exchangeable; +- 1 s.e.)",
                     f"window certificate ({window} inputs): budget held, re-splits",
                     "first calibration (harm): budget held, re-splits",
                     "compute saved on the measuring parts, per-exit (mean over the re-splits +- 1 s.e.; sd of one)",
                     f"compute saved on the measuring parts, window certificate ({window} inputs)",
                     "hindsight on each measuring part (mean +- 1 s.e.; sd of one)",
                     "route mismatches"], rows))
    body.append(
        "Calibration (the first columns): one threshold per exit, certifying the *net* accuracy loss "
        "against the full model (harm minus help: an exit that is right where the full model is wrong "
        "counts for it), by Learn-then-Test: the gate-fitting split (labelled here, never used for "
        "calibration) learns a greedy path of threshold vectors (each step lowers the exit that saves the "
        f"most FLOPs per unit of added risk: the mean net loss plus the margin the test will demand at the "
        f"vector's rate of discordant samples, measured on the test itself, over the window for the window "
        f"column; {GRID} score quantiles per exit) and chooses between it and one "
        "threshold shared by every exit (whichever certifies the cheaper vector on that split; "
        "`calibrate_exits(sequences=...)`), and the whole validation "
        "split tests along the chosen sequence (fixed-sequence testing; each step is Berger and Boos's exact unconditional "
        "test of \"net loss > budget\" on the harm and help counts, the tail maximised over a "
        "Clopper-Pearson confidence set at delta/100 for the rate of discordant samples: "
        "`policies.gating.net_p_value`). The next column certifies, the same way, the loss counted over "
        "a window of new inputs as large as the test set "
        "(`calibrate_exits(window=...)`, `policies.gating.window_test`): that it stays within the budget "
        "with probability 1 - delta, not only its mean; the window's own sampling noise then takes part of "
        "the budget. The next column tests the greedy path always (this bench's "
        "method before the choice); the one after tests the path with the net loss "
        "bounded by the harm's Clopper-Pearson upper bound minus the help's lower bound at delta/2 each "
        "(a union bound, this bench's method before the exact test). The two after calibrate one shared "
        "threshold on the whole validation split, certifying the net loss (exact test), or (the first "
        "method) only the harm. "
        "Compute saved counts the stem and stages run, every exit head evaluated (including on inputs that "
        "go on) and the gates' own FLOPs (matmuls/convs counted by FlopCounterMode; softmax and pooling are "
        "not counted). The learned gates are fitted on inputs neither the model nor its exit heads trained "
        "on (the gate-fitting split), without labels. Wall saved: 1 - (sum of batch-1 latencies with gating) "
        f"/ (sum without), the first {args.wall_samples} test inputs, median of 3 interleaved repeats, same "
        f"process. Budget held: the fraction of {args.boot} recalibrations on random 80 % subsets of the "
        "validation split whose test accuracy loss stays within that calibration's budget. Re-splits: the "
        f"validation and test sets pooled and split {args.boot} times at random into a calibration part as "
        "large as the validation split and a measuring part as large as the test set (the same splits for "
        "every gate and method); each calibration is measured on its own measuring part (exchangeable by "
        "construction, and each split a fresh draw of both parts, not one fixed pool of measurements). "
        "Budget held: the fraction of splits whose measured loss stays within that calibration's budget, "
        "+- one binomial standard error. The certificate bounds the *population* loss; the measuring part "
        "adds its own sampling noise, so a certificate that is tight (population loss just inside the "
        "budget) shows somewhat below 1 - delta here, a loose one above; the window certificate's column "
        "measures exactly what it certifies. Compute saved on the measuring parts: the mean over the splits "
        "+- its standard error, i.e. the procedure's expected saving, and the standard deviation (sd) of one "
        "split's, i.e. how far one calibration (such as the validation split's in the columns on the left) "
        "falls from it by the luck of the draw. Hindsight on each measuring part: the best one shared "
        "threshold chosen on that part itself, the same way as the hindsight column; the target is to come "
        "within 3 points of it in expectation with the budget held on >= 90 % of the splits. "
        "The hindsight column picks one shared threshold on the test set itself (not a valid method). "
        "Route mismatches: inputs whose exit in batched "
        "`run_gated` differs from the offline routing (must be 0; for the text model the batch is padded, "
        "and masked pooling keeps each text's route). The oracle exits exactly where the exit is right; it "
        "reads labels and is a ceiling, not a gate. Runtime.submit columns: the same inputs through a "
        "gated and an ungated `Runtime` (one real `cpu` executor actor each, embedded Ray, default request "
        "coalescing), medians of 3 interleaved repeats; every gated result is checked against local "
        "`run_gated`. *Stream*: every input submitted at once (up to 64 in flight), wall time from the first "
        "submit to the last result, per request (mean group size shown for the gated runtime). *One at a "
        "time*: synchronous `run`, gated and ungated interleaved request by request; every call then pays "
        "Ray's per-call overhead alone (about 0.5-1 ms here), large next to these sub-millisecond models, "
        "and a gated request makes two calls, so gating does not pay off one request at a time here. *In "
        "process, no Ray*: the very partitions both runtimes run, called in this process through "
        "`ExecutorHost.run_group` in groups of 16: what the runtime would reach with no dispatch cost. "
        "Patience is not servable (it needs earlier exits' logits inside one partition).")
    if not args.no_write:
        _plot(plots)
    text = "\n\n".join(body) + "\n\n![accuracy vs compute](gating.png)"
    if args.no_write:
        print(text)
    else:
        write_section("gating", "Early-exit gating (Fashion-MNIST CNN and ViT, text language identification)", text)


def _plot(plots) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(plots), figsize=(6.5 * len(plots), 9), squeeze=False)
    for col, (name, curves) in enumerate(plots.items()):
        ax, axw = axes[0][col], axes[1][col]
        for label, (pts, point, wall, stream) in curves.items():
            if label.startswith("oracle"):  # a fixed rule, not a sweep: one point
                ax.plot(100 * point[0], 100 * point[1], "*", ms=12, color="k", label=label + " (ceiling)")
                continue
            xs, ys = zip(*sorted(pts))
            line, = ax.plot([100 * v for v in xs], [100 * v for v in ys], label=label, lw=1.2)
            ax.plot(100 * point[0], 100 * point[1], "o", color=line.get_color())
            if wall is not None:
                axw.plot(100 * wall, 100 * point[1], "o", mfc="none", color=line.get_color(),
                         label=label + " (local, batch 1)")
            if stream is not None:
                axw.plot(100 * stream, 100 * point[1], "s", color=line.get_color(),
                         label=label + " (Runtime.submit stream)")
        for a in (ax, axw):
            a.axhline(100 * RATIO, color="gray", lw=0.8, ls=":")
            a.set_ylabel("test accuracy (% of full model)")
            a.legend(fontsize=7)
        ax.set_ylim(95, 105)
        ax.set_xlabel("compute saved (% of full-model FLOPs, counted)")
        ax.set_title(f"{name}: threshold sweep on test; dots = calibrated on validation", fontsize=9)
        axw.set_xlabel("wall time saved (%, measured: local batch-1 calls and Runtime.submit stream)")
        axw.set_title(f"{name}: calibrated thresholds, measured wall time", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
    fig.savefig(os.path.join(ROOT, "docs", "gating.png"), dpi=110)


if __name__ == "__main__":
    main()
