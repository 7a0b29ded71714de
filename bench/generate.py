"""Generation benchmarks: SmolLM2-135M (real weights) through ``Runtime.generate`` on this
CPU, and decode tokens/s and tokens/J of the 1b config and SmolLM2 on the simulated edge trio.

Run: ``.venv/bin/python bench/generate.py`` (``--quick``: fewer tokens and repeats, writes
nothing). Writes two sections of docs/benchmarks.md.

1. ``generate-cpu``. Prompt 128 tokens, output 128 tokens, greedy. Side by side in one run:
   the same model generated directly in PyTorch in this process
   (:func:`graphs.decoding.generate_local`: prefill, then one decode step per token with a
   KV cache; no runtime, no Ray), ``Runtime.generate`` with one ``cpu`` executor, and with
   the model split over two CPU executors (``cpu:0``, ``cpu:1``, the ``pipeline`` policy).
   Thread budget: this machine has 2 cores. Direct PyTorch uses 2 threads; the single
   executor uses 2 threads; each of the two executors 1 thread. Batch 1: one request at a
   time, median over repeats, prefill tok/s = prompt / time to first token, decode tok/s =
   (output - 1) / (time after the first token). 8 in flight: 8 requests submitted at once,
   aggregate generated tok/s over the wall time of the whole batch; the direct baseline
   generates the 8 one after the other (plain PyTorch has no scheduler to batch them).
2. ``generate-edge``. The decoder (fp16) placed for decode on the simulated edge trio
   (Atlas 200I A2-class NPU, Jetson Orin NX, Cortex-A76) and on each device alone:
   predicted decode tok/s (1 / the plan's makespan of one decode step at context 192) and
   tok/J (the plan's energy), and the replay of prompt 128 + 128 tokens
   (:func:`scheduler.generation_sim.simulate_generation`), beside the published figures
   of openPangu-Embedded-1B on an Atlas 200I A2.
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


def _prompt(tok, n: int) -> list[int]:
    text = ("The history of computing is a story of machines that got smaller, faster and "
            "cheaper, and of people who found new things to do with them. ") * 20
    ids = tok.encode(text)
    return ids[:n]


def _direct(model, prompt: list[int], n: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of generate_local, measured around its steps."""
    from graphs.decoding import DecoderShard, block_names
    from graphs.sampling import SamplingParams, sample

    shard = DecoderShard(model, 0, len(block_names(model.config)))
    p = SamplingParams()
    with torch.no_grad():
        kv = shard.new_cache(len(prompt) + n)
        t0 = time.perf_counter()
        tok = int(sample(shard(torch.tensor([prompt]), [kv]), [p], [0])[0])
        t1 = time.perf_counter()
        for i in range(1, n):
            tok = int(sample(shard(torch.tensor([[tok]]), [kv]), [p], [i])[0])
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def bench_cpu(quick: bool) -> str:
    from graphs.gguf import load_pretrained
    from graphs.models import example_inputs
    from scheduler import Runtime
    from scheduler.generation import GenerationConfig

    model = load_pretrained("smollm2-135m")
    tok = model.tokenizer
    P, N = (32, 16) if quick else (128, 128)
    reps = 1 if quick else 3
    prompt = _prompt(tok, P)
    prompts8 = [_prompt(tok, P + 8)[i:i + P] for i in range(8)]
    rows = []
    torch.set_num_threads(2)
    pre, dec = [], []
    for _ in range(reps):
        a, b = _direct(model, prompt, N)
        pre.append(a)
        dec.append(b)
    direct_pre = P / statistics.median(pre)
    direct_dec = (N - 1) / statistics.median(dec)
    t = time.perf_counter()
    for p in prompts8:
        _direct(model, p, N)
    direct_8 = 8 * N / (time.perf_counter() - t)
    rows.append(["direct PyTorch (2 threads)", direct_pre, direct_dec, 1.0, direct_8, 1.0, "-"])
    gen = GenerationConfig(max_batch=8, max_context=P + N + 16, phase="decode", prompt_len=P, new_tokens=N)
    for label, devices, policy, threads in (("Runtime, 1 cpu executor (2 threads)", ["cpu"], "heft", 2),
                                            ("Runtime, cpu:0 + cpu:1 (1 thread each)", ["cpu:0", "cpu:1"],
                                             "pipeline", 1)):
        with Runtime(model, example_inputs(model, seq_len=8), devices=devices, policy=policy,
                     generation=gen, executor_options={"threads": threads}) as rt:
            rt.prepare_generation()
            rt.generate(prompt[:8], max_new_tokens=4)  # warm-up
            pre, dec = [], []
            for _ in range(reps):
                r = rt.generate(prompt, max_new_tokens=N)
                pre.append(r.ttft)
                dec.append(r.latency - r.ttft)
            rt_pre = P / statistics.median(pre)
            rt_dec = (N - 1) / statistics.median(dec)
            rt.reset_generation_stats()
            t = time.perf_counter()
            futs = [rt.submit_generate(p, max_new_tokens=N) for p in prompts8]
            for f in futs:
                f.result()
            agg = 8 * N / (time.perf_counter() - t)
            st = rt.generation_stats()
            split = " / ".join(f"{s.device}: {s.blocks[0]}..{s.blocks[-1]}" for s in rt.generation_stages)
            rows.append([label, rt_pre, rt_dec, rt_dec / direct_dec, agg, agg / direct_8,
                         f"{st.mean_decode_batch:.2f}; {split}"])
    head = ["path", "prefill tok/s (batch 1)", "decode tok/s (batch 1)", "decode vs direct",
            "aggregate tok/s, 8 in flight", "8 in flight vs direct", "mean decode batch; shards"]
    return (f"SmolLM2-135M-Instruct (real weights, Q4_1 GGUF dequantised to fp32), prompt {P}, "
            f"output {N}, greedy; medians of {reps}.\n\n" + table(head, rows))


def bench_edge(quick: bool) -> str:
    from executors.devices import Cluster
    from executors import profiles
    from graphs.decoding import shard_ranges
    from graphs.models import get_config
    from policies.phase import place_phase
    from policies.roofline import RooflineCostModel
    from scheduler.generation_sim import simulate_generation

    P, N = 128, (16 if quick else 128)
    specs = [profiles.load(n.split(":", 1)[1], name=n) for n in TRIO]
    out = []
    for cfg_name in ("1b", "smollm2-135m"):
        cfg = get_config(cfg_name)
        rows = []
        cands = [(d, [d], "single") for d in TRIO] + [("trio, heft (latency)", TRIO, "heft"),
                                                       ("trio, heft (energy)", TRIO, "heft-energy"),
                                                       ("trio, exact (energy)", TRIO, "exact-energy")]
        for label, devs, pol in cands:
            cl = Cluster.from_specs([s for s in specs if s.name in devs])
            cm = RooflineCostModel(cl)
            opts = {"objective": "energy"} if pol.endswith("-energy") else {}
            name = pol.split("-")[0]
            plan, g, _ = place_phase(name, cfg, cl, cm, "decode", prompt_len=P, new_tokens=N,
                                     max_batch=1, max_context=P + N, options=opts, itemsize=2)
            e = cm.energy(g, plan)
            stages = shard_ranges(cfg, plan.assignment)
            sim = simulate_generation(cfg, stages, cm, prompt_len=P, new_tokens=N, itemsize=2)
            rows.append([label, len(stages), 1 / plan.makespan, (1 / e) if e else "-",
                         sim.decode_tokens_per_s, sim.tokens_per_joule or "-",
                         " / ".join(f"{d.split(':')[-1]} {b - a}" for d, a, b in stages)])
        head = ["devices", "shards", "predicted decode tok/s", "predicted tok/J",
                "simulated decode tok/s", "simulated tok/J (whole run)", "blocks per device"]
        out.append(f"### {cfg_name}\n\n" + table(head, rows))
    return (f"Prompt {P}, output {N}, batch 1, fp16 weights and KV cache (what these devices "
            "deploy; fp32 doubles the bytes a decode step reads), placed for decode. Predicted: "
            "one decode step at context 192 by the plan (tok/J from the plan's energy: active "
            "power while busy, idle power otherwise). Simulated: the replay of the whole run "
            "(prefill, then 127 decode steps with the context growing, transfers between "
            "devices), tok/J over the whole run, prefill included. Published for "
            "openPangu-Embedded-1B on an Atlas 200I A2: 15-20 tok/s at 8-12 W, i.e. 1.25-2.5 "
            "tok/J.\n\n" + "\n\n".join(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats; writes nothing")
    ap.add_argument("--only", choices=("cpu", "edge"), default=None)
    a = ap.parse_args()
    sections = (("edge", "generate-edge", "Generation on the simulated edge trio: decode tok/s and tok/J",
                 bench_edge),
                ("cpu", "generate-cpu", "Generation through Runtime.generate: SmolLM2-135M on this CPU",
                 bench_cpu))
    for name, key, title, fn in sections:
        if a.only in (None, name):
            body = fn(a.quick)
            if a.quick:
                print(body)
            else:
                write_section(key, title, body)

if __name__ == "__main__":
    main()
