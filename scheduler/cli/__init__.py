"""The ``hetsched`` command line: demo, place, simulate, policies, profiles, bench.

Installed as the console script ``hetsched`` (also ``python -m scheduler``)::

    hetsched demo                      # the reference decoder on a simulated edge trio, on Ray
    hetsched place --model 1b --policy heft --json
    hetsched simulate --model small --policy pipeline --objective throughput --requests 64
    hetsched policies                  # the placement policies, with one line each
    hetsched profiles list | show NAME | calibrate [--quick]
    hetsched bench [--list] [--only NAME]

``hetsched <command> --help`` explains each command and its options.

One module per command (:mod:`.demo`, :mod:`.place`, :mod:`.simulate`, :mod:`.policies`,
:mod:`.profiles`, :mod:`.bench`), each with ``add_parser(sub)`` registering its subcommand
and the function that runs it; :mod:`.common` holds what they share (the parser class,
option groups, number parsers, output helpers, plan tables). This module builds the parser
and runs a command.

Errors: bad arguments and the project's own errors (:class:`graphs.errors.HetschedError`)
print one line ``hetsched: error: ...`` on stderr and exit with status 2; no traceback
(``--debug`` re-raises to show one). Progress bars go to stderr, results to stdout, so
``hetsched place --json > plan.json`` writes clean JSON.

Example:
    >>> main(["policies"]) == 0  # doctest: +ELLIPSIS
    auto ...
    True
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from graphs.errors import HetschedError

from ..errors import CLIError
from . import bench, demo, place, policies, profiles, simulate
from .bench import bench_scripts, run_bench
from .common import EDGE_TRIO, Parser, parse_size

__all__ = ["main", "build_parser", "CLIError", "parse_size", "EDGE_TRIO", "bench_scripts",
           "run_bench"]

#: The commands in the order ``hetsched --help`` lists them.
COMMANDS = (demo, place, simulate, policies, profiles, bench)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hetsched`` (subcommands demo, place, simulate, policies,
    profiles, bench)."""
    top = Parser(prog="hetsched", description=(
        "Adaptive heterogeneous scheduling runtime: capture a PyTorch model into a "
        "cost-annotated op graph, place it across NPU/GPU/CPU devices with a policy, and run "
        "it on Ray actors, one per device."),
        epilog="Start with `hetsched demo`. `hetsched COMMAND --help` explains each command.")
    top.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    for command in COMMANDS:
        command.add_parser(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hetsched`` command line with ``argv`` (default ``sys.argv[1:]``); returns
    the exit status (0 ok, 2 a one-line error on stderr)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a one-line error (2)
        return int(e.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:  # a subcommand's parser reported a usage error (one line)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except BrokenPipeError:  # output piped into a command that stopped reading (head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (HetschedError, ValueError, OSError, NotImplementedError) as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"hetsched: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hetsched: interrupted", file=sys.stderr)
        return 130
