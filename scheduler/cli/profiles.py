"""``hetsched profiles list | show NAME | calibrate``: the device profiles.

A device profile is a data file (TOML) with the source of every number: peak FLOP/s per
dtype, memory bandwidth and capacity, launch overhead, power. A simulated device
``sim:<name>`` computes for real on this CPU and reports the time the profiled device
would take.

* ``list``: the built-in profiles, one row each with their headline numbers;
* ``show NAME``: one profile (a built-in name or a file) with every number's source;
* ``calibrate``: measure this machine's CPU and write a profile file, to use as
  ``--devices sim:<file>``.
"""
from __future__ import annotations

import argparse
import os

from ..errors import CLIError
from .common import Parser, check_out, echo, int_range, need_action

#: The peaks ``profiles list`` shows: dtype -> column (int8 in TOP/s, the others TFLOP/s).
PEAK_COLUMNS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8"}
#: The most torch threads ``calibrate --threads`` takes.
MAX_THREADS = 1024


def add_parser(sub) -> None:
    """Register ``profiles`` and its actions on the top-level subparsers ``sub``.

    Example:
        >>> sub = argparse.ArgumentParser(prog="hetsched").add_subparsers()
        >>> add_parser(sub)
        >>> a = sub.choices["profiles"].parse_args(["calibrate", "--quick"])
        >>> a.quick, a.out, a.func is run_calibrate
        (True, 'out/host-cpu.toml', True)
    """
    p = sub.add_parser("profiles", help="device profiles: list, show, calibrate this host",
                       description=(
        "Device profiles are data files (TOML) with the source of every number; a simulated "
        "device sim:<name> runs with a profile's speed, memory and power."))
    psub = p.add_subparsers(dest="profiles_command", metavar="ACTION", parser_class=Parser)
    q = psub.add_parser("list", help="the built-in profiles, one line each",
                        description="List the built-in profiles with their headline numbers.")
    q.set_defaults(func=run_list)
    q = psub.add_parser("show", help="one profile with the source of every number",
                        description="Show a profile (built-in name or file) with every number's source.")
    q.add_argument("profile", help="a built-in profile name or a .toml/.json file")
    q.set_defaults(func=run_show)
    q = psub.add_parser("calibrate", help="measure this machine's CPU and write a profile",
                        description=(
        "Measure this machine's CPU (matmul FLOP/s per dtype, memory bandwidth, launch "
        "overhead, RAPL power where readable) and write a profile file; use it as "
        "--devices sim:<file>."))
    q.add_argument("--out", default=os.path.join("out", "host-cpu.toml"),
                   help="profile file to write (default out/host-cpu.toml)")
    q.add_argument("--quick", action="store_true", help="small sizes, few repeats (seconds)")
    q.add_argument("--threads", type=int_range(1, MAX_THREADS), default=None,
                   help=f"torch threads to measure with (default: torch's; at most {MAX_THREADS})")
    q.set_defaults(func=run_calibrate)
    p.set_defaults(func=lambda a, p=p: need_action(p, "profiles"))


def run_list(args: argparse.Namespace) -> int:
    """``profiles list``: one row per built-in profile with its headline numbers (memory in
    binary units, as the plan tables print capacity).

    Example:
        >>> run_list(argparse.Namespace())  # doctest: +ELLIPSIS
        profile  ...  memory  ...
        ...
        atlas-200i-a2 ... 7.45 GiB ...
        ...
        0
    """
    from executors import profiles
    from graphs.units import format_bytes

    from ..tables import format_table

    rows = []
    for name in profiles.available():
        s = profiles.load(name)
        row = {"profile": name, "kind": s.kind}
        for dtype, col in PEAK_COLUMNS.items():  # each peak under its own dtype; "-" if none
            v = s.peak_flops.get(dtype)
            row[col] = f"{v / 1e12:.3g} {'TOP/s' if col == 'int8' else 'TFLOP/s'}" if v else "-"
        rows.append({**row,
                     "bandwidth": f"{s.mem_bandwidth / 1e9:.4g} GB/s",
                     "memory": format_bytes(s.mem_capacity),
                     "power": f"{s.active_power:g} W" if s.active_power else "-",
                     "description": s.description})
    echo(format_table(rows), "", "`hetsched profiles show NAME` gives the source of every number; "
         "use a profile as a device with --devices sim:NAME")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """``profiles show NAME``: the profile with the source of every number.

    Example:
        >>> run_show(argparse.Namespace(profile="edge-cpu-a76"))  # doctest: +ELLIPSIS
        edge-cpu-a76 ...
        0
    """
    from executors import profiles

    echo(profiles.show(args.profile))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    """``profiles calibrate``: measure this machine's CPU and write a profile file.

    Example:
        >>> run_calibrate(argparse.Namespace(out="host.txt", quick=True, threads=None))
        Traceback (most recent call last):
        ...
        scheduler.errors.CLIError: --out 'host.txt': a profile file must end in .toml or .json
    """
    from executors.calibrate import calibrate

    out = args.out
    if not out.endswith((".toml", ".json")):
        raise CLIError(f"--out {out!r}: a profile file must end in .toml or .json")
    check_out(out, "--out", folder=False)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    cmd = "hetsched profiles calibrate --out " + out + (" --quick" if args.quick else "") + \
        (f" --threads {args.threads}" if args.threads else "")
    spec = calibrate(out, quick=args.quick, threads=args.threads, command=cmd)
    lines = [f"peak_flops[{dt}] = {v / 1e9:.2f} GFLOP/s" for dt, v in spec.peak_flops.items()]
    lines += [f"mem_bandwidth = {spec.mem_bandwidth / 1e9:.2f} GB/s",
              f"launch_overhead = {spec.launch_overhead * 1e6:.2f} us",
              f"wrote {out}  (use it with --devices sim:{out})"]
    echo(*lines)
    return 0

