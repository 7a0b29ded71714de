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

Errors: bad arguments, the project's own errors (:class:`graphs.errors.HetschedError`) and
bad input (a file, a number, a missing optional package) print one line
``hetsched: error: ...`` on stderr and exit with status 2; any other exception is a bug and
prints one line too, naming its type and asking for a report (:func:`error_line`). No
traceback, unless ``--debug`` is given or ``HETSCHED_DEBUG=1`` is set (both re-raise to show
one). Progress bars go to stderr, results to stdout, so ``hetsched place --json > plan.json``
writes clean JSON.

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
    profiles, bench).

    Example:
        >>> a = build_parser().parse_args(["place", "--model", "tiny", "--json"])
        >>> a.command, a.model, a.json
        ('place', 'tiny', True)
    """
    top = Parser(prog="hetsched", description=(
        "Adaptive heterogeneous scheduling runtime: capture a PyTorch model into a "
        "cost-annotated op graph, place it across NPU/GPU/CPU devices with a policy, and run "
        "it on Ray actors, one per device."),
        epilog="Start with `hetsched demo`. `hetsched COMMAND --help` explains each command.")
    top.add_argument("--debug", action="store_true",
                     help="show the traceback of an error (as HETSCHED_DEBUG=1)")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    for command in COMMANDS:
        command.add_parser(sub)
    return top


#: Errors a command raises on purpose or that bad input causes (a file, a number, a missing
#: optional package): one line with their message. Any other exception is a bug.
EXPECTED_ERRORS = (HetschedError, ValueError, OSError, ImportError, NotImplementedError)
#: The longest error line printed, in characters (the rest is cut with "...").
MAX_ERROR_CHARS = 2000


def debug_requested() -> bool:
    """Whether the environment asks errors to show their traceback: ``HETSCHED_DEBUG`` set
    to anything but empty or ``0`` (as ``hetsched --debug``).

    Example:
        >>> saved = os.environ.pop("HETSCHED_DEBUG", None)
        >>> debug_requested()
        False
        >>> os.environ["HETSCHED_DEBUG"] = "1"
        >>> debug_requested()
        True
        >>> _ = os.environ.pop("HETSCHED_DEBUG")
        >>> if saved is not None:
        ...     os.environ["HETSCHED_DEBUG"] = saved
    """
    return os.environ.get("HETSCHED_DEBUG", "") not in ("", "0")


def error_line(e: BaseException) -> str:
    """The one line ``hetsched: error: ...`` for ``e``: the message of an expected error
    (:data:`EXPECTED_ERRORS`), else the exception's type and message marked as a bug.

    Example:
        >>> error_line(CLIError("--seq-len 0:  too   small"))
        'hetsched: error: --seq-len 0: too small'
        >>> error_line(KeyError("x"))  # doctest: +ELLIPSIS
        "hetsched: error: internal error KeyError: 'x' (a bug in hetsched: please report it ...)"
    """
    msg = " ".join(str(e).split())
    if isinstance(e, EXPECTED_ERRORS):
        msg = msg or type(e).__name__
    elif isinstance(e, MemoryError):
        msg = "out of memory" + (f": {msg}" if msg else "")
    else:
        msg = (f"internal error {type(e).__name__}" + (f": {msg}" if msg else "")
               + " (a bug in hetsched: please report it with the command line; "
                 "HETSCHED_DEBUG=1 shows the traceback)")
    if len(msg) > MAX_ERROR_CHARS:
        msg = msg[:MAX_ERROR_CHARS - 3] + "..."
    return f"hetsched: error: {msg}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hetsched`` command line with ``argv`` (default ``sys.argv[1:]``); returns
    the exit status: 0 ok, 2 an error (one line ``hetsched: error: ...`` on stderr, never a
    traceback unless ``--debug`` or ``HETSCHED_DEBUG=1``), 1 stdout closed early (a pipe
    into ``head``), 130 interrupted.

    Example:
        >>> main(["place", "--model", "tiny", "--policy", "nope"])  # one error line on stderr
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested()
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse: --help (0) or a one-line error (2)
            return _exit_status(e)
        if not getattr(args, "command", None):
            parser.print_help()
            return 0
        debug = debug or bool(getattr(args, "debug", False))
        try:
            return int(args.func(args) or 0)
        except SystemExit as e:  # a subcommand's parser reported a usage error (one line)
            return _exit_status(e)
    except BrokenPipeError:  # output piped into a command that stopped reading (head)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("hetsched: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (every error is one line; a bug says so)
        if debug:
            raise
        print(error_line(e), file=sys.stderr, flush=True)
        return 2


def _exit_status(e: SystemExit) -> int:
    """The status of a ``SystemExit``: its code, or 2 after printing a message code as an
    error line."""
    if isinstance(e.code, str):
        print(f"hetsched: error: {' '.join(e.code.split())}", file=sys.stderr)
        return 2
    return int(e.code or 0)
