"""Helpers shared by the command-line tests: run ``hetsched`` in process, check its errors."""
from __future__ import annotations

from scheduler.cli import main


def run(capsys, *argv):
    """``(status, stdout, stderr)`` of ``hetsched ARGV...`` run in this process."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    """Status 2, no traceback, one ``hetsched: error: ...`` line containing every needle."""
    assert rc == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hetsched: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
