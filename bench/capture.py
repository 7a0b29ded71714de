"""Capture time and graph sizes of the reference model, per config and granularity.

Every config is built on the meta device (no weights allocated), so the numbers are the
cost of tracing, cost propagation and coarsening alone. Rows ``prefill`` capture a
``--seq-len``-token prefill; ``decode`` rows capture one decode step over ``--context``
cached positions.

Run: ``.venv/bin/python bench/capture.py`` (writes the ``capture`` section of
docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import median_time, table, write_section  # noqa: E402
from graphs import GRANULARITIES, capture  # noqa: E402
from graphs.models import (configs, decode_inputs, example_inputs, pangu_embedded,  # noqa: E402
                           prefill_flops)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    rows = []
    for name in configs():
        model = pangu_embedded(name, device="meta")
        cases = [("prefill", example_inputs(model, seq_len=args.seq_len))]
        if args.context + 1 <= model.config.max_position:
            cases.append((f"decode@{args.context}", decode_inputs(model, args.context)))
        for what, inputs in cases:
            for gran in GRANULARITIES:
                t = median_time(lambda: capture(model, inputs, granularity=gran),
                                repeats=args.repeats, warmup=1)
                g = capture(model, inputs, granularity=gran)
                extra = ""
                if what == "prefill":
                    extra = f"{g.total('flops') / prefill_flops(name, args.seq_len):.4f}"
                rows.append((name, what, gran, t * 1e3, g.number_of_nodes(), g.number_of_edges(),
                             g.total("flops") / 1e9, g.total("param_bytes") / 1e6, extra))
    body = (f"Capture on the meta device; prefill of {args.seq_len} tokens, decode over "
            f"{args.context} cached positions; median of {args.repeats} runs after one warm-up. "
            "`flops/analytic` is the captured total over `graphs.models.prefill_flops` "
            "(matmuls only), so the excess is pointwise ops and norms.\n\n"
            + table(["config", "graph", "granularity", "capture ms", "nodes", "edges", "GFLOPs",
                     "param MB", "flops/analytic"], rows))
    write_section("capture", "Capture: time and graph size", body)


if __name__ == "__main__":
    main()
