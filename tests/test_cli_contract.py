"""The command line's error contract, over a corpus of bad invocations.

Every bad invocation of ``hetsched`` ends with status 2 and exactly one non-empty line on
stderr, ``hetsched: error: ...``, never a traceback, and prints nothing on stdout; a good
``--json`` invocation prints one JSON document on stdout. The corpus covers unknown
commands, options and names, bad numbers for every numeric option, bad ``--mem-limit``
forms, bad graph files, bad output paths and ``--phase`` on inputs that are not a decoder
config. Each case runs in process through :func:`scheduler.cli.main` (fast: every one fails
before any placement work worth the name); a few run the real entry points in a subprocess.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import graphs
from graphs import models as M
from scheduler import cli
from tests._cli import assert_one_line_error, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HETSCHED = os.path.join(os.path.dirname(sys.executable), "hetsched")
HAS_CUDA = torch.cuda.is_available()


# ------------------------------------------------------------------------ the files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Placeholder -> path of the files the corpus names (``{good}``, ``{deep}``, ...)."""
    d = tmp_path_factory.mktemp("contract")
    m = M.pangu_embedded("tiny", device="meta")
    good = d / "good.json"
    graphs.save(graphs.capture(m, M.example_inputs(m, seq_len=8), granularity="layer"), good)
    doc = json.loads(good.read_text())

    def variant(name, edit):
        v = json.loads(json.dumps(doc))
        edit(v)
        (d / name).write_text(json.dumps(v))

    def attr(key, value, nodes=(1, 2)):
        def edit(v):
            for i in nodes:
                v["nodes"][i]["attrs"][key] = value
        return edit

    variant("overflow.json", attr("flops", 1e308))  # two of them sum past a float
    variant("nan.json", attr("flops", {"__float__": "nan"}, nodes=(1,)))
    variant("inf.json", attr("flops", {"__float__": "inf"}, nodes=(1,)))
    variant("text_flops.json", attr("flops", "abc", nodes=(1,)))
    variant("cyclic.json", lambda v: v["edges"].append(
        {"source": v["nodes"][-1]["id"], "target": v["nodes"][1]["id"], "attrs": {}}))
    variant("dangling.json", lambda v: v["edges"].append(
        {"source": v["nodes"][0]["id"], "target": "no-such-node", "attrs": {}}))
    variant("version.json", lambda v: v.update(version=99))
    variant("nodes_int.json", lambda v: v.update(nodes=5))
    variant("no_format.json", lambda v: v.pop("format"))
    variant("bad_kind.json", attr("kind", "teleport", nodes=(1,)))
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "deep_obj.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    (d / "garbage.json").write_text("this is not JSON")
    (d / "empty.json").write_text("")
    (d / "list.json").write_text("[]")
    (d / "object.json").write_text("{}")
    (d / "binary.json").write_bytes(bytes(range(256)))
    from graphs.synthetic import chain

    graphs.save(chain(3), d / "task_graph.json")
    (d / "a_file").write_text("a file, not a folder\n")
    (d / "a_folder").mkdir()
    (d / "folder.toml").mkdir()
    (d / "garbage.toml").write_text("this = is = not toml\n")
    (d / "empty.toml").write_text("")
    out = {p.stem: str(p) for p in d.glob("*.json")}
    out.update(dir=str(d), a_file=str(d / "a_file"), a_folder=str(d / "a_folder"),
               folder_toml=str(d / "folder.toml"), garbage_toml=str(d / "garbage.toml"),
               empty_toml=str(d / "empty.toml"))
    return out


# ------------------------------------------------------------------------ the corpus
BAD_INTS = ["-1", "0", "nan", "inf", "1e308", "abc", "1.5", "", "99999999999999999999"]
BAD_FLOATS = ["-1", "0", "nan", "inf", "-inf", "1e308", "abc", "", "1e-308"]

#: (command words before the option, option, bad values): every numeric option of place,
#: simulate, profiles calibrate and demo.
NUMERIC = [
    (["place"], "--seq-len", BAD_INTS),
    (["place"], "--batch", BAD_INTS),
    (["place", "--phase", "decode"], "--prompt-len", BAD_INTS),
    (["place", "--phase", "decode"], "--new-tokens", BAD_INTS),
    (["place", "--phase", "decode"], "--max-batch", BAD_INTS),
    (["place", "--phase", "decode"], "--max-context", BAD_INTS),
    (["simulate"], "--seq-len", BAD_INTS),
    (["simulate"], "--batch", BAD_INTS),
    (["simulate"], "--requests", BAD_INTS + ["1000001"]),
    (["simulate"], "--in-flight", BAD_INTS),
    (["simulate"], "--rate", BAD_FLOATS),
    (["simulate"], "--seed", ["-1", "nan", "inf", "1e308", "abc", "1.5", "4294967296"]),
    (["profiles", "calibrate"], "--threads", BAD_INTS + ["1025"]),
    (["demo"], "--seq-len", BAD_INTS),
    (["demo"], "--batch", BAD_INTS),
    (["demo"], "--requests", BAD_INTS),
    (["demo"], "--in-flight", BAD_INTS),
    (["demo"], "--gen-tokens", BAD_INTS + ["209"]),
    (["demo"], "--pace", BAD_FLOATS),
    (["demo"], "--gate-budget", [v for v in BAD_FLOATS if v != "1e-308"] + ["1", "2"]),
]

NUMBER_CASES = [pytest.param([*words, f"{opt}={v}"], None, id=f"{' '.join(words)} {opt}={v}")
                for words, opt, values in NUMERIC for v in values]

P = ["place", "--model", "tiny"]
S = ["simulate", "--model", "tiny", "--requests", "2"]


def case(argv, needle=None, id=None):
    return pytest.param(argv, needle, id=id or " ".join(argv))


OTHER_CASES = [
    # unknown commands, options and actions
    case(["frobnicate"], "invalid choice: 'frobnicate'"),
    case(["--frob"], "unrecognized arguments"),
    case(["place", "--frob"], "unrecognized arguments: --frob"),
    case(["place", "extra"], "unrecognized arguments: extra"),
    case(["place", "--json=yes"], "ignored explicit argument"),
    case(["simulate", "--frob"], "unrecognized arguments"),
    case(["simulate", "--phase", "decode"], "unrecognized arguments"),
    case(["simulate", "--json"], "unrecognized arguments"),
    case(["demo", "--frob"], "unrecognized arguments"),
    case(["demo", "--phase", "decode"], "unrecognized arguments"),
    case(["policies", "--frob"], "unrecognized arguments"),
    case(["policies", "heft"], "unrecognized arguments"),
    case(["profiles"], "profiles needs an action"),
    case(["profiles", "frob"], "invalid choice: 'frob'"),
    case(["profiles", "show"], "required"),
    case(["profiles", "list", "--frob"], "unrecognized arguments"),
    case(["profiles", "calibrate", "--frob"], "unrecognized arguments"),
    case(["bench", "--only", "nope"], "unknown benchmark 'nope'"),
    case(["bench", "--frob"], "unrecognized arguments"),
    case(["place", "--seq-len"], "expected one argument"),
    case(["place", "--model", "tiny", "--graph", "x.json"], "not allowed with argument"),
    case(["simulate", "--rate", "5", "--in-flight", "2"], "not allowed with argument"),
    # unknown names: models, policies, objectives, granularities, phases, profiles
    case(["place", "--model", "7b"], "invalid choice: '7b'"),
    case(["simulate", "--model", "smollm2-135m"], "invalid choice: 'smollm2-135m'"),
    case(["demo", "--model", "1b"], "invalid choice: '1b'"),
    case([*P, "--policy", "nope"], "unknown policy 'nope'"),
    case([*P, "--policy", ""], "unknown policy ''"),
    case([*P, "--policy", "HEFT"], "unknown policy 'HEFT'"),
    case([*S, "--policy", "nope"], "unknown policy 'nope'"),
    case(["demo", "--model", "tiny", "--policy", "nope", "--out", "{dir}/demo"], "unknown policy"),
    case([*P, "--objective", "speed"], "invalid choice: 'speed'"),
    case([*S, "--objective", "speed"], "invalid choice: 'speed'"),
    case(["demo", "--objective", "speed"], "invalid choice: 'speed'"),
    case([*P, "--granularity", "block"], "invalid choice: 'block'"),
    case([*P, "--phase", "generate"], "invalid choice: 'generate'"),
    case([*P, "--phase", ""], "invalid choice: ''"),
    case(["profiles", "show", "nope"], "unknown profile 'nope'"),
    case(["profiles", "show", ""], None),
    case(["profiles", "show", "{a_folder}"], None),
    case(["profiles", "show", "{garbage_toml}"], None),
    case(["profiles", "show", "{empty_toml}"], None),
    # policy options
    case([*P, "--option", "novalue"], "give KEY=VALUE"),
    case([*P, "--option", "=1"], "give KEY=VALUE"),
    case([*P, "--option", "bogus=1"], "unknown option(s) 'bogus'"),
    case([*P, "--policy", "exact", "--option", "time_limit=-1"], "time_limit"),
    case([*P, "--policy", "exact", "--option", "time_limit=abc"], "time_limit"),
    # devices
    case([*P, "--devices", "sim:nope"], "unknown profile 'nope'"),
    case([*P, "--devices", "nope"], "unknown profile 'nope'"),
    case([*P, "--devices", "gpu:0"], None),
    case([*P, "--devices", "cpu:x"], "unknown device 'cpu:x'"),
    case([*P, "--devices", "cpu:-1"], "unknown device 'cpu:-1'"),
    case([*P, "--devices", "cuda:x"], "unknown device 'cuda:x'"),
    case([*P, "--devices", "npu:x"], "unknown device 'npu:x'"),
    case([*P, "--devices", "cudax"], "unknown device 'cudax'"),
    case([*P, "--devices", "sim:"], "unknown device 'sim:'"),
    case([*P, "--devices", ""], "names no device"),
    case([*P, "--devices", ",,"], "names no device"),
    case([*P, "--devices", "cpu", "cpu"], "listed twice"),
    case([*P, "--devices", "cuda", "cuda:0"], "listed twice"),
    case([*P, "--devices", "sim:{dir}/no-such.toml"], None),
    case([*P, "--devices", "sim:{garbage_toml}"], None),
    case([*P, "--devices", "sim:{empty_toml}"], None),
    case([*P, "--devices", "sim:{a_folder}"], None),
    case([*S, "--devices", "sim:nope"], "unknown profile 'nope'"),
    case(["demo", "--devices", "sim:nope", "--out", "{dir}/demo"], "unknown profile 'nope'"),
    # --mem-limit forms
    *(case([*P, f"--mem-limit={v}"], None, id=f"place --mem-limit={v}") for v in (
        "lots", "0", "-1GB", "nan", "inf", "1e400", "1e308TB", "1XB", "", "GB", "1 2GB", "=1GB",
        "sim:nope=1GB", "nope=1GB", "sim:jetson-orin-nx=", "sim:jetson-orin-nx=0",
        "sim:jetson-orin-nx=lots", "1KB")),
    case([*S, "--mem-limit", "lots"], "bad size 'lots'"),
    # graph files
    *(case(["place", "--graph", "{%s}" % name], needle, id=f"place --graph {name}")
      for name, needle in [("overflow", "finite"), ("deep", "nested too deeply"),
                           ("deep_obj", "nested too deeply"), ("garbage", "not valid JSON"),
                           ("empty", None), ("list", None), ("object", None), ("binary", None),
                           ("nan", None), ("inf", None), ("text_flops", None), ("cyclic", "cycle"),
                           ("dangling", None), ("version", None), ("nodes_int", None),
                           ("no_format", None), ("bad_kind", None),
                           ("task_graph", "is not an op graph"), ("a_folder", "no such file"),
                           ("a_file", None)]),
    case(["place", "--graph", "{dir}/none.json"], "no such file"),
    case(["place", "--graph", "{overflow}", "--json"], "finite"),
    case(["simulate", "--graph", "{deep}", "--out", "{dir}/sim"], "nested too deeply"),
    case(["simulate", "--graph", "{overflow}", "--out", "{dir}/sim"], "finite"),
    # output paths
    case([*P, "--out", "{a_file}/plan.json"], "is a file, not a folder"),
    case([*P, "--out", "{a_folder}"], "is a folder"),
    case([*P, "--out", ""], "is a folder"),
    case([*P, "--json", "--out", "{a_file}/sub/plan.json"], "is a file, not a folder"),
    case([*P, "--phase", "decode", "--out", "{a_folder}"], "is a folder"),
    case([*S, "--out", "{a_file}"], "is a file"),
    case([*S, "--out", "{a_file}/sub"], "is a file, not a folder"),
    case(["demo", "--out", "{a_file}"], "is a file"),
    case(["demo", "--out", "{a_file}/sub"], "is a file, not a folder"),
    case(["profiles", "calibrate", "--out", "{a_file}/host.toml"], "is a file, not a folder"),
    case(["profiles", "calibrate", "--out", "{folder_toml}"], "is a folder"),
    case(["profiles", "calibrate", "--out", "{dir}/host.txt"], "must end in .toml or .json"),
    # --phase with inputs that are not a decoder config, or options it does not use
    case([*P, "--phase", "decode", "--graph", "{good}"], "not allowed with argument"),
    case(["place", "--phase", "decode", "--graph", "{good}"], "not a graph file"),
    case(["place", "--phase", "prefill", "--graph", "{task_graph}"], "not a graph file"),
    case(["place", "--phase", "mix", "--model", "resnet"], "invalid choice: 'resnet'"),
    case([*P, "--phase", "decode", "--seq-len", "64"], "--prompt-len instead"),
    case([*P, "--phase", "decode", "--batch", "2"], "--max-batch instead"),
    case([*P, "--phase", "decode", "--granularity", "op"], "whole blocks"),
    case([*P, "--phase", "decode", "--max-context", "16"], "does not hold a request"),
    case([*P, "--phase", "decode", "--max-context", "100000"], "exceeds config"),
    case([*P, "--phase", "decode", "--max-batch", "2147483647", "--json"], None),
    # work that cannot be done
    case([*P, "--seq-len", "999999"], "exceeds"),
    case(["demo", "--model", "tiny", "--seq-len", "999999", "--out", "{dir}/demo"], "exceeds"),
    case([*P, "--mem-limit", "1KB", "--json"], "memory"),
    case([*P, "--batch", "2147483647", "--json"], None),
]

if not HAS_CUDA:  # with a GPU these place fine (see test_cuda_places_on_a_real_gpu)
    OTHER_CASES += [
        case([*P, "--devices", "cuda"], "CUDA is not available"),
        case([*P, "--devices", "cuda:0"], "CUDA is not available"),
        case([*P, "--devices", "sim:edge-cpu-a76,cuda:1"], "CUDA is not available"),
        case([*S, "--devices", "cuda:0"], "CUDA is not available"),
        case(["demo", "--model", "tiny", "--devices", "cuda", "--out", "{dir}/demo"],
             "CUDA is not available"),
    ]

CASES = NUMBER_CASES + OTHER_CASES


def test_the_corpus_is_large():
    assert len(CASES) >= 80


def _expand(argv, files):
    return [a.format(**files) for a in argv]


@pytest.mark.parametrize("argv, needle", CASES)
def test_bad_invocation_is_one_error_line(capsys, files, argv, needle):
    rc, out, err = run(capsys, *_expand(argv, files))
    assert_one_line_error(rc, err, *([needle] if needle else []))
    assert out == "", out  # nothing half-printed, so `--json > f` leaves no partial document


# ------------------------------------------------------------------- the good --json
@pytest.mark.parametrize("policy", ["heft", "exact", "auto"])
def test_json_plan_is_one_document(capsys, policy):
    if policy != "heft":  # exact, and auto on a graph this small, solve a MILP with HiGHS
        pytest.importorskip("highspy")
    rc, out, err = run(capsys, "place", "--model", "tiny", "--policy", policy, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["plan"]["policy"] == policy or policy == "auto"
    assert {d for _, d in doc["plan"]["assignment"]} <= set(cli.EDGE_TRIO)


def test_json_phase_plan_is_one_document(capsys):
    rc, out, err = run(capsys, "place", "--phase", "decode", "--model", "tiny", "--json")
    assert rc == 0, err
    assert json.loads(out)["phase"] == "decode"


def test_a_graph_file_with_big_finite_costs_places(capsys, files, tmp_path):
    """1e300 FLOP in one node is absurd but representable: placed, not refused."""
    doc = json.loads(open(files["good"]).read())
    doc["nodes"][1]["attrs"]["flops"] = 1e300
    f = tmp_path / "big.json"
    f.write_text(json.dumps(doc))
    rc, out, err = run(capsys, "place", "--graph", str(f), "--json")
    assert rc == 0, err
    assert json.loads(out)["graph"]["flops"] >= 1e300


# ------------------------------------------------------------ bugs and --debug
class TestUnexpectedErrors:
    def _boom(self, monkeypatch, exc):
        from scheduler.cli import policies as pol_cmd

        def boom(args):
            raise exc
        monkeypatch.setattr(pol_cmd, "run", boom)

    @pytest.mark.parametrize("exc", [KeyError("x"), IndexError("list index out of range"),
                                     AssertionError(), RecursionError("too deep"),
                                     OverflowError("int too large"), TypeError("bad")])
    def test_a_bug_is_one_line_naming_the_exception(self, capsys, monkeypatch, exc):
        monkeypatch.delenv("HETSCHED_DEBUG", raising=False)
        self._boom(monkeypatch, exc)
        rc, out, err = run(capsys, "policies")
        assert_one_line_error(rc, err, f"internal error {type(exc).__name__}", "a bug in hetsched",
                              "HETSCHED_DEBUG=1")

    def test_an_expected_error_is_its_message(self, capsys, monkeypatch):
        monkeypatch.delenv("HETSCHED_DEBUG", raising=False)
        self._boom(monkeypatch, FileNotFoundError(2, "No such file or directory", "x.json"))
        rc, _, err = run(capsys, "policies")
        assert_one_line_error(rc, err, "No such file or directory: 'x.json'")
        assert "bug" not in err

    def test_a_long_message_is_cut(self, capsys, monkeypatch):
        self._boom(monkeypatch, ValueError("x" * 10_000))
        rc, _, err = run(capsys, "policies")
        assert_one_line_error(rc, err)
        assert len(err.strip()) <= len("hetsched: error: ") + cli.MAX_ERROR_CHARS

    @pytest.mark.parametrize("how", ["env", "flag"])
    def test_debug_reraises(self, capsys, monkeypatch, how):
        self._boom(monkeypatch, KeyError("x"))
        if how == "env":
            monkeypatch.setenv("HETSCHED_DEBUG", "1")
        with pytest.raises(KeyError):
            cli.main(["--debug", "policies"] if how == "flag" else ["policies"])

    def test_debug_zero_is_off(self, capsys, monkeypatch):
        self._boom(monkeypatch, KeyError("x"))
        monkeypatch.setenv("HETSCHED_DEBUG", "0")
        rc, _, err = run(capsys, "policies")
        assert_one_line_error(rc, err, "internal error KeyError")

    def test_interrupt_is_status_130(self, capsys, monkeypatch):
        self._boom(monkeypatch, KeyboardInterrupt())
        rc, _, err = run(capsys, "policies")
        assert rc == 130 and err.strip() == "hetsched: interrupted"


# ------------------------------------------------------------- the real entry points
def _proc(*argv, env=None, module=False):
    cmd = [sys.executable, "-m", "scheduler", *argv] if module or not os.path.exists(HETSCHED) \
        else [HETSCHED, *argv]
    e = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    e.pop("HETSCHED_DEBUG", None) if not env or "HETSCHED_DEBUG" not in env else None
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=300)


def _assert_proc_error(p, needle=None):
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hetsched: error: "), p.stderr
    assert needle is None or needle in lines[0], lines[0]
    assert p.stdout == ""


@pytest.mark.parametrize("argv, needle, module", [
    (["frobnicate"], "invalid choice", True),
    (["place", "--model", "tiny", "--seq-len", "nan"], "expected an integer", False),
    (["place", "--graph", "{deep}"], "nested too deeply", False),
    (["place", "--graph", "{overflow}"], "finite", True),
    pytest.param(["place", "--model", "tiny", "--devices", "cuda"], "CUDA is not available", False,
                 marks=pytest.mark.skipif(HAS_CUDA, reason="a GPU is present")),
])
def test_real_process_prints_one_line(files, argv, needle, module):
    _assert_proc_error(_proc(*_expand(argv, files), module=module), needle)


def test_real_process_debug_shows_the_traceback(files):
    p = _proc("place", "--graph", files["deep"], env={"HETSCHED_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_real_process_closed_pipe(tmp_path):
    """`hetsched policies | head -0`: the reader is gone; exit 1, nothing on stderr."""
    e = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "scheduler", "policies"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=e)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 1 and err == ""


# ----------------------------------------------------------- what the CLI prints
def test_profiles_list_labels_each_peak_with_its_dtype(capsys):
    """Each peak under its own dtype's column (bf16 no longer shown as fp16)."""
    from executors import profiles

    rc, out, _ = run(capsys, "profiles", "list")
    assert rc == 0
    lines = out.splitlines()
    head = re.split(r"\s{2,}", lines[0].strip())
    assert head[:6] == ["profile", "kind", "fp32", "fp16", "bf16", "int8"]
    for ln in lines[2:]:
        if not ln.strip():
            break
        cells = dict(zip(head, re.split(r"\s{2,}", ln.strip())))
        spec = profiles.load(cells["profile"])
        for dtype, col in (("float32", "fp32"), ("float16", "fp16"), ("bfloat16", "bf16"),
                           ("int8", "int8")):
            v = spec.peak_flops.get(dtype)
            assert cells[col] == (f"{v / 1e12:.3g} {'TOP/s' if col == 'int8' else 'TFLOP/s'}"
                                  if v else "-"), (cells["profile"], col)


class _FakeRay:
    def __init__(self, initialized=False):
        self.initialized, self.address = initialized, "unset"

    def is_initialized(self):
        return self.initialized

    def init(self, address=None, **kw):
        self.address = address


@pytest.mark.parametrize("flag, env, started, words", [
    ("ray://head:10001", None, True, "the Ray cluster at ray://head:10001"),
    (None, "10.0.0.5:6379", True, "the Ray cluster at 10.0.0.5:6379"),
    (None, None, False, "the Ray already running in this process"),
])
def test_demo_says_which_ray_it_joins(monkeypatch, flag, env, started, words):
    import argparse

    from scheduler.cli import demo

    fake = _FakeRay(initialized=not started)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    own, which = demo._start_ray(argparse.Namespace(ray_address=flag), ["cpu"])
    assert (own, which) == (started, words)
    assert "embedded" not in which
    if started:
        assert fake.address == (flag or env)


@pytest.mark.gpu
def test_cuda_places_on_a_real_gpu(capsys):
    rc, out, err = run(capsys, "place", "--model", "tiny", "--devices", "cuda", "cpu", "--json")
    assert rc == 0, err
    assert {d for _, d in json.loads(out)["plan"]["assignment"]} <= {"cuda:0", "cpu"}
    rc, _, err = run(capsys, "place", "--model", "tiny", "--devices", f"cuda:{torch.cuda.device_count()}")
    assert_one_line_error(rc, err, "no such GPU")
