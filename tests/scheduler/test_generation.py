"""Generation through the partitioned runtime: prefill + decode with per-actor KV caches."""
from __future__ import annotations

import concurrent.futures as cf
import time

import pytest
import torch

from graphs.decoding import DecodingError, generate_local, shard_ranges
from graphs.models import decoder, example_inputs
from graphs.sampling import SamplingParams
from scheduler import Runtime
from scheduler.errors import RequestFailed, RequestTimeout, RuntimeConfigError
from scheduler.generation import GenerationConfig

pytestmark = pytest.mark.ray

PROMPTS = [[1, 2, 3], [17, 4, 99, 250, 3, 8, 8, 1], [200], list(range(40, 70))]
TRIO = ["sim:atlas-200i-a2", "sim:jetson-orin-nx", "sim:edge-cpu-a76"]


@pytest.fixture(scope="module")
def tiny():
    return decoder("tiny")


def _runtime(model, devices, policy="heft", **kw):
    kw.setdefault("generation", GenerationConfig(max_batch=8, max_context=128))
    return Runtime(model, example_inputs(model, seq_len=8), devices=devices, policy=policy, **kw)


@pytest.fixture(scope="module")
def split_rt(ray_session, tiny):
    """The tiny decoder split over the simulated trio, one block per device in turn."""
    rt = _runtime(tiny, TRIO, policy="round-robin")
    yield rt
    rt.shutdown()


class TestEquivalence:
    def test_split_runtime_has_several_shards_on_several_devices(self, split_rt):
        stages = split_rt.generation_stages
        assert len(stages) >= 3 and len({s.device for s in stages}) == 3
        ranges = shard_ranges(split_rt.model.config, split_rt.generation_plan.assignment)
        assert [(s.device, s.start, s.stop) for s in stages] == ranges

    @pytest.mark.parametrize("prompt", PROMPTS)
    def test_greedy_tokens_equal_the_unpartitioned_model(self, split_rt, tiny, prompt):
        r = split_rt.generate(prompt, max_new_tokens=12)
        assert list(r.tokens) == generate_local(tiny, prompt, 12)
        assert r.finish_reason == "length" and r.prompt_len == len(prompt)

    def test_on_one_cpu_and_on_two_named_cpus(self, ray_session, tiny):
        want = [generate_local(tiny, p, 10) for p in PROMPTS]
        for devices, policy in ((["cpu"], "heft"), (["cpu:0", "cpu:1"], "round-robin")):
            with _runtime(tiny, devices, policy=policy) as rt:
                assert len({s.device for s in rt.generation_stages}) == len(devices)
                got = [list(rt.generate(p, max_new_tokens=10).tokens) for p in PROMPTS]
                assert got == want, devices

    def test_multi_step_decoding_on_one_shard_equals_one_step_at_a_time(self, ray_session, tiny):
        gen = GenerationConfig(max_batch=8, max_context=128, steps_per_call=5)
        with _runtime(tiny, ["cpu"], generation=gen) as rt:
            assert len(rt.generation_stages) == 1
            ref = generate_local(tiny, PROMPTS[1], 23)
            stop = ref[7]
            r = rt.generate(PROMPTS[1], max_new_tokens=23, stop=[stop])
            assert list(r.tokens) == ref[: ref.index(stop) + 1]  # tokens after the stop are dropped
            futs = [rt.submit_generate(p, max_new_tokens=13) for p in PROMPTS]  # 13: not a multiple of 5
            assert [list(f.result(timeout=60).tokens) for f in futs] == [generate_local(tiny, p, 13)
                                                                        for p in PROMPTS]
            assert list(rt.generate_stream(PROMPTS[0], max_new_tokens=11)) == generate_local(tiny, PROMPTS[0], 11)
            assert all(v["sequences"] == 0 and v["bytes"] == 0 for v in rt.kv_stats().values())

    def test_llama_style_config(self, ray_session):
        m = decoder("tiny-llama", seed=3)
        with _runtime(m, TRIO[:2], policy="round-robin") as rt:
            for p in PROMPTS[:2]:
                assert list(rt.generate(p, max_new_tokens=8).tokens) == generate_local(m, p, 8)

    def test_many_sequences_in_flight_batch_decode_steps(self, split_rt, tiny):
        prompts = [[i + 1, (7 * i) % 250, 3] + [5] * (i % 5) for i in range(12)]
        split_rt.reset_generation_stats()
        futs = [split_rt.submit_generate(p, max_new_tokens=16) for p in prompts]
        got = [list(f.result(timeout=60).tokens) for f in futs]
        assert got == [generate_local(tiny, p, 16) for p in prompts]
        st = split_rt.generation_stats()
        assert st.requests == 12 and st.generated_tokens == 12 * 16
        assert st.mean_decode_batch > 1.5  # decode steps of several sequences ran together

    def test_stream_yields_the_tokens_as_they_come(self, split_rt, tiny):
        toks = list(split_rt.generate_stream([5, 6, 7], max_new_tokens=9))
        assert toks == generate_local(tiny, [5, 6, 7], 9)

    def test_stop_token_ends_early_and_is_kept(self, split_rt, tiny):
        ref = generate_local(tiny, PROMPTS[1], 12)
        stop = ref[4]
        r = split_rt.generate(PROMPTS[1], max_new_tokens=12, stop=[stop])
        assert list(r.tokens) == ref[: ref.index(stop) + 1] and r.finish_reason == "stop"


class TestSampling:
    def test_seeded_sampling_is_deterministic_and_matches_local(self, split_rt, tiny):
        kw = dict(temperature=0.9, top_k=50, top_p=0.95, seed=1234)
        a = split_rt.generate(PROMPTS[0], max_new_tokens=12, **kw).tokens
        b = split_rt.generate(PROMPTS[0], max_new_tokens=12, **kw).tokens
        assert a == b
        assert list(a) == generate_local(tiny, PROMPTS[0], 12, SamplingParams(**kw))
        c = split_rt.generate(PROMPTS[0], max_new_tokens=12, temperature=0.9, seed=99).tokens
        assert c != a  # another seed draws another continuation (random weights: near-flat logits)


class TestCaches:
    def test_caches_are_freed_over_1000_short_generations(self, split_rt):
        for _ in range(20):
            futs = [split_rt.submit_generate([3, 4, 5], max_new_tokens=2) for _ in range(50)]
            for f in futs:
                assert len(f.result(timeout=60).tokens) == 2
        kv = split_rt.kv_stats()
        assert set(kv) == set(TRIO)
        assert all(v["sequences"] == 0 and v["bytes"] == 0 for v in kv.values()), kv

    def test_cancel_and_timeout_free_caches(self, split_rt):
        f = split_rt.submit_generate([1, 2], max_new_tokens=100)
        time.sleep(0.05)
        assert f.cancel()
        with pytest.raises(RequestTimeout, match="did not finish within"):
            split_rt.generate([1, 2], max_new_tokens=110, timeout=0.05)
        deadline = time.time() + 10
        while time.time() < deadline:
            if all(v["sequences"] == 0 for v in split_rt.kv_stats().values()):
                break
            time.sleep(0.05)
        assert all(v["sequences"] == 0 and v["bytes"] == 0 for v in split_rt.kv_stats().values())
        # and the runtime still serves
        assert len(split_rt.generate([1, 2], max_new_tokens=3).tokens) == 3

    def test_plan_memory_counts_the_kv_cache(self, split_rt):
        c = split_rt.model.config
        kv_total = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 8 * 128 * 4
        g = split_rt.generation_graph
        assert sum(g.nodes[n].get("state_bytes", 0) for n in g) == kv_total
        plan = split_rt.generation_plan
        params = sum(g.nodes[n]["param_bytes"] for n in g)
        assert sum(plan.memory.values()) >= params + kv_total


class TestBadInput:
    @pytest.mark.parametrize("prompt, n, match", [
        ([], 4, "prompt is empty"),
        ([1, 256], 4, r"prompt token 1 is 256, outside the vocabulary \[0, 255\]"),
        ([1, -1], 4, "outside the vocabulary"),
        ([1, 2], -1, "max_new_tokens must be an int >= 0"),
        ([1, 2], 600, "exceeds the context"),
        ("hello", 4, "list of token ids"),
        (torch.zeros(2, 3), 4, "1-D integer tensor"),
    ])
    def test_rejected_at_submit_with_a_clear_error(self, split_rt, prompt, n, match):
        with pytest.raises(DecodingError, match=match):
            split_rt.submit_generate(prompt, max_new_tokens=n)
        assert len(split_rt.generate([1], max_new_tokens=2).tokens) == 2  # still serving

    def test_beyond_the_configured_context_is_rejected(self, split_rt):
        with pytest.raises(RuntimeConfigError, match="max_context"):
            split_rt.generate([1] * 100, max_new_tokens=40)

    def test_bad_sampling_and_config(self, split_rt, tiny):
        with pytest.raises(ValueError, match="top_p must be in"):
            split_rt.generate([1], max_new_tokens=2, temperature=1.0, top_p=1.5)
        with pytest.raises(RuntimeConfigError, match="phase 'train' is unknown"):
            GenerationConfig(phase="train")

    def test_a_model_that_is_not_a_decoder_cannot_generate(self, ray_session):
        lin = torch.nn.Sequential(torch.nn.Linear(4, 4))
        with Runtime(lin, (torch.zeros(1, 4),), devices=["cpu"]) as rt:
            with pytest.raises(RuntimeConfigError, match="graphs.models.Decoder"):
                rt.generate([1, 2], max_new_tokens=2)


class TestFailures:
    def test_killed_actor_mid_generation_is_retried_and_the_continuation_is_right(self, ray_session, tiny):
        import ray

        with _runtime(tiny, ["cpu:0", "cpu:1"], policy="round-robin") as rt:
            prompts = PROMPTS[:3]
            futs = [rt.submit_generate(p, max_new_tokens=60) for p in prompts]
            time.sleep(0.15)
            ray.kill(rt._actors["cpu:1"], no_restart=False)  # crash: Ray restarts it
            got = [list(f.result(timeout=120).tokens) for f in futs]
            assert got == [generate_local(tiny, p, 60) for p in prompts]
            assert rt.generation_stats().retries >= 1
            assert list(rt.generate([9, 9], max_new_tokens=5).tokens) == generate_local(tiny, [9, 9], 5)

    def test_actor_killed_for_good_fails_requests_clearly(self, ray_session, tiny):
        import ray

        with _runtime(tiny, ["cpu:0", "cpu:1"], policy="round-robin", recovery_timeout=3.0) as rt:
            f = rt.submit_generate([1, 2, 3], max_new_tokens=120)
            time.sleep(0.1)
            ray.kill(rt._actors["cpu:1"], no_restart=True)
            with pytest.raises(RequestFailed, match="cpu:1"):
                f.result(timeout=60)


class TestReplay:
    def test_replay_agrees_with_a_simulated_executor_run(self, split_rt):
        from scheduler.generation_sim import simulate_generation

        rt = split_rt
        rt.reset_generation_stats()
        rt.generate(list(range(1, 9)), max_new_tokens=10)
        st = rt.generation_stats()
        stages = [(s.device, s.start, s.stop) for s in rt.generation_stages]
        sim = simulate_generation(rt.model.config, stages, rt.cost_model, prompt_len=8, new_tokens=10)
        assert st.simulated and st.prefill_calls == 1 and st.decode_steps == sim.decode_steps == 9
        assert set(st.busy) == set(sim.busy)
        for d, b in sim.busy.items():
            assert st.busy[d] == pytest.approx(b, rel=1e-9), d
        # the replay's timeline: one prefill walk, then each decode step walks every shard in order
        assert [c[0] for c in sim.calls].count("prefill") == len(stages)
        assert sim.decode_tokens_per_s == pytest.approx(9 / sim.decode_time)


def test_shutdown_waits_for_generations_in_flight_then_refuses_new_ones(ray_session, tiny):
    from scheduler.errors import RuntimeClosedError

    rt = _runtime(tiny, ["cpu"])
    f = rt.submit_generate([1, 2, 3], max_new_tokens=30)
    rt.shutdown()
    assert list(f.result(timeout=1).tokens) == generate_local(tiny, [1, 2, 3], 30)
    with pytest.raises(RuntimeClosedError):
        rt.generate([1], max_new_tokens=2)
