"""Shared helpers for benchmark scripts: median timing and writing docs/benchmarks.md.

Each script owns one section of docs/benchmarks.md, delimited by HTML comments, and
rewrites only that section, recording the exact command that produced it.
"""
from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Iterable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
HEADER = """# Benchmarks

Every table below was produced by the command shown above it, on the machine it names.
Numbers are medians of repeated runs measured side by side in one run; the machines are
shared and noisy, so compare ratios within one table rather than absolute numbers across
tables. Re-run a section with its command; it rewrites only its own section.
"""


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; floats get 4 significant digits."""
    def fmt(x: object) -> str:
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    try:
        import torch
        tv = torch.__version__
    except Exception:  # pragma: no cover
        tv = "n/a"
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {tv}"


def write_section(key: str, title: str, body: str, command: str | None = None) -> None:
    """Replace (or append) section ``key`` of docs/benchmarks.md and print it."""
    command = command or "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    section = (f"<!-- begin:{key} -->\n## {title}\n\nCommand: `{command}`  \n"
               f"Machine: {machine()}; run {time.strftime('%Y-%m-%d %H:%M')}\n\n{body.strip()}\n"
               f"<!-- end:{key} -->")
    print(section)
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    text = open(DOC).read() if os.path.exists(DOC) else HEADER
    pat = re.compile(rf"<!-- begin:{re.escape(key)} -->.*?<!-- end:{re.escape(key)} -->", re.S)
    if pat.search(text):
        text = pat.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    with open(DOC, "w") as f:
        f.write(text)
