"""Token exits through Runtime.generate: the three modes, their results against local
decoding, the statistics, and bad settings refused before anything runs."""
from __future__ import annotations

import pytest
import torch

from graphs.decoding import generate_local
from graphs.exit_decoding import ExitDecoderShard
from graphs.models import decoder, example_inputs
from policies.gating.gates import GatingError
from policies.gating.token_exit import TokenExitConfig, train_token_exits
from scheduler import Runtime
from scheduler.errors import RuntimeConfigError

CFG = TokenExitConfig(layers=(1,), shortlist=96, prompt_tokens=8, new_tokens=8, epochs=2, budget=0.3,
                      prompts=(("train", 16), ("gate", 16), ("val", 32), ("test", 6)))


@pytest.fixture(scope="module")
def exits():
    m = decoder("tiny-llama")
    g = torch.Generator().manual_seed(1)
    prompts = {s: torch.randint(0, 256, (n, 8), generator=g).tolist() for s, n in CFG.prompts}
    return m, prompts, train_token_exits(m, prompts, CFG)


def _rt(m, ex, devices=("cpu",), **gen):
    gen = {"max_context": 64, "max_batch": 4, "exit_gate": "max_softmax", **gen}
    return Runtime(m, example_inputs(m, seq_len=8), devices=list(devices), gate=ex, generation=gen)


@pytest.fixture(scope="module")
def rt(ray_session, exits):
    m, _, ex = exits
    r = _rt(m, ex, draft_threshold=0.05)
    yield r
    r.shutdown()


class TestModes:
    def test_speculative_equals_full_greedy_decoding(self, rt, exits):
        m, prompts, _ = exits
        for p in prompts["test"]:
            want = generate_local(m, p, 16)
            assert list(rt.generate(p, 16, exit_mode="speculative").tokens) == want
            assert list(rt.generate(p, 16, exit_mode="full").tokens) == want

    def test_lossy_equals_local_lossy_decoding(self, rt, exits):
        m, prompts, ex = exits
        shard = ExitDecoderShard(m, ex)
        for p in prompts["test"]:
            want, _ = shard.generate(p, 16, mode="lossy", gate="max_softmax")
            assert list(rt.generate(p, 16, exit_mode="lossy").tokens) == want

    def test_concurrent_sequences_of_mixed_modes(self, rt, exits):
        m, prompts, ex = exits
        shard = ExitDecoderShard(m, ex)
        modes = ["speculative", "lossy", "full"] * 2
        futs = [rt.submit_generate(p, 12, exit_mode=mo) for p, mo in zip(prompts["test"], modes)]
        for p, mo, f in zip(prompts["test"], modes, futs):
            want = (shard.generate(p, 12, mode="lossy", gate="max_softmax")[0] if mo == "lossy"
                    else generate_local(m, p, 12))
            assert list(f.result(timeout=60).tokens) == want, mo

    def test_stats_report_exits_and_drafts(self, rt, exits):
        _, prompts, _ = exits
        rt.reset_generation_stats()
        for p in prompts["test"][:3]:
            rt.generate(p, 12, exit_mode="speculative")
            rt.generate(p, 12, exit_mode="lossy")
        ex = rt.generation_stats().exit
        sp, lo = ex["speculative"], ex["lossy"]
        assert sp["tokens"] == lo["tokens"] == 3 * 11  # the first token of each comes from the prefill
        assert 0 <= sp["accepted"] <= sp["drafted"] and sp["tokens_per_full_pass"] >= 1.0
        assert sp["draft_acceptance"] == round(sp["accepted"] / sp["drafted"], 4)
        assert set(lo["exit_rate"]) == {1} and 0.0 <= lo["exit_rate"][1] <= 1.0
        assert lo["tokens_per_full_pass"] == pytest.approx(
            lo["tokens"] / lo["full_passes"], abs=1e-3)

    def test_kv_caches_are_freed(self, rt, exits):
        _, prompts, _ = exits
        rt.generate(prompts["test"][0], 10, exit_mode="speculative")
        assert all(v["sequences"] == 0 for v in rt.kv_stats().values())


class TestPlacement:
    """The policy places the shallow path and the deep layers; across devices each is a shard."""

    @pytest.mark.parametrize("devices", [["cpu:0", "cpu:1"], ["sim:atlas-200i-a2", "sim:jetson-orin-nx"]])
    def test_split_chain_gives_the_local_results(self, ray_session, exits, devices):
        m, prompts, ex = exits
        shard = ExitDecoderShard(m, ex)
        with Runtime(m, example_inputs(m, seq_len=8), devices=devices, policy="round-robin", gate=ex,
                     generation={"max_context": 64, "exit_gate": "max_softmax", "draft_threshold": 0.05}) as r:
            stages = r.generation_stages
            assert [(s.device, s.blocks[-1]) for s in stages] == [(devices[0], "layers.0"), (devices[1], "lm_head")]
            assert r.generation_plan.assignment == {"shallow": devices[0], "deep": devices[1]}
            for p in prompts["test"][:3]:
                assert list(r.generate(p, 12, exit_mode="speculative").tokens) == generate_local(m, p, 12)
                want, _ = shard.generate(p, 12, mode="lossy", gate="max_softmax")
                assert list(r.generate(p, 12, exit_mode="lossy").tokens) == want
            st = r.generation_stats()
            assert st.simulated == devices[0].startswith("sim:")
            assert set(st.busy) == set(devices) and all(v > 0 for v in st.busy.values())
            assert st.exit["speculative"]["tokens"] == 3 * 11

    @pytest.mark.parametrize("threshold,work", [
        (-float("inf"), [("embed", 1), ("layers", 0, 1, 1, 1), ("head", 1), ("fill", 1, 1)]),  # exits
        (float("inf"), [("embed", 1), ("layers", 0, 2, 1, 1), ("lm_head", 1)]),  # never evaluated
    ])
    def test_simulated_device_time_is_the_priced_work(self, exits, threshold, work):
        """A simulated device reports the cost model's price of what an exit call computed."""
        from executors import profiles
        from executors.simulated import SimulatedExecutor, price_exit_work

        m, prompts, ex = exits
        spec = profiles.load("atlas-200i-a2", name="sim:npu")

        class Spy(SimulatedExecutor):
            def _exit_duration(self, shard, work, context):
                self.seen = (list(work), context)
                return super()._exit_duration(shard, work, context)

        sim = Spy(spec)
        sim.load_shard(ExitDecoderShard(m, ex, id=5))
        p = prompts["test"][0]
        tok, _ = sim.step(5, (1,), torch.tensor([p]), reserve=(len(p) + 8,))
        out, meta = sim.step(5, (1,), tok.argmax(-1)[:, None], exit=dict(
            mode="lossy", gate="max_softmax", thresholds=(threshold,), threshold=0.0, max_draft=2, exit_index=0,
            limits=(1,), lengths=(len(p),)))
        seen, context = sim.seen
        assert seen == work and context == len(p)
        assert meta.duration == pytest.approx(price_exit_work(sim._cost(), "sim:npu", m.config, work, context, 96))
        assert meta.exit["exits"] == [1 if threshold < 0 else 0] and out.shape == (1, 1)


class TestBadSettings:
    def test_unknown_exit_mode_per_request(self, rt, exits):
        with pytest.raises(RuntimeConfigError, match="exit_mode 'fast' is unknown; valid: full, lossy, speculative"):
            rt.generate([1, 2, 3], 4, exit_mode="fast")

    def test_sampling_with_exits_is_refused(self, rt):
        with pytest.raises(RuntimeConfigError, match="greedily.*not implemented"):
            rt.generate([1, 2, 3], 4, exit_mode="lossy", temperature=0.7)

    def test_unknown_gate(self, ray_session, exits):
        m, _, ex = exits
        with pytest.raises(GatingError, match="unknown token gate 'oracle'"):
            _rt(m, ex, exit_gate="oracle")

    def test_draft_exit_out_of_range(self, ray_session, exits):
        m, _, ex = exits
        with pytest.raises(RuntimeConfigError, match="draft_exit 3 .* valid: -1..0"):
            _rt(m, ex, draft_exit=3)

    def test_unknown_default_mode(self):
        with pytest.raises(RuntimeConfigError, match="exit_mode 'turbo' is unknown"):
            from scheduler.generation import GenerationConfig
            GenerationConfig(exit_mode="turbo")

    def test_exit_mode_without_exits(self, ray_session):
        m = decoder("tiny-llama")
        with Runtime(m, example_inputs(m, seq_len=8), devices=["cpu"], generation={"max_context": 64}) as r:
            with pytest.raises(RuntimeConfigError, match="needs token exits"):
                r.generate([1, 2], 3, exit_mode="speculative")
            assert len(r.generate([1, 2], 3).tokens) == 3  # the runtime keeps serving
