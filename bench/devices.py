"""Roofline predictions for the ``1b`` reference config on every built-in device profile.

For each profile: predicted prefill latency of 128 tokens, decode tokens per second (one
decode step at a context of 512 and of 4096 cached tokens), and decode tokens per joule
(tokens/s over the profile's active power), from :class:`policies.roofline.RooflineCostModel`
on the op graph captured on ``meta`` (no weights allocated). A single device runs its ops
one after another, so a step's time is the sum of its node times.

Each device runs the 16-bit dtype it is fastest at (float16 or bfloat16, from its
profile): 2-byte weights everywhere, as edge deployments do.

Usage: python bench/devices.py
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench._common import table, write_section  # noqa: E402
from executors import profiles  # noqa: E402
from graphs.capture import capture  # noqa: E402
from graphs.models import decode_inputs, example_inputs, pangu_embedded  # noqa: E402
from policies.roofline import RooflineCostModel  # noqa: E402
from executors.devices import Cluster  # noqa: E402

CONTEXTS = (512, 4096)
PREFILL = 128


def graphs_for(dtype: torch.dtype) -> dict[str, object]:
    m = pangu_embedded("1b", device="meta", dtype=dtype)
    out = {"prefill": capture(m, example_inputs(m, seq_len=PREFILL))}
    for c in CONTEXTS:
        out[f"decode{c}"] = capture(m, decode_inputs(m, c))
    return out


def main() -> None:
    gs = {dt: graphs_for(getattr(torch, dt)) for dt in ("float16", "bfloat16")}
    weights = gs["float16"]["prefill"].total("param_bytes")
    rows, atlas = [], {}
    for name in profiles.available():
        spec = profiles.load(name)
        dt = max(("float16", "bfloat16"), key=lambda d: spec.flops_for(d))
        g = gs[dt]
        full = RooflineCostModel(Cluster.from_specs([spec]))
        bare = RooflineCostModel(Cluster.from_specs([spec.replace(launch_overhead=0.0)]))
        t_pre = full.time_matrix(g["prefill"]).sum()
        dec = {c: full.time_matrix(g[f"decode{c}"]).sum() for c in CONTEXTS}
        dec0 = {c: bare.time_matrix(g[f"decode{c}"]).sum() for c in CONTEXTS}
        n_ops = sum(1 for _, a in g["decode512"].nodes(data=True)
                    if a["kind"] not in ("input", "output", "param"))
        power = full.power(name)
        if name == "atlas-200i-a2":
            atlas = {"eager": 1 / dec[512], "fused": 1 / dec0[512], "bound": spec.mem_bandwidth / weights,
                     "watts": power[0], "overhead_ms": n_ops * spec.launch_overhead * 1e3,
                     "step_ms": dec[512] * 1e3}
        tpj = f"{(1 / dec[512]) / power[0]:.3g}" if power else "n/a (power unknown)"
        rows.append([name, dt, t_pre * 1e3, 1 / dec[512], 1 / dec[4096], 1 / dec0[512],
                     weights / spec.mem_bandwidth * 1e3, n_ops * spec.launch_overhead * 1e3,
                     f"{power[0]:g}" if power else "n/a", tpj])
    body = table(["profile", "dtype", "prefill 128 tok (ms)", "decode tok/s @512", "decode tok/s @4096",
                  "decode tok/s @512, no launch overhead", "weights / bandwidth (ms)",
                  "launch overhead per step (ms)", "active W", "tok/J @512"], rows)
    def verdict(x: float, lo: float, hi: float) -> str:
        return "inside" if lo <= x <= hi else ("below" if x < lo else "above")

    a = atlas
    body += f"""

Graph: openPangu-Embedded-style `1b` config captured on `meta` ({weights / 1e9:.2f} GB of 16-bit
weights; decode step = {n_ops} launched ops incl. views). Decode tok/s = 1 / (one step's
predicted time); tok/J = decode tok/s / active power (one device busy all the time).

**Against the published openPangu-Embedded-1B figures for Atlas 200I A2** (15-20 tokens/s,
8-12 W, 1.25-2.5 tokens/J): the `atlas-200i-a2` row predicts {a["eager"]:.3g} tokens/s with
the eager per-op launch overhead ({verdict(a["eager"], 15, 20)} the published range) and
{a["fused"]:.3g} tokens/s without it ({verdict(a["fused"], 15, 20)} the range); tokens/J
{a["eager"] / a["watts"]:.3g} and {a["fused"] / a["watts"]:.3g} ({verdict(a["eager"] / a["watts"], 1.25, 2.5)}
and {verdict(a["fused"] / a["watts"], 1.25, 2.5)} 1.25-2.5). Why they differ, honestly:

* Decode is memory-bound: every step reads all weights once, so the roofline bound is
  weights / bandwidth ({weights / 1e9:.2f} GB / 51.2 GB/s = {a["bound"]:.3g} tokens/s at most,
  {verdict(a["bound"], 15, 20)} the published range). A real kernel reaches a fraction of
  peak bandwidth, so the real speed is at or below that bound.
* The published deployment runs fused graph-mode kernels (a few launches per layer), not one
  launch per fx op: our op graph launches {n_ops} ops per step (views included), and at the
  estimated 30 us each that is {a["overhead_ms"]:.3g} ms of the {a["step_ms"]:.3g} ms step. The
  "no launch overhead" column is the fused-kernel bound; the truth for an eager torch-npu
  run lies nearer the first column.
* Roofline is an upper bound on speed: no kernel inefficiency, no cache effects, no host
  work (sampling, tokenisation). The bandwidth (51.2 GB/s) and FP16 peak are estimates
  (see `python -c "import executors.profiles as p; print(p.show('atlas-200i-a2'))"`).
* Tokens per joule uses the profile's 10 W active power (midpoint of 8-12 W), so it follows
  tokens/s linearly.
* `host-cpu` is this machine measured with one thread (its bfloat16 matmul peak uses
  AVX512-BF16); its power is unknown, so no tokens per joule.
"""
    write_section("devices", "Device profiles: 1b config roofline predictions", body,
                  command="python bench/devices.py")


if __name__ == "__main__":
    main()
