"""``hetsched bench [--list] [--only NAME] [--quick]``: run the benchmark scripts.

Each ``bench/*.py`` script (files starting with ``_`` are helpers) prints its table and
rewrites its own section of docs/benchmarks.md with the command that produced it;
:func:`bench_scripts` lists them by the first line of their docstrings and
:func:`run_bench` runs them one after another from the repository root. Needs a source
checkout (bench/ is not installed with the package).
"""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import time
from typing import Sequence

from graphs.errors import UnknownNameError

from ..errors import CLIError
from .common import echo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(ROOT, "bench")


def add_parser(sub) -> None:
    """Register ``bench`` on the top-level subparsers ``sub``.

    Example:
        >>> sub = argparse.ArgumentParser(prog="hetsched").add_subparsers()
        >>> add_parser(sub)
        >>> a = sub.choices["bench"].parse_args(["--only", "capture", "--quick"])
        >>> a.only, a.quick, a.list
        (['capture'], True, False)
    """
    p = sub.add_parser("bench", help="run the benchmark suite (writes docs/benchmarks.md)",
                       description=(
        "Run the benchmark scripts under bench/ one after another; each prints its table and "
        "rewrites its own section of docs/benchmarks.md with the command that produced it. "
        "Needs a source checkout (bench/ is not installed with the package)."))
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this benchmark (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="pass --quick to the benchmarks that accept it")
    p.set_defaults(func=run)


def bench_scripts(bench_dir: str = BENCH_DIR) -> dict[str, str]:
    """Benchmark name -> first line of its docstring, for every ``bench/*.py`` script
    (files starting with ``_`` are helpers, not benchmarks).

    Example:
        >>> "capture" in bench_scripts()
        True
    """
    if not os.path.isdir(bench_dir):
        raise CLIError(f"no benchmark folder at {bench_dir}: the benchmarks live in a source "
                       "checkout (bench/ is not installed with the package)")
    out = {}
    for f in sorted(os.listdir(bench_dir)):
        if f.endswith(".py") and not f.startswith("_"):
            with open(os.path.join(bench_dir, f)) as fh:
                try:
                    doc = ast.get_docstring(ast.parse(fh.read())) or ""
                except SyntaxError:
                    doc = ""
            out[f[:-3]] = (doc.strip().splitlines() or [""])[0].strip().rstrip(".")
    return out


def run_bench(names: Sequence[str] | None = None, *, quick: bool = False,
              bench_dir: str = BENCH_DIR, python: str = sys.executable,
              progress: bool = True) -> list[tuple[str, int, float]]:
    """Run benchmark scripts (all, or ``names``) one after another with ``python``, from the
    repository root; returns ``(name, exit status, seconds)`` per script.

    Raises:
        graphs.errors.UnknownNameError: a name is not a benchmark (lists them).

    Example:
        >>> import tempfile
        >>> b = os.path.join(tempfile.mkdtemp(), "bench")
        >>> os.mkdir(b)
        >>> with open(os.path.join(b, "hello.py"), "w") as f:
        ...     _ = f.write("pass  # a benchmark that does nothing\\n")
        >>> [(name, rc) for name, rc, _ in run_bench(bench_dir=b, progress=False)]
        [('hello', 0)]
    """
    from tqdm import tqdm

    avail = bench_scripts(bench_dir)
    names = list(names) if names else list(avail)
    for n in names:
        if n not in avail:
            raise UnknownNameError("benchmark", n, avail)
    results = []
    bar = tqdm(names, desc="benchmarks", unit="script", file=sys.stderr, disable=not progress or None)
    for n in bar:
        bar.set_postfix_str(n)
        path = os.path.join(bench_dir, n + ".py")
        cmd = [python, path]
        if quick:
            with open(path) as fh:
                if '"--quick"' in fh.read():
                    cmd.append("--quick")
        t = time.perf_counter()
        rc = subprocess.call(cmd, cwd=os.path.dirname(os.path.abspath(bench_dir)))
        results.append((n, rc, time.perf_counter() - t))
    return results


def run(args: argparse.Namespace) -> int:
    """List (``--list``) or run the benchmarks; a failed one is a :class:`CLIError`.

    Example:
        >>> run(argparse.Namespace(list=True, only=[], quick=False))  # doctest: +ELLIPSIS
        adaptive  ...
        capture  ...
        0
    """
    avail = bench_scripts()
    if args.list:
        w = max(map(len, avail), default=0)
        echo(*(f"{n:<{w}}  {d}" for n, d in avail.items()))
        return 0
    results = run_bench(args.only, quick=args.quick)
    failed = [n for n, rc, _ in results if rc != 0]
    echo("", *(f"{n:<12} {'ok' if rc == 0 else f'FAILED (exit {rc})'}  {dt:.1f} s" for n, rc, dt in results),
         "tables written to docs/benchmarks.md")
    if failed:
        raise CLIError(f"benchmark(s) failed: {', '.join(failed)}")
    return 0

