"""Host calibration command and the CPU measurement helpers."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import executors.profiles as profiles
from executors.calibrate import calibrate, main
from executors.errors import ExecutorError, ProfileError
from executors.measure import contiguous_chunks, measure_nodes, measure_partitions
from graphs.capture import capture
from graphs.opgraph import OpGraph

ROOT = __file__.rsplit("/tests/", 1)[0]


def test_quick_mode_writes_a_loadable_profile(tmp_path):
    out = tmp_path / "host.toml"
    r = subprocess.run([sys.executable, "-m", "executors.calibrate", "--out", str(out), "--quick",
                        "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "calibrating host CPU" in r.stderr  # the tqdm progress bar
    spec = profiles.load(str(out))
    assert spec.name == "host-cpu" and spec.kind == "cpu"
    assert set(spec.peak_flops) == {"float32", "bfloat16", "float16"}
    assert all(v > 0 for v in spec.peak_flops.values())
    assert spec.mem_bandwidth > 0 and 0 < spec.launch_overhead < 1e-2
    src = spec.sources["peak_flops.float32"]
    assert src.startswith("measured here with command `python -m executors.calibrate --out")
    assert "--quick" in src


def test_json_output_and_name(tmp_path):
    out = tmp_path / "h.json"
    assert main(["--out", str(out), "--quick", "--name", "box"]) == 0
    assert profiles.load(str(out)).name == "box"


def test_bad_threads():
    with pytest.raises(ProfileError, match=r"threads must be an int >= 1, got 0"):
        calibrate(None, quick=True, threads=0, progress=False)


class _Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.fixture(scope="module")
def mlp_graph():
    x = torch.randn(3, 16)
    return capture(_Mlp(), (x,)), (x,)


class TestMeasure:
    def test_nodes_cover_graph(self, mlp_graph):
        g, x = mlp_graph
        t = measure_nodes(g, x, repeats=3)
        assert set(t) == set(g.nodes)
        assert all(v > 0 for v in t.values())

    def test_partitions_are_contiguous_and_cover_compute_nodes(self, mlp_graph):
        g, x = mlp_graph
        parts = measure_partitions(g, x, chunks=2, repeats=2)
        assert [p.nodes for p in parts] == [("a", "relu"), ("b",)]
        assert [p.label for p in parts] == [0, 1]
        assert parts[0].flops == g.nodes["a"]["flops"] + g.nodes["relu"]["flops"]
        assert all(p.seconds > 0 for p in parts)

    def test_chunks_out_of_range(self, mlp_graph):
        g, x = mlp_graph
        with pytest.raises(ExecutorError, match=r"chunks must be an int in 1\.\.3"):
            measure_partitions(g, x, chunks=7)

    def test_meta_weights_rejected(self):
        with torch.device("meta"):
            m = _Mlp()
        g = capture(m, (torch.empty(3, 16, device="meta"),))
        with pytest.raises(ExecutorError, match=r"is on 'meta'; measuring needs a model captured"):
            measure_nodes(g, (torch.randn(3, 16),))

    def test_other_device_not_implemented(self, mlp_graph):
        g, x = mlp_graph
        with pytest.raises(NotImplementedError, match=r"device 'cuda' is not implemented"):
            measure_nodes(g, x, device="cuda")

    def test_contiguous_chunks_equal_counts(self):
        g = OpGraph()
        g.add_node("in", kind="input")
        g.add_nodes_from("abcde", kind="elementwise")
        g.add_edges_from([("in", "a"), ("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")])
        assert contiguous_chunks(g, 2) == {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}


def test_thread_clock_needs_one_thread(mlp_graph):
    g, x = mlp_graph
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(ExecutorError, match=r"clock='thread' needs torch.set_num_threads\(1\)"):
            measure_partitions(g, x, chunks=2, clock="thread")
        torch.set_num_threads(1)
        parts = measure_partitions(g, x, chunks=2, repeats=2, clock="thread")
        assert all(p.seconds > 0 for p in parts)
    finally:
        torch.set_num_threads(n)


def test_unknown_clock(mlp_graph):
    from graphs.errors import UnknownNameError

    g, x = mlp_graph
    with pytest.raises(UnknownNameError, match=r"unknown clock 'cpu'; valid choices: thread, wall"):
        measure_nodes(g, x, clock="cpu")
