"""``hetsched policies``: list the registered placement policies, one line each.

Each line is a policy's name and its one-line description from the registry
(:func:`policies.available`); pass the name to ``--policy`` of ``place``, ``simulate`` or
``demo``.

Example:
    >>> run(argparse.Namespace()) == 0  # doctest: +ELLIPSIS
    auto ...
    True
"""
from __future__ import annotations

import argparse

from .common import echo


def add_parser(sub) -> None:
    """Register ``policies`` on the top-level subparsers ``sub``.

    Example:
        >>> sub = argparse.ArgumentParser(prog="hetsched").add_subparsers()
        >>> add_parser(sub)
        >>> sub.choices["policies"].parse_args([]).func is run
        True
    """
    p = sub.add_parser("policies", help="list the placement policies",
                       description="List the registered placement policies with one line each.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print every registered policy with its description; returns 0.

    Example:
        >>> run(argparse.Namespace()) == 0  # doctest: +ELLIPSIS
        auto ...
        heft ...
        True
    """
    import policies

    avail = policies.available()
    w = max(map(len, avail))
    echo(*(f"{n:<{w}}  {d}" for n, d in avail.items()))
    return 0

