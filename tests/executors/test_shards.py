"""Executors hosting decoder shards: per-sequence KV caches, prefill and decode steps."""
from __future__ import annotations

import pytest
import torch

from executors.base import StepMeta
from executors.cpu import CPUExecutor
from executors.errors import ExecutorError, ExecutorStateLost
from executors.factory import create
from executors.profiles import cluster
from executors.simulated import shard_step_time
from graphs.decoding import DecoderShard, block_names, generate_local, shard_ranges
from graphs.models import decoder
from graphs.sampling import SamplingParams, sample
from policies.roofline import RooflineCostModel

SIM = "sim:atlas-200i-a2"
PROMPTS = ([1, 2, 3, 4], [5], [9, 8, 7, 6, 5, 4, 3, 2, 1], [200, 17])
NEW = 5


@pytest.fixture(scope="module")
def model():
    return decoder("tiny")


@pytest.fixture(scope="module")
def shards(model):
    """Two shards: embedding and layer 0 | layer 1, norm and head (ids 0 and 1)."""
    names = block_names(model.config)
    asg = {n: ("a" if i < 2 else "b") for i, n in enumerate(names)}
    ranges = shard_ranges(model.config, asg)
    assert [(d, a, b) for d, a, b in ranges] == [("a", 0, 2), ("b", 2, len(names))]
    return [DecoderShard(model, a, b, id=i) for i, (_, a, b) in enumerate(ranges)]


def _executor(shards, ex=None):
    ex = ex or CPUExecutor()
    for s in shards:
        ex.load_shard(s)
    return ex


def _chain(execs, shards, seq_ids, x, **kw):
    """One step through every shard (``execs[i]`` hosts ``shards[i]``); returns the last
    output and the metas. ``sample``/``all_logits`` go to the last shard only."""
    last = {k: kw.pop(k) for k in ("sample", "all_logits") if k in kw}
    metas = []
    for i, (ex, s) in enumerate(zip(execs, shards)):
        x, meta = ex.step(s.id, seq_ids, x, **kw, **(last if s.last else {}))
        metas.append(meta)
    return x, metas


def _generate(execs, shards, prompts, new_tokens, first_id=0):
    """Greedy generation of every prompt: a prefill each, then decode steps of all of them
    batched (ragged contexts). Returns the tokens and every step's metas."""
    ids = tuple(range(first_id, first_id + len(prompts)))
    out = {s: [] for s in ids}
    metas = []
    for s, p in zip(ids, prompts):
        logits, m = _chain(execs, shards, (s,), torch.tensor([p]), reserve=(len(p) + new_tokens,))
        out[s].append(int(logits.argmax(-1)[0]))
        metas.append(m)
    for _ in range(new_tokens - 1):
        x = torch.tensor([[out[s][-1]] for s in ids])
        logits, m = _chain(execs, shards, ids, x)
        assert logits.shape == (len(ids), 256)
        for s, t in zip(ids, logits.argmax(-1).tolist()):
            out[s].append(t)
        metas.append(m)
    return [out[s] for s in ids], metas


class TestCPUShards:
    def test_step_by_step_equals_generate_local(self, model, shards):
        ex = _executor(shards)
        got, metas = _generate([ex, ex], shards, PROMPTS, NEW)
        assert got == [generate_local(model, p, NEW) for p in PROMPTS]
        prefill = metas[0][0]
        assert isinstance(prefill, StepMeta) and prefill.shard == 0 and not prefill.simulated
        assert (prefill.batch, prefill.new_tokens, prefill.context) == (1, 4, 0)
        decode = metas[-1][1]
        # every sequence had its prompt and NEW - 2 generated tokens cached before the last step
        assert (decode.batch, decode.new_tokens) == (len(PROMPTS), 1)
        assert decode.context == sum(len(p) + NEW - 2 for p in PROMPTS)
        assert decode.sequences == len(PROMPTS) and decode.duration > 0 and decode.wall > 0

    def test_one_shard_and_two_executors_agree(self, model, shards):
        whole = DecoderShard(model, 0, len(block_names(model.config)), id=9)
        a, _ = _generate([_executor([whole])], [whole], PROMPTS[:2], NEW)
        ex0, ex1 = CPUExecutor(), CPUExecutor()
        ex0.load_shard(shards[0])
        ex1.load_shard(shards[1])
        b, metas = _generate([ex0, ex1], shards, PROMPTS[:2], NEW)
        assert a == b
        # each executor holds only the caches of the layer it hosts (one layer each)
        assert metas[-1][0].kv_bytes == ex0.kv_stats()["bytes"] == ex1.kv_stats()["bytes"]

    def test_batched_prefill_of_equal_prompts(self, model, shards):
        ex = _executor(shards)
        prompts = ([3, 1, 4], [1, 5, 9])
        logits, (m0, m1) = _chain([ex, ex], shards, (4, 8), torch.tensor(prompts), reserve=(3 + NEW, 3 + NEW))
        assert m0.batch == 2 and m1.context == 0
        first = [generate_local(model, p, 1)[0] for p in prompts]
        assert logits.argmax(-1).tolist() == first

    def test_free_returns_bytes_and_empties_kv_stats(self, shards):
        ex = _executor(shards)
        _generate([ex, ex], shards, PROMPTS[:3], NEW, first_id=10)
        stats = ex.kv_stats()
        assert stats["sequences"] == 3 and set(stats["per_shard"]) == {0, 1}
        # reserve sized each cache for its final length: nothing grew
        expected = sum(s.cache_bytes(len(p) + NEW) for s in shards for p in PROMPTS[:3])
        assert stats["bytes"] == expected == sum(v["bytes"] for v in stats["per_shard"].values())
        h = ex.health()
        assert (h["kv_bytes"], h["sequences"]) == (expected, 3) and h["shards"][1]["steps"] == 3 + NEW - 1
        one = ex.free([10])
        assert one == sum(s.cache_bytes(len(PROMPTS[0]) + NEW) for s in shards)
        assert ex.free([11, 12, 99]) == expected - one
        assert ex.free([10, 11]) == 0  # idempotent
        assert ex.kv_stats() == {"sequences": 0, "bytes": 0, "per_shard": {0: {"sequences": 0, "bytes": 0},
                                                                          1: {"sequences": 0, "bytes": 0}}}

    def test_missing_cache_raises_state_lost(self, shards):
        ex = _executor(shards)
        with pytest.raises(ExecutorStateLost, match=r"no KV cache for sequence 7 in shard 1 \(actor restarted\?\)"):
            ex.step(1, (7,), torch.zeros(1, 1, 64))
        ex.step(0, (7,), torch.tensor([[1, 2]]), reserve=(4,))
        ex.free([7])
        with pytest.raises(ExecutorStateLost, match="no KV cache for sequence 7 in shard 0"):
            ex.step(0, (7,), torch.tensor([[3]]))
        with pytest.raises(ExecutorStateLost, match=r"shard 5 is not loaded; loaded shards: 0, 1"):
            ex.step(5, (7,), torch.tensor([[3]]))

    def test_reserve_starts_a_sequence_anew(self, model, shards):
        ex = _executor(shards)
        p = PROMPTS[0]
        a, _ = _chain([ex, ex], shards, (1,), torch.tensor([p]), reserve=(len(p) + 1,))
        _chain([ex, ex], shards, (1,), torch.tensor([[7]]))
        b, (m0, _) = _chain([ex, ex], shards, (1,), torch.tensor([p]), reserve=(len(p),))
        assert m0.context == 0 and ex.kv_stats()["sequences"] == 1
        torch.testing.assert_close(a, b)

    def test_sampling_in_the_last_shard(self, shards):
        ex = _executor(shards)
        params = (SamplingParams(temperature=0.9, top_k=20, seed=3), SamplingParams())
        x = torch.tensor([[5, 6, 7], [1, 2, 3]])
        logits, _ = _chain([ex, ex], shards, (1, 2), x, reserve=(8, 8))
        toks, meta = _chain([ex, ex], shards, (3, 4), x, reserve=(8, 8), sample=((params[0], 2), (params[1], 2)))
        assert toks.dtype == torch.int64 and toks.shape == (2,)
        assert toks.tolist() == sample(logits, params, [2, 2]).tolist()
        full, _ = _chain([ex, ex], shards, (5,), x[:1], reserve=(8,), all_logits=True)
        assert full.shape == (1, 3, 256)
        torch.testing.assert_close(full[:, -1], logits[:1])

    def test_bad_calls_are_clear_errors(self, model, shards):
        ex = _executor(shards)
        with pytest.raises(ExecutorError, match="load_shard.. needs a graphs.decoding.DecoderShard, got Linear"):
            ex.load_shard(torch.nn.Linear(2, 2))
        with pytest.raises(ExecutorError, match="sample/all_logits need the shard that ends with lm_head"):
            ex.step(0, (1,), torch.tensor([[1]]), reserve=(2,), sample=((SamplingParams(), 0),))
        with pytest.raises(ExecutorError, match="one distinct sequence id per row"):
            ex.step(0, (1, 1), torch.tensor([[1], [2]]), reserve=(2, 2))
        with pytest.raises(ExecutorError, match="reserve must give one capacity >= T = 2"):
            ex.step(0, (1,), torch.tensor([[1, 2]]), reserve=(1,))
        with pytest.raises(ExecutorError, match="takes token ids"):
            ex.step(0, (1,), torch.zeros(1, 2, 64), reserve=(4,))
        assert ex.kv_stats()["sequences"] == 0  # a failed prefill leaves no cache behind
        assert ex.health()["errors"] == 1
        # a failed decode step drops its sequences' caches: the next step must prefill again
        ex.step(1, (2,), torch.zeros(1, 3, 64), reserve=(4,))
        with pytest.raises(ExecutorError, match="takes hidden states"):
            ex.step(1, (2,), torch.zeros(1, 1, 32))
        with pytest.raises(ExecutorStateLost, match="no KV cache for sequence 2 in shard 1"):
            ex.step(1, (2,), torch.zeros(1, 1, 64))

    def test_unload_shard_frees_its_caches(self, shards):
        ex = _executor(shards)
        _chain([ex, ex], shards, (1, 2), torch.tensor([[1, 2], [3, 4]]), reserve=(4, 4))
        assert ex.unload_shard(1) == 2 * shards[1].cache_bytes(4)
        assert ex.shards() == (0,) and set(ex.kv_stats()["per_shard"]) == {0}
        assert ex.loaded() == ()  # partitions are a separate namespace


@pytest.fixture(scope="module")
def cost_model():
    return RooflineCostModel(cluster({SIM: "atlas-200i-a2"}))


class TestSimulatedShards:
    def test_duration_is_the_cost_model_price_and_tokens_are_real(self, model, shards, cost_model):
        ex = _executor(shards, create(SIM, cost_model=cost_model))
        got, metas = _generate([ex, ex], shards, PROMPTS, NEW)
        assert got == [generate_local(model, p, NEW) for p in PROMPTS]
        for step in metas:
            for s, m in zip(shards, step):
                assert m.simulated and m.device == SIM
                price = shard_step_time(cost_model, SIM, s, m.batch, m.new_tokens, m.context / m.batch, 4)
                assert m.duration == pytest.approx(price, rel=1e-12)
                assert price == shard_step_time(cost_model, SIM, (s.config, s.blocks), m.batch, m.new_tokens,
                                                round(m.context / m.batch), 4)
        prefill, decode = metas[2][0], metas[-1][0]  # the longest prompt's prefill, a decode step
        assert prefill.duration > decode.duration / len(PROMPTS) > 0

    def test_slowdown_and_timing_only(self, shards, cost_model):
        ex = _executor(shards, create(SIM, cost_model=cost_model))
        x = torch.tensor([[1, 2, 3]])
        _, (m0, _) = _chain([ex, ex], shards, (1,), x, reserve=(3,))
        ex.set_slowdown(3.0)
        _, (m1, _) = _chain([ex, ex], shards, (2,), x, reserve=(3,))
        assert m1.duration == pytest.approx(3 * m0.duration)
        meta_ex = _executor(shards, create(SIM, cost_model=cost_model, timing_only=True))
        out, (m2, m3) = _chain([meta_ex, meta_ex], shards, (1,), x, reserve=(3,))
        assert out.device.type == "meta" and out.shape == (1, 256) and m2.duration == m0.duration
        with pytest.raises(ExecutorError, match="cannot sample in timing-only mode"):
            _chain([meta_ex, meta_ex], shards, (2,), x, reserve=(3,), sample=((SamplingParams(), 0),))

    def test_without_a_cost_model_the_spec_prices_steps(self, shards):
        ex = _executor(shards, create(SIM))
        _, (m0, m1) = _chain([ex, ex], shards, (1,), torch.tensor([[1, 2, 3]]), reserve=(3,))
        assert m0.duration > 0 and m1.duration > 0


@pytest.mark.ray
def test_actor_hosts_shards(ray_session, model, shards):
    from executors.ray_actor import ExecutorActor, actor_options

    ray = ray_session
    actors = [ExecutorActor.options(**actor_options(d)).remote(d) for d in ("cpu", SIM)]
    try:
        assert ray.get([a.load_shard.remote(s) for a, s in zip(actors, shards)]) == [0, 1]
        p = PROMPTS[0]
        x = torch.tensor([p])
        out = []
        metas = []
        for i in range(NEW):
            kw = {"reserve": (len(p) + NEW,)} if i == 0 else {}
            h, m0 = actors[0].step.options(num_returns=2).remote(0, (3,), x, **kw)
            tok, m1 = actors[1].step.options(num_returns=2).remote(1, (3,), h, **kw,
                                                                    sample=((SamplingParams(), i),))
            out.append(int(ray.get(tok)[0]))
            metas.append(ray.get([m0, m1]))
            x = torch.tensor([[out[-1]]])
        assert out == generate_local(model, p, NEW)
        assert [m.device for m in metas[0]] == ["cpu", SIM] and metas[-1][1].simulated
        stats = ray.get(actors[1].kv_stats.remote())
        assert stats["sequences"] == 1 and stats["bytes"] == shards[1].cache_bytes(len(p) + NEW)
        assert ray.get(actors[1].health.remote())["kv_bytes"] == stats["bytes"]
        assert ray.get([a.free.remote((3,)) for a in actors]) == [s.cache_bytes(len(p) + NEW) for s in shards]
        with pytest.raises(ExecutorStateLost, match="no KV cache for sequence 3 in shard 0"):
            ray.get(actors[0].step.options(num_returns=2).remote(0, (3,), x)[0])
        assert ray.get(actors[0].unload_shard.remote(0)) == 0
    finally:
        for a in actors:
            ray.kill(a)
