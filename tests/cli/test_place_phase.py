"""``hetsched place --phase prefill|decode|mix``: a decoder config placed for one generation
phase; the printed plan, shards and tokens/s checked against policies.phase and
graphs.decoding, and bad combinations rejected with one line and status 2."""
from __future__ import annotations

import json

import pytest

import policies
from graphs import models as M
from graphs.decoding import block_names, shard_ranges
from policies.phase import phase_graphs, place_phase
from policies.roofline import RooflineCostModel
from scheduler.cli import main
from scheduler.cli.common import DECODER_CONFIGS, fmt_s
from scheduler.cli.place import phase_rows
from scheduler.runtime import build_cluster

PAIR = ("sim:atlas-200i-a2", "sim:edge-cpu-a76")
WORK = dict(prompt_len=128, new_tokens=128, max_batch=1, max_context=256, itemsize=4)  # the defaults


from tests._cli import assert_one_line_error, run  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    cluster = build_cluster(PAIR)
    return cluster, RooflineCostModel(cluster)


def reference(pair, config, phase, objective="latency", **work):
    cluster, cm = pair
    w = {**WORK, **work}
    plan, graph, pcm = place_phase(policies.get("heft", objective=objective), M.get_config(config),
                                   cluster, cm, phase, **w)
    return plan, graph, pcm


class TestDecode:
    def test_prints_the_shards_and_tokens_per_s(self, capsys, pair):
        rc, out, err = run(capsys, "place", "--phase", "decode", "--model", "smollm2-135m",
                           "--devices", ",".join(PAIR))
        assert rc == 0, err
        plan, _, _ = reference(pair, "smollm2-135m", "decode")
        assert f"predicted time per decode step {fmt_s(plan.makespan)}" in out
        assert "shards (maximal runs of consecutive blocks on one device):" in out
        names = block_names(M.get_config("smollm2-135m"))
        shard_lines = out.split("shards (")[1].split("\n\n")[0].splitlines()[3:]
        assert [ln.split() for ln in shard_lines] == [
            [d, str(a), str(b), str(b - a), names[a], names[b - 1]]
            for d, a, b in shard_ranges(M.get_config("smollm2-135m"), plan.assignment)]
        # decode: max_batch tokens per step
        line = next(ln for ln in out.splitlines() if ln.startswith("  decode (placed for):"))
        assert f"in {fmt_s(plan.makespan)} per step, {1 / plan.makespan:.4g} tokens/s" in line

    def test_json_is_the_library_plan(self, capsys, pair):
        rc, out, _ = run(capsys, "place", "--phase", "decode", "--model", "tiny", "--max-batch", "4",
                         "--devices", *PAIR, "--json")
        assert rc == 0
        doc = json.loads(out)
        assert doc["phase"] == "decode" and doc["model"] == "tiny"
        assert doc["workload"] == {**WORK, "max_batch": 4}
        plan, graph, cm = reference(pair, "tiny", "decode", max_batch=4)
        got = policies.Plan.from_dict(doc["plan"])
        assert got.assignment == plan.assignment
        assert policies.validate(got, graph, pair[0], cm, raise_=False) == []
        assert [(s["device"], s["start"], s["stop"]) for s in doc["shards"]] == \
            shard_ranges(M.get_config("tiny"), plan.assignment)
        assert doc["phases"]["decode"]["time_s"] == pytest.approx(plan.makespan)
        assert doc["phases"]["decode"]["tokens_per_s"] == pytest.approx(4 / plan.makespan)
        pre = doc["phases"]["prefill"]
        assert pre["tokens_per_s"] == pytest.approx(128 / pre["time_s"])
        assert doc["graph"]["nodes"] == len(block_names(M.get_config("tiny")))

    def test_out_file_holds_the_printed_json(self, capsys, tmp_path):
        f = tmp_path / "plan.json"
        rc, out, _ = run(capsys, "place", "--phase", "prefill", "--model", "tiny", "--json", "--out", str(f))
        assert rc == 0
        a, b = json.loads(out), json.loads(f.read_text())
        a["plan"].pop("decide_time"), b["plan"].pop("decide_time")
        assert a == b


class TestPhases:
    @pytest.mark.parametrize("phase", ["prefill", "decode", "mix"])
    def test_placed_phase_equals_the_same_split_rescheduled(self, pair, phase):
        cluster, cm = pair
        cfg = M.get_config("small")
        plan, _, _ = reference(pair, "small", phase, max_batch=4, new_tokens=64, max_context=192)
        work = {**WORK, "max_batch": 4, "new_tokens": 64, "max_context": 192}
        placed = phase_rows(plan, cfg, cluster, cm, phase, work)
        again = phase_rows(plan, cfg, cluster, cm, None, work)  # every phase re-scheduled
        for ph in ("prefill", "decode", "mix"):
            assert placed[ph]["time_s"] == pytest.approx(again[ph]["time_s"])

    def test_mix_is_one_prefill_plus_the_weighted_decode_steps(self, pair):
        cluster, cm = pair
        cfg = M.get_config("small")
        work = {**WORK, "max_batch": 4, "new_tokens": 64, "max_context": 192}
        plan, _, _ = reference(pair, "small", "mix", max_batch=4, new_tokens=64, max_context=192)
        rows = phase_rows(plan, cfg, cluster, cm, "mix", work)
        assert rows["mix"]["time_s"] == pytest.approx(rows["prefill"]["time_s"]
                                                      + 64 / 4 * rows["decode"]["time_s"])
        assert rows["mix"]["tokens_per_s"] == pytest.approx(64 / rows["mix"]["time_s"])

    def test_mix_prints_what_its_makespan_means(self, capsys):
        rc, out, _ = run(capsys, "place", "--phase", "mix", "--model", "tiny", "--new-tokens", "32",
                         "--max-batch", "4")
        assert rc == 0
        assert "predicted device work per request" in out
        assert ("of device work per request, weighting 1 prefill + new-tokens/max-batch = 32/4 "
                "decode steps") in out

    def test_prefill_and_decode_split_differently(self, capsys):
        """The README's pair: for energy, decode moves the layers to the low-power CPU."""
        shards = {}
        for phase in ("prefill", "decode"):
            rc, out, _ = run(capsys, "place", "--phase", phase, "--model", "smollm2-135m", "--devices",
                             ",".join(PAIR), "--objective", "energy", "--json")
            assert rc == 0
            shards[phase] = [(s["device"], s["first"], s["last"]) for s in json.loads(out)["shards"]]
        assert shards["prefill"] != shards["decode"]
        assert shards["prefill"] == [("sim:atlas-200i-a2", "embed_tokens", "lm_head")]  # all on the NPU
        assert ("sim:edge-cpu-a76", "embed_tokens", "norm") in shards["decode"]

    def test_phase_graphs_carry_the_kv_cache_printed(self, capsys):
        rc, out, _ = run(capsys, "place", "--phase", "decode", "--model", "tiny", "--max-batch", "2",
                         "--max-context", "300")
        assert rc == 0
        g = phase_graphs(M.get_config("tiny"), prompt_len=128, new_tokens=128, max_batch=2, max_context=300)
        kv = sum(a["state_bytes"] for _, a in g["decode"].nodes(data=True))
        from scheduler.tables import format_value

        assert f"{format_value('kv_bytes', kv)} of KV cache (2 sequences x 300 positions)" in out


def test_decoder_configs_are_the_models():
    assert DECODER_CONFIGS == M.configs()


class TestErrors:
    def test_bad_phase(self, capsys):
        rc, _, err = run(capsys, "place", "--phase", "generate")
        assert_one_line_error(rc, err, "invalid choice: 'generate'", "prefill", "decode", "mix")

    def test_graph_file(self, capsys, tmp_path):
        import graphs

        m = M.pangu_embedded("tiny", device="meta")
        f = tmp_path / "g.json"
        graphs.save(graphs.capture(m, M.example_inputs(m, seq_len=8)), f)
        rc, _, err = run(capsys, "place", "--phase", "decode", "--graph", str(f))
        assert_one_line_error(rc, err, "not a graph file", "--model NAME", ", ".join(M.configs()))

    def test_non_decoder_model(self, capsys):
        rc, _, err = run(capsys, "place", "--phase", "decode", "--model", "resnet")
        assert_one_line_error(rc, err, "invalid choice: 'resnet'", "smollm2-135m", "tiny-llama")

    @pytest.mark.parametrize("argv, needle", [
        (["--seq-len", "64"], "give --prompt-len instead"),
        (["--batch", "2"], "give --max-batch instead"),
        (["--granularity", "op"], "places whole blocks"),
        (["--max-context", "100"], "--max-context 100 does not hold a request"),
        (["--model", "tiny", "--prompt-len", "500"], "exceeds config 'tiny''s maximum of 512"),
        (["--max-batch", "0"], "expected an integer >= 1, got '0'"),
    ])
    def test_bad_workload(self, capsys, argv, needle):
        rc, _, err = run(capsys, "place", "--phase", "decode", *argv)
        assert_one_line_error(rc, err, needle)


def test_without_phase_place_is_unchanged_and_takes_every_config(capsys):
    rc, out, _ = run(capsys, "place", "--model", "tiny-llama", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert "phase" not in doc and "shards" not in doc and "partitions" in doc
